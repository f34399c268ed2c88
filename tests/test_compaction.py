"""Compaction keeps every whole-minute interval's energy, and whether it is known."""

from __future__ import annotations

import math
from itertools import pairwise

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from gateway.metering.compaction import (
    COMPACTED_MAX_GAP,
    compact_counter,
    compact_power,
    counter_handover,
    power_handover,
)
from gateway.metering.energy import (
    IntervalEnergy,
    Quality,
    counter_intervals,
    power_intervals,
    unroll_counter,
)
from tests.test_energy import EPOCH, NAN, W32, Samples, messy_counters

fast = settings(max_examples=60, deadline=None)
Intervals = list[tuple[float, float]]


def read_back(points: Samples, intervals: Intervals, *, to_kwh: float = 1.0) -> list[float | None]:
    got = counter_intervals(points, intervals, to_kwh=to_kwh, wrap=None, max_gap=COMPACTED_MAX_GAP)
    return [None if r is None else r.kwh for r in got]


def energies(results: list[IntervalEnergy | None]) -> list[float | None]:
    return [None if r is None else r.kwh for r in results]


def same_points(a: Samples, b: Samples) -> bool:
    """Equal, NaN markers included."""
    return len(a) == len(b) and all(
        ta == tb and (va == vb or (math.isnan(va) and math.isnan(vb)))
        for (ta, va), (tb, vb) in zip(a, b, strict=True)
    )


def minute_intervals(draw: st.DrawFn, first: float, before: float) -> Intervals:
    """Whole-minute intervals with edges before ``before``: contiguous runs and long ones."""
    lo = math.floor(first / 60) - 1
    hi = math.ceil(before / 60) - 1  # the last whole minute strictly before ``before``
    assume(hi > lo)
    minutes = st.integers(lo, hi).map(lambda k: 60.0 * k)
    edges = sorted(set(draw(st.lists(minutes, min_size=2, max_size=10))))
    pairs = draw(st.lists(st.tuples(minutes, minutes), max_size=6))
    return [*pairwise(edges), *((min(a, b), max(a, b)) for a, b in pairs)]


@st.composite
def nonnegative_power(draw: st.DrawFn) -> Samples:
    steps = draw(
        st.lists(
            st.tuples(st.integers(0, 50), st.floats(0, 5000), st.integers(0, 30)),
            max_size=40,
        )
    )
    t = EPOCH
    samples: Samples = []
    for gap, power, roll in steps:
        t += gap
        samples.append((t, NAN if roll == 0 else 0.0 if roll < 5 else power))
    return samples


def split_at(points: Samples, handover: tuple[float, float], value: float) -> Samples:
    """The compacted series up to the hand-over sample, plus that sample's own point."""
    return sorted([*((t, v) for t, v in points if t < handover[0]), (handover[0], value)])


# --------------------------------------------------------------------------- explicit


def test_counter_points_are_the_unrolled_counter_at_whole_minutes() -> None:
    raw = [(EPOCH + t, 1000.0 + 3.0 * t) for t in range(0, 400, 50)]
    points = compact_counter(raw, wrap=None, max_gap=40, before=EPOCH + 400)
    # 360 s is 10 s after the last reading: no reading after it.
    assert points == [(EPOCH + m, 1000.0 + 3.0 * m) for m in range(0, 301, 60)]


def test_a_minute_the_raw_data_cannot_value_gets_no_point() -> None:
    # Readings at 0, 150 and 200 s, max_gap 100 s: 60 s and 180 s have values, 120 s none.
    raw = [(EPOCH, 0.0), (EPOCH + 150, 150.0), (EPOCH + 200, 200.0)]
    points = compact_counter(raw, wrap=None, max_gap=100, before=EPOCH + 240)
    assert [t - EPOCH for t, _ in points] == [0, 60, 180]
    intervals = [(EPOCH + a, EPOCH + b) for a, b in [(0, 60), (60, 120), (60, 180), (0, 180)]]
    want = energies(counter_intervals(raw, intervals, to_kwh=1, wrap=None, max_gap=100))
    assert want == [60.0, None, 120.0, 180.0]
    assert read_back(points, intervals) == want


