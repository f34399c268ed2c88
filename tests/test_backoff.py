"""The one backoff (gateway.backoff): capped doubling with equal jitter, never a spin."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway import Backoff
from gateway.backoff import backoff_delay, backoff_step


@given(
    attempt=st.integers(1, 100_000),
    rand=st.floats(0, 1, exclude_max=True),
    initial=st.floats(0.001, 100),
    maximum=st.floats(0.001, 100_000),
)
def test_a_delay_is_between_half_its_step_and_its_step(
    attempt: int, rand: float, initial: float, maximum: float
) -> None:
    step = backoff_step(attempt, initial=initial, maximum=maximum)
    assert step == min(maximum, initial * 2.0 ** min(attempt - 1, 62))
    delay = backoff_delay(attempt, initial=initial, maximum=maximum, rand=rand)
    assert step / 2 <= delay <= step


def test_no_failure_no_delay() -> None:
    assert backoff_delay(0, initial=1.0, maximum=60.0, rand=0.9) == 0.0


def test_backoff_doubles_to_a_cap_with_jitter_and_resets() -> None:
    backoff = Backoff(initial=0.5, maximum=30.0, rng=random.Random(7))
    delays = [backoff.next() for _ in range(12)]
    for n, delay in enumerate(delays):
        ceiling = min(30.0, 0.5 * 2**n)
        assert ceiling / 2 <= delay <= ceiling
    assert backoff.failures == 12
    backoff.reset()
    assert backoff.failures == 0
    assert 0.25 <= backoff.next() <= 0.5
    late = [backoff.next() for _ in range(200)]  # no overflow after a long outage
    assert all(15.0 <= delay <= 30.0 for delay in late[10:])


@pytest.mark.parametrize(("initial", "maximum"), [(0, 1), (1, 0), (float("nan"), 1), (1, -1)])
def test_backoff_refuses_what_could_spin(initial: float, maximum: float) -> None:
    with pytest.raises(ValueError, match="finite and positive"):
        Backoff(initial, maximum)
