"""Energy in, energy out, plausibly: direction (import/net) and max_kw in the energy core.

Examples first (each a defect seen in the field), then properties over any readings a
device or a hostile plugin can produce: negatives, huge values, NaN, infinities, wraps.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.metering.energy import (
    ABS_TOL_KWH,
    REL_TOL,
    Energies,
    IntervalEnergy,
    Limits,
    counter_intervals,
    power_intervals,
)

T0 = 1_700_000_040.0  # a whole minute
HOUR = [(T0, T0 + 3600.0)]
Samples = list[tuple[float, float]]


def every(seconds: float, values: Sequence[float], t0: float = T0) -> Samples:
    return [(t0 + seconds * i, v) for i, v in enumerate(values)]


def kwh(result: IntervalEnergy | None) -> float:
    assert result is not None
    return result.kwh


# --------------------------------------------------------------------------- limits


def test_limits_refuse_what_cannot_be_a_limit() -> None:
    for bad in (0.0, -1.0, math.nan, math.inf):
        with pytest.raises(ValueError, match="max_kw"):
            Limits(bad)
    with pytest.raises(ValueError, match="direction"):
        Limits(10.0, "export")  # type: ignore[arg-type]


def test_the_bound_is_max_kw_times_hours_with_a_small_margin() -> None:
    limits = Limits(10.0)
    assert limits.allows(10.0, 3600.0)
    assert limits.allows(10.0 * (1 + REL_TOL), 3600.0)
    assert not limits.allows(10.0 * (1 + 2 * REL_TOL) + ABS_TOL_KWH, 3600.0)
    assert not limits.allows(-1e-9, 3600.0)  # import is never below zero
    assert Limits(10.0, "net").allows(-10.0, 3600.0)
    for absurd in (math.nan, math.inf, -math.inf, 2.78e297):
        assert not Limits(10.0, "net").allows(absurd, 3600.0)


# --------------------------------------------------------------------------- power


def test_import_counts_export_as_no_consumption() -> None:
    """The field defect: -0.01 kWh reached the builder. Export is 0.0 kWh, which is known."""
    exporting = every(10.0, [-3.6] * 361)  # kW, an hour of export
    (energy,) = power_intervals(exporting, HOUR, to_kw=1.0, max_gap=60.0, limits=Limits(10.0))
    assert kwh(energy) == 0.0


def test_import_clamps_each_sample_before_the_trapezoid() -> None:
    samples = every(1800.0, [2.0, -2.0, 2.0])  # kW at 0, 30, 60 minutes
    (energy,) = power_intervals(samples, HOUR, to_kw=1.0, max_gap=1800.0, limits=Limits(10.0))
    assert kwh(energy) == pytest.approx(1.0)  # (2+0)/2 * 0.5 h twice


def test_net_is_import_minus_export() -> None:
    samples = every(1800.0, [2.0, -2.0, -2.0])
    net = Limits(10.0, "net")
    (energy,) = power_intervals(samples, HOUR, to_kw=1.0, max_gap=1800.0, limits=net)
    assert kwh(energy) == pytest.approx(-1.0)  # 0 for the first half hour, -1 for the second


def test_a_power_sample_beyond_max_kw_is_left_out_and_counted() -> None:
    clean = every(10.0, [2.0] * 361)
    dirty = [*clean[:100], (clean[100][0], 1e308), *clean[101:200], (clean[200][0], -5000.0)]
    dirty += clean[201:]
    energies = power_intervals(dirty, HOUR, to_kw=1.0, max_gap=60.0, limits=Limits(50.0))
    assert isinstance(energies, Energies)
    assert energies.glitches == 2
    assert kwh(energies[0]) == pytest.approx(2.0)  # integrated across the two left out


def test_a_power_sample_in_watts_is_judged_in_kilowatts() -> None:
    watts = every(10.0, [2000.0] * 361)
    energies = power_intervals(watts, HOUR, to_kw=0.001, max_gap=60.0, limits=Limits(2.5))
    assert (energies.glitches, kwh(energies[0])) == (0, pytest.approx(2.0))
    energies = power_intervals(watts, HOUR, to_kw=0.001, max_gap=60.0, limits=Limits(1.5))
    assert (energies.glitches, energies[0]) == (361, None)


def test_huge_power_without_limits_is_unknown_not_an_overflow() -> None:
    """The field defect: +-1e308 raised OverflowError out of the scheduler."""
    for value in (1e308, -1e308):
        samples = every(10.0, [value] * 361)
        assert power_intervals(samples, HOUR, to_kw=1.0, max_gap=60.0) == [None]


# --------------------------------------------------------------------------- counters


def test_an_implausible_reset_counts_nothing_and_is_counted() -> None:
    """A meter swapped for one reading 3,000 kWh: the step is no energy, the rest is kept."""
    values = [5000.0 + 0.01 * i for i in range(180)] + [3000.0 + 0.01 * i for i in range(181)]
    samples = every(10.0, values)
    energies = counter_intervals(samples, HOUR, to_kwh=1.0, wrap=None, max_gap=60.0)
    assert kwh(energies[0]) == pytest.approx(3000.0 + 3.59)  # without limits: a reset from 0
    limited = counter_intervals(
        samples, HOUR, to_kwh=1.0, wrap=None, max_gap=60.0, limits=Limits(10.0)
    )
    assert kwh(limited[0]) == pytest.approx(3.59)  # 359 steps of 0.01, the jump counts 0
    assert limited.glitches == 1


def test_an_interval_whose_counter_rises_beyond_max_kw_is_unknown_and_counted() -> None:
    values = [100.0 + 0.01 * i for i in range(361)]
    values[200:] = [v + 1e6 for v in values[200:]]  # a jump up that stays
    samples = every(10.0, values)
    quarters = [(T0 + 900.0 * i, T0 + 900.0 * (i + 1)) for i in range(4)]
    energies = counter_intervals(
        samples, quarters, to_kwh=1.0, wrap=None, max_gap=60.0, limits=Limits(10.0)
    )
    assert [e is None for e in energies] == [False, False, True, False]
    assert energies.glitches == 1
    assert kwh(energies[3]) == pytest.approx(0.9)


def test_counters_near_the_float_range_give_no_value_and_no_error() -> None:
    for values in ([-1e308, 1e308, 1e308], [1e308, -1e308, -1e308, 1e308], [1.7e308] * 3):
        samples = every(1800.0, values)
        for limits in (None, Limits(10.0), Limits(10.0, "net")):
            (energy,) = counter_intervals(
                samples, HOUR, to_kwh=1.0, wrap=None, max_gap=1800.0, limits=limits
            )
            if energy is not None:  # e.g. a counter stuck at 1.7e308 used nothing
                assert math.isfinite(energy.kwh)
                assert limits is None or limits.allows(energy.kwh, 3600.0)


def test_a_counter_never_reports_negative_even_for_net() -> None:
    """A register runs backwards only through a reset, wrap or glitch (see the module doc)."""
    samples = every(600.0, [50.0, 49.0, 48.0, 47.0, 46.0, 45.0, 44.0, 43.0])
    for direction in ("import", "net"):
        energies = counter_intervals(
            samples, HOUR, to_kwh=1.0, wrap=None, max_gap=600.0, limits=Limits(10.0, direction)
        )
        assert kwh(energies[0]) == 0.0  # each drop a reset whose 49.. kWh cannot be real
        assert energies.glitches == 6


def test_a_net_register_running_back_counts_only_its_rises_as_import() -> None:
    """A meter's net register falls while exporting: each step back is a reset whose energy
    (the whole register) cannot be real, so it counts 0 and only the rises count."""
    down = [100.0 - i / 30 for i in range(31)]  # 1 kWh exported over 30 minutes
    up = [99.0 + 2 * i / 30 for i in range(1, 31)]  # then 2 kWh imported
    samples = every(60.0, [*down, *up, 101.0])
    energies = counter_intervals(
        samples, HOUR, to_kwh=1.0, wrap=None, max_gap=60.0, limits=Limits(10.0)
    )
    # the last step back, followed by a rise above the one before, reads as a one-sample
    # glitch: the rise is counted from the reading before it (1/30 kWh less)
    assert kwh(energies[0]) == pytest.approx(2.0 - 1 / 30)
    assert energies.glitches == 30  # 29 steps back that cannot be real, and that glitch


# --------------------------------------------------------------------------- properties

hostile = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(-20.0, 20.0),
    st.sampled_from([0.0, -0.0, 1e308, -1e308, math.nan, math.inf, -math.inf, 2.78e297]),
)


@st.composite
def hostile_series(draw: st.DrawFn) -> Samples:
    """Readings at irregular integer times with anything a device can send in between."""
    gaps = draw(st.lists(st.integers(0, 120), min_size=1, max_size=60))
    values = draw(st.lists(hostile, min_size=len(gaps), max_size=len(gaps)))
    t, out = T0, []
    for gap, value in zip(gaps, values, strict=True):
        t += gap
        out.append((t, value))
    return out


@st.composite
def split_interval(draw: st.DrawFn, samples: Samples) -> tuple[float, float, float]:
    lo = samples[0][0] - 30 if samples else T0
    hi = samples[-1][0] + 30 if samples else T0 + 60
    a = draw(st.floats(lo, hi))
    c = draw(st.floats(a + 1.0, hi + 60))
    b = draw(st.floats(a, c))
    return a, b, c


limits_strategy = st.builds(
    Limits,
    max_kw=st.sampled_from([0.5, 10.0, 1000.0, 1e6]),
    direction=st.sampled_from(["import", "net"]),
)
units = st.sampled_from([1.0, 0.001])
wraps = st.sampled_from([None, 1000.0, float(2**32)])
props = settings(max_examples=150, deadline=None)


def assert_within(
    energies: Energies, intervals: Sequence[tuple[float, float]], lim: Limits
) -> None:
    for (start, end), energy in zip(intervals, energies, strict=True):
        if energy is None:
            continue
        assert math.isfinite(energy.kwh)
        bound = lim.bound_kwh(end - start)
        low = -bound if lim.direction == "net" else 0.0
        assert low <= energy.kwh <= bound, (energy, lim)
    assert energies.glitches >= 0


@props
@given(hostile_series(), st.data(), limits_strategy, units)
def test_power_energy_is_finite_and_within_the_limits(
    samples: Samples, data: st.DataObject, lim: Limits, to_kw: float
) -> None:
    a, b, c = data.draw(split_interval(samples))
    intervals = [(a, b), (b, c), (a, c)]
    energies = power_intervals(samples, intervals, to_kw=to_kw, max_gap=90.0, limits=lim)
    assert_within(energies, intervals, lim)


@props
@given(hostile_series(), st.data(), limits_strategy, units, wraps)
def test_counter_energy_is_finite_and_within_the_limits(
    samples: Samples, data: st.DataObject, lim: Limits, to_kwh: float, wrap: float | None
) -> None:
    a, b, c = data.draw(split_interval(samples))
    intervals = [(a, b), (b, c), (a, c)]
    energies = counter_intervals(
        samples, intervals, to_kwh=to_kwh, wrap=wrap, max_gap=90.0, limits=lim
    )
    assert_within(energies, intervals, lim)


@props
@given(hostile_series(), st.data(), units, wraps)
def test_without_limits_energy_is_finite_or_unknown(
    samples: Samples, data: st.DataObject, unit: float, wrap: float | None
) -> None:
    a, b, c = data.draw(split_interval(samples))
    intervals = [(a, b), (b, c)]
    for energies in (
        power_intervals(samples, intervals, to_kw=unit, max_gap=90.0),
        counter_intervals(samples, intervals, to_kwh=unit, wrap=wrap, max_gap=90.0),
    ):
        assert all(e is None or math.isfinite(e.kwh) for e in energies)


def close(whole: float, parts: float, scale: float) -> bool:
    return math.isclose(whole, parts, rel_tol=1e-9, abs_tol=1e-9 * max(1.0, scale))


@props
@given(hostile_series(), st.data(), limits_strategy)
def test_splitting_conserves_power_energy_within_the_limits(
    samples: Samples, data: st.DataObject, lim: Limits
) -> None:
    a, b, c = data.draw(split_interval(samples))
    left, right, whole = power_intervals(
        samples, [(a, b), (b, c), (a, c)], to_kw=1.0, max_gap=90.0, limits=lim
    )
    if left is not None and right is not None:
        assert whole is not None
        assert close(whole.kwh, left.kwh + right.kwh, lim.max_kw * (c - a) / 3600)


@props
@given(hostile_series(), st.data(), limits_strategy, wraps)
def test_splitting_conserves_counter_energy_within_the_limits(
    samples: Samples, data: st.DataObject, lim: Limits, wrap: float | None
) -> None:
    a, b, c = data.draw(split_interval(samples))
    left, right, whole = counter_intervals(
        samples, [(a, b), (b, c), (a, c)], to_kwh=1.0, wrap=wrap, max_gap=90.0, limits=lim
    )
    if left is not None and right is not None and whole is not None:
        scale = max(abs(v) for _, v in samples if math.isfinite(v))
        assert close(whole.kwh, left.kwh + right.kwh, scale)
