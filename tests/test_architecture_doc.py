"""docs/architecture.md stays in step with the code: its layer picture names every layer module of
.importlinter, and every file it names in backticks exists (a rename that forgets the page, e.g.
compress/recover.py -> compress/distill.py, fails here)."""
from __future__ import annotations

import configparser
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "architecture.md"


def _layer_modules() -> list[str]:
    config = configparser.ConfigParser()
    config.read(ROOT / ".importlinter")
    layers = config["importlinter:contract:layers"]["layers"]
    return [name.strip() for line in layers.splitlines() for name in re.split(r"[:|]", line)
            if name.strip()]


def _picture() -> str:
    match = re.search(r"## Layers\n.*?```\n(.*?)```", DOC.read_text(), re.DOTALL)
    assert match, "no layer picture (a fenced block under '## Layers') in docs/architecture.md"
    return match.group(1)


def test_layer_picture_names_every_layer_of_importlinter() -> None:
    modules = _layer_modules()
    assert len(modules) > 30, modules          # the contract was read
    picture = _picture()
    missing = [m for m in modules
               if not re.search(rf"(?<![\w/.]){re.escape(m)}(?:/|\.py\b|\b)", picture)]
    assert not missing, f"docs/architecture.md's layer picture does not name: {missing}"


def test_files_named_in_backticks_exist() -> None:
    package_files = [p.relative_to(ROOT).as_posix() for p in (ROOT / "workbench").rglob("*.py")]
    package_files += [p.relative_to(ROOT).as_posix() for p in (ROOT / "tests").glob("*.py")]
    named = {m.group(1) for m in re.finditer(r"`([\w/]+\.py)(?::[^`]*)?`", DOC.read_text())}
    named -= {"workbench/compress/techniques/my_swap.py"}      # the how-to's example, on purpose
    assert len(named) > 10, named
    gone = sorted(n for n in named
                  if not any(f == n or f.endswith("/" + n) for f in package_files))
    assert not gone, f"docs/architecture.md names files that do not exist: {gone}"
