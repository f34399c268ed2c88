"""The energy core: counters unrolled and differenced, power integrated, per interval."""

from __future__ import annotations

import math
from bisect import bisect_left, bisect_right
from collections.abc import Sequence
from itertools import accumulate, pairwise
from typing import NamedTuple

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from gateway.metering.energy import (
    IntervalEnergy,
    Quality,
    UnrolledCounter,
    counter_intervals,
    power_intervals,
    unroll_counter,
)

Samples = list[tuple[float, float]]
EPOCH = 1_699_999_980.0  # 2023-11-14 22:13:00 UTC, a whole minute
W32 = float(2**32)
NAN = math.nan

fast = settings(max_examples=80, deadline=None)


def kwh(result: IntervalEnergy | None) -> float:
    assert result is not None
    return result.kwh


# --------------------------------------------------------------------------- strategies


@st.composite
def messy_counters(draw: st.DrawFn, *, max_size: int = 40) -> tuple[Samples, float | None]:
    """Raw counters with everything a field device can produce, at integer times.

    Increases, stuck readings, glitches to zero, spikes, drops, wraps, resets, NaN and
    duplicate timestamps -- shuffled freely, so anomalies collide.
    """
    wrap = draw(st.sampled_from([None, 1000.0, W32]))
    top = wrap if wrap is not None else 1e6
    steps = draw(
        st.lists(
            st.tuples(st.integers(0, 40), st.sampled_from("iiiiiisgzdrwn"), st.integers(0, 10**6)),
            max_size=max_size,
        )
    )
    t, value = EPOCH, 0.0
    samples: Samples = []
    for gap, kind, x in steps:
        t += gap
        reading = value
        if kind == "i":
            value = reading = min(value + x % 31, top - 1)
        elif kind == "s":  # spike: a single reading far above
            reading = min(value + 31 + x, top - 1)
        elif kind == "z":  # glitch to zero
            reading = 0.0
        elif kind == "d":  # a single reading somewhere below
            reading = float(x % (int(value) + 1))
        elif kind == "r":  # reset that persists
            value = reading = float(x % 21)
        elif kind == "w":  # wrap
            value = reading = (value + 1 + x % 60) % top
        elif kind == "n":
            reading = NAN
        samples.append((t, reading))  # "g": stuck
    return samples, wrap


def reference_unroll(samples: Samples, wrap: float | None) -> Samples:
    """The rules as written, one pair at a time, summing deltas (slow and obvious)."""
    items = list(dict(samples).items())
    out: Samples = []
    prev: float | None = None
    u = 0.0
    carry = 0.0  # unrolled minus raw, carried across breaks
    for i, (t, cur) in enumerate(items):
        if not math.isfinite(cur):
            out.append((t, NAN))
            if prev is not None:
                carry = u - prev
            prev = None
            continue
        nxt = items[i + 1][1] if i + 1 < len(items) else None
        if nxt is not None and not math.isfinite(nxt):
            nxt = None
        if prev is None:
            u = cur + carry
        elif cur >= prev:
            if nxt is not None and prev <= nxt < cur:
                continue  # spike
            u += cur - prev
        elif nxt is None or nxt >= prev:
            continue  # glitch, or undecided
        elif wrap is not None and 0 < cur + wrap - prev < wrap / 2:
            u += cur + wrap - prev
        else:
            u += max(cur, 0.0)
        out.append((t, u))
        prev = cur
    return out


