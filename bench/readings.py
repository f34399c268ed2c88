"""Readings store figures: write throughput, energy read time, bytes per channel-day.

    python bench/readings.py [--dir DIR] [--channels 1000] [--pairs 3] [--quick]

(a) Readings committed per second, 1,000 channels, 100 calls of 1,000 readings through
    ``ReadingsStore.write``: all callers at once (group commit), and one after the other
    (a transaction per call). Next to it, the ceiling: plain ``sqlite3.executemany`` of
    the same rows into the same schema, same pragmas (WAL, synchronous=FULL, foreign
    keys on), in transactions of the same size, in the same run: ``--pairs`` pairs, the
    order alternating (ceiling first, then the store first, ...), each on fresh files;
    every pair's ratio store / ceiling with the median and spread.
(b) ``interval_energy`` for every channel of 24 h of 10 s counter readings (8.64 M rows
    for 1,000 channels; generated with executemany): 96 quarter-hour intervals and 24
    hourly ones, one channel after the other on the one connection, and the same reads
    with 4 channels in flight: ``--pairs`` pairs, the order alternating; every pair's
    ratio 4-at-a-time / one-after-another (the targets are absolute: <= 2 s).
(c) Database bytes per channel-day after compacting that day (page_count * page_size after
    VACUUM, divided by channels x days), with the raw figure before compaction.

Not a test: it prints a table. Files go to a temporary directory on the disk of ``--dir``.
``--quick``: 100 channels, 2 pairs.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pairs import load_line, order, ratio, ratio_line

from gateway.metering.energy import counter_intervals
from gateway.plugin import Channel, ChannelKind, Reading, Unit
from gateway.store.database import open_database
from gateway.store.readings import ReadingsStore

T0 = 1_700_006_400.0  # midnight UTC
STEP = 10.0
PER_DAY = int(86400 / STEP)
ADAPTER = "bench"

_INSERT = "INSERT INTO readings (channel_id, at, value, dropped) VALUES (?, ?, ?, ?)"


def channels(n: int) -> list[Channel]:
    return [Channel(f"ch{i:04d}", ChannelKind.ENERGY, Unit.WH) for i in range(n)]


async def prepare(path: Path, n: int) -> None:
    """Create the schema and register the channels (ids 1..n)."""
    async with open_database(path) as db:
        await ReadingsStore(db).register_channels(ADAPTER, channels(n))


def connect(path: Path) -> sqlite3.Connection:
    """The gateway's pragmas (gateway.store.database), for the ceiling."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("PRAGMA foreign_keys = ON")
    return conn


def db_bytes(path: Path) -> tuple[int, int]:
    """(file bytes as page_count * page_size, bytes in use: minus free pages)."""
    conn = sqlite3.connect(path)
    try:
        size = conn.execute("PRAGMA page_size").fetchone()[0]
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        free = conn.execute("PRAGMA freelist_count").fetchone()[0]
    finally:
        conn.close()
    return pages * size, (pages - free) * size


# --- (a) writes ---------------------------------------------------------------------------------


def write_calls(n: int, calls: int) -> list[list[Reading]]:
    """``calls`` batches, each one reading of every channel (a poll of all meters)."""
    names = [c.name for c in channels(n)]
    return [
        [Reading(name, T0 + STEP * b, 1000.0 + b * 2.5 + i) for i, name in enumerate(names)]
        for b in range(calls)
    ]


async def store_writes(path: Path, n: int, calls: int, *, concurrent: bool) -> tuple[float, int]:
    batches = write_calls(n, calls)
    async with open_database(path) as db:
        store = ReadingsStore(db, max_batch=10_000, linger=0.005)
        await store.register_channels(ADAPTER, channels(n))
        async with store.writer():
            began = time.perf_counter()
            if concurrent:
                await asyncio.gather(*(store.write(ADAPTER, batch) for batch in batches))
            else:
                for batch in batches:
                    await store.write(ADAPTER, batch)
            elapsed = time.perf_counter() - began
        transactions, rows = store.commits
    assert rows == n * calls
    return n * calls / elapsed, transactions


def ceiling_writes(path: Path, n: int, calls: int, per_transaction: int) -> float:
    asyncio.run(prepare(path, n))
    rows = [(i + 1, T0 + STEP * b, 1000.0 + b * 2.5 + i, 0) for b in range(calls) for i in range(n)]
    conn = connect(path)
    try:
        began = time.perf_counter()
        for i in range(0, len(rows), per_transaction):
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(_INSERT, rows[i : i + per_transaction])
            conn.execute("COMMIT")
        elapsed = time.perf_counter() - began
    finally:
        conn.close()
    return len(rows) / elapsed


