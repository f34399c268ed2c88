"""The outbox row state machine: the table, every (state, event) pair against real SQLite,
outcomes recorded one by one in effect, and claims that ignore delivered rows."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from structlog.testing import capture_logs

from gateway.store.database import Database, open_database
from gateway.store.outbox import Outbox
from gateway.store.outbox_states import (
    TRANSITIONS,
    Dead,
    Delivered,
    Outcome,
    Retry,
    RowEvent,
    RowState,
    TransitionError,
    sources,
    target,
    transition,
)
from tests.kit.gateway import report_body, wait_until
from tests.test_api_client import FakeApi, client, json_reply

S, E = RowState, RowEvent
GONE = "deleted"

# The specification, every pair written out: the new state, GONE, or None (illegal).
EXPECTED: dict[tuple[RowState, RowEvent], RowState | str | None] = {
    (S.PENDING, E.CLAIM): S.IN_FLIGHT,
    (S.PENDING, E.DELIVERED): None,
    (S.PENDING, E.RETRY): None,
    (S.PENDING, E.DEAD): None,
    (S.PENDING, E.HAND_BACK): None,
    (S.PENDING, E.RECOVER): None,
    (S.PENDING, E.RETRY_NOW): S.PENDING,
    (S.PENDING, E.PURGE): None,
    (S.IN_FLIGHT, E.CLAIM): None,
    (S.IN_FLIGHT, E.DELIVERED): S.DELIVERED,
    (S.IN_FLIGHT, E.RETRY): S.PENDING,
    (S.IN_FLIGHT, E.DEAD): S.DEAD,
    (S.IN_FLIGHT, E.HAND_BACK): S.PENDING,
    (S.IN_FLIGHT, E.RECOVER): S.PENDING,
    (S.IN_FLIGHT, E.RETRY_NOW): None,
    (S.IN_FLIGHT, E.PURGE): None,
    **{(S.DELIVERED, event): None for event in RowEvent},  # final
    (S.DEAD, E.CLAIM): None,
    (S.DEAD, E.DELIVERED): None,
    (S.DEAD, E.RETRY): None,
    (S.DEAD, E.DEAD): None,
    (S.DEAD, E.HAND_BACK): None,
    (S.DEAD, E.RECOVER): None,
    (S.DEAD, E.RETRY_NOW): S.PENDING,
    (S.DEAD, E.PURGE): GONE,
}
PAIRS = sorted(EXPECTED)


def test_the_table_is_the_specification() -> None:
    assert set(EXPECTED) == {(s, e) for s in RowState for e in RowEvent}
    for (state, event), want in EXPECTED.items():
        if want is None:
            assert event not in TRANSITIONS[state]
            with pytest.raises(TransitionError, match=f"from '{state}' on '{event}'"):
                transition(state, event)
        else:
            assert transition(state, event) == (None if want == GONE else want)


def test_each_event_has_one_target() -> None:
    assert sources(E.RETRY_NOW) == (S.PENDING, S.DEAD)
    assert target(E.PURGE) is None
    assert {target(e) for e in (E.RETRY, E.HAND_BACK, E.RECOVER)} == {S.PENDING}


# --- every pair against a real database ------------------------------------------------------

NOW = 1_000.0


async def row_in(outbox: Outbox, db: Database, state: RowState) -> int:
    """A fresh row brought to ``state`` by the outbox's own legal moves."""
    count = len(await outbox.items())
    event_id = f"e{count}"
    await outbox.enqueue(event_id=event_id, kind="k", body=b"{}", source="t", now=NOW)
    (item,) = await outbox.find(event_id)
    if state is S.PENDING:
        return item.id
    (claimed,) = await outbox.claim(now=NOW, limit=1)
    assert claimed.id == item.id
    outcome: Outcome | None = {
        S.IN_FLIGHT: None,
        S.DELIVERED: Delivered(status=200, report_id="r"),
        S.DEAD: Dead(status=400, error="bad"),
    }[state]
    if outcome is not None:
        assert await outbox.record([(item.id, outcome)], now=NOW) == {}
    return item.id


async def apply(outbox: Outbox, event: RowEvent, item_id: int) -> dict[int, str]:
    """Apply ``event`` to the row through the outbox's public method for it."""
    outcomes: dict[RowEvent, Outcome] = {
        E.DELIVERED: Delivered(status=201, report_id="r2"),
        E.RETRY: Retry(status=503, error="later", next_attempt_at=NOW + 5),
        E.DEAD: Dead(status=422, error="no"),
    }
    match event:
        case E.CLAIM:
            await outbox.claim(now=NOW + 1, limit=100)
        case E.DELIVERED | E.RETRY | E.DEAD:
            return await outbox.record([(item_id, outcomes[event])], now=NOW + 1)
        case E.HAND_BACK:
            await outbox.hand_back([item_id], now=NOW + 1)
        case E.RECOVER:
            await outbox.recover(now=NOW + 1)
        case E.RETRY_NOW:
            await outbox.retry([item_id], now=NOW + 1)
        case E.PURGE:
            await outbox.purge([item_id])
    return {}


