"""The model chooser in a real browser (Voila, Debian chromium through Playwright): the dashboard
opens on the CTC demo, a click switches to the full Whisper tiny.en, a person sets one decoder
layer to 4 bits, a click switches back; every readout must show what the Python API computes for
the same model, plan and utterances, and the banner must name the model the readouts are for.

The notebook is written by the test (one cell: `ModelChooser()`), so the lessons stay untouched.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from pages import WER_DONE_JS, one_cell_notebook

pytestmark = pytest.mark.browser
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"

BITS_PATH = "decoder.blocks.0.mlp.fc1"
BITS_SELECT = ".wb-bits-decoder-blocks-0-mlp-fc1 select"
NOTEBOOK = one_cell_notebook("chooser", ["from workbench.ui import ModelChooser\n",
                                         "ModelChooser()"])


@pytest.fixture(scope="module")
def expected(eval_limit):
    """The numbers of both apps from the Python API (same models, utterances and settings as
    ModelChooser's builders: Workbench.demo / WhisperWorkbench.demo under WORKBENCH_EVAL_LIMIT)."""
    from workbench.evaluate import load_eval_set
    from workbench.models.whisper_full import WhisperTokenizer, load_whisper_asr
    from workbench.paths import REAL_TEST
    from workbench.plan import CompressionPlan, LayerConfig, QuantConfig
    from workbench.engine.session import Session, plan_key
    from workbench.size import size
    from workbench.ui import demo_inputs
    from workbench.engine.whisper_session import WhisperSession

    ctc = demo_inputs(eval_limit)
    ctc_wer = Session(ctc.model, ctc.eval_set).baseline_full.wer
    model = load_whisper_asr()
    session = WhisperSession(model, WhisperTokenizer(),
                             load_eval_set(REAL_TEST, limit=eval_limit, progress=False))
    plan = CompressionPlan().with_layer(BITS_PATH, LayerConfig(quant=QuantConfig(weight_bits=4)))
    full = session.evaluate(plan, "full")
    return {"ctc_wer": ctc_wer, "whisper_wer": session.baseline_full.wer,
            "plan_key": plan_key(plan), "plan_wer": full.wer, "plan_cer": full.cer,
            "plan_bytes": size(model, plan).total_bytes,
            "whisper_bytes": size(model, CompressionPlan()).total_bytes}


def _num(page, cls: str) -> dict:
    return page.evaluate(f"() => Object.assign({{}}, document.querySelector('{cls} .wb-num')"
                         f".dataset)")


def _wait_model(page, key: str) -> None:
    page.wait_for_selector(f".wb-model-banner [data-model='{key}']", state="attached")
    app = ".wb-app.wb-app-whisper" if key == "whisper" else ".wb-app:not(.wb-app-whisper)"
    page.wait_for_selector(f"{app} .wb-wer .wb-num[data-kind='full']", state="attached",
                           timeout=600_000)


def _errors(page) -> list[str]:
    return [t for t in page.locator(".wb-error-text").all_inner_texts() if t.strip()]


def test_chooser_switches_models_and_shows_the_python_numbers(voila_for, browser_page, expected,
                                                              tmp_path):
    nb = tmp_path / "chooser.ipynb"
    nb.write_text(json.dumps(NOTEBOOK))
    server = voila_for(nb)
    page = browser_page
    page.goto(f"{server.url}/")
    page.wait_for_selector(".wb-chooser", timeout=300_000)
    _wait_model(page, "ctc")
    assert float(_num(page, ".wb-wer")["wer"]) == pytest.approx(expected["ctc_wer"], abs=1e-9)
    assert "CTC demo" in page.locator(".wb-model-banner").inner_text()

    page.locator(".wb-model-chooser button").filter(has_text="Whisper tiny.en").click()
    _wait_model(page, "whisper")
    assert "Whisper tiny.en" in page.locator(".wb-model-banner").inner_text()
    assert "Whisper tiny.en" in page.locator(".wb-app-whisper .wb-model-name").inner_text()
    base = _num(page, ".wb-wer")
    assert float(base["wer"]) == pytest.approx(expected["whisper_wer"], abs=1e-9)
    assert int(_num(page, ".wb-size")["bytes"]) == expected["whisper_bytes"]

    page.wait_for_selector(BITS_SELECT)
    page.locator(BITS_SELECT).select_option(label="4 bit")
    page.wait_for_function(WER_DONE_JS, arg=base["plan"], timeout=600_000)
    wer = _num(page, ".wb-wer")
    assert wer["plan"] == expected["plan_key"]        # the browser built exactly this plan
    assert float(wer["wer"]) == pytest.approx(expected["plan_wer"], abs=1e-9)
    assert float(wer["cer"]) == pytest.approx(expected["plan_cer"], abs=1e-9)
    assert int(_num(page, ".wb-size")["bytes"]) == expected["plan_bytes"]
    assert "decoder steps" in page.locator(".wb-latency").inner_html()
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "model_chooser_whisper.png"), full_page=True)

    page.locator(".wb-model-chooser button").filter(has_text="CTC demo").click()
    _wait_model(page, "ctc")                           # kept from before: no rebuild
    assert float(_num(page, ".wb-wer")["wer"]) == pytest.approx(expected["ctc_wer"], abs=1e-9)
    assert _errors(page) == []
