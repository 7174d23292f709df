"""Compression techniques, one module each, registered in `registry` (see its docstring).

    registry.py       Technique (the handler), register / techniques / settings, structure split
    pruning.py        heads / neurons / channels (shapes shrink) and unstructured masks
    low_rank.py       Linear -> two Linears by truncated SVD
    quantization.py   fake-quantized weights and activations
    windowed_attention.py, linear_attention.py, performer_attention.py, grouped_ffn.py
                      architecture swaps (workbench.compress.swap_layers), built from the weights

Importing this package registers the built-in techniques (in apply order: prune, low rank,
quant). A new technique registers itself the same way from its own module.
"""
from workbench.compress.techniques import low_rank, pruning, quantization  # noqa: F401 (register)
from workbench.compress.techniques import (grouped_ffn, linear_attention,  # noqa: F401 (register)
                                           performer_attention, windowed_attention)
from workbench.compress.techniques.registry import (ApplyContext, Control, Technique,
                                                    changes_shape, needs, register,
                                                    runtime_only, settings, shape_only,
                                                    structure_only, technique, techniques,
                                                    unregister)

__all__ = ["ApplyContext", "Control", "Technique", "changes_shape", "needs", "register",
           "runtime_only", "settings", "shape_only", "structure_only", "technique", "techniques",
           "unregister"]