@st.composite
def intervals_over(draw: st.DrawFn, samples: Samples) -> list[tuple[float, float]]:
    """Sorted, non-overlapping, possibly non-contiguous intervals around the data.

    Edges are on sample times or a quarter-second grid, so shifting them by whole days is
    exact in floating point.
    """
    lo = samples[0][0] if samples else EPOCH
    span = int(samples[-1][0] - lo) if samples else 100
    grid = st.integers(-200, 4 * span + 200).map(lambda k: lo + k / 4)
    edge = st.one_of(st.sampled_from([t for t, _ in samples]), grid) if samples else grid
    edges = sorted(set(draw(st.lists(edge, min_size=2, max_size=12))))
    assume(len(edges) >= 2)
    keep = draw(st.lists(st.booleans(), min_size=len(edges) - 1, max_size=len(edges) - 1))
    pairs = pairwise(edges)
    return [pair for pair, k in zip(pairs, keep, strict=True) if k or not any(keep)]


# --------------------------------------------------------------------------- explicit


def test_quality_values_are_stable_strings() -> None:
    assert [q.value for q in Quality] == ["measured", "interpolated"]


def test_unroll_passes_a_monotone_counter_through() -> None:
    samples = [(0.0, 5.0), (10.0, 7.5), (20.0, 7.5), (30.0, 9.0)]
    assert unroll_counter(samples, wrap=None) == samples


def test_unroll_of_nothing_is_nothing() -> None:
    assert unroll_counter([], wrap=None) == []
    assert counter_intervals([], [(0, 10)], to_kwh=1, wrap=None, max_gap=10) == [None]
    assert power_intervals([], [(0, 10)], to_kw=1, max_gap=10) == [None]


def test_32_bit_wrap_in_wh() -> None:
    samples = [(0.0, W32 - 500), (10.0, W32 - 100), (20.0, 300.0), (30.0, 700.0)]
    assert unroll_counter(samples, wrap=W32) == [
        (0.0, W32 - 500),
        (10.0, W32 - 100),
        (20.0, W32 + 300),
        (30.0, W32 + 700),
    ]
    got = counter_intervals(
        samples, [(0, 10), (10, 20), (20, 30)], to_kwh=0.001, wrap=W32, max_gap=10
    )
    assert [kwh(r) for r in got] == [0.4, 0.4, 0.4]


def test_an_implausible_wrap_is_a_reset() -> None:
    # Forward distance 2**32 - 1000 is more than half the modulus: a reset, counting 50.
    samples = [(0.0, 1000.0), (10.0, 50.0), (20.0, 80.0)]
    assert unroll_counter(samples, wrap=W32) == [(0.0, 1000.0), (10.0, 1050.0), (20.0, 1080.0)]


def test_reset_to_zero_that_persists() -> None:
    samples = [(0.0, 1000.0), (10.0, 1100.0), (20.0, 5.0), (30.0, 25.0)]
    assert unroll_counter(samples, wrap=None) == [
        (0.0, 1000.0),
        (10.0, 1100.0),
        (20.0, 1105.0),
        (30.0, 1125.0),
    ]
    got = counter_intervals(
        samples, [(0, 10), (10, 20), (20, 30)], to_kwh=1.0, wrap=None, max_gap=10
    )
    assert [kwh(r) for r in got] == [100.0, 5.0, 20.0]


def test_reset_right_after_a_rise_is_not_a_spike() -> None:
    # 200 is above both neighbours, but the next reading falls below 100: a reset.
    samples = [(0.0, 100.0), (10.0, 200.0), (20.0, 5.0), (30.0, 10.0)]
    assert unroll_counter(samples, wrap=None) == [
        (0.0, 100.0),
        (10.0, 200.0),
        (20.0, 205.0),
        (30.0, 210.0),
    ]


def test_a_negative_reset_reading_counts_nothing() -> None:
    samples = [(0.0, 100.0), (10.0, -3.0), (20.0, -1.0)]
    assert unroll_counter(samples, wrap=None) == [(0.0, 100.0), (10.0, 100.0), (20.0, 102.0)]


def test_single_zero_glitch_is_ignored() -> None:
    samples = [(0.0, 100.0), (10.0, 0.0), (20.0, 101.0)]
    assert unroll_counter(samples, wrap=None) == [(0.0, 100.0), (20.0, 101.0)]
    got = counter_intervals(samples, [(0, 20)], to_kwh=1.0, wrap=None, max_gap=10)
    assert got == [IntervalEnergy(0, 20, 1.0, Quality.MEASURED)]


