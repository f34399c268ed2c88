"""gateway.sandbox: a real server on 127.0.0.1:0, driven by a real aiohttp client."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import hashlib
import hmac
import itertools
import json
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway import contract
from gateway.errors import WireError
from gateway.sandbox import Fault, Sandbox, run_sandbox, sign
from gateway.sandbox.auth import TokenBook, basic_credentials, bearer_token, decide_token_request
from gateway.sandbox.faults import FaultQueue, faults_from_json
from gateway.sandbox.simulation import (
    location_lpc_payload,
    notification,
    price_curve_payload,
    resource_lpc_payload,
    user_eligibility_payload,
)
from gateway.sandbox.state import ReportLedger, Webhook, paginate, parse_paging

pytestmark = pytest.mark.timeout(15)

VECTORS = Path(__file__).resolve().parent / "fixtures" / "volue"  # Volue's vectors, unchanged
FAST_RETRIES = (0.01, 0.02, 0.04)
DROPPED = (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError)

Json = dict[str, Any]


# --- fixtures and helpers ---------------------------------------------------------------------


@pytest.fixture
async def sandbox() -> AsyncIterator[Sandbox]:
    async with run_sandbox(push_retry_delays=FAST_RETRIES) as running:
        yield running


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def get_token(http: aiohttp.ClientSession, sandbox: Sandbox) -> str:
    form = {
        "grant_type": "client_credentials",
        "client_id": sandbox.client_id,
        "client_secret": sandbox.client_secret,
    }
    async with http.post(sandbox.token_url, data=form) as response:
        assert response.status == 200
        token: str = (await response.json())["access_token"]
        return token


@pytest.fixture
async def auth(http: aiohttp.ClientSession, sandbox: Sandbox) -> dict[str, str]:
    return {"Authorization": f"Bearer {await get_token(http, sandbox)}"}


def report_for(event_id: str | None = "e-1", kwh: Any = 1.5) -> Json:
    return {
        "eventId": event_id,
        "payloads": [
            {
                "payloadType": "EnergyUsage",
                "resourceId": "sandbox-resource-1",
                "locationId": "sandbox-location-1",
                "resolution": "01:00:00",
                "points": [{"timestamp": "2025-03-11T10:00:00+00:00", "kiloWattHours": kwh}],
            }
        ],
    }


async def post_report(
    http: aiohttp.ClientSession,
    sandbox: Sandbox,
    auth: dict[str, str],
    body: Json | None = None,
    key: str | None = None,
) -> tuple[int, Any, aiohttp.ClientResponse]:
    headers = dict(auth)
    if key is not None:
        headers["Idempotency-Key"] = key
    async with http.post(
        sandbox.base_url + "/reports", json=body or report_for(), headers=headers
    ) as response:
        payload = await response.json() if response.content_length else None
        return response.status, payload, response


@dataclass
class Receiver:
    """A partner's webhook endpoint: answers ``statuses`` in turn (then 200), keeps what came."""

    statuses: list[int]
    url: str = ""
    bodies: list[bytes] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        self.bodies.append(await request.read())
        self.headers.append(dict(request.headers))
        status = self.statuses.pop(0) if self.statuses else 200
        return web.Response(status=status)


@asynccontextmanager
async def receiver(statuses: Sequence[int] = ()) -> AsyncIterator[Receiver]:
    hook = Receiver(list(statuses))
    app = web.Application()
    app.router.add_post("/notify", hook.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    hook.url = f"http://127.0.0.1:{runner.addresses[0][1]}/notify"
    try:
        yield hook
    finally:
        await runner.cleanup()


async def register(
    http: aiohttp.ClientSession,
    sandbox: Sandbox,
    auth: dict[str, str],
    url: str,
    secret: str | None = "hook-secret",
    types: list[str] | None = None,
) -> Json:
    body: Json = {"webhookUrl": url, "name": "test", "webhookSecret": secret}
    if types is not None:
        body["notificationTypes"] = types
    async with http.post(sandbox.base_url + "/webhooks", json=body, headers=auth) as response:
        assert response.status == 201
        webhook: Json = await response.json()
        return webhook


def verify(secret: str, body: bytes, signature: str) -> bool:
    expected = base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha256).digest())
    return hmac.compare_digest(expected.decode(), signature)


# --- tokens -----------------------------------------------------------------------------------


async def test_token_flow_issues_a_bearer_token(
    http: aiohttp.ClientSession, sandbox: Sandbox
) -> None:
    form = {
        "grant_type": "client_credentials",
        "client_id": "ecgw-sandbox",
        "client_secret": "sandbox-secret",
    }
    async with http.post(sandbox.token_url, data=form) as response:
        assert response.status == 200
        assert response.headers["Cache-Control"] == "no-store"
        body = await response.json()
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 3600
    async with http.get(
        sandbox.base_url + "/events", headers={"Authorization": f"Bearer {body['access_token']}"}
    ) as response:
        assert response.status == 200


async def test_token_with_http_basic_credentials(
    http: aiohttp.ClientSession, sandbox: Sandbox
) -> None:
    basic = {"Authorization": aiohttp.encode_basic_auth(sandbox.client_id, sandbox.client_secret)}
    async with http.post(
        sandbox.token_url, data={"grant_type": "client_credentials"}, headers=basic
    ) as response:
        assert response.status == 200
        assert (await response.json())["access_token"]


@pytest.mark.parametrize(
    ("form", "status", "error"),
    [
        ({"client_id": "ecgw-sandbox", "client_secret": "wrong"}, 401, "invalid_client"),
        ({"client_id": "someone", "client_secret": "sandbox-secret"}, 401, "invalid_client"),
        ({"client_id": "ecgw-sandbox"}, 401, "invalid_client"),
        ({"grant_type": "password", "client_id": "ecgw-sandbox"}, 400, "unsupported_grant_type"),
        ({"grant_type": ""}, 400, "invalid_request"),
    ],
)
async def test_bad_token_requests(
    http: aiohttp.ClientSession, sandbox: Sandbox, form: Json, status: int, error: str
) -> None:
    form = {"grant_type": "client_credentials", **form}
    async with http.post(sandbox.token_url, data=form) as response:
        assert response.status == status
        assert await response.json() == {"error": error}


