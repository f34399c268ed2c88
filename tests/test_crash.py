"""kill -9 of ``ecgw run`` at named points and at random moments, then restart.

Nothing committed may be lost, no row may stay ``in_flight``, and SQLite's
``PRAGMA integrity_check`` must say ``ok``. The gateway runs as a real
subprocess; the sandbox runs in the test's loop.
"""

from __future__ import annotations

import asyncio
import json
import random
import signal
import socket
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from gateway.config import Config
from gateway.intake.signature import sign
from gateway.sandbox import Fault, Sandbox, run_sandbox
from tests.kit.gateway import (
    make_config,
    outbox_rows,
    report_body,
    sandbox_config,
    toml,
    wait_until,
)
from tests.kit.proc import ecgw, start_ecgw

pytestmark = pytest.mark.slow


@pytest.fixture
async def sandbox() -> AsyncIterator[Sandbox]:
    async with run_sandbox(push_retry_delays=(0.1, 0.2, 0.4)) as sb:
        yield sb


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def setup(tmp_path: Path, sandbox: Sandbox, *, webhook: bool = False) -> tuple[Path, Config]:
    extra: dict[str, Any] = {}
    if webhook:
        extra["webhook"] = {
            "listen": f"127.0.0.1:{free_port()}",
            "path": "/notify",
            "secret": "crash-test-secret",
        }
    data = sandbox_config(sandbox, tmp_path / "state", extra=extra, delivery={"timeout": "2s"})
    path = tmp_path / "ecgw.toml"
    path.write_text(toml(data))
    return path, make_config(data)


async def _heartbeat_after(config: Config, moment: float) -> bool:
    from gateway.store.database import open_database
    from gateway.store.meta import Meta

    async with open_database(config.db_path) as db:
        beat = (await Meta(db).get_all()).get("gateway.started_at")
    return isinstance(beat, float) and beat >= moment


def integrity(config: Config) -> str:
    conn = sqlite3.connect(config.db_path)
    try:
        return str(conn.execute("PRAGMA integrity_check").fetchone()[0])
    finally:
        conn.close()


async def kill9(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.send_signal(signal.SIGKILL)
    await proc.wait()


async def all_delivered(config: Config, n: int) -> bool:
    rows = await outbox_rows(config)
    return len(rows) == n and all(r.state == "delivered" for r in rows.values())


def accepted_once(sandbox: Sandbox, config_rows: dict[str, Any]) -> None:
    """Each report was accepted as new exactly once (repeats carried the same key)."""
    fresh = [r.idempotency_key for r in sandbox.reports if not r.duplicate]
    assert sorted(fresh) == sorted(r.idempotency_key for r in config_rows.values())


async def finish(tmp_path: Path, path: Path, config: Config, sandbox: Sandbox, n: int) -> None:
    """Restart without crash points and let everything be delivered; then check."""
    started = time.time()
    proc = await start_ecgw("run", config=path, log=tmp_path / "final.log")
    try:
        await wait_until(lambda: all_delivered(config, n), timeout=30)
        await wait_until(lambda: _heartbeat_after(config, started), timeout=30)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), timeout=15) == 0
    rows = await outbox_rows(config)
    assert not [r for r in rows.values() if r.state == "in_flight"]
    accepted_once(sandbox, rows)
    assert integrity(config) == "ok"


async def test_killed_right_after_queueing(sandbox: Sandbox, tmp_path: Path) -> None:
    path, config = setup(tmp_path, sandbox)
    report = tmp_path / "r.json"
    report.write_bytes(report_body("evt-q"))
    result = await asyncio.to_thread(
        ecgw, "report", "submit", str(report), config=path, env={"ECGW_CRASH_AT": "outbox.queued"}
    )
    assert result.returncode == -signal.SIGKILL
    assert [r.state for r in (await outbox_rows(config)).values()] == ["pending"]
    await finish(tmp_path, path, config, sandbox, 1)


