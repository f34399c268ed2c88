"""One controller step (gateway.control.step): hold the limit, fail safe, give back what it took."""

from __future__ import annotations

import math

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from gateway.control.step import Command, Load, Reading, contribution, off_order, step

NAN = math.nan
FRESH = 10.0  # failsafe (s)


def load(
    rid: str,
    rated: float = 4.0,
    *,
    priority: int = 0,
    on: bool | None = True,
    measured: float | None = None,
    held: bool = False,
) -> Load:
    return Load(rid, priority, rated, on, measured, held)


def run(
    loads: list[Load],
    *,
    limit: float | None = 4.8,
    power: float | None = 11.0,
    age: float | None = 0.5,
    hysteresis: float = 0.5,
) -> tuple[Command, ...]:
    return step(
        limit_kw=limit,
        meter=Reading(power, age),
        failsafe=FRESH,
        loads=loads,
        hysteresis_kw=hysteresis,
    )


def switched(commands: tuple[Command, ...]) -> list[tuple[str, bool]]:
    return [(c.resource_id, c.on) for c in commands]


# --- examples -----------------------------------------------------------------------------------


def test_the_site_of_the_issue_switches_both_plugs_off_under_a_5_kw_cap() -> None:
    # 3 kW base + two 4 kW plugs; cap 5 kW - margin 0.2 kW.
    commands = run([load("plug-a"), load("plug-b")], power=11.0, limit=4.8)
    assert switched(commands) == [("plug-a", False), ("plug-b", False)]
    assert commands[0].reason == "cap: location at 11 kW, limit 4.8 kW"


def test_only_as_many_loads_go_off_as_the_limit_needs() -> None:
    loads = [load("small", 1.0), load("big", 5.0), load("mid", 2.0)]
    assert switched(run(loads, power=9.0, limit=6.0)) == [("big", False)]


def test_lowest_priority_goes_first_then_the_largest_then_the_name() -> None:
    loads = [
        load("c", 1.0, priority=0),
        load("b", 3.0, priority=0),
        load("a", 3.0, priority=0),
        load("vip", 9.0, priority=5),
        load("z", 2.0, priority=-1, measured=0.5),
    ]
    assert [ld.resource_id for ld in off_order(loads)] == ["z", "a", "b", "c", "vip"]
    # z (measured 0.5) first, then a and b take off 6.5: 20 -> 13.5 <= 14.
    assert switched(run(loads, power=20.0, limit=14.0)) == [
        ("z", False),
        ("a", False),
        ("b", False),
    ]


def test_a_measured_power_counts_instead_of_the_rated_one() -> None:
    loads = [load("a", 4.0, measured=0.1), load("b", 4.0, priority=1)]
    # Switching a off takes only its measured 0.1 kW: b must go too.
    assert switched(run(loads, power=6.0, limit=5.0)) == [("a", False), ("b", False)]


def test_loads_already_off_are_skipped() -> None:
    loads = [load("off", 9.0, on=False), load("on", 2.0, priority=3)]
    assert switched(run(loads, power=6.0, limit=5.0)) == [("on", False)]


def test_an_unknown_switch_state_counts_as_on() -> None:
    assert contribution(load("u", 3.0, on=None)) == 3.0
    assert contribution(load("off", 3.0, on=False)) == 0.0
    assert contribution(load("m", 3.0, on=False, measured=0.7)) == 0.7
    assert contribution(load("neg", 3.0, measured=-0.3)) == 0.0
    assert contribution(load("nan", 3.0, measured=NAN)) == 3.0
    assert switched(run([load("u", 3.0, on=None)], power=6.0, limit=5.0)) == [("u", False)]


def test_under_the_limit_nothing_changes_within_the_hysteresis() -> None:
    loads = [load("a", 1.0), load("h", 0.5, on=False, held=True)]
    assert run(loads, power=4.5, limit=4.8, hysteresis=0.5) == ()
    assert run(loads, power=4.8, limit=4.8) == ()