@pytest.mark.parametrize("header", [None, "Bearer nope", "Basic abc", "Bearer "])
async def test_api_calls_need_a_valid_token(
    http: aiohttp.ClientSession, sandbox: Sandbox, header: str | None
) -> None:
    headers = {"Authorization": header} if header else {}
    for method, path in [
        ("GET", "/events"),
        ("GET", "/events/x"),
        ("GET", "/webhooks"),
        ("POST", "/simulation/events/usereligibility"),
        ("POST", "/reports"),
    ]:
        async with http.request(method, sandbox.base_url + path, headers=headers) as response:
            assert response.status == 401, path
            assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert [a.status for a in sandbox.attempts] == [401]
    assert sandbox.attempts[0].authorized is False
    assert sandbox.events == []


async def test_revoked_tokens_get_401_and_a_new_token_works(
    http: aiohttp.ClientSession, sandbox: Sandbox, auth: dict[str, str]
) -> None:
    async with http.get(sandbox.base_url + "/events", headers=auth) as response:
        assert response.status == 200
    sandbox.revoke_tokens()
    async with http.get(sandbox.base_url + "/events", headers=auth) as response:
        assert response.status == 401
    status, _, _ = await post_report(http, sandbox, auth)
    assert status == 401
    fresh = {"Authorization": f"Bearer {await get_token(http, sandbox)}"}
    status, _, _ = await post_report(http, sandbox, fresh)
    assert status == 200


def test_tokens_expire_after_their_lifetime() -> None:
    book = TokenBook(lifetime=60.0)
    token = book.issue(now=100.0)
    assert book.valid(token, now=159.9)
    assert not book.valid(token, now=160.0)
    assert not book.valid("made-up", now=100.0)
    assert not book.valid(None, now=100.0)
    other = book.issue(now=200.0)
    book.revoke_all()
    assert not book.valid(other, now=200.0)
    with pytest.raises(ValueError, match="positive"):
        TokenBook(lifetime=0)


async def test_short_token_lifetime_is_reported_as_given(http: aiohttp.ClientSession) -> None:
    async with run_sandbox(token_lifetime=0.5) as sandbox:
        form = {"grant_type": "client_credentials", "client_id": "ecgw-sandbox"}
        form["client_secret"] = "sandbox-secret"
        async with http.post(sandbox.token_url, data=form) as response:
            assert (await response.json())["expires_in"] == 0.5


def test_token_decisions_are_pure() -> None:
    creds = {"client_id": "a", "client_secret": "b"}
    decide = decide_token_request
    ok = {"grant_type": "client_credentials", "client_id": "a", "client_secret": "b"}
    assert decide(ok, None, **creds).issue
    basic = aiohttp.encode_basic_auth("a", "b")
    assert decide({"grant_type": "client_credentials"}, basic, **creds).issue
    wrong = aiohttp.encode_basic_auth("a", "c")
    assert decide({"grant_type": "client_credentials"}, wrong, **creds).status == 401
    assert decide({"grant_type": "client_credentials"}, "Basic !!!", **creds).status == 401
    assert basic_credentials(aiohttp.encode_basic_auth("id%3Ax", "s:e c")) == ("id:x", "s:e c")
    assert basic_credentials("Basic " + base64.b64encode(b"no-colon").decode()) is None
    assert basic_credentials("Bearer abc") is None
    assert bearer_token("bearer abc") == "abc"
    assert bearer_token("Token abc") is None


# --- events -----------------------------------------------------------------------------------


async def test_events_page_newest_first(
    http: aiohttp.ClientSession, sandbox: Sandbox, auth: dict[str, str]
) -> None:
    created = []
    for i in range(2500):
        payload = {
            "payloadType": "UserEligibility",
            "lastUpdated": "2025-03-10T08:09:58+00:00",
            "addedUsers": [f"user-{i}"],
            "removedUsers": [],
        }
        created.append((await sandbox.create_event(payload, push=False))["id"])
    seen: list[str] = []
    expected_links = [(2, None), (3, 1), (None, 2)]
    for page, (next_page, previous_page) in enumerate(expected_links, start=1):
        url = f"{sandbox.base_url}/events?page={page}&pageSize=1000"
        async with http.get(url, headers=auth) as response:
            assert response.status == 200
            body = await response.json()
        assert contract.violations("GetEventsResponse", body) == []
        assert body["pagination"] == {
            "totalRecords": 2500,
            "pageSize": 1000,
            "currentPage": page,
            "totalPages": 3,
            "nextPage": next_page,
            "previousPage": previous_page,
        }
        seen += [event["id"] for event in body["events"]]
    assert seen == created[::-1]
    assert [e["id"] for e in sandbox.events] == created[::-1]


async def test_events_defaults_and_past_the_end(
    http: aiohttp.ClientSession, sandbox: Sandbox, auth: dict[str, str]
) -> None:
    for _ in range(3):
        await sandbox.create_event(user_eligibility_payload(dt.datetime.now(dt.UTC)))
    async with http.get(sandbox.base_url + "/events", headers=auth) as response:
        body = await response.json()
    assert body["pagination"]["pageSize"] == 100
    assert body["pagination"]["currentPage"] == 1
    assert body["pagination"]["nextPage"] is None
    assert len(body["events"]) == 3
    async with http.get(sandbox.base_url + "/events?page=5&pageSize=2", headers=auth) as response:
        body = await response.json()
    assert body["events"] == []
    assert body["pagination"]["nextPage"] is None
    assert body["pagination"]["totalPages"] == 2


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("pageSize=1001", "pageSize"),
        ("pageSize=0", "pageSize"),
        ("page=0", "page"),
        ("page=x", "page"),
    ],
)
async def test_bad_paging_is_a_validation_problem(
    http: aiohttp.ClientSession, sandbox: Sandbox, auth: dict[str, str], query: str, field: str
) -> None:
    async with http.get(f"{sandbox.base_url}/events?{query}", headers=auth) as response:
        assert response.status == 400
        assert response.content_type == "application/problem+json"
        body = await response.json(content_type=None)
    assert contract.violations("HttpValidationProblemDetails", body) == []
    assert body["status"] == 400
    assert list(body["errors"]) == [field]


