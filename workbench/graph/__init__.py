"""Structure found from the graph: prunable heads, neurons and channels of any model.

    structure = discover(model, example)          groups proven on a recorded run, refusals
    pruned = prune(model, structure, {"neurons": 0.5, "heads": 0.25, "channels": 0.25}, example)

units.py records the op graph with unit labels, groups.py turns units into proven groups
(structure.py: the Group / Refusal / Structure types), surgery.py removes units physically from
a copy.
"""
from workbench.graph.groups import discover
from workbench.graph.structure import Group, Refusal, Structure
from workbench.graph.surgery import (PrunedSelfAttention, Pruned, count_params, prune,
                                     remove_units_)

__all__ = ["Group", "Pruned", "PrunedSelfAttention", "Refusal", "Structure", "count_params",
           "discover", "prune", "remove_units_"]
