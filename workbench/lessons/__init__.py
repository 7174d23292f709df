"""Lab support for the notebooks: reference solutions, checks that compare a learner's function
with them, the pure part of predict-then-run, and the capstone's grader.

    from workbench.lessons import checks, solutions
    checks.check_magnitude_mask(my_mask_fn)      # ✓, or ✗ with what is wrong

No ipywidgets here (the guess widget is `workbench.ui.predict`)."""
from workbench.lessons import capstone, checks, predict, solutions
from workbench.lessons.capstone import Budget, grade_report
from workbench.lessons.checks import CHECKS, CheckResult, LessonCheckError
from workbench.lessons.predict import Gap

__all__ = ["CHECKS", "Budget", "CheckResult", "Gap", "LessonCheckError", "capstone", "checks",
           "grade_report", "predict", "solutions"]