def test_counter_wrap_reset_and_glitches_are_compacted_unrolled() -> None:
    raw = [
        (EPOCH + 0, W32 - 120),
        (EPOCH + 30, W32 - 60),
        (EPOCH + 45, 0.0),  # glitch
        (EPOCH + 60, W32 - 1),
        (EPOCH + 90, 59.0),  # wrap
        (EPOCH + 100, 1e9),  # spike
        (EPOCH + 120, 119.0),
        (EPOCH + 150, 30.0),  # reset
        (EPOCH + 180, 60.0),
        (EPOCH + 210, 90.0),
    ]
    points = compact_counter(raw, wrap=W32, max_gap=30, before=EPOCH + 200)
    assert points == [
        (EPOCH + 0, W32 - 120),
        (EPOCH + 60, W32 - 1),
        (EPOCH + 120, W32 + 119),
        (EPOCH + 180, W32 + 119 + 60),
    ]
    intervals = [(EPOCH + 60 * k, EPOCH + 60 * (k + 1)) for k in range(3)]
    want = energies(counter_intervals(raw, intervals, to_kwh=0.001, wrap=W32, max_gap=30))
    assert read_back(points, intervals, to_kwh=0.001) == want
    assert want == pytest.approx([0.119, 0.12, 0.06], rel=1e-12)


def test_a_raw_break_is_kept_as_a_marker() -> None:
    raw = [(EPOCH + t, float(t)) for t in range(0, 121, 20)]
    raw[3] = (EPOCH + 60, NAN)
    points = compact_counter(raw, wrap=None, max_gap=20, before=EPOCH + 180)
    assert [t - EPOCH for t, _ in points] == [0, 60, 120]
    assert math.isnan(points[1][1])
    intervals = [(EPOCH, EPOCH + 120)]
    assert read_back(points, intervals) == [None]
    assert counter_intervals(raw, intervals, to_kwh=1, wrap=None, max_gap=20) == [None]


def test_stuck_counter_compacts_to_zero_energy() -> None:
    raw = [(EPOCH + t, 77.0) for t in range(0, 301, 10)]
    points = compact_counter(raw, wrap=None, max_gap=15, before=EPOCH + 300)
    assert points == [(EPOCH + m, 77.0) for m in range(0, 241, 60)]
    assert read_back(points, [(EPOCH, EPOCH + 240)]) == [0.0]


def test_power_points_are_cumulative_kwh() -> None:
    raw = [(EPOCH + t, 2000.0) for t in range(0, 200, 7)]
    points = compact_power(raw, to_kw=0.001, max_gap=10, before=EPOCH + 180)
    assert [t - EPOCH for t, _ in points] == [0, 60, 120]
    assert [v for _, v in points] == pytest.approx([0.0, 2 / 60, 4 / 60], rel=1e-12)


def test_power_gap_breaks_the_compacted_series() -> None:
    # Readings every 10 s, then nothing from 130 s to 250 s (max_gap 20 s).
    raw = [(EPOCH + t, 1000.0) for t in [*range(0, 131, 10), *range(250, 400, 10)]]
    points = compact_power(raw, to_kw=0.001, max_gap=20, before=EPOCH + 360)
    minutes = [t - EPOCH for t, v in points if math.isfinite(v)]
    assert minutes == [0, 60, 120, 300]  # 180 and 240 s lie inside the gap
    assert [t - EPOCH for t, v in points if math.isnan(v)] == [190]
    # 130 s before the gap and 50 s after it; the gap itself adds nothing.
    assert [v for _, v in points if math.isfinite(v)][-1] == pytest.approx(180 / 3600)
    intervals = [(EPOCH + a, EPOCH + b) for a, b in [(0, 120), (120, 180), (0, 300), (300, 360)]]
    want = energies(power_intervals(raw, intervals, to_kw=0.001, max_gap=20))
    assert want[1:3] == [None, None] and want[0] == pytest.approx(120 / 3600)
    got = read_back(points, intervals[:3])
    assert got[1:] == [None, None] and got[0] == pytest.approx(want[0], rel=1e-12)


def test_power_nan_reading_becomes_a_marker() -> None:
    raw = [(EPOCH + t, 500.0) for t in range(0, 181, 10)]
    raw[9] = (EPOCH + 90, NAN)
    points = compact_power(raw, to_kw=0.001, max_gap=10, before=EPOCH + 180)
    assert [t - EPOCH for t, _ in points] == [0, 60, 90, 120]
    assert math.isnan(points[2][1])
    first, second = read_back(points, [(EPOCH, EPOCH + 60), (EPOCH + 60, EPOCH + 120)])
    assert first == pytest.approx(60 * 0.5 / 3600) and second is None


def test_infinite_power_is_a_break_not_an_error() -> None:
    raw = [(EPOCH + t, 100.0) for t in range(0, 121, 10)]
    raw[6] = (EPOCH + 60, -math.inf)
    points = compact_power(raw, to_kw=0.001, max_gap=10, before=EPOCH + 180)
    assert [t - EPOCH for t, _ in points] == [0, 60, 120]
    assert math.isnan(points[1][1])


