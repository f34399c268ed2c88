"""What opening the database checks, and when it reads the whole file.

Every open (``ecgw run`` and every command) checks only what costs about the same on
a year-old file as on an empty one:

* **the header** (:func:`header_problem`): the file starts with SQLite's magic and a
  sane page size, and is not shorter than the page count its header gives (checked
  when no WAL holds pages the file has not got yet);
* **the WAL and the schema**: the first read replays the WAL (SQLite's recovery) and
  parses the schema; a damaged one is SQLITE_CORRUPT/NOTADB;
* **the schema version** (in :mod:`gateway.store.database`: newer than this ecgw is refused);
* **every b-tree's root** (:func:`probe_btrees`): each table and each full index is
  read from its root page down to its first leaf (a few pages each).

The whole file is read (``PRAGMA quick_check``, :func:`quick_check`) only by ``ecgw
run`` (and ``ecgw hub run``) when the run before it did not stop cleanly
(:func:`unclean_stop`: the ``meta`` table has a ``gateway.started_at`` and no later
``gateway.stopped_at``; the gateway records its stop only when a signal ends it and no
statement met damage while it ran, so a crash, a ``kill -9``, a power cut, a fatal error
or damage seen all count), or when a WAL is beside the file although the last run
stopped cleanly (:data:`WAL_LEFT`: the gateway's close removes its WAL unless a read-only
command outlived it, so it is that command's, a killed command's, or another file's left
beside a restored backup, whose pages SQLite replays without knowing), and by ``ecgw db
check`` (a full ``integrity_check``) on demand. After a clean stop a start costs the same
whatever the file's size.

What the cheap checks cannot see: damage inside a b-tree away from its root and first
leaf (a scribbled leaf in the middle of ``outbox``), an index that disagrees with its
table, a damaged free list or overflow chain, a partial index's pages, and a WAL that is
another file's (SQLite cannot tell: its frames are replayed, and a command's close
checkpoints them into the file). Such damage shows as StoreCorrupt when a statement reads
it: the command stops with one line; the gateway stops (exit 1, whichever loop met it)
without recording a clean stop, so its next start reads the whole file and refuses it.
``ecgw db check`` finds all of it beforehand.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import time
from pathlib import Path

import aiosqlite
import structlog

from gateway.errors import StoreCorrupt

__all__ = [
    "check_header",
    "header_problem",
    "integrity_problems",
    "probe_btrees",
    "quick_check",
    "unclean_stop",
]

log = structlog.get_logger(__name__)

MAGIC = b"SQLite format 3\x00"
HEADER_SIZE = 100
_CORRUPT = frozenset({sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB})


def corrupt(path: Path, problem: str) -> StoreCorrupt:
    """The one error for a file that must not be used: names the problem and what to do."""
    return StoreCorrupt(
        f"database {path} {problem}; it was left untouched. "
        "Restore it from a backup or move it aside to start afresh."
    )


def header_problem(head: bytes, size: int, *, wal_has_frames: bool) -> str | None:
    """What is wrong with a database file's first 100 bytes (``head``) and its ``size``,
    or None. An empty file is a new database (SQLite writes its header at the first commit).
    The page count in the header (offsets 28-31) counts only when it is marked valid
    (offset 92 equal to the change counter at 24) and no WAL holds pages the file may
    not have got yet. An empty file beside a WAL is not a new database: its pages are lost."""
    if size == 0:
        if wal_has_frames:  # the pages are gone; SQLite would start afresh and drop the WAL
            return "is empty (0 bytes) but a WAL is beside it: its pages are missing"
        return None
    if len(head) < HEADER_SIZE or not head.startswith(MAGIC):
        return "is not an SQLite database (its first bytes are not SQLite's header)"
    page_size = int.from_bytes(head[16:18], "big")
    page_size = 65536 if page_size == 1 else page_size
    if not 512 <= page_size <= 65536 or page_size & (page_size - 1):
        return f"has a damaged header (page size {page_size})"
    pages = int.from_bytes(head[28:32], "big")
    counted = head[92:96] == head[24:28]
    if counted and not wal_has_frames and size < pages * page_size:
        return (
            f"is cut short: {size} bytes where its header counts {pages} pages of {page_size} bytes"
        )
    return None


def _read_header(path: Path) -> tuple[bytes, int, bool]:
    """``(first 100 bytes, size, WAL has frames)``: the WAL first, the size last, so that a
    checkpoint running meanwhile (it writes page 1 first, then the pages after it) leaves
    frames in the WAL or a size at least as new as the header."""
    try:
        wal = path.with_name(path.name + "-wal").stat().st_size
    except FileNotFoundError:
        wal = 0
    with path.open("rb") as file:
        head = file.read(HEADER_SIZE)
        size = os.fstat(file.fileno()).st_size
    return head, size, wal > 0


async def check_header(path: Path) -> bool:
    """StoreCorrupt if the header says the file is not (or no longer) a whole database;
    else whether a WAL with something in it is beside the file (read before SQLite opens it).

    A problem counts only if a second look finds the file unchanged: a running gateway
    may be writing the file while a command opens it (a checkpoint, its first commit)."""
    try:
        first = await asyncio.to_thread(_read_header, path)
        problem = header_problem(first[0], first[1], wal_has_frames=first[2])
        if problem is None or await asyncio.to_thread(_read_header, path) != first:
            return first[2]
    except OSError:
        return False  # unreadable: SQLite's own open says why, as a StoreError
    raise corrupt(path, problem)


WAL_LEFT = (
    "a WAL was left beside it after a clean stop (a clean stop removes it unless a read-only "
    "command such as db check outlived the gateway; else a command was killed, or the WAL is "
    "another file's, left beside a restored backup)"
)
"""Why ``ecgw run`` reads the whole file although the last run stopped cleanly."""


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


_BTREES = (
    "SELECT s.type, s.name, s.tbl_name FROM sqlite_schema s "
    "WHERE s.type IN ('table', 'index') AND s.rootpage > 0 AND NOT EXISTS "
    "(SELECT 1 FROM pragma_index_list(s.tbl_name) i WHERE i.name = s.name AND i.partial) "
    "ORDER BY s.rootpage"
)


def probe_statements(btrees: list[tuple[str, str, str]]) -> list[str]:
    """Per table or full index, a statement that reads its root and first leaf only."""
    statements = []
    for kind, name, table in btrees:
        if kind == "table":
            statements.append(f"SELECT 1 FROM {_quoted(name)} NOT INDEXED LIMIT 1")  # noqa: S608
        else:
            statements.append(
                f"SELECT 1 FROM {_quoted(table)} INDEXED BY {_quoted(name)} LIMIT 1"  # noqa: S608
            )
    return statements


async def probe_btrees(conn: aiosqlite.Connection) -> int:
    """Read every table's and full index's root page and first leaf (sqlite3 errors rise;
    the caller translates them). Returns how many b-trees were read.

    One read transaction: a gateway migrating the file meanwhile (a command opening it as
    it starts) cannot drop an index between the listing and its probe."""
    await conn.execute("BEGIN")
    try:
        rows = await conn.execute_fetchall(_BTREES)
        btrees = [(str(kind), str(name), str(table)) for kind, name, table in rows]
        for statement in probe_statements(btrees):
            await conn.execute_fetchall(statement)
    finally:
        await asyncio.shield(conn.rollback())  # nothing was written: only the snapshot ends
    return len(btrees)


_STOP_KEYS = ("gateway.started_at", "gateway.stopped_at")


def unclean_stop(started_at: object, stopped_at: object) -> str | None:
    """Why the last run did not stop cleanly (a start, no stop recorded after it), or None.

    The values are the ``meta`` rows as JSON text (or None when absent), as
    :class:`gateway.store.meta.Meta` writes them."""
    started, stopped = _moment(started_at), _moment(stopped_at)
    if started is None:
        return None  # never started: a new database, or one only commands have used
    if stopped is not None and stopped >= started:
        return None
    return f"the run started at {started:.0f} (epoch seconds) recorded no clean stop"


def _moment(text: object) -> float | None:
    if not isinstance(text, str):
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


async def last_run_unclean(conn: aiosqlite.Connection) -> str | None:
    """:func:`unclean_stop` from the ``meta`` table (None before it exists)."""
    exists = await conn.execute_fetchall(
        "SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = 'meta'"
    )
    if not exists:
        return None
    rows = await conn.execute_fetchall(
        "SELECT key, value FROM meta WHERE key IN (?, ?)", _STOP_KEYS
    )
    values = {str(key): value for key, value in rows}
    return unclean_stop(values.get(_STOP_KEYS[0]), values.get(_STOP_KEYS[1]))


def integrity_problems(rows: list[str], *, limit: int = 20) -> list[str]:
    """The problems ``PRAGMA integrity_check``/``quick_check`` gave, one per line, at most
    ``limit``: SQLite (3.40 and later) may give all of them in one row joined by newlines,
    headed ``*** in database main ***``. Empty: ``ok``."""
    problems: list[str] = []
    for row in rows:
        for line in row.splitlines():
            line = line.strip()
            if line and line != "ok" and not line.startswith("*** in database"):
                problems.append(line)
    return problems[:limit]


async def quick_check(conn: aiosqlite.Connection, path: Path, *, why: str) -> None:
    """``PRAGMA quick_check`` of the whole file, logged with ``why`` and how long it took;
    StoreCorrupt naming the first problems if it is not ``ok``."""
    log.info("database.checking", check="quick_check", path=str(path), why=why)
    began = time.monotonic()
    try:
        rows = [str(r[0]) for r in await conn.execute_fetchall("PRAGMA quick_check")]
    except sqlite3.DatabaseError as exc:  # a page too broken to check: SQLITE_CORRUPT
        if (getattr(exc, "sqlite_errorcode", 0) & 0xFF) not in _CORRUPT:
            raise
        rows = [str(exc)]
    seconds = round(time.monotonic() - began, 3)
    if rows != ["ok"]:
        log.error("database.checked", check="quick_check", ok=False, seconds=seconds)
        problems = integrity_problems(rows, limit=3) or rows[:1]
        raise corrupt(path, f"failed its integrity check ({'; '.join(problems)})")
    log.info("database.checked", check="quick_check", ok=True, seconds=seconds)
