"""`workbench search` and `workbench sweep` (registered by one line in workbench/__main__.py)."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from tqdm import tqdm

from workbench.errors import WorkbenchError
from workbench.plan import WEIGHT_BITS, CompressionPlan
from workbench.presets import PRESETS


def _floats(text: str, what: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.replace(",", " ").split())
    except ValueError:
        raise WorkbenchError(f"{what}: '{text}' is not a list of numbers; write e.g. "
                             f"'0.5,0.25'.") from None
    if not values:
        raise WorkbenchError(f"{what}: give at least one value.")
    return values


def _ints(text: str, what: str) -> tuple[int, ...]:
    values = _floats(text, what)
    if any(v != int(v) for v in values):
        raise WorkbenchError(f"{what}: '{text}' must be whole numbers, e.g. '8,4'.")
    return tuple(int(v) for v in values)


#: Weight widths a CompressionPlan accepts (workbench.plan.QuantConfig.weight_bits).
BITS = WEIGHT_BITS


def _bits(text: str) -> tuple[int, ...]:
    """--bits: whole numbers a plan can hold, refused before any model run (`--bits 0` used to
    start a sweep whose every bits cell then failed)."""
    values = _ints(text, "--bits")
    bad = [v for v in values if v not in BITS]
    if bad:
        raise WorkbenchError(f"--bits: {', '.join(map(str, bad))} not allowed; give widths from "
                             f"{', '.join(map(str, BITS))}, e.g. '8,4'.")
    return values


def _spec_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="rpi5", help="latency device (workbench.latency; old "
                                                    "names like rpi5 map to rpi5_a76)")
    p.add_argument("--runtime", help="runtime on the device (default: the device file's)")
    p.add_argument("--latency-threads", type=int, help="threads of that runtime (default: the "
                                                       "device file's)")
    p.add_argument("--audio-seconds", type=float, default=8.0, help="audio length to price")
    p.add_argument("--checkpoint", help="model checkpoint (default: the shipped demo model)")
    p.add_argument("--manifest", help="eval manifest (default: the shipped held-out real speech)")
    p.add_argument("--limit", type=int, help="evaluate only the first N utterances")
    p.add_argument("--quick-utterances", type=int, default=16,
                   help="size of the fixed subset of the quick WER estimate")
    p.add_argument("--bits", default="8,4", help="weight bits to try per layer")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")


def _spec(args, threads: int):
    from workbench.search.objective import EvaluatorSpec
    if args.audio_seconds <= 0:
        raise WorkbenchError(f"--audio-seconds: must be > 0, got {args.audio_seconds}.")
    for name in ("checkpoint", "manifest"):
        value = getattr(args, name)
        if value and not Path(value).exists():
            raise WorkbenchError(f"--{name} {value}: no such file.")
    spec = EvaluatorSpec(device=args.device, audio_seconds=args.audio_seconds,
                         runtime=args.runtime, latency_threads=args.latency_threads,
                         checkpoint=args.checkpoint, manifest=args.manifest, limit=args.limit,
                         quick_utterances=args.quick_utterances, threads=threads)
    spec.check()
    return spec


def cmd_search(args: argparse.Namespace) -> int:
    from workbench.search.api import search, summary
    from workbench.search.runner import SearchConfig, print_progress

    executor = "serial" if args.executor == "serial" else "ray"
    if args.address and executor == "serial":
        raise WorkbenchError("--address needs --executor ray (the default).")
    threads = args.threads or (2 if executor == "serial" else 1)
    spec = _spec(args, threads)
    config = SearchConfig(
        trials=args.trials, batch=args.batch, seed=args.seed, max_delta_wer=args.max_delta_wer,
        max_latency_ms=args.max_latency_ms,
        max_size_bytes=None if args.max_size_mb is None else int(args.max_size_mb * 1e6),
        eval_kind=args.eval, final_eval=None if args.final_eval == "none" else args.final_eval)
    options = {"bits": _bits(args.bits), "prune": _floats(args.prune, "--prune"),
               "ranks": _floats(args.ranks, "--ranks")}
    out = Path(args.out)
    recover = {"recover_minutes": args.recover_minutes, "recover_plans": args.recover_plans,
               "recover_manifests": [Path(m) for m in args.recover_manifest] or None}
    for m in recover["recover_manifests"] or ():
        if not m.is_file():
            raise WorkbenchError(f"--recover-manifest {m}: no such file.")
    from workbench.data.held_out import refuse_held_out   # before the search, not after it
    refuse_held_out(recover["recover_manifests"], option="--recover-manifest")
    from workbench.search.executors import RayStartError
    try:
        result = search(spec, config, space_options=options, executor=executor,
                        address=args.address, workers=args.workers, out_dir=out,
                        resume=args.resume, progress=print_progress, **recover)
    except RayStartError as err:
        if args.address:
            raise
        # Same trials, same front (the search is deterministic), only slower.
        print(f"search: {err}; running serially instead.", file=sys.stderr)
        result = search(spec, config, space_options=options, executor="serial", out_dir=out,
                        resume=True, progress=print_progress, **recover)
    sys.stderr.write("\n")
    doc = json.loads((out / "front.json").read_text())
    if args.json:
        sys.stdout.write(json.dumps(doc, indent=2) + "\n")
    else:
        s = summary(result)
        print(s["verdict"])
        for r in doc["front"]:
            print(f"  {r['plan_file']}: WER {r['wer']:.4f} ({r['eval']}), "
                  f"{r['size_bytes'] / 1e6:.3f} MB, {r['latency_ms']:.1f} ms simulated on "
                  f"{args.device}{'' if r['meets_budgets'] else '  (outside the budgets)'}")
        for r in doc.get("recovered", []):
            print(f"  {r['folder']}: WER {r['wer_before']:.4f} -> {r['wer_after']:.4f} after "
                  f"{r['minutes']:g} min recovery, {r['size_bytes'] / 1e6:.3f} MB"
                  f"{'' if r['meets_budgets'] else '  (outside the WER budget)'}")
    print(("search: " + doc["verdict"]), file=sys.stderr)
    met = doc["best_trial"] is not None or doc.get("best_recovered_trial") is not None
    return 0 if met else 1


def cmd_sweep(args: argparse.Namespace) -> int:
    from workbench.search.executors import RayExecutor, RayStartError
    from workbench.search.sweep import sweep

    executor = "serial" if args.executor == "serial" else "ray"
    if args.address and executor == "serial":
        raise WorkbenchError("--address needs --executor ray (the default).")
    threads = args.threads or (2 if executor == "serial" else 1)
    spec = _spec(args, threads)
    torch.set_num_threads(threads)
    if args.base and args.base not in PRESETS:
        raise WorkbenchError(f"--base: '{args.base}' is not a preset; choose from "
                             f"{', '.join(PRESETS)}.")
    base = PRESETS[args.base]() if args.base else CompressionPlan()
    bar = tqdm(total=0, desc="sweep", file=sys.stderr, disable=None)

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.n = done
        bar.refresh()

    options = dict(kind=args.eval, sparsities=_floats(args.sparsities, "--sparsities"),
                   bits=_bits(args.bits), ranks=_floats(args.ranks, "--ranks"),
                   paths=args.path or None, progress=progress)
    ray_ex = None
    if executor == "ray":
        try:  # the same embedded local Ray / --address cluster as `workbench search`
            ray_ex = RayExecutor(spec, None, address=args.address, workers=args.workers)
        except RayStartError as err:
            if args.address:
                raise
            print(f"sweep: {err}; running serially instead.", file=sys.stderr)
            threads = args.threads or 2
            spec = _spec(args, threads)
    try:
        if ray_ex is not None:
            model = spec.load_model()
            doc = sweep(None, model, base, map_plans=ray_ex.map_plans, **options)
        else:
            evaluator = spec.build()
            doc = sweep(lambda plan, kind: evaluator(plan, kind), evaluator.model, base,
                        **options)
    finally:
        if ray_ex is not None:
            ray_ex.close()
    bar.close()
    doc.update(device=args.device, audio_seconds=args.audio_seconds, base_plan=args.base or "fp32",
               executor="ray" if ray_ex is not None else "serial",
               workers=ray_ex.workers if ray_ex is not None else 1, threads=threads,
               numbers="WER measured (quick = fixed-subset estimate +- stderr); size exact; "
                       "latency simulated (roofline)")
    if args.json:
        sys.stdout.write(json.dumps(doc, indent=2) + "\n")
    else:
        for c in doc["cells"]:
            print(f"{c['path']:<28} {c['knob']:<8} {c['value']:<6g} ΔWER {c['wer_delta']:+.4f}  "
                  f"-{c['size_saved_bytes'] / 1e3:.0f} KB  -{c['latency_saved_ms']:.2f} ms")
    return 0


def add_parsers(sub) -> None:
    s = sub.add_parser("search", help="multi-objective plan search (WER x size x latency): "
                                      "Pareto plans written to --out",
                       description="NSGA-II (Optuna) over per-layer bits / structured pruning / "
                                   "low rank; trials run on an embedded local Ray (default), a "
                                   "Ray cluster (--address) or serially. Exit status 0: a plan "
                                   "meets every budget (best.json); 1: none does (the front is "
                                   "still written); 2: bad input.")
    _spec_args(s)
    s.add_argument("--out", required=True, help="folder for trials.jsonl, plan-*.json, "
                                                "front.json, best.json")
    s.add_argument("--max-delta-wer", type=float, help="WER budget vs the uncompressed model "
                                                       "(absolute, 0.01 = 1 point)")
    s.add_argument("--max-latency-ms", type=float, help="simulated latency budget on --device")
    s.add_argument("--max-size-mb", type=float, help="size budget (MB = 1e6 bytes)")
    s.add_argument("--trials", type=int, default=48)
    s.add_argument("--batch", type=int, default=8, help="trials per generation (asked together)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--prune", default="0,0.25,0.5", help="structured prune amounts to try")
    s.add_argument("--ranks", default="1,0.5", help="low-rank fractions of min(in, out) "
                                                    "for FFN Linears (1 = dense)")
    s.add_argument("--eval", choices=["quick", "full"], default="quick",
                   help="WER used during the search")
    s.add_argument("--final-eval", choices=["full", "none"], default="full",
                   help="re-measure the front on the full eval set")
    s.add_argument("--executor", choices=["ray", "serial"], default="ray")
    s.add_argument("--address", help="Ray cluster address (host:port or 'auto'); default: an "
                                      "embedded local Ray started and stopped by this command")
    s.add_argument("--workers", type=int, default=2, help="CPUs of the embedded local Ray")
    s.add_argument("--threads", type=int, default=None,
                   help="torch threads per evaluation (default 1 on Ray, 2 serial)")
    s.add_argument("--resume", action="store_true", help="continue the search logged in --out")
    from workbench import cli_checks as ck
    s.add_argument("--recover-minutes", type=ck.minutes, default=None,
                   help="recover searched plans that remove structure (distillation, this many "
                        "minutes each) and measure them: --out/recovered-NNNN/")
    s.add_argument("--recover-plans", type=ck.count, default=3,
                   help="with --recover-minutes: at most this many plans (smallest first)")
    s.add_argument("--recover-manifest", action="append", default=[],
                   help="with --recover-minutes: training manifest(s) (default: the demo "
                        "corpus, built if missing)")
    s.set_defaults(func=cmd_search)

    w = sub.add_parser("sweep", help="per-layer sensitivity: every technique (prune, bits, "
                                     "rank), one layer at a time")
    _spec_args(w)
    w.add_argument("--sparsities", default="0.25,0.5,0.75")
    w.add_argument("--ranks", default="0.75,0.5,0.25", help="fractions of min(in, out)")
    w.add_argument("--eval", choices=["quick", "full"], default="quick")
    w.add_argument("--base", help="preset to start from (default: the fp32 model)")
    w.add_argument("--path", action="append", default=[], help="only these layers (repeatable)")
    w.add_argument("--threads", type=int, default=None,
                   help="torch threads per evaluation (default 1 on Ray, 2 serial)")
    w.add_argument("--executor", choices=["ray", "serial"], default="ray",
                   help="cells as Ray tasks (default; embedded local Ray) or one by one here")
    w.add_argument("--address", help="Ray cluster address (host:port or 'auto'); default: an "
                                      "embedded local Ray started and stopped by this command")
    w.add_argument("--workers", type=int, default=2, help="CPUs of the embedded local Ray")
    w.set_defaults(func=cmd_sweep, bits="8,6,4,3,2")