def test_spike_is_ignored() -> None:
    samples = [(0.0, 100.0), (10.0, 99999.0), (20.0, 101.0)]
    assert unroll_counter(samples, wrap=None) == [(0.0, 100.0), (20.0, 101.0)]
    # The edge at 10 s now interpolates between 100 and 101.
    got = counter_intervals(samples, [(0, 10), (10, 20)], to_kwh=1.0, wrap=None, max_gap=10)
    assert got == [
        IntervalEnergy(0, 10, 0.5, Quality.INTERPOLATED),
        IntervalEnergy(10, 20, 0.5, Quality.INTERPOLATED),
    ]


def test_glitch_near_the_top_of_a_wrapping_counter() -> None:
    samples = [(0.0, W32 - 10), (10.0, 0.0), (20.0, W32 - 5), (30.0, 3.0), (40.0, 6.0)]
    assert unroll_counter(samples, wrap=W32) == [
        (0.0, W32 - 10),
        (20.0, W32 - 5),
        (30.0, W32 + 3),
        (40.0, W32 + 6),
    ]


def test_a_trailing_drop_waits_for_the_next_reading() -> None:
    samples = [(0.0, 100.0), (10.0, 110.0), (20.0, 3.0)]
    assert unroll_counter(samples, wrap=None) == [(0.0, 100.0), (10.0, 110.0)]
    assert counter_intervals(samples, [(10, 20)], to_kwh=1, wrap=None, max_gap=10) == [None]
    later = [*samples, (30.0, 5.0)]
    assert unroll_counter(later, wrap=None)[-2:] == [(20.0, 113.0), (30.0, 115.0)]


def test_stuck_counter_is_zero_not_unknown() -> None:
    samples = [(float(t), 4242.0) for t in range(0, 61, 10)]
    got = counter_intervals(
        samples, [(0, 30), (30, 60), (5, 55)], to_kwh=0.001, wrap=None, max_gap=10
    )
    assert got == [
        IntervalEnergy(0, 30, 0.0, Quality.MEASURED),
        IntervalEnergy(30, 60, 0.0, Quality.MEASURED),
        IntervalEnergy(5, 55, 0.0, Quality.INTERPOLATED),
    ]


def test_edge_without_a_reading_within_max_gap_is_unknown() -> None:
    samples = [(0.0, 0.0), (10.0, 10.0), (100.0, 100.0), (110.0, 110.0)]
    got = counter_intervals(
        samples, [(0, 10), (10, 50), (50, 100), (0, 110)], to_kwh=1, wrap=None, max_gap=15
    )
    assert got[0] == IntervalEnergy(0, 10, 10.0, Quality.MEASURED)
    assert got[1] is None and got[2] is None  # 50 s is 40 s from the nearest readings
    # A counter kept counting through the gap: edges with readings are enough.
    assert got[3] == IntervalEnergy(0, 110, 110.0, Quality.MEASURED)


def test_max_gap_is_inclusive_on_both_sides() -> None:
    samples = [(0.0, 0.0), (20.0, 20.0)]
    got = counter_intervals(samples, [(0, 10)], to_kwh=1, wrap=None, max_gap=10)
    assert got == [IntervalEnergy(0, 10, 10.0, Quality.INTERPOLATED)]
    assert counter_intervals(samples, [(0, 9)], to_kwh=1, wrap=None, max_gap=10) == [None]


def test_edges_outside_the_data_are_unknown() -> None:
    samples = [(100.0, 1.0), (110.0, 2.0)]
    got = counter_intervals(
        samples, [(90, 100), (100, 110), (110, 120)], to_kwh=1, wrap=None, max_gap=60
    )
    assert got == [None, IntervalEnergy(100, 110, 1.0, Quality.MEASURED), None]


