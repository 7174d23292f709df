"""`workbench latency`: simulated edge latency of a model on device x runtime x threads.

    workbench latency --device rpi4_a72 --runtime tflite --threads 1 --seconds 8 [--bits 8]
    workbench latency --model ds_cnn_kws --device cortex_m7_stm32f746 --bits 8 --json
    workbench latency --device-file my_board.json --runtime xnnpack
    workbench latency --list              devices (with core, clock, runtimes) and runtimes
    workbench latency --fit               refit the runtimes on data/latency_measurements.jsonl

--model: 'demo' (the shipped demo model), a reference model of the published measurements
(workbench.latency.reference_models), or a checkpoint file.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from workbench import cli_checks as ck
from workbench.errors import WorkbenchError
from workbench.latency import predict_latency
from workbench.latency.hardware import edge_device_names, load_edge_device, load_runtime, runtime_names
from workbench.plan import WEIGHT_BITS, plan_from_file

#: Weight widths a CompressionPlan accepts (workbench.plan.QuantConfig.weight_bits).
BITS = WEIGHT_BITS


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("latency", help="simulated latency on an edge device x runtime x threads")
    p.add_argument("--model", default="demo",
                   help="demo, a reference model name, or a checkpoint file (default: demo)")
    p.add_argument("--device", default="rpi4_a72", help="edge device name (see --list)")
    p.add_argument("--device-file", type=ck.existing_file("--device-file", "device"),
                   help="your own device JSON (schema: workbench.latency.hardware)")
    p.add_argument("--runtime", help="runtime name or runtime JSON (default: the device's)")
    p.add_argument("--threads", type=ck.threads, help="threads (default: the device's)")
    p.add_argument("--seconds", type=float, default=8.0, help="audio seconds (default 8)")
    p.add_argument("--plan", type=ck.existing_file("--plan"), help="a CompressionPlan JSON file")
    # The widths a plan can hold (QuantConfig.weight_bits); 0 used to mean "no --bits" silently.
    p.add_argument("--bits", type=ck.choice_of_ints(BITS, "weight bits, one of "
                                                          + ", ".join(map(str, BITS))),
                   help="weight bits for every layer (e.g. 8)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--list", action="store_true", help="list devices and runtimes")
    p.add_argument("--fit", action="store_true",
                   help="refit runtime efficiencies on the published measurements (writes "
                        "runtimes/*.json and published_fit.json)")
    p.set_defaults(func=cmd_latency)


def _print(obj: dict) -> None:
    sys.stdout.write(json.dumps(obj, indent=2) + "\n")


def cmd_latency(args: argparse.Namespace) -> int:
    if args.list:
        devs = {}
        for n in edge_device_names():
            d = load_edge_device(n)
            devs[n] = {"family": d.family, "core": d.core, "clock_mhz": d.clock_mhz,
                       "cores": d.cores, "isa": list(d.isa), "runtimes": list(d.runtimes),
                       "default_runtime": d.default_runtime,
                       "default_threads": d.default_threads}
        rts = {n: load_runtime(n).description for n in runtime_names()}
        _print({"devices": devs, "runtimes": rts})
        return 0
    if args.fit:
        from workbench.latency.published import write_fit
        _print(write_fit())
        return 0
    from workbench.latency.reference_models import REFERENCE, build
    make_inputs = None
    if args.model == "demo":
        from workbench.models import load_demo  # looked up per call: tests monkeypatch it
        model = load_demo()
    elif args.model in REFERENCE:
        model, make_inputs = build(args.model)
    elif Path(args.model).is_file():
        from workbench.models import load_checkpoint  # looked up per call: tests monkeypatch it
        model = load_checkpoint(Path(args.model))
    else:
        raise WorkbenchError(f"--model: '{args.model}' is neither 'demo', a reference model "
                             f"({', '.join(REFERENCE)}) nor a checkpoint file.")
    bits = None
    if args.plan:
        bits = plan_from_file(Path(args.plan))   # errors name the file, line and field
    elif args.bits is not None:
        bits = {"*": args.bits}
    device = None if args.device_file else args.device
    r = predict_latency(model, device, args.seconds, bits, make_inputs=make_inputs,
                        runtime=args.runtime, threads=args.threads, device_file=args.device_file)
    out = {"device": r.device, "runtime": r.runtime, "threads": r.threads,
           "audio_seconds": r.audio_seconds, "total_ms": round(r.total_ms, 3),
           "low_ms": round(r.low_ms, 3), "high_ms": round(r.high_ms, 3),
           "error_band_pct": r.error_band_pct, "real_time_factor": round(r.real_time_factor, 4),
           "memory": r.memory.describe(), "unsupported": list(r.unsupported),
           "source": r.source,
           "by_kind_ms": _by_kind(r)}
    if args.json:
        _print(out)
    else:
        print(r.summary())
        for u in r.unsupported:
            print(f"  not as set: {u}")
    return 0


def _by_kind(report) -> dict[str, float]:
    out: dict[str, float] = {}
    for layer in report.layers:
        out[layer.op] = round(out.get(layer.op, 0.0) + layer.time_ms, 3)
    return out