async def test_pagesize_1000_is_allowed(
    http: aiohttp.ClientSession, sandbox: Sandbox, auth: dict[str, str]
) -> None:
    async with http.get(sandbox.base_url + "/events?pageSize=1000", headers=auth) as response:
        assert response.status == 200


async def test_event_by_id_and_404(
    http: aiohttp.ClientSession, sandbox: Sandbox, auth: dict[str, str]
) -> None:
    event = await sandbox.create_event(user_eligibility_payload(dt.datetime.now(dt.UTC)))
    async with http.get(f"{sandbox.base_url}/events/{event['id']}", headers=auth) as response:
        assert response.status == 200
        assert await response.json() == event
    async with http.get(f"{sandbox.base_url}/events/{uuid.uuid4()}", headers=auth) as response:
        assert response.status == 404
        assert await response.read() == b""


async def test_create_event_refuses_payloads_the_contract_forbids(sandbox: Sandbox) -> None:
    with pytest.raises(WireError) as caught:
        await sandbox.create_event({"payloadType": "PriceCurve", "targets": []})
    assert caught.value.field == "payload.priceArea"  # required list order: priceArea first
    odd = await sandbox.create_event({"payloadType": "FlexOffer", "x": 1}, validate=False)
    assert sandbox.events[0] == odd


def test_report_ledger_decides_without_a_server() -> None:
    ledger = ReportLedger()
    raw = json.dumps(report_for("e-1")).encode()
    first = ledger.submit(raw, "k", known_events={"e-1"}, now=0.0, report_id="r-1")
    assert first.status == 200
    assert first.body == {"id": "r-1", "eventId": "e-1", "createdAt": "1970-01-01T00:00:00+00:00"}
    again = ledger.submit(raw, "k", known_events=set(), now=5.0, report_id="r-2")
    assert again.body == first.body
    assert [(r.id, r.duplicate, r.known_event) for r in ledger.reports] == [
        ("r-1", False, True),
        ("r-1", True, False),
    ]
    assert ledger.submit(b"[]", None, known_events=set(), now=0, report_id="x").status == 400
    assert ledger.submit(b"", None, known_events=set(), now=0, report_id="x").status == 400
    assert len(ledger.reports) == 2


def test_pagination_is_pure_arithmetic() -> None:
    assert paginate(0, 1, 100)[0]["totalPages"] == 0
    assert paginate(0, 1, 100)[1:] == (0, 0)
    pagination, start, stop = paginate(10, 2, 4)
    assert (start, stop) == (4, 8)
    assert (pagination["previousPage"], pagination["nextPage"]) == (1, 3)
    assert paginate(10, 3, 4)[1:] == (8, 10)
    assert paginate(10, 9, 4)[1:] == (10, 10)
    assert parse_paging({}) == (1, 100)
    assert parse_paging({"page": "2", "pageSize": "1000"}) == (2, 1000)
    assert isinstance(parse_paging({"pageSize": "1001"}), dict)


# --- reports ----------------------------------------------------------------------------------


async def test_report_is_accepted_and_recorded(
    http: aiohttp.ClientSession, sandbox: Sandbox, auth: dict[str, str]
) -> None:
    event = await sandbox.create_event(price_curve_payload({}, dt.datetime.now(dt.UTC)))
    before = time.time()
    status, body, response = await post_report(http, sandbox, auth, report_for(event["id"]))
    assert status == 200
    assert response.content_type == "application/json"
    assert contract.violations("GetReportResponse", body) == []
    assert body["eventId"] == event["id"]
    uuid.UUID(body["id"])
    [report] = sandbox.reports
    assert report.id == body["id"]
    assert report.event_id == event["id"]
    assert report.body == report_for(event["id"])
    assert report.raw.startswith(b"{")
    assert report.known_event and not report.duplicate
    assert report.idempotency_key is None
    assert before <= report.received_at <= time.time()
    [attempt] = sandbox.attempts
    assert (attempt.status, attempt.authorized, attempt.raw) == (200, True, report.raw)


async def test_report_for_an_unknown_event_is_recorded_not_rejected(
    http: aiohttp.ClientSession, sandbox: Sandbox, auth: dict[str, str]
) -> None:
    status, _, _ = await post_report(http, sandbox, auth, report_for("no-such-event"))
    assert status == 200
    assert sandbox.reports[0].known_event is False


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (report_for(kwh="1.5"), "payloads[0].points[0].kiloWattHours"),
        ({"eventId": "e", "payloads": [{"payloadType": "EnergyUsage"}]}, "payloads[0].resolution"),
        ({"eventId": "e", "payloads": [], "extra": 1}, "extra"),
        ({"eventId": "e", "payloads": [{"payloadType": "Nope"}]}, "payloads[0].payloadType"),
    ],
)
async def test_invalid_report_is_400_with_a_json_string_naming_the_field(
    http: aiohttp.ClientSession, sandbox: Sandbox, auth: dict[str, str], body: Json, field: str
) -> None:
    status, message, response = await post_report(http, sandbox, auth, body)
    assert status == 400
    assert response.content_type == "application/json"
    assert isinstance(message, str)
    assert message.startswith(field + ": ")
    assert sandbox.reports == []
    assert [a.status for a in sandbox.attempts] == [400]


async def test_report_that_is_not_json_is_400(
    http: aiohttp.ClientSession, sandbox: Sandbox, auth: dict[str, str]
) -> None:
    async with http.post(sandbox.base_url + "/reports", data=b"{oops", headers=auth) as response:
        assert response.status == 400
        assert "JSON" in await response.json()