def test_samples_exactly_on_edges_are_measured() -> None:
    samples = [(0.0, 0.0), (7.0, 3.0), (15.0, 8.0), (30.0, 9.0)]
    got = counter_intervals(
        samples, [(0, 15), (15, 30), (7, 20)], to_kwh=2.0, wrap=None, max_gap=20
    )
    assert got[0] == IntervalEnergy(0, 15, 16.0, Quality.MEASURED)
    assert got[1] == IntervalEnergy(15, 30, 2.0, Quality.MEASURED)
    assert got[2] is not None and got[2].quality is Quality.INTERPOLATED


def test_irregular_sampling_of_a_steady_load_is_exact() -> None:
    # 3 Wh/s sampled at uneven times: every interval sees exactly 3 Wh/s.
    times = [0.0, 1.5, 9.0, 10.25, 17.0, 33.0, 34.0, 51.5, 60.0]
    samples = [(t, 1000 + 3 * t) for t in times]
    intervals = [(0.0, 15.0), (15.0, 30.0), (30.0, 45.0), (45.0, 60.0)]
    got = counter_intervals(samples, intervals, to_kwh=0.001, wrap=None, max_gap=20)
    assert [kwh(r) for r in got] == pytest.approx([0.045] * 4, rel=1e-12)


def test_non_contiguous_intervals() -> None:
    samples = [(float(t), float(t)) for t in range(0, 7201, 600)]
    intervals = [(0.0, 3600.0), (5400.0, 7200.0)]  # the curve skips 3600-5400
    got = counter_intervals(samples, intervals, to_kwh=1.0, wrap=None, max_gap=600)
    assert got == [
        IntervalEnergy(0.0, 3600.0, 3600.0, Quality.MEASURED),
        IntervalEnergy(5400.0, 7200.0, 1800.0, Quality.MEASURED),
    ]


def test_duplicate_timestamps_keep_the_last() -> None:
    samples = [(0.0, 1.0), (10.0, 50.0), (10.0, 5.0), (20.0, 9.0)]
    assert unroll_counter(samples, wrap=None) == [(0.0, 1.0), (10.0, 5.0), (20.0, 9.0)]
    got = power_intervals([(0.0, 1.0), (0.0, 2.0), (10.0, 2.0)], [(0, 10)], to_kw=1, max_gap=10)
    assert got == [IntervalEnergy(0, 10, 20 / 3600, Quality.MEASURED)]


def test_a_nan_reading_breaks_the_counter() -> None:
    samples = [(0.0, 10.0), (10.0, 20.0), (20.0, NAN), (30.0, 5.0), (40.0, 15.0)]
    unrolled = unroll_counter(samples, wrap=None)
    assert unrolled[:2] == [(0.0, 10.0), (10.0, 20.0)]
    assert unrolled[2][0] == 20.0 and math.isnan(unrolled[2][1])
    assert unrolled[3:] == [(30.0, 5.0), (40.0, 15.0)]  # the offset carries on; no reset
    got = counter_intervals(
        samples, [(0, 10), (10, 30), (30, 40), (0, 40)], to_kwh=1, wrap=None, max_gap=20
    )
    assert got[0] == IntervalEnergy(0, 10, 10.0, Quality.MEASURED)
    assert got[1] is None and got[3] is None
    assert got[2] == IntervalEnergy(30, 40, 10.0, Quality.MEASURED)


def test_power_constant_two_kw_over_ten_second_intervals() -> None:
    samples = [(EPOCH + t, 2000.0) for t in range(0, 61, 5)]
    intervals = [(EPOCH + t, EPOCH + t + 10) for t in range(0, 60, 10)]
    got = power_intervals(samples, intervals, to_kw=0.001, max_gap=10)
    assert all(r is not None and r.quality is Quality.MEASURED for r in got)
    assert [kwh(r) for r in got] == pytest.approx([2 * 10 / 3600] * 6, rel=1e-12)


