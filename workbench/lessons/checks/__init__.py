"""Checks for the lessons' implement-it-yourself cells: the learner's function against the
reference in `workbench.lessons.solutions`, on fixed seeded inputs, saying *what* is wrong.

    result = check_magnitude_mask(magnitude_mask)   # shows ✓ or ✗ with the problems found
    mask_fn = result.function                        # the learner's function if it passed,
                                                     # else the reference (the lesson goes on)

A learner function that raises NotImplementedError (the stub as committed) is reported as "not
done yet"; the check then runs itself on the reference and raises LessonCheckError if the
reference fails it (that would be a bug of the check, not of the learner). So every headless run
of a lesson also proves that its checks pass with the solutions.

Comparisons use tolerances (float rounding differs between correct implementations); where
correct answers may legitimately differ (tie-breaking, k-means local optima) the check tests the
defining property instead of equality. Inputs are small and seeded: a check takes milliseconds.

One module per lesson (lessonNN.py) holds that lesson's checks; core.py the shared machinery;
CHECKS below is the table of all of them by the name of the function each one checks.
"""
from __future__ import annotations

from collections.abc import Callable

from workbench.lessons.checks.core import MAX_PROBLEMS, CheckResult, LessonCheckError
from workbench.lessons.checks.lesson00 import check_wer
from workbench.lessons.checks.lesson01 import check_block_macs, check_crossover_frames
from workbench.lessons.checks.lesson02 import (check_magnitude_mask, check_neuron_scores,
                                               check_nm_mask, check_prune_ffn,
                                               check_taylor_neuron_scores)
from workbench.lessons.checks.lesson03 import (check_integer_linear, check_kmeans_quantize,
                                               check_linear_quantize, check_sqnr_db)
from workbench.lessons.checks.lesson04 import check_frobenius_error, check_truncated_svd
from workbench.lessons.checks.lesson05 import check_roofline_ms
from workbench.lessons.checks.lesson06 import check_int8_bytes
from workbench.lessons.checks.lesson07 import check_linear_shapes
from workbench.lessons.checks.lesson08 import check_bits_by_role
from workbench.lessons.checks.lesson09 import (check_linear_attention, check_local_attention,
                                               check_windowed_scores_macs)
from workbench.lessons.checks.lesson10 import check_add_noise
from workbench.lessons.checks.lesson11 import check_first_partial_ms
from workbench.lessons.checks.lesson12 import check_whisper_ms


#: Every check by the name of the function it checks (tests run each on the reference and on a
#: wrong answer).
CHECKS: dict[str, Callable[[Callable], CheckResult]] = {
    "wer": check_wer, "block_macs": check_block_macs, "crossover_frames": check_crossover_frames,
    "magnitude_mask": check_magnitude_mask, "nm_mask": check_nm_mask, "prune_ffn": check_prune_ffn,
    "neuron_scores": check_neuron_scores, "taylor_neuron_scores": check_taylor_neuron_scores,
    "linear_quantize": check_linear_quantize, "sqnr_db": check_sqnr_db,
    "kmeans_quantize": check_kmeans_quantize, "integer_linear": check_integer_linear,
    "truncated_svd": check_truncated_svd, "frobenius_error": check_frobenius_error,
    "roofline_ms": check_roofline_ms, "int8_bytes": check_int8_bytes,
    "linear_shapes": check_linear_shapes, "add_noise": check_add_noise,
    "first_partial_ms": check_first_partial_ms, "bits_by_role": check_bits_by_role,
    "whisper_ms": check_whisper_ms, "windowed_scores_macs": check_windowed_scores_macs,
    "local_attention": check_local_attention, "linear_attention": check_linear_attention,
}

__all__ = ["CHECKS", "MAX_PROBLEMS", "CheckResult", "LessonCheckError", "check_add_noise",
           "check_bits_by_role", "check_block_macs", "check_crossover_frames",
           "check_first_partial_ms", "check_frobenius_error", "check_int8_bytes",
           "check_integer_linear", "check_kmeans_quantize", "check_linear_attention",
           "check_linear_quantize", "check_linear_shapes", "check_local_attention",
           "check_magnitude_mask", "check_neuron_scores", "check_nm_mask", "check_prune_ffn",
           "check_roofline_ms", "check_sqnr_db", "check_taylor_neuron_scores",
           "check_truncated_svd", "check_wer", "check_whisper_ms", "check_windowed_scores_macs"]