async def test_idempotency_key_repeat_returns_the_same_report_id(
    http: aiohttp.ClientSession, sandbox: Sandbox, auth: dict[str, str]
) -> None:
    _, first, _ = await post_report(http, sandbox, auth, key="k-1")
    _, again, _ = await post_report(http, sandbox, auth, key="k-1")
    _, other, _ = await post_report(http, sandbox, auth, key="k-2")
    _, bare1, _ = await post_report(http, sandbox, auth)
    _, bare2, _ = await post_report(http, sandbox, auth)
    assert again == first
    assert len({first["id"], other["id"], bare1["id"], bare2["id"]}) == 4
    assert [r.duplicate for r in sandbox.reports] == [False, True, False, False, False]
    assert [r.idempotency_key for r in sandbox.reports] == ["k-1", "k-1", "k-2", None, None]
    assert sandbox.reports[1].id == first["id"]


async def test_concurrent_reports_are_all_recorded_once(
    http: aiohttp.ClientSession, sandbox: Sandbox, auth: dict[str, str]
) -> None:
    gate = asyncio.Semaphore(16)

    async def one(i: int) -> str:
        async with gate:
            _, body, _ = await post_report(http, sandbox, auth, key=f"k-{i % 150}")
            return str(body["id"])

    ids = await asyncio.gather(*(one(i) for i in range(300)))
    assert len(set(ids)) == 150
    assert len(sandbox.reports) == 300
    assert sum(r.duplicate for r in sandbox.reports) == 150
    by_key: dict[str | None, set[str]] = {}
    for report in sandbox.reports:
        by_key.setdefault(report.idempotency_key, set()).add(report.id)
    assert all(len(ids) == 1 for ids in by_key.values())


async def test_wait_for_reports_is_woken_by_arrivals(
    http: aiohttp.ClientSession, sandbox: Sandbox, auth: dict[str, str]
) -> None:
    waiter = asyncio.create_task(sandbox.wait_for_reports(2, timeout=5))
    await post_report(http, sandbox, auth)
    assert not waiter.done()
    await post_report(http, sandbox, auth)
    await waiter
    with pytest.raises(TimeoutError, match="3 report"):
        await sandbox.wait_for_reports(3, timeout=0.05)


# --- faults -----------------------------------------------------------------------------------


async def test_status_fault_with_retry_after_and_body(
    http: aiohttp.ClientSession, sandbox: Sandbox, auth: dict[str, str]
) -> None:
    sandbox.add_faults(Fault(status=503, retry_after="7", body='"busy"'))
    async with http.post(
        sandbox.base_url + "/reports", json=report_for(), headers=auth
    ) as response:
        assert response.status == 503
        assert response.headers["Retry-After"] == "7"
        assert await response.json() == "busy"
    assert sandbox.reports == []
    status, _, _ = await post_report(http, sandbox, auth)
    assert status == 200
    assert [a.status for a in sandbox.attempts] == [503, 200]


async def test_status_fault_without_body_or_retry_after(
    http: aiohttp.ClientSession, sandbox: Sandbox, auth: dict[str, str]
) -> None:
    sandbox.add_faults(Fault(status=429))
    async with http.post(
        sandbox.base_url + "/reports", json=report_for(), headers=auth
    ) as response:
        assert response.status == 429
        assert "Retry-After" not in response.headers
        assert await response.read() == b""


async def test_delay_fault_answers_normally_but_late(
    http: aiohttp.ClientSession, sandbox: Sandbox, auth: dict[str, str]
) -> None:
    sandbox.add_faults(Fault(delay=0.2), Fault(delay=0.1, status=502))
    started = time.monotonic()
    status, _, _ = await post_report(http, sandbox, auth)
    assert status == 200
    assert time.monotonic() - started >= 0.2
    started = time.monotonic()
    status, _, _ = await post_report(http, sandbox, auth)
    assert status == 502
    assert time.monotonic() - started >= 0.1
    assert len(sandbox.reports) == 1


async def test_delay_fault_lets_a_client_time_out(
    http: aiohttp.ClientSession, sandbox: Sandbox, auth: dict[str, str]
) -> None:
    sandbox.add_faults(Fault(delay=0.5))
    with pytest.raises(asyncio.TimeoutError):
        async with http.post(
            sandbox.base_url + "/reports",
            json=report_for(),
            headers=auth,
            timeout=aiohttp.ClientTimeout(total=0.1),
        ):
            pass


async def test_drop_fault_closes_without_answer_and_accepts_nothing(
    http: aiohttp.ClientSession, sandbox: Sandbox, auth: dict[str, str]
) -> None:
    sandbox.add_faults(Fault(drop=True))
    with pytest.raises(DROPPED):
        await post_report(http, sandbox, auth, key="k-drop")
    assert sandbox.reports == []
    assert [a.status for a in sandbox.attempts] == ["dropped"]
    status, body, _ = await post_report(http, sandbox, auth, key="k-drop")
    assert status == 200
    assert sandbox.reports[0].duplicate is False
    assert sandbox.reports[0].id == body["id"]


async def test_drop_after_accept_records_the_report_but_loses_the_answer(
    http: aiohttp.ClientSession, sandbox: Sandbox, auth: dict[str, str]
) -> None:
    sandbox.add_faults(Fault(drop_after_accept=True))
    with pytest.raises(DROPPED):
        await post_report(http, sandbox, auth, key="k-lost")
    [report] = sandbox.reports
    assert report.duplicate is False
    assert [a.status for a in sandbox.attempts] == ["dropped"]
    # the client retries with the same key: same report id, counted as a duplicate
    status, body, _ = await post_report(http, sandbox, auth, key="k-lost")
    assert status == 200
    assert body["id"] == report.id
    assert [r.duplicate for r in sandbox.reports] == [False, True]


async def test_fault_count_and_fifo_order(
    http: aiohttp.ClientSession, sandbox: Sandbox, auth: dict[str, str]
) -> None:
    sandbox.add_faults(Fault(status=500, count=3), Fault(status=429, retry_after="1"))
    statuses = [(await post_report(http, sandbox, auth))[0] for _ in range(6)]
    assert statuses == [500, 500, 500, 429, 200, 200]
    assert len(sandbox.reports) == 2


