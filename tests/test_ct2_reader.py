"""The CTranslate2 model.bin reader: exact on a file we write by the spec, exact on the shipped
Whisper tiny.en file, and refusing anything else with a CheckpointError that names the file."""
from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from workbench.errors import CheckpointError
from workbench.models.ct2_reader import default_whisper_dir, read_ct2


def _string(s: str) -> bytes:
    raw = s.encode("utf-8") + b"\0"
    return struct.pack("<H", len(raw)) + raw


def _write_ct2(path: Path, variables: list[tuple[str, int, np.ndarray]],
               aliases: list[tuple[str, str]], version: int = 6, spec: str = "TestSpec",
               revision: int = 2) -> Path:
    """A model.bin as CTranslate2's ModelSpec._serialize writes it (type ids as in types.h)."""
    out = struct.pack("<I", version) + _string(spec) + struct.pack("<II", revision, len(variables))
    for name, type_id, arr in variables:
        out += _string(name) + struct.pack("<B", arr.ndim)
        out += b"".join(struct.pack("<I", d) for d in arr.shape)
        data = arr.tobytes()
        out += struct.pack("<BI", type_id, len(data)) + data
    out += struct.pack("<I", len(aliases))
    for alias, target in aliases:
        out += _string(alias) + _string(target)
    path.write_bytes(out)
    return path


