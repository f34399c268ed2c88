"""Hostile webhook bodies against the real receiver (127.0.0.1 port 0, a real SQLite file).

The named cases are the ones found by hand (each answered 500, or 200 and then a crash of the
planner on every restart). The hypothesis test throws generated bodies, signed and unsigned,
at the same server: never a 5xx, the server keeps answering, and nothing is stored unless an
independent check (below, not the gateway's decoder) finds the body valid.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import hashlib
import hmac
import json
import os
import re
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway import wire
from gateway.config import Secret
from gateway.intake.webhook import WebhookSettings, serve_webhook
from gateway.reports.clock import ServerClock
from gateway.reports.planner import plan_event
from gateway.reports.scheduler import ReportScheduler
from gateway.store.database import open_database
from gateway.store.inbox import Inbox, NewEvent
from gateway.store.readings import ReadingsStore
from tests.kit.gateway import make_config

SECRET = "Secret123%"
EXAMPLES = int(os.environ.get("ECGW_HOSTILE_EXAMPLES", "0"))
"""More generated bodies, freshly random, for a campaign: ECGW_HOSTILE_EXAMPLES=5000."""


def sign(body: bytes) -> str:
    return base64.b64encode(hmac.new(SECRET.encode(), body, hashlib.sha256).digest()).decode()


def valid_note(event_id: str = "e1") -> dict[str, Any]:
    return {
        "notificationId": f"n-{event_id}",
        "eventId": event_id,
        "eventCreatedAtUtc": "2025-03-10T12:00:03.4411223+00:00",
        "notificationSentUtc": "2025-03-10T12:00:04Z",
        "notificationType": "PriceCurveCreated",
        "payload": {
            "payloadType": "PriceCurve",
            "targets": [{"resourceId": "hwt", "locationId": "home"}],
            "priceCurveDelta": {
                "points": [
                    {"price": 0.42, "timestamp": "2025-03-11T10:00:00+00:00"},
                    {"price": 0.55, "timestamp": "2025-03-11T11:00:00+00:00"},
                ],
                "energyUnit": "kWh",
                "currency": "NOK",
                "resolution": "01:00:00",
            },
            "priceArea": "NO5",
        },
    }


class Hook:
    def __init__(self, url: str, inbox: Inbox, session: aiohttp.ClientSession) -> None:
        self.url, self.inbox, self.session = url, inbox, session

    async def post(self, body: bytes, *, signed: bool = True) -> tuple[int, str]:
        headers = {"Content-Type": "application/json"}
        if signed:
            headers["X-Payload-Signature"] = sign(body)
        async with self.session.post(self.url, data=body, headers=headers) as resp:
            return resp.status, await resp.text()


@contextlib.asynccontextmanager
async def running_hook(path: Path) -> AsyncIterator[Hook]:
    settings_ = WebhookSettings(
        host="127.0.0.1",
        port=0,
        path="/notify",
        secret=Secret(SECRET),
        max_body=1024 * 1024,
        read_timeout=5.0,
    )
    async with open_database(path) as db:
        inbox = Inbox(db)
        async with (
            serve_webhook(settings_, inbox, lambda _: None) as url,
            aiohttp.ClientSession() as session,
        ):
            yield Hook(url, inbox, session)


@pytest.fixture
async def hook(tmp_path: Path) -> AsyncIterator[Hook]:
    async with running_hook(tmp_path / "ecgw.sqlite3") as h:
        yield h


# --- the cases found by hand -------------------------------------------------------------------


def with_point(stamp: str) -> bytes:
    note = valid_note()
    note["payload"]["priceCurveDelta"]["points"][1]["timestamp"] = stamp
    return json.dumps(note).encode()


def with_field(field: str, value: object) -> bytes:
    note = valid_note()
    note[field] = value
    return json.dumps(note).encode()


def deep_note(levels: int) -> bytes:
    body = json.dumps(valid_note()).encode()
    return body.replace(b'"priceArea"', b'"x": ' + b"[" * levels + b"]" * levels + b', "priceArea"')


HAND_FOUND = {
    "nested-10k": deep_note(10_000),
    "created-0001+01:00": with_field("eventCreatedAtUtc", "0001-01-01T00:00:00+01:00"),
    "point-9999-12-31": with_point("9999-12-31T23:00:00Z"),
    "resolution-99999999-days": json.dumps(valid_note())
    .replace('"01:00:00"', '"99999999.00:00:00"')
    .encode(),
    "event-id-number": with_field("eventId", 12345),
    "event-id-empty": with_field("eventId", ""),
}


@pytest.mark.parametrize("name", sorted(HAND_FOUND))
async def test_hand_found_bodies_get_400_and_nothing_is_stored(hook: Hook, name: str) -> None:
    status, text = await hook.post(HAND_FOUND[name])
    assert status == 400, text
    assert json.loads(text)["message"]
    assert await hook.inbox.count() == 0
    status, _ = await hook.post(json.dumps(valid_note("after")).encode())
    assert status == 200  # the receiver lives on
    assert await hook.inbox.count() == 1


async def test_the_last_representable_point_plans_without_overflow(hook: Hook) -> None:
    """The latest timestamp the wire accepts still plans: the planner adds a day to it."""
    note = valid_note()
    note["payload"]["priceCurveDelta"]["points"] = [
        {"price": 1.0, "timestamp": "2200-01-01T00:00:00Z"}
    ]
    note["payload"]["priceCurveDelta"]["resolution"] = "1.00:00:00"
    status, _ = await hook.post(json.dumps(note).encode())
    assert status == 200
    stored = await hook.inbox.get("e1")
    assert stored is not None
    config = make_config(
        {
            "adapters": {"meter": {"type": "simulated"}},
            "resources": [{"resource_id": "hwt", "location_id": "home", "adapter": "meter"}],
        }
    )
    plan = plan_event(
        "e1", wire.decode_event_payload(stored.payload), config, now=0.0, received_at=0.0
    )
    assert len(plan.jobs) == 1


# --- generated bodies --------------------------------------------------------------------------

RANGE = (dt.datetime(2000, 1, 1, tzinfo=dt.UTC), dt.datetime(2200, 1, 1, tzinfo=dt.UTC))
_FRACTION = re.compile(r"(\.\d{6})\d+")


def in_range(text: object) -> bool:
    """Independent of the gateway: stdlib parsing, 7th digit cut, converted to UTC."""
    if not isinstance(text, str) or not re.fullmatch(r"\d{4}-\d\d-\d\dT.+", text):
        return False
    try:
        moment = dt.datetime.fromisoformat(_FRACTION.sub(r"\1", text))
        if moment.tzinfo is None:
            return False
        utc = moment.astimezone(dt.UTC)
    except (ValueError, OverflowError):
        return False
    return RANGE[0] <= utc <= RANGE[1]


def resolution_ok(text: object) -> bool:
    if not isinstance(text, str):
        return False
    m = re.fullmatch(r"(?:(\d+)\.)?(\d\d?):(\d\d):(\d\d)(?:\.0+)?", text) or re.fullmatch(
        r"P(?:(\d+)D)?(?:T(?:(\d+)H)?(?:(\d+)M)?(?:(\d+)S)?)?", text
    )
    if m is None:
        return False
    days, hours, minutes, seconds = (int(g or 0) for g in m.groups())
    if text[0] != "P" and (hours > 23 or minutes > 59 or seconds > 59):
        return False
    return 1 <= ((days * 24 + hours) * 60 + minutes) * 60 + seconds <= 86400


def looks_valid(body: bytes) -> bool:
    """What a stored body must satisfy, checked without the gateway's decoder."""
    try:
        note = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return False
    if not isinstance(note, dict) or not isinstance(note.get("payload"), dict):
        return False
    ids = (note.get("eventId"), note.get("notificationId"), note.get("notificationType"))
    if not all(isinstance(i, str) for i in ids) or not note["eventId"]:
        return False
    if not (in_range(note.get("eventCreatedAtUtc")) and in_range(note.get("notificationSentUtc"))):
        return False
    payload = note["payload"]
    if payload.get("payloadType") != "PriceCurve":
        return True  # other types are not generated; unknown ones are kept raw
    delta = payload.get("priceCurveDelta")
    if not isinstance(delta, dict) or not resolution_ok(delta.get("resolution", "01:00:00")):
        return False
    points = delta.get("points", [])
    return isinstance(points, list) and all(
        isinstance(p, dict) and in_range(p.get("timestamp")) for p in points
    )


scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
offsets = st.integers(min_value=-23 * 60 - 59, max_value=23 * 60 + 59)


@st.composite
def odd_timestamps(draw: st.DrawFn) -> str:
    year = draw(st.sampled_from([1, 1999, 2000, 2025, 2199, 2200, 2201, 9999]))
    month, day = draw(st.integers(1, 12)), draw(st.integers(1, 31))
    hour, minute, second = (
        draw(st.integers(0, 24)),
        draw(st.integers(0, 60)),
        draw(st.integers(0, 60)),
    )
    frac = draw(st.sampled_from(["", ".1", ".1234567", ".123456789"]))
    off = draw(offsets)
    zone = draw(
        st.sampled_from(
            ["Z", "", f"{'+' if off >= 0 else '-'}{abs(off) // 60:02d}:{abs(off) % 60:02d}"]
        )
    )
    return f"{year:04d}-{month:02d}-{day:02d}T{hour:02d}:{minute:02d}:{second:02d}{frac}{zone}"


odd_resolutions = st.sampled_from(
    [
        "01:00:00",
        "1.00:00:00",
        "99999999.00:00:00",
        "00:00:00",
        "24:00:00",
        "PT1H",
        "P2D",
        "-01:00:00",
        "1e3",
    ]
)
HUGE = ["1e999", "-1e400", "1" + "0" * 400, "NaN", "Infinity", "1e308", "-0"]
PATHS = [
    "notificationId",
    "eventId",
    "eventCreatedAtUtc",
    "notificationSentUtc",
    "notificationType",
    "payload",
    "payload.payloadType",
    "payload.targets",
    "payload.targets.0",
    "payload.targets.0.resourceId",
    "payload.priceCurveDelta",
    "payload.priceCurveDelta.points",
    "payload.priceCurveDelta.points.0.timestamp",
    "payload.priceCurveDelta.points.1.price",
    "payload.priceCurveDelta.resolution",
]


