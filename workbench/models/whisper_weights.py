"""Name mappings from published Whisper weight layouts onto our `WhisperCTC` module paths.

Pure functions over tensors: they build a state dict for our encoder and account for every source
tensor, so a loader can prove that nothing was dropped or used twice.

CTranslate2 (converter: python/ctranslate2/converters/transformers.py, `WhisperLoader` +
`set_attention`, which fuses q, k, v into `self_attention/linear_0` in that order and fills the
missing key bias with zeros; LayerNorm weight/bias are stored as gamma/beta):

    encoder/conv{1,2}/{weight,bias}                    -> conv{1,2}
    encoder/position_encodings/encodings (1500, 384)   -> positional_embedding
    encoder/layer_{i}/self_attention/layer_norm        -> blocks.{i}.attn_ln
    encoder/layer_{i}/self_attention/linear_0 (3D, D)  -> blocks.{i}.attn.{q,k,v}_proj (k: no bias)
    encoder/layer_{i}/self_attention/linear_1          -> blocks.{i}.attn.out_proj
    encoder/layer_{i}/ffn/layer_norm                   -> blocks.{i}.mlp_ln
    encoder/layer_{i}/ffn/linear_{0,1}                 -> blocks.{i}.mlp.fc{1,2}
    encoder/layer_norm                                 -> ln_post
    encoder/num_heads (int16 attribute)                -> config.n_heads

Hugging Face (transformers `WhisperForConditionalGeneration`): `model.encoder.` + conv1, conv2,
embed_positions.weight, layers.{i}.self_attn.{q,k,v,out}_proj, self_attn_layer_norm, fc1, fc2,
final_layer_norm, layer_norm.
"""
from __future__ import annotations

import json
import pickle
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from workbench.errors import CheckpointError
from workbench.models.ct2_reader import CT2File
from workbench.models.whisper_ctc import WhisperCTCConfig


@dataclass(frozen=True)
class MappedWeights:
    """Our encoder state dict, the config read off the shapes, and the accounting of sources."""

    config: WhisperCTCConfig
    state: dict[str, torch.Tensor]
    uses: dict[str, int]             # source encoder tensor name -> times used (must all be 1)
    ignored: tuple[str, ...]         # source tensors skipped on purpose (the decoder)


class _Source:
    """Hands out source tensors as float32 torch tensors and counts every use."""

    def __init__(self, tensors: dict[str, np.ndarray | torch.Tensor], origin: Path) -> None:
        self.tensors = tensors
        self.origin = origin
        self.uses: Counter[str] = Counter()

    def get(self, name: str) -> torch.Tensor:
        if name not in self.tensors:
            raise CheckpointError(f"{self.origin}: tensor '{name}' is missing; this is not a "
                                  f"complete Whisper encoder.")
        self.uses[name] += 1
        value = self.tensors[name]
        tensor = value if isinstance(value, torch.Tensor) else torch.from_numpy(np.array(value))
        return tensor.detach().to(torch.float32).clone()

    def peek_shape(self, name: str) -> tuple[int, ...]:
        if name not in self.tensors:
            raise CheckpointError(f"{self.origin}: tensor '{name}' is missing; this is not a "
                                  f"complete Whisper encoder.")
        return tuple(self.tensors[name].shape)


def _count_layers(names: list[str], pattern: str) -> int:
    found = {int(m.group(1)) for n in names if (m := re.match(pattern, n))}
    if found != set(range(len(found))):
        raise CheckpointError(f"encoder layer indices are not contiguous: {sorted(found)}")
    return len(found)


def _check_accounting(src: _Source, prefix: str) -> dict[str, int]:
    """Every source tensor under `prefix` is used exactly once, else CheckpointError."""
    names = [n for n in src.tensors if n.startswith(prefix)]
    unused = [n for n in names if src.uses[n] == 0]
    twice = [n for n in names if src.uses[n] > 1]
    if unused or twice:
        raise CheckpointError(f"{src.origin}: encoder tensors not mapped exactly once: unused "
                              f"{unused[:5]}, used more than once {twice[:5]}. The file has a "
                              f"layout this loader does not know.")
    return {n: src.uses[n] for n in names}


