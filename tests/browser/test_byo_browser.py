"""An adapted torchaudio Conformer-CTC in the dashboard, in a real browser (Voila + Debian
chromium through Playwright): the app opens on `Workbench(adapt(conformer), eval_set)`, says the
model is untrained, shows the Python API's baseline WER, and a key press on the prune slider of
a graph-found FFN group gives the WER and size the Python API computes for that plan.

The notebook is written by the test (one cell), so the lessons stay untouched."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from pages import WER_DONE_JS, one_cell_notebook

pytestmark = pytest.mark.browser
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
GROUP = "blocks.0.block.ffn1.sequential"          # found from the graph, not by name
HANDLE = ".wb-prune-blocks-0-block-ffn1-sequential .noUi-handle"
LIMIT, QUICK = 8, 4
SOURCE = [
    "import torch\n",
    "from torchaudio.models import Conformer\n",
    "from workbench import REAL_TEST, load_eval_set\n",
    "from workbench.byo import adapt\n",
    "from workbench.ui import Workbench\n",
    "torch.manual_seed(0)\n",
    "conformer = Conformer(input_dim=80, num_heads=4, ffn_dim=256, num_layers=2,\n",
    "                      depthwise_conv_kernel_size=31)\n",
    f"eval_set = load_eval_set(REAL_TEST, limit={LIMIT}, progress=False)\n",
    f"Workbench(adapt(conformer), eval_set, quick_utterances={QUICK}).show()",
]
NOTEBOOK = one_cell_notebook("byo", SOURCE)


def _num(page, cls: str) -> dict:
    return page.evaluate(f"() => Object.assign({{}}, document.querySelector('{cls} .wb-num')"
                         f".dataset)")


@pytest.fixture(scope="module")
def model_and_set():
    import torch
    from torchaudio.models import Conformer

    from workbench import REAL_TEST, load_eval_set
    from workbench.byo import adapt
    torch.manual_seed(0)
    conformer = Conformer(input_dim=80, num_heads=4, ffn_dim=256, num_layers=2,
                          depthwise_conv_kernel_size=31)
    return adapt(conformer), load_eval_set(REAL_TEST, limit=LIMIT, progress=False)


def test_adapted_conformer_opens_in_the_dashboard_and_prunes_a_graph_group(
        voila_for, browser_page, model_and_set, tmp_path):
    from workbench.plan import CompressionPlan
    from workbench.engine.session import Session, plan_key
    from workbench.size import size
    from workbench.ui.compress_tab import PRUNE_STEP
    from workbench.ui.edits import set_prune

    nb = tmp_path / "byo.ipynb"
    nb.write_text(json.dumps(NOTEBOOK))
    server = voila_for(nb)
    page = browser_page
    page.goto(f"{server.url}/", timeout=900_000)  # Voila runs the cell before it serves
    page.wait_for_selector(".wb-app", timeout=300_000)
    page.wait_for_selector(".wb-wer .wb-num[data-kind='full']", state="attached",
                           timeout=600_000)
    assert "untrained" in page.locator(".wb-app").first.inner_text()
    model, eval_set = model_and_set
    session = Session(model, eval_set, quick_utterances=QUICK)
    base = _num(page, ".wb-wer")
    assert float(base["wer"]) == pytest.approx(session.baseline_full.wer, abs=1e-9)

    page.locator(".wb-tabs .lm-TabBar-tab").filter(has_text="Compress").click()
    page.wait_for_selector(HANDLE, timeout=120_000)
    page.locator(HANDLE).focus()
    page.keyboard.press("ArrowRight")
    page.wait_for_function(WER_DONE_JS, arg=base["plan"], timeout=600_000)
    plan = set_prune(CompressionPlan(), model, GROUP, PRUNE_STEP, "neurons")
    wer = _num(page, ".wb-wer")
    assert wer["plan"] == plan_key(plan)            # the browser built exactly this plan
    assert float(wer["wer"]) == pytest.approx(session.evaluate(plan, "full").wer, abs=1e-9)
    assert int(_num(page, ".wb-size")["bytes"]) == size(model, plan).total_bytes
    assert [t for t in page.locator(".wb-error-text").all_inner_texts() if t.strip()] == []
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "byo_conformer.png"), full_page=True)
