"""Edge latency: traced-graph pricing, device / runtime files, published data, input checks."""
from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from workbench.errors import DataError, DeviceError, WorkbenchError
from workbench.latency import predict_latency
from workbench.latency.graph import fused_ops
from workbench.latency.hardware import (DeviceFileError, UnknownDeviceError, edge_device_names,
                                        load_edge_device, load_runtime, runtime_names)
from workbench.latency.predict import LatencyInputError
from workbench.latency.published import load_measurements, measurements_path
from workbench.latency.reference_models import REFERENCE, build


# ---- the traced graph ------------------------------------------------------------------------

class ForeignAttention(nn.Module):
    """Attention with no n_heads / head_dim attributes: found as a product of two activations."""

    def __init__(self, d: int = 32) -> None:
        super().__init__()
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        a = torch.softmax(q @ k.transpose(-1, -2) / 4.0, dim=-1)
        return self.proj(a @ v)


def test_attention_is_found_in_the_graph_not_by_attribute_names() -> None:
    t, d = 50, 32
    ops = fused_ops(ForeignAttention(d), (torch.randn(1, t, d),))
    att = [o for o in ops if o.kind == "attention"]
    assert len(att) == 1                                     # QK^T, scale, softmax, AV: one op
    assert att[0].macs == 2 * t * t * d
    assert {"_softmax", "bmm"} <= set(att[0].fused) or "_softmax" in att[0].fused
    assert sum(o.macs for o in ops if o.kind == "gemm") == t * d * 3 * d + t * d * d


def test_sdpa_attention_is_priced_too() -> None:
    class Sdpa(nn.Module):
        def forward(self, q: torch.Tensor) -> torch.Tensor:
            return nn.functional.scaled_dot_product_attention(q, q, q)
    ops = fused_ops(Sdpa(), (torch.randn(1, 2, 40, 16),))
    assert [o.kind for o in ops] == ["attention"] and ops[0].macs == 2 * 2 * 40 * 40 * 16


def test_batch_norm_and_activations_are_fused_into_the_conv() -> None:
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU6(),
                          nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.Conv2d(8, 16, 1))
    ops = fused_ops(model, (torch.randn(1, 3, 10, 10),))
    assert [o.kind for o in ops] == ["conv", "dwconv", "gemm"]
    assert "hardtanh" in ops[0].fused[-1] and len(ops[0].fused) == 3
    assert ops[0].macs == 100 * 8 * 3 * 9 and ops[1].macs == 100 * 8 * 9


def test_a_residual_add_stays_an_op() -> None:
    class Res(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(16, 16)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + self.fc(x)
    kinds = [o.kind for o in fused_ops(Res(), (torch.randn(1, 4, 16),))]
    assert kinds == ["gemm", "elementwise"]


def test_the_callers_model_is_not_changed() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5)).train()
    before = [p.clone() for p in model.parameters()]
    fused_ops(model, (torch.randn(2, 4),))
    assert model.training and all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


@pytest.mark.parametrize("name", ["ds_cnn_kws", "mobilenet_v1_025_vww", "resnet8_cifar",
                                  "toyadmos_autoencoder", "mobilenet_v3_small"])
def test_reference_models_match_their_published_mac_counts(name) -> None:
    model, make_inputs = build(name)
    macs = sum(o.macs for o in fused_ops(model, make_inputs(1.0)))
    assert macs == pytest.approx(REFERENCE[name].published_macs, rel=0.03)


# ---- device and runtime files ----------------------------------------------------------------

REQUIRED_CORES = ("cortex_m4", "cortex_m33", "cortex_m7", "cortex_m55", "rpi3_a53", "rpi4_a72",
                  "rpi5_a76", "phone_pixel4_a76", "phone_pixel4_a55", "jetson", "riscv_u74")


def test_every_device_and_runtime_file_loads_with_sources() -> None:
    names = edge_device_names()
    for core in REQUIRED_CORES:
        assert any(n.startswith(core) for n in names), core
    for n in names:
        dev = load_edge_device(n)
        assert dev.clock_mhz > 0 and dev.cores >= 1 and dev.macs_per_cycle["fp32"] > 0
        assert all(s.strip() for s in dev.sources.values())
        for rt in dev.runtimes:
            assert dev.family in load_runtime(rt).families, (n, rt)
    for r in runtime_names():
        rt = load_runtime(r)
        assert all(0 < v for k, v in rt.params.items() if k != "overhead_cycles")
    assert "helium" in load_edge_device("cortex_m55_alif_e7").isa
    assert "dotprod" in load_edge_device("rpi5_a76").isa
    assert "dotprod" not in load_edge_device("rpi4_a72").isa