def _set(note: dict[str, Any], path: str, value: object, *, delete: bool) -> None:
    *parents, last = path.split(".")
    node: Any = note
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node[key]
    key_: Any = int(last) if isinstance(node, list) else last
    if delete and isinstance(node, dict):
        node.pop(key_, None)
    else:
        node[key_] = value


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    note = valid_note(str(draw(st.uuids())))
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(PATHS))
        kind = draw(st.sampled_from(["json", "time", "resolution", "huge", "delete"]))
        value: object = {
            "json": lambda: draw(json_values),
            "time": lambda: draw(odd_timestamps()),
            "resolution": lambda: draw(odd_resolutions),
            "huge": lambda: "@@" + draw(st.sampled_from(HUGE)) + "@@",
            "delete": lambda: None,
        }[kind]()
        with contextlib.suppress(KeyError, IndexError, TypeError, ValueError):
            _set(note, path, value, delete=kind == "delete")
    body = json.dumps(note).encode()
    return re.sub(rb'"@@(.*?)@@"', rb"\1", body)


@st.composite
def deep(draw: st.DrawFn) -> bytes:
    levels = draw(st.integers(min_value=20, max_value=20_000))
    opening = draw(st.sampled_from([b"[", b'{"a":']))
    closing = b"]" if opening == b"[" else b"}"
    body = json.dumps(valid_note(str(draw(st.uuids())))).encode()
    return body.replace(
        b'"priceArea"', b'"x": ' + opening * levels + b"0" + closing * levels + b', "priceArea"'
    )


