"""All the poison inputs of issue 8 at once, against ``ecgw run`` as a real process.

The gateway talks to the real sandbox through a hostile front (an aiohttp app in this
test) that passes everything through except the poisons: a token with CR/LF, ``GET /events``
pages with malformed events (an integer id, an unparseable ``createdAt``, a payload nested
10k deep, a PriceCurve point in the year 9999, a resolution of 99999999 days), a page with
``"events": null``, an HTML page answered 200, pages whose ``nextPage`` points back, and
``POST /reports`` answers of a 302 and of a 2xx whose body is not UTF-8. The test itself
posts signed webhook poisons (a point in 9999, a huge resolution, a body nested 10k deep,
``eventCreatedAtUtc`` of year 1 at +01:00), and two simulated devices report negative power
and 1e308 kW.

The gateway must stay up through all of it, come back up after a kill -9 with the poison
stored, and still report normal events that arrive afterwards, by push and by poll. Each
poison that is stored must be visible with its reason in ``ecgw events list --json`` or
``ecgw outbox list --json``.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import math
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from gateway.intake.signature import sign
from gateway.sandbox import Sandbox, run_sandbox
from gateway.sandbox.client import api_post
from tests.kit.gateway import report_body, toml
from tests.kit.live import GatewayProcess, integrity
from tests.kit.proc import ecgw

pytestmark = pytest.mark.slow

SECRET = "poison-webhook-secret"
BASE = "/energy-coordination/v1"
LOCATION = "loc-1"
NORMAL_KW = 5.0
MAX_KW = 1000.0  # the default max_kw of a resource
DEPTH = 10_000
BAD_TOKEN = "poisoned\r\nX-Injected: 1"
NOT_UTF8 = b'\xff\xfe{"id": "\xc3\x28"}'
NORMAL_STATES = {"new", "planned", "done"}  # plan states of an event taken as a normal one


def _iso(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).isoformat()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _user_eligibility() -> dict[str, Any]:
    return {
        "payloadType": "UserEligibility",
        "lastUpdated": _iso(time.time()),
        "addedUsers": ["u"],
        "removedUsers": [],
    }


def _price_curve(resources: list[str], points: list[str], resolution: str) -> dict[str, Any]:
    return {
        "payloadType": "PriceCurve",
        "priceArea": "NO5",
        "targets": [{"resourceId": r, "locationId": LOCATION} for r in resources],
        "priceCurveDelta": {
            "points": [{"timestamp": p, "price": 1.0} for p in points],
            "energyUnit": "kWh",
            "currency": "NOK",
            "resolution": resolution,
        },
    }


def _deep(depth: int = DEPTH) -> str:
    return "[" * depth + "]" * depth


def _user_eligibility_nested_deep() -> str:
    """A UserEligibility payload with an unknown field nested ``DEPTH`` deep (raw JSON)."""
    plain = json.dumps(_user_eligibility())
    return plain[:-1] + ', "extra": ' + _deep() + "}"


# -- the poisons -------------------------------------------------------------------------------

IN_9999 = _price_curve(["normal-1"], ["9999-12-31T23:00:00Z"], "01:00:00")
HUGE_RESOLUTION = _price_curve(["normal-1"], ["2026-11-26T00:00:00Z"], "99999999.00:00:00")


def _notification(
    event_id: str,
    payload: str,
    created: str = "2026-11-26T00:00:00Z",
    kind: str = "PriceCurveCreated",
) -> bytes:
    """A signed-to-be ``EventNotification`` with ``payload`` as raw JSON text."""
    head = json.dumps(
        {
            "notificationId": f"n-{event_id}",
            "eventId": event_id,
            "eventCreatedAtUtc": created,
            "notificationSentUtc": "2026-11-26T00:00:00Z",
            "notificationType": kind,
        }
    )
    return (head[:-1] + ', "payload": ' + payload + "}").encode()


WEBHOOK_POISONS = {
    "hook-9999": _notification("hook-9999", json.dumps(IN_9999)),
    "hook-resolution": _notification("hook-resolution", json.dumps(HUGE_RESOLUTION)),
    "hook-deep": _notification(
        "hook-deep", _user_eligibility_nested_deep(), kind="UserEligibilityUpdated"
    ),
    "hook-year-1": _notification(
        "hook-year-1",
        json.dumps(_user_eligibility()),
        created="0001-01-01T00:00:00+01:00",
        kind="UserEligibilityUpdated",
    ),
}

# Polled poisons, stored and quarantined: event id (as the gateway keys it) -> envelope text.
POLLED_POISONS = {
    "12345": '{"id": 12345, "createdAt": "%s", "payload": %s}',
    "poll-created-at": '{"id": "poll-created-at", "createdAt": "not a time", "payload": %s}',
    "poll-deep": '{"id": "poll-deep", "createdAt": "%s", "payload": %s}',
    "poll-9999": '{"id": "poll-9999", "createdAt": "%s", "payload": %s}',
    "poll-resolution": '{"id": "poll-resolution", "createdAt": "%s", "payload": %s}',
}


def _polled_poison_events() -> list[str]:
    now = _iso(time.time())
    plain = json.dumps(_user_eligibility())
    return [
        POLLED_POISONS["12345"] % (now, plain),
        POLLED_POISONS["poll-created-at"] % plain,
        POLLED_POISONS["poll-deep"] % (now, _user_eligibility_nested_deep()),
        POLLED_POISONS["poll-9999"] % (now, json.dumps(IN_9999)),
        POLLED_POISONS["poll-resolution"] % (now, json.dumps(HUGE_RESOLUTION)),
    ]


def _envelope(event_id: str) -> str:
    return json.dumps(
        {"id": event_id, "createdAt": _iso(time.time()), "payload": _user_eligibility()}
    )


def _page(events: list[str] | None, page: int, next_page: int | None) -> bytes:
    pagination = {
        "totalRecords": 100,
        "pageSize": 10,
        "currentPage": page,
        "totalPages": 10,
        "nextPage": next_page,
        "previousPage": page - 1 if page > 1 else None,
    }
    items = "null" if events is None else "[" + ", ".join(events) + "]"
    return f'{{"events": {items}, "pagination": {json.dumps(pagination)}}}'.encode()


def _json(body: bytes, status: int = 200) -> web.Response:
    return web.Response(body=body, status=status, content_type="application/json")


# -- the hostile front -------------------------------------------------------------------------


@dataclass
class Front:
    """Passes requests through to the sandbox, except the poisons; records what it served."""

    sandbox: Sandbox
    session: aiohttp.ClientSession
    root_url: str = ""
    sweeps: int = 0
    events_gets: list[tuple[int, str | None]] = field(default_factory=list)
    tokens_served: int = 0
    bad_tokens_served: int = 0
    report_posts: list[tuple[str | None, str | None]] = field(default_factory=list)
    followed_redirects: int = 0

    LOOP_SWEEP = 4  # the sweep whose pages point back at each other

    def app(self) -> web.Application:
        app = web.Application(client_max_size=16 * 1024 * 1024)
        app.add_routes(
            [
                web.post("/connect/token", self.token),
                web.get(BASE + "/events", self.events),
                web.post(BASE + "/reports", self.reports),
                web.route("*", "/moved", self.moved),
                web.route("*", "/{tail:.*}", self.proxy),
            ]
        )
        return app

    async def proxy(self, request: web.Request, body: bytes | None = None) -> web.Response:
        raw = await request.read() if body is None else body
        forward = ("Authorization", "Content-Type", "Idempotency-Key")
        headers = {h: request.headers[h] for h in forward if h in request.headers}
        async with self.session.request(
            request.method, self.sandbox.root_url + request.path_qs, data=raw, headers=headers
        ) as resp:
            answer = await resp.read()
            keep = ("Content-Type", "Retry-After", "WWW-Authenticate")
            out = {h: resp.headers[h] for h in keep if h in resp.headers}
            return web.Response(body=answer, status=resp.status, headers=out)

    async def token(self, request: web.Request) -> web.Response:
        self.tokens_served += 1
        if self.tokens_served <= 2:  # the first two tokens carry CR/LF
            self.bad_tokens_served += 1
            body = {"access_token": BAD_TOKEN, "token_type": "Bearer", "expires_in": 3600}
            return _json(json.dumps(body).encode())
        return await self.proxy(request)

    async def events(self, request: web.Request) -> web.Response:
        page = request.query.get("page")
        if page is None:
            self.sweeps += 1
        self.events_gets.append((self.sweeps, page))
        match self.sweeps:
            case 1:  # malformed events beside a valid one
                events = [*_polled_poison_events(), _envelope("poll-valid-beside")]
                return _json(_page(events, 1, None))
            case 2:
                return _json(_page(None, 1, None))
            case 3:
                html = "<!doctype html><html><body><h1>Maintenance</h1></body></html>"
                return web.Response(text=html, content_type="text/html")
            case self.LOOP_SWEEP:  # page 1 -> 2 -> 1 -> ...
                if page in (None, "1"):
                    return _json(_page([_envelope("poll-loop-1")], 1, 2))
                return _json(_page([_envelope("poll-loop-2")], 2, 1))
        return await self.proxy(request)

    async def reports(self, request: web.Request) -> web.Response:
        raw = await request.read()
        try:
            event_id = json.loads(raw).get("eventId")
        except ValueError:
            event_id = None
        earlier = sum(1 for e, _ in self.report_posts if e == event_id)
        self.report_posts.append((event_id, request.headers.get("Idempotency-Key")))
        if event_id == "poison-302" and not earlier:
            return web.Response(status=302, headers={"Location": self.root_url + "/moved"})
        if event_id == "poison-utf8" and not earlier:
            passed = await self.proxy(request, raw)
            assert passed.status == 200, passed.body  # the API took it...
            return web.Response(body=NOT_UTF8, content_type="application/json")  # ...and said so
        return await self.proxy(request, raw)

    async def moved(self, request: web.Request) -> web.Response:
        self.followed_redirects += 1
        return web.Response(status=404)

    def gets_in_sweep(self, sweep: int) -> int:
        return sum(1 for s, _ in self.events_gets if s == sweep)


@contextlib.asynccontextmanager
async def hostile_front(sandbox: Sandbox) -> AsyncIterator[Front]:
    async with aiohttp.ClientSession() as session:
        front = Front(sandbox, session)
        runner = web.AppRunner(front.app(), access_log=None)
        await runner.setup()
        try:
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            front.root_url = f"http://127.0.0.1:{runner.addresses[0][1]}"
            yield front
        finally:
            await runner.cleanup()


# -- the gateway -------------------------------------------------------------------------------


def gateway_config(front: Front, state_dir: Path, port: int) -> dict[str, Any]:
    adapters = {
        "normal": NORMAL_KW,
        "exporter": -2.0,  # an exporting resource: negative power
        "huge": 1e308,  # a broken device
    }
    return {
        "gateway": {"state_dir": str(state_dir)},
        "api": {
            "base_url": front.root_url + BASE,
            "token_url": front.root_url + "/connect/token",
            "client_id": front.sandbox.client_id,
            "client_secret": front.sandbox.client_secret,
        },
        "webhook": {"listen": f"127.0.0.1:{port}", "path": "/notify", "secret": SECRET},
        "poll": {"interval": "1s", "page_size": 10},
        "delivery": {"timeout": "2s", "backoff_initial": "100ms", "backoff_max": "1s"},
        # huge-1's readings are all rejected: its interval never gets data, and the report
        # waits for it (reporting.max_wait) before it is built with what exists.
        "reporting": {"grace": "1s", "max_wait": "2s"},
        "adapters": {
            name: {"type": "simulated", "power_kw": kw, "poll_interval": "200ms"}
            for name, kw in adapters.items()
        },
        "resources": [
            {"resource_id": f"{name}-1", "location_id": LOCATION, "adapter": name}
            for name in adapters
        ],
    }


@dataclass(frozen=True)
class Outcome:
    """What the scenario saw: webhook answers, the CLI's listings, the normal events' ids."""

    statuses: dict[str, int | str]
    events: dict[str, Any]
    outbox: dict[str, Any]
    pushed: str
    polled: str
    devices: str


@dataclass
class Run:
    """One gateway under test, restarted in place; every check first asks it is alive."""

    config: Path
    log: Path
    gateway: GatewayProcess | None = None

    async def start(self) -> float:
        self.gateway = await GatewayProcess.spawn(self.config, self.log)
        return await self.gateway.wait_ready(timeout=30)

    async def stop(self) -> int | None:
        """SIGTERM and the exit status (None if it never ran)."""
        return None if self.gateway is None else await self.gateway.terminate()

    def assert_alive(self) -> None:
        assert self.gateway is not None and self.gateway.alive, (
            f"ecgw run exited with {self.gateway and self.gateway.process.returncode}:\n"
            + (self.gateway.tail(30) if self.gateway else "")
        )

    async def until(
        self, what: Callable[[], str], check: Callable[[], Awaitable[bool]], timeout: float
    ) -> None:
        """Wait for ``check`` while the gateway stays alive; fail saying ``what()``."""
        deadline = time.monotonic() + timeout
        while not await check():
            self.assert_alive()
            assert time.monotonic() < deadline, f"timed out waiting for {what()}"
            await asyncio.sleep(0.1)
        self.assert_alive()

    async def cli(self, *args: str) -> Any:
        result = await asyncio.to_thread(ecgw, *args, "--json", config=self.config)
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)


async def post_signed(session: aiohttp.ClientSession, url: str, body: bytes) -> int | str:
    """The webhook's status, or what became of the connection."""
    headers = {"X-Payload-Signature": sign(body, SECRET), "Content-Type": "application/json"}
    try:
        async with session.post(url, data=body, headers=headers) as resp:
            await resp.read()
            return resp.status
    except aiohttp.ClientError as exc:
        return type(exc).__name__


