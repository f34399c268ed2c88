"""Issue 10's operator commands fed odd values: each gives one clear line, never a traceback,
and never harms a file it was not asked to write."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

import pytest

from gateway.errors import StoreError
from gateway.status import status_record, status_text
from gateway.store.backup import backup_database
from gateway.store.database import open_database
from gateway.store.meta import Meta
from tests.kit.gateway import make_config
from tests.kit.live import integrity


@pytest.fixture
async def db_path(tmp_path: Path) -> Path:
    path = tmp_path / "state" / "ecgw.sqlite3"
    async with open_database(path) as db:
        await Meta(db).put(**{"gateway.pid": os.getpid(), "gateway.started_at": time.time()})
    return path


def test_backup_refuses_to_replace_something_that_is_not_a_file(
    db_path: Path, tmp_path: Path
) -> None:
    """``--force`` onto a device or a FIFO (``/dev/null``!) must not swap it for a file."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(StoreError, match="not a regular file"):
        backup_database(db_path, fifo, force=True)
    assert stat.S_ISFIFO(fifo.lstat().st_mode)


def test_backup_refuses_the_database_itself(db_path: Path) -> None:
    """Renaming a copy over the live file would cut a running gateway off from its WAL."""
    inode = db_path.stat().st_ino
    for target in (db_path, db_path.parent / ".." / "state" / db_path.name):
        with pytest.raises(StoreError, match="is the database itself"):
            backup_database(db_path, target, force=True)
    assert db_path.stat().st_ino == inode
    assert integrity(db_path) == "ok"


def test_backup_into_a_missing_directory_names_the_target(db_path: Path, tmp_path: Path) -> None:
    target = tmp_path / "nodir" / "copy.sqlite3"
    with pytest.raises(StoreError, match=f"{target.parent}.*no such directory"):
        backup_database(db_path, target)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), 1e20, -1e20])
async def test_status_survives_odd_times_in_meta(db_path: Path, value: float) -> None:
    async with open_database(db_path) as db:
        await Meta(db).put(
            **{"gateway.heartbeat": value, "gateway.started_at": value, "gateway.stopped_at": value}
        )
    config = make_config({"gateway": {"state_dir": str(db_path.parent)}})
    record = await status_record(config, now=time.time())
    assert record["heartbeat"] is None
    assert status_text(record)[0].startswith("gateway:  not running")


@pytest.mark.parametrize("pid", [2**70, -(2**70), True, "abc", 0])
async def test_status_survives_odd_pids(db_path: Path, pid: object) -> None:
    async with open_database(db_path) as db:
        await Meta(db).put(**{"gateway.pid": pid})
    config = make_config({"gateway": {"state_dir": str(db_path.parent)}})
    record = await status_record(config, now=time.time())
    assert record["running"] is False