@st.composite
def not_utf8(draw: st.DrawFn) -> bytes:
    body = json.dumps(valid_note(str(draw(st.uuids())))).encode()
    bad = draw(st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\x00"]))
    at = body.index(b'"PriceCurve"') + 1
    return body[:at] + bad + body[at:]


bodies = st.one_of(
    mutated(),
    deep(),
    not_utf8(),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=200),
    st.builds(lambda u: json.dumps(valid_note(str(u))).encode(), st.uuids()),
)


def test_hostile_bodies_never_5xx_never_crash_never_store_invalid(tmp_path: Path) -> None:
    seen = {"cases": 0, "stored": 0, "400": 0, "401": 0}
    with asyncio.Runner() as runner:
        stack = contextlib.AsyncExitStack()
        hook = runner.run(stack.enter_async_context(running_hook(tmp_path / "ecgw.sqlite3")))
        try:

            @settings(
                max_examples=EXAMPLES or 200,
                derandomize=not EXAMPLES,  # the suite's run is repeatable; a campaign explores
                deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
                database=None,
            )
            @given(body=bodies, signed=st.sampled_from([True, True, True, False]))
            def throw(body: bytes, signed: bool) -> None:
                before = runner.run(hook.inbox.count())
                status, text = runner.run(hook.post(body, signed=signed))
                after = runner.run(hook.inbox.count())
                seen["cases"] += 1
                assert status < 500, (status, text, body[:300])
                if not signed:
                    assert status == 401 and after == before
                    seen["401"] += 1
                    return
                if status == 200:
                    assert looks_valid(body), body[:300]
                    seen["stored"] += after - before
                else:
                    assert status == 400, (status, text)
                    assert after == before
                    seen["400"] += 1

            throw()
            status, _ = runner.run(hook.post(json.dumps(valid_note(str(uuid.uuid4()))).encode()))
            assert status == 200  # still answering
        finally:
            runner.run(stack.aclose())
    print(f"hostile webhook bodies: {seen}")
    assert seen["cases"] >= 100 and seen["400"] > 0 and seen["stored"] > 0


@pytest.mark.parametrize(
    ("point", "resolution"),
    [("9999-12-31T23:00:00Z", "01:00:00"), ("2025-03-11T10:00:00Z", "99999999.00:00:00")],
    ids=["point-9999", "resolution-99999999-days"],
)
async def test_a_poison_event_stored_before_is_set_aside_not_a_crash(
    tmp_path: Path, point: str, resolution: str
) -> None:
    """A database written by an older gateway may hold such an event: every pass met it and
    died (OverflowError). It is now refused when read back, marked invalid, and passes go on."""
    note = valid_note("poison")
    delta = note["payload"]["priceCurveDelta"]
    delta["points"] = [{"price": 1.0, "timestamp": point}]
    delta["resolution"] = resolution
    config = make_config(
        {
            "gateway": {"state_dir": str(tmp_path)},
            "adapters": {"meter": {"type": "simulated"}},
            "resources": [{"resource_id": "hwt", "location_id": "home", "adapter": "meter"}],
        }
    )
    async with open_database(config.db_path) as db:
        inbox = Inbox(db)
        poison = NewEvent(
            event_id="poison",
            payload_type="PriceCurve",
            created_at=None,
            payload=json.dumps(note["payload"]).encode(),
        )
        assert await inbox.add(poison, via="webhook", at=0.0)
        scheduler = ReportScheduler(
            db=db,
            readings=ReadingsStore(db),
            config=config,
            server_clock=ServerClock(),
            on_queued=lambda: None,
        )
        await scheduler.pass_once()
        await scheduler.pass_once()  # and again, as after a restart
        stored = await inbox.get("poison")
        assert stored is not None and stored.plan_state == "invalid"
        assert "payload.priceCurveDelta" in (stored.plan_note or "")