def _next_boundary(lead: float = 2.0) -> float:
    return math.ceil((time.time() + lead) / 10) * 10


def _accepted(sandbox: Sandbox, event_id: str) -> list[Any]:
    return [r for r in sandbox.reports if r.event_id == event_id and not r.duplicate]


async def _poison_then_normal(
    run: Run,
    sandbox: Sandbox,
    front: Front,
    session: aiohttp.ClientSession,
    hook: str,
    tmp_path: Path,
) -> Outcome:
    """Start, serve every poison, kill -9, restart, then the normal events until reported."""
    await run.start()
    config = run.config
    # Webhook poisons: each a 400 (the sender's mistake, not to be retried), none stored.
    statuses = {e: await post_signed(session, hook, b) for e, b in WEBHOOK_POISONS.items()}
    run.assert_alive()
    # Two manual reports, for the 302 and the non-UTF-8 2xx from POST /reports.
    for event_id in ("poison-302", "poison-utf8"):
        path = tmp_path / f"{event_id}.json"
        path.write_bytes(report_body(event_id))
        submitted = await asyncio.to_thread(ecgw, "report", "submit", str(path), config=config)
        assert submitted.returncode == 0, submitted.stderr

    async def poisons_served() -> bool:
        posted = {e for e, _ in front.report_posts}
        return front.sweeps > Front.LOOP_SWEEP and {"poison-302", "poison-utf8"} <= posted

    def served() -> str:
        return (
            f"every poison to be served: {front.sweeps} sweeps, "
            f"{front.gets_in_sweep(Front.LOOP_SWEEP)} GET /events in the looping one, "
            f"reports posted for {sorted({str(e) for e, _ in front.report_posts})}"
        )

    await run.until(served, poisons_served, timeout=30)
    await asyncio.sleep(1.0)  # the gateway has met every poison: it is still up
    run.assert_alive()

    # kill -9 with the poison stored; it must come back up and stay up.
    assert run.gateway is not None
    await run.gateway.kill9()
    await run.start()

    # Normal events after the poisons: by push, by poll only, and one over the odd devices.
    start = _iso(_next_boundary())
    pushed = await sandbox.create_event(_price_curve(["normal-1"], [start], "00:00:10"))
    polled = await sandbox.create_event(_price_curve(["normal-1"], [start], "00:00:10"), push=False)
    devices = await sandbox.create_event(
        _price_curve(["normal-1", "exporter-1", "huge-1"], [start], "00:00:10")
    )
    wanted = [pushed["id"], polled["id"], devices["id"]]

    async def reported() -> bool:
        return all(_accepted(sandbox, e) for e in wanted)

    def missing() -> str:
        return f"reports for {[e for e in wanted if not _accepted(sandbox, e)]}"

    await run.until(missing, reported, timeout=40)
    events = {e["event_id"]: e for e in await run.cli("events", "list")}
    outbox = {r["event_id"]: r for r in await run.cli("outbox", "list")}
    run.assert_alive()
    return Outcome(statuses, events, outbox, pushed["id"], polled["id"], devices["id"])


