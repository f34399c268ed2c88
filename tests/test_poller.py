"""Polling GET /events against the sandbox: full history first, then one page."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.config import Config
from gateway.delivery.api import ApiClient, TokenSource
from gateway.intake.poller import Poller
from gateway.sandbox import Sandbox, run_sandbox
from gateway.store.database import open_database
from gateway.store.inbox import Inbox
from tests.kit.gateway import make_config, sandbox_config


@pytest.fixture
async def sandbox() -> AsyncIterator[Sandbox]:
    async with run_sandbox() as sb:
        yield sb


def eligibility(i: int) -> dict[str, Any]:
    return {
        "payloadType": "UserEligibility",
        "lastUpdated": "2026-11-26T00:00:00+00:00",
        "addedUsers": [f"user-{i}"],
        "removedUsers": [],
    }


class Counter:
    pages = 0


def counting_session(counter: Counter) -> aiohttp.ClientSession:
    """A real session whose trace hooks count GET /events requests."""

    async def on_start(_: Any, __: Any, params: aiohttp.TraceRequestStartParams) -> None:
        if params.method == "GET" and params.url.path.endswith("/events"):
            counter.pages += 1

    trace = aiohttp.TraceConfig()
    trace.on_request_start.append(on_start)
    return aiohttp.ClientSession(trace_configs=[trace])


@contextlib.asynccontextmanager
async def poller_for(config: Config, page_size: int) -> AsyncIterator[tuple[Poller, Inbox, Any]]:
    assert config.api is not None and config.client_secret is not None
    counter = Counter()
    async with open_database(config.db_path) as db, counting_session(counter) as session:
        tokens = TokenSource(
            session,
            token_url=config.api.token_url,
            client_id=config.api.client_id,
            client_secret=config.client_secret,
            timeout=5,
        )
        api = ApiClient(session, base_url=config.api.base_url, tokens=tokens, timeout=5)
        inbox = Inbox(db)
        seen: list[str] = []
        yield (
            Poller(api, inbox, interval=60, page_size=page_size, on_event=seen.append),
            inbox,
            counter,
        )


async def test_first_sweep_takes_the_whole_history_then_one_page(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    for i in range(2500):
        await sandbox.create_event(eligibility(i), push=False)
    config = make_config(sandbox_config(sandbox, tmp_path))
    async with poller_for(config, page_size=1000) as (poller, inbox, counter):
        assert await poller.sweep() == 2500
        assert counter.pages == 3
        assert await inbox.count() == 2500
        for i in range(2500, 2510):
            await sandbox.create_event(eligibility(i), push=False)
        counter.pages = 0
        assert await poller.sweep() == 10
        assert counter.pages == 1
        counter.pages = 0
        assert await poller.sweep() == 0
        assert counter.pages == 1
    stored = await _stored(config, sandbox.events[0]["id"])
    assert stored.received_via == "poll"
    assert stored.payload_type == "UserEligibility"


async def _stored(config: Config, event_id: str) -> Any:
    async with open_database(config.db_path) as db:
        return await Inbox(db).get(event_id)


async def test_an_interrupted_sweep_is_finished_next_time(sandbox: Sandbox, tmp_path: Path) -> None:
    for i in range(250):
        await sandbox.create_event(eligibility(i), push=False)
    config = make_config(sandbox_config(sandbox, tmp_path))
    async with poller_for(config, page_size=100) as (poller, inbox, _):
        # a sweep that stored only its first page before dying
        reply = await poller._api.get_events(page=None, page_size=100)
        from gateway.intake.poller import to_new_event

        sweep = await inbox.begin_sweep()
        await inbox.add_polled_page([to_new_event(e) for e in reply.events], sweep=sweep, at=0)
        assert await inbox.count() == 100
        assert await poller.sweep() == 150
        assert await inbox.count() == 250


async def test_pushed_then_polled_is_one_event(sandbox: Sandbox, tmp_path: Path) -> None:
    config = make_config(sandbox_config(sandbox, tmp_path))
    event = await sandbox.create_event(eligibility(1), push=False)
    async with open_database(config.db_path) as db:
        from gateway.store.inbox import NewEvent

        await Inbox(db).add(
            NewEvent(
                event_id=event["id"],
                payload_type="UserEligibility",
                created_at=None,
                payload=b"{}",
                notification_id="n1",
            ),
            via="webhook",
            at=1.0,
        )
    async with poller_for(config, page_size=10) as (poller, inbox, _):
        assert await poller.sweep() == 0
        stored = await inbox.get(event["id"])
        assert stored is not None
        assert stored.received_via == "webhook" and stored.notification_id == "n1"


async def test_unknown_and_unreadable_payloads_are_stored_not_dropped(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    unknown = await sandbox.create_event(
        {"payloadType": "FlexAuction", "lots": 3}, push=False, validate=False
    )
    config = make_config(sandbox_config(sandbox, tmp_path))
    async with poller_for(config, page_size=10) as (poller, inbox, _):
        assert await poller.sweep() == 1
        stored = await inbox.get(unknown["id"])
        assert stored is not None and stored.payload_type == "FlexAuction"