def ct2_to_state_dict(ct2: CT2File) -> MappedWeights:
    """Map a CTranslate2 WhisperSpec onto our module paths (float32), checking every tensor."""
    src = _Source(dict(ct2.variables), ct2.path)
    names = list(ct2.variables)
    n_layers = _count_layers(names, r"encoder/layer_(\d+)/")
    n_mels = src.peek_shape("encoder/conv1/weight")[1]
    d_model = src.peek_shape("encoder/conv1/weight")[0]
    n_ctx = src.peek_shape("encoder/position_encodings/encodings")[0]
    d_ff = src.peek_shape("encoder/layer_0/ffn/linear_0/weight")[0]
    n_heads = int(src.get("encoder/num_heads").item())
    config = WhisperCTCConfig(n_mels=n_mels, d_model=d_model, n_heads=n_heads, n_layers=n_layers,
                              d_ff=d_ff, n_ctx=n_ctx)

    state: dict[str, torch.Tensor] = {}

    def put(ours: str, theirs: str) -> None:
        state[ours] = src.get(theirs)

    for conv in ("conv1", "conv2"):
        put(f"{conv}.weight", f"encoder/{conv}/weight")
        put(f"{conv}.bias", f"encoder/{conv}/bias")
    put("positional_embedding", "encoder/position_encodings/encodings")
    put("ln_post.weight", "encoder/layer_norm/gamma")
    put("ln_post.bias", "encoder/layer_norm/beta")
    for i in range(n_layers):
        ct, us = f"encoder/layer_{i}", f"blocks.{i}"
        put(f"{us}.attn_ln.weight", f"{ct}/self_attention/layer_norm/gamma")
        put(f"{us}.attn_ln.bias", f"{ct}/self_attention/layer_norm/beta")
        q_w, k_w, v_w = src.get(f"{ct}/self_attention/linear_0/weight").chunk(3, dim=0)
        q_b, k_b, v_b = src.get(f"{ct}/self_attention/linear_0/bias").chunk(3, dim=0)
        if bool(k_b.any()):
            raise CheckpointError(f"{ct2.path}: {ct}/self_attention/linear_0/bias has a non-zero "
                                  f"key bias; Whisper's key projection has none, so this is not "
                                  f"a Whisper encoder our model can hold exactly.")
        state.update({f"{us}.attn.q_proj.weight": q_w, f"{us}.attn.q_proj.bias": q_b,
                      f"{us}.attn.k_proj.weight": k_w,
                      f"{us}.attn.v_proj.weight": v_w, f"{us}.attn.v_proj.bias": v_b})
        put(f"{us}.attn.out_proj.weight", f"{ct}/self_attention/linear_1/weight")
        put(f"{us}.attn.out_proj.bias", f"{ct}/self_attention/linear_1/bias")
        put(f"{us}.mlp_ln.weight", f"{ct}/ffn/layer_norm/gamma")
        put(f"{us}.mlp_ln.bias", f"{ct}/ffn/layer_norm/beta")
        for j in (0, 1):
            put(f"{us}.mlp.fc{j + 1}.weight", f"{ct}/ffn/linear_{j}/weight")
            put(f"{us}.mlp.fc{j + 1}.bias", f"{ct}/ffn/linear_{j}/bias")

    uses = _check_accounting(src, "encoder/")
    ignored = tuple(n for n in names if not n.startswith("encoder/"))
    return MappedWeights(config, state, uses, ignored)


HF_PREFIX = "model.encoder."