# -- the test ----------------------------------------------------------------------------------


@pytest.mark.timeout(120)
async def test_every_poison_at_once_then_a_normal_event_is_reported(tmp_path: Path) -> None:
    async with (
        run_sandbox(push_retry_delays=(0.2, 0.4)) as sandbox,
        hostile_front(sandbox) as front,
        aiohttp.ClientSession() as session,
    ):
        port = _free_port()
        hook = f"http://127.0.0.1:{port}/notify"
        config = tmp_path / "ecgw.toml"
        config.write_text(toml(gateway_config(front, tmp_path / "state", port)))
        body = {"webhookUrl": hook, "webhookSecret": SECRET, "name": "poison"}
        await api_post(session, sandbox, "/webhooks", body)
        run = Run(config, tmp_path / "gateway.log")
        try:
            seen = await _poison_then_normal(run, sandbox, front, session, hook, tmp_path)
        finally:
            stopped = await run.stop()
    assert stopped == 0  # SIGTERM: a clean exit
    assert integrity(tmp_path / "state" / "ecgw.sqlite3") == "ok"
    _webhook_poisons_refused(seen)
    _polled_poisons_set_aside(seen, front)
    _report_answers_handled(seen, front)
    _normal_events_reported(seen, sandbox)


def _webhook_poisons_refused(seen: Outcome) -> None:
    """Each a 400 (the sender's mistake: not to be retried, unlike a 500); none stored."""
    assert seen.statuses == dict.fromkeys(WEBHOOK_POISONS, 400)
    assert not set(WEBHOOK_POISONS) & set(seen.events)