async def test_clear_faults(
    http: aiohttp.ClientSession, sandbox: Sandbox, auth: dict[str, str]
) -> None:
    sandbox.add_faults(Fault(status=500, count=5))
    sandbox.clear_faults()
    assert (await post_report(http, sandbox, auth))[0] == 200


async def test_faults_are_not_spent_on_unauthorised_requests(
    http: aiohttp.ClientSession, sandbox: Sandbox, auth: dict[str, str]
) -> None:
    sandbox.add_faults(Fault(status=503))
    status, _, _ = await post_report(http, sandbox, {"Authorization": "Bearer stale"})
    assert status == 401
    assert (await post_report(http, sandbox, auth))[0] == 503


def test_fault_queue_is_fifo_with_counts() -> None:
    queue = FaultQueue()
    a, b = Fault(status=500, count=2), Fault(drop=True)
    queue.add(a, b)
    assert len(queue) == 3
    assert [queue.take(), queue.take(), queue.take(), queue.take()] == [a, a, b, None]
    queue.add(a)
    queue.clear()
    assert queue.take() is None


def test_faults_from_json_name_what_is_wrong() -> None:
    assert faults_from_json({"status": 503, "retry_after": "2"}) == [
        Fault(status=503, retry_after="2")
    ]
    assert faults_from_json([{"drop": True}, {"delay": 0.5, "count": 2}]) == [
        Fault(drop=True),
        Fault(delay=0.5, count=2),
    ]
    with pytest.raises(ValueError, match=r"\[0\]\.statuss"):
        faults_from_json([{"statuss": 500}])
    with pytest.raises(ValueError, match=r"\[1\].*status"):
        faults_from_json([{}, {"status": "500"}])
    with pytest.raises(ValueError, match="count"):
        faults_from_json({"count": 0})
    with pytest.raises(TypeError):
        faults_from_json([1])
    with pytest.raises(ValueError, match="status"):
        Fault(status=700)
    with pytest.raises(ValueError, match="delay"):
        Fault(delay=-1)


# --- webhooks ---------------------------------------------------------------------------------


async def test_webhook_registration_listing_and_deletion(
    http: aiohttp.ClientSession, sandbox: Sandbox, auth: dict[str, str]
) -> None:
    webhook = await register(
        http, sandbox, auth, "http://127.0.0.1:9/x", types=["PriceCurveCreated"]
    )
    assert contract.violations("GetWebhookResponse", webhook) == []
    assert "webhookSecret" not in webhook
    assert webhook["notificationTypes"] == ["PriceCurveCreated"]
    async with http.get(sandbox.base_url + "/webhooks", headers=auth) as response:
        listed = await response.json()
    assert contract.violations("GetWebhooksResponse", listed) == []
    assert listed["webhooks"] == [webhook]
    url = f"{sandbox.base_url}/webhooks/{webhook['webhookId']}"
    async with http.get(url, headers=auth) as response:
        assert await response.json() == webhook
    async with http.delete(url, headers=auth) as response:
        assert response.status == 204
    async with http.delete(url, headers=auth) as response:
        assert response.status == 404
    async with http.get(url, headers=auth) as response:
        assert response.status == 404


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": "x"}, "webhookUrl"),
        ({"webhookUrl": "http://x", "notificationTypes": ["Everything"]}, "notificationTypes[0]"),
        ({"webhookUrl": "http://x", "secret": "s"}, "secret"),
    ],
)
async def test_invalid_webhook_registration_is_a_validation_problem(
    http: aiohttp.ClientSession, sandbox: Sandbox, auth: dict[str, str], body: Json, field: str
) -> None:
    async with http.post(sandbox.base_url + "/webhooks", json=body, headers=auth) as response:
        assert response.status == 400
        assert response.content_type == "application/problem+json"
        problem = await response.json(content_type=None)
    assert list(problem["errors"]) == [field]
    assert sandbox.webhooks == {}


async def test_push_is_signed_and_retried_until_200(
    http: aiohttp.ClientSession, sandbox: Sandbox, auth: dict[str, str]
) -> None:
    async with receiver([500, 500]) as hook:
        webhook = await register(http, sandbox, auth, hook.url, secret="hook-secret")
        async with http.post(
            sandbox.base_url + "/simulation/events/pricecurve", json={}, headers=auth
        ) as response:
            event = (await response.json())["simulatedEvent"]
        await sandbox.wait_for_pushes(3, timeout=5)
    assert [p.status for p in sandbox.pushes] == [500, 500, 200]
    assert [p.attempt for p in sandbox.pushes] == [1, 2, 3]
    assert {p.event_id for p in sandbox.pushes} == {event["id"]}
    assert {p.webhook_id for p in sandbox.pushes} == {webhook["webhookId"]}
    assert {p.url for p in sandbox.pushes} == {hook.url}
    assert len({p.notification_id for p in sandbox.pushes}) == 1
    assert sandbox.pushes[-1].ok and not sandbox.pushes[0].ok
    assert len(hook.bodies) == 3 and len(set(hook.bodies)) == 1
    for body, headers in zip(hook.bodies, hook.headers, strict=True):
        assert headers["Content-Type"] == "application/json"
        assert verify("hook-secret", body, headers["X-Payload-Signature"])
    notification = json.loads(hook.bodies[0])
    assert contract.violations("EventNotification", notification) == []
    assert notification["notificationType"] == "PriceCurveCreated"
    assert notification["eventId"] == event["id"]
    assert notification["notificationId"] == sandbox.pushes[0].notification_id
    assert notification["eventCreatedAtUtc"] == event["createdAt"]
    assert notification["payload"] == event["payload"]
    assert notification["notificationSentUtc"].endswith("+00:00")


