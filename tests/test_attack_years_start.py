"""Attack on issue 12's start-up without ``quick_check`` (item 2).

The cheap checks are safe only if every run that may have met damage leaves no clean
stop behind, so that the next ``ecgw run`` reads the whole file. Found:

* damage met while running (a scribbled leaf of ``events``) was swallowed by the
  scheduler's catch-all (``reports.pass_failed`` every 5 s, the gateway up); a SIGTERM then
  recorded a clean stop and the next start skipped the whole-file check;
* a zero-length file beside a WAL that holds frames was taken for a new database: a
  read-only command wrote a fresh schema into it and the WAL was thrown away;
* ``ecgw hub run`` (merged from the fleet work onto issue 12's open) never read the whole
  file, not even after a kill -9, and never recorded a clean stop;
* a WAL left beside a file whose last run stopped cleanly (the gateway's close removes
  its WAL, so it is a crashed command's or, after a restore, another file's) was replayed
  into the file without the whole-file check.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import sqlite3
from pathlib import Path

import pytest

from gateway.errors import StoreCorrupt
from gateway.sandbox import Sandbox
from gateway.store.database import open_database
from gateway.store.inbox import Inbox, NewEvent
from gateway.store.meta import Meta
from tests.kit.gateway import make_config
from tests.kit.live import GatewayProcess
from tests.kit.mosquitto import Mosquitto
from tests.kit.proc import ecgw, offline_config
from tests.test_fleet_hub import broker, hub_config, running_hub, sandbox

__all__ = ["broker", "sandbox"]  # fixtures

PAGE = 4096


def _event(i: int) -> NewEvent:
    payload = json.dumps({"payloadType": "PriceCurve", "pad": "x" * 900}).encode()
    return NewEvent(f"event-{i:05d}", "PriceCurve", None, payload)


async def _stopped_cleanly(path: Path, *, events: int) -> None:
    async with open_database(path) as db:
        for first in range(0, events, 500):
            batch = [_event(i) for i in range(first, min(first + 500, events))]
            await Inbox(db).add_many(batch, via="webhook", at=1.79e9)
        await Meta(db).started(pid=1, now=100.0, webhook_url=None)
        await Meta(db).stopped(now=200.0, reason="signal")


def _scribble_middle_leaf(path: Path) -> None:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        rows = conn.execute(
            "SELECT pageno FROM dbstat WHERE name = 'events' AND pagetype = 'leaf' ORDER BY path"
        ).fetchall()
    page = int(rows[len(rows) // 2][0])
    data = bytearray(path.read_bytes())
    data[(page - 1) * PAGE : page * PAGE] = b"\x5a" * PAGE
    path.write_bytes(bytes(data))


async def test_damage_met_while_running_is_not_a_clean_stop(tmp_path: Path) -> None:
    config = offline_config(tmp_path)
    path = tmp_path / "state" / "ecgw.sqlite3"
    await _stopped_cleanly(path, events=300)  # all new: the first pass reads every one
    _scribble_middle_leaf(path)
    first = await GatewayProcess.spawn(config, tmp_path / "first.log")
    with contextlib.suppress(RuntimeError):  # it may stop before it says it is ready
        await first.wait_ready(timeout=30)
    with contextlib.suppress(TimeoutError):  # its first pass reads every event at once
        await first.wait(timeout=4)
    code = await first.terminate()  # the operator stops it (if it has not stopped itself)
    assert code == 1, first.tail()  # documented: "ecgw run stops with exit 1"
    second = await GatewayProcess.spawn(config, tmp_path / "second.log")
    assert await second.wait(timeout=30) == 1, second.tail()
    assert "failed its integrity check" in (tmp_path / "second.log").read_text()


def test_an_empty_file_beside_a_wal_with_frames_is_refused(tmp_path: Path) -> None:
    config = offline_config(tmp_path)
    path = tmp_path / "state" / "ecgw.sqlite3"
    asyncio.run(_stopped_cleanly(path, events=20))
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as conn:
        conn.execute("PRAGMA wal_autocheckpoint = 0")
        conn.execute("UPDATE events SET plan_note = 'in the WAL only'")
        wal = path.with_name(path.name + "-wal")
        kept = tmp_path / "wal.kept"
        shutil.copy(wal, kept)  # the WAL as it was before the connection's close removes it
    path.write_bytes(b"")  # the file lost its pages (a power cut on a careless file system)
    shutil.copy(kept, wal)
    for command in (("status",), ("events", "list"), ("run",)):
        done = ecgw(*command, config=config, timeout=30)
        assert done.returncode == 1, (command, done.stdout, done.stderr)
        assert "left untouched" in done.stderr and "Traceback" not in done.stderr
        assert path.stat().st_size == 0 and wal.read_bytes() == kept.read_bytes()


async def test_an_empty_file_is_made_a_new_database_that_gives_pages_back(tmp_path: Path) -> None:
    """A gateway killed between creating its file and its first commit leaves 0 bytes."""
    path = tmp_path / "ecgw.sqlite3"
    path.write_bytes(b"")
    async with open_database(path) as db:
        row = await db.fetchone("PRAGMA auto_vacuum")
    assert row is not None and int(row[0]) == 2  # incremental, as any new file


async def _with_anothers_wal(tmp_path: Path) -> Path:
    """A file that stopped cleanly with another file's WAL beside it; returns its path."""
    restored = tmp_path / "state" / "ecgw.sqlite3"
    await _stopped_cleanly(restored, events=3000)
    other = tmp_path / "other" / "ecgw.sqlite3"
    await _stopped_cleanly(other, events=500)
    with contextlib.closing(sqlite3.connect(other, isolation_level=None)) as conn:
        conn.execute("PRAGMA wal_autocheckpoint = 0")
        conn.executemany(
            "INSERT INTO outbox (event_id, kind, body, idempotency_key, source, state, "
            "next_attempt_at, created_at, updated_at) "
            "VALUES (?, 'EnergyUsage', ?, ?, 'planner', 'pending', 0, 0, 0)",
            [(f"o{i}", b"y" * 700, f"k{i}") for i in range(2000)],
        )
        wal = other.with_name(other.name + "-wal")
        shutil.copy(wal, restored.with_name(restored.name + "-wal"))
    return restored


