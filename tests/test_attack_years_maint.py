"""Attack on issue 12's "maintenance never blocks intake" (item 4): the heartbeat's WAL
truncation.

``Database.truncate_wal`` is maintenance (it takes a write turn when no writer waits),
but inside its turn it waited up to 200 ms (its busy timeout) for a reader on an old
snapshot to let go of the WAL, and copied the whole WAL into the file: a webhook arriving
meanwhile waited about 200 ms for the write path, every heartbeat (15 s) while ``ecgw db
check``, ``db stats`` or ``db backup`` read the file.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from pathlib import Path

from gateway.store.database import open_database


async def test_a_writer_does_not_wait_for_a_truncation_that_waits_for_a_reader(
    tmp_path: Path,
) -> None:
    path = tmp_path / "ecgw.sqlite3"
    async with open_database(path) as db:
        for i in range(20):
            await db.write_one("INSERT INTO meta (key, value) VALUES (?, '1')", (f"k{i}",))
        with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as reader:
            reader.execute("BEGIN")  # a command reading the file, on its snapshot
            reader.execute("SELECT COUNT(*) FROM meta").fetchone()
            await db.write_one("INSERT INTO meta (key, value) VALUES ('newer', '1')")
            truncation = asyncio.create_task(db.truncate_wal())
            await asyncio.sleep(0)  # it has the turn (no writer waited)
            began = time.perf_counter()
            await db.write_one("INSERT INTO meta (key, value) VALUES ('webhook', '1')")
            waited = time.perf_counter() - began
            assert not await truncation  # not now: the reader still reads the WAL
            reader.execute("COMMIT")
        assert waited < 0.05, f"the webhook's write waited {waited * 1000:.0f} ms"
        assert await db.truncate_wal()  # once the reader has gone
        wal = path.with_name(path.name + "-wal")
        assert wal.stat().st_size == 0
