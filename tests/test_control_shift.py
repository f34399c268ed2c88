"""Placing a need into the best-paid intervals (gateway.control.shift.place)."""

from __future__ import annotations

import itertools
import math

from hypothesis import given
from hypothesis import strategies as st

from gateway.config_rules import parse_window
from gateway.control.shift import DAY, Run, Slot, place, usable

T0 = 1_796_083_200.0  # 2026-12-01T00:00:00Z
H = 3600.0


def hourly(*prices: float | None, start: float = T0) -> list[Slot]:
    return [Slot(start + i * H, start + (i + 1) * H, p) for i, p in enumerate(prices)]


def energy(runs: tuple[Run, ...], rated_kw: float) -> float:
    return sum(r.end - r.start for r in runs) * rated_kw / 3600.0


def test_the_need_goes_into_the_best_paid_hours() -> None:
    runs = place(need_kwh=4.0, rated_kw=2.0, slots=hourly(1, 5, 2, 7, 3), allowed=(), now=T0)
    assert runs == (Run(T0 + H, T0 + 2 * H), Run(T0 + 3 * H, T0 + 4 * H))


def test_adjacent_runs_are_merged() -> None:
    runs = place(need_kwh=3.0, rated_kw=1.0, slots=hourly(1, 9, 8, 7, 2), allowed=(), now=T0)
    assert runs == (Run(T0 + H, T0 + 4 * H),)


def test_a_partly_needed_slot_is_used_from_its_start_and_ties_go_earlier() -> None:
    runs = place(need_kwh=1.5, rated_kw=1.0, slots=hourly(4, 4, 4), allowed=(), now=T0)
    assert runs == (Run(T0, T0 + 1.5 * H),)


def test_an_unknown_price_counts_as_zero() -> None:
    slots = hourly(None, -1.0, math.nan, 0.5)
    runs = place(need_kwh=2.0, rated_kw=1.0, slots=slots, allowed=(), now=T0)
    # 0.5 first; then the unknown (0) and the NaN (0) tie above -1: the earlier one.
    assert runs == (Run(T0, T0 + H), Run(T0 + 3 * H, T0 + 4 * H))


def test_time_before_now_is_not_used() -> None:
    now = T0 + 1.5 * H
    runs = place(need_kwh=1.0, rated_kw=1.0, slots=hourly(9, 8, 1), allowed=(), now=now)
    assert runs == (Run(now, T0 + 2.5 * H),)


def test_more_need_than_time_fills_all_usable_time() -> None:
    runs = place(need_kwh=100.0, rated_kw=1.0, slots=hourly(1, 2), allowed=(), now=T0)
    assert runs == (Run(T0, T0 + 2 * H),)


def test_only_allowed_windows_are_used_and_they_may_wrap_midnight() -> None:
    slots = hourly(*([1.0] * 22 + [9.0, 9.0] + [1.0] * 4))  # 28 h, best at 22:00-24:00
    night = (parse_window("23:30-01:30"),)
    runs = place(need_kwh=10.0, rated_kw=1.0, slots=slots, allowed=night, now=T0)
    # Day 1 00:00-01:30 and 23:30-24:00 (9), then day 2 00:00-01:30: all the window has.
    assert runs == (Run(T0, T0 + 1.5 * H), Run(T0 + 23.5 * H, T0 + 25.5 * H))
    runs = place(need_kwh=0.5, rated_kw=1.0, slots=slots, allowed=night, now=T0)
    assert runs == (Run(T0 + 23.5 * H, T0 + 24 * H),)


def test_overlapping_slots_never_give_the_same_second_twice() -> None:
    slots = [Slot(T0, T0 + 2 * H, 5.0), Slot(T0 + H, T0 + 3 * H, 9.0)]
    runs = place(need_kwh=3.0, rated_kw=1.0, slots=slots, allowed=(), now=T0)
    assert runs == (Run(T0, T0 + 3 * H),)
    assert energy(runs, 1.0) == 3.0


def test_nothing_is_placed_for_a_need_or_power_that_is_not_a_positive_number() -> None:
    slots = hourly(1, 2)
    for need, rated in [(0, 1), (-1, 1), (math.nan, 1), (math.inf, 1), (1, 0), (1, math.nan)]:
        assert place(need_kwh=need, rated_kw=rated, slots=slots, allowed=(), now=T0) == ()