@pytest.mark.parametrize(("state", "event"), PAIRS)
async def test_every_state_and_event_on_a_real_row(
    db: Database, state: RowState, event: RowEvent
) -> None:
    outbox = Outbox(db)
    item_id = await row_in(outbox, db, state)
    unrecorded = await apply(outbox, event, item_id)
    found = await outbox.find(str(item_id))
    want = EXPECTED[(state, event)]
    if want == GONE:
        assert found == []
        return
    (row,) = found
    if want is None:  # illegal: the row is left exactly as it was
        assert row.state == state
        if event in (E.DELIVERED, E.RETRY, E.DEAD):
            assert unrecorded == {item_id: f"outbox row: no transition from '{state}' on '{event}'"}
    else:
        assert row.state == want
        assert unrecorded == {}


# --- recording outcomes: each fails alone ---------------------------------------------------


async def test_an_outcome_for_a_vanished_row_fails_alone(db: Database) -> None:
    outbox = Outbox(db)
    a = await row_in(outbox, db, S.IN_FLIGHT)
    b = await row_in(outbox, db, S.IN_FLIGHT)
    c = await row_in(outbox, db, S.IN_FLIGHT)
    await db.conn.execute("DELETE FROM outbox WHERE id = ?", (b,))
    unrecorded = await outbox.record(
        [
            (a, Delivered(status=200, report_id="ra")),
            (b, Delivered(status=200, report_id="rb")),
            (c, Dead(status=400, error="x")),
        ],
        now=NOW,
    )
    assert unrecorded == {b: "the outbox row no longer exists"}
    states = {r.id: r.state for r in await outbox.items()}
    assert states == {a: "delivered", c: "dead"}


async def test_an_outcome_that_cannot_be_written_is_handed_back_alone(db: Database) -> None:
    outbox = Outbox(db)
    a = await row_in(outbox, db, S.IN_FLIGHT)
    b = await row_in(outbox, db, S.IN_FLIGHT)
    unrecorded = await outbox.record(
        [(a, Dead(status=400, error="x")), (b, Dead(status=2**70, error="y"))], now=NOW
    )
    assert list(unrecorded) == [b]
    assert "cannot be written: OverflowError" in unrecorded[b]
    rows = {r.id: r for r in await outbox.items()}
    assert rows[a].state == "dead"
    assert (rows[b].state, rows[b].last_status) == ("pending", None), "handed back, sent again"


async def test_text_sqlite_cannot_store_is_kept_as_far_as_it_can_be(db: Database) -> None:
    outbox = Outbox(db)
    a = await row_in(outbox, db, S.IN_FLIGHT)
    b = await row_in(outbox, db, S.IN_FLIGHT)
    results: list[tuple[int, Outcome]] = [
        (a, Retry(status=503, error="bad \ud800 text", next_attempt_at=NOW)),
        (b, Delivered(status=200, report_id="r\udfff")),
    ]
    assert await outbox.record(results, now=NOW) == {}
    rows = {r.id: r for r in await outbox.items()}
    assert rows[a].last_error == "bad ? text"
    assert rows[b].report_id == "r?"