async def test_push_gives_up_after_three_retries(
    http: aiohttp.ClientSession, sandbox: Sandbox, auth: dict[str, str]
) -> None:
    async with receiver([500] * 10) as hook:
        await register(http, sandbox, auth, hook.url)
        await sandbox.create_event(user_eligibility_payload(dt.datetime.now(dt.UTC)))
        await sandbox.wait_for_pushes(4, timeout=5)
        assert [p.status for p in sandbox.pushes] == [500] * 4
        assert len(hook.bodies) == 4


async def test_push_to_an_unreachable_webhook_records_the_error(
    http: aiohttp.ClientSession, sandbox: Sandbox, auth: dict[str, str]
) -> None:
    async with receiver() as hook:
        dead_url = hook.url
    await register(http, sandbox, auth, dead_url)
    await sandbox.create_event(user_eligibility_payload(dt.datetime.now(dt.UTC)))
    await sandbox.wait_for_pushes(4, timeout=5)
    assert all(p.status is None and p.error for p in sandbox.pushes)


async def test_push_goes_only_to_subscribed_webhooks(
    http: aiohttp.ClientSession, sandbox: Sandbox, auth: dict[str, str]
) -> None:
    async with receiver() as hook:
        picky = await register(http, sandbox, auth, hook.url, types=["UserEligibilityUpdated"])
        everything = await register(http, sandbox, auth, hook.url, types=[])
        await sandbox.create_event(price_curve_payload({}, dt.datetime.now(dt.UTC)))
        await sandbox.create_event(user_eligibility_payload(dt.datetime.now(dt.UTC)))
        await sandbox.wait_for_pushes(3, timeout=5)
    kinds = sorted((p.webhook_id, p.event_id) for p in sandbox.pushes)
    curve, eligibility = (e["id"] for e in sandbox.events[::-1])
    assert kinds == sorted(
        [
            (picky["webhookId"], eligibility),
            (everything["webhookId"], curve),
            (everything["webhookId"], eligibility),
        ]
    )


async def test_create_event_without_push_sends_nothing(
    http: aiohttp.ClientSession, sandbox: Sandbox, auth: dict[str, str]
) -> None:
    async with receiver() as hook:
        await register(http, sandbox, auth, hook.url)
        await sandbox.create_event(user_eligibility_payload(dt.datetime.now(dt.UTC)), push=False)
        await sandbox.create_event(user_eligibility_payload(dt.datetime.now(dt.UTC)))
        await sandbox.wait_for_pushes(1, timeout=5)
    assert [p.event_id for p in sandbox.pushes] == [sandbox.events[0]["id"]]


async def test_webhook_without_secret_gets_no_signature(
    http: aiohttp.ClientSession, sandbox: Sandbox, auth: dict[str, str]
) -> None:
    async with receiver() as hook:
        await register(http, sandbox, auth, hook.url, secret=None)
        await sandbox.create_event(user_eligibility_payload(dt.datetime.now(dt.UTC)))
        await sandbox.wait_for_pushes(1, timeout=5)
    assert "X-Payload-Signature" not in hook.headers[0]


async def test_exit_cancels_pushes_waiting_to_retry(http: aiohttp.ClientSession) -> None:
    async with receiver([500] * 10) as hook:
        async with run_sandbox(push_retry_delays=(60.0,)) as sandbox:
            token = await get_token(http, sandbox)
            await register(http, sandbox, {"Authorization": f"Bearer {token}"}, hook.url)
            await sandbox.create_event(user_eligibility_payload(dt.datetime.now(dt.UTC)))
            await sandbox.wait_for_pushes(1, timeout=5)
            started = time.monotonic()
        assert time.monotonic() - started < 5
    leftovers = [t for t in asyncio.all_tasks() if t.get_name().startswith("sandbox.push")]
    assert leftovers == []


def test_webhook_subscription_rules() -> None:
    hook = Webhook("w", "http://x", None, None, (), "2025-01-01T00:00:00+00:00")
    assert hook.wants("PriceCurveCreated") and hook.wants("Unknown")
    picky = Webhook("w", "http://x", None, None, ("UserEligibilityUpdated",), "t")
    assert picky.wants("UserEligibilityUpdated") and not picky.wants("PriceCurveCreated")
    picky.enabled = False
    assert not picky.wants("UserEligibilityUpdated")


def test_sign_reproduces_volue_test_vectors() -> None:
    if not VECTORS.exists():
        pytest.skip(f"{VECTORS} is not available")
    secret = (VECTORS / "signing-key.txt").read_text().strip()
    for name in ("price-curve-event.json", "user-eligibility-event.json"):
        body = (VECTORS / name).read_bytes()
        expected = (VECTORS / f"{name}.hmacsha256b64").read_text().strip()
        assert sign(body, secret) == expected


# --- simulation -------------------------------------------------------------------------------

SIMULATIONS: list[tuple[str, Json | None, str, str]] = [
    ("pricecurve", {}, "PriceCurve", "PriceCurveCreated"),
    ("usereligibility", None, "UserEligibility", "UserEligibilityUpdated"),
    ("lpc/locations", {}, "LocationLPC", "LocationLPCRequested"),
    ("lpc/resources", {}, "ResourceLPC", "ResourceLPCRequested"),
]


@pytest.mark.parametrize(("path", "body", "payload_type", "notification_type"), SIMULATIONS)
async def test_simulation_endpoints_make_contract_valid_events(
    http: aiohttp.ClientSession,
    sandbox: Sandbox,
    auth: dict[str, str],
    path: str,
    body: Json | None,
    payload_type: str,
    notification_type: str,
) -> None:
    async with receiver() as hook:
        await register(http, sandbox, auth, hook.url)
        url = f"{sandbox.base_url}/simulation/events/{path}"
        async with http.post(url, json=body, headers=auth) as response:
            assert response.status == 200
            answer = await response.json()
        await sandbox.wait_for_pushes(1, timeout=5)
    assert contract.violations("SimulateEventResponse", answer) == []
    event = answer["simulatedEvent"]
    assert contract.violations("GetEventResponse", event) == []
    assert event["payload"]["payloadType"] == payload_type
    assert event["createdAt"].endswith("+00:00")
    assert sandbox.events == [event]
    pushed = json.loads(hook.bodies[0])
    assert contract.violations("EventNotification", pushed) == []
    assert pushed["notificationType"] == notification_type