def _polled_poisons_set_aside(seen: Outcome, front: Front) -> None:
    """Each malformed event stored apart with its reason, the valid one beside them as usual.

    The null page, the HTML page and the loop did not stop polling (the poll-only event was
    reported, see below), and the loop was cut short.
    """
    for event_id in POLLED_POISONS:
        record = seen.events.get(event_id) or next(
            (e for e in seen.events.values() if event_id in (e["plan_note"] or "")), None
        )
        assert record is not None, f"polled poison {event_id} is not in `ecgw events list`"
        assert record["plan_state"] not in NORMAL_STATES and record["plan_note"], record
    assert "poll-valid-beside" in seen.events
    assert front.gets_in_sweep(Front.LOOP_SWEEP) <= 5, front.events_gets
    assert front.bad_tokens_served == 2


def _report_answers_handled(seen: Outcome, front: Front) -> None:
    """The 302 not followed; the unreadable 2xx recorded as delivered and not sent again."""
    assert front.followed_redirects == 0
    moved = seen.outbox["poison-302"]
    assert moved["state"] == "delivered" or (
        moved["state"] == "dead" and moved["last_status"] == 302 and moved["last_error"]
    ), moved
    assert seen.outbox["poison-utf8"]["state"] == "delivered", seen.outbox["poison-utf8"]
    assert [e for e, _ in front.report_posts].count("poison-utf8") == 1


def _normal_events_reported(seen: Outcome, sandbox: Sandbox) -> None:
    """One report each; the odd devices add nothing that could not be real."""
    for event_id in (seen.pushed, seen.polled, seen.devices):
        assert len(_accepted(sandbox, event_id)) == 1, event_id
        assert seen.outbox[event_id]["state"] == "delivered", seen.outbox[event_id]
    (report,) = _accepted(sandbox, seen.devices)
    payloads = {p["resourceId"]: p for p in report.body["payloads"]}
    assert payloads["normal-1"]["points"], "the normal resource's interval is missing"
    ceiling = MAX_KW * 10 / 3600
    for resource, payload in payloads.items():
        for point in payload["points"]:
            assert 0.0 <= point["kiloWattHours"] <= ceiling, (resource, point)
    exported = payloads.get("exporter-1", {}).get("points", [])
    assert all(p["kiloWattHours"] == 0.0 for p in exported), exported  # import: no consumption
    assert not payloads.get("huge-1", {}).get("points"), payloads["huge-1"]  # all glitches
