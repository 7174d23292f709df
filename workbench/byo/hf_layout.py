"""Write a Whisper encoder in the Hugging Face layout (model.safetensors + config.json).

Tests and `workbench bench byo` use it to make a local folder that `load_whisper_hf` reads as
it would read `openai/whisper-*` (nothing is downloaded). Names follow transformers'
WhisperForConditionalGeneration: model.encoder.{conv1,conv2,embed_positions,layer_norm,
layers.i.{self_attn.{q,k,v,out}_proj,self_attn_layer_norm,fc1,fc2,final_layer_norm}}.
"""
from __future__ import annotations

import json
from pathlib import Path

from torch import nn

_NAMES = {"attn_ln": "self_attn_layer_norm", "mlp_ln": "final_layer_norm", "mlp.fc1": "fc1",
          "mlp.fc2": "fc2", "attn.q_proj": "self_attn.q_proj", "attn.k_proj": "self_attn.k_proj",
          "attn.v_proj": "self_attn.v_proj", "attn.out_proj": "self_attn.out_proj"}


def write_whisper_hf(model: nn.Module, folder: Path) -> Path:
    """Write `model` (a workbench WhisperCTC) as an HF Whisper folder; returns the folder."""
    from safetensors.torch import save_file
    sd, p = model.state_dict(), "model.encoder."
    out = {p + "conv1.weight": sd["conv1.weight"], p + "conv1.bias": sd["conv1.bias"],
           p + "conv2.weight": sd["conv2.weight"], p + "conv2.bias": sd["conv2.bias"],
           p + "embed_positions.weight": model.positional_embedding,
           p + "layer_norm.weight": sd["ln_post.weight"], p + "layer_norm.bias": sd["ln_post.bias"]}
    for key, value in sd.items():
        parts = key.split(".")
        if parts[0] == "blocks":
            module, kind = ".".join(parts[2:-1]), parts[-1]
            out[f"{p}layers.{parts[1]}.{_NAMES[module]}.{kind}"] = value
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().clone().contiguous() for k, v in out.items()},
              str(folder / "model.safetensors"))
    cfg = model.config
    (folder / "config.json").write_text(json.dumps(
        {"model_type": "whisper", "d_model": cfg.d_model, "encoder_attention_heads": cfg.n_heads,
         "encoder_layers": cfg.n_layers, "encoder_ffn_dim": cfg.d_ff,
         "max_source_positions": cfg.n_ctx, "num_mel_bins": cfg.n_mels}, indent=1))
    return folder
