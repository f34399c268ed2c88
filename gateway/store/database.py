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

Maintenance (compaction, expiry, retention) writes in short slices,
``async with db.maintenance(budget) as part:``, each a transaction of its own that
takes its turn only when no other writer waits (:mod:`gateway.store.maintenance`),
so intake waits at most for the slice in progress. A slice commits without an
fsync of its own (nobody waits for it; the next writer's commit syncs it too). Every
``MAINTENANCE_CHECKPOINT_EVERY`` slices a passive checkpoint runs on a third
connection, outside any turn: maintenance keeps the WAL it writes small, and no
intake commit pays for copying it into the database.

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
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiosqlite

from gateway.errors import ConfigError, StoreCorrupt, StoreError
from gateway.store.maintenance import SliceBudget, TurnQueue
from gateway.store.open_checks import (
    WAL_LEFT,
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
    "MaintenanceSlice",
    "hold_state_dir",
    "open_database",
]

BUSY_TIMEOUT_MS = 10_000
CHECKPOINT_BUSY_TIMEOUT_MS = 200  # the checkpoint connection gives way to a slow reader
WAL_AUTOCHECKPOINT = 1000  # pages (SQLite's default, stated): about 4 MB of WAL at most
WAL_SIZE_LIMIT = 1024 * 1024  # bytes of WAL kept on disk after a checkpoint restarts it

MAINTENANCE_REST = 1.0  # after each maintenance slice, rest this many times its length
MAINTENANCE_CHECKPOINT_EVERY = 16  # slices: some 100 pages of WAL, a few ms to copy

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


def is_damage(exc: BaseException) -> bool:
    """``exc`` is, or was raised from, StoreCorrupt or SQLITE_CORRUPT/NOTADB (callers wrap
    sqlite3's errors in their own StoreError)."""
    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None:
            return False
        if isinstance(seen, StoreCorrupt):
            return True
        if isinstance(seen, sqlite3.Error):
            code = (getattr(seen, "sqlite_errorcode", None) or 0) & 0xFF
            if code in _CORRUPT:
                return True
        seen = seen.__cause__ or seen.__context__
    return False


class WriteTurns:
    """The write turn: one holder at a time; a waiting writer goes before maintenance
    (the order is :class:`gateway.store.maintenance.TurnQueue`'s)."""

    def __init__(self) -> None:
        self._queue: TurnQueue[asyncio.Future[None]] = TurnQueue()

    @property
    def writers_waiting(self) -> int:
        return self._queue.writers_waiting

    @property
    def maintenance_waiting(self) -> int:
        return self._queue.maintenance_waiting

    @contextlib.asynccontextmanager
    async def turn(self, *, maintenance: bool = False) -> AsyncIterator[None]:
        await self._take(maintenance=maintenance)
        try:
            yield
        finally:
            self._release()

    async def _take(self, *, maintenance: bool) -> None:
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self._queue.ask(waiter, maintenance=maintenance):
            return
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self._release()  # the turn came just as we were cancelled: pass it on
            else:
                self._queue.leave(waiter)
            raise

    def _release(self) -> None:
        while (waiter := self._queue.release()) is not None:
            if not waiter.done():  # a cancelled waiter still queued is skipped
                waiter.set_result(None)
                return


@dataclass(slots=True)
class MaintenanceSlice:
    """One maintenance transaction: touch at most ``rows`` rows through ``conn``, then
    say how many were touched with :meth:`touched` (the budget learns from it)."""

    conn: aiosqlite.Connection
    rows: int
    done: int = 0

    def touched(self, rows: int) -> None:
        self.done += rows


class Database:
    """An open database. Built by :func:`open_database`; do not construct directly."""

    def __init__(
        self,
        conn: aiosqlite.Connection,
        reader: aiosqlite.Connection,
        path: Path,
        checkpointer: aiosqlite.Connection,
    ) -> None:
        self.conn = conn  # the writer: use it only inside ``write()`` or ``maintenance()``
        self._reader = reader
        self._checkpointer = checkpointer
        self.path = path
        self.turns = WriteTurns()
        self._slices = 0  # maintenance slices since the last passive checkpoint
        self.damage: StoreCorrupt | None = None
        """The first damage a statement met (SQLITE_CORRUPT/NOTADB), whoever caught it: a
        run that met it must not record a clean stop (its next start reads the whole file)."""
        self.on_damage: Callable[[StoreCorrupt], None] | None = None
        """Called once, with that damage (``ecgw run``: stop the gateway, exit 1)."""

    def _saw(self, exc: BaseException) -> None:
        """Note damage in ``exc`` (the first only) and say so to ``on_damage``."""
        if self.damage is not None or not is_damage(exc):
            return
        self.damage = (
            exc
            if isinstance(exc, StoreCorrupt)
            else StoreCorrupt(f"{self.path}: the database is damaged ({exc})")
        )
        if self.on_damage is not None:
            self.on_damage(self.damage)

    def _error(self, exc: sqlite3.Error, doing: str) -> StoreError:
        """:func:`store_error`, noting damage."""
        error = store_error(exc, doing)
        self._saw(error)
        return error

    @contextlib.asynccontextmanager
    async def write(self) -> AsyncIterator[aiosqlite.Connection]:
        """One ``BEGIN IMMEDIATE`` ... ``COMMIT`` transaction; rolled back on error.

        Writers take turns (one transaction at a time), before any waiting maintenance.
        A sqlite3 error raised in the block leaves it as StoreError, after the rollback.
        """
        async with self.turns.turn(), self._transaction() as conn:
            yield conn

    @contextlib.asynccontextmanager
    async def maintenance(
        self, budget: SliceBudget | None = None
    ) -> AsyncIterator[MaintenanceSlice]:
        """One maintenance slice: a transaction like :meth:`write`'s, whose turn comes only
        when no writer waits.

        ``budget`` (one per maintenance loop) says how many rows the slice may touch
        (``part.rows``) and learns from the time the slice took, its commit included;
        the caller reports the rows it touched with ``part.touched(n)``::

            budget = SliceBudget()
            while True:
                async with db.maintenance(budget) as part:
                    cur = await part.conn.execute("DELETE ... LIMIT ?", (..., part.rows))
                    part.touched(cur.rowcount)
                if cur.rowcount < part.rows:
                    break

        Keep to one statement or a few per slice; do the next slice in a new block.
        """
        budget = budget or SliceBudget()
        await self._checkpoint_now_and_then()
        async with self.turns.turn(maintenance=True), self._lazy_sync():
            began = time.perf_counter()
            async with self._transaction() as conn:
                part = MaintenanceSlice(conn, budget.rows)
                yield part
            took = time.perf_counter() - began
            budget.observe(part.done, took)
        self._slices += 1
        # Rest as long as the slice took: maintenance holds at most half of the write path's
        # time (and of the disk's), so a catch-up leaves intake room even between turns.
        await asyncio.sleep(took * MAINTENANCE_REST)

    @contextlib.asynccontextmanager
    async def _lazy_sync(self) -> AsyncIterator[None]:
        """A maintenance commit without its own fsync (``synchronous = NORMAL``).

        Nobody waits for maintenance to be durable: a power cut may undo the last slices
        (each whole: the WAL keeps every transaction atomic), and the next pass redoes
        them. The next writer's commit, or a checkpoint, syncs the WAL and with it every
        frame before, so a slice costs intake no fsync of its own.
        """
        try:  # restored even if cancelled while NORMAL was on its way to SQLite's thread
            try:
                await self.conn.execute("PRAGMA synchronous = NORMAL")
            except sqlite3.Error as exc:
                raise self._error(exc, f"cannot prepare maintenance on {self.path}") from exc
            yield
        finally:
            try:
                await asyncio.shield(self.conn.execute("PRAGMA synchronous = FULL"))
            except sqlite3.Error as exc:
                raise self._error(exc, f"cannot restore full sync on {self.path}") from exc

    async def _checkpoint_now_and_then(self) -> None:
        """Every few maintenance slices, copy the WAL into the database on the checkpoint
        connection, outside any turn: writers go on meanwhile (SQLite lets them)."""
        if self._slices < MAINTENANCE_CHECKPOINT_EVERY:
            return
        self._slices = 0
        try:
            await self._checkpointer.execute_fetchall("PRAGMA wal_checkpoint(PASSIVE)")
        except sqlite3.Error as exc:
            raise self._error(exc, f"cannot checkpoint {self.path}") from exc

    @contextlib.asynccontextmanager
    async def _transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        try:
            await self.conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise self._error(exc, f"cannot start a transaction on {self.path}") from exc
        except BaseException:
            # Cancelled while BEGIN was on its way to SQLite's thread: it still runs there,
            # so roll back behind it, or the next writer finds a transaction left open.
            await self._roll_back()
            raise
        try:
            yield self.conn
        except sqlite3.Error as exc:
            await self._roll_back()
            raise self._error(exc, f"cannot write to {self.path}") from exc
        except BaseException as exc:
            self._saw(exc)  # a caller's own StoreError wrapping SQLITE_CORRUPT
            await self._roll_back()
            raise
        try:
            await self.conn.commit()
        except sqlite3.Error as exc:
            await self._roll_back()
            raise self._error(exc, f"cannot commit to {self.path}") from exc
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
        async with self.turns.turn():
            try:
                return list(await self.conn.execute_fetchall(sql, tuple(params)))
            except sqlite3.Error as exc:
                raise self._error(exc, f"cannot write to {self.path}") from exc

    async def fetchall(self, sql: str, params: Iterable[Any] = ()) -> list[sqlite3.Row]:
        """Rows of one statement, read from a snapshot of what is committed."""
        try:  # one hand-off to SQLite's thread, not three (execute, fetch, close)
            return list(await self._reader.execute_fetchall(sql, tuple(params)))
        except sqlite3.Error as exc:
            raise self._error(exc, f"cannot read {self.path}") from exc

    async def fetchone(self, sql: str, params: Iterable[Any] = ()) -> sqlite3.Row | None:
        rows = await self.fetchall(sql, params)
        return rows[0] if rows else None

    async def truncate_wal(self) -> bool:
        """Checkpoint the whole WAL into the database and cut the WAL file to zero bytes.

        The copying is a passive checkpoint on the checkpoint connection, outside any turn
        (writers go on meanwhile). Then, in a maintenance turn, the truncation, which never
        waits: if a reader still reads an old snapshot (or another process writes), this
        returns False at once and the WAL stays as it is (bounded by the auto-checkpoint)
        until the next call. Waiting for the reader inside the turn held every writer
        (a webhook) for as long as it waited.
        """
        try:
            await self._checkpointer.execute_fetchall("PRAGMA wal_checkpoint(PASSIVE)")
        except sqlite3.Error as exc:
            raise self._error(exc, f"cannot checkpoint {self.path}") from exc
        async with self.turns.turn(maintenance=True):
            try:
                await self.conn.execute("PRAGMA busy_timeout = 0")
                try:
                    rows = await self.conn.execute_fetchall("PRAGMA wal_checkpoint(TRUNCATE)")
                finally:
                    await asyncio.shield(
                        self.conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
                    )
            except sqlite3.Error as exc:
                raise self._error(exc, f"cannot checkpoint {self.path}") from exc
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
    """Check (an existing file, before anything could write to it), configure, migrate.
    An empty file (a gateway stopped before its first commit) is a new one, unless a WAL is
    beside it (refused: the pages are lost)."""
    try:
        await conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        new, wal = True, False
        if existed:
            wal = await check_header(path)
            new = path.stat().st_size == 0  # noqa: ASYNC240 - one stat at start-up
        if not new:
            await probe_btrees(conn)  # the first read: replays the WAL, parses the schema
            if full_check_after_crash and (
                why := await last_run_unclean(conn) or (WAL_LEFT if wal else None)
            ):
                await quick_check(conn, path, why=why)
        await _configure(conn, new=new)
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


async def _prepare_checkpointer(conn: aiosqlite.Connection, path: Path) -> None:
    try:
        await conn.execute(f"PRAGMA busy_timeout = {CHECKPOINT_BUSY_TIMEOUT_MS}")
        await conn.execute("PRAGMA synchronous = FULL")
    except sqlite3.Error as exc:
        raise store_error(exc, f"cannot open a checkpoint connection on {path}") from exc


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
            checkpointer = await _connect(path)
            try:
                await _prepare_checkpointer(checkpointer, path)
                yield Database(conn, reader, path, checkpointer)
            finally:
                await checkpointer.close()
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
