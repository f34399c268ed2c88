"""The receiver's body taken by read_nowait, the size check after it, and the per-commit
line: real server on 127.0.0.1 port 0, real SQLite file. These held."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
from pathlib import Path

import pytest
import structlog

from gateway.intake.webhook import WebhookSettings, serve_webhook
from gateway.store.database import open_database
from gateway.store.inbox import Inbox
from tests.test_webhook import webhook_settings

SECRET = "Secret123%"
LIMIT = 400


def sign(body: bytes) -> str:
    return base64.b64encode(hmac.new(SECRET.encode(), body, hashlib.sha256).digest()).decode()


def notification(i: int, size: int | None = None) -> bytes:
    body = json.dumps(
        {
            "notificationId": f"n-{i}",
            "eventId": f"e-{i}",
            "eventCreatedAtUtc": "2026-01-01T00:00:00Z",
            "notificationSentUtc": "2026-01-01T00:00:01Z",
            "notificationType": "UserEligibilityUpdated",
            "payload": {"payloadType": "UserEligibility", "addedUsers": [f"u{i}"]},
        }
    ).encode()
    return body if size is None else body[:-1] + b" " * (size - len(body)) + b"}"


async def exchange(url: str, pieces: list[bytes]) -> bytes:
    host, port = url.split("//")[1].split("/")[0].split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        for piece in pieces:
            writer.write(piece)
            await writer.drain()
            await asyncio.sleep(0.05)
        return await asyncio.wait_for(reader.read(), timeout=5)
    finally:
        writer.close()


def settings() -> WebhookSettings:
    return webhook_settings(max_body=LIMIT, read_timeout=2.0)


@pytest.mark.parametrize(("size", "status"), [(LIMIT, 200), (LIMIT + 1, 413)])
async def test_a_chunked_body_in_pieces_is_held_to_max_body(
    tmp_path: Path, size: int, status: int
) -> None:
    body = notification(1, size)
    head = (
        "POST /notify HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
        f"X-Payload-Signature: {sign(body)}\r\nConnection: close\r\n\r\n"
    ).encode()
    half = len(body) // 2
    pieces = [
        head + f"{half:x}\r\n".encode() + body[:half] + b"\r\n",
        f"{len(body) - half:x}\r\n".encode() + body[half:] + b"\r\n",
        b"0\r\n\r\n",
    ]
    async with open_database(tmp_path / "ecgw.sqlite3") as db:
        inbox = Inbox(db)
        async with serve_webhook(settings(), inbox, lambda _: None) as url:
            answer = await exchange(url, pieces)
        assert answer.startswith(f"HTTP/1.1 {status} ".encode())
        assert await inbox.count() == (1 if status == 200 else 0)


async def test_pipelined_requests_on_one_connection_are_each_stored_and_logged(
    tmp_path: Path,
) -> None:
    sent = b""
    for i, body in enumerate([notification(1), notification(2), notification(1)]):
        last = "Connection: close\r\n" if i == 2 else ""
        sent += (
            f"POST /notify HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n"
            f"X-Payload-Signature: {sign(body)}\r\n{last}\r\n"
        ).encode() + body
    async with open_database(tmp_path / "ecgw.sqlite3") as db:
        inbox = Inbox(db)
        with structlog.testing.capture_logs() as logs:
            async with serve_webhook(settings(), inbox, lambda _: None) as url:
                answer = await exchange(url, [sent])
        assert answer.count(b"HTTP/1.1 200 OK") == 3
        assert answer.count(b'"stored"') == 2 and answer.count(b'"duplicate"') == 1
        assert await inbox.count() == 2
    received = [e for e in logs if e["event"] == "webhook.received"]
    assert [i for e in received for i in e["events"]] == ["e-1", "e-2", "e-1"]
    assert [i for e in received for i in e.get("duplicates", [])] == ["e-1"]
    assert sum(sum(e["payload_types"].values()) for e in received) == 3