def test_negative_power_cannot_be_compacted() -> None:
    raw = [(EPOCH, 10.0), (EPOCH + 10, -1.0)]
    with pytest.raises(ValueError, match="negative"):
        compact_power(raw, to_kw=0.001, max_gap=10, before=EPOCH + 60)
    with pytest.raises(ValueError, match="to_kw"):
        compact_power([], to_kw=0.0, max_gap=10, before=EPOCH + 60)


def test_compacted_intervals_read_as_measured() -> None:
    raw = [(EPOCH + t, float(t)) for t in range(5, 200, 10)]
    points = compact_counter(raw, wrap=None, max_gap=10, before=EPOCH + 180)
    got = counter_intervals(
        points, [(EPOCH + 60, EPOCH + 120)], to_kwh=1, wrap=None, max_gap=COMPACTED_MAX_GAP
    )
    assert got == [IntervalEnergy(EPOCH + 60, EPOCH + 120, 60.0, Quality.MEASURED)]


def test_handover_is_the_newest_settled_kept_sample_before_the_cut() -> None:
    raw = [(EPOCH, 100.0), (EPOCH + 10, 200.0), (EPOCH + 20, 5.0), (EPOCH + 30, 9.0)]
    assert counter_handover(raw, wrap=None, before=EPOCH + 25) == (EPOCH + 20, 200.0)
    assert counter_handover(raw, wrap=None, before=EPOCH + 35) == (EPOCH + 20, 200.0)  # 30 s: last
    assert counter_handover(raw, wrap=None, before=EPOCH) is None
    # A glitch is never the hand-over.
    glitch = [(EPOCH, 100.0), (EPOCH + 10, 0.0), (EPOCH + 20, 101.0), (EPOCH + 30, 102.0)]
    assert counter_handover(glitch, wrap=None, before=EPOCH + 15) == (EPOCH, 0.0)
    power = [(EPOCH, 3600.0), (EPOCH + 10, 3600.0), (EPOCH + 20, NAN)]
    assert power_handover(power, to_kw=1.0, max_gap=10, before=EPOCH + 30) == (
        EPOCH + 10,
        pytest.approx(10.0),
    )
    assert power_handover(power, to_kw=1.0, max_gap=10, before=EPOCH) is None


# --------------------------------------------------------------------------- properties


@fast
@given(messy_counters(), st.sampled_from([5.0, 30.0, 90.0, 250.0]), st.data())
def test_counter_compaction_keeps_whole_minute_energy(
    counter: tuple[Samples, float | None], max_gap: float, data: st.DataObject
) -> None:
    raw, wrap = counter
    assume(raw)
    before = 60.0 * data.draw(st.integers(math.floor(raw[0][0] / 60), math.ceil(raw[-1][0] / 60)))
    intervals = minute_intervals(data.draw, raw[0][0], before)
    points = compact_counter(raw, wrap=wrap, max_gap=max_gap, before=before)
    assert all(t % 60 == 0 and t < before for t, v in points if math.isfinite(v))
    assert all(t < before for t, _ in points)
    for (_, a), (_, b) in pairwise(points):
        assert not a > b  # monotone between markers (NaN compares false)
    want = counter_intervals(raw, intervals, to_kwh=0.001, wrap=wrap, max_gap=max_gap)
    assert read_back(points, intervals, to_kwh=0.001) == energies(want)


@fast
@given(nonnegative_power(), st.sampled_from([5.0, 30.0, 90.0]), st.data())
def test_power_compaction_keeps_whole_minute_energy(
    raw: Samples, max_gap: float, data: st.DataObject
) -> None:
    assume(raw)
    before = 60.0 * data.draw(st.integers(math.floor(raw[0][0] / 60), math.ceil(raw[-1][0] / 60)))
    intervals = minute_intervals(data.draw, raw[0][0], before)
    points = compact_power(raw, to_kw=0.001, max_gap=max_gap, before=before)
    assert all(t < before for t, _ in points)
    assert all(t % 60 == 0 for t, v in points if math.isfinite(v))
    got = read_back(points, intervals)
    want = energies(power_intervals(raw, intervals, to_kw=0.001, max_gap=max_gap))
    assert [g is None for g in got] == [w is None for w in want]
    total = max((v for _, v in points if math.isfinite(v)), default=0.0)
    for g, w in zip(got, want, strict=True):
        if g is not None and w is not None:
            assert g == pytest.approx(w, rel=1e-9, abs=1e-12 * total)


