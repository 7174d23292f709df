"""<= 4-bit weights on the host: ONNX Runtime's CPU MatMulNBits computes in fp32 at the accuracy
level our export writes (none: 0), so int4 buys bytes, not arithmetic, there. Measured 2026-12-03
(`bench recover --case c_qat4`, int4_everywhere, ORT 1 thread, load 1.5): 1.027x at 30 s, 0.985x at
5 s; the model said 1.40x / 2.285x before the device profile said how int4 runs.

Reference numbers marked "91d36c4" were computed by the code of that commit (before this change),
on the demo architecture (WhisperCTC(), random weights: shapes only), 8 s of audio."""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from workbench.compress import presets
from workbench.latency import (LayerTable, layer_table, load_device, predict_latency,
                               price_table, table_for_plan)
from workbench.latency.cost import layer_latency
from workbench.latency.fit_host import nominal_host
from workbench.latency.table import EffectiveLayer


@pytest.fixture(scope="module")
def demo(random_tiny_en):
    return random_tiny_en


@pytest.fixture(scope="module")
def tables(demo) -> dict[str, LayerTable]:
    base = layer_table(demo, 8.0)
    return {"fp32": base,
            "int4": table_for_plan(base, demo, presets.int4_everywhere()),
            "int8": table_for_plan(base, demo, presets.int8_everywhere())}


