"""bench/aged_db.py writes the compacted past straight into the tables; it must leave exactly
what the gateway's own ``compact()`` leaves after reading every sample."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.aged_db import ADAPTER, START, advance_compacted, write_raw
from gateway.plugin import Channel, ChannelKind, Unit
from gateway.store.database import open_database
from gateway.store.readings import ReadingsStore

HOURS = 4
CHANNELS = 2


SPLIT = START + 2 * 3600
CHANNEL_LIST = [Channel(f"c{i:02d}", ChannelKind.ENERGY, Unit.KWH) for i in range(CHANNELS)]


async def _tables(
    path: Path, *, direct: bool, raw_retention: float
) -> dict[str, list[tuple[object, ...]]]:
    """Readings up to SPLIT written straight (``direct``) or read sample by sample; then, as
    after a restart (a new writer), samples up to the end; then ``compact()``."""
    end = START + HOURS * 3600
    async with open_database(path) as db:
        store = ReadingsStore(db)
        await store.register_channels(ADAPTER, CHANNEL_LIST)
        if direct:
            async with db.write() as conn:
                for i in range(CHANNELS):
                    channel_id = (await store.channel((ADAPTER, f"c{i:02d}"))).id
                    await advance_compacted(conn, channel_id, i, SPLIT, start=START)
        else:
            async with store.writer():
                await write_raw(store, CHANNELS, START, SPLIT)
        restarted = ReadingsStore(db)
        await restarted.register_channels(ADAPTER, CHANNEL_LIST)
        async with restarted.writer():
            await write_raw(restarted, CHANNELS, SPLIT, end)
        await restarted.compact(
            now=end, raw_retention=raw_retention, retention=86400 * 62, max_gap=900
        )
        return {
            table: [tuple(r) for r in await db.fetchall(f"SELECT * FROM {table} ORDER BY 1, 2")]
            for table in ("readings_minute", "readings", "compaction")
        }


@pytest.mark.parametrize("raw_hours", [2, 1])
async def test_the_written_past_is_what_compaction_of_every_sample_leaves(
    tmp_path: Path, raw_hours: int
) -> None:
    """2: compaction stops where the written past ends (the hand-over itself is compared);
    1: compaction goes on from the written hand-over."""
    raw_retention = raw_hours * 3600.0
    compacted = await _tables(tmp_path / "a.sqlite3", direct=False, raw_retention=raw_retention)
    written = await _tables(tmp_path / "b.sqlite3", direct=True, raw_retention=raw_retention)
    assert len(compacted["readings_minute"]) == CHANNELS * (HOURS - raw_hours) * 60
    assert written == compacted