def test_power_edges_interpolate_linearly() -> None:
    # A ramp from 0 to 6 kW over 60 s; the interval 10-40 s has mean power 2.5 kW.
    samples = [(0.0, 0.0), (60.0, 6.0)]
    got = power_intervals(samples, [(10.0, 40.0)], to_kw=1.0, max_gap=60)
    assert got == [IntervalEnergy(10.0, 40.0, pytest.approx(2.5 * 30 / 3600), Quality.INTERPOLATED)]


def test_power_gap_inside_an_interval_is_unknown() -> None:
    samples = [(0.0, 1.0), (10.0, 1.0), (50.0, 1.0), (60.0, 1.0)]
    got = power_intervals(samples, [(0, 10), (0, 60), (50, 60), (10, 50)], to_kw=1, max_gap=20)
    assert got[0] is not None and got[2] is not None
    assert got[1] is None and got[3] is None


def test_power_nan_sample_makes_touching_segments_unknown() -> None:
    samples = [(0.0, 1.0), (10.0, 1.0), (20.0, NAN), (30.0, 1.0), (40.0, 1.0)]
    got = power_intervals(samples, [(0, 10), (10, 20), (15, 25), (30, 40)], to_kw=1, max_gap=20)
    assert got[0] is not None and got[3] is not None
    assert got[1] is None and got[2] is None


def test_wrap_must_be_positive() -> None:
    with pytest.raises(ValueError, match="wrap"):
        UnrolledCounter([(0.0, 1.0)], wrap=0.0)


# --------------------------------------------------------------------------- properties


@fast
@given(messy_counters())
def test_unroll_follows_the_rules_as_written(data: tuple[Samples, float | None]) -> None:
    samples, wrap = data
    got = unroll_counter(samples, wrap=wrap)
    want = reference_unroll(samples, wrap)
    assert [t for t, _ in got] == [t for t, _ in want]
    scale = max((abs(v) for _, v in want if math.isfinite(v)), default=1.0)
    for (_, g), (_, w) in zip(got, want, strict=True):
        assert math.isnan(g) == math.isnan(w)
        if not math.isnan(w):
            assert g == pytest.approx(w, rel=1e-12, abs=1e-12 * scale)


@fast
@given(messy_counters())
def test_unrolled_deltas_are_never_negative_and_bounded(data: tuple[Samples, float | None]) -> None:
    samples, wrap = data
    unrolled = unroll_counter(samples, wrap=wrap)
    finite = [v for _, v in samples if math.isfinite(v)]
    bound = max([*finite, (wrap or 0.0) / 2, 0.0])
    for (_, a), (_, b) in pairwise(unrolled):
        if math.isfinite(a) and math.isfinite(b):
            assert 0.0 <= b - a <= bound


class Meter(NamedTuple):
    samples: Samples
    true: list[float]  # true cumulative energy at each sample
    wrap: float | None
    p_max: float  # units per second
    max_gap: float
    resets: set[int]  # indices of the first reading after a reset
    glitches: set[int]  # indices of single bad readings