def test_held_loads_come_back_highest_priority_first_while_they_fit() -> None:
    loads = [
        load("low", 0.5, priority=0, on=False, held=True),
        load("high", 2.0, priority=9, on=False, held=True),
        load("mid", 1.5, priority=5, on=False, held=True),
        load("theirs", 0.1, priority=99, on=False, held=False),
    ]
    commands = run(loads, power=1.0, limit=5.0, hysteresis=0.5)
    # 1 + 2 = 3 <= 4.5; + 1.5 = 4.5 <= 4.5; + 0.5 = 5 > 4.5: low stays off.
    assert switched(commands) == [("high", True), ("mid", True)]
    assert "4.5 <= 4.5 kW" in commands[1].reason


def test_a_held_load_that_does_not_fit_keeps_lower_priorities_off_too() -> None:
    loads = [
        load("big", 4.0, priority=9, on=False, held=True),
        load("small", 0.5, priority=1, on=False, held=True),
    ]
    assert run(loads, power=2.0, limit=5.0, hysteresis=0.5) == ()


def test_a_step_that_switches_off_switches_nothing_on() -> None:
    loads = [load("a", 6.0, priority=0), load("h", 0.1, priority=9, on=False, held=True)]
    assert switched(run(loads, power=8.0, limit=4.8)) == [("a", False)]


def test_after_the_cap_every_held_load_comes_back_and_no_other() -> None:
    loads = [
        load("held-off", on=False, held=True),
        load("held-unknown", on=None, held=True),
        load("held-on", on=True, held=True),
        load("theirs", on=False, held=False),
    ]
    for meter in [(None, None), (100.0, 1e9)]:  # the meter does not matter without a cap
        commands = run(loads, limit=None, power=meter[0], age=meter[1])
        assert switched(commands) == [("held-off", True), ("held-unknown", True)]
        assert {c.reason for c in commands} == {"cap over"}


@pytest.mark.parametrize(
    ("power", "age", "words"),
    [
        (None, None, "location power never read"),
        (3.0, None, "location power never read"),
        (None, 1.0, "location power never read"),
        (3.0, 10.5, "location power unread for 10.5 s"),
        (NAN, 1.0, "is not a number"),
        (math.inf, 1.0, "is not a number"),
        (3.0, NAN, "unread for nan s"),
    ],
)
def test_an_unread_meter_under_a_cap_switches_every_load_that_may_be_on_off(
    power: float | None, age: float | None, words: str
) -> None:
    loads = [load("on"), load("unknown", on=None), load("off", on=False, held=True)]
    commands = run(loads, power=power, age=age)
    assert switched(commands) == [("on", False), ("unknown", False)]
    assert all(c.reason.startswith("failsafe: ") and words in c.reason for c in commands)


def test_a_reading_exactly_failsafe_old_is_still_trusted() -> None:
    assert run([load("a", 1.0)], power=3.0, age=FRESH) == ()


def test_a_nan_limit_or_hysteresis_errs_towards_off() -> None:
    assert switched(run([load("a"), load("b", on=None)], limit=NAN, power=1.0)) == [
        ("a", False),
        ("b", False),
    ]
    back = [load("h", 0.1, on=False, held=True)]
    assert run(back, power=1.0, limit=5.0, hysteresis=NAN) == ()
    assert run(back, power=1.0, limit=5.0, hysteresis=math.inf) == ()


def test_a_negative_hysteresis_never_switches_on_above_the_limit() -> None:
    back = [load("h", 1.0, on=False, held=True)]
    assert run(back, power=4.5, limit=5.0, hysteresis=-10.0) == ()
    assert switched(run(back, power=4.0, limit=5.0, hysteresis=-10.0)) == [("h", True)]


def test_a_load_with_an_unusable_rated_power_is_never_switched_on() -> None:
    for rated in (NAN, -1.0, math.inf):
        assert run([load("h", rated, on=False, held=True)], power=0.0, limit=50.0) == ()


