"""Bring your own model: the adapter (adapt.py) and the side-by-side benchmark (bench.py)."""
from workbench.byo.adapt import AdaptedConfig, AdaptedCTC, adapt

__all__ = ["AdaptedCTC", "AdaptedConfig", "adapt"]
