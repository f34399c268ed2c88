"""The webhook receiver, served for real on 127.0.0.1 port 0 with a real database."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import io
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
import pytest

from gateway.config import Secret
from gateway.intake.webhook import WebhookSettings, serve_webhook
from gateway.store.database import Database
from gateway.store.inbox import Inbox
from tests.conftest import vector

SECRET = "Secret123%"  # the secret of Volue's vectors


@dataclass
class Hook:
    url: str
    inbox: Inbox
    seen: list[str]
    session: aiohttp.ClientSession

    async def post(self, body: bytes, signature: str | None) -> tuple[int, dict[str, object]]:
        headers = {"Content-Type": "application/json"}
        if signature is not None:
            headers["X-Payload-Signature"] = signature
        data = io.BytesIO(body) if len(body) > 1024 * 1024 else body
        async with self.session.post(self.url, data=data, headers=headers) as resp:
            return resp.status, await resp.json()


def sign(body: bytes, secret: str = SECRET) -> str:
    return base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha256).digest()).decode()


@pytest.fixture
async def hook(db: Database) -> AsyncIterator[Hook]:
    inbox = Inbox(db)
    seen: list[str] = []
    settings = WebhookSettings(
        host="127.0.0.1",
        port=0,
        path="/notify",
        secret=Secret(SECRET),
        max_body=1024 * 1024,
        read_timeout=0.5,
    )
    async with serve_webhook(settings, inbox, seen.append) as url, aiohttp.ClientSession() as s:
        yield Hook(url, inbox, seen, s)


@pytest.mark.parametrize("name", ["price-curve-event.json", "user-eligibility-event.json"])
async def test_volue_vectors_are_accepted_byte_for_byte(hook: Hook, name: str) -> None:
    body, signature, secret = vector(name)
    assert secret == SECRET
    assert sign(body) == signature  # the scheme, checked against Volue's expected value
    status, _ = await hook.post(body, signature)
    assert status == 200
    event_id = json.loads(body)["eventId"]
    stored = await hook.inbox.get(event_id)
    assert stored is not None and stored.received_via == "webhook"
    assert stored.notification_id == json.loads(body)["notificationId"]
    assert hook.seen == [event_id]


def _tampered(body: bytes) -> bytes:
    return body.replace(b'"priceArea":"SE1"', b'"priceArea":"SE2"')


@pytest.mark.parametrize(
    "case", ["tampered", "missing", "wrong-secret", "hex", "lowercase", "empty"]
)
async def test_bad_signatures_get_401_and_nothing_is_stored(hook: Hook, case: str) -> None:
    body, signature, _ = vector("price-curve-event.json")
    sent, sig = body, signature
    if case == "tampered":
        sent = _tampered(body)
    elif case == "missing":
        sig = None  # type: ignore[assignment]
    elif case == "wrong-secret":
        sig = sign(body, "Secret123")
    elif case == "hex":
        sig = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    elif case == "lowercase":
        sig = signature.lower()
    elif case == "empty":
        sig = ""
    status, _ = await hook.post(sent, sig)
    assert status == 401
    assert await hook.inbox.count() == 0
    assert hook.seen == []


async def test_oversized_body_gets_413(hook: Hook) -> None:
    body = b'{"pad":"' + b"x" * (2 * 1024 * 1024) + b'"}'
    status, _ = await hook.post(body, sign(body))
    assert status == 413
    assert await hook.inbox.count() == 0


@pytest.mark.parametrize(
    "body",
    [
        b"not json at all",
        b'{"notificationId":"n"}',
        b"[1,2,3]",
        b'{"notificationId":"n","eventId":"e","eventCreatedAtUtc":"yesterday",'
        b'"notificationSentUtc":"2000-01-01T00:00:00Z","notificationType":"X","payload":{}}',
    ],
)
async def test_unreadable_bodies_get_400(hook: Hook, body: bytes) -> None:
    status, reply = await hook.post(body, sign(body))
    assert status == 400
    assert reply["message"]
    assert await hook.inbox.count() == 0


async def test_duplicate_gets_200_and_one_event(hook: Hook) -> None:
    body, signature, _ = vector("user-eligibility-event.json")
    results = await asyncio.gather(*(hook.post(body, signature) for _ in range(5)))
    assert [r[0] for r in results] == [200] * 5
    assert await hook.inbox.count() == 1
    assert len(hook.seen) == 1


async def test_unknown_payload_type_is_accepted_and_kept(hook: Hook) -> None:
    note = {
        "notificationId": "n9",
        "eventId": "e9",
        "eventCreatedAtUtc": "2026-01-01T00:00:00Z",
        "notificationSentUtc": "2026-01-01T00:00:01Z",
        "notificationType": "SomethingNew",
        "payload": {"payloadType": "FlexAuction", "lots": [1, 2]},
    }
    body = json.dumps(note).encode()
    status, _ = await hook.post(body, sign(body))
    assert status == 200
    stored = await hook.inbox.get("e9")
    assert stored is not None and stored.payload_type == "FlexAuction"
    assert json.loads(stored.payload) == note["payload"]


async def test_slow_client_is_cut_off(hook: Hook) -> None:
    body, signature, _ = vector("user-eligibility-event.json")
    host, port = hook.url.split("//")[1].split("/")[0].split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    head = (
        f"POST /notify HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"X-Payload-Signature: {signature}\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    writer.write(head + body[:20])  # ...and then nothing more
    await writer.drain()
    status_line = await asyncio.wait_for(reader.readline(), timeout=5)
    assert b" 408 " in status_line
    writer.close()
    assert await hook.inbox.count() == 0


async def test_a_client_that_never_finishes_its_headers_is_cut_off(hook: Hook) -> None:
    """A request head trickled a byte at a time still has to arrive within read_timeout."""
    host, port = hook.url.split("//")[1].split("/")[0].split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(f"POST /notify HTTP/1.1\r\nHost: {host}\r\nX-Slow: ".encode())

    async def trickle() -> None:
        while not writer.is_closing():
            writer.write(b"x")
            await writer.drain()
            await asyncio.sleep(0.05)

    loop = asyncio.get_running_loop()
    started = loop.time()
    dripping = asyncio.create_task(trickle())
    try:
        answer = await asyncio.wait_for(reader.read(), timeout=5)  # b"" once closed
    finally:
        dripping.cancel()
        with contextlib.suppress(asyncio.CancelledError, ConnectionError):
            await dripping
        writer.close()
    assert answer == b""
    assert loop.time() - started < 0.5 + 1.0  # read_timeout, and a little slack
    assert await hook.inbox.count() == 0
