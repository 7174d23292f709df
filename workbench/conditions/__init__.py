"""Robustness: WER / CER under noise, rooms, speed, telephone channels, per voice and length,
for the baseline model and a compression plan side by side.

    from workbench.conditions import evaluate_conditions, DEFAULT_GRID
    result = evaluate_conditions(load_demo(), plan)      # ConditionsResult
    print(result.markdown())

CLI: `workbench eval --conditions [--plan P] [--grid default|full|LIST]`;
bench: `workbench bench conditions --json`.
"""
from workbench.conditions.grid import (DEFAULT_GRID, FULL_GRID, GRIDS, NOISE_TYPES, Condition,
                                       ConditionError, degrade, resolve_grid)
from workbench.conditions.run import (BaselineCache, BreakdownRow, Cancelled, ConditionRow,
                                      ConditionsResult, condition_sets, evaluate_conditions)

__all__ = ["DEFAULT_GRID", "FULL_GRID", "GRIDS", "NOISE_TYPES", "BaselineCache", "BreakdownRow",
           "Cancelled", "Condition", "ConditionError", "ConditionRow", "ConditionsResult",
           "condition_sets", "degrade", "evaluate_conditions", "resolve_grid"]
