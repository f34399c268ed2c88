"""The pure delivery policy: what each answer means, backoff, Retry-After, the breaker."""

from __future__ import annotations

import email.utils

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.backoff import backoff_delay
from gateway.delivery.policy import (
    BREAKER_TRANSITIONS,
    Breaker,
    BreakerState,
    Dead,
    Delivered,
    Retry,
    Signal,
    classify,
    idempotency_key,
    parse_retry_after,
    signal_for,
)
from gateway.store.outbox_states import TransitionError

NOW = 1_750_000_000.0


def outcome(status: int | None, retry_after: float | None = None, rand: float = 0.5) -> object:
    return classify(
        status,
        error="x",
        attempt=3,
        now=NOW,
        retry_after=retry_after,
        initial=2.0,
        maximum=600.0,
        rand=rand,
        report_id="r",
    )


@pytest.mark.parametrize("status", [200, 201, 204])
def test_2xx_is_delivered(status: int) -> None:
    assert outcome(status) == Delivered(status=status, report_id="r")


@pytest.mark.parametrize(
    "status", [None, 100, 199, 401, 408, 425, 429, 500, 502, 503, 504, 599, 600, 999]
)
def test_temporary_failures_retry(status: int | None) -> None:
    assert isinstance(outcome(status), Retry)


@pytest.mark.parametrize("status", [300, 301, 302, 303, 304, 307, 308])
def test_a_redirect_is_not_delivery_and_is_retried(status: int) -> None:
    result = outcome(status)
    assert isinstance(result, Retry) and result.status == status


@pytest.mark.parametrize("status", [400, 403, 404, 405, 409, 410, 413, 415, 422])
def test_other_4xx_is_dead(status: int) -> None:
    assert isinstance(outcome(status), Dead)


def test_retry_after_is_a_floor() -> None:
    result = outcome(429, retry_after=120.0, rand=0.0)
    assert isinstance(result, Retry) and result.next_attempt_at == NOW + 120.0


@given(attempt=st.integers(1, 10_000), rand=st.floats(0, 1, exclude_max=True))
def test_retry_waits_the_equal_jitter_backoff(attempt: int, rand: float) -> None:
    result = classify(
        503,
        error="x",
        attempt=attempt,
        now=NOW,
        retry_after=None,
        initial=2.0,
        maximum=600.0,
        rand=rand,
    )
    assert isinstance(result, Retry)
    step = min(600.0, 2.0 * 2 ** min(attempt - 1, 20))
    delay = result.next_attempt_at - NOW
    assert delay == pytest.approx(backoff_delay(attempt, initial=2.0, maximum=600.0, rand=rand))
    assert step / 2 - 1e-6 <= delay <= step + 1e-6  # never shorter than half the step


def test_retry_after_forms() -> None:
    assert parse_retry_after("30", now=NOW, cap=3600) == 30.0
    assert parse_retry_after("999999", now=NOW, cap=3600) == 3600.0
    date = email.utils.formatdate(NOW + 90, usegmt=True)
    assert parse_retry_after(date, now=NOW, cap=3600) == pytest.approx(90.0)
    past = email.utils.formatdate(NOW - 90, usegmt=True)
    assert parse_retry_after(past, now=NOW, cap=3600) == 0.0
    assert parse_retry_after("soon", now=NOW, cap=3600) is None
    assert parse_retry_after(None, now=NOW, cap=3600) is None
    assert parse_retry_after("\u0663\u0660", now=NOW, cap=3600) is None  # not ASCII digits
    assert parse_retry_after("Fri, 31 Dec 99999 23:59:59 GMT", now=NOW, cap=3600) is None


def test_breaker_pauses_everything_then_probes_with_one() -> None:
    breaker = Breaker(initial=2.0, maximum=60.0)
    assert breaker.allowance(NOW, 16) == 16
    assert breaker.start() is False
    breaker.apply(Signal.RETRY, now=NOW, rand=0.5, not_before=NOW + 30)
    assert breaker.state is BreakerState.OPEN
    assert breaker.allowance(NOW + 29.9, 16) == 0
    assert breaker.allowance(NOW + 30.0, 16) == 1
    assert breaker.start() is True
    assert breaker.allowance(NOW + 31.0, 15) == 0, "one probe at a time"
    breaker.apply(Signal.PROBE_RETRY, now=NOW + 32, rand=0.5, not_before=NOW + 33)
    assert breaker.allowance(NOW + 32.5, 16) == 0
    assert breaker.paused_until == NOW + 32 + backoff_delay(2, initial=2.0, maximum=60.0, rand=0.5)
    breaker.apply(Signal.DELIVERED)
    assert breaker.allowance(NOW + 40, 16) == 16
    assert (breaker.state, breaker.failures, breaker.resumes_at()) == (BreakerState.CLOSED, 0, 0.0)


def test_a_rejected_probe_ends_the_probe_and_the_next_report_probes_at_once() -> None:
    breaker = Breaker(initial=2.0, maximum=60.0)
    breaker.apply(Signal.RETRY, now=NOW, rand=0.0, not_before=NOW + 5)
    assert breaker.start() is True
    assert breaker.apply(Signal.PROBE_REJECTED, now=NOW + 6) is True
    assert breaker.state is BreakerState.OPEN
    assert breaker.allowance(NOW + 6, 16) == 1
    assert breaker.start() is True
    breaker.apply(Signal.PROBE_DELIVERED, now=NOW + 7)
    assert breaker.allowance(NOW + 7, 16) == 16