async def test_a_wal_left_after_a_clean_stop_makes_run_read_the_whole_file(
    tmp_path: Path,
) -> None:
    """A restored backup with another file's WAL beside it (operations.md says never to
    leave one; this is what happens when it is): the cheap checks pass, the pages are mixed."""
    restored = await _with_anothers_wal(tmp_path)
    # the cheap checks alone let it through (a copy: a command's close would checkpoint it)
    shutil.copytree(restored.parent, tmp_path / "copy")
    async with open_database(tmp_path / "copy" / "ecgw.sqlite3"):
        pass
    with pytest.raises(StoreCorrupt, match="failed its integrity check") as caught:
        async with open_database(restored, full_check_after_crash=True):
            pass
    assert "\n" not in str(caught.value) and len(str(caught.value)) < 600, str(caught.value)


async def test_db_check_names_each_problem_on_a_line_of_its_own(tmp_path: Path) -> None:
    """SQLite (3.40 here) gives integrity_check's problems as one row joined by newlines:
    the first "problem" was all of them, printed as one 5 KB line of ``\\x0a``."""
    path = await _with_anothers_wal(tmp_path)
    with contextlib.closing(sqlite3.connect(path)):
        pass  # the foreign WAL is checkpointed into the file as it closes
    config = offline_config(tmp_path)
    done = ecgw("db", "check", config=config)
    assert done.returncode == 1, done.stderr
    lines = done.stdout.splitlines()
    assert "integrity_check failed: " in lines[0] and "more)" in lines[0], lines[0][:300]
    assert 1 < len(lines) <= 20
    assert all("\\x0a" not in line and len(line) < 300 for line in lines), lines[0][:300]
    assert not any("*** in database" in line for line in lines)


async def test_the_hub_reads_the_whole_file_after_an_unclean_stop(
    sandbox: Sandbox, broker: Mosquitto, tmp_path: Path
) -> None:
    data = hub_config(sandbox, broker, tmp_path)
    path = make_config(data).db_path
    async with running_hub(data):
        pass  # a clean stop (cancelled, as by SIGTERM)
    async with open_database(path) as db:
        facts = await Meta(db).get_all()
    assert isinstance(facts.get("gateway.stopped_at"), float)  # recorded
    async with open_database(path) as db:  # then a run that was killed, with a scribbled leaf
        for first in range(0, 300, 100):
            await Inbox(db).add_many(
                [_event(i) for i in range(first, first + 100)], via="webhook", at=1.79e9
            )
        await Meta(db).started(pid=1, now=100.0, webhook_url=None)
    _scribble_middle_leaf(path)
    with pytest.raises(StoreCorrupt, match="failed its integrity check"):
        async with running_hub(data):
            pass
