"""The report outbox against persist-queue's ``SQLiteAckQueue``, on the same report bodies.

Both on SQLite in WAL mode with ``synchronous=FULL`` (checked, not assumed), both
on the same disk, in the same process, taking turns in slices of 32 reports (on a
shared machine fsync latency changes from second to second; both see the same):

* **end to end**: enqueue N reports (each committed before the call returns), then
  deliver and acknowledge all of them;
* **backlog**: 10,000 reports already queued (filled untimed), deliver and
  acknowledge all of them.

Each side uses its own API as it is meant to be used. The outbox: ``enqueue`` per
report, then ``settle`` rounds as the deliverer's keeper runs them (record the
previous round's outcomes and claim the next 32 in one transaction; 32 = the
default 4 workers x 8 claimed ahead). persist-queue (single-threaded, its fastest
use; ``auto_commit=True``, which its ack queue enforces): ``put`` per report,
then ``get`` and ``ack`` per report, each its own commit. Bodies are stored as
raw bytes by both (persist-queue gets a pass-through serializer). Acknowledged
rows stay in both tables (the outbox keeps delivered rows by design;
persist-queue keeps acked rows until ``clear_acked_data`` is called).

    python bench/outbox_vs_persistqueue.py [--reports 1000] [--backlog 10000] [--rounds 1] [--quick]

Prints reports/s for each and the ratio outbox / persist-queue (target >= 2).
Needs ``pip install -e '.[bench]'`` (persist-queue).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from delivery import bodies  # the report bodies bench/delivery.py posts

CLAIM = 32  # the deliverer's default: 4 workers x CLAIM_PER_WORKER (8)
KINDS = ("outbox", "persist-queue")
PASS_THROUGH = SimpleNamespace(dumps=lambda b: b, loads=lambda b: b)  # bytes in, bytes out


# --- the outbox ------------------------------------------------------------------


def event_id(i: int) -> str:
    """Spark's event ids are UUIDs: random-looking, so they land all over the key index."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"ecgw-bench-{i}"))


async def outbox_enqueue(outbox: Any, payloads: list[bytes], first: int) -> list[float]:
    """Queue each body (one commit each); the seconds each call took."""
    took = []
    for i, body in enumerate(payloads, first):
        start = time.perf_counter()
        await outbox.enqueue(
            event_id=event_id(i), kind="EnergyUsage", body=body, source="bench", now=0.0
        )
        took.append(time.perf_counter() - start)
    return took


async def outbox_drain(outbox: Any, n: int) -> list[float]:
    """Claim and acknowledge ``n`` reports as the keeper does; the seconds each
    transaction took (the first only claims, the last only records)."""
    from gateway.delivery.policy import Delivered

    start = time.perf_counter()
    done, claimed = 0, await outbox.claim(now=1.0, limit=CLAIM)
    took = [time.perf_counter() - start]
    while claimed:
        results = [(item.id, Delivered(status=200, report_id=f"r{item.id}")) for item in claimed]
        done += len(results)
        start = time.perf_counter()
        claimed = (await outbox.settle(results, now=1.0, limit=CLAIM)).claimed
        took.append(time.perf_counter() - start)
    assert done == n, (done, n)
    return took


class OutboxSide:
    """The outbox, run a slice at a time."""

    def __init__(self, db: Any) -> None:
        from gateway.store.outbox import Outbox

        self.db = db
        self.outbox = Outbox(db)
        self.claimed: list[Any] = []

    async def put(self, payloads: list[bytes], first: int) -> float:
        return sum(await outbox_enqueue(self.outbox, payloads, first))

    async def deliver(self, count: int) -> tuple[float, int]:
        """Settle rounds (record the last claim, claim the next) until ``count`` reports
        are acknowledged or none is left; (seconds, reports acknowledged)."""
        from gateway.delivery.policy import Delivered

        start, done = time.perf_counter(), 0
        while done < count:
            results = [(i.id, Delivered(status=200, report_id=f"r{i.id}")) for i in self.claimed]
            self.claimed = (await self.outbox.settle(results, now=1.0, limit=CLAIM)).claimed
            done += len(results)
            if not self.claimed and not results:
                break
        return time.perf_counter() - start, done

    async def synchronous(self, level: str) -> None:
        await self.db.conn.execute(f"PRAGMA synchronous = {level}")
        assert await synchronous(self.db.conn) == {"FULL": 2, "OFF": 0}[level]


async def synchronous(conn: Any) -> int:
    async with conn.execute("PRAGMA synchronous") as cur:
        row = await cur.fetchone()
    return int(row[0])


# --- persist-queue -----------------------------------------------------------------


def pq_open(path: Path) -> Any:
    from persistqueue import SQLiteAckQueue

    queue = SQLiteAckQueue(str(path), auto_commit=True, serializer=PASS_THROUGH)
    pq_synchronous(queue, "FULL")
    return queue


def pq_synchronous(queue: Any, level: str) -> None:
    # persist-queue has no option for it; its connections are set like the gateway's.
    for conn in {id(c): c for c in (queue._getter, queue._putter)}.values():
        conn.execute(f"PRAGMA synchronous = {level}")
        expected = {"FULL": 2, "OFF": 0}[level]
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == expected


def pq_put(queue: Any, payloads: list[bytes]) -> float:
    start = time.perf_counter()
    for body in payloads:
        queue.put(body)
    return time.perf_counter() - start


