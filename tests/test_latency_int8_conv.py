"""5..8-bit Conv weights on the host: our ONNX export writes them as int8 + DequantizeLinear + the
fp32 Conv (ORT dynamic quantization is asked for MatMuls only), so they buy bytes, not int8
arithmetic, there. Measured 2026-12-03 (demo, int8_everywhere via build_export vs export_fp32,
ORT 1 thread, time_interleaved, load 4.7-4.9, calibration of 07:15): 2.07x / 2.02x at 5 s,
1.39x / 1.38x at 30 s; predicted 2.285x / 1.401x when int8 convs ran at 4x the fp32 rate, now
2.120x / 1.369x.

Reference numbers marked "3ec3e21" were computed by the code of that commit (before this change),
on the demo architecture (WhisperCTC(), random weights: shapes only), a table made at 8 s."""
from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from workbench.compress import presets
from workbench.errors import DeviceError
from workbench.latency import (LayerTable, layer_table, load_device, predict_latency,
                               price_table, table_for_plan)
from workbench.latency.cost import layer_latency
from workbench.latency.devices import devices_dir, parse_device
from workbench.latency.fit_host import calibration_plans, nominal_host
from workbench.latency.table import EffectiveLayer


@pytest.fixture(scope="module")
def demo(random_tiny_en):
    return random_tiny_en


@pytest.fixture(scope="module")
def tables(demo) -> dict[str, LayerTable]:
    base = layer_table(demo, 8.0)
    plans = calibration_plans()
    return {"fp32": base,
            "int8": table_for_plan(base, demo, presets.int8_everywhere()),
            "int8_attn_ffn": table_for_plan(base, demo, plans["int8"]),
            "ffn_int8_heads_33": table_for_plan(base, demo, plans["ffn_int8_heads_33"])}


