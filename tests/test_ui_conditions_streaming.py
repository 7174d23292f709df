"""The Conditions tab (background grid, heat map, cancel) and the Streaming panel of the app."""
from __future__ import annotations

import pytest

pytest.importorskip("ipywidgets")
pytest.importorskip("plotly")

from workbench.evaluate import load_eval_set  # noqa: E402
from workbench.ui import Workbench  # noqa: E402
from workbench.ui.conditions_tab import conditions_heatmap  # noqa: E402


@pytest.fixture()
def app(tmp_path, monkeypatch):
    from test_conditions import _tiny_model, _tiny_set

    monkeypatch.setenv("WORKBENCH_CACHE_DIR", str(tmp_path / "cache"))
    es = load_eval_set(_tiny_set(tmp_path), progress=False)
    return Workbench(_tiny_model(), es, device="rpi4", quick_utterances=2)


def test_heatmap_has_one_row_per_condition_and_colours_the_change() -> None:
    fig = conditions_heatmap(["clean", "white 0 dB"], [0.2, 0.5], [0.25, 0.7])
    hm = fig.data[0]
    assert list(hm.y) == ["clean", "white 0 dB"] and len(hm.x) == 3
    assert hm.z[1][2] == pytest.approx(20.0) and hm.text[1][2] == "+20.0"


def test_conditions_tab_runs_the_grid_in_the_background_and_draws(app) -> None:
    from workbench.presets import int8_everywhere

    app.set_plan(int8_everywhere())
    app.wait()
    tab = app.conditions
    tab.grid.options = [("test", "clean,white:0,speed:1.1")]  # a short grid for the test
    tab.run.click()
    tab.wait(300)
    assert tab.result is not None and [r.condition for r in tab.result.rows][:3] == \
        ["clean", "white 0 dB", "speed x1.1"]
    assert all(r.plan_wer is not None for r in tab.result.rows)
    assert "done" in tab.status.value and not tab.run.disabled
    assert len(tab.figure.figure.data) == 1 and "<table" in tab.table.value


def test_conditions_tab_cancel_stops_the_job(app) -> None:
    tab = app.conditions
    tab.grid.options = [("test", "clean,white:0,white:5,pink:0")]
    tab.start()
    tab.cancel.click()          # Job.cancel: before the job starts, or at its next condition
    tab.wait(300)
    assert "cancelled" in tab.status.value and not tab.run.disabled


def test_streaming_panel_prices_at_once_and_measures_wer_in_the_background(app) -> None:
    panel = app.streaming
    app.tabs.selected_index = list(app.tabs.titles).index("Streaming")
    panel.wait(300)
    panel.render()
    assert "measured" in panel.readout.value
    before = panel.readout.value
    panel.chunk.value = 0.5
    assert panel.readout.value != before  # latency readout redrawn at once
    first_half = float(panel.readout.value.split("data-first-ms='")[1].split("'")[0])
    panel.chunk.value = 2.0
    first_two = float(panel.readout.value.split("data-first-ms='")[1].split("'")[0])
    assert first_two > first_half + 1400  # the chunk itself adds 1.5 s
    panel.wait(300)
    assert len(panel._wers) >= 2