@pytest.mark.parametrize("point", ["delivery.sent", "delivery.answered_2xx"])
async def test_killed_after_the_post_was_answered(
    sandbox: Sandbox, tmp_path: Path, point: str
) -> None:
    path, config = setup(tmp_path, sandbox)
    report = tmp_path / "r.json"
    report.write_bytes(report_body("evt-p"))
    assert (
        await asyncio.to_thread(ecgw, "report", "submit", str(report), config=path)
    ).returncode == 0
    proc = await start_ecgw("run", config=path, env={"ECGW_CRASH_AT": point})
    assert await asyncio.wait_for(proc.wait(), timeout=20) == -signal.SIGKILL
    (row,) = (await outbox_rows(config)).values()
    assert row.state == "in_flight"  # the 2xx was never recorded...
    assert len(sandbox.reports) == 1  # ...though the API has the report
    await finish(tmp_path, path, config, sandbox, 1)
    (row,) = (await outbox_rows(config)).values()
    assert row.report_id == sandbox.reports[0].id  # the resend was recognised by its key


async def test_killed_while_the_post_is_in_flight(sandbox: Sandbox, tmp_path: Path) -> None:
    path, config = setup(tmp_path, sandbox)
    sandbox.add_faults(Fault(delay=1.5))
    report = tmp_path / "r.json"
    report.write_bytes(report_body("evt-f"))
    assert (
        await asyncio.to_thread(ecgw, "report", "submit", str(report), config=path)
    ).returncode == 0
    proc = await start_ecgw("run", config=path)
    try:
        await wait_until(lambda: _in_flight(config), timeout=20)
    finally:
        await kill9(proc)
    await finish(tmp_path, path, config, sandbox, 1)


async def _in_flight(config: Config) -> bool:
    return any(r.state == "in_flight" for r in (await outbox_rows(config)).values())


async def test_killed_at_random_moments(sandbox: Sandbox, tmp_path: Path) -> None:
    path, config = setup(tmp_path, sandbox, webhook=True)
    assert config.webhook is not None
    hook_url = f"http://{config.webhook.listen}{config.webhook.path}"
    rng = random.Random(20261126)
    queued = 0
    sandbox.add_faults(
        Fault(status=503, count=3),
        Fault(delay=0.5, count=5),
        Fault(drop_after_accept=True, count=2),
        Fault(drop=True, count=2),
    )
    import aiohttp

    async with aiohttp.ClientSession() as session:
        for round_ in range(6):
            proc = await start_ecgw("run", config=path, log=tmp_path / "rounds.log")
            try:
                bodies = {
                    f"evt-{round_}-{i}": report_body(f"evt-{round_}-{i}")
                    for i in range(rng.randint(3, 8))
                }
                for event_id, body in bodies.items():
                    report = tmp_path / f"{event_id}.json"
                    report.write_bytes(body)
                    await asyncio.to_thread(ecgw, "report", "submit", str(report), config=path)
                queued += len(bodies)
                pushes = [_push_event(session, hook_url, f"push-{round_}-{i}") for i in range(5)]
                await asyncio.sleep(rng.uniform(0.2, 1.5))
                acked = await asyncio.gather(*pushes)
            finally:
                await kill9(proc)
            for event_id, status in acked:
                if status == 200:  # acknowledged, so it must have been committed
                    assert await _has_event(config, event_id), event_id
            assert integrity(config) == "ok"
    await finish(tmp_path, path, config, sandbox, queued)


async def _push_event(session: Any, url: str, event_id: str) -> tuple[str, int | None]:
    body = json.dumps(
        {
            "notificationId": f"n-{event_id}",
            "eventId": event_id,
            "eventCreatedAtUtc": "2026-11-26T00:00:00Z",
            "notificationSentUtc": "2026-11-26T00:00:00Z",
            "notificationType": "UserEligibilityUpdated",
            "payload": {
                "payloadType": "UserEligibility",
                "lastUpdated": "2026-11-26T00:00:00Z",
                "addedUsers": ["u"],
                "removedUsers": [],
            },
        }
    ).encode()
    for _ in range(40):  # the gateway may still be starting
        try:
            async with session.post(
                url,
                data=body,
                headers={
                    "X-Payload-Signature": sign(body, "crash-test-secret"),
                    "Content-Type": "application/json",
                },
            ) as resp:
                return event_id, resp.status
        except OSError:
            await asyncio.sleep(0.05)
    return event_id, None


async def _has_event(config: Config, event_id: str) -> bool:
    from gateway.store.database import open_database
    from gateway.store.inbox import Inbox

    async with open_database(config.db_path) as db:
        return await Inbox(db).get(event_id) is not None