@pytest.fixture()
def small_file(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    bf16_source = np.array([1.5, -2.25, 3.0e-3], dtype=np.float32)
    bf16_bits = (bf16_source.view(np.uint32) >> 16).astype(np.uint16)  # truncation to bf16
    variables = [
        ("a/weight", 4, rng.standard_normal((3, 5)).astype(np.float16)),
        ("a/bias", 0, rng.standard_normal(5).astype(np.float32)),
        ("b/bf16", 5, bf16_bits),
        ("b/ids", 3, np.arange(4, dtype=np.int32).reshape(2, 2)),
        ("num_heads", 2, np.array(6, dtype=np.int16)),
        ("flag", 1, np.array(1, dtype=np.int8)),
    ]
    return _write_ct2(tmp_path / "model.bin", variables, [("c/weight", "a/weight")])


def test_reads_a_spec_written_file_exactly(small_file: Path) -> None:
    ct2 = read_ct2(small_file.parent)  # a directory is resolved to its model.bin
    assert (ct2.binary_version, ct2.spec_name, ct2.spec_revision) == (6, "TestSpec", 2)
    assert list(ct2.variables) == ["a/weight", "a/bias", "b/bf16", "b/ids", "num_heads", "flag"]
    rng = np.random.default_rng(0)
    np.testing.assert_array_equal(ct2.variables["a/weight"],
                                  rng.standard_normal((3, 5)).astype(np.float16))
    assert ct2.variables["a/weight"].dtype == np.float16  # fp16 kept as stored
    np.testing.assert_array_equal(ct2.variables["a/bias"], rng.standard_normal(5).astype(np.float32))
    # bf16 of these values is exact (short mantissas), so widening must give them back bit-exactly
    # bf16 widening is exact: the top 16 bits of the float32 source, low bits zero
    expect_bf16 = (np.array([1.5, -2.25, 3.0e-3], np.float32).view(np.uint32) & 0xFFFF0000).view(
        np.float32)
    np.testing.assert_array_equal(ct2.variables["b/bf16"], expect_bf16)
    assert ct2.variables["b/ids"].dtype == np.int32 and ct2.variables["b/ids"].shape == (2, 2)
    assert ct2.attributes == {"num_heads": 6, "flag": 1}
    assert dict(ct2.aliases) == {"c/weight": "a/weight"}
    assert ct2.resolve("c/weight") is ct2.variables["a/weight"]


def test_refuses_another_binary_version(tmp_path: Path) -> None:
    path = _write_ct2(tmp_path / "model.bin", [], [], version=5)
    with pytest.raises(CheckpointError, match=r"model\.bin.*version 6.*version 5"):
        read_ct2(path)


def test_refuses_another_format(tmp_path: Path) -> None:
    path = tmp_path / "model.bin"
    path.write_bytes(b"PK\x03\x04" + bytes(64))  # a zip (e.g. a torch .pt), not CTranslate2
    with pytest.raises(CheckpointError, match=r"model\.bin.*version 6.*0x04034b50"):
        read_ct2(path)


def test_refuses_another_spec_when_one_is_expected(small_file: Path) -> None:
    with pytest.raises(CheckpointError, match=r"'TestSpec'.*expected 'WhisperSpec'"):
        read_ct2(small_file, expected_spec="WhisperSpec")


def test_refuses_truncated_and_trailing_bytes(small_file: Path, tmp_path: Path) -> None:
    data = small_file.read_bytes()
    cut = tmp_path / "cut.bin"
    cut.write_bytes(data[:60])
    with pytest.raises(CheckpointError, match=r"cut\.bin: truncated"):
        read_ct2(cut)
    longer = tmp_path / "long.bin"
    longer.write_bytes(data + b"\0\0")
    with pytest.raises(CheckpointError, match=r"long\.bin: 2 unexpected bytes"):
        read_ct2(longer)


def test_refuses_unknown_dtype_and_wrong_size(tmp_path: Path) -> None:
    good = _write_ct2(tmp_path / "g.bin", [("x", 0, np.zeros(2, np.float32))], [])
    data = bytearray(good.read_bytes())
    # header: 4 version + 2+9 "TestSpec" + 4 revision + 4 count, name: 2+2 "x", rank 1, dim 4
    type_pos = 4 + 11 + 4 + 4 + 4 + 1 + 4
    assert data[type_pos] == 0
    bad_type = bytearray(data)
    bad_type[type_pos] = 9
    (tmp_path / "t.bin").write_bytes(bad_type)
    with pytest.raises(CheckpointError, match=r"t\.bin: variable 'x' has dtype id 9"):
        read_ct2(tmp_path / "t.bin")
    bad_size = bytearray(data)
    bad_size[type_pos + 1:type_pos + 5] = struct.pack("<I", 4)
    (tmp_path / "s.bin").write_bytes(bad_size)
    with pytest.raises(CheckpointError, match=r"should take 8 bytes, the file says 4"):
        read_ct2(tmp_path / "s.bin")


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no such CTranslate2 model file"):
        read_ct2(tmp_path / "nothing")


def test_reads_the_shipped_whisper_tiny_en() -> None:
    model_dir = default_whisper_dir()
    ct2 = read_ct2(model_dir / "model.bin", expected_spec="WhisperSpec")
    assert (ct2.binary_version, ct2.spec_revision) == (6, 3)
    assert len(ct2.variables) == 148
    assert list(ct2.variables) == sorted(ct2.variables)  # the converter writes names sorted
    assert ct2.attributes["encoder/num_heads"] == 6 and ct2.attributes["decoder/num_heads"] == 6
    assert ct2.variables["encoder/conv1/weight"].shape == (384, 80, 3)
    assert ct2.variables["encoder/conv1/weight"].dtype == np.float16
    assert ct2.variables["encoder/position_encodings/encodings"].shape == (1500, 384)
    assert ct2.variables["encoder/layer_3/self_attention/linear_0/weight"].shape == (1152, 384)
    assert dict(ct2.aliases) == {"decoder/projection/weight": "decoder/embeddings/weight"}
    # fp16 data is 2 bytes per value; headers take the rest of the 75.5 MB file
    data_bytes = sum(v.nbytes for v in ct2.variables.values())
    assert 0 < (model_dir / "model.bin").stat().st_size - data_bytes < 20_000
    # the shipped config and vocabulary files are there too (we do not use the decoder's tokens)
    assert (model_dir / "config.json").is_file() and (model_dir / "vocabulary.txt").is_file()