def read_hf_tensors(directory: Path) -> tuple[dict[str, torch.Tensor], Path]:
    """Tensors of a local HF Whisper directory: model.safetensors, else pytorch_model.bin."""
    st, pt = directory / "model.safetensors", directory / "pytorch_model.bin"
    if st.is_file():
        from safetensors import SafetensorError
        from safetensors.torch import load_file
        try:
            return load_file(st), st
        except (SafetensorError, OSError, ValueError) as err:
            raise CheckpointError(f"{st}: not a readable safetensors file ({err}).") from None
    if pt.is_file():
        try:
            return torch.load(pt, map_location="cpu", weights_only=True), pt
        except pickle.UnpicklingError as err:
            # torch names the forbidden global ("Unsupported global: GLOBAL x") when the
            # pickle would import code; any other weights-only failure is a broken file.
            if "unsupported global" not in str(err).lower():
                raise CheckpointError(f"{pt}: not a readable torch file (the weights-only "
                                      f"loader cannot parse it).") from None
            raise CheckpointError(f"{pt}: contains pickled code, not only weights; refusing to "
                                  f"load it. Use model.safetensors instead.") from None
        except (RuntimeError, EOFError, OSError) as err:
            raise CheckpointError(f"{pt}: not a readable torch file ({err}).") from None
    raise CheckpointError(f"{directory}: no model.safetensors or pytorch_model.bin; expected a "
                          f"local copy of a Hugging Face openai/whisper-* model directory.")


def read_hf_encoder_heads(directory: Path) -> int | None:
    """`encoder_attention_heads` from the directory's config.json, if there is one."""
    config = directory / "config.json"
    if not config.is_file():
        return None
    try:
        heads = json.loads(config.read_text(encoding="utf-8")).get("encoder_attention_heads")
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{config}: not valid JSON ({err}).") from None
    return int(heads) if heads is not None else None


def hf_to_state_dict(tensors: dict[str, torch.Tensor], origin: Path,
                     n_heads: int | None = None) -> MappedWeights:
    """Map HF `model.encoder.*` names onto our module paths (float32), checking every tensor.

    `n_heads` comes from config.json when known; else 64-dim heads, as at every Whisper size.
    """
    src = _Source(dict(tensors), origin)
    names = list(tensors)
    p = HF_PREFIX
    n_layers = _count_layers(names, re.escape(p) + r"layers\.(\d+)\.")
    if n_layers == 0:
        raise CheckpointError(f"{origin}: no '{p}layers.*' tensors; not a Hugging Face Whisper "
                              f"checkpoint (found e.g. {names[:3]}).")
    d_model, n_mels, _ = src.peek_shape(p + "conv1.weight")
    n_ctx = src.peek_shape(p + "embed_positions.weight")[0]
    d_ff = src.peek_shape(p + "layers.0.fc1.weight")[0]
    config = WhisperCTCConfig(n_mels=n_mels, d_model=d_model, n_heads=n_heads or d_model // 64,
                              n_layers=n_layers, d_ff=d_ff, n_ctx=n_ctx)
    pairs = [("conv1", "conv1"), ("conv2", "conv2"), ("ln_post", "layer_norm")]
    for i in range(n_layers):
        hf, us = f"layers.{i}", f"blocks.{i}"
        pairs += [(f"{us}.attn_ln", f"{hf}.self_attn_layer_norm"),
                  (f"{us}.attn.q_proj", f"{hf}.self_attn.q_proj"),
                  (f"{us}.attn.v_proj", f"{hf}.self_attn.v_proj"),
                  (f"{us}.attn.out_proj", f"{hf}.self_attn.out_proj"),
                  (f"{us}.mlp_ln", f"{hf}.final_layer_norm"),
                  (f"{us}.mlp.fc1", f"{hf}.fc1"), (f"{us}.mlp.fc2", f"{hf}.fc2")]
    state = {f"{us}.{kind}": src.get(f"{p}{hf}.{kind}") for us, hf in pairs
             for kind in ("weight", "bias")}
    for i in range(n_layers):
        state[f"blocks.{i}.attn.k_proj.weight"] = src.get(f"{p}layers.{i}.self_attn.k_proj.weight")
    state["positional_embedding"] = src.get(p + "embed_positions.weight")
    uses = _check_accounting(src, p)
    ignored = tuple(n for n in names if not n.startswith(p))
    return MappedWeights(config, state, uses, ignored)
