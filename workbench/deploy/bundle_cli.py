"""`workbench bundle --memory-mb M --latency-ms L [--device D] --out DIR`: see deploy.bundle.

Default plans: primary int8 per channel everywhere, fallback 4-bit block-wise weights everywhere
(front-end and head int8), both presets. `--plan` / `--fallback-plan` take any plan file (a
search result, `workbench recover`'s export_plan.json); `--fallback-checkpoint` gives the
fallback its own (e.g. pruned and recovered) checkpoint. Prints the manifest as one JSON object.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from workbench import cli_checks as ck
from workbench import presets
from workbench.models import DEMO_FILE
from workbench.paths import DEMO_DIR


def cmd_bundle(args: argparse.Namespace) -> int:
    from workbench.deploy.bundle import Budget, build_bundle
    from workbench.export.apply import (ApplyOptions, check_output_dir, check_plan_fits,
                                        read_plan)
    from workbench.models import load_checkpoint, load_demo  # looked up per call: tests monkeypatch it

    budget = Budget(args.memory_mb, args.latency_ms, args.device, args.seconds,
                    args.threads).checked()
    out = Path(args.out)
    check_output_dir(out, args.force)
    primary = read_plan(Path(args.plan)) if args.plan else presets.int8_everywhere()
    fallback = (read_plan(Path(args.fallback_plan)) if args.fallback_plan
                else presets.int4_everywhere())
    torch.set_num_threads(2)
    model = load_checkpoint(args.checkpoint) if args.checkpoint else load_demo()
    check_plan_fits(primary, model, f"checkpoint {args.checkpoint}" if args.checkpoint
                    else "the demo model")
    fallback_model = load_checkpoint(args.fallback_checkpoint) if args.fallback_checkpoint \
        else None
    check_plan_fits(fallback, fallback_model if fallback_model is not None else model,
                    f"checkpoint {args.fallback_checkpoint or args.checkpoint or 'demo'}")
    options = ApplyOptions(eval_limit=args.limit, threads=(args.threads,),
                           checkpoint=args.checkpoint or str(DEMO_DIR / DEMO_FILE),
                           model_name=Path(args.checkpoint).stem if args.checkpoint else
                           "workbench-demo-whisper-ctc")
    manifest = build_bundle(model, out, budget, primary, fallback, fallback_model, options,
                            force=args.force,
                            log=lambda m: print(f"[bundle] {m}", file=sys.stderr, flush=True))
    for v in manifest["variants"]:
        wer = ", ".join(f"{a['set']} ORT {a['wer_ort']:.4f} / sim {a['wer_sim']:.4f}"
                        for a in v["accuracy"])
        print(f"[bundle] {v['name']}: {v['bytes']:,} bytes, {v['memory_bytes'] / 1e6:.1f} MB "
              f"measured, {v['simulated']['latency_ms']} ms simulated on {budget.device}; {wer}",
              file=sys.stderr)
    sys.stdout.write(json.dumps(manifest, indent=2) + "\n")
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    b = sub.add_parser("bundle", help="a primary export and a smaller fallback, both verified, "
                                      "with a runtime selector (memory + warm-up latency)")
    b.add_argument("--memory-mb", required=True,
                   type=ck.float_in(0.0, 1e7, "the device memory for the model in MB, e.g. 512"))
    b.add_argument("--latency-ms", required=True,
                   type=ck.float_in(0.0, 1e7, "a latency budget in ms, e.g. 300"))
    b.add_argument("--device", default="rpi5", help="edge device of the latency simulator "
                                                    "(`workbench latency --list`)")
    b.add_argument("--seconds", type=ck.float_in(0.1, 30.0, "an input length in seconds, "
                                                            "e.g. 5", lo_open=False),
                   default=5.0, help="audio length of the budget and the warm-up input")
    b.add_argument("--threads", type=ck.threads, default=1)
    b.add_argument("--plan", type=ck.existing_file("--plan"),
                   help="primary plan (default: int8_everywhere)")
    b.add_argument("--fallback-plan", type=ck.existing_file("--fallback-plan", "plan"),
                   help="fallback plan (default: int4_everywhere)")
    b.add_argument("--checkpoint", type=ck.existing_file("--checkpoint"))
    b.add_argument("--fallback-checkpoint", type=ck.existing_file("--fallback-checkpoint",
                                                                  "checkpoint"))
    b.add_argument("--limit", type=ck.limit, default=None,
                   help="first N utterances of each held-out set for the verification")
    b.add_argument("--out", required=True)
    b.add_argument("--force", action="store_true")
    b.set_defaults(func=cmd_bundle)
