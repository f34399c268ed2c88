"""Polling GET /events against the sandbox: full history first, then one page."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from structlog.testing import capture_logs

from gateway import render, wire
from gateway.config import Config, Secret
from gateway.delivery.api import ApiClient, TokenSource
from gateway.intake.poller import MAX_SWEEP_EVENTS, Poller, max_pages, next_page
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
        await inbox.add_polled_page(
            [to_new_event(bytes(e)) for e in reply.events], sweep=sweep, at=0
        )
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


# --- one bad event fails alone; a bad page fails the sweep; broken paging stops -------------


class ScriptedApi:
    """A tiny Spark-like server: a token endpoint and ``GET /events`` pages from a script."""

    def __init__(self) -> None:
        self.pages: dict[int, tuple[int, bytes]] = {}
        self.gets = 0

    async def token(self, _: web.Request) -> web.Response:
        return web.json_response({"access_token": "t", "token_type": "Bearer", "expires_in": 3600})

    async def events(self, request: web.Request) -> web.Response:
        self.gets += 1
        page = int(request.query.get("page", "1"))
        status, body = self.pages.get(page, (200, page_body([], current=page)))
        kind = "text/html" if body.startswith(b"<") else "application/json"
        return web.Response(status=status, body=body, content_type=kind)


def page_body(
    events: list[bytes], *, current: int = 1, next_page: int | None = None, total: int = 1
) -> bytes:
    pagination = {
        "totalRecords": len(events),
        "pageSize": 100,
        "currentPage": current,
        "totalPages": total,
        "nextPage": next_page,
        "previousPage": None,
    }
    return (
        b'{"pagination":'
        + json.dumps(pagination).encode()
        + b',"events":['
        + b",".join(events)
        + b"]}"
    )


def polled(
    event_id: object, *, created: str = "2025-03-10T12:00:00Z", payload: Any = None
) -> bytes:
    return json.dumps(
        {"id": event_id, "createdAt": created, "payload": payload or eligibility(0)}
    ).encode()


def late_curve() -> dict[str, Any]:
    return {
        "payloadType": "PriceCurve",
        "targets": [{"resourceId": "r", "locationId": "l"}],
        "priceCurveDelta": {
            "points": [{"price": 1.0, "timestamp": "9999-12-31T23:00:00Z"}],
            "resolution": "01:00:00",
        },
        "priceArea": "NO5",
    }


DEEP_EVENT = (
    b'{"id":"deep","createdAt":"2025-03-10T12:00:00Z","payload":{"payloadType":"UserEligibility",'
    b'"x":' + b"[" * 10_000 + b"]" * 10_000 + b"}}"
)


@contextlib.asynccontextmanager
async def scripted_poller(
    tmp_path: Path,
) -> AsyncIterator[tuple[ScriptedApi, Poller, Inbox, list[str]]]:
    script = ScriptedApi()
    app = web.Application()
    app.router.add_post("/token", script.token)
    app.router.add_get("/api/events", script.events)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    base = f"http://{host}:{port}"
    try:
        async with (
            open_database(tmp_path / "ecgw.sqlite3") as db,
            aiohttp.ClientSession() as session,
        ):
            tokens = TokenSource(
                session,
                token_url=f"{base}/token",
                client_id="c",
                client_secret=Secret("s"),
                timeout=5,
            )
            api = ApiClient(session, base_url=f"{base}/api", tokens=tokens, timeout=5)
            inbox = Inbox(db)
            seen: list[str] = []
            poller = Poller(api, inbox, interval=0.05, page_size=100, on_event=seen.append)
            yield script, poller, inbox, seen
    finally:
        await runner.cleanup()


async def test_one_bad_event_is_quarantined_and_the_rest_of_the_page_stored(
    tmp_path: Path,
) -> None:
    events = {
        "good-1": polled("good-1"),
        "id-number": polled(12345),
        "no-id": b'{"createdAt":"2025-03-10T12:00:00Z","payload":{}}',
        "bad-created": polled("bad-created", created="last tuesday"),
        "deep": DEEP_EVENT,
        "late": polled("late", payload=late_curve()),
        "good-2": polled("good-2"),
    }
    async with scripted_poller(tmp_path) as (script, poller, inbox, seen):
        script.pages[1] = (200, page_body(list(events.values())))
        with capture_logs() as logs:
            assert await poller.sweep() == 7
        assert seen == ["good-1", "good-2"]
        for good in ("good-1", "good-2"):
            stored = await inbox.get(good)
            assert stored is not None and stored.plan_state == "new"
            assert stored.payload_type == "UserEligibility"
        for bad, field in [("bad-created", "createdAt"), ("deep", "nested"), ("late", "9999")]:
            stored = await inbox.get(bad)
            assert stored is not None, bad
            assert (stored.plan_state, stored.payload_type) == ("invalid", "Unreadable")
            assert field in (stored.plan_note or "")
            assert stored.payload == events[bad]  # the event exactly as it arrived
        # no usable id: kept under a key made from its bytes, raw and reason visible
        keyless = [e for e in await inbox.recent() if e.event_id.startswith("unreadable:")]
        assert sorted(e.payload for e in keyless) == sorted([events["id-number"], events["no-id"]])
        notes = sorted(e.plan_note or "" for e in keyless)
        assert all("kept under this key" in note for note in notes), notes
        assert sum("its id 12345 is not usable" in note for note in notes) == 1, notes
        assert sum("it has no id" in note for note in notes) == 1, notes
        # what `ecgw events show` prints: the reason, and the event as it came, however deep
        shown = render.event_record(await inbox.get("deep"), payload=True)  # type: ignore[arg-type]
        assert shown["plan_state"] == "invalid" and "nested" in shown["plan_note"]
        assert shown["payload"] == DEEP_EVENT.decode()
        quarantined = [entry for entry in logs if entry["event"] == "poll.event_quarantined"]
        assert sorted(entry["event_id"] for entry in quarantined) == sorted(
            ["bad-created", "deep", "late", *(e.event_id for e in keyless)]
        )
        # polled again: nothing stored twice, nothing logged twice
        with capture_logs() as logs:
            assert await poller.sweep() == 0
        assert not [entry for entry in logs if entry["event"] == "poll.event_quarantined"]
        assert await inbox.count() == 7


@pytest.mark.parametrize(
    "bad_page",
    [
        b'{"pagination":{"currentPage":1},"events":null}',
        b"<html><body>Service temporarily unavailable</body></html>",
        b"",
        b'{"events":[],"pagination":' + b"[" * 10_000 + b"]" * 10_000 + b"}",
    ],
    ids=["events-null", "html", "empty", "deep-page"],
)
async def test_an_unreadable_page_is_a_failed_poll_retried_next_interval(
    tmp_path: Path, bad_page: bytes
) -> None:
    async with scripted_poller(tmp_path) as (script, poller, inbox, _):
        script.pages[1] = (200, bad_page)
        with capture_logs() as logs:
            task = asyncio.create_task(poller.run())
            try:
                for _ in range(100):
                    await asyncio.sleep(0.02)
                    if script.gets >= 2:
                        break
                assert script.gets >= 2  # retried, still running
                assert not task.done()
                script.pages[1] = (200, page_body([polled("after")]))
                for _ in range(100):
                    await asyncio.sleep(0.02)
                    if await inbox.get("after") is not None:
                        break
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        assert await inbox.get("after") is not None
        failed = [entry for entry in logs if entry["event"] == "poll.failed"]
        assert failed and failed[0]["status"] == 200 and failed[0]["error"]


@pytest.mark.parametrize(
    ("pages", "expected_gets"),
    [
        ({1: (2, 3), 2: (1, 3)}, 2),  # points back
        ({1: (2, 3), 2: (2, 3)}, 2),  # repeats itself
        ({1: (2, 3), 2: (7, 3)}, 2),  # beyond totalPages
        ({1: (1, 3)}, 1),  # names the page just read
    ],
    ids=["back", "repeat", "out-of-range", "self"],
)
async def test_broken_paging_stops_the_sweep(
    tmp_path: Path, pages: dict[int, tuple[int, int]], expected_gets: int
) -> None:
    async with scripted_poller(tmp_path) as (script, poller, inbox, _):
        for number, (after, total) in pages.items():
            events = [polled(f"e-{number}-{i}") for i in range(3)]
            body = page_body(events, current=number, next_page=after, total=total)
            script.pages[number] = (200, body)
        with capture_logs() as logs:
            await asyncio.wait_for(poller.sweep(), timeout=5)
        assert script.gets == expected_gets
        assert await inbox.count() == 3 * expected_gets
        stopped = [entry for entry in logs if entry["event"] == "poll.paging_stopped"]
        assert len(stopped) == 1 and "nextPage" in stopped[0]["reason"]
        assert await inbox.last_complete_sweep() == 0  # not complete: read again next time


async def test_a_server_that_ignores_page_is_asked_twice(tmp_path: Path) -> None:
    async with scripted_poller(tmp_path) as (script, poller, inbox, _):
        first = (200, page_body([polled("e-1")], current=1, next_page=2, total=3))
        script.pages[1] = script.pages[2] = first  # page 2 answered with page 1 again
        with capture_logs() as logs:
            await asyncio.wait_for(poller.sweep(), timeout=5)
        assert script.gets == 2
        stopped = [entry for entry in logs if entry["event"] == "poll.paging_stopped"]
        assert [e["reason"] for e in stopped] == ["asked for page 2, the reply is page 1"]
        assert await inbox.last_complete_sweep() == 0


async def test_a_sweep_reads_no_more_than_the_first_total_pages_and_one(tmp_path: Path) -> None:
    async with scripted_poller(tmp_path) as (script, poller, inbox, _):
        for n in range(1, 50):  # every reply claims one page more than it
            body = page_body([polled(f"e-{n}")], current=n, next_page=n + 1, total=n + 1)
            script.pages[n] = (200, body)
        with capture_logs() as logs:
            await asyncio.wait_for(poller.sweep(), timeout=5)
        assert script.gets == 3  # totalPages 2 as first seen, and one page added meanwhile
        stopped = [entry for entry in logs if entry["event"] == "poll.paging_stopped"]
        assert len(stopped) == 1 and "bound of 3 pages" in stopped[0]["reason"]
        assert await inbox.count() == 3


def test_the_absolute_bound_is_a_number_of_events() -> None:
    assert max_pages(1000) == MAX_SWEEP_EVENTS // 1000
    assert max_pages(1) == MAX_SWEEP_EVENTS
    assert max_pages(3) * 3 >= MAX_SWEEP_EVENTS > (max_pages(3) - 1) * 3


def test_next_page_rules() -> None:
    def pg(current: int, after: int | None, total: int | None = 5) -> wire.Pagination:
        return wire.Pagination(current_page=current, next_page=after, total_pages=total)

    assert next_page(pg(1, 2), None, {1}) == (2, None)
    assert next_page(pg(1, None), None, {1}) == (None, None)
    assert next_page(pg(4, 5), 4, {1, 2, 3, 4}) == (5, None)
    assert next_page(pg(2, 9, None), 2, {1, 2}) == (9, None)  # no totalPages: trusted forward
    for stuck in (pg(2, 1), pg(2, 2), pg(2, 6), pg(0, 1)):
        after, why = next_page(stuck, 2, {1, 2})
        assert after is None and why
    assert next_page(pg(1, 2), 2, {1, 2}) == (None, "asked for page 2, the reply is page 1")
    assert next_page(pg(1, 2, None), None, {1}, bound=1)[0] is None
    assert next_page(pg(1, 2, None), None, {1}, bound=2) == (2, None)