def test_slots_that_are_not_intervals_are_skipped() -> None:
    slots = [Slot(T0, T0, 9.0), Slot(T0 + H, T0, 9.0), Slot(math.nan, T0, 9.0), *hourly(1)]
    assert place(need_kwh=5.0, rated_kw=1.0, slots=slots, allowed=(), now=T0) == (Run(T0, T0 + H),)


def test_usable_parts_of_a_slot() -> None:
    slot = Slot(T0 - H, T0 + DAY + 2 * H, 1.0)
    windows = (parse_window("00:00-01:00"), parse_window("00:30-02:00"))
    assert usable(slot, windows, now=T0 + 0.25 * H) == [
        Run(T0 + 0.25 * H, T0 + 2 * H),
        Run(T0 + DAY, T0 + DAY + 2 * H),
    ]
    assert usable(slot, (), now=T0) == [Run(T0, slot.end)]
    assert usable(slot, (), now=slot.end) == []


# --- properties ---------------------------------------------------------------------------------


@st.composite
def curves(draw: st.DrawFn) -> list[Slot]:
    """Contiguous slots (a PriceCurve), 1 s .. 1 day each, some prices unknown."""
    start = T0 + draw(st.integers(-DAY, DAY))
    slots = []
    for _ in range(draw(st.integers(0, 10))):
        length = float(draw(st.sampled_from([1, 10, 60, 900, 3600, 7200, 86400])))
        price = draw(st.one_of(st.none(), st.integers(-5, 20).map(float)))
        slots.append(Slot(start, start + length, price))
        start += length
    return slots


windows = st.lists(
    st.tuples(st.integers(0, 1439), st.integers(1, 1440))
    .filter(lambda w: w[0] != w[1])
    .map(lambda w: parse_window(f"{w[0] // 60:02}:{w[0] % 60:02}-{w[1] // 60:02}:{w[1] % 60:02}")),
    max_size=3,
)


def inside(t0: float, t1: float, spans: list[Run]) -> bool:
    """[t0, t1) is covered by the union of ``spans``."""
    at = t0
    for span in sorted(spans, key=lambda r: r.start):
        if span.start <= at < span.end:
            at = span.end
        if at >= t1:
            return True
    return at >= t1


@given(
    slots=curves(),
    allowed=windows,
    need=st.floats(0.01, 200),
    rated=st.floats(0.1, 50),
    now_offset=st.floats(-DAY, 2 * DAY),
)
def test_placement_is_exact_feasible_and_greedy(
    slots: list[Slot],
    allowed: list[tuple[float, float]],
    need: float,
    rated: float,
    now_offset: float,
) -> None:
    now = T0 + now_offset
    runs = place(need_kwh=need, rated_kw=rated, slots=slots, allowed=allowed, now=now)
    parts = {i: usable(slot, allowed, now) for i, slot in enumerate(slots)}
    capacity = sum(p.end - p.start for ps in parts.values() for p in ps) * rated / 3600.0
    assert math.isclose(energy(runs, rated), min(need, capacity), rel_tol=1e-6, abs_tol=1e-9)
    # Sorted, not overlapping, not touching (merged): on/off at rated power, never more.
    for a, b in itertools.pairwise(runs):
        assert a.end < b.start
    every_part = [p for ps in parts.values() for p in ps]
    for r in runs:
        assert now <= r.start < r.end
        assert inside(r.start, r.end, every_part)  # within slots and allowed windows, after now

    def used(part: Run) -> float:
        return sum(max(0.0, min(r.end, part.end) - max(r.start, part.start)) for r in runs)

    def price(slot: Slot) -> float:
        return 0.0 if slot.price is None else slot.price

    used_prices = [price(slots[i]) for i, ps in parts.items() if any(used(p) > 0 for p in ps)]
    unused_prices = [
        price(slots[i]) for i, ps in parts.items() if any(used(p) < p.end - p.start for p in ps)
    ]
    if used_prices and unused_prices:
        assert max(unused_prices) <= min(used_prices)