@fast
@given(messy_counters(max_size=60), st.sampled_from([10.0, 45.0, 200.0]), st.data())
def test_chained_counter_runs_equal_one_run(
    counter: tuple[Samples, float | None], max_gap: float, data: st.DataObject
) -> None:
    raw, wrap = counter
    assume(len(raw) >= 2)
    first, last = math.floor(raw[0][0] / 60), math.ceil(raw[-1][0] / 60)
    cut1, cut2 = sorted(data.draw(st.lists(st.integers(first, last), min_size=2, max_size=2)))
    cut1, cut2 = 60.0 * cut1, 60.0 * cut2
    once = compact_counter(raw, wrap=wrap, max_gap=max_gap, before=cut2)

    run1 = compact_counter(raw, wrap=wrap, max_gap=max_gap, before=cut1)
    handover = counter_handover(raw, wrap=wrap, before=cut1)
    assume(handover is not None)
    assert handover is not None
    at, offset = handover
    rest = [(t, v) for t, v in raw if t >= at]
    run2 = compact_counter(rest, wrap=wrap, max_gap=max_gap, before=cut2, offset=offset)
    assert same_points(run1, [p for p in once if p[0] < cut1])
    assert same_points([p for p in run2 if p[0] >= cut1], [p for p in once if p[0] >= cut1])

    # An interval across the hand-over sample splits there: compacted, then raw.
    unrolled = dict(unroll_counter(raw, wrap=wrap))
    value = unrolled[at]
    assert value == dict(rest)[at] + offset
    compacted = split_at(run1, handover, value)
    assume(math.ceil(at / 60) - 1 >= first)
    start = 60.0 * data.draw(st.integers(first, math.ceil(at / 60) - 1))
    end = at + data.draw(st.floats(0, 600))
    (whole,) = counter_intervals(raw, [(start, end)], to_kwh=1, wrap=wrap, max_gap=max_gap)
    (head,) = read_back(compacted, [(start, at)])
    (tail,) = counter_intervals(rest, [(at, end)], to_kwh=1, wrap=wrap, max_gap=max_gap)
    if whole is None:
        assert head is None or tail is None
    else:
        assert head is not None and tail is not None
        assert head + tail.kwh == pytest.approx(whole.kwh, rel=1e-12, abs=1e-9)


@fast
@given(nonnegative_power(), st.sampled_from([10.0, 45.0]), st.data())
def test_chained_power_runs_equal_one_run(
    raw: Samples, max_gap: float, data: st.DataObject
) -> None:
    assume(len(raw) >= 2)
    first, last = math.floor(raw[0][0] / 60), math.ceil(raw[-1][0] / 60)
    cut1, cut2 = sorted(data.draw(st.lists(st.integers(first, last), min_size=2, max_size=2)))
    cut1, cut2 = 60.0 * cut1, 60.0 * cut2
    once = compact_power(raw, to_kw=0.001, max_gap=max_gap, before=cut2)
    run1 = compact_power(raw, to_kw=0.001, max_gap=max_gap, before=cut1)
    handover = power_handover(raw, to_kw=0.001, max_gap=max_gap, before=cut1)
    assume(handover is not None)
    assert handover is not None
    at, energy = handover
    rest = [(t, v) for t, v in raw if t >= at]
    run2 = compact_power(rest, to_kw=0.001, max_gap=max_gap, before=cut2, energy=energy)
    assert same_points(run1, [p for p in once if p[0] < cut1])
    assert same_points([p for p in run2 if p[0] >= cut1], [p for p in once if p[0] >= cut1])

    compacted = split_at(run1, handover, energy)
    assume(math.ceil(at / 60) - 1 >= first)
    start = 60.0 * data.draw(st.integers(first, math.ceil(at / 60) - 1))
    end = at + data.draw(st.floats(0, 600))
    (whole,) = power_intervals(raw, [(start, end)], to_kw=0.001, max_gap=max_gap)
    (head,) = read_back(compacted, [(start, at)])
    (tail,) = power_intervals(rest, [(at, end)], to_kw=0.001, max_gap=max_gap)
    if whole is None:
        assert head is None or tail is None
    else:
        assert head is not None and tail is not None
        assert head + tail.kwh == pytest.approx(whole.kwh, rel=1e-9, abs=1e-12 * energy)


@fast
@given(messy_counters(), nonnegative_power(), st.integers(-20_000, 20_000))
def test_compaction_does_not_depend_on_the_day(
    counter: tuple[Samples, float | None], power: Samples, days: int
) -> None:
    shift = days * 86_400.0
    raw, wrap = counter
    before = EPOCH + 900
    moved = [(t + shift, v) for t, v in raw]
    got = compact_counter(moved, wrap=wrap, max_gap=45, before=before + shift)
    want = compact_counter(raw, wrap=wrap, max_gap=45, before=before)
    assert same_points(got, [(t + shift, v) for t, v in want])
    moved = [(t + shift, v) for t, v in power]
    got = compact_power(moved, to_kw=0.001, max_gap=45, before=before + shift)
    want = compact_power(power, to_kw=0.001, max_gap=45, before=before)
    assert same_points(got, [(t + shift, v) for t, v in want])