def _device_json() -> dict:
    return json.loads(load_edge_device("rpi4_a72").path and
                       open(load_edge_device("rpi4_a72").path).read())


def test_a_users_device_file_is_used(tmp_path) -> None:
    data = _device_json()
    data["clock_mhz"]["value"] = 3000                  # twice the Pi 4 clock
    f = tmp_path / "fast_a72.json"
    f.write_text(json.dumps(data))
    model = nn.Sequential(nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 256))
    mk = lambda s: (torch.randn(1, 64, 256),)  # noqa: E731
    base = predict_latency(model, "rpi4_a72", 1.0, make_inputs=mk, threads=1)
    fast = predict_latency(model, device_file=str(f), audio_seconds=1.0, make_inputs=mk,
                           threads=1)
    assert fast.total_ms < base.total_ms and fast.device == "rpi4_a72"


@pytest.mark.parametrize("field,value,message", [
    ("clock_mhz", None, "clock_mhz' may not be null"),
    ("clock_mhz", -5, "clock_mhz' must be > 0"),
    ("clock_mhz", 1e9, "implausibly large"),
    ("family", "toaster", "'family' must be one of"),
    ("isa", ["warp_drive"], "'isa' must be a list of"),
])
def test_bad_device_files_name_the_field(tmp_path, field, value, message) -> None:
    data = _device_json()
    data[field]["value"] = value
    f = tmp_path / "bad.json"
    f.write_text(json.dumps(data))
    with pytest.raises(DeviceFileError, match=message):
        load_edge_device(path=f)


def test_a_device_file_missing_a_field(tmp_path) -> None:
    data = _device_json()
    del data["memory_bandwidth_gbs"]
    (tmp_path / "d.json").write_text(json.dumps(data))
    with pytest.raises(DeviceFileError, match="missing field 'memory_bandwidth_gbs'"):
        load_edge_device(path=tmp_path / "d.json")


def test_a_device_file_with_a_bad_mark(tmp_path) -> None:
    data = _device_json()
    data["cores"]["mark"] = "trust me"
    (tmp_path / "d.json").write_text(json.dumps(data))
    with pytest.raises(DeviceFileError, match="'cores' has mark"):
        load_edge_device(path=tmp_path / "d.json")


def test_a_device_file_that_is_not_json(tmp_path) -> None:
    (tmp_path / "d.json").write_text("{clock: fast")
    with pytest.raises(DeviceFileError, match="not valid JSON"):
        load_edge_device(path=tmp_path / "d.json")


def test_a_missing_device_file(tmp_path) -> None:
    with pytest.raises(DeviceFileError, match="no such file"):
        load_edge_device(path=tmp_path / "nope.json")


# ---- predict_latency inputs ------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_cnn():
    return build("ds_cnn_kws")


@pytest.mark.parametrize("seconds,message", [
    (float("nan"), "must be finite"), (float("inf"), "must be finite"),
    (-1.0, "must be > 0"), (0, "must be > 0"), (1e7, "over the 3600 s limit"),
    (True, "must be a number"), ("8", "must be a number"),
])
def test_bad_seconds_are_refused(tiny_cnn, seconds, message) -> None:
    model, mk = tiny_cnn
    with pytest.raises(LatencyInputError, match=f"audio_seconds: .*{message}"):
        predict_latency(model, "rpi4_a72", seconds, make_inputs=mk)


def test_an_unknown_device_suggests_the_closest(tiny_cnn) -> None:
    model, mk = tiny_cnn
    with pytest.raises(UnknownDeviceError, match="Did you mean 'rpi4_a72'"):
        predict_latency(model, "rpi4_a27", 1.0, make_inputs=mk)
    assert issubclass(UnknownDeviceError, DeviceError)


