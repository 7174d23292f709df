"""Lab support for the notebooks: reference solutions, checks that compare a learner's function
with them, the pure part of predict-then-run, and the capstone's grader.

    from workbench.lessons import checks, solutions
    checks.check_magnitude_mask(my_mask_fn)      # ✓, or ✗ with what is wrong
    trace_for_edge(model, plan).at(8.0).price("rpi4_a72")   # lesson 05: trace once, price often
    crossover([2, 5, 10], [0.9, 1.1, 1.5]).seconds           # lesson 09: 3.5 s, where a swap pays

No ipywidgets here (the guess widget is `workbench.ui.predict`)."""
from workbench.lessons import breakeven, capstone, checks, edge, predict, solutions
from workbench.lessons.breakeven import Crossover, crossover
from workbench.lessons.capstone import Budget, grade_report
from workbench.lessons.checks import CHECKS, CheckResult, LessonCheckError
from workbench.lessons.edge import EdgeTrace, published_fit, roofline_inputs, trace_for_edge
from workbench.lessons.predict import Gap

__all__ = ["CHECKS", "Budget", "CheckResult", "Crossover", "EdgeTrace", "Gap", "LessonCheckError",
           "breakeven", "capstone", "checks", "crossover", "edge", "grade_report", "predict",
           "published_fit", "roofline_inputs", "solutions", "trace_for_edge"]