def test_when_even_every_load_off_cannot_reach_the_limit_all_of_them_go_off() -> None:
    loads = [load("a", 1.0), load("b", 1.0, on=None), load("c", 1.0, on=False)]
    assert switched(run(loads, power=10.0, limit=2.0)) == [("a", False), ("b", False)]


# --- properties ---------------------------------------------------------------------------------

kw = st.floats(0, 50)
loads_st = st.lists(
    st.builds(
        Load,
        resource_id=st.text("abcdefgh", min_size=1, max_size=3),
        priority=st.integers(-3, 3),
        rated_kw=st.floats(0.01, 20),
        on=st.sampled_from([True, False, None]),
        measured_kw=st.one_of(st.none(), kw),
        held=st.booleans(),
    ),
    max_size=12,
    unique_by=lambda ld: ld.resource_id,
)


def after(power: float, loads: list[Load], commands: tuple[Command, ...]) -> float:
    by_id = {ld.resource_id: ld for ld in loads}
    off = sum(contribution(by_id[c.resource_id]) for c in commands if not c.on)
    on = sum(by_id[c.resource_id].rated_kw for c in commands if c.on)
    return power - off + on


@given(
    loads=loads_st,
    power=st.floats(0, 300),
    limit=st.floats(-5, 100),
    hysteresis=st.floats(0, 3),
    age=st.floats(0, FRESH),
)
def test_the_predicted_power_fits_whenever_the_base_does(
    loads: list[Load], power: float, limit: float, hysteresis: float, age: float
) -> None:
    base = power - sum(contribution(ld) for ld in loads if ld.on is not False)
    commands = run(loads, limit=limit, power=power, age=age, hysteresis=hysteresis)
    ids = [c.resource_id for c in commands]
    assert len(ids) == len(set(ids))  # never both off and on, never twice
    assert all(
        not c.on or c.resource_id in {ld.resource_id for ld in loads if ld.held} for c in commands
    )
    assert {c.on for c in commands} != {True, False}  # never off and on in one step
    if base <= limit:
        assert after(power, loads, commands) <= limit + 1e-9 * max(1.0, power)
    if power <= limit:
        assert all(c.on for c in commands)  # nothing goes off while the limit holds


@given(loads=loads_st, power=st.floats(0, 300), limit=st.floats(0, 100))
def test_switching_on_stays_under_the_limit_minus_the_hysteresis(
    loads: list[Load], power: float, limit: float
) -> None:
    commands = run(loads, limit=limit, power=power, hysteresis=0.5)
    if any(c.on for c in commands):
        assert power <= limit - 0.5
        assert after(power, loads, commands) <= limit - 0.5 + 1e-9


@given(
    loads=loads_st,
    power=st.one_of(st.none(), st.floats(allow_nan=True)),
    age=st.one_of(st.none(), st.floats(FRESH, 1e9, exclude_min=True)),
    limit=st.floats(allow_nan=True),
)
def test_the_failsafe_switches_every_on_or_unknown_load_off(
    loads: list[Load], power: float | None, age: float | None, limit: float
) -> None:
    assume(power is None or age is None or not math.isfinite(power) or age > FRESH)
    commands = run(loads, limit=limit, power=power, age=age)
    assert switched(commands) == [(ld.resource_id, False) for ld in loads if ld.on is not False]


@given(
    loads=loads_st,
    power=st.one_of(st.none(), st.floats(allow_nan=True)),
    age=st.one_of(st.none(), st.floats(allow_nan=True)),
)
def test_without_a_cap_only_held_loads_come_on(
    loads: list[Load], power: float | None, age: float | None
) -> None:
    commands = run(loads, limit=None, power=power, age=age)
    expected = [ld.resource_id for ld in loads if ld.held and ld.on is not True]
    assert [c.resource_id for c in commands] == expected
    assert all(c.on for c in commands)
