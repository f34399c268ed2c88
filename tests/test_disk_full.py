"""A real full disk under a running ``ecgw run``: 503s, no exit, recovery when space returns.

The state directory is a small tmpfs mounted for the test (root only; skipped
elsewhere: tests/test_database.py makes the same SQLITE_FULL with
``PRAGMA max_page_count`` and runs everywhere). The gateway is a real
subprocess with the sandbox as its API and its webhook open.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import sqlite3
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest

from gateway.intake.signature import sign
from gateway.sandbox import Sandbox, run_sandbox
from tests.kit.gateway import make_config, sandbox_config, toml
from tests.kit.proc import ecgw, start_ecgw

pytestmark = pytest.mark.slow

SECRET = "disk-full-secret"
DISK = "6m"


@contextlib.contextmanager
def small_disk(where: Path) -> Iterator[Path]:
    where.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={DISK},mode=0700", "tmpfs", str(where)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def fill(disk: Path) -> Path:
    """Take every free byte of ``disk`` with one file."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        for size in (1 << 20, 1 << 12, 1):  # big chunks, then the last few bytes
            with contextlib.suppress(OSError):
                while os.write(fd, b"\0" * size):
                    pass
    finally:
        os.close(fd)
    assert os.statvfs(disk).f_bavail == 0
    return filler


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def notification(event_id: str) -> bytes:
    return json.dumps(
        {
            "notificationId": f"n-{event_id}",
            "eventId": event_id,
            "eventCreatedAtUtc": "2026-11-26T00:00:00Z",
            "notificationSentUtc": "2026-11-26T00:00:00Z",
            "notificationType": "UserEligibilityUpdated",
            "payload": {
                "payloadType": "UserEligibility",
                "lastUpdated": "2026-11-26T00:00:00Z",
                "addedUsers": [f"user-{i:05d}" for i in range(2000)],  # ~20 kB a row
                "removedUsers": [],
            },
        }
    ).encode()


async def post(session: aiohttp.ClientSession, url: str, event_id: str) -> int:
    body = notification(event_id)
    headers = {"X-Payload-Signature": sign(body, SECRET), "Content-Type": "application/json"}
    async with session.post(url, data=body, headers=headers) as resp:
        return resp.status


async def post_when_up(session: aiohttp.ClientSession, url: str, event_id: str) -> int:
    async with asyncio.timeout(30):
        while True:
            with contextlib.suppress(aiohttp.ClientConnectionError):
                return await post(session, url, event_id)
            await asyncio.sleep(0.1)


def stored_events(db_path: Path) -> set[str]:
    conn = sqlite3.connect(db_path)
    try:
        return {r[0] for r in conn.execute("SELECT event_id FROM events")}
    finally:
        conn.close()


def integrity(db_path: Path) -> str:
    conn = sqlite3.connect(db_path)
    try:
        return str(conn.execute("PRAGMA integrity_check").fetchone()[0])
    finally:
        conn.close()


@pytest.fixture
async def sandbox() -> AsyncIterator[Sandbox]:
    async with run_sandbox() as sb:
        yield sb


async def test_a_full_disk_answers_503_keeps_running_and_recovers(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    with small_disk(tmp_path / "disk") as disk:
        port = free_port()
        extra = {"webhook": {"listen": f"127.0.0.1:{port}", "path": "/notify", "secret": SECRET}}
        data = sandbox_config(sandbox, disk / "state", extra=extra)
        config_path = tmp_path / "ecgw.toml"
        config_path.write_text(toml(data))
        db_path = make_config(data).db_path
        url = f"http://127.0.0.1:{port}/notify"
        log = tmp_path / "gateway.log"
        proc = await start_ecgw("run", config=config_path, log=log)
        acked: list[str] = []
        try:
            async with aiohttp.ClientSession() as session:
                assert await post_when_up(session, url, "before") == 200
                acked.append("before")
                filler = fill(disk)
                statuses = []
                for i in range(300):  # the WAL may still hold room for a few
                    status = await post(session, url, f"full-{i}")
                    statuses.append(status)
                    if status == 200:
                        acked.append(f"full-{i}")
                    if statuses[-5:] == [503] * 5:
                        break
                assert set(statuses) <= {200, 503}, statuses  # never a 500
                assert statuses[-5:] == [503] * 5, statuses
                await asyncio.sleep(1.0)  # long enough for a crash to show
                assert proc.returncode is None, "the gateway exited on a full disk"
                filler.unlink()  # space returns
                assert await post(session, url, "after") == 200
                acked.append("after")
        finally:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
            code = await asyncio.wait_for(proc.wait(), timeout=30)
        text = log.read_text()
        assert code == 0, text[-3000:]
        assert "webhook.store_failed" in text and "the disk is full" in text
        assert "Traceback" not in text and "damaged" not in text
        assert set(acked) <= stored_events(db_path)  # nothing acknowledged was lost
        assert integrity(db_path) == "ok"

        # Started on a full disk, it stops with one line (not "damaged"), and the next
        # start after space returns serves again: systemd's RestartSec bridges the gap.
        filler = fill(disk)
        result = await asyncio.to_thread(ecgw, "run", config=config_path, timeout=60)
        assert result.returncode == 1, result.stderr[-3000:]
        (line,) = [x for x in result.stderr.splitlines() if x.startswith("ecgw: ")]
        assert str(db_path) in line and "damaged" not in line and "Traceback" not in result.stderr
        filler.unlink()
        proc = await start_ecgw("run", config=config_path, log=log)
        try:
            async with aiohttp.ClientSession() as session:
                assert await post_when_up(session, url, "restarted") == 200
        finally:
            proc.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(proc.wait(), timeout=30) == 0
        assert {*acked, "restarted"} <= stored_events(db_path)
        assert integrity(db_path) == "ok"
