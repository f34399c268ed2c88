"""The report outbox against persist-queue's ``SQLiteAckQueue``, on the same report bodies.

Both on SQLite in WAL mode with ``synchronous=FULL`` (checked, not assumed), both
on the same disk, in the same process, taking turns in slices of 32 reports (on a
shared machine fsync latency changes from second to second; both see the same):

* **end to end**: enqueue N reports (each committed before the call returns), then
  deliver and acknowledge all of them;
* **backlog**: 10,000 reports already queued (filled untimed), deliver and
  acknowledge all of them.

Each side uses its own API as it is meant to be used. The outbox: ``enqueue`` per
report (one statement in autocommit: one commit each), then ``settle`` rounds as
the deliverer's keeper runs them (record the previous round's outcomes and claim
the next 32 in one transaction; 32 = the default 4 workers x 8 claimed ahead).
persist-queue (single-threaded, its fastest use; ``auto_commit=True``, which its
ack queue enforces): ``put`` per report, then ``get`` and ``ack`` per report, each
its own commit. Bodies are stored as raw bytes by both (persist-queue gets a
pass-through serializer). Acknowledged rows stay in both tables (the outbox keeps
delivered rows by design; persist-queue keeps acked rows until
``clear_acked_data`` is called).

Beside them, on a database of its own, **outbox batched**: the same reports queued
``--batch`` at a time in one transaction (``Outbox.enqueue_in`` inside
``Database.write``, as a pass of the scheduler does when it builds reports for
several events at once), then delivered as above. Printed on lines of its own; it
never replaces the per-report figures.

Commits are counted from SQLite's statement trace (a ``COMMIT``, or a write
statement outside ``BEGIN`` ... ``COMMIT``: it commits by itself; a trigger's repeat of
the statement is not another) in an untimed round of its own, with up to 320 reports and
a 2,000 backlog: tracing calls Python from SQLite's thread for every statement, and in a
timed round it cost the outbox up to 8x.

Each round is one pair: the sides take turns slice by slice (the order alternating
from slice to slice), and the round gives one ratio per phase. Every round's ratio
is printed with the median and spread.

    python bench/outbox_vs_persistqueue.py [--reports 1000] [--backlog 10000] [--rounds 3]
        [--batch 32] [--quick]

Prints reports/s for each and the ratio outbox / persist-queue (target >= 2).
Needs ``pip install -e '.[bench]'`` (persist-queue).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sqlite3
import sys
import tempfile
import time
import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from delivery import bodies  # the report bodies bench/delivery.py posts
from pairs import load_line, order, ratio, ratio_line

CLAIM = 32  # the deliverer's default: 4 workers x CLAIM_PER_WORKER (8)
KINDS = ("outbox", "outbox batched", "persist-queue")
PHASES = ("enqueue", "deliver", "drain")
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

    async def put_batched(self, payloads: list[bytes], first: int, batch: int) -> float:
        """Queue ``batch`` reports per transaction, as a scheduler pass does
        (``WriteBatch.queue_report``: the batch's reports in one statement, their job
        rows in one more)."""
        from gateway.store.batch import WriteBatch
        from gateway.store.outbox import NewReport

        start = time.perf_counter()
        for offset in range(0, len(payloads), batch):
            writes = WriteBatch()
            for i, body in enumerate(payloads[offset : offset + batch], first + offset):
                report = NewReport(event_id(i), "EnergyUsage", body, "bench", 0.0)
                writes.queue_report(report, note=None)
            await writes.commit(self.db)
        return time.perf_counter() - start

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


class CommitCounter:
    """Commits in a connection's statement trace: each ``COMMIT``, and each write
    statement run outside ``BEGIN`` ... ``COMMIT`` (autocommit: it commits by itself)."""

    WRITES = ("INSERT", "UPDATE", "DELETE", "REPLACE")

    def __init__(self) -> None:
        self.commits = 0
        self.open = False
        self._last = ""

    def __call__(self, sql: str) -> None:
        if sql == self._last:  # a trigger's subprogram: SQLite traces the statement again
            return
        self._last = sql
        word = sql.lstrip()[:8].upper()
        if word.startswith("BEGIN"):
            self.open = True
        elif word.startswith(("COMMIT", "END")):
            self.commits, self.open = self.commits + 1, False
        elif word.startswith("ROLLBACK"):
            self.open = False
        elif word.startswith(self.WRITES) and not self.open:
            self.commits += 1


async def one_round(
    state: Path, n: int, backlog: int, batch: int, *, trace: bool = False
) -> dict[str, dict[str, float]]:
    """All sides, taking turns in slices of ``CLAIM`` reports (the order alternating from
    slice to slice) so that all see the same disk: on a shared machine fsync latency
    changes from second to second. ``trace``: count commits from SQLite's statement trace
    (an untimed round only: the trace calls Python from SQLite's thread for every statement
    and trigger, and fought the event loop for the GIL: it cut the outbox's rate up to 8x)."""
    from gateway.store.database import open_database

    took = {kind: dict.fromkeys(PHASES, 0.0) for kind in KINDS}
    counters = {kind: CommitCounter() for kind in KINDS}

    def phase_commits(phase: str, before: dict[str, int]) -> None:
        for kind in KINDS:
            took[kind][f"{phase} commits"] = counters[kind].commits - before[kind]

    def now_commits() -> dict[str, int]:
        return {kind: counters[kind].commits for kind in KINDS}

    queue = pq_open(state / "pq")
    if trace:
        queue._putter.set_trace_callback(counters["persist-queue"])  # its only connection
    async with (
        open_database(state / "ecgw.sqlite3") as db,
        open_database(state / "batched.sqlite3") as db_batched,
    ):
        sides = {"outbox": OutboxSide(db), "outbox batched": OutboxSide(db_batched)}
        for kind, side in sides.items():
            await side.synchronous("FULL")
            if trace:
                await side.db.conn.set_trace_callback(counters[kind])
        ours, batched = sides["outbox"], sides["outbox batched"]
        payloads = bodies(n + backlog)
        before = now_commits()
        for k, first in enumerate(range(0, n, CLAIM)):  # end to end: enqueue...
            chunk = payloads[first : min(first + CLAIM, n)]
            for side in order(k):
                if side == "subject":
                    took["outbox"]["enqueue"] += await ours.put(chunk, first)
                    took["outbox batched"]["enqueue"] += await batched.put_batched(
                        chunk, first, batch
                    )
                else:
                    took["persist-queue"]["enqueue"] += pq_put(queue, chunk)
        phase_commits("enqueue", before)
        before = now_commits()
        await _deliver_all(sides, queue, n, took, "deliver")  # ...then deliver
        phase_commits("deliver", before)
        await ours.synchronous("OFF")  # the backlog is written untimed
        pq_synchronous(queue, "OFF")
        await ours.put(payloads[n:], n)
        pq_put(queue, payloads[n:])
        await ours.synchronous("FULL")
        pq_synchronous(queue, "FULL")
        before = now_commits()
        await _deliver_all({"outbox": ours}, queue, backlog, took, "drain")
        phase_commits("drain", before)
    queue.close()
    return took


async def _deliver_all(
    sides: dict[str, OutboxSide],
    queue: Any,
    n: int,
    took: dict[str, dict[str, float]],
    phase: str,
) -> None:
    done = dict.fromkeys([*sides, "persist-queue"], 0)
    k = 0
    while min(done.values()) < n:
        for side in order(k):
            if side == "subject":
                for kind, ours in sides.items():
                    seconds, count = await ours.deliver(CLAIM)
                    took[kind][phase] += seconds
                    done[kind] += count
            else:
                seconds, count = pq_deliver(queue, CLAIM)
                took["persist-queue"][phase] += seconds
                done["persist-queue"] += count
        k += 1
    assert done == dict.fromkeys(done, n), done


LINES = (
    # (label, side, phase, count: "reports" or "backlog")
    ("enqueue, one commit per report (Outbox.enqueue)", "outbox", "enqueue", "reports"),
    ("deliver + acknowledge", "outbox", "deliver", "reports"),
    ("end to end (enqueue per report, then deliver)", "outbox", "end to end", "reports"),
    ("drain the backlog", "outbox", "drain", "backlog"),
    (
        "BATCHED enqueue, {batch} reports per commit (WriteBatch.queue_report, with job rows)",
        "outbox batched",
        "enqueue",
        "reports",
    ),
    (
        "BATCHED end to end (enqueue in batches, then deliver)",
        "outbox batched",
        "end to end",
        "reports",
    ),
)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reports", type=int, default=1000)
    parser.add_argument("--backlog", type=int, default=10000)
    parser.add_argument("--rounds", type=int, default=3, help="rounds, each one pair")
    parser.add_argument(
        "--batch", type=int, default=CLAIM, help=f"outbox batched: reports per commit (1-{CLAIM})"
    )
    parser.add_argument("--quick", action="store_true", help="300 reports, 2,000 backlog, 3 rounds")
    args = parser.parse_args()
    if not 1 <= args.batch <= CLAIM:
        parser.error(f"--batch: {args.batch} is not between 1 and {CLAIM} (a slice)")
    if args.quick:
        args.reports, args.backlog, args.rounds = 300, 2000, 3
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR")) as tmp:
        small = {"reports": min(args.reports, 320), "backlog": min(args.backlog, 2000)}
        counted = asyncio.run(
            one_round(Path(tmp), small["reports"], small["backlog"], args.batch, trace=True)
        )
    runs: list[dict[str, dict[str, float]]] = []
    for _ in range(args.rounds):
        with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR")) as tmp:
            runs.append(asyncio.run(one_round(Path(tmp), args.reports, args.backlog, args.batch)))
    print(
        f"reports: {args.reports} end to end, {args.backlog} backlog; rounds (pairs): "
        f"{args.rounds}; synchronous=FULL; {load_line(os.getloadavg())}; "
        f"sqlite {sqlite3.sqlite_version}; python {sys.version.split()[0]}"
    )
    counts = {"reports": args.reports, "backlog": args.backlog}

    def seconds(run: dict[str, dict[str, float]], kind: str, phase: str) -> float:
        if phase == "end to end":
            return run[kind]["enqueue"] + run[kind]["deliver"]
        return run[kind][phase]

    def commits(run: dict[str, dict[str, float]], kind: str, phase: str) -> float:
        if phase == "end to end":
            return run[kind]["enqueue commits"] + run[kind]["deliver commits"]
        return run[kind][f"{phase} commits"]

    for label, kind, phase, count in LINES:
        n = counts[count]
        ours = [n / seconds(run, kind, phase) for run in runs]
        theirs = [n / seconds(run, "persist-queue", phase) for run in runs]
        c_ours = commits(counted, kind, phase) / small[count]
        c_theirs = commits(counted, "persist-queue", phase) / small[count]
        print(
            f"{label.format(batch=args.batch)}: {kind} /s per round "
            f"[{', '.join(f'{x:.0f}' for x in ours)}], persist-queue /s "
            f"[{', '.join(f'{x:.0f}' for x in theirs)}]; commits per report: "
            f"{kind} {c_ours:.2f}, persist-queue {c_theirs:.2f}"
        )
        pairs = [ratio(a, b) for a, b in zip(ours, theirs, strict=True)]
        print("  " + ratio_line(f"ratio {kind} / persist-queue", pairs))
    print(
        "target: end to end and drain ratio >= 2 (per-report enqueue; when fsync dominates, "
        "the ratio tends to the ratio of commits per report)"
    )


if __name__ == "__main__":
    main()
