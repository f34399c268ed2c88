"""Database care: an online backup and a full integrity check (``ecgw db backup|check``).

The backup uses SQLite's online backup API (:meth:`sqlite3.Connection.backup`) on a
read-only connection, so it is safe while ``ecgw run`` writes: in WAL mode the copy
reads one consistent snapshot and the writer is never blocked. It is copied in one
step (a step-wise copy would start over on every write of the gateway), written to a
temporary file beside the target and renamed into place only once it has passed
``PRAGMA integrity_check``: a half-written or broken copy never takes a backup's name.
The copy is a single file (rollback journal, no WAL), ready to be put back.

Plain ``sqlite3`` in a worker thread: these are one-shot commands, not the gateway's
database (:mod:`gateway.store.database`), and must not migrate or configure the file
they look at.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from gateway.errors import StoreCorrupt, StoreError
from gateway.store.database import BUSY_TIMEOUT_MS, store_error
from gateway.store.open_checks import integrity_problems
from gateway.store.schema import MIGRATIONS

__all__ = ["CheckResult", "backup_database", "check_database", "read_only"]

MAX_PROBLEMS = 20  # integrity_check lines kept: a wrecked file can give thousands


@dataclass(frozen=True, slots=True)
class CheckResult:
    """What ``PRAGMA integrity_check`` found and the schema version (``PRAGMA user_version``)."""

    path: Path
    problems: tuple[str, ...]  # empty: ok
    schema_version: int
    known_version: int = len(MIGRATIONS)

    @property
    def ok(self) -> bool:
        return not self.problems and 0 < self.schema_version <= self.known_version

    def summary(self) -> str:
        """One line: ``ok`` or the first problem, with the schema version."""
        version = f"schema version {self.schema_version} (this ecgw knows {self.known_version})"
        if self.problems:
            more = f" (+{len(self.problems) - 1} more)" if len(self.problems) > 1 else ""
            return f"{self.path}: integrity_check failed: {self.problems[0]}{more}; {version}"
        if self.schema_version > self.known_version:
            return f"{self.path}: integrity ok, but {version} is newer: upgrade ecgw"
        if self.schema_version == 0:
            return f"{self.path}: not an ECGW database: it is empty (schema version 0)"
        return f"{self.path}: integrity ok, {version}"


@contextlib.contextmanager
def _read_only(path: Path) -> Iterator[sqlite3.Connection]:
    """A read-only connection to an existing file (a missing one is not created)."""
    if not path.is_file():
        raise StoreError(f"no database at {path}")
    try:
        conn = sqlite3.connect(
            f"{path.absolute().as_uri()}?mode=ro", uri=True, timeout=BUSY_TIMEOUT_MS / 1000
        )
    except sqlite3.Error as exc:
        raise store_error(exc, f"cannot open {path}") from exc
    try:
        yield conn
    finally:
        conn.close()


read_only = _read_only  # for the other one-shot commands (gateway.store.space)


def _check(conn: sqlite3.Connection, path: Path) -> CheckResult:
    try:
        rows = [str(r[0]) for r in conn.execute("PRAGMA integrity_check").fetchmany(MAX_PROBLEMS)]
        problems = integrity_problems(rows, limit=MAX_PROBLEMS) or [r for r in rows if r != "ok"]
        version = int(conn.execute("PRAGMA user_version").fetchone()[0])
    except sqlite3.Error as exc:
        error = store_error(exc, f"cannot check {path}")
        if isinstance(error, StoreCorrupt):
            return CheckResult(path, (str(exc),), 0)
        raise error from exc
    return CheckResult(path, tuple(problems), version)


def check_database(path: Path) -> CheckResult:
    """A full ``integrity_check`` of ``path`` and its schema version (blocking; a thread)."""
    with _read_only(path) as conn:
        return _check(conn, path)


def backup_database(source: Path, target: Path, *, force: bool = False) -> CheckResult:
    """Copy ``source`` to ``target`` with the online backup API, then check the copy.

    Refuses an existing ``target`` unless ``force``. Raises StoreError when the copy
    cannot be made or fails its check (nothing is left at ``target`` then); returns
    the check of the copy (blocking; a thread).
    """
    _refuse_target(source, target, force=force)
    partial = target.with_name(f".{target.name}.partial-{os.getpid()}")
    try:
        with _read_only(source) as src:
            _copy(src, source, partial)
        with contextlib.closing(sqlite3.connect(partial)) as copy:
            result = _check(copy, target)
        if not result.ok:
            raise StoreError(f"the copy failed its check: {result.summary()}")
        partial.replace(target)
    except OSError as exc:
        raise StoreError(f"cannot write {target}: {exc.strerror or exc}") from exc
    finally:
        partial.unlink(missing_ok=True)
    return result


def _refuse_target(source: Path, target: Path, *, force: bool) -> None:
    """A backup only ever replaces a regular file that is not the database or its companions.

    The copy is renamed into place, so ``--force`` onto ``/dev/null`` or a FIFO would swap
    the device for a file, and onto the live database (or its WAL) would cut a running
    gateway off from the rows it has not checkpointed yet.
    """
    if not target.parent.is_dir():
        raise StoreError(f"cannot write {target}: {target.parent} is no such directory")
    live = source.resolve()
    if target.resolve() in {live.with_name(live.name + end) for end in _COMPANIONS} or (
        target.exists() and source.exists() and target.samefile(source)
    ):
        raise StoreError(f"{target} is the database itself (or its WAL); back up to another file")
    if not target.exists():
        return
    if not force:
        raise StoreError(f"{target} exists; pass --force to overwrite it")
    if target.is_dir():
        raise StoreError(f"{target} is a directory")
    if not target.is_file():
        raise StoreError(f"{target} is not a regular file; refusing to replace it")


_COMPANIONS = ("", "-wal", "-shm", "-journal")


def _copy(src: sqlite3.Connection, source: Path, partial: Path) -> None:
    partial.unlink(missing_ok=True)
    try:
        with contextlib.closing(sqlite3.connect(partial)) as dst:
            src.backup(dst)  # all pages in one step: one snapshot
            dst.execute("PRAGMA journal_mode = DELETE")  # one self-contained file
    except sqlite3.Error as exc:
        raise store_error(exc, f"cannot back up {source}") from exc
