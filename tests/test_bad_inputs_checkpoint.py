"""Bad checkpoints: one CheckpointError naming the file and the field or tensor, raised from the
header before memory is spent; never a traceback, never NaN weights evaluated."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from workbench.errors import CheckpointError, WorkbenchError
from workbench.models import build_model, conformer_ctc, load_checkpoint, save_checkpoint
from workbench.models.checkpoint import FORMAT, read_checkpoint_metadata
from workbench.models.registry import make_config


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> tuple[Path, dict, dict]:
    torch.manual_seed(0)
    path = save_checkpoint(conformer_ctc("tiny"), tmp_path_factory.mktemp("ck") / "good.safetensors")
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
        state = {k: f.get_tensor(k) for k in f.keys()}
    return path, meta, state


def _variant(tmp_path: Path, good, model=None, state_fn=None, meta_fn=None) -> Path:
    _, meta, state = good
    meta = dict(meta)
    if model is not None:
        meta["model"] = model if isinstance(model, str) else json.dumps(model)
    state = state_fn(dict(state)) if state_fn else state
    meta = meta_fn(meta) if meta_fn else meta
    path = tmp_path / "bad.safetensors"
    save_file(state, str(path), metadata=meta)
    return path


def _cfg(**kw) -> dict:
    base = {"family": "conformer_ctc", "config": {"d_model": 64, "n_layers": 2, "n_heads": 4,
                                                  "d_ff": 128}}
    base["config"].update(kw)
    return base


FIRST = "blocks.0.attn.q_proj.weight"

HEADER_CASES = [
    ("config-list", {"family": "conformer_ctc", "config": [1, 2]}, ["config", "list"]),
    ("config-string", {"family": "conformer_ctc", "config": "tiny"}, ["config", "str 'tiny'"]),
    ("config-null", {"family": "conformer_ctc", "config": None}, ["config", "NoneType"]),
    ("model-list", [1], ["'model'", "list"]),
    ("model-string", "\"conformer\"", ["'model'", "str"]),
    ("family-int", {"family": 3, "config": {}}, ["family 3"]),
    ("family-unknown", {"family": "wav2vec", "config": {}}, ["'wav2vec'", "whisper_ctc"]),
    ("family-missing", {"config": {}}, ["family None"]),
    ("n_heads-0", _cfg(n_heads=0), ["config.n_heads", "0"]),
    ("n_heads-negative", _cfg(n_heads=-4), ["config.n_heads", "-4"]),
    ("n_heads-not-dividing", _cfg(n_heads=3), ["n_heads=3", "divisible"]),
    ("n_layers-400", _cfg(n_layers=400), ["config.n_layers", "400"]),
    ("n_layers-0", _cfg(n_layers=0), ["config.n_layers"]),
    ("d_model-huge", _cfg(d_model=1 << 20), ["config.d_model", "1048576"]),
    ("d_ff-negative", _cfg(d_ff=-5), ["config.d_ff", "-5"]),
    ("too-many-parameters", _cfg(n_layers=64, d_model=4096, d_ff=16384, n_heads=64),
     ["parameters", "300,000,000"]),
    ("d_model-string", _cfg(d_model="64"), ["config.d_model", "str"]),
    ("d_model-float", _cfg(d_model=64.0), ["config.d_model", "float"]),
    ("d_model-bool", _cfg(d_model=True), ["config.d_model", "bool"]),
    ("d_model-list", _cfg(d_model=[64]), ["config.d_model", "list"]),
    ("dropout-bool", _cfg(dropout=True), ["config.dropout", "bool"]),
    ("dropout-2", _cfg(dropout=2.0), ["config.dropout", "2.0"]),
    ("conv_kernel-even", _cfg(conv_kernel=4), ["conv_kernel=4", "odd"]),
    ("vocab-huge", _cfg(vocab=10**12), ["config.vocab"]),
    ("unknown-field", _cfg(n_layer=4), ["n_layer", "no fields"]),
    ("whisper-n_ctx-1e9", {"family": "whisper_ctc", "config": {"n_ctx": 10**9}},
     ["config.n_ctx", "1000000000"]),
    ("model-json-corrupt", "{not json", ["corrupt metadata JSON"]),
    ("model-json-5000-digits", '{"family": "conformer_ctc", "config": {"d_model": ' + "9" * 5000 +
     "}}", ["corrupt metadata JSON"]),
    ("model-json-NaN", '{"family": "conformer_ctc", "config": {"dropout": NaN}}',
     ["config.dropout", "nan"]),
    ("wrong-family-requested", None, ["'conformer_ctc'", "expected 'whisper_ctc'"]),
]


@pytest.mark.parametrize("model,expected", [c[1:] for c in HEADER_CASES],
                         ids=[c[0] for c in HEADER_CASES])
def test_bad_checkpoint_header_refused_before_building(tmp_path, good, monkeypatch, model,
                                                       expected: list[str]) -> None:
    if model is None:  # the good file, asked for as another family
        path, family = good[0], "whisper_ctc"
    else:
        path, family = _variant(tmp_path, good, model=model), None
    real_load = torch.nn.Module.load_state_dict
    monkeypatch.setattr(torch.nn.Module, "load_state_dict", lambda *a, **k: (_ for _ in ()).throw(
        AssertionError("weights loaded before the header was checked")))
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path, family=family)
    monkeypatch.setattr(torch.nn.Module, "load_state_dict", real_load)
    assert str(path) in str(err.value)
    for part in expected:
        assert part in str(err.value), (part, str(err.value))


def _set(name: str, value):
    return lambda s: {**s, name: value(s[name])}


TENSOR_CASES = [
    ("nan-weight", _set(FIRST, lambda t: torch.full_like(t, float("nan"))), ["NaN", FIRST]),
    ("inf-weight", _set(FIRST, lambda t: torch.full_like(t, float("inf"))), ["infinite", FIRST]),
    ("one-nan-bias", _set("head.weight" if False else "blocks.0.attn.q_proj.bias",
                          lambda t: t.index_fill(0, torch.tensor([3]), float("nan"))),
     ["NaN", "blocks.0.attn.q_proj.bias"]),
    ("int32-into-float", _set(FIRST, lambda t: t.to(torch.int32)), ["wrong dtype", FIRST]),
    ("int8-into-float", _set(FIRST, lambda t: t.to(torch.int8)), ["wrong dtype", FIRST]),
    ("bool-into-float", _set(FIRST, lambda t: t > 0), ["wrong dtype", FIRST]),
    ("wrong-shape", _set(FIRST, lambda t: torch.zeros(3)), ["mis-shaped", FIRST, "(3,)"]),
    ("transposed", _set(FIRST, lambda t: t[:, :32].T.contiguous()), ["mis-shaped", FIRST]),
    ("missing-tensor", lambda s: {k: v for k, v in s.items() if k != FIRST},
     ["missing", FIRST]),
    ("extra-tensor", lambda s: {**s, "blocks.9.attn.q_proj.weight": torch.zeros(2)},
     ["unexpected", "blocks.9"]),
    ("no-tensors", lambda s: {"x": torch.zeros(1)}, ["missing", "+"]),
]


@pytest.mark.parametrize("state_fn,expected", [c[1:] for c in TENSOR_CASES],
                         ids=[c[0] for c in TENSOR_CASES])
def test_bad_checkpoint_tensors(tmp_path, good, state_fn, expected: list[str]) -> None:
    path = _variant(tmp_path, good, state_fn=state_fn)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    assert str(path) in str(err.value)
    for part in expected:
        assert part in str(err.value), (part, str(err.value))


FILE_CASES = [
    ("truncated-half", lambda g, p: p.write_bytes(g.read_bytes()[: g.stat().st_size // 2]),
     "not a readable safetensors"),
    ("truncated-header", lambda g, p: p.write_bytes(g.read_bytes()[:20]),
     "not a readable safetensors"),
    ("empty-file", lambda g, p: p.write_bytes(b""), "not a readable safetensors"),
    ("text-file", lambda g, p: p.write_text("hello"), "not a readable safetensors"),
    ("header-length-huge", lambda g, p: p.write_bytes((2**62).to_bytes(8, "little") + b"{}"),
     "not a readable safetensors"),
    ("no-workbench-metadata", lambda g, p: save_file({"x": torch.zeros(1)}, str(p)),
     "without workbench metadata"),
    ("other-format", lambda g, p: save_file({"x": torch.zeros(1)}, str(p),
                                            metadata={"format": "other/9", "model": "{}"}),
     "'other/9'"),
]


@pytest.mark.parametrize("make,expected", [c[1:] for c in FILE_CASES],
                         ids=[c[0] for c in FILE_CASES])
def test_broken_checkpoint_file(tmp_path, good, make, expected: str) -> None:
    path = tmp_path / "broken.safetensors"
    make(good[0], path)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    assert str(path) in str(err.value) and expected in str(err.value), str(err.value)


PT_CASES = [
    ("pt-not-a-dict", lambda: [1, 2], "not a workbench checkpoint"),
    ("pt-wrong-format", lambda: {"format": "x"}, "not a workbench checkpoint"),
    ("pt-state-not-dict", lambda: {"format": FORMAT, "model": _cfg(), "state_dict": [1]},
     "'state_dict'"),
    ("pt-state-non-tensor", lambda: {"format": FORMAT, "model": _cfg(),
                                     "state_dict": {"a": 1}}, "'state_dict'"),
    ("pt-config-n_heads-0", lambda: {"format": FORMAT, "model": _cfg(n_heads=0),
                                     "state_dict": {}}, "config.n_heads"),
]


@pytest.mark.parametrize("blob,expected", [c[1:] for c in PT_CASES], ids=[c[0] for c in PT_CASES])
def test_bad_pt_checkpoint(tmp_path, blob, expected: str) -> None:
    path = tmp_path / "m.pt"
    torch.save(blob(), path)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    assert str(path) in str(err.value) and expected in str(err.value), str(err.value)


def test_truncated_pt(tmp_path) -> None:
    path = save_checkpoint(conformer_ctc("tiny"), tmp_path / "m.pt")
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    assert str(path) in str(err.value)


@pytest.mark.parametrize("arg", ["missing", "folder", 42, None], ids=["missing", "folder", "int",
                                                                    "none"])
def test_checkpoint_path_problems(tmp_path, arg) -> None:
    path = {"missing": tmp_path / "none.safetensors", "folder": tmp_path}.get(arg, arg)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    assert (str(path) if isinstance(path, Path) else type(arg).__name__) in str(err.value)


def test_metadata_of_broken_file(tmp_path) -> None:
    path = tmp_path / "x.safetensors"
    path.write_bytes(b"garbage")
    with pytest.raises(CheckpointError) as err:
        read_checkpoint_metadata(path)
    assert str(path) in str(err.value)


SAVE_CASES = [
    ("model-none", lambda p: save_checkpoint(None, p), "model"),
    ("model-plain-module", lambda p: save_checkpoint(torch.nn.Linear(2, 2), p), "Linear"),
    ("path-int", lambda p: save_checkpoint(conformer_ctc("tiny"), 5), "path"),
    ("dtype-int8", lambda p: save_checkpoint(conformer_ctc("tiny"), p, dtype=torch.int8), "dtype"),
    ("metadata-not-json", lambda p: save_checkpoint(conformer_ctc("tiny"), p,
                                                    metadata={"x": object()}), "metadata"),
]


@pytest.mark.parametrize("call,expected", [c[1:] for c in SAVE_CASES],
                         ids=[c[0] for c in SAVE_CASES])
def test_bad_save_checkpoint_arguments(tmp_path, call, expected: str) -> None:
    with pytest.raises(WorkbenchError) as err:
        call(tmp_path / "m.safetensors")
    assert expected in str(err.value)
    assert not (tmp_path / "m.safetensors").exists()


BUILD_CASES = [
    ("family-typo", lambda: build_model("conformer"), "'conformer'"),
    ("n_heads-0", lambda: build_model("conformer_ctc", n_heads=0), "config.n_heads"),
    ("n_layers-1000", lambda: build_model("whisper_ctc", n_layers=1000), "config.n_layers"),
    ("d_model-str", lambda: build_model("whisper_ctc", d_model="384"), "config.d_model"),
    ("preset-typo", lambda: conformer_ctc("tinyy"), "tinyy"),
    ("make_config-list", lambda: make_config("whisper_ctc", [384]), "config"),
]


@pytest.mark.parametrize("call,expected", [c[1:] for c in BUILD_CASES],
                         ids=[c[0] for c in BUILD_CASES])
def test_bad_model_build_arguments(call, expected: str) -> None:
    with pytest.raises(WorkbenchError) as err:
        call()
    assert expected in str(err.value), str(err.value)


def test_good_checkpoint_still_loads(good) -> None:
    model = load_checkpoint(good[0])
    assert all(torch.isfinite(p).all() for p in model.parameters())