@st.composite
def physical_meters(draw: st.DrawFn) -> Meter:
    """A meter with a known power limit: true energy, then wraps, resets and glitches.

    Glitches are single readings at least three readings away from any wrap, reset or
    other glitch; a wrapping counter resets only from the lower half of its range (from
    the upper half a reset looks exactly like a wrap).
    """
    p_max = 5.0
    wrap = draw(st.sampled_from([None, 1000.0, 65536.0]))
    rolls = st.tuples(st.integers(1, 30), *[st.integers(0, 10**4)] * 4)
    steps = draw(st.lists(rolls, min_size=2, max_size=60))
    n = len(steps)
    times = list(accumulate((step[0] for step in steps), initial=EPOCH))[1:]
    true = [0.0]
    for (a, b), step in zip(pairwise(times), steps[1:], strict=True):
        true.append(true[-1] + step[1] % (int(p_max * (b - a)) + 1))
    register = float(steps[0][1] % 400)
    raw = [register % wrap if wrap else register]
    resets: set[int] = set()
    for i in range(1, n):
        used = true[i] - true[i - 1]
        may_reset = wrap is None or register % wrap < wrap / 2
        if may_reset and not resets & {i - 1, i - 2, i - 3} and steps[i][2] % 10 == 0:
            register = float(steps[i][2] % (int(used) + 1))
            resets.add(i)
        else:
            register += used
        raw.append(register % wrap if wrap else register)
    special = resets | {i for i in range(1, n) if raw[i] < raw[i - 1]}  # resets and wraps
    glitches: set[int] = set()
    for i in range(1, n - 1):
        glitch = steps[i][3]
        if all(abs(i - k) > 2 for k in special) and glitch % 8 == 0:
            raw[i] = 0.0 if glitch % 16 == 0 else raw[i] + 200 + glitch % 200
            if wrap:
                raw[i] %= wrap
            special.add(i)
            glitches.add(i)
    return Meter(list(zip(times, raw, strict=True)), true, wrap, p_max, 60.0, resets, glitches)


@settings(max_examples=80, deadline=None)
@given(physical_meters(), st.data())
def test_counter_energy_is_never_negative_or_absurd(meter: Meter, data: st.DataObject) -> None:
    intervals = data.draw(intervals_over(meter.samples))
    got = counter_intervals(
        meter.samples, intervals, to_kwh=1.0, wrap=meter.wrap, max_gap=meter.max_gap
    )
    for (start, end), r in zip(intervals, got, strict=True):
        if r is not None:  # at most what full power could use between the edges' readings
            assert 0.0 <= r.kwh <= meter.p_max * (end - start + 2 * meter.max_gap)


@settings(max_examples=80, deadline=None)
@given(physical_meters(), st.data())
def test_counter_energy_between_good_readings_is_the_true_energy(
    meter: Meter, data: st.DataObject
) -> None:
    samples = meter.samples
    kept = dict(unroll_counter(samples, wrap=meter.wrap))
    # A glitch to zero right after a zero reading is indistinguishable from a stuck one.
    good = [i for i, (t, _) in enumerate(samples) if t in kept and i not in meter.glitches]
    i, j = sorted(data.draw(st.lists(st.sampled_from(good), min_size=2, max_size=2)))
    assume(not any(i < k <= j for k in meter.resets))
    interval = (samples[i][0], samples[j][0])
    (r,) = counter_intervals(
        samples, [interval], to_kwh=1.0, wrap=meter.wrap, max_gap=meter.max_gap
    )
    assert r is not None
    assert r.kwh == pytest.approx(meter.true[j] - meter.true[i], rel=1e-12, abs=1e-9)


@fast
@given(messy_counters(), st.data())
def test_splitting_a_counter_interval_conserves_energy(
    data_: tuple[Samples, float | None], data: st.DataObject
) -> None:
    samples, wrap = data_
    assume(len(samples) >= 2)
    max_gap = data.draw(st.sampled_from([5.0, 20.0, 100.0]))
    lo, hi = samples[0][0], samples[-1][0]
    start, mid, end = sorted(data.draw(st.lists(st.floats(lo, hi), min_size=3, max_size=3)))
    whole, left, right = counter_intervals(
        samples, [(start, end), (start, mid), (mid, end)], to_kwh=0.001, wrap=wrap, max_gap=max_gap
    )
    if left is not None and right is not None:
        assert whole is not None
        unrolled = unroll_counter(samples, wrap=wrap)
        scale = max((abs(v) for _, v in unrolled if math.isfinite(v)), default=1.0)
        assert left.kwh + right.kwh == pytest.approx(whole.kwh, rel=1e-9, abs=1e-12 * scale)
    if whole is not None and UnrolledCounter(samples, wrap=wrap).edge(mid, max_gap) is not None:
        assert left is not None and right is not None


