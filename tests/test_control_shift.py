"""Placing a need into the best-paid intervals (gateway.control.shift), and strategy plugins
(gateway.control.strategies): found, loaded and run, each failing alone."""

from __future__ import annotations

import itertools
import math
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.config_rules import parse_window
from gateway.control.shift import DAY, Run, Slot, place, usable
from gateway.control.strategies import (
    MAX_NOTE,
    Schedule,
    StrategyEvent,
    StrategyResource,
    load_strategies,
    run_strategy,
    shift,
)

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


# --- strategies (gateway.control.strategies) ----------------------------------------------------

GROUP = "gateway.strategies"
EVENT = StrategyEvent("ev-1", tuple(hourly(1, 5, 2, 7, 3)))
PLUG = StrategyResource("plug", rated_kw=2.0, need_kwh=4.0, allowed=(), participation="shift")


@pytest.fixture
def install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., None]]:
    """Install a throwaway distribution with strategy entry points into a folder on sys.path."""
    modules_before = set(sys.modules)

    def install(dist: str, entry_points: dict[str, str], modules: dict[str, str]) -> None:
        site = tmp_path / f"site-{dist}"
        info = site / f"{dist.replace('-', '_')}-1.0.dist-info"
        info.mkdir(parents=True)
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
        lines = "".join(f"{name} = {value}\n" for name, value in entry_points.items())
        (info / "entry_points.txt").write_text(f"[{GROUP}]\n{lines}")
        for module, source in modules.items():
            (site / f"{module}.py").write_text(textwrap.dedent(source))
        monkeypatch.syspath_prepend(str(site))

    yield install
    for module in set(sys.modules) - modules_before:
        if module.startswith("ecgw_test_"):
            del sys.modules[module]


def test_the_built_in_strategies_are_registered() -> None:
    found, errors = load_strategies()
    assert {"shift", "report", "off"} <= set(found)
    assert errors == {}
    assert run_strategy(found["report"], EVENT, PLUG, T0) == Schedule(
        (), "steered by something else; reported"
    )
    assert run_strategy(found["off"], EVENT, PLUG, T0) == Schedule(
        (), "not taking part; not reported"
    )


def test_the_shift_strategy_places_the_need() -> None:
    schedule = run_strategy(shift, EVENT, PLUG, T0)
    assert schedule.runs == (Run(T0 + H, T0 + 2 * H), Run(T0 + 3 * H, T0 + 4 * H))
    assert schedule.note == "placed 4 of 4 kWh in 2 run(s)"
    assert not schedule.failed
    short = run_strategy(shift, EVENT, PLUG, T0 + 4.5 * H)
    assert short.note == "placed 1 of 4 kWh in 1 run(s) (all the usable time left in the event)"
    bare = StrategyResource("r", None, None, (), "shift")
    assert run_strategy(shift, EVENT, bare, T0).note.startswith("shift needs rated_kw")


def test_a_plugin_that_cannot_be_loaded_fails_alone(install: Callable[..., None]) -> None:
    install(
        "ecgw-test-strategies",
        {
            "good": "ecgw_test_good:strategy",
            "broken": "ecgw_test_broken:strategy",
            "exits": "ecgw_test_exits:strategy",
            "missing": "ecgw_test_good:nothing_here",
            "constant": "ecgw_test_good:CONSTANT",
            "shift": "ecgw_test_good:strategy",  # the built-in's name, a second time
        },
        {
            "ecgw_test_good": """
                from gateway.control.strategies import Schedule
                CONSTANT = 42
                def strategy(event, resource, now):
                    return Schedule((), "plugin")
            """,
            "ecgw_test_broken": "raise RuntimeError('no numpy here')\n",
            "ecgw_test_exits": "import sys\nsys.exit(3)\n",
        },
    )
    found, errors = load_strategies()
    assert set(found) == {"good", "report", "off"}
    assert run_strategy(found["good"], EVENT, PLUG, T0).note == "plugin"
    assert set(errors) == {"broken", "exits", "missing", "constant", "shift"}
    dist = "strategy {!r} from distribution 'ecgw-test-strategies'"
    assert errors["broken"] == (
        dist.format("broken") + " failed to import: RuntimeError: no numpy here"
    )
    assert errors["exits"].endswith("failed to import: SystemExit: 3")
    assert "failed to import: AttributeError" in errors["missing"]
    assert errors["constant"].endswith("is not callable (ecgw_test_good:CONSTANT): got int")
    assert errors["shift"].startswith("strategy 'shift' is registered more than once: ")
    assert "ecgw-test-strategies (ecgw_test_good:strategy)" in errors["shift"]


