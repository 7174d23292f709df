"""workbench.lessons.edge: lesson 05's public handles give the latency package's own numbers."""
from __future__ import annotations

import math

import pytest

from workbench.compress import presets
from workbench.latency import layer_table, load_device, predict_latency
from workbench.latency.cost import layer_latency
from workbench.latency.devices import known_devices
from workbench.latency.hardware import load_edge_device
from workbench.latency.predict import LatencyInputError
from workbench.latency.published import error_band_pct
from workbench.lessons import published_fit, roofline_inputs, solutions, trace_for_edge

TARGETS = [("rpi4_a72", "tflite", 1), ("rpi4_a72", "xnnpack", 3), ("rpi5_a76", None, None),
           ("cortex_m55_alif_e7", None, None)]


@pytest.mark.parametrize("device,runtime,threads", TARGETS)
def test_a_trace_priced_on_a_device_is_predict_latency(whisper_small, device, runtime,
                                                       threads) -> None:
    plan = presets.prune_ffn_neurons(0.5)
    report = trace_for_edge(whisper_small, plan, 1.5).price(device, runtime, threads)
    want = predict_latency(whisper_small, device, 1.5, plan, runtime=runtime, threads=threads)
    assert math.isclose(report.total_ms, want.total_ms, rel_tol=1e-12)
    assert [(x.path, x.role, x.op, x.precision) for x in report.layers] == \
        [(x.path, x.role, x.op, x.precision) for x in want.layers]
    assert (report.runtime, report.threads, report.error_band_pct) == \
        (want.runtime, want.threads, want.error_band_pct)


def test_with_bits_prices_like_predict_latency_with_that_mapping(whisper_small) -> None:
    report = trace_for_edge(whisper_small, None, 1.0).with_bits({"*": 8}).price("rpi5_a76")
    want = predict_latency(whisper_small, "rpi5_a76", 1.0, {"*": 8})
    assert math.isclose(report.total_ms, want.total_ms, rel_tol=1e-12)
    assert {x.precision for x in report.layers if x.op == "gemm"} == {"int8"}


def test_with_bits_keeps_the_plans_bits_where_the_mapping_says_nothing(whisper_small) -> None:
    trace = trace_for_edge(whisper_small, presets.int8_everywhere(), 1.0)
    some = trace.with_bits({"blocks.0.mlp.*": 4})
    assert {p: b for p, b in some.bits.items() if not p.startswith("blocks.0.mlp.")} == \
        {p: b for p, b in trace.bits.items() if not p.startswith("blocks.0.mlp.")}
    assert some.bits["blocks.0.mlp.fc1"] == 4 and trace.bits["blocks.0.mlp.fc1"] == 8


def test_at_a_longer_length_matches_a_trace_of_that_length(whisper_small) -> None:
    scaled = trace_for_edge(whisper_small, None, 0.5).at(1.0)
    fresh = trace_for_edge(whisper_small, None, 1.0)
    assert scaled.seconds == 1.0
    a, b = scaled.price("rpi4_a72"), fresh.price("rpi4_a72")
    assert math.isclose(a.total_ms, b.total_ms, rel_tol=0.02)
    assert math.isclose(sum(o.macs for o in scaled.ops), sum(o.macs for o in fresh.ops),
                        rel_tol=0.02)


@pytest.mark.parametrize("bad", [0, -1.0, float("nan"), "4"])
def test_at_refuses_a_bad_length(whisper_small, bad) -> None:
    trace = trace_for_edge(whisper_small, None, 1.0)
    with pytest.raises(LatencyInputError, match="seconds"):
        trace.at(bad)


def test_roofline_inputs_give_layer_latency_on_every_layer_and_profile(whisper_small) -> None:
    plan = presets.int4_ffn_int8_attention()
    table = layer_table(whisper_small, 1.5, plan)
    assert {x.op for x in table.layers} == {"matmul", "conv", "attention_scores", "elementwise"}
    assert {x.precision for x in table.layers} >= {"int8", "fp32"}
    for name in known_devices():
        dev = load_device(name)
        for layer in table.layers:
            got = solutions.roofline_ms(**roofline_inputs(layer, dev))
            assert math.isclose(got, layer_latency(layer, dev).time_ms, rel_tol=1e-9), \
                (name, layer.path)


def test_published_fit_is_the_record_the_error_bands_come_from() -> None:
    fit = published_fit()
    assert len(fit["lomo_predictions"]) == fit["rows"] > 0
    dev = load_edge_device("rpi4_a72")
    assert error_band_pct(dev)[0] == fit["band_pct_by_device"]["rpi4_a72"]
