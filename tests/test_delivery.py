"""Delivery against the real sandbox with injected faults: everything arrives exactly once."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from gateway.sandbox import Fault, Sandbox, run_sandbox
from tests.kit.gateway import (
    make_config,
    outbox_rows,
    queue_reports,
    report_body,
    running,
    sandbox_config,
    wait_until,
)


@pytest.fixture
async def sandbox() -> AsyncIterator[Sandbox]:
    async with run_sandbox() as sb:
        yield sb


def accepted_keys(sandbox: Sandbox) -> list[str | None]:
    """Idempotency keys of reports the sandbox accepted as new (not as duplicates)."""
    return [r.idempotency_key for r in sandbox.reports if not r.duplicate]


async def all_delivered(config: object, n: int) -> bool:
    rows = await outbox_rows(config)  # type: ignore[arg-type]
    return len(rows) == n and all(r.state in ("delivered", "dead") for r in rows.values())


async def test_queued_reports_are_delivered_once(sandbox: Sandbox, tmp_path: Path) -> None:
    config = make_config(sandbox_config(sandbox, tmp_path))
    bodies = {f"event-{i}": report_body(f"event-{i}") for i in range(5)}
    async with running(config):
        await queue_reports(config, bodies)
        await sandbox.wait_for_reports(5, timeout=10)
        await wait_until(lambda: all_delivered(config, 5), timeout=10)
    rows = await outbox_rows(config)
    by_id = {r.id: r for r in sandbox.reports}
    for event_id, row in rows.items():
        assert row.state == "delivered"
        assert row.attempts == 1
        assert by_id[row.report_id].raw == bodies[event_id]  # the frozen bytes, unchanged
        assert by_id[row.report_id].idempotency_key == row.idempotency_key
    assert len(accepted_keys(sandbox)) == 5


async def test_every_report_arrives_once_the_api_heals(sandbox: Sandbox, tmp_path: Path) -> None:
    config = make_config(sandbox_config(sandbox, tmp_path))
    sandbox.add_faults(
        Fault(status=503, count=2),
        Fault(status=429, retry_after="1"),
        Fault(drop=True),
        Fault(delay=2.0),  # slower than the 1 s timeout
        Fault(status=500, body="upstream exploded"),
    )
    bodies = {f"event-{i}": report_body(f"event-{i}") for i in range(4)}
    async with running(config):
        await queue_reports(config, bodies)
        await wait_until(lambda: all_delivered(config, 4), timeout=30)
    rows = await outbox_rows(config)
    assert {r.state for r in rows.values()} == {"delivered"}
    assert sorted(accepted_keys(sandbox)) == sorted(r.idempotency_key for r in rows.values())
    # No attempt came before the Retry-After of the 429: not that report's next attempt,
    # and no new attempt of any report (requests already in flight beside it aside).
    attempts = sorted(sandbox.attempts, key=lambda a: a.monotonic)
    (got429,) = [a for a in attempts if a.status == 429]
    same = [a for a in attempts if a.idempotency_key == got429.idempotency_key]
    after = same[same.index(got429) + 1 :]
    assert after and after[0].monotonic - got429.monotonic >= 1.0
    concurrent = 0.05
    for attempt in attempts:
        gap = attempt.monotonic - got429.monotonic
        assert gap <= concurrent or gap >= 1.0, f"an attempt {gap:.3f} s after the 429"
    # every retry of one report sent the same bytes with the same key
    for row in rows.values():
        mine = [a for a in attempts if a.idempotency_key == row.idempotency_key]
        assert {a.raw for a in mine} == {bodies[row.event_id]}


async def test_token_revoked_mid_run_is_refreshed(sandbox: Sandbox, tmp_path: Path) -> None:
    config = make_config(sandbox_config(sandbox, tmp_path))
    async with running(config):
        await queue_reports(config, {"first": report_body("first")})
        await sandbox.wait_for_reports(1, timeout=10)
        sandbox.revoke_tokens()
        await queue_reports(config, {"second": report_body("second")})
        await sandbox.wait_for_reports(2, timeout=10)
        await wait_until(lambda: all_delivered(config, 2), timeout=10)
    assert any(not a.authorized for a in sandbox.attempts), "the old token was refused once"
    assert {r.state for r in (await outbox_rows(config)).values()} == {"delivered"}


async def test_a_rejected_report_goes_dead_and_the_others_go_on(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    config = make_config(sandbox_config(sandbox, tmp_path))
    bad = b'{"eventId":"bad","payloads":[{"payloadType":"EnergyUsage","resolution":"01:00:00"}]}'
    bodies = {"good-1": report_body("good-1"), "bad": bad, "good-2": report_body("good-2")}
    with capture_logs() as logs:
        async with running(config):
            await queue_reports(config, bodies)
            await wait_until(lambda: all_delivered(config, 3), timeout=10)
    rows = await outbox_rows(config)
    assert rows["bad"].state == "dead"
    assert rows["bad"].last_status == 400
    assert "resourceId" in (rows["bad"].last_error or "")  # the API's answer is kept
    assert rows["good-1"].state == rows["good-2"].state == "delivered"
    # Each recorded outcome is logged once, naming the event it belongs to.
    outcomes = {
        (line["event"], line["event_id"], line["kind"])
        for line in logs
        if line["event"] in ("outbox.delivered", "outbox.dead")
    }
    assert outcomes == {
        ("outbox.delivered", "good-1", "EnergyUsage"),
        ("outbox.delivered", "good-2", "EnergyUsage"),
        ("outbox.dead", "bad", "EnergyUsage"),
    }


async def test_while_the_api_is_down_the_gateway_backs_off_as_a_whole(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    config = make_config(
        sandbox_config(
            sandbox,
            tmp_path,
            delivery={"backoff_initial": "200ms", "backoff_max": "1s", "concurrency": 8},
        )
    )
    sandbox.add_faults(Fault(status=503, count=10_000))
    bodies = {f"event-{i:02d}": report_body(f"event-{i:02d}") for i in range(20)}
    async with running(config):
        await queue_reports(config, bodies)
        await wait_until(lambda: _attempted(sandbox, 1), timeout=10)
        await wait_until(lambda: _elapsed(sandbox, 3.0), timeout=10)
        start = sandbox.attempts[0].monotonic
        steady = [a for a in sandbox.attempts if 1.0 <= a.monotonic - start <= 3.0]
        sandbox.clear_faults()
        await wait_until(lambda: all_delivered(config, 20), timeout=30)
    # 20 reports retried each on its own backoff (capped at 1 s) would make 40 or more
    # attempts in those 2 s; backing off as a whole sends one spaced probe at a time.
    assert len(steady) <= 5, f"{len(steady)} attempts in 2 s while the API was down"
    gaps = [b.monotonic - a.monotonic for a, b in itertools.pairwise(steady)]
    assert all(g >= 0.2 for g in gaps), gaps
    assert len(accepted_keys(sandbox)) == 20


async def _attempted(sandbox: Sandbox, n: int) -> bool:
    return len(sandbox.attempts) >= n


async def _elapsed(sandbox: Sandbox, seconds: float) -> bool:
    import time

    return time.monotonic() - sandbox.attempts[0].monotonic >= seconds


async def test_a_lost_2xx_is_resent_with_the_same_key(sandbox: Sandbox, tmp_path: Path) -> None:
    config = make_config(sandbox_config(sandbox, tmp_path))
    sandbox.add_faults(Fault(drop_after_accept=True))
    async with running(config):
        await queue_reports(config, {"e": report_body("e")})
        await wait_until(lambda: all_delivered(config, 1), timeout=10)
    (row,) = (await outbox_rows(config)).values()
    assert row.state == "delivered" and row.attempts == 2
    first, second = sandbox.reports
    assert (first.duplicate, second.duplicate) == (False, True)
    assert first.id == second.id == row.report_id


async def test_the_gateway_outlives_a_database_locked_for_long(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    """Another process holds the write lock past the 10 s busy timeout while a POST is in
    flight: recording its outcome fails, is kept, and succeeds once the lock is gone."""
    import asyncio
    import sqlite3

    config = make_config(sandbox_config(sandbox, tmp_path, delivery={"timeout": "5s"}))
    sandbox.add_faults(Fault(delay=1.0))
    async with running(config):
        await queue_reports(config, {"held": report_body("held")})

        async def in_flight() -> bool:
            rows = await outbox_rows(config)
            return bool(rows) and rows["held"].state == "in_flight"

        await wait_until(in_flight, timeout=10)
        blocker = sqlite3.connect(config.db_path, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        try:
            await sandbox.wait_for_reports(1, timeout=10)  # answered while the lock is held
            await asyncio.sleep(11.0)  # the keeper's commit gives up after 10 s
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        await wait_until(lambda: all_delivered(config, 1), timeout=15)
    (row,) = (await outbox_rows(config)).values()
    assert row.state == "delivered" and row.report_id == sandbox.reports[0].id
    assert len([r for r in sandbox.reports if not r.duplicate]) == 1


async def test_a_rejected_probe_ends_the_probe_and_delivery_goes_on(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    """The API is down (503), so one report probes; the probe is answered 400 (its report
    goes dead). The breaker must not stay "probing": the other reports still go out."""
    config = make_config(sandbox_config(sandbox, tmp_path, delivery={"concurrency": 1}))
    sandbox.add_faults(Fault(status=503), Fault(status=400, body='"resourceId: unknown"'))
    bodies = {f"event-{i}": report_body(f"event-{i}") for i in range(3)}
    async with running(config):
        await queue_reports(config, bodies)
        await wait_until(lambda: all_delivered(config, 3), timeout=10)
    rows = await outbox_rows(config)
    states = sorted(r.state for r in rows.values())
    assert states == ["dead", "delivered", "delivered"]
    (dead,) = [r for r in rows.values() if r.state == "dead"]
    assert dead.last_status == 400
    assert [a.status for a in sandbox.attempts[:2]] == [503, 400]
    assert len(accepted_keys(sandbox)) == 2
