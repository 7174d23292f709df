"""workbench.lessons.crossover (lesson 09; module workbench/lessons/breakeven.py): where a speed-up
curve over audio lengths crosses 1x, on synthetic speed-ups whose crossing is known exactly."""
from __future__ import annotations

import math

import pytest

from workbench.errors import ArgumentError
from workbench.lessons import Crossover, crossover


def test_a_rising_curve_crosses_where_the_line_between_its_neighbours_reaches_one() -> None:
    c = crossover([1, 2, 5, 10], [0.8, 0.9, 1.1, 1.5])
    # (2 s, 0.9x) -> (5 s, 1.1x): 1x halfway, at 3.5 s
    assert math.isclose(c.seconds, 3.5, abs_tol=1e-12)
    assert c.between == (2.0, 5.0)
    assert c.crossings == pytest.approx((3.5,), abs=1e-12)
    assert not c.faster_everywhere
    assert str(c) == "3.5 s (between 2 and 5 s)"


def test_the_crossing_is_linear_in_length_not_the_midpoint() -> None:
    # (10 s, 0.5x) -> (20 s, 3.0x): 1x a fifth of the way, at 12 s
    assert math.isclose(crossover([10, 20], [0.5, 3.0]).seconds, 12.0, abs_tol=1e-12)


def test_exactly_one_counts_as_not_faster() -> None:
    c = crossover([2, 4, 8], [0.9, 1.0, 1.2])
    assert c.between == (4.0, 8.0) and math.isclose(c.seconds, 4.0, abs_tol=1e-12)


def test_a_noisy_dip_moves_the_crossover_to_the_last_upward_crossing() -> None:
    # faster at 2 s, slower at 5 s, faster from then on: the swap pays from the second crossing
    c = crossover([1, 2, 5, 10], [0.5, 1.5, 0.5, 1.5])
    assert c.crossings == pytest.approx((1.5, 3.5, 7.5), abs=1e-12)
    assert math.isclose(c.seconds, 7.5, abs_tol=1e-12) and c.between == (5.0, 10.0)
    assert "also crosses 1x at 1.5 s, 3.5 s" in str(c)


def test_faster_everywhere_gives_the_shortest_length_as_an_upper_bound() -> None:
    c = crossover([2, 5, 30], [1.2, 1.3, 2.0])
    assert c.seconds == 2.0 and c.between is None and c.faster_everywhere
    assert c.crossings == ()
    assert str(c) == "<= 2 s (faster at every length timed)"


def test_slower_at_the_longest_length_has_no_crossover_but_keeps_its_crossings() -> None:
    # pays at short lengths only (1.2x at 20 s, 0.8x at 30 s): stops paying at 25 s
    c = crossover([5, 20, 30], [1.3, 1.2, 0.8])
    assert c.seconds is None and c.between is None and not c.faster_everywhere
    assert c.crossings == pytest.approx((25.0,), abs=1e-12)
    assert str(c).startswith("none up to 30 s")


def test_one_length_is_enough() -> None:
    assert crossover([30], [2.0]).seconds == 30.0
    assert crossover([30], [0.9]).seconds is None


def test_it_is_a_frozen_record() -> None:
    c = crossover([1, 2], [0.5, 1.5])
    assert isinstance(c, Crossover)
    with pytest.raises(AttributeError):
        c.seconds = 1.0    # type: ignore[misc]


@pytest.mark.parametrize("lengths,speedups,word", [
    ([], [], "same number"),
    ([1, 2], [1.0], "same number"),
    ([2, 1], [1.0, 1.0], "ascending"),
    ([1, 1], [1.0, 1.0], "ascending"),
    ([0, 1], [1.0, 1.0], "> 0"),
    ([1, 2], [1.0, -1.0], "> 0"),
    ([1, 2], [1.0, float("nan")], "finite"),
    ([1, float("inf")], [1.0, 1.0], "finite"),
])
def test_bad_input_is_refused_in_one_line(lengths, speedups, word) -> None:
    with pytest.raises(ArgumentError, match=word.replace(">", r"\>")) as err:
        crossover(lengths, speedups)
    assert "\n" not in str(err.value)
