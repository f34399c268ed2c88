"""Deciding an LPC target (gateway.control.decide): commit only to what the site can hold."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.control.decide import Cap, ahead, decide_location, decide_resource

T0 = 1_796_119_200.0  # 2026-12-01T10:00:00Z
NAN, INF = math.nan, math.inf


def caps(*max_kw: float | None, start: float = T0, length: float = 900.0) -> list[Cap]:
    return [Cap(start + i * length, start + (i + 1) * length, kw) for i, kw in enumerate(max_kw)]


def location(
    cs: list[Cap],
    base: list[float | None] | None = None,
    *,
    margin: float = 0.2,
    meter: str | None = None,
    controllable: int = 2,
    dry_run: bool = False,
    now: float = T0 - 60,
):
    base = [3.0] * len(cs) if base is None else base
    return decide_location(
        cs,
        base_kw=base,
        margin_kw=margin,
        meter_problem=meter,
        controllable=controllable,
        dry_run=dry_run,
        now=now,
    )


# --- location -----------------------------------------------------------------------------------


def test_a_cap_above_base_and_margin_is_acknowledged_naming_the_tightest_interval() -> None:
    decision = location(caps(5.0, 4.0, 6.0))
    assert decision.acknowledge
    assert "tightest 2026-12-01T10:15:00Z: cap 4 kW >= base load 3 kW + margin 0.2 kW" in (
        decision.reason
    )
    assert "0.8 kW to spare" in decision.reason
    assert "2 controllable loads" in decision.reason


def test_a_cap_below_base_and_margin_is_declined_naming_the_first_such_interval() -> None:
    decision = location(caps(5.0, 2.0, 1.0))
    assert not decision.acknowledge
    assert decision.reason == (
        "2026-12-01T10:15:00Z: cap 2 kW is below the base load 3 kW + margin 0.2 kW"
    )


def test_the_margin_counts_down_to_the_watt() -> None:
    assert location(caps(3.2)).acknowledge  # exactly base + margin: holds
    assert not location(caps(3.19)).acknowledge


def test_a_dry_run_declines_before_anything_else() -> None:
    decision = location(caps(50.0), dry_run=True)
    assert decision == decision.__class__(False, "dry run: nothing is switched")


def test_no_interval_ahead_is_declined() -> None:
    cs = caps(5.0, 5.0)
    assert location(cs, now=cs[-1].end).reason == "no interval lies ahead"
    assert location([], []).reason == "no interval lies ahead"


def test_intervals_that_ended_are_neither_held_nor_checked() -> None:
    cs = caps(None, 1.0, 5.0)  # the first two are over
    decision = location(cs, [None, 9.0, 3.0], now=cs[1].end)
    assert decision.acknowledge, decision.reason
    assert ahead(cs, cs[1].end) == (cs[2],)
    # The interval in force (started, not ended) is still held and checked.
    assert not location(cs, [None, 9.0, 3.0], now=cs[1].end - 1).acknowledge


def test_a_meter_problem_is_named() -> None:
    decision = location(caps(50.0), meter="no reading for 40 s")
    assert not decision.acknowledge
    assert "no reading for 40 s" in decision.reason


@pytest.mark.parametrize(
    ("max_kw", "words"),
    [(None, "no cap given"), (-1.0, "negative"), (NAN, "not a finite"), (INF, "not a finite")],
)
def test_a_cap_without_a_usable_value_is_declined(max_kw: float | None, words: str) -> None:
    decision = location(caps(5.0, max_kw))
    assert not decision.acknowledge
    assert words in decision.reason
    assert decision.reason.startswith("2026-12-01T10:15:00Z")


@pytest.mark.parametrize("base", [None, NAN, INF, -1.0])
def test_an_unknown_base_load_is_declined(base: float | None) -> None:
    decision = location(caps(5.0, 5.0), [3.0, base])
    assert not decision.acknowledge
    assert "2026-12-01T10:15:00Z: the base load is" in decision.reason


@pytest.mark.parametrize("margin", [NAN, -0.5, INF])
def test_an_unusable_margin_is_declined(margin: float) -> None:
    assert not location(caps(50.0), margin=margin).acknowledge


def test_an_unknown_now_commits_to_nothing() -> None:
    assert not location(caps(50.0), now=NAN).acknowledge


@pytest.mark.parametrize(("start", "end"), [(T0, NAN), (NAN, T0), (T0, T0), (T0, INF)])
def test_an_interval_that_is_not_one_is_declined(start: float, end: float) -> None:
    decision = location([Cap(start, end, 50.0)])
    assert not decision.acknowledge
    assert "not a valid interval" in decision.reason


def test_base_loads_must_match_the_caps() -> None:
    with pytest.raises(ValueError, match="1 base loads for 2 caps"):
        location(caps(5.0, 5.0), [3.0])


def test_a_timestamp_no_calendar_holds_is_shown_as_a_number() -> None:
    decision = location([Cap(1e300, 2e300, 1.0)], [3.0], now=0.0)
    assert decision.reason.startswith("1e+300: cap 1 kW is below")


finite = st.floats(-1e6, 1e6)
maybe = st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True))


@given(
    points=st.lists(st.tuples(maybe, maybe), min_size=0, max_size=6),
    margin=st.floats(allow_nan=True, allow_infinity=True),
    now_offset=st.floats(-3600, 3 * 3600),
    meter=st.one_of(st.none(), st.just("silent")),
    dry_run=st.booleans(),
)
def test_an_acknowledgement_always_fits_every_cap_ahead(
    points: list[tuple[float | None, float | None]],
    margin: float,
    now_offset: float,
    meter: str | None,
    dry_run: bool,
) -> None:
    cs = caps(*(kw for kw, _ in points))
    base = [b for _, b in points]
    now = T0 + now_offset
    decision = location(cs, base, margin=margin, meter=meter, dry_run=dry_run, now=now)
    assert decision.reason and "\n" not in decision.reason
    if not decision.acknowledge:
        return
    assert not dry_run
    assert meter is None
    upcoming = [(c, b) for c, b in zip(cs, base, strict=True) if c.end > now]
    assert upcoming
    for cap, b in upcoming:
        assert cap.max_kw is not None
        assert b is not None
        assert all(math.isfinite(x) for x in (cap.max_kw, b, margin))
        assert b >= 0
        assert margin >= 0
        assert b + margin <= cap.max_kw


@given(
    max_kw=st.lists(st.floats(0, 100), min_size=1, max_size=6),
    base=st.floats(0, 100),
    margin=st.floats(0, 5),
)
def test_finite_caps_are_acknowledged_exactly_when_base_and_margin_fit(
    max_kw: list[float], base: float, margin: float
) -> None:
    decision = location(caps(*max_kw), [base] * len(max_kw), margin=margin)
    assert decision.acknowledge == all(base + margin <= kw for kw in max_kw)


# --- resource -----------------------------------------------------------------------------------


def resource(
    cs: list[Cap],
    *,
    controllable: bool = True,
    rated: float | None = 2.0,
    dry_run: bool = False,
    now: float = T0 - 60,
):
    return decide_resource(cs, controllable=controllable, rated_kw=rated, dry_run=dry_run, now=now)


def test_a_controllable_resource_meets_any_cap_of_zero_or_more() -> None:
    decision = resource(caps(0.0, 0.5))
    assert decision.acknowledge
    assert decision.reason == "switched off it draws nothing, which meets any cap >= 0"


def test_a_resource_whose_rated_power_fits_says_so() -> None:
    decision = resource(caps(3.0, 2.5))
    assert decision.acknowledge
    assert "on at its rated 2 kW it meets every cap too" in decision.reason


def test_a_resource_without_a_control_is_declined() -> None:
    decision = resource(caps(50.0), controllable=False)
    assert not decision.acknowledge
    assert "no control" in decision.reason


@pytest.mark.parametrize("max_kw", [None, -0.1, NAN, INF, -INF])
def test_a_resource_cap_without_a_usable_value_is_declined(max_kw: float | None) -> None:
    assert not resource(caps(1.0, max_kw)).acknowledge


def test_a_resource_target_in_a_dry_run_or_with_nothing_ahead_is_declined() -> None:
    assert resource(caps(1.0), dry_run=True).reason == "dry run: nothing is switched"
    cs = caps(1.0)
    assert resource(cs, now=cs[0].end).reason == "no interval lies ahead"
    assert not resource(cs, now=NAN).acknowledge


@given(
    max_kw=st.lists(maybe, min_size=0, max_size=5),
    controllable=st.booleans(),
    rated=maybe,
    dry_run=st.booleans(),
    now_offset=st.floats(-3600, 3 * 3600),
)
def test_a_resource_is_acknowledged_iff_it_can_be_switched_and_every_cap_is_a_number(
    max_kw: list[float | None],
    controllable: bool,
    rated: float | None,
    dry_run: bool,
    now_offset: float,
) -> None:
    cs = caps(*max_kw)
    now = T0 + now_offset
    upcoming = ahead(cs, now)
    expected = (
        not dry_run
        and controllable
        and bool(upcoming)
        and all(c.max_kw is not None and 0 <= c.max_kw < INF for c in upcoming)
    )
    assert (
        resource(cs, controllable=controllable, rated=rated, dry_run=dry_run, now=now).acknowledge
        == expected
    )
