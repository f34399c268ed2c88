"""Attack on issue 12's listings with odd times in rows (a clock that read year 10000, a
row written by hand or by another tool): one such row made ``ecgw outbox list``,
``events list``, ``outbox show`` and ``ecgw status`` end in a traceback
(``render.iso``: OverflowError, ValueError "year 10000 is out of range", TypeError for
text), so the listing an operator needs to find the row could not be read at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from pathlib import Path

import pytest

from gateway import render
from gateway.store.database import open_database
from tests.kit.proc import ecgw, offline_config

ODD = [1e20, -1e20, 253402300800.0, "garbage", float("inf"), 9.3e18]


async def _made(path: Path) -> None:
    async with open_database(path):
        pass
    with contextlib.closing(sqlite3.connect(path)) as conn:
        for i, value in enumerate(ODD):
            state = "pending" if i % 2 else "delivered"
            conn.execute(
                "INSERT INTO outbox (event_id, kind, body, idempotency_key, source, state, "
                "next_attempt_at, created_at, updated_at, deadline, delivered_at) "
                "VALUES (?, 'EnergyUsage', x'7b7d', ?, 'planner', ?, ?, ?, ?, ?, ?)",
                (f"odd{i}", f"k{i}", state, value, value, value, value, value),
            )
            conn.execute(
                "INSERT INTO events (event_id, payload_type, received_via, received_at, payload) "
                "VALUES (?, 'PriceCurve', 'poll', ?, x'7b7d')",
                (f"odd{i}", value),
            )
        conn.commit()


def test_iso_says_what_is_not_a_time() -> None:
    for value in (1e20, -1e20, 253402300800.0, float("nan"), float("inf")):
        assert "not a time" in str(render.iso(value))
    assert render.iso(0.0) == "1970-01-01T00:00:00Z"


@pytest.mark.parametrize(
    "command",
    [
        ("outbox", "list"),
        ("outbox", "list", "--json"),
        ("events", "list"),
        ("events", "list", "--since", "9999-01-01"),
        ("outbox", "show", "odd2"),
        ("outbox", "show", "odd3"),
        ("events", "show", "odd0"),
        ("status",),
    ],
)
def test_odd_times_in_rows_are_listed_without_a_traceback(
    tmp_path: Path, command: tuple[str, ...]
) -> None:
    config = offline_config(tmp_path)
    asyncio.run(_made(tmp_path / "state" / "ecgw.sqlite3"))
    done = ecgw(*command, config=config)
    assert "Traceback" not in done.stderr, done.stderr[-600:]
    assert done.returncode == 0, done.stderr
