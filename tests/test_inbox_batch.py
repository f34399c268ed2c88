"""Inbox.add_many: the usual batch is one plain INSERT; a batch with an event stored
before, or an id twice, still says exactly which events were new."""

from __future__ import annotations

import sqlite3

import pytest

from gateway.errors import StoreError
from gateway.store.database import Database
from gateway.store.inbox import Inbox, NewEvent


def event(name: str) -> NewEvent:
    return NewEvent(event_id=name, payload_type="UserEligibility", created_at=None, payload=b"{}")


async def test_the_usual_batch_is_one_insert_that_returns_no_rows(db: Database) -> None:
    inbox = Inbox(db)
    seen: list[str] = []
    await db.conn.set_trace_callback(seen.append)  # the statements the writer runs
    news = await inbox.add_many([event(f"e{i}") for i in range(30)], via="webhook", at=1.0)
    await db.conn.set_trace_callback(None)
    assert news == [True] * 30
    # (the trace repeats a statement's text for each trigger it fires: count texts)
    inserts = {s for s in seen if s.lstrip().upper().startswith("INSERT INTO EVENTS")}
    assert len(inserts) == 1
    assert "RETURNING" not in inserts.pop().upper()
    assert await inbox.count() == 30


async def test_a_batch_with_an_event_stored_before_says_which_were_new(db: Database) -> None:
    inbox = Inbox(db)
    assert await inbox.add_many([event("old")], via="poll", at=1.0) == [True]
    batch = [event("a"), event("old"), event("b")]
    assert await inbox.add_many(batch, via="webhook", at=2.0) == [True, False, True]
    assert await inbox.count() == 3
    kept = await inbox.get("old")
    assert kept is not None
    assert (kept.received_via, kept.received_at) == ("poll", 1.0)  # the first arrival's


async def test_an_id_twice_in_one_batch_is_new_only_the_first_time(db: Database) -> None:
    inbox = Inbox(db)
    batch = [event("a"), event("b"), event("a")]
    assert await inbox.add_many(batch, via="webhook", at=1.0) == [True, True, False]
    assert await inbox.count() == 2


async def test_a_batch_refused_for_another_reason_stores_nothing(db: Database) -> None:
    inbox = Inbox(db)
    with pytest.raises(StoreError) as caught:  # received_via has a CHECK: not a duplicate
        await inbox.add_many([event("a"), event("b")], via="carrier pigeon", at=1.0)  # type: ignore[arg-type]
    assert isinstance(caught.value.__cause__, sqlite3.IntegrityError)
    assert await inbox.count() == 0
    assert await inbox.add_many([event("a")], via="webhook", at=2.0) == [True]