@pytest.mark.parametrize("name,expected", [
    ("rpi4", "rpi4_a72"), ("riscv_u74", "riscv_u74_jh7110"), ("cortex_m4", "cortex_m4_stm32l4"),
    ("cortex_m55", "cortex_m55_alif_e7"), ("RPI5-A76", "rpi5_a76"),
    ("cortex_m7", "cortex_m7_stm32h743"),
])
def test_short_and_old_device_names_find_their_file(name, expected) -> None:
    from workbench.latency.predict import resolve_target
    assert resolve_target(name, None, None)[0].name == expected


@pytest.mark.parametrize("name,expected", [("LiteRT", "xnnpack"), ("cmsis-nn", "cmsis_nn_tflm"),
                                           ("whisper.cpp", "ggml"), ("ORT", "onnxruntime")])
def test_other_runtime_spellings(name, expected) -> None:
    from workbench.latency.predict import resolve_target
    device = "cortex_m4" if expected == "cmsis_nn_tflm" else "rpi4_a72"
    assert resolve_target(device, name, None)[1].name == expected


def test_an_unknown_runtime_suggests_the_closest(tiny_cnn) -> None:
    model, mk = tiny_cnn
    with pytest.raises(UnknownDeviceError, match="Did you mean 'xnnpack'"):
        predict_latency(model, "rpi4_a72", 1.0, make_inputs=mk, runtime="xnnpak")


def test_a_runtime_of_another_family_is_refused(tiny_cnn) -> None:
    model, mk = tiny_cnn
    with pytest.raises(LatencyInputError, match="does not run on cortex-a devices"):
        predict_latency(model, "rpi4_a72", 1.0, make_inputs=mk, runtime="cmsis_nn_tflm")


@pytest.mark.parametrize("threads,message", [(0, "whole number >= 1"), (9, "> the 4 cores"),
                                             (2.5, "whole number >= 1")])
def test_bad_thread_counts_are_refused(tiny_cnn, threads, message) -> None:
    model, mk = tiny_cnn
    with pytest.raises(LatencyInputError, match=f"threads: .*{message}"):
        predict_latency(model, "rpi4_a72", 1.0, make_inputs=mk, threads=threads)


def test_runtime_and_threads_do_not_apply_to_the_host(tiny_cnn) -> None:
    model, mk = tiny_cnn
    with pytest.raises(LatencyInputError, match="apply to edge devices"):
        predict_latency(model, "host", 1.0, make_inputs=mk, threads=2)


# ---- what the model predicts -----------------------------------------------------------------

def test_ds_cnn_int8_is_not_faster_than_fp32_on_a_pi4_with_tflite(tiny_cnn) -> None:
    model, mk = tiny_cnn
    for threads in (1, 4):
        fp32 = predict_latency(model, "rpi4_a72", 1.0, make_inputs=mk, runtime="tflite",
                               threads=threads)
        int8 = predict_latency(model, "rpi4_a72", 1.0, {"*": 8}, make_inputs=mk,
                               runtime="tflite", threads=threads)
        assert int8.total_ms >= fp32.total_ms
    assert {x.precision for x in int8.layers if x.op in ("gemm", "conv", "dwconv")} == {"int8"}


def test_more_threads_are_faster_but_not_linear(tiny_cnn) -> None:
    model = nn.Sequential(nn.Linear(512, 2048), nn.GELU(), nn.Linear(2048, 512))
    mk = lambda s: (torch.randn(1, 400, 512),)  # noqa: E731
    one = predict_latency(model, "rpi4_a72", 1.0, make_inputs=mk, threads=1).total_ms
    four = predict_latency(model, "rpi4_a72", 1.0, make_inputs=mk, threads=4).total_ms
    assert one / 4 < four < one


def test_mcu_runtimes_price_int8_and_flag_fp32(tiny_cnn) -> None:
    model, mk = tiny_cnn
    r = predict_latency(model, "cortex_m7_stm32f746", 1.0, make_inputs=mk)
    assert r.runtime == "plumerai" and any("int8 only" in u for u in r.unsupported)
    r8 = predict_latency(model, "cortex_m7_stm32f746", 1.0, {"*": 8}, make_inputs=mk)
    assert not r8.unsupported and r8.memory.fits
    # the published point this board was fitted with: 19.1 ms (MLPerf Tiny v1.0, Plumerai)
    assert r8.total_ms == pytest.approx(19.1, rel=r8.error_band_pct / 100 + 0.1)


