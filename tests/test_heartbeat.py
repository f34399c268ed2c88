"""keep_beating: the heartbeat both `ecgw run` and `ecgw hub run` use."""

from __future__ import annotations

import asyncio
import time

from gateway.app import HEARTBEAT_EVERY, keep_beating
from gateway.health import Health
from gateway.sdnotify import Notifier
from gateway.store.database import Database
from gateway.store.meta import Meta


async def _written(meta: Meta, key: str, seen: str | None = None) -> object:
    """The value of ``key`` in ``meta`` once it is there (and, given ``seen``, once its
    text holds ``seen``); polled: the heartbeat writes to the database, not to us."""
    while True:
        value = (await meta.get_all()).get(key)
        if value is not None and (seen is None or seen in str(value)):
            return value
        await asyncio.sleep(0.01)  # another task writes the database


async def test_a_change_of_the_error_state_is_written_at_once_not_at_the_next_beat(
    db: Database,
) -> None:
    meta, health = Meta(db), Health(time.time)
    beating = asyncio.create_task(keep_beating(meta, health, Notifier(None), time.time))
    try:
        async with asyncio.timeout(5):
            first = await _written(meta, "gateway.heartbeat")
        health.token_failed("connection refused", refused=False)  # the API starts failing
        async with asyncio.timeout(HEARTBEAT_EVERY / 3):  # well before the next beat
            await _written(meta, "gateway.health", seen="connection refused")
        assert await _written(meta, "gateway.heartbeat") == first  # written without a beat
    finally:
        beating.cancel()
        await asyncio.gather(beating, return_exceptions=True)