def _raises(event: StrategyEvent, resource: StrategyResource, now: float) -> Schedule:
    raise ZeroDivisionError("division by zero")


def _exits(event: StrategyEvent, resource: StrategyResource, now: float) -> Schedule:
    raise SystemExit(1)


def test_a_strategy_that_raises_gives_a_failed_schedule() -> None:
    schedule = run_strategy(_raises, EVENT, PLUG, T0)
    assert schedule == Schedule(
        (), "strategy _raises failed: ZeroDivisionError: division by zero", failed=True
    )
    assert run_strategy(_exits, EVENT, PLUG, T0, name="x").note == (
        "strategy x failed: SystemExit: 1"
    )


def _returning(result: object) -> Callable[[StrategyEvent, StrategyResource, float], Schedule]:
    def strategy(event: StrategyEvent, resource: StrategyResource, now: float) -> Schedule:
        return result  # type: ignore[return-value]

    return strategy


@pytest.mark.parametrize(
    ("result", "words"),
    [
        (None, "expected a Schedule, got NoneType"),
        (Schedule([Run(T0, T0 + 1)], "x"), "runs is a list, not a tuple"),  # type: ignore[arg-type]
        (Schedule((), 7), "the note is a int"),  # type: ignore[arg-type]
        (Schedule(((T0, T0 + 1),), "x"), "runs[0] is a tuple, not a Run"),  # type: ignore[arg-type]
        (Schedule((Run(T0, math.nan),), "x"), "runs[0] 1796083200.0..nan is not an interval"),
        (Schedule((Run(T0 + 9, T0 + 9),), "x"), "is not an interval"),
        (Schedule((Run(T0, 10**400),), "x"), "is not an interval"),  # type: ignore[arg-type]
        (Schedule((Run(T0 + 9, T0 + 10), Run(T0, T0 + 1)), "x"), "unsorted or overlapping"),
        (Schedule((Run(T0, T0 + 10), Run(T0 + 5, T0 + 20)), "x"), "unsorted or overlapping"),
        (Schedule((Run(T0 - 1, T0 + 10),), "x"), "runs[0] 1.79608e+09..1.79608e+09 lies outside"),
        (Schedule((Run(T0 + 4 * H, T0 + 6 * H),), "x"), "lies outside the event's intervals"),
    ],
)
def test_a_result_that_is_not_a_usable_schedule_is_rejected(result: object, words: str) -> None:
    schedule = run_strategy(_returning(result), EVENT, PLUG, T0, name="odd")
    assert schedule.failed
    assert schedule.runs == ()
    assert schedule.note.startswith("strategy odd rejected: ")
    assert words in schedule.note


def test_a_run_may_span_adjacent_slots_and_a_long_note_is_cut_to_one_line() -> None:
    note = "why\n" + "x" * 1000
    schedule = run_strategy(_returning(Schedule((Run(T0, T0 + 5 * H),), note)), EVENT, PLUG, T0)
    assert not schedule.failed
    assert schedule.runs == (Run(T0, T0 + 5 * H),)
    assert len(schedule.note) == MAX_NOTE
    assert "\n" not in schedule.note
    assert schedule.note.startswith("why xxx")


class _Hostile(float):
    def __float__(self) -> float:
        raise RuntimeError("not today")

    def __repr__(self) -> str:
        raise RuntimeError("nor this")


def test_a_result_whose_values_raise_when_looked_at_is_rejected() -> None:
    hostile = Schedule((Run(_Hostile(T0), T0 + 1),), "x")
    schedule = run_strategy(_returning(hostile), EVENT, PLUG, T0, name="odd")
    assert schedule.failed
    assert schedule.note == (
        "strategy odd rejected: looking at the result raised RuntimeError: not today"
    )
