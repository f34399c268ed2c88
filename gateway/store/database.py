"""The one SQLite database: open, check, migrate, short write transactions, snapshot reads.

WAL journal, ``synchronous=FULL`` (a committed transaction survives a power
cut), versioned migrations in :mod:`gateway.store.schema`. Opening checks what is
cheap (header, WAL, schema and its version, each b-tree's root); ``ecgw run`` reads
the whole file (``PRAGMA quick_check``) only after a run that did not stop cleanly
(:mod:`gateway.store.open_checks` says what each check sees). A corrupt or unreadable
file raises :class:`StoreCorrupt` and is never deleted or overwritten.

Two connections: writes go through the writer, one ``BEGIN IMMEDIATE`` ...
``COMMIT`` at a time (``async with db.write() as conn:``); reads
(:meth:`Database.fetchall`) go through a read-only reader, where WAL gives each
statement a snapshot of what was committed, so a read never sees a
transaction that is still open or is later rolled back. Transactions are short
and never span a network await: callers gather what they need, then write.

Every sqlite3 error leaves as :class:`StoreError` (:class:`StoreCorrupt` only for
SQLITE_CORRUPT and SQLITE_NOTADB). A full disk (SQLITE_FULL) is a StoreError that
says so: nothing of the transaction was stored, and the same connection writes
again once there is room. The WAL is kept small: SQLite checkpoints it every
``WAL_AUTOCHECKPOINT`` pages and cuts the file back to ``WAL_SIZE_LIMIT`` when it
restarts it; :meth:`Database.truncate_wal` (run by the heartbeat) empties it.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import sqlite3
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

import aiosqlite

from gateway.errors import ConfigError, StoreCorrupt, StoreError
from gateway.store.open_checks import (
    check_header,
    corrupt,
    last_run_unclean,
    probe_btrees,
    quick_check,
)
from gateway.store.schema import MIGRATIONS

__all__ = [
    "LOCK_FILE",
    "WAL_AUTOCHECKPOINT",
    "WAL_SIZE_LIMIT",
    "Database",
    "hold_state_dir",
    "open_database",
]

BUSY_TIMEOUT_MS = 10_000
CHECKPOINT_BUSY_TIMEOUT_MS = 200  # truncate_wal gives way to a slow reader rather than wait
WAL_AUTOCHECKPOINT = 1000  # pages (SQLite's default, stated): about 4 MB of WAL at most
WAL_SIZE_LIMIT = 1024 * 1024  # bytes of WAL kept on disk after a checkpoint restarts it

LOCK_FILE = "ecgw.lock"  # in the state directory: held by the running gateway, holds its PID

_CORRUPT = frozenset({sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB})


def store_error(exc: sqlite3.Error, doing: str) -> StoreError:
    """The StoreError for a sqlite3 error met while ``doing`` (e.g. "cannot write to x")."""
    code = (getattr(exc, "sqlite_errorcode", None) or 0) & 0xFF  # primary code, no extended bits
    name = getattr(exc, "sqlite_errorname", None)
    detail = f"{exc} [{name}]" if name else str(exc)
    if code in _CORRUPT:
        return StoreCorrupt(f"{doing}: the database is damaged ({detail})")
    if code == sqlite3.SQLITE_FULL:
        return StoreError(f"{doing}: the disk is full ({detail}); nothing of it was stored")
    if code == sqlite3.SQLITE_IOERR:
        return StoreError(f"{doing}: {detail}; is the disk full, read-only or failing?")
    return StoreError(f"{doing}: {detail}")


class Database:
    """An open database. Built by :func:`open_database`; do not construct directly."""

    def __init__(
        self, conn: aiosqlite.Connection, reader: aiosqlite.Connection, path: Path
    ) -> None:
        self.conn = conn  # the writer: use it only inside ``write()``
        self._reader = reader
        self.path = path
        self._writing = asyncio.Lock()

    @contextlib.asynccontextmanager
    async def write(self) -> AsyncIterator[aiosqlite.Connection]:
        """One ``BEGIN IMMEDIATE`` ... ``COMMIT`` transaction; rolled back on error.

        Writers take turns (one transaction at a time). A sqlite3 error raised in the
        block leaves it as StoreError, after the rollback.
        """
        async with self._writing, self._transaction() as conn:
            yield conn

    @contextlib.asynccontextmanager
    async def _transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        try:
            await self.conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise store_error(exc, f"cannot start a transaction on {self.path}") from exc
        except BaseException:
            # Cancelled while BEGIN was on its way to SQLite's thread: it still runs there,
            # so roll back behind it, or the next writer finds a transaction left open.
            await self._roll_back()
            raise
        try:
            yield self.conn
        except sqlite3.Error as exc:
            await self._roll_back()
            raise store_error(exc, f"cannot write to {self.path}") from exc
        except BaseException:
            await self._roll_back()
            raise
        try:
            await self.conn.commit()
        except sqlite3.Error as exc:
            await self._roll_back()
            raise store_error(exc, f"cannot commit to {self.path}") from exc
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
                raise store_error(exc, f"cannot write to {self.path}") from exc

    async def fetchall(self, sql: str, params: Iterable[Any] = ()) -> list[sqlite3.Row]:
        """Rows of one statement, read from a snapshot of what is committed."""
        try:  # one hand-off to SQLite's thread, not three (execute, fetch, close)
            return list(await self._reader.execute_fetchall(sql, tuple(params)))
        except sqlite3.Error as exc:
            raise store_error(exc, f"cannot read {self.path}") from exc

    async def fetchone(self, sql: str, params: Iterable[Any] = ()) -> sqlite3.Row | None:
        rows = await self.fetchall(sql, params)
        return rows[0] if rows else None

    async def truncate_wal(self) -> bool:
        """Checkpoint the whole WAL into the database and cut the WAL file to zero bytes.

        Waits for other writers (it takes the write turn) but only briefly for readers:
        if one still reads an old snapshot, this returns False and the WAL stays as it is
        (bounded by the auto-checkpoint) until the next call.
        """
        async with self._writing:
            try:
                await self.conn.execute(f"PRAGMA busy_timeout = {CHECKPOINT_BUSY_TIMEOUT_MS}")
                try:
                    rows = await self.conn.execute_fetchall("PRAGMA wal_checkpoint(TRUNCATE)")
                finally:
                    await asyncio.shield(
                        self.conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
                    )
            except sqlite3.Error as exc:
                raise store_error(exc, f"cannot checkpoint {self.path}") from exc
        busy = next(iter(rows))[0]
        return not busy


async def _configure(conn: aiosqlite.Connection, *, new: bool) -> None:
    # Before the first table: a new file gives freed pages back (gateway.store.retention runs
    # incremental_vacuum); an older file waits for one VACUUM (``ecgw db vacuum``). Only on a
    # new file: on one that has it already, setting it again rewrites the header, and a
    # command's open must not write.
    if new:
        await conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
    await conn.execute("PRAGMA journal_mode = WAL")
    await conn.execute("PRAGMA synchronous = FULL")
    await conn.execute("PRAGMA foreign_keys = ON")
    await conn.execute(f"PRAGMA wal_autocheckpoint = {WAL_AUTOCHECKPOINT}")
    await conn.execute(f"PRAGMA journal_size_limit = {WAL_SIZE_LIMIT}")


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


async def _connect(path: Path) -> aiosqlite.Connection:
    try:
        conn = await aiosqlite.connect(path, isolation_level=None)
    except sqlite3.Error as exc:
        raise StoreError(f"cannot open database {path}: {exc}") from exc
    conn.row_factory = sqlite3.Row
    return conn


async def _prepare(
    conn: aiosqlite.Connection, path: Path, *, existed: bool, full_check_after_crash: bool
) -> None:
    """Check (an existing file, before anything could write to it), configure, migrate."""
    try:
        await conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        if existed:
            await check_header(path)
            await probe_btrees(conn)  # the first read: replays the WAL, parses the schema
            if full_check_after_crash and (why := await last_run_unclean(conn)):
                await quick_check(conn, path, why=why)
        await _configure(conn, new=not existed)
        await _migrate(conn)
    except sqlite3.Error as exc:
        error = store_error(exc, f"cannot prepare database {path}")
        if isinstance(error, StoreCorrupt):
            raise corrupt(path, f"is not a usable SQLite database ({exc})") from exc
        raise error from exc


async def _prepare_reader(conn: aiosqlite.Connection, path: Path) -> None:
    try:
        await conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        await conn.execute("PRAGMA synchronous = FULL")  # for the checkpoint if it closes last
        await conn.execute("PRAGMA query_only = ON")
    except sqlite3.Error as exc:
        raise store_error(exc, f"cannot open a reader on {path}") from exc


@contextlib.asynccontextmanager
async def open_database(
    path: Path, *, full_check_after_crash: bool = False
) -> AsyncIterator[Database]:
    """Open (creating if missing), check and migrate the database at ``path``.

    The checks are the cheap ones (:mod:`gateway.store.open_checks`), whatever the
    file's size. ``full_check_after_crash``: for ``ecgw run``, which holds the state
    directory (so no other gateway is running): if the last run did not stop cleanly,
    ``PRAGMA quick_check`` reads the whole file before anything writes to it.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreError(f"cannot create state directory {path.parent}: {exc.strerror}") from exc
    existed = path.exists()  # noqa: ASYNC240 - one stat at start-up
    conn = await _connect(path)
    try:
        await _prepare(conn, path, existed=existed, full_check_after_crash=full_check_after_crash)
        reader = await _connect(path)
        try:
            await _prepare_reader(reader, path)
            yield Database(conn, reader, path)
        finally:
            await reader.close()
    finally:
        await conn.close()