def test_odd_bit_widths_are_marked_as_not_runnable(tiny_cnn) -> None:
    model, mk = tiny_cnn
    r = predict_latency(model, "rpi4_a72", 1.0, {"*": 5}, make_inputs=mk)
    assert any(u.startswith("5-bit weights") for u in r.unsupported)


def test_plan_and_seconds_keywords(tiny_cnn) -> None:
    model, mk = tiny_cnn
    a = predict_latency(model, "rpi5_a76", seconds=1.0, plan={"*": 8}, make_inputs=mk)
    b = predict_latency(model, "rpi5_a76", 1.0, {"*": 8}, make_inputs=mk)
    assert a.total_ms == pytest.approx(b.total_ms)


def test_every_edge_device_prices_a_transformer() -> None:
    from workbench.latency.predict import edge_report, resolve_target
    model, mk = build("whisper_tiny_encoder")
    ops = fused_ops(model, mk(2.0))                      # one trace, priced on every device
    bits = {o.path: 8 for o in ops}
    for name in edge_device_names():
        r = edge_report(ops, bits, *resolve_target(name, None, None), 2.0)
        assert math.isfinite(r.total_ms) and r.total_ms > 0
        assert any(x.op == "attention" for x in r.layers)


# ---- published measurements ------------------------------------------------------------------

def test_the_published_dataset_covers_the_issue() -> None:
    rows = load_measurements()
    assert len(rows) >= 40
    devices = {r.device for r in rows}
    assert len(devices) >= 6
    assert sum(load_edge_device(d).family == "mcu" for d in devices) >= 2
    assert {REFERENCE[r.model].family for r in rows} == {"cnn", "transformer"}
    assert {"fp32", "int8"} <= {r.precision for r in rows}
    for r in rows:
        assert r.source.startswith("https://") and r.date[:2] == "20"
        load_edge_device(r.device)
        assert r.runtime in load_edge_device(r.device).runtimes


def test_a_bad_dataset_row_names_the_line(tmp_path) -> None:
    lines = measurements_path().read_text().splitlines()[:2]
    bad = json.loads(lines[1])
    del bad["source"]
    (tmp_path / "m.jsonl").write_text(lines[0] + "\n" + json.dumps(bad) + "\n")
    with pytest.raises(DataError, match=r"m.jsonl:2: missing field\(s\) source"):
        load_measurements(tmp_path / "m.jsonl")
    assert issubclass(DataError, WorkbenchError)


def test_the_joint_fit_lowers_the_error_on_its_rows() -> None:
    from workbench.latency.published import DEVICE_SCALES, _rows, fit_runtimes
    rows = _rows([m for m in load_measurements()
                  if m.model in ("ds_cnn_kws", "toyadmos_autoencoder")])
    def mape(params=None) -> float:
        return sum(abs((r.predict_ms(dict(r.rt.priors), 1.0) if params is None else
                        r.predict_ms(params[r.rt.name], params[DEVICE_SCALES][r.dev.name]))
                       / r.m.ms - 1) for r in rows) / len(rows)
    fitted = fit_runtimes(rows)
    assert mape(fitted) < 0.5 * mape()
    assert all(0.2 < s < 5 for s in fitted[DEVICE_SCALES].values())


def test_a_device_file_without_a_fitted_scale_defaults_to_one(tmp_path) -> None:
    data = _device_json()
    del data["efficiency_scale"]
    (tmp_path / "d.json").write_text(json.dumps(data))
    assert load_edge_device(path=tmp_path / "d.json").efficiency_scale == 1.0
    data["efficiency_scale"] = {"value": -2, "source": "x", "mark": "fitted"}
    (tmp_path / "d.json").write_text(json.dumps(data))
    with pytest.raises(DeviceFileError, match="efficiency_scale' must be > 0"):
        load_edge_device(path=tmp_path / "d.json")


def test_the_cli_prices_and_refuses_a_bad_device_file(tmp_path) -> None:
    from workbench.__main__ import main
    assert main(["latency", "--model", "toyadmos_autoencoder", "--device", "cortex_m4",
                 "--bits", "8", "--json"]) == 0
    (tmp_path / "bad.json").write_text('{"family": {"value": "mcu"}}')
    assert main(["latency", "--model", "toyadmos_autoencoder", "--device-file",
                 str(tmp_path / "bad.json")]) == 2
