"""Bring your own model: the adapter (adapt.py), Hugging Face wav2vec2 folders
(hf_wav2vec2.py) and the side-by-side benchmark (bench.py)."""
from workbench.byo.adapt import AdaptedConfig, AdaptedCTC, adapt
from workbench.byo.hf_wav2vec2 import load_wav2vec2_hf

__all__ = ["AdaptedCTC", "AdaptedConfig", "adapt", "load_wav2vec2_hf"]