def write_pairs(
    base: Path, n: int, calls: int, pairs: int, *, concurrent: bool
) -> tuple[list[float], list[float], int]:
    """(store rates, ceiling rates, the store's transactions per run), ``pairs`` pairs,
    the order alternating, each run on a fresh file."""
    per_transaction = 10_000 if concurrent else n
    tag = "together" if concurrent else "alone"
    store: list[float] = []
    ceiling: list[float] = []
    transactions = 0
    for index in range(pairs):
        for side in order(index):
            if side == "baseline":
                path = base / f"ceiling-{tag}-{index}.sqlite3"
                ceiling.append(ceiling_writes(path, n, calls, per_transaction))
            else:
                path = base / f"store-{tag}-{index}.sqlite3"
                rate, transactions = asyncio.run(
                    store_writes(path, n, calls, concurrent=concurrent)
                )
                store.append(rate)
    return store, ceiling, transactions


# --- (b) energy reads ---------------------------------------------------------------------------


def day_rows(n: int) -> Iterator[tuple[int, float, float, int]]:
    """24 h of 10 s readings per channel, in key order; one counter reset per channel."""
    for cid in range(1, n + 1):
        value = 10_000.0 * cid
        reset = (cid * 7919) % PER_DAY
        rate = 2.0 + (cid % 17) * 0.25  # Wh per 10 s: 0.7 .. 2.3 kW
        for k in range(PER_DAY):
            if k == reset:
                value = 0.0
            else:
                value += rate + (k % 5) * 0.01
            yield cid, T0 + STEP * k, value, int(k in (0, reset))


def generate(path: Path, n: int) -> float:
    """Setup, not a figure: one transaction, no journal, no fsync, no foreign key checks."""
    asyncio.run(prepare(path, n))
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode = OFF")
        conn.execute("PRAGMA synchronous = OFF")
        conn.execute("PRAGMA cache_size = -200000")
        began = time.perf_counter()
        conn.execute("BEGIN")
        conn.executemany(_INSERT, day_rows(n))
        conn.execute("COMMIT")
        elapsed = time.perf_counter() - began
        conn.execute("PRAGMA journal_mode = WAL")
        return elapsed
    finally:
        conn.close()


def full_check(path: Path, cid: int, intervals: list[tuple[float, float]]) -> list[float | None]:
    conn = sqlite3.connect(path)
    try:
        rows = conn.execute(
            "SELECT at, value FROM readings WHERE channel_id = ? ORDER BY at", (cid,)
        ).fetchall()
    finally:
        conn.close()
    full = counter_intervals(rows, intervals, to_kwh=0.001, wrap=None, max_gap=60.0)
    return [e.kwh if e else None for e in full]


