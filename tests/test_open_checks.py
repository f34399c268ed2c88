"""Opening the database: cheap checks every time, the whole file only after an unclean stop."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
import structlog

from gateway.errors import StoreCorrupt
from gateway.store.backup import check_database
from gateway.store.database import open_database
from gateway.store.inbox import Inbox, NewEvent
from gateway.store.meta import Meta
from gateway.store.open_checks import MAGIC, header_problem, probe_statements, unclean_stop
from tests.kit.live import GatewayProcess
from tests.kit.proc import offline_config

PAGE = 4096


def header(*, page_size: int = PAGE, pages: int = 10, valid: bool = True) -> bytes:
    head = bytearray(100)
    head[:16] = MAGIC
    head[16:18] = (1 if page_size == 65536 else page_size).to_bytes(2, "big")
    head[24:28] = (7).to_bytes(4, "big")  # change counter
    head[28:32] = pages.to_bytes(4, "big")
    head[92:96] = (7 if valid else 6).to_bytes(4, "big")  # version-valid-for
    return bytes(head)


def test_header_problems() -> None:
    assert header_problem(b"", 0, wal_has_frames=False) is None  # a new, empty file
    assert header_problem(header(), 10 * PAGE, wal_has_frames=False) is None
    assert header_problem(header(), 12 * PAGE, wal_has_frames=False) is None  # longer is fine
    assert "not an SQLite database" in str(
        header_problem(b"garbage" * 20, 140, wal_has_frames=False)
    )
    assert "not an SQLite database" in str(header_problem(MAGIC, 16, wal_has_frames=False))
    assert "page size 1000" in str(
        header_problem(header(page_size=1000), 10_000, wal_has_frames=False)
    )
    assert header_problem(header(page_size=65536, pages=1), 65536, wal_has_frames=False) is None
    short = header_problem(header(), 6 * PAGE, wal_has_frames=False)
    assert short is not None and "cut short" in short and "10 pages" in short
    # the WAL may hold the pages a checkpoint had not written yet; an invalid count says nothing
    assert header_problem(header(), 6 * PAGE, wal_has_frames=True) is None
    assert header_problem(header(valid=False), 6 * PAGE, wal_has_frames=False) is None


def test_unclean_stop_from_the_meta_rows() -> None:
    assert unclean_stop(None, None) is None  # never ran
    assert unclean_stop("100.0", "150.5") is None  # stopped cleanly
    assert unclean_stop("100", "100") is None
    assert unclean_stop("100.0", None) is not None  # started, no stop: crash, kill, power cut
    assert unclean_stop("100.0", "null") is not None  # Meta.started() writes a null stop
    assert unclean_stop("200.0", "150.0") is not None  # the stop is an earlier run's
    assert unclean_stop("not json", None) is None
    assert unclean_stop("true", None) is None


def test_probe_statements_read_each_btree_from_its_root() -> None:
    statements = probe_statements([("table", 'we"ird', 'we"ird'), ("index", "by_x", "t")])
    assert statements == [
        'SELECT 1 FROM "we""ird" NOT INDEXED LIMIT 1',
        'SELECT 1 FROM "t" INDEXED BY "by_x" LIMIT 1',
    ]


def event(i: int) -> NewEvent:
    payload = json.dumps({"payloadType": "PriceCurve", "pad": "x" * 900}).encode()
    return NewEvent(f"event-{i:05d}", "PriceCurve", None, payload)


async def _database(path: Path, *, events: int, stopped_cleanly: bool) -> None:
    """A database with ``events`` events whose last run stopped cleanly or not, checkpointed
    into the file and closed (no WAL left)."""
    async with open_database(path) as db:
        await Inbox(db).add_many([event(i) for i in range(events)], via="poll", at=1.0)
        await Meta(db).started(pid=1, now=100.0, webhook_url=None)
        if stopped_cleanly:
            await Meta(db).stopped(now=200.0, reason="signal")


def _root_page(path: Path, name: str) -> int:
    with sqlite3.connect(path) as conn:
        (root,) = conn.execute(
            "SELECT rootpage FROM sqlite_schema WHERE name = ?", (name,)
        ).fetchone()
    conn.close()
    return int(root)


def _middle_leaf(path: Path) -> int:
    """A leaf page of ``events`` that is neither its root nor its first leaf."""
    with sqlite3.connect(path) as conn:
        rows = conn.execute(
            "SELECT pageno FROM dbstat WHERE name = 'events' AND pagetype = 'leaf' ORDER BY path"
        ).fetchall()
    conn.close()
    assert len(rows) > 4, rows
    return int(rows[len(rows) // 2][0])


def _scribble(path: Path, page: int) -> None:
    data = bytearray(path.read_bytes())
    start = (page - 1) * PAGE
    data[start : start + PAGE] = b"\x5a" * PAGE
    path.write_bytes(bytes(data))


async def _open(path: Path, *, full_check_after_crash: bool = False) -> None:
    async with open_database(path, full_check_after_crash=full_check_after_crash):
        pass


async def test_a_damaged_root_page_is_refused_at_every_open(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite3"
    await _database(path, events=50, stopped_cleanly=True)
    _scribble(path, _root_page(path, "outbox_due"))
    before = path.read_bytes()
    with pytest.raises(StoreCorrupt, match="left untouched"):
        await _open(path)
    assert path.read_bytes() == before


async def test_a_file_cut_short_is_refused_at_every_open(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite3"
    await _database(path, events=50, stopped_cleanly=True)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 3 * PAGE])
    with pytest.raises(StoreCorrupt, match="cut short"):
        await _open(path)
    assert len(path.read_bytes()) == len(data) - 3 * PAGE


async def test_damage_inside_a_table_waits_for_a_read_or_db_check_after_a_clean_stop(
    tmp_path: Path,
) -> None:
    """What the cheap checks cannot see: a leaf in the middle of a table. The open works,
    the first read of that page is StoreCorrupt, and ``ecgw db check`` finds it at once."""
    path = tmp_path / "db.sqlite3"
    await _database(path, events=200, stopped_cleanly=True)
    _scribble(path, _middle_leaf(path))
    with structlog.testing.capture_logs() as logs:
        async with open_database(path, full_check_after_crash=True) as db:
            with pytest.raises(StoreCorrupt):
                await db.fetchall("SELECT event_id, length(payload) FROM events NOT INDEXED")
    assert not [e for e in logs if e["event"].startswith("database.check")]
    result = check_database(path)
    assert not result.ok and result.problems


async def test_after_an_unclean_stop_run_reads_the_whole_file_and_says_why(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite3"
    await _database(path, events=200, stopped_cleanly=False)
    with structlog.testing.capture_logs() as logs:
        await _open(path)  # a command: never the whole file
    assert logs == []
    with structlog.testing.capture_logs() as logs:
        await _open(path, full_check_after_crash=True)
    checking, checked = logs
    assert checking["event"] == "database.checking" and checking["check"] == "quick_check"
    assert "no clean stop" in checking["why"]
    assert checked["event"] == "database.checked" and checked["ok"] is True
    _scribble(path, _middle_leaf(path))
    before = path.read_bytes()
    await _open(path)  # the cheap checks do not see it ...
    with pytest.raises(StoreCorrupt, match=r"failed its integrity check.*left untouched"):
        await _open(path, full_check_after_crash=True)  # ... the check after a crash does
    assert path.read_bytes() == before


async def test_run_checks_the_whole_file_after_a_kill_and_not_after_a_clean_stop(
    tmp_path: Path,
) -> None:
    config = offline_config(tmp_path)

    async def start(log: Path) -> GatewayProcess:
        gateway = await GatewayProcess.spawn(config, log)
        await gateway.wait_ready(timeout=30)
        return gateway

    def checks(log: Path) -> list[dict[str, object]]:
        lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
        return [e for e in lines if str(e.get("event", "")).startswith("database.check")]

    first = await start(tmp_path / "first.log")
    await first.kill9()
    second = await start(tmp_path / "second.log")
    assert await second.terminate() == 0
    third = await start(tmp_path / "third.log")
    assert await third.terminate() == 0
    assert checks(tmp_path / "first.log") == []  # a new database
    checking, checked = checks(tmp_path / "second.log")
    assert "no clean stop" in str(checking["why"]) and checked["ok"] is True
    assert checks(tmp_path / "third.log") == []
