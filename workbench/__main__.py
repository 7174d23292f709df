"""The `workbench` command line: data, train, eval, bench, calibrate, apply, lab.

Machine-readable results go to stdout as one JSON object (with --json); progress and logs go to stderr.
Errors on bad input print one clear line (no traceback) and exit with status 2.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import torch

from workbench import cli_checks as ck
from workbench import lesson_timing
from workbench.data import build_all
from workbench.errors import WorkbenchError
from workbench.evaluate import evaluate
from workbench.latency import calibrate
from workbench.models import PRESETS
from workbench.paths import DEMO_DIR, cache_dir


def _print_json(obj: dict) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, sort_keys=False) + "\n")
    sys.stdout.flush()


def cmd_eval(args: argparse.Namespace) -> int:
    from workbench.evaluate import load_eval_set  # looked up per call: tests monkeypatch it
    from workbench.models import load_checkpoint, load_demo  # looked up per call: tests monkeypatch it
    from workbench.paths import REAL_TEST  # looked up per call: tests monkeypatch it

    if getattr(args, "conditions", False):
        from workbench.conditions.cli import cmd_eval_conditions
        return cmd_eval_conditions(args)
    if getattr(args, "plan", None):
        raise WorkbenchError(f"--plan {args.plan}: only used with --conditions (WER by "
                             f"condition for the model and the plan); add --conditions.")
    torch.set_num_threads(args.threads)
    manifest = Path(args.manifest) if args.manifest else REAL_TEST
    checkpoint = Path(args.checkpoint) if args.checkpoint else DEMO_DIR / "model.safetensors"
    model = load_checkpoint(checkpoint) if args.checkpoint else load_demo()   # before features
    eval_set = load_eval_set(manifest, limit=args.limit)
    lexicon = None
    if args.decoder == "lexicon":
        from workbench.lexicon import training_lexicon
        lexicon = training_lexicon()
    result = evaluate(model, eval_set, lexicon=lexicon)
    out = {"wer": round(result.wer, 4), "cer": round(result.cer, 4), "decoder": args.decoder,
           "utterances": result.utterances, "seconds": round(result.seconds, 3),
           "audio_seconds": round(result.audio_seconds, 2),
           "manifest": str(manifest), "checkpoint": str(checkpoint)}
    if args.json:
        _print_json(out)
    else:
        for r in result.per_utterance:
            print(f"{r.id}\tREF: {r.reference}\n{'':{len(r.id)}}\tHYP: {r.hypothesis}")
        print(f"WER {out['wer']:.3f}  CER {out['cer']:.3f}  ({out['utterances']} utterances, "
              f"{out['seconds']} s)")
    return 0


def cmd_data(args: argparse.Namespace) -> int:
    out = Path(args.out) if args.out else cache_dir() / "corpus"
    ck.check_writable_parent(out / "x")
    summary = build_all(out, n_train=args.n_train, seed=args.seed,
                        install_system_packages=args.install_system_packages)
    _print_json({"out": str(out), **(summary or {})})
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from workbench.recipes import train_conformer, train_demo

    if not args.demo:
        ck.check_choice("--preset", args.preset, PRESETS)
    if args.out:
        ck.check_writable_parent(Path(args.out) / "x")
    if args.demo:
        summary = train_demo(out_dir=Path(args.out) if args.out else None,
                             minutes=args.minutes, seed=args.seed)
    else:
        summary = train_conformer(preset=args.preset, out_dir=Path(args.out) if args.out else None,
                                  minutes=args.minutes, seed=args.seed)
    _print_json(summary)
    return 0


def cmd_lab(args: argparse.Namespace) -> int:
    nb = Path(__file__).resolve().parents[1] / "notebooks" / "00_workbench.ipynb"
    ck.check_port_free(args.port)
    root = ["--allow-root"] if hasattr(os, "geteuid") and os.geteuid() == 0 else []
    return subprocess.call([sys.executable, "-m", "jupyter", "lab", "--ip=127.0.0.1",
                            f"--port={args.port}", *root, str(nb)])


def cmd_bench(args: argparse.Namespace) -> int:
    from workbench import bench

    result = bench.run(args.what, args)
    _print_json(result)
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    if args.out:
        if Path(args.out).is_dir():
            raise ck.ArgumentError(f"--out {args.out}: is a folder; give the path of the JSON "
                                   f"file to write (e.g. {Path(args.out) / 'host.json'}).")
        ck.check_writable_parent(Path(args.out))
    result = calibrate(out_path=Path(args.out) if args.out else None)
    _print_json(result if isinstance(result, dict) else {"result": str(result)})
    return 0


def cmd_apply(args: argparse.Namespace) -> int:
    if getattr(args, "model", "demo") == "whisper":
        from workbench.export.whisper_apply import apply_whisper_cli
        ck.check_new_output_dir(Path(args.out), args.force)
        return apply_whisper_cli(args)        # refuses --runtime executorch itself
    if getattr(args, "runtime", "onnx") == "executorch":
        if getattr(args, "int8_weights", "auto") != "auto":   # said, so not silently ignored
            raise ck.ArgumentError(
                f"--int8-weights {args.int8_weights}: chooses ONNX Runtime's int8 kernels; "
                f"ExecuTorch's XNNPACK has no such choice. Drop the option with --runtime "
                f"executorch.")
        from workbench.export.apply_pte import apply_pte_cli
        return apply_pte_cli(args)
    from workbench.export import apply_cli

    ck.check_new_output_dir(Path(args.out), args.force)   # before the model is even loaded
    return apply_cli(args)


def cmd_recover(args: argparse.Namespace) -> int:
    from workbench.export.apply import read_plan
    from workbench.models import load_checkpoint, load_demo  # looked up per call: tests monkeypatch it
    from workbench.compress.progressive import ProgressiveConfig
    from workbench.data.held_out import refuse_held_out
    from workbench.recovery import DEFAULT_CONFIG, recover_plan, validation_probe

    out = Path(args.out)
    ck.check_new_output_dir(out, args.force)
    # before any model is loaded: no utterance of a held-out set trains or is watched
    refuse_held_out(args.manifest, option="--manifest")
    if args.val_manifest:
        refuse_held_out([args.val_manifest], option="--val-manifest",
                        use="the WER estimate watched while training")
    plan = read_plan(Path(args.plan))
    torch.set_num_threads(args.threads)
    manifests = [Path(m) for m in args.manifest] or None
    # the progress bar's WER estimate: a validation split, never the held-out test sets nor
    # the training data (checked before the model is loaded)
    probe = validation_probe(manifests, Path(args.val_manifest) if args.val_manifest else None,
                             args.val_limit)
    if probe is None:
        sys.stderr.write("recover: no WER estimate in the progress bar (training on --manifest "
                         "without --val-manifest)\n")
    teacher = load_checkpoint(args.checkpoint) if args.checkpoint else load_demo()
    cfg = replace(DEFAULT_CONFIG, max_minutes=args.minutes,
                  steps=args.steps or DEFAULT_CONFIG.steps)
    result = recover_plan(plan, teacher, out_dir=out, config=cfg, manifests=manifests,
                          teacher_name=args.checkpoint or "demo", qat=args.qat,
                          progressive=(ProgressiveConfig(importance=args.progressive)
                                       if args.progressive else None),
                          probe=probe, probe_every=args.val_every)
    _print_json({**result.report, "checkpoint": str(result.checkpoint),
                 "export_plan": str(result.export_plan),
                 "next": f"workbench apply --plan {result.export_plan} --checkpoint "
                         f"{result.checkpoint} --out <folder>"})
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = ck.OneLineParser(prog="workbench", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    e = sub.add_parser("eval", help="WER / CER of a checkpoint on a manifest")
    e.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    e.add_argument("--checkpoint", type=ck.existing_file("--checkpoint"),
                   help="model checkpoint (default: the shipped demo model)")
    e.add_argument("--manifest", type=ck.existing_file("--manifest"),
                   help="JSONL manifest (default: the shipped held-out real speech)")
    e.add_argument("--limit", type=ck.limit, default=None, help="evaluate only the first N utterances")
    e.add_argument("--threads", type=ck.threads, default=2)
    e.add_argument("--decoder", choices=["greedy", "lexicon"], default="lexicon",
                   help="greedy CTC, or greedy + correction to a lexicon of training words")
    e.add_argument("--conditions", action="store_true",
                   help="WER / CER by condition (noise, rooms, speed, telephone, voice, length) "
                        "for the model and, with --plan, the compressed model (greedy decoding)")
    e.add_argument("--plan", type=ck.existing_file("--plan"),
                   help="with --conditions: a plan JSON evaluated beside the model")
    e.add_argument("--grid", default="default",
                   help="with --conditions: default (16), full (24), or a list such as "
                        "'clean,white:10,babble:0,reverb:0.6,speed:0.9,telephone,mulaw'")
    e.add_argument("--seed", type=ck.seed, default=0, help="with --conditions: noise seed")
    e.set_defaults(func=cmd_eval)

    d = sub.add_parser("data", help="build the training corpus offline")
    d.add_argument("action", choices=["build"])
    d.add_argument("--out", help="output folder (default: ~/.cache/workbench/corpus)")
    d.add_argument("--n-train", type=ck.count, default=4000)
    d.add_argument("--seed", type=ck.seed, default=0)
    d.add_argument("--install-system-packages", action="store_true",
                   help="as root, apt-get install missing synthesizers / prompts (else: `make apt`)")
    d.set_defaults(func=cmd_data)

    t = sub.add_parser("train", help="train the demo model or a Conformer preset")
    t.add_argument("--demo", action="store_true", help="fine-tune the Whisper-tiny CTC demo model")
    t.add_argument("--preset", default="small", help="Conformer preset when not --demo")
    t.add_argument("--out", help="output folder (default: data/models/demo for --demo)")
    t.add_argument("--minutes", type=ck.minutes, default=None, help="wall-clock budget")
    t.add_argument("--seed", type=ck.seed, default=0)
    t.set_defaults(func=cmd_train)

    b = sub.add_parser("bench", help="benchmarks that print one JSON object")
    b.add_argument("what", choices=["interactive", "latency", "export", "conditions",
                                    "streaming", "search", "whisper", "drift", "lessons",
                                    "byo", "recover", "linear-blocks"])
    b.add_argument("--json", action="store_true")
    b.add_argument("--n-plans", type=ck.count, default=30)
    b.add_argument("--changes", type=ck.count, default=30)
    b.add_argument("--seed", type=ck.seed, default=0)
    b.add_argument("--trials", type=ck.count, default=32, help="bench search: trials per run")
    b.add_argument("--no-ray", action="store_true", help="bench search: serial run only")
    b.add_argument("--published", action="store_true",
                   help="latency: leave-one-model-out check on data/latency_measurements.jsonl")
    b.add_argument("--case", action="append", default=[],
                   choices=["a_progressive", "b_oneshot", "c_qat4", "d_windowed", "e_linear"],
                   help="bench recover: run only these cases (default: all five)")
    b.add_argument("--blocks", action="append", default=[], type=ck.block_set, metavar="SET",
                   help="bench recover, case e_linear: the blocks whose attention is swapped, "
                   "one run per --blocks (e.g. --blocks all --blocks 1 --blocks 1,2; default: "
                   "all, 1, then 1,2)")
    b.add_argument("--minutes", type=ck.minutes, default=20.0,
                   help="bench recover: recovery budget per case")
    b.add_argument("--steps", type=ck.steps, default=None,
                   help="bench recover: optimizer steps per case (default 400); "
                   "bench linear-blocks: per recovered set (default 90)")
    b.add_argument("--manifest", action="append", default=[], type=ck.existing_file("--manifest"),
                   help="bench recover / linear-blocks: training manifest(s) (default: the demo "
                   "corpus)")
    lesson_timing.add_arguments(b)
    b.set_defaults(func=cmd_bench)

    c = sub.add_parser("calibrate", help="measure onnxruntime here and fit the host latency profile")
    c.add_argument("--out", help="where to write the host profile (default: the user cache)")
    c.set_defaults(func=cmd_calibrate)

    a = sub.add_parser("apply", help="apply a plan: ONNX export, ORT quantization, report, card")
    a.add_argument("--plan", required=True, type=ck.existing_file("--plan"))
    a.add_argument("--checkpoint", type=ck.existing_file("--checkpoint"))
    a.add_argument("--out", required=True)
    a.add_argument("--force", action="store_true")
    a.add_argument("--strict", action="store_true")
    a.add_argument("--runtime", choices=["onnx", "executorch"], default="onnx",
                   help="onnx: model.onnx for ONNX Runtime; executorch: model.pte (XNNPACK)")
    a.add_argument("--model", choices=["demo", "whisper"], default="demo",
                   help="demo: the CTC demo (or --checkpoint); whisper: the full Whisper tiny.en "
                        "(encoder + KV-cached decoder graphs)")
    a.add_argument("--conditions", nargs="?", const="default", default=None, metavar="GRID",
                   help="also measure the ONNX model on a conditions grid (default grid if no "
                        "GRID): report.json 'conditions' and the card's accuracy by condition")
    a.add_argument("--int8-weights", choices=["auto", "signed", "unsigned"], default="auto",
                   help="int8 weight storage. signed: ONNX Runtime's U8S8 kernels (fast on "
                        "VNNI CPUs, wrong on x86 without VNNI); unsigned: uint8 + 128 (exact "
                        "everywhere, ~2x slower on VNNI); auto (default): signed when a probe "
                        "finds this CPU's U8S8 kernel exact, else unsigned")
    a.set_defaults(func=cmd_apply)

    r = sub.add_parser("recover", help="prune / factorize by a plan, then recover accuracy by "
                                       "distillation from the uncompressed model")
    r.add_argument("--plan", required=True, type=ck.existing_file("--plan"),
                   help="plan JSON (its quantization is kept for export)")
    r.add_argument("--checkpoint", type=ck.existing_file("--checkpoint"),
                   help="teacher checkpoint (default: the demo model)")
    r.add_argument("--out", required=True, help="folder for model.safetensors, export_plan.json, "
                                                 "recovery.json")
    r.add_argument("--manifest", action="append", default=[], type=ck.existing_file("--manifest"),
                   help="training manifest(s) (default: the demo corpus, built if missing)")
    r.add_argument("--minutes", type=ck.minutes, default=10.0, help="wall-clock training budget")
    r.add_argument("--steps", type=ck.steps, default=None, help="optimizer steps (default 360)")
    r.add_argument("--qat", action="store_true", help="also train for the plan's weight bits "
                                                      "(quantization-aware, straight-through)")
    r.add_argument("--progressive", choices=("magnitude", "taylor", "activation"), default=None,
                   help="prune the plan's heads / neurons / channels / unstructured weights "
                        "in steps while distilling (cubic schedule), re-scoring importance this "
                        "way before each step; the result has the one-shot shapes and sparsity")
    r.add_argument("--val-manifest", type=ck.existing_file("--val-manifest"), default=None,
                   help="validation manifest for the progress bar's WER estimate of the model "
                        "being trained (default: the demo corpus's synth/dev split when training "
                        "on it; never the held-out test sets)")
    r.add_argument("--val-limit", type=ck.limit, default=16,
                   help="utterances of --val-manifest the estimate uses (default 16)")
    r.add_argument("--val-every", type=ck.steps, default=10,
                   help="a WER estimate every N steps (and before the first; default 10)")
    r.add_argument("--threads", type=ck.threads, default=2)
    r.add_argument("--force", action="store_true", help="replace an existing non-empty --out folder")
    r.set_defaults(func=cmd_recover)

    from workbench.search.cli import add_parsers as add_search_parsers  # search, sweep
    add_search_parsers(sub)
    from workbench.search.recipe_cli import add_parser as add_recipe_parser  # recipe-search
    add_recipe_parser(sub)
    from workbench.latency.cli import add_parser as add_latency_parser
    add_latency_parser(sub)
    from workbench.deploy.arm64 import add_parser as add_arm64_parser  # verify-arm64
    add_arm64_parser(sub)
    from workbench.deploy.bundle_cli import add_parser as add_bundle_parser  # bundle
    add_bundle_parser(sub)

    lab = sub.add_parser("lab", help="open the workbench notebook in JupyterLab")
    lab.add_argument("--port", type=ck.port, default=8888)
    lab.set_defaults(func=cmd_lab)
    return p


def main(argv: list[str] | None = None) -> int:
    if argv is None:   # a real command line (not a call from Python): SIGTERM cleans up too
        ck.install_signal_handlers()
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as done:   # --help (0) or a usage error, already printed as one line (2)
        return int(done.code or 0)
    try:
        return int(args.func(args) or 0)
    except (WorkbenchError, KeyboardInterrupt) as err:
        return ck.report_error(args.command, err)


if __name__ == "__main__":
    sys.exit(main())