async def test_default_price_curve_is_24_hours_of_tomorrow(
    http: aiohttp.ClientSession, sandbox: Sandbox, auth: dict[str, str]
) -> None:
    url = f"{sandbox.base_url}/simulation/events/pricecurve"
    async with http.post(url, data=b"", headers=auth) as response:
        payload = (await response.json())["simulatedEvent"]["payload"]
    curve = payload["priceCurveDelta"]
    tomorrow = dt.datetime.now(dt.UTC).date() + dt.timedelta(days=1)
    assert payload["targets"] == [
        {"resourceId": "sandbox-resource-1", "locationId": "sandbox-location-1"}
    ]
    assert payload["priceArea"] == "NO5"
    assert (curve["currency"], curve["energyUnit"], curve["resolution"]) == (
        "NOK",
        "kWh",
        "01:00:00",
    )
    stamps = [dt.datetime.fromisoformat(p["timestamp"]) for p in curve["points"]]
    assert len(stamps) == 24
    assert stamps[0] == dt.datetime.combine(tomorrow, dt.time(), dt.UTC)
    assert all(b - a == dt.timedelta(hours=1) for a, b in itertools.pairwise(stamps))


async def test_price_curve_uses_given_points_and_resolution(
    http: aiohttp.ClientSession, sandbox: Sandbox, auth: dict[str, str]
) -> None:
    start = dt.datetime.now(dt.UTC).replace(microsecond=0)
    points = [
        {"price": 0.1 * i, "timestamp": (start + dt.timedelta(seconds=10 * i)).isoformat()}
        for i in range(6)
    ]
    request = {
        "targets": [{"resourceId": "gw-hwt-1", "locationId": "gw-loc-1"}],
        "priceArea": "SE3",
        "priceCurveDelta": {"points": points, "resolution": "00:00:10", "currency": "SEK"},
    }
    url = f"{sandbox.base_url}/simulation/events/pricecurve"
    async with http.post(url, json=request, headers=auth) as response:
        payload = (await response.json())["simulatedEvent"]["payload"]
    assert payload["targets"] == request["targets"]
    assert payload["priceArea"] == "SE3"
    assert payload["priceCurveDelta"] == {
        "points": points,
        "energyUnit": "kWh",
        "currency": "SEK",
        "resolution": "00:00:10",
    }


async def test_lpc_simulations_use_given_targets_and_points(
    http: aiohttp.ClientSession, sandbox: Sandbox, auth: dict[str, str]
) -> None:
    points = [
        {"maxPowerInKiloWatts": 2.5, "timestamp": "2025-03-12T16:00:00+00:00"},
        {"timestamp": "2025-03-12T16:15:00+00:00"},
    ]
    request = {
        "locations": [{"location": {"locationId": "L", "meterPointId": "M"}, "points": points}]
    }
    url = f"{sandbox.base_url}/simulation/events/lpc/locations"
    async with http.post(url, json=request, headers=auth) as response:
        [target] = (await response.json())["simulatedEvent"]["payload"]["targets"]
    assert (target["locationId"], target["meterPointId"]) == ("L", "M")
    assert target["resolution"] == "00:15:00"
    assert [p["maxPowerInKiloWatts"] for p in target["points"]] == [2.5, 0.0]
    request = {
        "resources": [{"resource": {"resourceId": "R", "locationId": "L", "meterPointId": "M"}}]
    }
    url = f"{sandbox.base_url}/simulation/events/lpc/resources"
    async with http.post(url, json=request, headers=auth) as response:
        [target] = (await response.json())["simulatedEvent"]["payload"]["targets"]
    assert (target["resourceId"], target["locationId"], target["meterPointId"]) == ("R", "L", "M")
    assert target["resolution"] == "01:00:00"
    assert len(target["points"]) == 2
    assert {p["maxPowerInKiloWatts"] for p in target["points"]} == {0.0}


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("pricecurve", {"priceArea": "NO9"}, "priceArea"),
        ("pricecurve", {"targets": [{"resourceId": "r"}]}, "targets[0].locationId"),
        ("lpc/locations", {"locations": [{"where": {}}]}, "locations[0].where"),
        (
            "lpc/resources",
            {"resources": [{"points": [{"timestamp": "soon"}]}]},
            "resources[0].points[0].timestamp",
        ),
    ],
)
async def test_invalid_simulation_request_is_400_naming_the_field(
    http: aiohttp.ClientSession,
    sandbox: Sandbox,
    auth: dict[str, str],
    path: str,
    body: Json,
    field: str,
) -> None:
    url = f"{sandbox.base_url}/simulation/events/{path}"
    async with http.post(url, json=body, headers=auth) as response:
        assert response.status == 400
        assert (await response.json()).startswith(field + ": ")
    assert sandbox.events == []


