"""The recovered pruned demo that lesson 02b ends with (data/models/demo_pruned), and how a
`workbench recover` output folder becomes it.

    workbench recover --plan data/models/demo_pruned/plan.json --progressive taylor \
        --steps 319 --minutes 200 --out DIR                  # the recipe of `bench recover` (a)
    python -m workbench.lessons.shipped DIR "<that command>"  # -> data/models/demo_pruned

`workbench recover` writes float32 (18 MB for this model); the shipped copy is float16, as the
demo is (`load_checkpoint` reads it back as float32), with the recovery report and export plan
the command wrote, unchanged, and `provenance.json`: the command, whether its step budget or its
wall-clock budget ended it (a step budget makes the result independent of the machine's load),
when, and the load average. No WER is stored for the lesson: it measures the model itself.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from workbench.models import load_checkpoint, save_checkpoint
from workbench.paths import DATA_DIR
from workbench.plan import CompressionPlan

PRUNED_DIR = DATA_DIR / "models" / "demo_pruned"
#: Files of a `workbench recover` output folder copied as they are.
COPIED = ("recovery.json", "export_plan.json")


def ship_recovered(src: Path, command: str, dst: Path = PRUNED_DIR,
                   plan: Path | None = None) -> dict[str, Any]:
    """Write the float16 copy of the recovered model in `src` (and its report, export plan, the
    input `plan` if given, provenance) to `dst`. Returns the provenance."""
    src, dst = Path(src), Path(dst)
    report = json.loads((src / "recovery.json").read_text())
    model = load_checkpoint(src / "model.safetensors")
    structure = CompressionPlan.from_json(json.dumps(report["structure"]),
                                          source_name=f"{src}/recovery.json structure")
    dst.mkdir(parents=True, exist_ok=True)
    save_checkpoint(model, dst / "model.safetensors",
                    metadata={"recovery": report,
                              "stored_as": "float16 copy of the float32 checkpoint written by "
                                           "`workbench recover` (provenance.json)"},
                    structure=structure, dtype=torch.float16)
    for name in COPIED:
        shutil.copyfile(src / name, dst / name)
    if plan is not None:
        shutil.copyfile(plan, dst / "plan.json")
    steps, budget = report["steps"], report["config"]["steps"]
    provenance = {
        "command": command,
        "ended_by": "step budget" if steps >= budget else
                    f"wall-clock budget ({report['config']['max_minutes']} min) after {steps} of "
                    f"{budget} steps: a re-run on a machine with another load differs",
        "float16_copy": f"python -m workbench.lessons.shipped {src} '<command>'",
        "copied_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "load_average_at_copy": [round(x, 2) for x in os.getloadavg()],
    }
    (dst / "provenance.json").write_text(json.dumps(provenance, indent=2) + "\n")
    return provenance


if __name__ == "__main__":
    if len(sys.argv) not in (3, 4):
        sys.exit("usage: python -m workbench.lessons.shipped RECOVER_OUT_DIR 'COMMAND' [PLAN]")
    print(json.dumps(ship_recovered(Path(sys.argv[1]), sys.argv[2],
                                    plan=Path(sys.argv[3]) if len(sys.argv) == 4 else None),
                     indent=2))
