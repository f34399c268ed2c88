"""bench/pairs.py: the order of paired runs, the ratios and their spread."""

from __future__ import annotations

import math

import pytest

from bench.pairs import (
    Pair,
    describe,
    interleave,
    load_line,
    order,
    ratio,
    ratio_line,
    ratios,
    spread,
)


def test_order_alternates_which_side_goes_first() -> None:
    assert [order(i) for i in range(4)] == [
        ("baseline", "subject"),
        ("subject", "baseline"),
        ("baseline", "subject"),
        ("subject", "baseline"),
    ]


def test_interleave_runs_abab_with_the_order_alternating() -> None:
    calls: list[tuple[str, int]] = []

    def side(name: str, value: float):  # type: ignore[no-untyped-def]
        def run(index: int) -> float:
            calls.append((name, index))
            return value * (index + 1)

        return run

    runs = interleave(3, side("a", 10.0), side("b", 5.0))
    assert calls == [("a", 0), ("b", 0), ("b", 1), ("a", 1), ("a", 2), ("b", 2)]
    assert runs == [
        Pair(10.0, 5.0, subject_first=False),
        Pair(20.0, 10.0, subject_first=True),
        Pair(30.0, 15.0, subject_first=False),
    ]
    assert ratios(runs, float) == [0.5, 0.5, 0.5]


def test_interleave_refuses_no_pairs() -> None:
    with pytest.raises(ValueError, match="pairs: 0"):
        interleave(0, float, float)


def test_ratio_is_subject_over_baseline_and_names_a_zero_baseline() -> None:
    assert ratio(3.0, 4.0) == 0.75
    assert ratio(1.0, 0.0) == math.inf
    assert math.isnan(ratio(0.0, 0.0))


def test_ratios_measure_each_side_of_each_pair() -> None:
    runs = [
        Pair({"rate": 100.0}, {"rate": 50.0}, False),
        Pair({"rate": 80.0}, {"rate": 60.0}, True),
    ]
    assert ratios(runs, lambda r: r["rate"]) == [0.5, 0.75]


def test_spread_median_range_and_quartiles() -> None:
    found = spread([0.9, 0.5, 0.7, 1.1, 0.6])
    assert found is not None
    assert (found.count, found.median, found.low, found.high) == (5, 0.7, 0.5, 1.1)
    assert (found.q1, found.q3) == pytest.approx((0.6, 0.9))


def test_spread_of_an_even_count_interpolates() -> None:
    found = spread([4.0, 1.0, 3.0, 2.0])
    assert found is not None
    assert found.median == 2.5
    assert (found.q1, found.q3) == pytest.approx((1.75, 3.25))


def test_spread_of_one_value_and_of_none() -> None:
    one = spread([1.5])
    assert one is not None
    assert (one.median, one.low, one.high, one.q1, one.q3) == (1.5,) * 5
    assert spread([]) is None
    assert spread([math.nan, math.inf]) is None


def test_spread_leaves_out_ratios_that_are_not_finite() -> None:
    found = spread([1.0, math.inf, 3.0, math.nan])
    assert found is not None
    assert (found.count, found.median) == (2, 2.0)


def test_ratio_line_prints_every_pair_then_median_and_spread() -> None:
    line = ratio_line("gateway / bare", [0.44, 1.16, 0.5])
    assert line == (
        "gateway / bare: pairs [0.44 1.16 0.50] median 0.50 "
        "(min-max 0.44-1.16, IQR 0.47-0.83; 3 pairs)"
    )


def test_describe_says_when_some_or_all_ratios_are_not_finite() -> None:
    assert describe([math.inf, 2.0], digits=1).endswith("1 pairs, 1 not finite)")
    assert describe([math.nan]) == "no finite ratio"
    assert ratio_line("x", [math.nan]) == "x: pairs [n/a] no finite ratio"


def test_load_line() -> None:
    assert load_line((1.234, 0.5, 2.0)) == "load average 1.23 0.50 2.00 (1, 5, 15 min)"