timestamps = st.datetimes(
    min_value=dt.datetime(2020, 1, 1), max_value=dt.datetime(2035, 1, 1), timezones=st.just(dt.UTC)
).map(lambda d: d.isoformat())
ids = st.text(min_size=1, max_size=8)
lpc_points = st.none() | st.lists(
    st.fixed_dictionaries(
        {},
        optional={
            "maxPowerInKiloWatts": st.floats(0, 1e4, allow_nan=False),
            "timestamp": timestamps,
        },
    ),
    max_size=4,
)
price_requests = st.fixed_dictionaries(
    {},
    optional={
        "targets": st.none()
        | st.lists(st.fixed_dictionaries({"resourceId": ids, "locationId": ids}), max_size=3),
        "priceArea": st.sampled_from(["NO1", "SE3", "FI", "DK2", "Unknown"]),
        "priceCurveDelta": st.fixed_dictionaries(
            {},
            optional={
                "points": st.lists(
                    st.fixed_dictionaries({"price": st.floats(-10, 10), "timestamp": timestamps}),
                    max_size=4,
                ),
                "resolution": st.sampled_from(["01:00:00", "00:15:00", "00:00:10", "00:00:00"]),
                "currency": st.sampled_from(["NOK", "EUR"]),
                "energyUnit": st.sampled_from(["kWh", "MWh"]),
            },
        ),
    },
)
location_requests = st.fixed_dictionaries(
    {},
    optional={
        "locations": st.none()
        | st.lists(
            st.fixed_dictionaries(
                {},
                optional={
                    "location": st.fixed_dictionaries(
                        {}, optional={"locationId": ids, "meterPointId": ids}
                    ),
                    "points": lpc_points,
                },
            ),
            max_size=3,
        )
    },
)
resource_requests = st.fixed_dictionaries(
    {},
    optional={
        "resources": st.none()
        | st.lists(
            st.fixed_dictionaries(
                {},
                optional={
                    "resource": st.fixed_dictionaries(
                        {}, optional={"locationId": ids, "resourceId": ids, "meterPointId": ids}
                    ),
                    "points": lpc_points,
                },
            ),
            max_size=3,
        )
    },
)


@settings(max_examples=60, deadline=None)
@given(
    now=st.datetimes(timezones=st.just(dt.UTC)),
    price=price_requests,
    locations=location_requests,
    resources=resource_requests,
)
def test_simulated_events_are_contract_valid_for_any_valid_request(
    now: dt.datetime, price: Json, locations: Json, resources: Json
) -> None:
    for schema, request, build in [
        ("SimulatePriceCurveEventRequest", price, price_curve_payload),
        ("SimulateLocationLPCEventRequest", locations, location_lpc_payload),
        ("SimulateResourceLPCEventRequest", resources, resource_lpc_payload),
    ]:
        assert contract.violations(schema, request) == []
        event = {"id": "e", "createdAt": now.isoformat(), "payload": build(request, now)}
        assert contract.violations("GetEventResponse", event) == []
        pushed = notification(event, "n", now)
        assert contract.violations("EventNotification", pushed) == []


# --- admin endpoints --------------------------------------------------------------------------


async def test_admin_endpoints_steer_and_show_the_sandbox(
    http: aiohttp.ClientSession, sandbox: Sandbox, auth: dict[str, str]
) -> None:
    admin = sandbox.root_url + "/_sandbox"
    faults = [{"status": 503, "retry_after": "2"}, {"drop_after_accept": True}]
    async with http.post(admin + "/faults", json=faults) as response:
        assert response.status == 204
    async with http.post(admin + "/faults", json=[{"stauts": 500}]) as response:
        assert response.status == 400
        assert "stauts" in await response.json()
    status, _, response = await post_report(http, sandbox, auth, key="k")
    assert (status, response.headers["Retry-After"]) == (503, "2")
    with pytest.raises(DROPPED):
        await post_report(http, sandbox, auth, key="k")
    async with http.post(admin + "/faults", json={"status": 500, "count": 9}) as response:
        assert response.status == 204
    async with http.delete(admin + "/faults") as response:
        assert response.status == 204
    assert (await post_report(http, sandbox, auth, key="k"))[0] == 200

    async with http.get(admin + "/reports") as response:
        reports = await response.json()
    assert [(r["idempotencyKey"], r["duplicate"]) for r in reports] == [("k", False), ("k", True)]
    assert reports[0]["body"] == report_for()
    assert {"id", "eventId", "receivedAt", "knownEvent"} <= set(reports[0])
    async with http.get(admin + "/attempts") as response:
        attempts = await response.json()
    assert [a["status"] for a in attempts] == [503, "dropped", 200]
    assert all(a["authorized"] for a in attempts)

    async with http.post(admin + "/events", json={"payload": {"payloadType": "X"}}) as response:
        assert response.status == 400
        assert "payload.payloadType" in await response.json()
    event_body = {"payload": user_eligibility_payload(dt.datetime.now(dt.UTC)), "push": False}
    async with http.post(admin + "/events", json=event_body) as response:
        event = await response.json()
    assert sandbox.events == [event]
    async with http.post(admin + "/events", data=b"[") as response:
        assert response.status == 400

    async with http.get(admin + "/pushes") as response:
        assert await response.json() == []
    async with http.post(admin + "/tokens/revoke") as response:
        assert response.status == 204
    async with http.get(sandbox.base_url + "/events", headers=auth) as response:
        assert response.status == 401


async def test_admin_pushes_lists_attempts(
    http: aiohttp.ClientSession, sandbox: Sandbox, auth: dict[str, str]
) -> None:
    async with receiver([503]) as hook:
        await register(http, sandbox, auth, hook.url)
        await sandbox.create_event(user_eligibility_payload(dt.datetime.now(dt.UTC)))
        await sandbox.wait_for_pushes(2, timeout=5)
    async with http.get(sandbox.root_url + "/_sandbox/pushes") as response:
        pushes = await response.json()
    assert [(p["attempt"], p["status"]) for p in pushes] == [(1, 503), (2, 200)]
    assert pushes[0]["url"] == hook.url


# --- lifetime ---------------------------------------------------------------------------------


async def test_urls_and_port_zero(sandbox: Sandbox) -> None:
    assert sandbox.root_url.startswith("http://127.0.0.1:")
    assert not sandbox.root_url.endswith(":0")
    assert sandbox.base_url == sandbox.root_url + "/energy-coordination/v1"
    assert sandbox.token_url == sandbox.root_url + "/connect/token"


async def test_two_sandboxes_run_side_by_side() -> None:
    async with run_sandbox() as one, run_sandbox(client_id="b", client_secret="c") as two:
        assert one.root_url != two.root_url
        assert (two.client_id, two.client_secret) == ("b", "c")


async def test_server_is_closed_after_exit(http: aiohttp.ClientSession) -> None:
    async with run_sandbox() as sandbox:
        url = sandbox.token_url
    with pytest.raises(aiohttp.ClientConnectionError):
        async with http.post(url, data={"grant_type": "client_credentials"}):
            pass
