"""Does a long history slow the outbox? Enqueue and delivery with 100,000 delivered
rows kept, against an empty outbox, in the same run.

Delivered rows are never deleted (their key keeps a report from being queued
twice), so a gateway that has run for years holds many. Both databases are real
files with WAL and ``synchronous=FULL``; the history (real report bodies, state
``delivered``) is written untimed, straight into the table, before the timed part.
Timed (automatic WAL checkpoints off, on both, so that the bytes each phase
writes can be counted), on each: ``enqueue`` of N new reports (one commit each, as the scheduler
does), then delivering them with ``settle`` rounds of 32 (as the deliverer's
keeper does), plus the keeper's idle-time queries (``next_due``, the deadline
check). Rounds go in pairs (empty, then history; history, then empty; ...), each
pair giving one ratio history / empty per figure.

    python bench/history.py [--history 100000] [--reports 300] [--rounds 3] [--quick]

``--rounds`` is the number of pairs. Prints, for each, the median wall time per
call (dominated by the fsync of each commit, which is noisy on a shared disk), and
the noise-free parts: process CPU and WAL bytes per report; every pair's ratio
history / empty with the median and spread (target: at most 1.20, i.e. +20 %); and
SQLite's query plans for the statements on the hot path.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path

from delivery import bodies
from outbox_vs_persistqueue import event_id, outbox_drain, outbox_enqueue
from pairs import interleave, load_line, ratio_line, ratios

HOT_PATH = {
    "claim (settle)": (
        "UPDATE outbox SET state = 'in_flight', attempts = attempts + 1, updated_at = ? "
        "WHERE id IN (SELECT id FROM outbox WHERE state = 'pending' "
        "AND next_attempt_at <= ? ORDER BY id LIMIT ?) RETURNING *",
        (0.0, 0.0, 32),
    ),
    "next_due": ("SELECT MIN(next_attempt_at) FROM outbox WHERE state = 'pending'", ()),
    "deadline check": (
        "SELECT * FROM outbox WHERE state IN ('pending', 'in_flight') "
        "AND deadline IS NOT NULL AND deadline <= ? ORDER BY id",
        (0.0,),
    ),
}


async def create(path: Path) -> None:
    from gateway.store.database import open_database

    async with open_database(path):
        pass


def fill_history(path: Path, count: int) -> None:
    """``count`` delivered reports, written in one untimed transaction."""
    from gateway.delivery.policy import idempotency_key

    body = bodies(1)[0]
    rows = (
        (
            event_id(-1 - i),
            "EnergyUsage",
            body,
            idempotency_key(event_id(-1 - i), "EnergyUsage", body),
            "planner",
            f"report-{i}",
        )
        for i in range(count)
    )
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute("PRAGMA synchronous = OFF")
        with conn:
            conn.executemany(
                "INSERT INTO outbox (event_id, kind, body, idempotency_key, source, state, "
                "attempts, next_attempt_at, last_status, report_id, created_at, updated_at, "
                "delivered_at) VALUES (?, ?, ?, ?, ?, 'delivered', 1, 0, 200, ?, 0, 0, 0)",
                rows,
            )
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    os.sync()  # the fill is on disk before the timed part: its writeback must not land there


async def timed(path: Path, n: int, first: int) -> dict[str, list[float]]:
    """Per call: wall seconds of each enqueue, of each full settle round (32 recorded +
    32 claimed) and of each pair of the keeper's idle queries; and, free of fsync
    noise, the process CPU seconds and WAL bytes per report of each phase."""
    from gateway.store.database import open_database
    from gateway.store.outbox import Outbox

    wal = path.with_name(path.name + "-wal")
    async with open_database(path) as db:
        # No automatic checkpoint in the timed part (on both databases), so that the WAL
        # only grows and its growth is the bytes each phase wrote.
        await db.conn.execute("PRAGMA wal_autocheckpoint = 0")
        outbox = Outbox(db)
        cpu, size = time.process_time(), _size(wal)
        enqueue = await outbox_enqueue(outbox, bodies(n), first)
        enqueue_cpu, enqueue_wal = time.process_time() - cpu, _size(wal) - size
        cpu, size = time.process_time(), _size(wal)
        deliver = (await outbox_drain(outbox, n))[1:-1]  # the full rounds
        deliver_cpu, deliver_wal = time.process_time() - cpu, _size(wal) - size
        idle = []
        for _ in range(100):
            start = time.perf_counter()
            await outbox.next_due()
            await outbox.pending_before(1e12)
            idle.append(time.perf_counter() - start)
    return {
        "enqueue": enqueue,
        "deliver": deliver,
        "idle": idle,
        "enqueue_cpu": [enqueue_cpu / n],
        "deliver_cpu": [deliver_cpu / n],
        "enqueue_wal": [enqueue_wal / n],
        "deliver_wal": [deliver_wal / n],
    }


def _size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


def plans(path: Path) -> dict[str, str]:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        return {
            name: "; ".join(row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}", params))
            for name, (sql, params) in HOT_PATH.items()
        }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--history", type=int, default=100_000)
    parser.add_argument("--reports", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="10,000 history, 100 reports, 3 pairs")
    args = parser.parse_args()
    if args.quick:
        args.history, args.reports, args.rounds = 10_000, 100, 3
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR")) as tmp:
        empty, kept = Path(tmp) / "empty.sqlite3", Path(tmp) / "kept.sqlite3"
        for path in (empty, kept):
            asyncio.run(create(path))
        start = time.perf_counter()
        fill_history(kept, args.history)
        fill = time.perf_counter() - start
        size_mb = kept.stat().st_size / 1e6

        def first(r: int) -> int:
            return 10_000_000 + r * args.reports

        runs = interleave(
            args.rounds,
            lambda r: asyncio.run(timed(empty, args.reports, first(r))),
            lambda r: asyncio.run(timed(kept, args.reports, first(r))),
        )
        plan = plans(kept)
    print(
        f"history: {args.history} delivered rows ({size_mb:.0f} MB, written in {fill:.1f} s); "
        f"{args.reports} reports per round; pairs: {args.rounds}; {load_line(os.getloadavg())}"
    )

    def median(sample: dict[str, list[float]], phase: str) -> float:
        return statistics.median(sample[phase])

    for phase, label, scale, unit in (
        ("enqueue", "enqueue, wall per call (1 commit)", 1e6, "us"),
        ("deliver", "settle round, wall (32 + 32)     ", 1e6, "us"),
        ("idle", "keeper idle queries, wall        ", 1e6, "us"),
        ("enqueue_cpu", "enqueue, CPU per report          ", 1e6, "us"),
        ("deliver_cpu", "deliver, CPU per report          ", 1e6, "us"),
        ("enqueue_wal", "enqueue, WAL bytes per report    ", 1, " B"),
        ("deliver_wal", "deliver, WAL bytes per report    ", 1, " B"),
    ):
        a = statistics.median(median(p.baseline, phase) for p in runs) * scale
        b = statistics.median(median(p.subject, phase) for p in runs) * scale
        print(f"{label}: empty {a:7.0f}{unit}  history {b:7.0f}{unit} (medians)")
        print("  " + ratio_line("ratio history / empty", ratios(runs, lambda x: median(x, phase))))  # noqa: B023
    print("target: enqueue and deliver ratio <= 1.20 (+20 %)")
    for name, text in plan.items():
        print(f"plan {name:15s}: {text}")


if __name__ == "__main__":
    main()