# Every (state, signal) pair, written out as the specification: the new state and what
# happens to the failure count (+1 with a pause, 0, or unchanged); None = illegal.
C, OP, P = BreakerState.CLOSED, BreakerState.OPEN, BreakerState.PROBING
EXPECTED: dict[tuple[BreakerState, Signal], tuple[BreakerState, str] | None] = {
    (C, Signal.SEND): (C, "same"),
    (C, Signal.PROBE): None,
    (C, Signal.DELIVERED): (C, "same"),
    (C, Signal.RETRY): (OP, "+1"),
    (C, Signal.REJECTED): (C, "same"),
    (C, Signal.PROBE_DELIVERED): (C, "same"),
    (C, Signal.PROBE_RETRY): (OP, "+1"),
    (C, Signal.PROBE_REJECTED): (C, "same"),
    (OP, Signal.SEND): None,
    (OP, Signal.PROBE): (P, "same"),
    (OP, Signal.DELIVERED): (C, "0"),
    (OP, Signal.RETRY): (OP, "+1"),
    (OP, Signal.REJECTED): (OP, "same"),
    (OP, Signal.PROBE_DELIVERED): (C, "0"),
    (OP, Signal.PROBE_RETRY): (OP, "+1"),
    (OP, Signal.PROBE_REJECTED): (OP, "same"),
    (P, Signal.SEND): None,
    (P, Signal.PROBE): None,
    (P, Signal.DELIVERED): (C, "0"),
    (P, Signal.RETRY): (P, "same"),
    (P, Signal.REJECTED): (P, "same"),
    (P, Signal.PROBE_DELIVERED): (C, "0"),
    (P, Signal.PROBE_RETRY): (OP, "+1"),
    (P, Signal.PROBE_REJECTED): (OP, "same"),
}


def breaker_in(state: BreakerState) -> Breaker:
    """A breaker brought to ``state`` by legal moves only (OPEN and PROBING: 2 failures)."""
    breaker = Breaker(initial=2.0, maximum=60.0)
    if state is not BreakerState.CLOSED:
        breaker.apply(Signal.RETRY, now=NOW, rand=0.0)
        breaker.apply(Signal.RETRY, now=NOW, rand=0.0)
    if state is BreakerState.PROBING:
        assert breaker.start() is True
    assert breaker.state is state
    return breaker


def test_the_expected_table_covers_every_pair() -> None:
    assert set(EXPECTED) == {(s, g) for s in BreakerState for g in Signal}
    listed = {(s, g) for s, moves in BREAKER_TRANSITIONS.items() for g in moves}
    assert listed == {pair for pair, want in EXPECTED.items() if want is not None}


@pytest.mark.parametrize(("state", "signal"), sorted(EXPECTED))
def test_every_state_and_signal(state: BreakerState, signal: Signal) -> None:
    breaker = breaker_in(state)
    before = breaker.failures
    want = EXPECTED[(state, signal)]
    if want is None:
        with pytest.raises(TransitionError, match=f"no transition from '{state}' on '{signal}'"):
            breaker.apply(signal, now=NOW + 100)
        assert breaker.state is state and breaker.failures == before, "left as it was"
        return
    breaker.apply(signal, now=NOW + 100, rand=0.0, not_before=NOW + 100)
    new_state, failures = want
    assert breaker.state is new_state
    assert breaker.failures == {"same": before, "0": 0, "+1": before + 1}[failures]
    if failures == "+1":  # paused by the backoff of the new failure count
        step = backoff_delay(breaker.failures, initial=2.0, maximum=60.0, rand=0.0)
        assert breaker.resumes_at() == NOW + 100 + step
        assert breaker.allowance(NOW + 100, 16) == 0
    expected_allowance = {C: 16, OP: 1, P: 0}[new_state]
    assert breaker.allowance(NOW + 10_000, 16) == expected_allowance


@given(
    steps=st.lists(
        st.tuples(st.sampled_from(list(Signal)), st.floats(0, 1, exclude_max=True)), max_size=60
    )
)
def test_no_sequence_of_answers_leaves_the_breaker_stuck(
    steps: list[tuple[Signal, float]],
) -> None:
    """Whatever legal sequence of answers comes, once every request is answered some
    report may still go out (after the pause): a breaker never shuts delivery for good."""
    breaker = Breaker(initial=2.0, maximum=60.0)
    now = NOW
    out: list[bool] = []  # requests out: True = the probe
    for signal, rand in steps:
        now += 1.0
        if signal in (Signal.SEND, Signal.PROBE):
            if breaker.allowance(now, 16) == 0:
                continue
            out.append(breaker.start())
            continue
        if not out:
            continue
        probe = out.pop(0)
        outcome = {
            "delivered": Delivered(status=200, report_id=None),
            "retry": Retry(status=503, error="", next_attempt_at=now),
            "rejected": Dead(status=400, error=""),
        }[signal.value.removeprefix("probe_")]
        breaker.apply(signal_for(outcome, probe=probe), now=now, rand=rand, not_before=now)
    while out:  # answer the rest: each rejected
        breaker.apply(signal_for(Dead(status=400, error=""), probe=out.pop(0)), now=now)
    assert breaker.allowance(max(now, breaker.resumes_at()), 16) >= 1


def test_idempotency_key_depends_on_key_and_bytes() -> None:
    a = idempotency_key("e1", "EnergyUsage", b"{}")
    assert a == idempotency_key("e1", "EnergyUsage", b"{}")
    assert a != idempotency_key("e1", "EnergyUsage", b"{ }")
    assert a != idempotency_key("e2", "EnergyUsage", b"{}")
