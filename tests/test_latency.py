"""Latency model: device files with sources, roofline arithmetic, monotonicity, fit, errors."""
from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from torch import nn

from workbench.compress import presets
from workbench.errors import DeviceError, WorkbenchError
from workbench.latency import (LayerTable, known_devices, layer_table, load_device,
                               predict_latency, price_table, table_for_plan)
from workbench.latency.cost import OPS_PER_LAYER, layer_latency
from workbench.latency.devices import FIELDS, OP_CLASSES, devices_dir, parse_device
from workbench.latency.table import EffectiveLayer
from workbench.models import build_model, conformer_ctc
from workbench.models.whisper_ctc import WhisperCTC
from workbench.plan import CompressionPlan, LayerConfig, PruneConfig, QuantConfig

DEVICES = ("rpi4", "rpi5", "phone_a76", "cortex_m7", "jetson_orin_nano", "host")


@pytest.fixture(scope="module")
def small() -> nn.Module:
    torch.manual_seed(0)
    return build_model("whisper_ctc", d_model=64, n_heads=4, n_layers=2, d_ff=256, n_ctx=500,
                       head_dim=32).eval()


@pytest.fixture(scope="module")
def whisper_tiny_table() -> LayerTable:
    """The demo architecture (Whisper tiny encoder + CTC head), random weights: shapes only."""
    torch.manual_seed(0)
    return layer_table(WhisperCTC().eval(), 8.0)