async def energy_reads(path: Path, n: int, pairs: int) -> dict[str, Any]:
    quarter = [(T0 + 900.0 * i, T0 + 900.0 * (i + 1)) for i in range(96)]
    hourly = [(T0 + 3600.0 * i, T0 + 3600.0 * (i + 1)) for i in range(24)]
    names = [c.name for c in channels(n)]
    figures: dict[str, Any] = {}
    async with open_database(path) as db:
        store = ReadingsStore(db)
        for label, intervals in (("96x15min", quarter), ("24x1h", hourly)):
            serial: list[float] = []
            overlapped: list[float] = []
            for index in range(pairs):
                for side in order(index):
                    if side == "baseline":
                        began = time.perf_counter()
                        results = [
                            await store.interval_energy(ADAPTER, name, intervals, max_gap=60.0)
                            for name in names
                        ]
                        serial.append(time.perf_counter() - began)
                    else:
                        overlapped.append(await gathered(store, names, intervals))
            figures[label] = statistics.median(serial)
            figures[f"{label} gathered"] = statistics.median(overlapped)
            figures[f"{label} ratios"] = [
                ratio(g, s) for s, g in zip(serial, overlapped, strict=True)
            ]
            known = sum(e is not None for r in results for e in r)
            figures[f"{label} known"] = known / (n * len(intervals))
            for cid in (1, n // 2, n):  # spot check against every stored sample
                want = full_check(path, cid, intervals)
                got = [e.kwh if e else None for e in results[cid - 1]]
                assert all(
                    (g is None and w is None)
                    or (g is not None and w is not None and math.isclose(g, w, rel_tol=1e-9))
                    for g, w in zip(got, want, strict=True)
                ), (cid, got, want)
        figures["build_job"] = await build_reports(store, names, quarter)
        fetched = [
            len(await store.samples_for((ADAPTER, name), quarter, max_gap=60.0))
            for name in names[:100]
        ]
        figures["rows fetched"] = sum(fetched) / len(fetched)
        began = time.perf_counter()
        assert len(await store.channel_stats()) == n
        figures["channel_stats"] = time.perf_counter() - began
    return figures


CONCURRENT = 4


async def build_reports(
    store: ReadingsStore, names: list[str], intervals: list[tuple[float, float]]
) -> float:
    """What the scheduler really does: plan a PriceCurve for every channel's resource, read
    the energy (``build_job``), and encode the frozen report body."""
    import datetime as dt

    from gateway import wire
    from gateway.config import parse_config
    from gateway.reports.planner import plan_event
    from gateway.reports.scheduler import build_job

    config = parse_config(
        {
            "adapters": {ADAPTER: {"type": "simulated"}},
            "reporting": {"grace": "0s"},
            "resources": [
                {
                    "resource_id": f"res-{name}",
                    "location_id": "loc",
                    "adapter": ADAPTER,
                    "channel": name,
                }
                for name in names
            ],
        },
        base=Path("."),
    )
    payload = wire.PriceCurve(
        targets=[wire.PriceCurveTarget(resource_id=f"res-{n}", location_id="loc") for n in names],
        price_curve_delta=wire.PriceCurveDelta(
            points=[
                wire.PriceCurvePoint(timestamp=dt.datetime.fromtimestamp(s, dt.UTC), price=0.1)
                for s, _ in intervals
            ],
            resolution="00:15:00",
        ),
        price_area="NO1",
    )
    began = time.perf_counter()
    now, received = intervals[-1][1] + 1, intervals[0][0] - 3600  # sent an hour ahead
    plan = plan_event("bench-event", payload, config, now=now, received_at=received)
    (job,) = plan.jobs
    result, _ = await build_job(job, store, max_gap=60.0)
    elapsed = time.perf_counter() - began
    assert result.request is not None
    assert len(result.request.payloads) == len(names)
    return elapsed


async def gathered(
    store: ReadingsStore, names: list[str], intervals: list[tuple[float, float]]
) -> float:
    """The same with ``CONCURRENT`` channels in flight: SQL overlaps the arithmetic."""
    gate = asyncio.Semaphore(CONCURRENT)

    async def one(name: str) -> None:
        async with gate:
            await store.interval_energy(ADAPTER, name, intervals, max_gap=60.0)

    began = time.perf_counter()
    await asyncio.gather(*(one(name) for name in names))
    return time.perf_counter() - began


# --- (c) size after compaction ------------------------------------------------------------------


async def compaction(path: Path) -> tuple[float, int, int]:
    async with open_database(path) as db:
        store = ReadingsStore(db)
        began = time.perf_counter()
        stats = await store.compact(
            now=T0 + 86400.0 + 48 * 3600.0,
            raw_retention=48 * 3600.0,
            retention=62 * 86400.0,
            max_gap=60.0,
        )
        return time.perf_counter() - began, stats.points_written, stats.raw_deleted


def vacuum(path: Path) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.execute("VACUUM")
    finally:
        conn.close()


# --- report -------------------------------------------------------------------------------------

Line = tuple[str, str, str, bool | None]
"""(what, figure, target, met: None when there is no target)."""


def print_table(title: str, lines: list[Line]) -> None:
    print(title)
    for what, figure, target, met in lines:
        verdict = "" if met is None else ("ok" if met else "MISSED")
        print(f"  {what:<62} {figure:>14}  {target:<12} {verdict}".rstrip())
    print()


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--dir", type=Path, default=None, help="where the database files go")
    parser.add_argument("--channels", type=int, default=1000)
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="100 channels, 2 pairs")
    args = parser.parse_args()
    if args.quick:
        args.channels, args.pairs = 100, 2
    n, calls = args.channels, 100
    began = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="ecgw-bench-") as tmp:
        base = Path(tmp)
        print(
            f"readings store bench: {n} channels, {args.pairs} pairs, "
            f"SQLite {sqlite3.sqlite_version}, in {base}; {load_line(os.getloadavg())}\n"
        )
        together, ceiling_big, tx_together = write_pairs(
            base, n, calls, args.pairs, concurrent=True
        )
        alone, ceiling_small, tx_alone = write_pairs(base, n, calls, args.pairs, concurrent=False)
        generated = generate(base / "day.sqlite3", n)
        raw_bytes = db_bytes(base / "day.sqlite3")[1]
        energy = asyncio.run(energy_reads(base / "day.sqlite3", n, args.pairs))
        compact_s, points, deleted = asyncio.run(compaction(base / "day.sqlite3"))
        vacuum(base / "day.sqlite3")
        compacted = db_bytes(base / "day.sqlite3")[0] / n

    target = ">= 20,000/s"
    med = statistics.median
    print_table(
        "(a) writes: readings committed per second (medians of the pairs)",
        [
            (
                f"write(): {calls} concurrent calls x {n:,}, {tx_together} transactions",
                f"{med(together):,.0f}/s",
                target,
                med(together) >= 20_000,
            ),
            (
                "  ceiling: executemany, same rows, 10,000 per transaction",
                f"{med(ceiling_big):,.0f}/s",
                "",
                None,
            ),
            (
                f"write(): {calls} calls one after another, {tx_alone} transactions",
                f"{med(alone):,.0f}/s",
                target,
                med(alone) >= 20_000,
            ),
            (
                f"  ceiling: executemany, same rows, {n:,} per transaction",
                f"{med(ceiling_small):,.0f}/s",
                "",
                None,
            ),
        ],
    )
    for what, store, ceiling in (
        ("concurrent calls", together, ceiling_big),
        ("calls one after another", alone, ceiling_small),
    ):
        pairs = [ratio(a, b) for a, b in zip(store, ceiling, strict=True)]
        print("  " + ratio_line(f"store / ceiling, {what}", pairs))
    print()
    lines: list[Line] = []
    for label, what in (("96x15min", "96 quarter-hours"), ("24x1h", "24 hours")):
        seconds, overlapped = energy[label], energy[f"{label} gathered"]
        lines += [
            (
                f"{what} x {n} channels, one channel after another",
                f"{seconds:.2f} s",
                "<= 2 s",
                seconds <= 2.0,
            ),
            (
                f"  the same, {CONCURRENT} channels at a time (asyncio.gather)",
                f"{overlapped:.2f} s",
                "<= 2 s",
                overlapped <= 2.0,
            ),
        ]
    lines += [
        (
            f"report for {n} resources x 96 quarter-hours (plan, build_job, frozen body)",
            f"{energy['build_job']:.2f} s",
            "<= 2 s",
            energy["build_job"] <= 2.0,
        ),
        (
            "raw rows fetched per channel for 96 quarter-hours, of 8,640",
            f"{energy['rows fetched']:.0f}",
            "",
            None,
        ),
        (
            "intervals known (the last ends after the day's last reading)",
            f"{energy['96x15min known']:.2%}",
            "",
            None,
        ),
        (
            f"channel_stats() over the {n * PER_DAY / 1e6:.2f} M rows (counts every row)",
            f"{energy['channel_stats']:.2f} s",
            "",
            None,
        ),
    ]
    print_table(
        f"(b) interval_energy from 24 h of 10 s counter readings "
        f"({n * PER_DAY / 1e6:.2f} M rows, generated in {generated:.0f} s)",
        lines,
    )
    for label in ("96x15min", "24x1h"):
        print(
            "  "
            + ratio_line(
                f"{label}, {CONCURRENT} at a time / one after another", energy[f"{label} ratios"]
            )
        )
    print()
    print_table(
        "(c) database bytes per channel-day",
        [
            (
                "raw readings, before compaction (pages in use)",
                f"{raw_bytes / n / 1024:,.1f} KB",
                "",
                None,
            ),
            (
                "after compaction + VACUUM (page_count x page_size)",
                f"{compacted / 1024:,.1f} KB",
                "<= 100 KB",
                compacted <= 100 * 1024,
            ),
            (
                f"  compaction: {points:,} points written, {deleted:,} raw rows deleted",
                f"{compact_s:.0f} s",
                "",
                None,
            ),
        ],
    )
    print(f"total bench time {time.perf_counter() - began:.0f} s")


if __name__ == "__main__":
    main()
