"""What the database file holds, and giving its free pages back (``ecgw db stats|vacuum``).

Per table, rows (``COUNT(*)``) and bytes: the pages of the table and its indexes from the
``dbstat`` virtual table when this SQLite has it (the bytes are exact, ``exact=True``),
else the table's share of the file estimated from its rows (``exact=False``). What
retention would drop now is counted with the rules the gateway runs
(:data:`gateway.store.retention.RULES`). Plain ``sqlite3`` on a read-only connection in a
worker thread, like :mod:`gateway.store.backup`: safe beside a running gateway.

``vacuum_database`` turns on ``auto_vacuum = INCREMENTAL`` and rewrites the file once
(``VACUUM``): a database made before it gives freed pages back only after that. It
needs the gateway stopped (it holds the write lock for the whole rewrite, seconds to
minutes on an SD card), and free disk space about the size of the file.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from gateway.errors import StoreError
from gateway.store.backup import read_only
from gateway.store.database import BUSY_TIMEOUT_MS, store_error
from gateway.store.retention import RULES, params_at

__all__ = ["DbStats", "TableStats", "database_stats", "vacuum_database"]


@dataclass(frozen=True, slots=True)
class TableStats:
    name: str
    rows: int
    bytes: int


@dataclass(frozen=True, slots=True)
class DbStats:
    path: Path
    file_bytes: int
    wal_bytes: int
    page_size: int
    pages: int
    free_pages: int
    auto_vacuum: str
    exact: bool
    tables: tuple[TableStats, ...]
    retention: tuple[tuple[str, int, int], ...]
    """Per rule: rows retention would drop now, and the bytes of their bodies or payloads
    (rows deleted whole: their share of the table's bytes)."""


_AUTO_VACUUM = {0: "none", 1: "full", 2: "incremental"}


def _one(conn: sqlite3.Connection, sql: str, params: tuple[object, ...] = ()) -> int:
    row = conn.execute(sql, params).fetchone()
    return int(row[0] or 0) if row else 0


def _table_bytes(conn: sqlite3.Connection) -> dict[str, int] | None:
    """Bytes per table, its indexes included, from ``dbstat``; None without it."""
    try:
        pages = conn.execute("SELECT name, SUM(pgsize) FROM dbstat GROUP BY name").fetchall()
    except sqlite3.OperationalError:
        return None
    owner = dict(conn.execute("SELECT name, tbl_name FROM sqlite_schema").fetchall())
    found: dict[str, int] = {}
    for name, size in pages:
        table = owner.get(name, name)
        found[table] = found.get(table, 0) + int(size)
    return found


def _stats(conn: sqlite3.Connection, path: Path, now: float) -> DbStats:
    page_size = _one(conn, "PRAGMA page_size")
    pages = _one(conn, "PRAGMA page_count")
    free = _one(conn, "PRAGMA freelist_count")
    names = [
        r[0]
        for r in conn.execute(
            "SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite_%' "
            "ORDER BY name"
        )
    ]
    rows = {name: _one(conn, f'SELECT COUNT(*) FROM "{name}"') for name in names}  # noqa: S608
    sizes = _table_bytes(conn)
    exact = sizes is not None
    if sizes is None:  # an estimate: the used pages shared out by rows
        used = (pages - free) * page_size
        total = sum(rows.values()) or 1
        sizes = {name: used * count // total for name, count in rows.items()}
    tables = tuple(TableStats(n, rows[n], sizes.get(n, 0)) for n in names)
    params = (*params_at(now), -1)  # ?4: the pass's slice limit; -1 is none
    due = []
    for rule in RULES:
        count = _one(
            conn,
            f"SELECT COUNT(*) FROM (SELECT 1 FROM {rule.source} WHERE {rule.where} LIMIT ?4)",  # noqa: S608
            params,
        )
        if rule.blob is not None:
            size = _one(
                conn,
                f"SELECT SUM(n) FROM (SELECT length({rule.blob}) AS n FROM {rule.source} "  # noqa: S608
                f"WHERE {rule.where} LIMIT ?4)",
                params,
            )
        else:
            size = sizes.get(rule.table, 0) * count // max(rows.get(rule.table, 0), 1)
        due.append((rule.name, count, size))
    wal = path.with_name(path.name + "-wal")
    return DbStats(
        path=path,
        file_bytes=path.stat().st_size,
        wal_bytes=wal.stat().st_size if wal.exists() else 0,
        page_size=page_size,
        pages=pages,
        free_pages=free,
        auto_vacuum=_AUTO_VACUUM.get(_one(conn, "PRAGMA auto_vacuum"), "?"),
        exact=exact,
        tables=tables,
        retention=tuple(due),
    )


def database_stats(path: Path, *, now: float | None = None) -> DbStats:
    """What ``path`` holds (blocking; a thread)."""
    with read_only(path) as conn:
        try:
            return _stats(conn, path, time.time() if now is None else now)
        except sqlite3.Error as exc:
            raise store_error(exc, f"cannot read {path}") from exc


def vacuum_database(path: Path) -> tuple[int, int]:
    """Switch ``path`` to incremental auto_vacuum and rewrite it; (bytes before, after).

    The caller holds the state directory (no gateway runs on it)."""
    if not path.is_file():
        raise StoreError(f"no database at {path}")
    before = path.stat().st_size
    try:
        with contextlib.closing(
            sqlite3.connect(path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
        ) as conn:
            conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
            conn.execute("VACUUM")
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    except sqlite3.Error as exc:
        raise store_error(exc, f"cannot vacuum {path}") from exc
    return before, path.stat().st_size