@contextlib.asynccontextmanager
async def hold_state_dir(state_dir: Path) -> AsyncIterator[None]:
    """Hold ``state_dir`` for the block: at most one gateway runs on one state directory.

    An exclusive ``flock`` on ``state_dir/ecgw.lock``, which also holds the holder's PID.
    The kernel releases it when the process ends, however it ends (kill -9
    included), so no stale lock is ever left behind. Another holder is a ConfigError
    for ``gateway.state_dir`` naming the directory and the holder's PID; the
    read-only commands open the database without it.
    """
    try:
        state_dir.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 - once, at start-up
        fd = os.open(state_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise StoreError(f"cannot open {state_dir / LOCK_FILE}: {exc.strerror}") from exc
    try:
        _lock(fd, state_dir)
        try:
            _write_pid(fd)
            yield
        finally:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)  # the PID of a gateway that has stopped is nobody's
    finally:
        os.close(fd)  # releases the lock


def _lock(fd: int, state_dir: Path) -> None:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        pid = _holder(fd)
        who = f" (PID {pid})" if pid is not None else ""
        raise ConfigError(
            f"another gateway{who} is running on the state directory {state_dir}; "
            "stop it, or give this one a state directory of its own",
            key="gateway.state_dir",
        ) from None
    except OSError as exc:
        raise StoreError(f"cannot lock {state_dir / LOCK_FILE}: {exc.strerror}") from exc


def _write_pid(fd: int) -> None:
    """Write our PID for a refused second gateway to name; best effort (a full disk)."""
    with contextlib.suppress(OSError):
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())


def _holder(fd: int) -> int | None:
    """The PID the holder wrote into the lock file, if it is there yet."""
    try:
        text = os.pread(fd, 32, 0).decode("ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return int(text) if text.isdigit() else None
