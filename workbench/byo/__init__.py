"""Bring your own model: the adapter (adapt.py) and Hugging Face wav2vec2 folders
(hf_wav2vec2.py); the side-by-side benchmark is workbench.bench.byo."""
from workbench.byo.adapt import AdaptedConfig, AdaptedCTC, adapt
from workbench.byo.hf_wav2vec2 import load_wav2vec2_hf

__all__ = ["AdaptedCTC", "AdaptedConfig", "adapt", "load_wav2vec2_hf"]