@st.composite
def power_series(draw: st.DrawFn, *, finite: bool = False) -> Samples:
    """Power readings, negative (export) ones included; NaN too unless ``finite``."""
    steps = draw(st.lists(st.tuples(st.integers(1, 40), st.integers(0, 9)), max_size=40))
    times = list(accumulate((gap for gap, _ in steps), initial=EPOCH))[1:]
    values = draw(st.lists(st.floats(-100, 5000), min_size=len(steps), max_size=len(steps)))
    return [
        (t, NAN if kind == 0 and not finite else 0.0 if kind == 1 else v)
        for t, (_, kind), v in zip(times, steps, values, strict=True)
    ]


@fast
@given(power_series(), st.data())
def test_splitting_a_power_interval_conserves_energy(samples: Samples, data: st.DataObject) -> None:
    assume(len(samples) >= 2)
    max_gap = data.draw(st.sampled_from([10.0, 25.0, 100.0]))
    lo, hi = samples[0][0], samples[-1][0]
    start, mid, end = sorted(data.draw(st.lists(st.floats(lo, hi), min_size=3, max_size=3)))
    whole, left, right = power_intervals(
        samples, [(start, end), (start, mid), (mid, end)], to_kw=0.001, max_gap=max_gap
    )
    if whole is not None:
        assert left is not None and right is not None  # the split point lies on good data
        peak = max((abs(v) for _, v in samples if math.isfinite(v)), default=0.0)
        scale = peak * (end - start) / 3.6e6 + 1e-300
        assert left.kwh + right.kwh == pytest.approx(whole.kwh, rel=1e-9, abs=1e-12 * scale)
    elif left is not None and right is not None:
        pytest.fail("both halves known but the whole is not")


@fast
@given(power_series(finite=True), st.data())
def test_power_matches_a_slow_riemann_reference(samples: Samples, data: st.DataObject) -> None:
    assume(len(samples) >= 2)
    lo, hi = samples[0][0], samples[-1][0]
    start, end = sorted(data.draw(st.lists(st.floats(lo, hi), min_size=2, max_size=2)))
    (r,) = power_intervals(samples, [(start, end)], to_kw=1.0, max_gap=1e9)
    assert r is not None

    # Exact for a piecewise-linear function: Simpson on each piece between breakpoints,
    # in seconds from the first sample (at 1.7e9 s a midpoint would lose 2e-7 s).
    lo = samples[0][0]
    rel = [(t - lo, v) for t, v in samples]

    def p(t: float) -> float:
        for (t0, v0), (t1, v1) in pairwise(rel):
            if t0 <= t <= t1:
                return v0 + (v1 - v0) * (t - t0) / (t1 - t0)
        raise AssertionError(t)

    cuts = sorted({start - lo, end - lo, *(t for t, _ in rel if start - lo < t < end - lo)})
    ref = math.fsum((b - a) * (p(a) + 4 * p((a + b) / 2) + p(b)) / 6 for a, b in pairwise(cuts))
    scale = max(abs(v) for _, v in samples) * (end - start) + 1e-300
    assert r.kwh * 3600 == pytest.approx(ref, rel=1e-9, abs=1e-12 * scale)


