"""Where the shipped data lives, and the per-user cache (never inside the repo)."""
from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = REPO_ROOT / "data"
DEMO_DIR = DATA_DIR / "models" / "demo"
REAL_TEST = DATA_DIR / "real_test" / "manifest.jsonl"
SYNTH_TEST = DATA_DIR / "synth_test" / "manifest.jsonl"
CALIB = DATA_DIR / "calib" / "manifest.jsonl"


def cache_dir() -> Path:
    """Per-user cache: $WORKBENCH_CACHE_DIR, else ~/.cache/workbench. Created on demand."""
    path = Path(os.environ.get("WORKBENCH_CACHE_DIR", Path.home() / ".cache" / "workbench"))
    path.mkdir(parents=True, exist_ok=True)
    return path
