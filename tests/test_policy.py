"""The pure delivery policy: what each answer means, backoff, Retry-After, the breaker."""

from __future__ import annotations

import email.utils

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.delivery.policy import (
    Breaker,
    Dead,
    Delivered,
    Retry,
    backoff_delay,
    classify,
    idempotency_key,
    parse_retry_after,
)

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


@pytest.mark.parametrize("status", [None, 401, 408, 425, 429, 500, 502, 503, 504, 599])
def test_temporary_failures_retry(status: int | None) -> None:
    assert isinstance(outcome(status), Retry)


@pytest.mark.parametrize("status", [400, 403, 404, 405, 409, 410, 413, 415, 422])
def test_other_4xx_is_dead(status: int) -> None:
    assert isinstance(outcome(status), Dead)


def test_retry_after_is_a_floor() -> None:
    result = outcome(429, retry_after=120.0, rand=0.0)
    assert isinstance(result, Retry) and result.next_attempt_at == NOW + 120.0


@given(attempt=st.integers(1, 10_000), rand=st.floats(0, 1, exclude_max=True))
def test_backoff_is_full_jitter_and_capped(attempt: int, rand: float) -> None:
    delay = backoff_delay(attempt, initial=2.0, maximum=600.0, rand=rand)
    assert 0.0 <= delay <= min(600.0, 2.0 * 2 ** min(attempt - 1, 20))


def test_retry_after_forms() -> None:
    assert parse_retry_after("30", now=NOW, cap=3600) == 30.0
    assert parse_retry_after("999999", now=NOW, cap=3600) == 3600.0
    date = email.utils.formatdate(NOW + 90, usegmt=True)
    assert parse_retry_after(date, now=NOW, cap=3600) == pytest.approx(90.0)
    past = email.utils.formatdate(NOW - 90, usegmt=True)
    assert parse_retry_after(past, now=NOW, cap=3600) == 0.0
    assert parse_retry_after("soon", now=NOW, cap=3600) is None
    assert parse_retry_after(None, now=NOW, cap=3600) is None


def test_breaker_pauses_everything_then_probes_with_one() -> None:
    breaker = Breaker(initial=2.0, maximum=60.0)
    assert breaker.allowance(NOW, 16) == 16
    breaker.failed(now=NOW, rand=0.5, not_before=NOW + 30)
    assert breaker.allowance(NOW + 29.9, 16) == 0
    assert breaker.allowance(NOW + 30.0, 16) == 1
    breaker.started(1)
    assert breaker.allowance(NOW + 31.0, 15) == 0, "one probe at a time"
    breaker.failed(now=NOW + 32, rand=0.5, not_before=NOW + 33)
    assert breaker.allowance(NOW + 32.5, 16) == 0
    breaker.succeeded()
    assert breaker.allowance(NOW + 40, 16) == 16


def test_idempotency_key_depends_on_key_and_bytes() -> None:
    a = idempotency_key("e1", "EnergyUsage", b"{}")
    assert a == idempotency_key("e1", "EnergyUsage", b"{}")
    assert a != idempotency_key("e1", "EnergyUsage", b"{ }")
    assert a != idempotency_key("e2", "EnergyUsage", b"{}")