@pytest.fixture()
def uncalibrated_host(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("WORKBENCH_CACHE_DIR", str(tmp_path))


# ---- device files ---------------------------------------------------------------------------

def test_every_device_ships_with_sources_marks_and_a_runtime(uncalibrated_host) -> None:
    assert set(DEVICES) <= set(known_devices())
    for name in DEVICES:
        dev = load_device(name)
        assert dev.name == name and dev.runtime and dev.error_band_pct > 0
        for key in FIELDS:
            if key != "efficiency":
                assert dev.sources[key].endswith(("[V]", "[D]", "[U]")), (name, key)
        for op in OP_CLASSES:
            assert dev.sources[f"efficiency.{op}"].endswith(("[V]", "[D]", "[U]"))
    assert load_device("rpi4").peak_gops_int8 <= load_device("rpi4").peak_gflops_fp32 * 1.1
    assert load_device("rpi5").peak_gops_int8 >= 2 * load_device("rpi5").peak_gflops_fp32
    assert load_device("cortex_m7").flash_mb == 2.0


def test_unknown_device_lists_known_ones() -> None:
    with pytest.raises(DeviceError, match="unknown device 'rpi9'.*rpi4.*rpi5"):
        load_device("rpi9")


@pytest.mark.parametrize("missing", ["memory_bandwidth_gbs", "runtime", "efficiency.conv"])
def test_device_file_missing_a_field_names_field_and_file(tmp_path, missing) -> None:
    data = json.loads((devices_dir() / "rpi4.json").read_text())
    if "." in missing:
        del data["efficiency"][missing.split(".")[1]]
    else:
        del data[missing]
    path = tmp_path / "broken.json"
    path.write_text(json.dumps(data))
    with pytest.raises(DeviceError, match=rf"broken\.json: missing field '{missing}'"):
        parse_device(json.loads(path.read_text()), str(path))


def test_device_field_without_source_is_refused(tmp_path) -> None:
    data = json.loads((devices_dir() / "rpi4.json").read_text())
    data["threads"] = 4
    with pytest.raises(DeviceError, match="'threads' must be an object with 'value', 'source'"):
        parse_device(data, "x.json")


# ---- roofline arithmetic --------------------------------------------------------------------

def test_layer_time_is_the_roofline_by_hand(uncalibrated_host) -> None:
    dev = load_device("rpi4")
    layer = EffectiveLayer(path="fc", role="ffn", op="matmul", macs=10_000_000, params=100_000,
                           weight_bits=32, sparsity=0.0, input_bytes=40_000, output_bytes=40_000,
                           positions=100, in_width=1000, out_width=100)
    t = layer_latency(layer, dev)
    compute = 2 * 10_000_000 / (48e9 * dev.efficiency.matmul_fp32)
    memory = (400_000 + 80_000) / (4.8e9 * dev.efficiency.memory)
    overhead = OPS_PER_LAYER["matmul"] * dev.overhead_us_per_op * 1e-6
    assert t.time_ms == pytest.approx((max(compute, memory) + overhead) * 1e3, rel=1e-9)
    # int8 on the A72: the same arithmetic rate, a quarter of the weight bytes
    t8 = layer_latency(replace(layer, weight_bits=8), dev)
    assert t8.compute_ms == pytest.approx(t.compute_ms * dev.efficiency.matmul_fp32
                                          / dev.efficiency.matmul_int8)
    assert t8.bytes_moved == 100_000 + 80_000


def test_unstructured_sparsity_changes_no_time(small) -> None:
    plan = CompressionPlan().with_group("ffn", LayerConfig(prune=PruneConfig(amount=0.5)))
    dense = predict_latency(small, "rpi5", 2.0)
    sparse = predict_latency(small, "rpi5", 2.0, plan)
    assert sparse.total_ms == pytest.approx(dense.total_ms, rel=1e-12)
    table = layer_table(small, 2.0, plan)
    fc1 = next(x for x in table.layers if x.path == "blocks.0.mlp.fc1")
    assert fc1.sparsity == pytest.approx(0.5, abs=0.01)


# ---- monotonicity ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def length_tables(small) -> list[LayerTable]:
    return [layer_table(small, s) for s in (0.5, 1.0, 2.0, 4.0, 8.0)]


@pytest.fixture(scope="module")
def width_tables(small) -> dict[str, list[LayerTable]]:
    """Tables of plans that keep less and less width: FFN neurons, heads, low rank."""
    def pruned(structure: str, role: str, amount: float) -> LayerTable:
        return layer_table(small, 2.0, CompressionPlan().with_group(
            role, LayerConfig(prune=PruneConfig(amount=amount, structure=structure))))
    return {
        "ffn": [pruned("neurons", "ffn", a) for a in (0.0, 0.25, 0.5, 0.75)],
        "heads": [pruned("heads", "attention", a) for a in (0.0, 0.25, 0.5, 0.75)],
        "rank": [layer_table(small, 2.0, CompressionPlan().with_group("ffn", LayerConfig(rank=r)))
                 for r in (40, 20, 10)],
    }


@pytest.mark.parametrize("device", DEVICES)
def test_latency_grows_with_audio_length(length_tables, device, uncalibrated_host) -> None:
    totals = [predict_latency(t, device, t.audio_seconds).total_ms for t in length_tables]
    assert all(a < b for a, b in zip(totals, totals[1:])), totals


@pytest.mark.parametrize("device", DEVICES)
def test_latency_falls_with_kept_width(width_tables, device, uncalibrated_host) -> None:
    for kind, tables in width_tables.items():
        totals = [predict_latency(t, device, 2.0).total_ms for t in tables]
        assert all(a > b for a, b in zip(totals, totals[1:])), (kind, totals)
    macs = [t.macs for t in width_tables["heads"]]
    assert all(a > b for a, b in zip(macs, macs[1:]))


def test_analytic_rescale_matches_an_exact_shape_pass(small) -> None:
    exact = layer_table(small, 4.0)
    scaled = layer_table(small, 1.0).at_seconds(4.0)
    assert scaled.macs == pytest.approx(exact.macs, rel=0.01)
    a = predict_latency(scaled, "rpi4", 4.0).total_ms
    assert a == pytest.approx(predict_latency(exact, "rpi4", 4.0).total_ms, rel=0.01)


def test_arithmetic_plan_table_equals_the_compressed_model(small) -> None:
    int4 = QuantConfig(weight_bits=4, granularity="per_block")
    plan = (CompressionPlan()
            .with_layer("blocks.0.attn", LayerConfig(prune=PruneConfig(amount=0.5,
                                                                       structure="heads")))
            .with_layer("blocks.1.mlp", LayerConfig(prune=PruneConfig(amount=0.25,
                                                                      structure="neurons")))
            .with_layer("blocks.1.mlp.fc1", LayerConfig(rank=16, quant=int4))
            .with_layer("blocks.0.mlp.fc2", LayerConfig(rank=60))         # does not pay: dense
            .with_layer("blocks.1.attn.k_proj", LayerConfig(prune=PruneConfig(amount=0.3)))
            .with_group("attention", LayerConfig(quant=QuantConfig(weight_bits=8))))
    base = layer_table(small, 2.0)
    fast = table_for_plan(base, small, plan)
    exact = layer_table(small, 2.0, plan)
    def key(t: LayerTable) -> list[tuple]:
        return [(x.path, x.macs, x.params, x.weight_bits, x.input_bytes, x.output_bytes)
                for x in t.layers]
    assert key(fast) == key(exact)
    assert fast.peak_activation_bytes == exact.peak_activation_bytes
    assert "blocks.1.mlp.fc1.down" in {x.path for x in fast.layers}
    for name in ("rpi4", "cortex_m7"):
        dev = load_device(name)
        assert price_table(fast, dev).total_ms == pytest.approx(price_table(exact, dev).total_ms)


# ---- int8 per device, memory fit, report ------------------------------------------------------

def test_int8_speedups_follow_the_instruction_sets(whisper_tiny_table) -> None:
    int8 = whisper_tiny_table.with_bits({"*": 8})
    def speedup(dev: str, **kw) -> float:
        return (predict_latency(whisper_tiny_table, dev, 8.0, **kw).total_ms
                / predict_latency(int8, dev, 8.0, **kw).total_ms)
    # Cortex-A72 (no SDOT): TFLite's built-in int8 kernels are no faster than fp32 ...
    assert speedup("rpi4", runtime="tflite", threads=1) <= 1.0
    # ... XNNPACK's are (published: MobileNetV1 77 -> 24 ms on a Pi 4), and SDOT cores gain more
    assert speedup("rpi4", runtime="xnnpack") > 1.2
    assert speedup("rpi5", runtime="xnnpack") > speedup("rpi4", runtime="xnnpack")
    assert speedup("phone_a76") >= 1.5


def test_weights_over_the_m7_flash_are_flagged_with_numbers(whisper_tiny_table) -> None:
    report = predict_latency(whisper_tiny_table.with_bits({"*": 8}), "cortex_m7", 8.0)
    assert not report.memory.fits and not report.memory.weights_fit
    assert report.memory.weights_store == "flash"
    assert report.memory.weights_limit_bytes == 2_000_000
    assert report.memory.weights_bytes > 7_000_000           # ~7.7 M int8 weights
    assert "weights 7.7" in report.memory.describe() and "flash 2.00 MB: does not fit" in \
        report.memory.describe()


def test_a_tiny_int8_model_fits_the_m7() -> None:
    model = conformer_ctc("tiny").eval()
    report = predict_latency(model, "cortex_m7", 1.0, presets.int8_everywhere())
    assert report.memory.weights_fit, report.memory.describe()
    assert report.memory.weights_bytes < 300_000


def test_report_numbers_and_source(small, uncalibrated_host) -> None:
    r = predict_latency(small, "rpi4", 2.0)
    assert r.total_ms == pytest.approx(sum(x.time_ms for x in r.layers))
    assert r.real_time_factor == pytest.approx(r.total_ms / 2000.0)
    # the band is the leave-one-model-out error of the Pi 4's published rows, not a fixed 50 %
    assert 5 < r.error_band_pct < 30 and r.calibrated
    assert r.low_ms < r.total_ms < r.high_ms
    assert "simulated, fused-graph roofline, device rpi4_a72" in r.source
    assert "leave-one-model-out" in r.source and r.runtime == "xnnpack" and r.threads == 4
    assert sum(r.by_role().values()) == pytest.approx(r.total_ms)


def test_bits_by_pattern_and_inherited_by_low_rank_factors(small) -> None:
    plan = CompressionPlan().with_layer("blocks.0.mlp.fc1", LayerConfig(rank=8))
    table = layer_table(small, 1.0, plan).with_bits({"blocks.0.mlp.fc1": 8, "blocks.1.*": 4})
    bits = {x.path: x.weight_bits for x in table.layers if x.params}
    assert bits["blocks.0.mlp.fc1.down"] == bits["blocks.0.mlp.fc1.up"] == 8
    assert bits["blocks.1.attn.q_proj"] == 4 and bits["blocks.0.attn.q_proj"] == 32


def test_bits_carried_by_a_compressed_model(small) -> None:
    from workbench.compress import compress
    compressed = compress(small, presets.int8_everywhere())
    table = layer_table(compressed, 1.0)
    assert all(x.weight_bits == 8 for x in table.layers if x.op in ("matmul", "conv"))
    assert predict_latency(compressed, "rpi5", 1.0).total_ms == pytest.approx(
        predict_latency(small, "rpi5", 1.0, presets.int8_everywhere()).total_ms)


@pytest.mark.parametrize("seconds", [0, -2.0])
def test_non_positive_audio_is_refused(small, seconds) -> None:
    with pytest.raises(WorkbenchError, match="audio_seconds: must be > 0"):
        predict_latency(small, "rpi4", seconds)
    with pytest.raises(WorkbenchError, match="audio_seconds: must be > 0"):
        predict_latency(layer_table(small, 1.0), "rpi4", seconds)


def test_bad_bits_are_refused(small) -> None:
    with pytest.raises(WorkbenchError, match=r"weight_bits\['blocks.0.mlp.fc1'\]"):
        layer_table(small, 1.0, {"blocks.0.mlp.fc1": 0})


# ---- host calibration file ------------------------------------------------------------------

def test_host_reports_calibration_from_the_cache(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("WORKBENCH_CACHE_DIR", str(tmp_path))
    assert not load_device("host").calibrated
    record = {"calibrated_at": "2026-01-01T00:00:00+00:00",
              "efficiency": {op: 0.5 for op in OP_CLASSES}, "overhead_us_per_op": 2.0,
              "error_band_pct": 7.5, "ram_mb": 1000}
    (tmp_path / "host_profile.json").write_text(json.dumps(record))
    host = load_device("host")
    assert host.calibrated and host.calibrated_at == "2026-01-01T00:00:00+00:00"
    assert host.error_band_pct == 7.5 and host.efficiency.conv == 0.5
    assert "fitted by workbench calibrate" in host.sources["efficiency.conv"]
    del record["efficiency"]
    (tmp_path / "host_profile.json").write_text(json.dumps(record))
    with pytest.raises(DeviceError, match="host_profile.json: not a valid host calibration"):
        load_device("host")


def test_cost_cache_keeps_the_fp32_table_past_its_lru(small) -> None:
    """The engine's base shape-pass table is kept apart from the per-structure LRU: pricing
    more than TABLE_CACHE structures does not evict it (evicting it re-profiled the model)."""
    from workbench.engine.costs import TABLE_CACHE, CostCache
    from workbench.latency import price_table
    core = CostCache(small)
    base = core._table({})
    linears = [p for p, t in core.targets.items() if t.kind == "linear"]
    plans = [CompressionPlan(layers={p: LayerConfig(rank=r)}) for p in linears for r in range(1, 6)]
    assert len(plans) > TABLE_CACHE
    for plan in plans:
        core.latency(plan, "host", 1.0)
    assert core._table({}) is base
    assert core.latency(CompressionPlan(), "host", 1.0) == price_table(base, load_device("host"))