async def test_the_keeper_goes_on_when_a_row_vanishes_while_its_report_is_sent(
    tmp_path: Path,
) -> None:
    """The row is deleted behind the gateway's back while its POST is out (as an operator
    with sqlite3 might): its outcome is named as not recorded, the others are recorded,
    and reports queued afterwards are still delivered."""
    from gateway.delivery.deliverer import Deliverer

    path = tmp_path / "ecgw.sqlite3"
    fake = FakeApi()

    async def delete_then_accept(request: web.Request) -> web.StreamResponse:
        if b'"doomed"' in (await request.read()):
            await asyncio.to_thread(delete_doomed)  # not on the loop: the keeper may be writing
        return await json_reply({"id": "rep"})(request)

    def delete_doomed() -> None:
        with contextlib.closing(sqlite3.connect(path, timeout=10)) as other, other:
            other.execute("DELETE FROM outbox WHERE event_id = 'doomed'")

    fake.reports = [delete_then_accept]
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", fake.dispatch)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    fake.base_url, fake.token_url = (
        f"http://{host}:{port}/v1",
        f"http://{host}:{port}/connect/token",
    )
    try:
        async with open_database(path) as db, aiohttp.ClientSession() as session:
            outbox = Outbox(db)
            for event_id in ("first", "doomed", "third"):
                await outbox.enqueue(
                    event_id=event_id,
                    kind="EnergyUsage",
                    body=report_body(event_id),
                    source="t",
                    now=time.time(),
                )
            deliverer = Deliverer(
                outbox,
                client(fake, session),
                concurrency=1,
                backoff_initial=0.05,
                backoff_max=0.2,
                retry_after_max=1.0,
            )
            with capture_logs() as logs:
                task = asyncio.create_task(deliverer.run())
                try:
                    await until(lambda: delivered(outbox, {"first", "third"}))
                    await outbox.enqueue(
                        event_id="later",
                        kind="EnergyUsage",
                        body=report_body("later"),
                        source="t",
                        now=time.time(),
                    )
                    deliverer.wake()
                    await until(lambda: delivered(outbox, {"first", "third", "later"}))
                finally:
                    task.cancel()
                    await asyncio.gather(task, return_exceptions=True)
    finally:
        await runner.cleanup()
    (line,) = [x for x in logs if x["event"] == "outbox.outcome_not_recorded"]
    assert (line["event_id"], line["reason"]) == ("doomed", "the outbox row no longer exists")
    assert not [x for x in logs if x["event"] == "outbox.delivered" and x["event_id"] == "doomed"]


async def delivered(outbox: Outbox, event_ids: set[str]) -> bool:
    rows = await outbox.items()
    return {r.event_id for r in rows if r.state == "delivered"} == event_ids


async def until(predicate: Callable[[], Awaitable[bool]]) -> None:
    await wait_until(predicate, timeout=10.0)


# --- claiming does not wade through delivered rows ------------------------------------------


def fill(path: Path, *, delivered: int, pending: int) -> None:
    body = b"x" * 900  # about a day of points
    with sqlite3.connect(path) as conn:
        conn.executemany(
            "INSERT INTO outbox (event_id, kind, body, idempotency_key, source, state, "
            "next_attempt_at, created_at, updated_at, delivered_at) "
            "VALUES (?, 'k', ?, ?, 't', 'delivered', 0, 0, 0, 0)",
            ((f"d{i}", body, f"kd{i}") for i in range(delivered)),
        )
        conn.executemany(
            "INSERT INTO outbox (event_id, kind, body, idempotency_key, source, state, "
            "next_attempt_at, created_at, updated_at) "
            "VALUES (?, 'k', ?, ?, 't', 'pending', 0, 0, 0)",
            ((f"p{i}", body, f"kp{i}") for i in range(pending)),
        )
        conn.execute("ANALYZE")  # statistics, as PRAGMA optimize would gather them


async def round_steps(path: Path) -> dict[str, int]:
    """SQLite virtual-machine steps (in hundreds) of one keeper round's work: enqueue 50
    reports, claim 128 due rows, record 128 outcomes."""
    async with open_database(path) as db:
        outbox = Outbox(db)
        steps = 0

        def count() -> int:
            nonlocal steps
            steps += 1
            return 0

        async def measured(work: Callable[[], Awaitable[object]]) -> int:
            nonlocal steps
            steps = 0
            await db.conn.set_progress_handler(count, 100)
            try:
                await work()
            finally:
                await db.conn.set_progress_handler(None, 100)
            return steps

        async def enqueue() -> None:
            for i in range(50):
                await outbox.enqueue(event_id=f"n{i}", kind="k", body=b"{}", source="t", now=0)

        claimed = []

        async def claim() -> None:
            claimed.extend(await outbox.claim(now=1.0, limit=128))

        async def record() -> None:
            outcomes = [(c.id, Delivered(status=200, report_id="r")) for c in claimed]
            await outbox.record(outcomes, now=2.0)

        result = {
            "enqueue": await measured(enqueue),
            "claim": await measured(claim),
            "record": await measured(record),
        }
        assert len(claimed) == 128
        assert {r.state for r in await outbox.find("p0")} == {"delivered"}
        return result


async def test_a_round_ignores_100k_delivered_rows_even_with_statistics(tmp_path: Path) -> None:
    async with open_database(tmp_path / "few.sqlite3"), open_database(tmp_path / "many.sqlite3"):
        pass  # migrated
    fill(tmp_path / "few.sqlite3", delivered=0, pending=2000)
    fill(tmp_path / "many.sqlite3", delivered=100_000, pending=2000)
    few = await round_steps(tmp_path / "few.sqlite3")
    many = await round_steps(tmp_path / "many.sqlite3")
    for step, count in few.items():
        assert many[step] <= count * 1.2 + 5, f"{step}: {many} vs {few} (x100 VM steps)"
