"""Structure found from the graph: prunable heads, neurons and channels of any model.

    structure = discover(model, example)          groups proven on a recorded run, refusals
    pruned = prune(model, structure, {"neurons": 0.5, "heads": 0.25, "channels": 0.25}, example)

units.py records the op graph with unit labels, groups.py turns units into proven groups,
surgery.py removes units physically from a copy.
"""
from workbench.graph.groups import Group, Refusal, Structure, discover
from workbench.graph.surgery import (PrunedSelfAttention, Pruned, count_params, prune,
                                     remove_units_)

__all__ = ["Group", "Pruned", "PrunedSelfAttention", "Refusal", "Structure", "count_params",
           "discover", "prune", "remove_units_"]