@pytest.fixture()
def uncalibrated_host(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("WORKBENCH_CACHE_DIR", str(tmp_path))


def _int8_convs(table: LayerTable) -> list[EffectiveLayer]:
    return [x for x in table.layers if x.op == "conv" and x.params and 4 < x.weight_bits <= 8]


def _by_hand_fp32_conv_ms(layer: EffectiveLayer, dev) -> float:
    """A dequantized int8 conv by hand: fp32 arithmetic at the conv efficiency plus the per-call
    DequantizeLinear, int8 weight bytes + fp32 activations, two ONNX nodes' overhead
    (DequantizeLinear + Conv)."""
    compute = (2 * layer.macs / (dev.peak_gflops_fp32 * 1e9 * dev.efficiency.conv)
               + layer.params * dev.int8_conv_dequant_ns_per_weight * 1e-9)
    memory = ((layer.params + layer.input_bytes + layer.output_bytes)
              / (dev.memory_bandwidth_gbs * 1e9 * dev.efficiency.memory))
    return (max(compute, memory) + 2 * dev.overhead_us_per_op * 1e-6) * 1e3


# ---- the host runs int8 convs in fp32 -------------------------------------------------------

def test_host_profile_says_int8_convs_run_in_fp32_with_a_source(uncalibrated_host) -> None:
    host = load_device("host")
    assert host.int8_conv_compute == "fp32" and host.int8_conv_dequant_ns_per_weight > 0
    assert "DequantizeLinear" in host.sources["int8_conv_compute"]
    assert host.sources["int8_conv_compute"].endswith("[V]")


def test_demo_int8_everywhere_has_three_int8_convs(tables) -> None:
    """conv1, conv2 (the stem) and the CTC head's depthwise conv: what the export writes as
    DequantizeLinear + Conv (3 of each in the measured int8_everywhere graph)."""
    assert [x.path for x in _int8_convs(tables["int8"])] == ["conv1", "conv2", "ctc_head.dwconv"]


@pytest.mark.parametrize("seconds", [5.0, 30.0])
def test_int8_everywhere_speedup_drops_by_the_conv_share(tables, uncalibrated_host,
                                                         seconds) -> None:
    """Nominal host: the int8_everywhere total = the 3ec3e21 total with each int8 conv's old
    (int8-rate) time replaced by its by-hand fp32 + dequantization time."""
    host = load_device("host")
    fp32 = price_table(tables["fp32"].at_seconds(seconds), host).total_ms
    int8 = tables["int8"].at_seconds(seconds)
    old_total = {5.0: 34.33913512857142, 30.0: 490.0507779857143}[seconds]     # 3ec3e21
    old_convs = sum(layer_latency(x, replace(host, int8_conv_compute="int8")).time_ms
                    for x in _int8_convs(int8))
    new_convs = sum(_by_hand_fp32_conv_ms(x, host) for x in _int8_convs(int8))
    assert new_convs > old_convs                       # the conv stem got slower, not faster
    want = fp32 / (old_total - old_convs + new_convs)
    got = fp32 / price_table(int8, host).total_ms
    assert got == pytest.approx(want, rel=1e-9)
    assert got < {5.0: 2.035103205140392, 30.0: 1.4351971776814865}[seconds] - 0.01  # 3ec3e21


def test_an_int8_conv_on_host_costs_its_fp32_compute_plus_dequantization(tables,
                                                                         uncalibrated_host
                                                                         ) -> None:
    host = load_device("host")
    fp32 = {x.path: x for x in tables["fp32"].layers}
    for layer in _int8_convs(tables["int8"]):
        t8, t32 = layer_latency(layer, host), layer_latency(fp32[layer.path], host)
        assert t8.precision == "fp32", layer.path
        dequant_ms = layer.params * host.int8_conv_dequant_ns_per_weight * 1e-6
        assert t8.compute_ms == pytest.approx(t32.compute_ms + dequant_ms, rel=1e-9)
        assert t8.bytes_moved < t32.bytes_moved          # int8 weight bytes, fp32 activations
        assert t8.time_ms == pytest.approx(_by_hand_fp32_conv_ms(layer, host), rel=1e-9)
    # the int8 MatMuls keep the int8 rate
    head = next(x for x in tables["int8"].layers if x.path == "ctc_head.proj_in")
    assert layer_latency(head, host).precision == "int8"


def test_dequantization_is_priced_per_weight_by_hand(uncalibrated_host) -> None:
    host = replace(load_device("host"), int8_conv_dequant_ns_per_weight=0.25)
    layer = EffectiveLayer(path="c", role="front-end", op="conv", macs=50_000_000,
                           params=200_000, weight_bits=8, sparsity=0.0, input_bytes=40_000,
                           output_bytes=40_000, positions=100, in_width=80, out_width=384)
    t = layer_latency(layer, host)
    compute = (2 * 50_000_000 / (host.peak_gflops_fp32 * 1e9 * host.efficiency.conv)
               + 200_000 * 0.25 * 1e-9)
    assert t.compute_ms == pytest.approx(compute * 1e3, rel=1e-9)
    assert t.bytes_moved == 200_000 + 80_000        # 200k weights at 8 bits + fp32 activations
    # DequantizeLinear + Conv: two nodes' overhead; the fp32 Conv alone: one
    assert t.overhead_ms == pytest.approx(2 * host.overhead_us_per_op * 1e-3, rel=1e-12)
    assert layer_latency(replace(layer, weight_bits=32), host).overhead_ms == pytest.approx(
        host.overhead_us_per_op * 1e-3, rel=1e-12)
    # a 5..8-bit MatMul is not dequantized: ORT's MatMulInteger runs it int8
    assert layer_latency(replace(layer, op="matmul"), host).precision == "int8"
    # a 6-bit conv is stored as int8: the same fp32 path
    assert layer_latency(replace(layer, weight_bits=6), host).compute_ms == t.compute_ms


@pytest.mark.parametrize("plan", ["int8_attn_ffn", "ffn_int8_heads_33"])
def test_matmul_only_int8_plans_are_unchanged(tables, uncalibrated_host, plan) -> None:
    """No int8 conv, nothing changes: totals from 3ec3e21, rel 1e-9 (pure arithmetic)."""
    host = load_device("host")
    before = {"fp32": (69.88368396190472, 703.3194934857139),
              "int8_attn_ffn": (39.16368396190476, 518.9994934857143),
              "ffn_int8_heads_33": (40.377652215873034, 431.0452077714287)}
    assert not _int8_convs(tables[plan])
    for name in ("fp32", plan):
        for seconds, ms in zip((5.0, 30.0), before[name]):
            got = price_table(tables[name].at_seconds(seconds), host).total_ms
            assert got == pytest.approx(ms, rel=1e-9), (name, seconds)


def test_calibrated_host_still_prices_int8_convs_at_fp32(tables) -> None:
    """Whatever the fitted efficiencies, a profile saying fp32 prices the convs at fp32."""
    host = replace(nominal_host(), efficiency=replace(nominal_host().efficiency, conv=0.9))
    for layer in _int8_convs(tables["int8"]):
        assert layer_latency(layer, host).time_ms == pytest.approx(
            _by_hand_fp32_conv_ms(layer, host), rel=1e-9)


# ---- devices with int8 conv kernels: unchanged ----------------------------------------------

def test_edge_int8_conv_predictions_are_unchanged(demo, tables) -> None:
    """XNNPACK / ONNX Runtime edge paths and the int8-compute profiles price int8_everywhere as
    before: values from 3ec3e21, rel 1e-9."""
    plan = presets.int8_everywhere()
    assert predict_latency(demo, "rpi5", 8.0, plan).total_ms == pytest.approx(
        53.33357689336481, rel=1e-9)                         # rpi5_a76, xnnpack
    assert predict_latency(demo, "rpi4", 8.0, plan, runtime="xnnpack").total_ms == pytest.approx(
        197.7285606970146, rel=1e-9)
    assert predict_latency(demo, "rpi5", 8.0, plan, runtime="onnxruntime").total_ms == \
        pytest.approx(86.71469122598317, rel=1e-9)
    before = {"rpi4": 486.0007428571432, "rpi5": 89.1082089347718,
              "phone_a76": 242.44319993967272, "cortex_m7": 15349.49333333334,
              "jetson_orin_nano": 14.725024125490197}
    for name, ms in before.items():
        dev = load_device(name)
        assert dev.int8_conv_compute == "int8", name
        assert dev.sources["int8_conv_compute"], name
        assert price_table(tables["int8"], dev).total_ms == pytest.approx(ms, rel=1e-9), name


# ---- device file validation and the calibration overlay -------------------------------------

def _host_json() -> dict:
    return json.loads((devices_dir() / "host.json").read_text())


#: (how the runtime computes with such weights, its per-weight dequantization cost): <= 4-bit
#: weights (MatMulNBits) and 5..8-bit Conv weights (DequantizeLinear + Conv) on the host.
FIELD_PAIRS = [("int4_compute", "int4_dequant_ns_per_weight"),
               ("int8_conv_compute", "int8_conv_dequant_ns_per_weight")]


@pytest.mark.parametrize("compute,_cost", FIELD_PAIRS)
def test_bad_compute_kind_is_refused(compute, _cost) -> None:
    data = _host_json()
    data[compute]["value"] = "int4"
    with pytest.raises(DeviceError, match=rf"x\.json: field '{compute}' must be one of "
                                          r"int8, fp32, got 'int4'"):
        parse_device(data, "x.json")


@pytest.mark.parametrize("compute,cost", FIELD_PAIRS)
def test_fp32_compute_needs_a_valid_dequantization_cost(compute, cost) -> None:
    data = _host_json()
    data[cost]["value"] = None
    with pytest.raises(DeviceError, match=f"'{cost}' may not be null when {compute} is 'fp32'"):
        parse_device(data, "x.json")
    data[cost]["value"] = -0.1
    with pytest.raises(DeviceError, match=f"'{cost}' must be >= 0"):
        parse_device(data, "x.json")
    data[cost]["value"] = "0.1"
    with pytest.raises(DeviceError, match=f"'{cost}' must be a number"):
        parse_device(data, "x.json")


@pytest.mark.parametrize("key", [k for pair in FIELD_PAIRS for k in pair])
def test_missing_dequantization_field_is_named(key) -> None:
    data = _host_json()
    del data[key]
    with pytest.raises(DeviceError, match=f"x.json: missing field '{key}'"):
        parse_device(data, "x.json")


@pytest.mark.parametrize("compute,cost", FIELD_PAIRS)
def test_calibration_overlays_the_dequantization_cost(compute, cost, tmp_path,
                                                      monkeypatch) -> None:
    monkeypatch.setenv("WORKBENCH_CACHE_DIR", str(tmp_path))
    record = {"calibrated_at": "2026-01-01T00:00:00+00:00",
              "efficiency": {"matmul_fp32": 0.5}, "overhead_us_per_op": 2.0,
              "error_band_pct": 7.5}
    (tmp_path / "host_profile.json").write_text(json.dumps(record))
    host = load_device("host")
    assert getattr(host, cost) == getattr(nominal_host(), cost)     # older caches: shipped
    assert getattr(host, compute) == "fp32"
    (tmp_path / "host_profile.json").write_text(json.dumps({**record, cost: 0.37}))
    host = load_device("host")
    assert getattr(host, cost) == 0.37
    assert "fitted by workbench calibrate" in host.sources[cost]
    (tmp_path / "host_profile.json").write_text(json.dumps({**record, cost: -1.0}))
    with pytest.raises(DeviceError, match="not a valid host calibration"):
        load_device("host")


# ---- calibration times an int8-conv variant -------------------------------------------------

def test_tiny_calibration_times_dequantized_int8_convs_and_reports_their_error(tmp_path) -> None:
    """An int8-everywhere variant: its Convs get int8 weights + DequantizeLinear (the export's
    layout), its MatMuls ORT's dynamic int8; the record counts them and gives the variant's
    leave-one-out error (no timed assertion)."""
    import onnx

    from workbench.latency.fit_host import build_variant, calibrate
    from workbench.models import build_model
    from workbench.onnx_tools.graph_map import op_counts
    from workbench.plan import CompressionPlan, LayerConfig, QuantConfig

    torch.manual_seed(0)
    model = build_model("whisper_ctc", d_model=64, n_heads=2, n_layers=2, d_ff=128, n_ctx=200,
                        head_dim=32).eval()
    plans = {"fp32": CompressionPlan(),
             "int8_everywhere": CompressionPlan(default=LayerConfig(
                 quant=QuantConfig(weight_bits=8)))}
    variant = build_variant(model, "int8_everywhere", plans["int8_everywhere"], (1.0,), tmp_path)
    convs = [x for x in variant.tables[1.0].layers if x.op == "conv"]
    counts = op_counts(onnx.load(str(variant.onnx_path)))
    assert variant.int8_convs == len(convs) == counts["DequantizeLinear"] == counts["Conv"] >= 2
    record = calibrate(tmp_path / "host_profile.json", model=model, plans=plans,
                       seconds=(1.0, 2.0), repeats=3)
    assert record["variants"]["int8_everywhere"]["int8_convs"] == len(convs)
    assert record["variants"]["fp32"]["int8_convs"] == 0
    assert set(record["cv_abs_pct_error_by_variant"]) == {"fp32", "int8_everywhere"}
    assert record["cv_abs_pct_error_by_variant"]["int8_everywhere"] >= 0
