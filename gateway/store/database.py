"""The one SQLite database: open, check, migrate, and short write transactions.

WAL journal, ``synchronous=FULL`` (a committed transaction survives a power
cut), versioned migrations in :mod:`gateway.store.schema`, and ``PRAGMA
quick_check`` at start. A corrupt or unreadable file raises
:class:`StoreCorrupt` and is never deleted or overwritten.

Transactions are short and never span a network await: callers gather what
they need, then write in one ``async with db.write() as conn:`` block.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

import aiosqlite

from gateway.errors import StoreCorrupt, StoreError
from gateway.store.schema import MIGRATIONS

__all__ = ["Database", "open_database"]


class Database:
    """An open database. Built by :func:`open_database`; do not construct directly."""

    def __init__(self, conn: aiosqlite.Connection, path: Path) -> None:
        self.conn = conn
        self.path = path
        self._writing = asyncio.Lock()

    @contextlib.asynccontextmanager
    async def write(self) -> AsyncIterator[aiosqlite.Connection]:
        """One ``BEGIN IMMEDIATE`` ... ``COMMIT`` transaction; rolled back on error.

        Writers on this connection take turns (one transaction at a time).
        """
        async with self._writing, self._transaction() as conn:
            yield conn

    @contextlib.asynccontextmanager
    async def _transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        try:
            await self.conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise StoreError(f"cannot start a transaction on {self.path}: {exc}") from exc
        except BaseException:
            # Cancelled while BEGIN was on its way to SQLite's thread: it still runs there,
            # so roll back behind it, or the next writer finds a transaction left open.
            await self._roll_back()
            raise
        try:
            yield self.conn
        except BaseException:
            await self._roll_back()
            raise
        try:
            await self.conn.commit()
        except sqlite3.Error as exc:
            await self._roll_back()
            raise StoreError(f"cannot commit to {self.path}: {exc}") from exc
        except BaseException:
            await self._roll_back()  # after the COMMIT in SQLite's queue: a no-op if it ran
            raise

    async def _roll_back(self) -> None:
        """Roll back whatever is open (nothing: a no-op), even from a cancelled task."""
        await asyncio.shield(self.conn.rollback())

    async def write_one(self, sql: str, params: Iterable[Any] = ()) -> list[sqlite3.Row]:
        """One write statement as a transaction of its own, in its turn with :meth:`write`:
        SQLite commits it as it ends (all of it or nothing), in one hand-off to its thread
        where ``write()`` takes three. Returns the statement's rows (``RETURNING``)."""
        async with self._writing:
            try:
                return list(await self.conn.execute_fetchall(sql, tuple(params)))
            except sqlite3.Error as exc:
                raise StoreError(f"cannot write to {self.path}: {exc}") from exc

    async def fetchall(self, sql: str, params: Iterable[Any] = ()) -> list[sqlite3.Row]:
        try:  # one hand-off to SQLite's thread, not three (execute, fetch, close)
            return list(await self.conn.execute_fetchall(sql, tuple(params)))
        except sqlite3.Error as exc:
            raise StoreError(f"cannot read {self.path}: {exc}") from exc

    async def fetchone(self, sql: str, params: Iterable[Any] = ()) -> sqlite3.Row | None:
        rows = await self.fetchall(sql, params)
        return rows[0] if rows else None


async def _configure(conn: aiosqlite.Connection) -> None:
    await conn.execute("PRAGMA journal_mode = WAL")
    await conn.execute("PRAGMA synchronous = FULL")
    await conn.execute("PRAGMA foreign_keys = ON")


async def _quick_check(conn: aiosqlite.Connection, path: Path) -> None:
    async with conn.execute("PRAGMA quick_check") as cur:
        rows = [r[0] for r in await cur.fetchall()]
    if rows != ["ok"]:
        detail = "; ".join(str(r) for r in rows[:3])
        raise StoreCorrupt(
            f"database {path} failed its integrity check ({detail}); it was left untouched. "
            "Restore it from a backup or move it aside to start afresh."
        )


def _check_version(version: int) -> None:
    if version > len(MIGRATIONS):
        raise StoreError(
            f"database schema version {version} is newer than this ecgw knows "
            f"({len(MIGRATIONS)}); upgrade ecgw"
        )


async def _migrate(conn: aiosqlite.Connection) -> None:
    """Run the migrations this file lacks. Each step re-reads the version inside its own
    write lock, so processes opening a new database at the same moment take turns."""
    async with conn.execute("PRAGMA user_version") as cur:
        row = await cur.fetchone()
    _check_version(int(row[0]) if row else 0)
    if row and int(row[0]) == len(MIGRATIONS):
        return  # the usual case: no write lock taken (CLI readers beside a running gateway)
    while True:
        await conn.execute("BEGIN IMMEDIATE")
        try:
            async with conn.execute("PRAGMA user_version") as cur:
                row = await cur.fetchone()
            version = int(row[0]) if row else 0
            _check_version(version)
            if version == len(MIGRATIONS):
                await conn.rollback()
                return
            for statement in MIGRATIONS[version].split(";\n"):
                if statement.strip():
                    await conn.execute(statement)
            await conn.execute(f"PRAGMA user_version = {version + 1}")
        except BaseException:
            await conn.rollback()
            raise
        await conn.commit()


@contextlib.asynccontextmanager
async def open_database(path: Path) -> AsyncIterator[Database]:
    """Open (creating if missing), check and migrate the database at ``path``."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreError(f"cannot create state directory {path.parent}: {exc.strerror}") from exc
    existed = path.exists()  # noqa: ASYNC240 - one stat at start-up
    try:
        conn = await aiosqlite.connect(path, isolation_level=None)
    except sqlite3.Error as exc:
        raise StoreError(f"cannot open database {path}: {exc}") from exc
    try:
        conn.row_factory = sqlite3.Row
        try:
            await conn.execute("PRAGMA busy_timeout = 10000")
            if existed:  # check before anything could write to the file
                await _quick_check(conn, path)
            await _configure(conn)
            await _migrate(conn)
        except sqlite3.DatabaseError as exc:
            if "not a database" in str(exc) or "malformed" in str(exc):
                raise StoreCorrupt(
                    f"{path} is not a usable SQLite database ({exc}); it was left untouched"
                ) from exc
            raise StoreError(f"cannot prepare database {path}: {exc}") from exc
        yield Database(conn, path)
    finally:
        await conn.close()