def pq_deliver(queue: Any, count: int) -> tuple[float, int]:
    """``get`` and ``ack`` up to ``count`` reports; (seconds, reports acknowledged)."""
    from persistqueue.exceptions import Empty

    start, done = time.perf_counter(), 0
    while done < count:
        try:
            item = queue.get(block=False, raw=True)
        except Empty:
            break
        queue.ack(id=item["pqid"])
        done += 1
    return time.perf_counter() - start, done


# --- the run ---------------------------------------------------------------------------


async def one_round(state: Path, n: int, backlog: int) -> dict[str, dict[str, float]]:
    """Both queues side by side, alternating in slices of ``CLAIM`` reports so that both
    see the same disk (on a shared machine fsync latency changes from second to second)."""
    from gateway.store.database import open_database

    took = {kind: dict.fromkeys(("enqueue", "deliver", "drain"), 0.0) for kind in KINDS}
    commits = dict.fromkeys(KINDS, 0)  # COMMITs, as SQLite's statement trace shows them

    def counter(kind: str) -> Callable[[str], None]:
        def count(sql: str) -> None:
            commits[kind] += sql.lstrip().upper().startswith("COMMIT")

        return count

    def phase_commits(phase: str, before: dict[str, int]) -> None:
        for kind in KINDS:
            took[kind][f"{phase} commits"] = commits[kind] - before[kind]

    queue = pq_open(state / "pq")
    queue._putter.set_trace_callback(counter("persist-queue"))  # its only connection
    async with open_database(state / "ecgw.sqlite3") as db:
        ours = OutboxSide(db)
        await ours.synchronous("FULL")
        await db.conn.set_trace_callback(counter("outbox"))
        payloads = bodies(n + backlog)
        before = dict(commits)
        for first in range(0, n, CLAIM):  # end to end: enqueue...
            chunk = payloads[first : min(first + CLAIM, n)]
            took["outbox"]["enqueue"] += await ours.put(chunk, first)
            took["persist-queue"]["enqueue"] += pq_put(queue, chunk)
        phase_commits("enqueue", before)
        before = dict(commits)
        await _deliver_all(ours, queue, n, took, "deliver")  # ...then deliver
        phase_commits("deliver", before)
        await ours.synchronous("OFF")  # the backlog is written untimed
        pq_synchronous(queue, "OFF")
        await ours.put(payloads[n:], n)
        pq_put(queue, payloads[n:])
        await ours.synchronous("FULL")
        pq_synchronous(queue, "FULL")
        before = dict(commits)
        await _deliver_all(ours, queue, backlog, took, "drain")
        phase_commits("drain", before)
    queue.close()
    return took


async def _deliver_all(
    ours: OutboxSide, queue: Any, n: int, took: dict[str, dict[str, float]], phase: str
) -> None:
    done = dict.fromkeys(KINDS, 0)
    while min(done.values()) < n:
        seconds, count = await ours.deliver(CLAIM)
        took["outbox"][phase] += seconds
        done["outbox"] += count
        seconds, count = pq_deliver(queue, CLAIM)
        took["persist-queue"][phase] += seconds
        done["persist-queue"] += count
    assert done == dict.fromkeys(KINDS, n), done


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reports", type=int, default=1000)
    parser.add_argument("--backlog", type=int, default=10000)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="300 reports, 2,000 backlog, 1 round")
    args = parser.parse_args()
    if args.quick:
        args.reports, args.backlog, args.rounds = 300, 2000, 1
    runs: dict[str, list[dict[str, float]]] = {kind: [] for kind in KINDS}
    for _ in range(args.rounds):
        with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR")) as tmp:
            for kind, took in asyncio.run(one_round(Path(tmp), args.reports, args.backlog)).items():
                runs[kind].append(took)
    n, b = args.reports, args.backlog
    print(
        f"reports: {n} end to end, {b} backlog; rounds: {args.rounds}; synchronous=FULL; "
        f"load average: {os.getloadavg()[0]:.2f}; sqlite {sqlite3.sqlite_version}; "
        f"python {sys.version.split()[0]}"
    )

    def rate(kind: str, phase: str, count: int) -> float:
        if phase == "end to end":
            return statistics.median(count / (x["enqueue"] + x["deliver"]) for x in runs[kind])
        return statistics.median(count / x[phase] for x in runs[kind])

    def per_report(kind: str, phase: str, count: int) -> float:
        if phase == "end to end":
            return per_report(kind, "enqueue", count) + per_report(kind, "deliver", count)
        return statistics.median(x[f"{phase} commits"] for x in runs[kind]) / count

    for phase, count in (("enqueue", n), ("deliver", n), ("end to end", n), ("drain", b)):
        ours, theirs = rate("outbox", phase, count), rate("persist-queue", phase, count)
        c_ours, c_theirs = (
            per_report("outbox", phase, count),
            per_report("persist-queue", phase, count),
        )
        print(
            f"{phase:10s}: outbox {ours:7.0f}/s  persist-queue {theirs:7.0f}/s  "
            f"ratio {ours / theirs:5.2f}   commits (fsyncs) per report: "
            f"outbox {c_ours:.2f}, persist-queue {c_theirs:.2f}"
        )
    print(
        "target: end to end and drain ratio >= 2 (when fsync dominates, the ratio tends to "
        "the ratio of commits per report)"
    )


if __name__ == "__main__":
    main()
