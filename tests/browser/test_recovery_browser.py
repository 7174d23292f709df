"""Recovery you can watch, in a real browser (Voila, Debian chromium through Playwright): the
dashboard on the demo model with half of every FFN's neurons pruned; in the Recover tab a person
starts a recovery, watches the plot gain points, cancels it; starts a short one (3 steps on the
shipped calibration prompts) that runs to the end, and makes its result the baseline. The size
and WER readouts must then show what the Python API computes on the saved recovered model for
the same utterances, before and after one more slider move.

The notebook is written by the test (one cell), so the lessons stay untouched. Every wait is on a
visible state (data-* attributes of the status line and readouts, plot points), never a sleep.
Phase durations go to test-artifacts/recovery_browser.json with the load average (not asserted).
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from pages import WER_DONE_JS, one_cell_notebook, open_voila_app

pytestmark = pytest.mark.browser
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"

BITS_PATH = "blocks.0.mlp.fc1"
BITS_SELECT = ".wb-bits-blocks-0-mlp-fc1 select"
STATUS = ".wb-recover-status .wb-num"
POINTS = ".wb-recover-figure .scatterlayer .point"


def _notebook(out: Path) -> dict:
    return one_cell_notebook("recover", [
        "from pathlib import Path\n",
        "from workbench.compress import presets\n",
        "from workbench.paths import CALIB\n",
        "from workbench.ui import Workbench\n",
        "wb = Workbench.demo()\n",
        "wb.set_plan(presets.prune_ffn_neurons(0.5), 'prune half the FFN neurons')\n",
        "wb.recovery.manifests = [CALIB]   # the shipped calibration prompts: seconds, not minutes\n",
        f"wb.recovery.out_dir = Path({str(out)!r})\n",
        "wb.wait()   # the plan's WER is in before the page loads its widgets (pages.py)\n",
        "wb\n"])


def _data(page, selector: str) -> dict:
    return page.evaluate(f"() => Object.assign({{}}, document.querySelector(\"{selector}\")"
                         f".dataset)")


def _set_number(page, cls: str, value: int) -> None:
    box = page.locator(f"{cls} input")
    box.fill(str(value))
    box.press("Enter")


def _points(page) -> int:
    return page.evaluate(f"() => document.querySelectorAll('{POINTS}').length")


def _errors(page) -> list[str]:
    return [t for t in page.locator(".wb-error-text").all_inner_texts() if t.strip()]


def test_recovery_plots_cancels_and_becomes_the_baseline(voila_for, browser_page, eval_limit,
                                                         tmp_path):
    out = tmp_path / "recovered"
    nb = tmp_path / "recover.ipynb"
    nb.write_text(json.dumps(_notebook(out)))
    server = voila_for(nb)
    page = browser_page
    phases: dict[str, float] = {}
    t = time.monotonic()

    def phase(name: str) -> None:
        nonlocal t
        now = time.monotonic()
        phases[name] = round(now - t, 1)
        t = now

    open_voila_app(page, server)
    page.wait_for_selector(".wb-wer .wb-num[data-kind='full']", state="attached",
                           timeout=300_000)
    phase("page: kernel, notebook, widgets")
    page.locator(".wb-tabs .lm-TabBar-tab").filter(has_text="Recover").click()
    page.wait_for_selector(".wb-recover-start", timeout=60_000)
    assert "estimate on" in page.locator(".wb-recover-about").inner_text()
    assert page.locator(".wb-recover-use").is_disabled()

    # A long run: the plot gains points while it trains; then the person cancels it.
    _set_number(page, ".wb-recover-steps", 200)
    _set_number(page, ".wb-recover-minutes", 0)
    _set_number(page, ".wb-recover-every", 1)
    page.locator(".wb-recover-start").click()
    page.wait_for_function(f"() => {{ const el = document.querySelector('{STATUS}');"
                           f"return el && +el.dataset.steps >= 1 && +el.dataset.estimates >= 2"
                           f" && document.querySelectorAll('{POINTS}').length >= 2; }}",
                           timeout=600_000)
    first = _points(page)
    page.wait_for_function(f"(n) => document.querySelectorAll('{POINTS}').length > n",
                           arg=first, timeout=600_000)     # live: more points, same run
    assert _data(page, STATUS)["state"] == "running"
    phase("long run: start -> plot gained points")
    page.locator(".wb-recover-cancel").click()
    page.wait_for_selector(f"{STATUS}[data-state='cancelled']", state="attached",
                           timeout=300_000)
    phase("cancel -> cancelled")
    assert 1 <= int(_data(page, STATUS)["steps"]) < 200
    assert page.locator(".wb-recover-use").is_disabled()
    assert not (out / "model.safetensors").exists()        # a cancelled run saves nothing

    # A short run to the end: 3 steps, an estimate after each; its result becomes the baseline.
    _set_number(page, ".wb-recover-steps", 3)
    page.locator(".wb-recover-start").click()
    page.wait_for_selector(f"{STATUS}[data-state='done']", state="attached", timeout=600_000)
    phase("short run: 3 steps + measure")
    assert _data(page, STATUS)["steps"] == "3" and _data(page, STATUS)["estimates"] == "4"
    page.wait_for_function(f"() => document.querySelectorAll('{POINTS}').length >= 5",
                           timeout=60_000)               # 4 estimates + the measured star
    recovered_wer = float(_data(page, ".wb-recover-result .wb-num")["wer"])
    before = _data(page, ".wb-wer .wb-num")
    before_size = int(_data(page, ".wb-size .wb-num")["bytes"])   # the pruning plan's
    page.locator(".wb-recover-use").click()
    page.wait_for_selector(".wb-baseline .wb-num[data-baseline]", state="attached",
                           timeout=300_000)
    page.wait_for_function(WER_DONE_JS, arg=before["plan"], timeout=300_000)
    phase("use as baseline -> readouts on the new baseline")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "recovery_baseline.png"), full_page=True)
    after = _data(page, ".wb-wer .wb-num")
    after_size = int(_data(page, ".wb-size .wb-num")["bytes"])

    # The same numbers from the Python API, on the checkpoint the dashboard saved.
    from workbench.engine.session import Session, plan_key
    from workbench.evaluate import evaluate
    from workbench.models import load_checkpoint
    from workbench.plan import CompressionPlan, LayerConfig, QuantConfig
    from workbench.size import size
    from workbench.ui import demo_inputs
    model = load_checkpoint(out / "model.safetensors")
    inputs = demo_inputs(eval_limit)
    eval_set, demo = inputs.eval_set, inputs.model
    session = Session(model, eval_set)
    assert recovered_wer == pytest.approx(evaluate(model, eval_set).wer, abs=1e-6)
    assert after["plan"] == plan_key(CompressionPlan())   # nothing left on top: no quantization
    assert float(after["wer"]) == pytest.approx(session.baseline_full.wer, abs=1e-9)
    assert float(after["wer"]) != pytest.approx(float(before["wer"]), abs=1e-9)
    # the size readout is the recovered model's with nothing on top: the bytes the pruning plan
    # had on the original, now with an empty plan; the original model itself is larger
    assert after_size == size(model, CompressionPlan()).total_bytes == before_size
    assert after_size < size(demo, CompressionPlan()).total_bytes
    assert page.locator(".wb-baseline").inner_text().count("recovered model #2") == 1

    # One more slider move on the recovered model: its WER is the recovered model's.
    page.locator(".wb-tabs .lm-TabBar-tab").filter(has_text="Compress").click()
    page.wait_for_selector(BITS_SELECT, timeout=60_000)
    page.locator(BITS_SELECT).select_option(label="4 bit")
    page.wait_for_function(WER_DONE_JS, arg=after["plan"], timeout=300_000)
    phase("slider move on the recovered model")
    moved = _data(page, ".wb-wer .wb-num")
    plan = CompressionPlan().with_layer(BITS_PATH, LayerConfig(quant=QuantConfig(weight_bits=4)))
    assert moved["plan"] == plan_key(plan)
    assert float(moved["wer"]) == pytest.approx(session.evaluate(plan, "full").wer, abs=1e-9)
    assert int(_data(page, ".wb-size .wb-num")["bytes"]) == size(model, plan).total_bytes
    assert _errors(page) == []
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "recovery_browser.json").write_text(json.dumps({
        "phases_s": phases, "measured": time.strftime("%Y-%m-%d %H:%M:%S"),
        "load_average_1min": os.getloadavg()[0], "cpus": os.cpu_count(),
        "eval_utterances": len(eval_set)}, indent=2) + "\n")
