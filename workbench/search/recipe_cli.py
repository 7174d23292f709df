"""`workbench recipe-search` (registered by one line in workbench/__main__.py): search the
recovery recipe of a plan on the recovery corpus (workbench.search.recipe), write the trial
table and the best recipe, and with --recover-steps recover the plan with that recipe.

    workbench recipe-search --plan plan.json --out recipe/ --trials 8 --trial-steps 40
    recipe/trials.json        every trial: recipe, validation scores, steps, seconds
    recipe/best_recipe.json   the best recipe and its RecoverConfig for --recover-steps steps
    recipe/recovered/         (--recover-steps N) the plan recovered with it, as `workbench
                              recover` writes it (held-out WER in recovery.json, measured once,
                              at the end)
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

import torch
from tqdm import tqdm

from workbench import cli_checks as ck


def cmd_recipe_search(args: argparse.Namespace) -> int:
    from workbench.export.apply import read_plan
    from workbench.export.atomic import write_text_atomic
    from workbench.recovery import DEFAULT_CONFIG
    from workbench.search.recipe import (RecipeSearchConfig, check_training_manifests,
                                         search_recipe_for_plan)

    out = Path(args.out)
    ck.check_new_output_dir(out, args.force)       # nothing computed before the inputs pass
    manifests = [Path(m) for m in args.manifest] or None
    check_training_manifests(manifests)
    config = RecipeSearchConfig(trials=args.trials, trial_steps=args.trial_steps,
                                val_items=args.val_items, objective=args.objective,
                                seed=args.seed)
    plan = read_plan(Path(args.plan))
    torch.set_num_threads(args.threads)
    from workbench.models import load_checkpoint, load_demo  # looked up per call: tests monkeypatch it
    teacher = load_checkpoint(args.checkpoint) if args.checkpoint else load_demo()
    bar = tqdm(total=args.trials, desc="recipe search", file=sys.stderr, disable=None)

    def on_trial(trial) -> None:
        bar.update(1)
        best = trial.scores.get(f"val_{args.objective}")
        bar.set_postfix(trial=trial.number, val=best if trial.error is None else "failed")

    try:
        result = search_recipe_for_plan(plan, teacher, manifests=manifests, config=config,
                                        on_trial=on_trial, progress=not args.json)
    finally:
        bar.close()
    steps = args.recover_steps or DEFAULT_CONFIG.steps
    best = result.best
    doc = result.table()
    doc["threads"] = torch.get_num_threads()
    best_doc = {"trial": best.number, "recipe": asdict(best.recipe), "scores": best.scores,
                "default_scores": result.default.scores,
                "recover_config": asdict(best.recipe.config(steps, len(teacher.blocks))),
                "recover_steps": steps,
                "use": "workbench.recovery.recover_plan(plan, config=RecoverConfig("
                       "**recover_config)), or this command with --recover-steps"}
    out.mkdir(parents=True, exist_ok=True)
    # --force: what an earlier run left here must not pass for this run's.
    ck.remove_stale([out / "trials.json", out / "best_recipe.json", out / "recovered"])
    write_text_atomic(out / "trials.json", json.dumps(doc, indent=2) + "\n")
    write_text_atomic(out / "best_recipe.json", json.dumps(best_doc, indent=2) + "\n")
    summary = {"out": str(out), "best_trial": best.number, "best_recipe": asdict(best.recipe),
               "best_scores": best.scores, "default_scores": result.default.scores,
               "trials": len(result.trials), "trial_steps": args.trial_steps}
    if args.recover_steps:
        from workbench.recovery import recover_plan
        rec = recover_plan(plan, teacher, out_dir=out / "recovered",
                           config=best.recipe.config(steps, len(teacher.blocks)),
                           manifests=manifests, teacher_name=args.checkpoint or "demo",
                           progress=not args.json)
        summary["recovered"] = {k: rec.report[k] for k in (
            "steps", "greedy_wer_before", "greedy_wer_after", "teacher_greedy_wer", "params")}
        summary["recovered"]["checkpoint"] = str(rec.checkpoint)
        summary["recovered"]["export_plan"] = str(rec.export_plan)
    if args.json:
        sys.stdout.write(json.dumps({**summary, "table": doc}, indent=2) + "\n")
    else:
        for t in result.trials:
            s = t.scores
            print(f"trial {t.number:>3}  " + (f"val WER {s['val_wer']}  KD {s['val_kd']:.4f}  "
                                              if t.error is None else f"failed: {t.error}  ")
                  + f"{t.recipe}")
        print(f"best: trial {best.number} -> {out / 'best_recipe.json'}")
        if "recovered" in summary:
            r = summary["recovered"]
            print(f"recovered {r['steps']} steps: greedy WER after {r['greedy_wer_after']} "
                  f"-> {r['checkpoint']}")
    return 0


#: workbench.search.recipe.OBJECTIVES, spelled here so building the parser imports no torch.
OBJECTIVES = ("kd", "wer")


def add_parser(sub) -> None:
    r = sub.add_parser("recipe-search",
                       help="search the recovery recipe (lr, loss mix, what trains, per-block "
                            "weights) of a plan on the recovery corpus; held-out sets untouched",
                       description="Optuna TPE over recovery recipes: each trial recovers the "
                                   "plan for --trial-steps steps and is scored on a validation "
                                   "split of the recovery corpus (never real_test / "
                                   "synth_test). Trial 0 is the default recipe.")
    r.add_argument("--plan", required=True, type=ck.existing_file("--plan"),
                   help="plan JSON (its pruning / low rank is recovered)")
    r.add_argument("--out", required=True, help="folder for trials.json, best_recipe.json "
                                                 "(and recovered/ with --recover-steps)")
    r.add_argument("--checkpoint", type=ck.existing_file("--checkpoint"),
                   help="teacher checkpoint (default: the demo model)")
    r.add_argument("--manifest", action="append", default=[], type=ck.existing_file("--manifest"),
                   help="recovery manifest(s) (default: the demo corpus, built if missing)")
    r.add_argument("--trials", type=ck.count, default=8)
    r.add_argument("--trial-steps", type=ck.steps, default=40,
                   help="optimizer steps per trial (steps, not minutes: load-independent)")
    r.add_argument("--val-items", type=ck.count, default=64,
                   help="validation items carved from the recovery corpus (by transcript)")
    r.add_argument("--objective", choices=OBJECTIVES, default="kd",
                   help="kd: KL of the CTC posteriors to the teacher's on the validation split "
                        "(default: short trials leave WER saturated near 1); wer: greedy WER")
    r.add_argument("--seed", type=ck.seed, default=0)
    r.add_argument("--recover-steps", type=ck.steps, default=None,
                   help="then recover the plan with the best recipe for this many steps")
    r.add_argument("--threads", type=ck.threads, default=2)
    r.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    r.add_argument("--force", action="store_true", help="replace a non-empty --out folder")
    r.set_defaults(func=cmd_recipe_search)
