"""The API client trusts nothing from the peer: redirects, reply sizes, odd 2xx bodies, tokens.

A tiny real aiohttp server on 127.0.0.1 port 0 plays the API, answering each request
with what the test sets; any other path (where a followed redirect would land) is
recorded, so a test can tell that the client never went there.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import msgspec
import pytest
from aiohttp import web
from structlog.testing import capture_logs

from gateway.config import Secret
from gateway.delivery.api import (
    REPLY_LIMIT,
    ApiClient,
    TokenSource,
    events_limit,
    parse_token_reply,
    report_id_of,
)
from gateway.delivery.deliverer import Deliverer
from gateway.errors import UpstreamError, UpstreamUnavailable
from gateway.store.database import open_database
from gateway.store.outbox import Outbox, OutboxItem
from tests.kit.gateway import report_body

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
GOOD_TOKEN = {"access_token": "eyJhbGciOi.J9eyJzdWIiOi-_~+/.sig==", "expires_in": 3600}


def json_reply(body: object, status: int = 200) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(body=msgspec.json.encode(body), status=status)

    return handler


def raw_reply(body: bytes, status: int = 200, **headers: str) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(body=body, status=status, headers=headers)

    return handler


def redirect(status: int, location: str) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(status=status, headers={"Location": location})

    return handler


def endless(status: int = 200, *, declared: int | None = None) -> Handler:
    """A reply that never ends (chunked), or declares ``declared`` bytes and stalls."""

    async def handler(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(status=status)
        resp.content_type = "application/json"
        if declared is not None:
            resp.content_length = declared
        await resp.prepare(request)
        chunk = b'{"id":"' + b"x" * 65_536
        while True:
            await resp.write(chunk)
            if declared is not None:
                await asyncio.sleep(3600)
            await asyncio.sleep(0)

    return handler


@dataclass
class FakeApi:
    """What each endpoint answers next (a list is consumed in order, its last entry kept)."""

    base_url: str = ""
    token_url: str = ""
    token: list[Handler] = field(default_factory=lambda: [json_reply(GOOD_TOKEN)])
    reports: list[Handler] = field(default_factory=lambda: [json_reply({"id": "rep-1"})])
    events: list[Handler] = field(default_factory=list)
    seen: list[tuple[str, str, bytes]] = field(default_factory=list)  # method, path, body

    def answer(self, handlers: list[Handler]) -> Handler:
        return handlers.pop(0) if len(handlers) > 1 else handlers[0]

    async def dispatch(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.seen.append((request.method, request.path, body))
        match request.method, request.path:
            case "POST", "/connect/token":
                handler = self.answer(self.token)
            case "POST", "/v1/reports":
                handler = self.answer(self.reports)
            case "GET", "/v1/events":
                handler = self.answer(self.events)
            case _:
                return web.Response(status=404, text="followed somewhere it should not")
        return await handler(request)

    def elsewhere(self) -> list[tuple[str, str, bytes]]:
        known = {"/connect/token", "/v1/reports", "/v1/events"}
        return [s for s in self.seen if s[1] not in known]


@pytest.fixture
async def fake() -> AsyncIterator[FakeApi]:
    api = FakeApi()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", api.dispatch)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    api.base_url, api.token_url = f"http://{host}:{port}/v1", f"http://{host}:{port}/connect/token"
    try:
        yield api
    finally:
        await runner.cleanup()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


def client(fake: FakeApi, session: aiohttp.ClientSession, timeout: float = 5.0) -> ApiClient:
    tokens = TokenSource(
        session,
        token_url=fake.token_url,
        client_id="gw",
        client_secret=Secret("s3cret-value"),
        timeout=timeout,
    )
    return ApiClient(session, base_url=fake.base_url, tokens=tokens, timeout=timeout)


async def deliver(
    fake: FakeApi,
    session: aiohttp.ClientSession,
    tmp_path: Path,
    done: Callable[[OutboxItem], bool],
    *,
    timeout: float = 8.0,
) -> OutboxItem:
    """Queue one report, run the real deliverer against ``fake`` until ``done(row)``."""
    async with open_database(tmp_path / "ecgw.sqlite3") as db:
        outbox = Outbox(db)
        await outbox.enqueue(
            event_id="e1", kind="EnergyUsage", body=report_body("e1"), source="t", now=time.time()
        )
        deliverer = Deliverer(
            outbox,
            client(fake, session, timeout=timeout),
            concurrency=2,
            backoff_initial=0.05,
            backoff_max=0.2,
            retry_after_max=1.0,
        )
        task = asyncio.create_task(deliverer.run())
        try:
            async with asyncio.timeout(timeout * 2):
                while True:
                    (row,) = await outbox.items()
                    if done(row):
                        return row
                    await asyncio.sleep(0.02)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


def settled(row: OutboxItem) -> bool:
    return row.state in ("delivered", "dead")


# --- a 2xx is delivery, whatever its body --------------------------------------------------


@pytest.mark.parametrize(
    ("reply", "report_id"),
    [
        (raw_reply(b'\xff\xfe{"id":"rep-1"}'), None),  # not UTF-8
        (raw_reply(b'{"id":"rep-\xff"}'), "rep-\ufffd"),  # not UTF-8 inside the id
        (raw_reply(b"<html>thanks</html>", content_type="text/html"), None),  # not JSON
        (raw_reply(b'{"id":"rep-2","createdAt":"yesterday"}'), "rep-2"),  # off-contract
        (raw_reply(b'{"id":"rep-3\\u0000\\u0007"}'), "rep-3"),  # control characters
        (raw_reply(b'{"id":"\\ud800rep-4"}'), None),  # a lone surrogate: unreadable
        (raw_reply(b'{"id":12}'), None),
        (raw_reply(b"[" * 100_000), None),  # deeper than any parser goes, and long
        (endless(200), None),  # never ends
        (endless(200, declared=50_000_000), None),  # says 50 MB, then stalls
    ],
)
async def test_a_2xx_is_delivered_whatever_its_body(
    fake: FakeApi,
    session: aiohttp.ClientSession,
    tmp_path: Path,
    reply: Handler,
    report_id: str | None,
) -> None:
    fake.reports = [reply]
    row = await deliver(fake, session, tmp_path, settled, timeout=3.0)
    assert (row.state, row.attempts, row.last_status) == ("delivered", 1, 200)
    assert row.report_id == report_id


async def test_a_huge_error_body_is_cut_not_read(
    fake: FakeApi, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    fake.reports = [endless(400)]
    row = await deliver(fake, session, tmp_path, settled, timeout=3.0)
    assert (row.state, row.last_status) == ("dead", 400)
    assert "not read" in (row.last_error or "")
    assert len(row.last_error or "") <= 2000


# --- redirects are never followed ----------------------------------------------------------


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
async def test_a_redirect_from_reports_is_retried_not_followed(
    fake: FakeApi, session: aiohttp.ClientSession, tmp_path: Path, status: int
) -> None:
    fake.reports = [redirect(status, "/moved/reports"), json_reply({"id": "rep-9"})]
    with capture_logs() as logs:
        row = await deliver(fake, session, tmp_path, settled)
    assert (row.state, row.attempts, row.report_id) == ("delivered", 2, "rep-9")
    assert fake.elsewhere() == [], "the redirect was followed"
    (retry,) = [line for line in logs if line["event"] == "outbox.retry"]
    assert retry["status"] == status
    assert "Location: /moved/reports" in retry["error"]
    assert "not followed" in retry["error"]


async def test_a_redirect_keeps_the_report_pending_with_its_reason(
    fake: FakeApi, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    fake.reports = [redirect(302, "https://elsewhere.example/login")]
    row = await deliver(fake, session, tmp_path, lambda r: r.attempts >= 2 and r.state == "pending")
    assert row.last_status == 302
    assert "https://elsewhere.example/login" in (row.last_error or "")
    assert fake.elsewhere() == []


@pytest.mark.parametrize("status", [302, 307, 308])
async def test_the_token_endpoint_redirect_is_not_followed_with_the_secret(
    fake: FakeApi, session: aiohttp.ClientSession, status: int
) -> None:
    fake.token = [redirect(status, "/steal")]
    with pytest.raises(UpstreamUnavailable, match=rf"HTTP {status} .*Location: /steal"):
        await client(fake, session).post_report(b"{}", idempotency_key="k")
    assert fake.elsewhere() == [], "the client secret went where Location pointed"


async def test_an_events_redirect_is_not_followed(
    fake: FakeApi, session: aiohttp.ClientSession
) -> None:
    fake.events = [redirect(302, "/elsewhere")]
    with pytest.raises(UpstreamUnavailable, match=r"HTTP 302 .*Location: /elsewhere"):
        await client(fake, session).get_events(page=None, page_size=10)
    assert fake.elsewhere() == []


# --- reply bodies are read up to a limit ---------------------------------------------------


@pytest.mark.parametrize("declared", [None, 50_000_000])
async def test_a_huge_token_reply_is_refused_quickly(
    fake: FakeApi, session: aiohttp.ClientSession, declared: int | None
) -> None:
    fake.token = [endless(200, declared=declared)]
    with pytest.raises(UpstreamUnavailable, match=f"longer than {REPLY_LIMIT} bytes"):
        await client(fake, session, timeout=5.0).post_report(b"{}", idempotency_key="k")


@pytest.mark.parametrize("declared", [None, 50_000_000])
async def test_a_huge_events_page_is_refused_naming_the_limit(
    fake: FakeApi, session: aiohttp.ClientSession, declared: int | None
) -> None:
    fake.events = [endless(200, declared=declared)]
    limit = events_limit(50)
    with pytest.raises(UpstreamUnavailable, match=rf"longer than {limit} bytes.*page_size 50"):
        await client(fake, session, timeout=5.0).get_events(page=None, page_size=50)


def page(n: int, payload_bytes: int) -> dict[str, object]:
    event = {
        "id": "e",
        "createdAt": "2026-11-26T10:00:00Z",
        "payload": {"payloadType": "Other", "pad": "x" * payload_bytes},
    }
    pagination = {"totalRecords": n, "pageSize": n, "currentPage": 1}
    return {"events": [event] * n, "pagination": pagination}


async def test_an_events_page_within_its_limit_is_read(
    fake: FakeApi, session: aiohttp.ClientSession
) -> None:
    """The limit grows with page_size: 100 events of 12 KiB fit, at page_size 100."""
    body = page(100, 12 * 1024)
    assert REPLY_LIMIT < len(msgspec.json.encode(body)) < events_limit(100)
    fake.events = [json_reply(body)]
    reply = await client(fake, session).get_events(page=None, page_size=100)
    assert len(reply.events) == 100


def test_the_events_limit_scales_with_page_size() -> None:
    assert events_limit(1) < events_limit(100) < events_limit(1000) <= 17 * 1024 * 1024


# --- the token is checked before it goes into a header -------------------------------------


@pytest.mark.parametrize(
    ("reply", "reason"),
    [
        ({"access_token": "abc\r\nX-Evil: 1"}, "access_token: not a bearer token"),
        ({"access_token": "abc\nX-Evil: 1"}, "access_token: not a bearer token"),
        ({"access_token": "two words"}, "access_token: not a bearer token"),
        ({"access_token": "t\u00f6ken"}, "access_token: not a bearer token"),
        ({"access_token": "abc=def"}, "access_token: not a bearer token"),
        ({"access_token": "x" * 10_000}, "access_token: longer than 8192"),
        ({"access_token": ""}, "access_token: missing"),
        ({"access_token": 12345}, "access_token: missing or not a string"),
        ({"access_token": None}, "access_token: missing"),
        ({"token": "abc"}, "access_token: missing"),
        (["abc"], "the reply is not a JSON object"),
        ({"access_token": "abc", "expires_in": -5}, "expires_in"),
        ({"access_token": "abc", "expires_in": 0}, "expires_in"),
        ({"access_token": "abc", "expires_in": 1e300}, "expires_in"),
        ({"access_token": "abc", "expires_in": True}, "expires_in: not a number"),
        ({"access_token": "abc", "expires_in": "soon"}, "expires_in: not a number"),
    ],
)
async def test_a_bad_token_reply_is_an_upstream_failure_not_a_crash(
    fake: FakeApi, session: aiohttp.ClientSession, reply: object, reason: str
) -> None:
    fake.token = [json_reply(reply)]
    api = client(fake, session)
    with capture_logs() as logs, pytest.raises(UpstreamUnavailable) as caught:
        await api.get_events(page=None, page_size=10)
    assert f"token endpoint sent an unusable reply: {reason}" in str(caught.value)
    assert [line["event"] for line in logs] == ["token.reply_unusable"]
    assert "X-Evil" not in str(caught.value) and "xxxxxxxx" not in str(caught.value)
    with pytest.raises(UpstreamUnavailable):  # and the same for a report
        await api.post_report(b"{}", idempotency_key="k")
    assert [s[1] for s in fake.seen] == ["/connect/token", "/connect/token"], "no API call"


@pytest.mark.parametrize("raw", [b'{"access_token":"abc","expires_in":NaN}', b"\xff", b"{"])
async def test_a_token_reply_that_is_not_json_is_an_upstream_failure(
    fake: FakeApi, session: aiohttp.ClientSession, raw: bytes
) -> None:
    fake.token = [raw_reply(raw)]
    with pytest.raises(UpstreamUnavailable, match="unusable reply: DecodeError"):
        await client(fake, session).get_events(page=None, page_size=10)


async def test_the_deliverer_lives_through_a_bad_token_and_delivers_once_it_is_good(
    fake: FakeApi, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    fake.token = [json_reply({"access_token": "abc\r\nX-Evil: 1"}), json_reply(GOOD_TOKEN)]
    row = await deliver(fake, session, tmp_path, settled)
    assert (row.state, row.attempts, row.report_id) == ("delivered", 2, "rep-1")
    reports = [s for s in fake.seen if s[1] == "/v1/reports"]
    assert len(reports) == 1


def test_good_tokens_pass() -> None:
    assert parse_token_reply(GOOD_TOKEN) == (GOOD_TOKEN["access_token"], 3600.0)
    assert parse_token_reply({"access_token": "abc"}) == ("abc", 3600.0)
    assert parse_token_reply({"access_token": "abc", "expires_in": None}) == ("abc", 3600.0)
    assert parse_token_reply({"access_token": "a.b-c_d~e+f/g==", "expires_in": 59.5})[1] == 59.5


def test_report_id_of_keeps_what_can_be_kept() -> None:
    assert report_id_of(b'{"id":"r1","eventId":"e","createdAt":"2026-11-26T10:00:00Z"}') == "r1"
    assert report_id_of(b'{"id":"' + b"y" * 5000 + b'"}') == "y" * 200
    assert report_id_of(b'{"id":"\\u0007"}') is None
    assert report_id_of(b"") is None


async def test_errors_name_no_secret(fake: FakeApi, session: aiohttp.ClientSession) -> None:
    fake.token = [raw_reply(b"nope", status=503)]
    with pytest.raises(UpstreamError) as caught:
        await client(fake, session).get_events(page=None, page_size=10)
    assert "s3cret-value" not in repr(caught.value) + str(caught.value.body)


async def test_the_gateway_stays_up_through_a_token_with_crlf(
    fake: FakeApi, tmp_path: Path
) -> None:
    """Issue 8: a token with CR/LF made the gateway exit within 2 s (the poller met a
    ValueError from aiohttp's header check). Now the poll and the delivery fail with a
    clear line, the gateway stays up, and once the token is good a report goes out."""
    from tests.kit.gateway import make_config, queue_reports, running

    page = {"events": [], "pagination": {"totalRecords": 0, "pageSize": 10, "currentPage": 1}}
    fake.events = [json_reply(page)]
    bad = json_reply({"access_token": "abc\r\nX-Evil: 1", "expires_in": 3600})
    fake.token = [bad, bad, bad, bad, json_reply(GOOD_TOKEN)]
    config = make_config(
        {
            "gateway": {"state_dir": str(tmp_path)},
            "api": {
                "base_url": fake.base_url,
                "token_url": fake.token_url,
                "client_id": "gw",
                "client_secret": "s3cret-value",
            },
            "delivery": {"timeout": "1s", "backoff_initial": "300ms", "backoff_max": "600ms"},
            "poll": {"interval": "1s", "page_size": 10},
        }
    )
    with capture_logs() as logs:
        async with running(config) as gateway:
            await queue_reports(config, {"e1": report_body("e1")})
            await asyncio.sleep(2.5)  # the old gateway was gone within 2 s
            async with open_database(config.db_path) as db:
                for _ in range(100):
                    if [r.state for r in await Outbox(db).items()] == ["delivered"]:
                        break
                    await asyncio.sleep(0.05)
                rows = await Outbox(db).items()
            assert gateway.ready.is_set()
    assert [r.state for r in rows] == ["delivered"]
    assert sum(1 for line in logs if line["event"] == "token.reply_unusable") >= 2
    assert all("X-Evil" not in str(line) for line in logs)
    assert any(s[1] == "/v1/events" for s in fake.seen), "polling resumed with the good token"


async def test_an_error_body_echoing_the_token_keeps_no_token(
    fake: FakeApi, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    token = GOOD_TOKEN["access_token"]
    assert isinstance(token, str)

    async def echo(request: web.Request) -> web.StreamResponse:
        auth = request.headers["Authorization"]
        text = f"bad request; {auth}; token={token}; BEARER abc.def.ghi.jkl"
        return web.Response(text=text, status=400)

    fake.reports = [echo]
    with capture_logs():
        row = await deliver(fake, session, tmp_path, settled, timeout=3.0)
    assert (row.state, row.last_status) == ("dead", 400)
    assert row.last_error is not None
    assert token not in row.last_error and "abc.def.ghi.jkl" not in row.last_error
    assert "Bearer ***" in row.last_error and "token=***" in row.last_error


def test_redact_takes_out_any_bearer_token() -> None:
    from gateway.logs import redact

    assert (
        redact("Authorization: Bearer a-b.c~d+e/f0123456789==, next")
        == "Authorization: Bearer ***, next"
    )
    assert (
        redact('{"authorization": "bearer  xyz-0123456789"}') == '{"authorization": "bearer  ***"}'
    )
    assert redact('bearer token rejected; WWW-Authenticate: Bearer realm="x"') == (
        'bearer token rejected; WWW-Authenticate: Bearer realm="x"'
    )
    assert redact("no secrets here") == "no secrets here"