@settings(max_examples=50, deadline=None)
@given(messy_counters(), power_series(), st.data(), st.integers(-20_000, 20_000))
def test_results_do_not_depend_on_the_day(
    counter: tuple[Samples, float | None], power: Samples, data: st.DataObject, days: int
) -> None:
    """All times are UTC floats: shifting by whole days changes nothing (no TZ, no DST)."""
    shift = days * 86_400.0

    def moved(samples: Samples) -> Samples:
        return [(t + shift, v) for t, v in samples]

    samples, wrap = counter
    intervals = data.draw(intervals_over(samples))
    got = counter_intervals(
        moved(samples),
        [(a + shift, b + shift) for a, b in intervals],
        to_kwh=0.001,
        wrap=wrap,
        max_gap=30,
    )
    want = counter_intervals(samples, intervals, to_kwh=0.001, wrap=wrap, max_gap=30)
    assert [r and (r.kwh, r.quality) for r in got] == [r and (r.kwh, r.quality) for r in want]
    intervals = data.draw(intervals_over(power))
    got = power_intervals(
        moved(power), [(a + shift, b + shift) for a, b in intervals], to_kw=0.001, max_gap=30
    )
    want = power_intervals(power, intervals, to_kw=0.001, max_gap=30)
    assert [r and (r.kwh, r.quality) for r in got] == [r and (r.kwh, r.quality) for r in want]


def fast_path_subsequence(
    samples: Sequence[tuple[float, float]], edges: list[float], extra: set[int]
) -> Samples:
    """What the store fetches: edge brackets, drops with neighbours, non-finite samples."""
    items = list(dict(samples).items())
    ats = [t for t, _ in items]
    vals = [v for _, v in items]
    need = set(extra)
    for t in edges:
        need.update((bisect_right(ats, t) - 1, bisect_left(ats, t)))
    for i in range(1, len(vals)):
        if vals[i] < vals[i - 1]:
            need.update((i - 2, i - 1, i, i + 1))
    need.update(i for i, v in enumerate(vals) if not math.isfinite(v))
    return [items[i] for i in sorted(need) if 0 <= i < len(items)]


@settings(max_examples=100, deadline=None)
@given(messy_counters(max_size=60), st.data())
def test_fast_path_subsequence_gives_the_same_result(
    counter: tuple[Samples, float | None], data: st.DataObject
) -> None:
    samples, wrap = counter
    intervals = data.draw(intervals_over(samples))
    max_gap = data.draw(st.sampled_from([5.0, 30.0, 1e9]))
    extra = set(data.draw(st.lists(st.integers(0, max(len(samples) - 1, 0)), max_size=10)))
    edges = [t for interval in intervals for t in interval]
    subsequence = fast_path_subsequence(samples, edges, extra)
    full = counter_intervals(samples, intervals, to_kwh=0.001, wrap=wrap, max_gap=max_gap)
    fetched = counter_intervals(subsequence, intervals, to_kwh=0.001, wrap=wrap, max_gap=max_gap)
    assert fetched == full


def test_fast_path_on_a_day_of_ten_second_readings() -> None:
    """8,640 readings, 96 quarter hours, a wrap, a reset and two glitches on the way."""
    samples = [(EPOCH + 10 * i, (W32 - 5000 + 2.5 * i) % W32) for i in range(8640)]
    samples[1000] = (samples[1000][0], 0.0)
    samples[3000] = (samples[3000][0], samples[3000][1] + 1e6)
    samples[5000:] = [(t, 2.5 * (i - 5000) + 1.0) for i, (t, _) in enumerate(samples[5000:], 5000)]
    intervals = [(EPOCH + 900 * k, EPOCH + 900 * (k + 1)) for k in range(96)]
    full = counter_intervals(samples, intervals, to_kwh=0.001, wrap=W32, max_gap=30)
    edges = [t for interval in intervals for t in interval]
    subsequence = fast_path_subsequence(samples, edges, set())
    assert len(subsequence) < 250
    assert counter_intervals(subsequence, intervals, to_kwh=0.001, wrap=W32, max_gap=30) == full
    energies = [kwh(r) for r in full[:-1]]  # the last edge is past the data
    assert full[-1] is None
    assert all(
        e == pytest.approx(0.225, abs=1e-6) for i, e in enumerate(energies) if i not in (55,)
    )
    assert energies[55] == pytest.approx(0.225 - 0.0025 + 0.001, abs=1e-6)  # the reset's interval