@pytest.fixture()
def uncalibrated_host(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("WORKBENCH_CACHE_DIR", str(tmp_path))


def _speedup(tables: dict[str, LayerTable], plan: str, dev, seconds: float) -> float:
    return (price_table(tables["fp32"].at_seconds(seconds), dev).total_ms
            / price_table(tables[plan].at_seconds(seconds), dev).total_ms)


# ---- the host runs int4 in fp32 -------------------------------------------------------------

def test_host_profile_says_int4_runs_in_fp32_with_a_source(uncalibrated_host) -> None:
    host = load_device("host")
    assert host.int4_compute == "fp32" and host.int4_dequant_ns_per_weight > 0
    assert "accuracy_level" in host.sources["int4_compute"]
    assert host.sources["int4_compute"].endswith("[V]")


@pytest.mark.parametrize("seconds", [5.0, 30.0])
def test_int4_everywhere_on_host_is_not_priced_as_int8(tables, uncalibrated_host, seconds) -> None:
    """Nominal host profile: int4_everywhere's predicted speed-up stays near 1 (measured 1.027x at
    30 s, 0.985x at 5 s); on 91d36c4 it equalled int8_everywhere's (1.435x / 2.035x)."""
    host = load_device("host")
    s = _speedup(tables, "int4", host, seconds)
    assert 0.9 < s < 1.15, s
    # int8 plans keep their int8 MatMul speed-up (91d36c4: 2.035x / 1.435x; since the int8
    # convs are priced at fp32 on the host, 1.80x / 1.36x: tests/test_latency_int8_conv.py)
    assert _speedup(tables, "int8", host, seconds) > 1.3


def test_a_4bit_layer_on_host_costs_its_fp32_compute_plus_dequantization(tables,
                                                                         uncalibrated_host
                                                                         ) -> None:
    """Per layer: fp32 arithmetic (not below the fp32 layer's compute time), 4-bit weight bytes,
    plus params x int4_dequant_ns_per_weight per call."""
    host = load_device("host")
    fp32 = {x.path: x for x in tables["fp32"].layers}
    four = [x for x in tables["int4"].layers if x.params and x.weight_bits == 4]
    assert len(four) == 24          # 4 blocks x (q, k, v, out, fc1, fc2)
    for layer in four:
        t4, t32 = layer_latency(layer, host), layer_latency(fp32[layer.path], host)
        assert t4.precision == "fp32"
        dequant_ms = layer.params * host.int4_dequant_ns_per_weight * 1e-6
        assert t4.compute_ms == pytest.approx(t32.compute_ms + dequant_ms, rel=1e-9)
        assert t4.bytes_moved < t32.bytes_moved   # 4/32 of the weight bytes
        assert t4.time_ms >= t32.time_ms - (t32.memory_ms - t4.memory_ms) - 1e-12
    # the int8 head keeps the int8 rate
    head = next(x for x in tables["int4"].layers if x.path == "ctc_head.proj_in")
    assert head.weight_bits == 8 and layer_latency(head, host).precision == "int8"


def test_calibrated_host_int4_speedup_near_one_whatever_the_efficiencies(tables) -> None:
    """Any calibration (here: int8 3x as efficient as fp32) leaves int4 at fp32 compute."""
    host = replace(nominal_host(), efficiency=replace(nominal_host().efficiency,
                                                      matmul_int8=1.5, matmul_fp32=0.5))
    assert 0.9 < _speedup(tables, "int4", host, 30.0) < 1.15
    assert _speedup(tables, "int8", host, 30.0) > 1.3


# ---- devices whose runtime has int4 kernels: unchanged --------------------------------------

def test_edge_int4_predictions_are_unchanged(demo, tables) -> None:
    """XNNPACK (the edge path) and the int8-compute profiles price int4 as before: values from
    91d36c4, rel 1e-9 (pure arithmetic, same inputs)."""
    plan = presets.int4_everywhere()
    assert predict_latency(demo, "rpi5", 8.0, plan).total_ms == pytest.approx(
        53.33357689336481, rel=1e-9)                         # rpi5_a76, xnnpack
    assert predict_latency(demo, "rpi4", 8.0, plan, runtime="xnnpack").total_ms == pytest.approx(
        197.7285606970146, rel=1e-9)
    before = {"rpi4": 486.0007428571432, "rpi5": 89.1082089347718,
              "phone_a76": 242.44319993967272, "cortex_m7": 15349.49333333334,
              "jetson_orin_nano": 14.725024125490197}
    for name, ms in before.items():
        dev = load_device(name)
        assert dev.int4_compute == "int8", name
        assert price_table(tables["int4"], dev).total_ms == pytest.approx(ms, rel=1e-9), name


# ---- the device fields of <= 4-bit weights are validated with the int8-conv ones:
#      tests/test_latency_int8_conv.py (one parametrized set of tests for both pairs)

def test_dequantization_is_priced_per_weight_by_hand(uncalibrated_host) -> None:
    host = load_device("host")
    layer = EffectiveLayer(path="fc", role="ffn", op="matmul", macs=10_000_000, params=100_000,
                           weight_bits=4, sparsity=0.0, input_bytes=40_000, output_bytes=40_000,
                           positions=100, in_width=1000, out_width=100)
    t = layer_latency(layer, host)
    compute = (2 * 10_000_000 / (host.peak_gflops_fp32 * 1e9 * host.efficiency.matmul_fp32)
               + 100_000 * host.int4_dequant_ns_per_weight * 1e-9)
    assert t.compute_ms == pytest.approx(compute * 1e3, rel=1e-9)
    assert t.bytes_moved == 50_000 + 80_000          # 100k weights at 4 bits + fp32 activations
    # 5..8-bit weights are not dequantized per call: ORT runs them int8 (rounded up to 8)
    assert layer_latency(replace(layer, weight_bits=5), host).precision == "int8"


# ---- calibration measures an int4 variant ---------------------------------------------------

def test_tiny_calibration_times_a_matmul_nbits_variant_and_reports_its_error(tmp_path) -> None:
    """The int4 variant runs MatMulNBits (ORT's fp32-compute path); the record gives the fitted
    dequantization cost and the variant's leave-one-out error (no timed assertion)."""
    from workbench.latency.fit_host import calibrate
    from workbench.models import build_model
    from workbench.plan import CompressionPlan, LayerConfig, QuantConfig

    torch.manual_seed(0)
    model = build_model("whisper_ctc", d_model=64, n_heads=2, n_layers=2, d_ff=128, n_ctx=200,
                        head_dim=32).eval()
    int4 = LayerConfig(quant=QuantConfig(weight_bits=4, granularity="per_block"))
    plans = {"fp32": CompressionPlan(), "ffn_int4": CompressionPlan().with_group("ffn", int4)}
    record = calibrate(tmp_path / "host_profile.json", model=model, plans=plans,
                       seconds=(1.0, 2.0), repeats=3)
    assert record["variants"]["ffn_int4"]["int4_layers"] == 4       # fc1, fc2 x 2 blocks
    assert record["variants"]["ffn_int4"]["nbits_matmuls"] == 4
    assert record["variants"]["fp32"]["nbits_matmuls"] == 0
    assert record["int4_dequant_ns_per_weight"] > 0
    assert set(record["cv_abs_pct_error_by_variant"]) == {"fp32", "ffn_int4"}
    assert all(v >= 0 for v in record["cv_abs_pct_error_by_variant"].values())
