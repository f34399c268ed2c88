"""Attack: an unsigned gzip bomb stalls the whole gateway for seconds per request.

aiohttp inflates a ``Content-Encoding: gzip`` request body. A 1 MB body (under
``webhook.max_body``, so the ``Content-Length`` check lets it through) inflates to 1 GB of
zeros: ``request.read()`` stops at ``max_body`` and the receiver answers 413 at once, but
the server then drains the rest of the body, inflating it on the event loop. Found: every
other webhook (and delivery, polling, adapters: the same loop) waits 2-3.5 s per bomb; no
signature is needed, so an outsider sending one bomb every few seconds keeps the gateway
from answering Spark at all.

Expected: an encoded body is refused (415) or the connection is closed after the 413, and
a signed notification on another connection is answered within a second meanwhile.

Also: a body sent with ``Content-Encoding: gzip`` that is not gzip (or ``deflate`` that does
not inflate) makes ``request.read()`` raise ``RequestPayloadError``, which the receiver does
not catch: the answer is **500** (Spark retries a 5xx for ever) and aiohttp writes a
multi-line plain-text traceback into the JSON log. Expected: 400 (or 415), one log line.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import socket
import time
import zlib
from pathlib import Path

import aiohttp
import pytest

from tests.kit.proc import offline_config, start_ecgw, webhook_table

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

SECRET = "attack-secret"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _bomb(megabytes: int = 1000) -> bytes:
    gz = zlib.compressobj(9, zlib.DEFLATED, 31)
    zeros = bytes(1 << 20)
    return b"".join([*(gz.compress(zeros) for _ in range(megabytes)), gz.flush()])


def _notification(event_id: str) -> bytes:
    return json.dumps(
        {
            "notificationId": f"n-{event_id}",
            "eventId": event_id,
            "eventCreatedAtUtc": "2026-12-01T12:00:00Z",
            "notificationSentUtc": "2026-12-01T12:00:01Z",
            "notificationType": "UserEligibilityUpdated",
            "payload": {"payloadType": "UserEligibility", "addedUsers": [], "removedUsers": []},
        }
    ).encode()


def _signature(body: bytes) -> str:
    return base64.b64encode(hmac.new(SECRET.encode(), body, hashlib.sha256).digest()).decode()


def _config(tmp_path: Path, port: int) -> Path:
    return offline_config(tmp_path, webhook_table(port, SECRET))


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
async def test_a_body_that_does_not_inflate_is_a_400(tmp_path: Path, encoding: str) -> None:
    port = _free_port()
    log = tmp_path / "gateway.log"
    proc = await start_ecgw("run", config=_config(tmp_path, port), log=log)
    url = f"http://127.0.0.1:{port}/notify"
    body = _notification("plain")
    try:
        async with aiohttp.ClientSession() as session:
            for _ in range(200):
                try:
                    async with session.post(url, data=b"{}"):
                        break
                except aiohttp.ClientConnectionError:
                    await asyncio.sleep(0.1)
            headers = {
                "Content-Encoding": encoding,
                "Content-Type": "application/json",
                "X-Payload-Signature": _signature(body),
            }
            async with session.post(url, data=body, headers=headers) as resp:
                status = resp.status
        await asyncio.sleep(0.5)
    finally:
        proc.terminate()
        await proc.wait()
    assert status in (400, 415), f"answered {status} to a body that does not inflate"
    assert "Traceback" not in log.read_text()


async def test_a_gzip_bomb_does_not_stall_other_webhooks(tmp_path: Path) -> None:
    bomb = await asyncio.to_thread(_bomb)
    assert len(bomb) < 1_048_576  # under the default max_body: Content-Length lets it in
    port = _free_port()
    config = offline_config(tmp_path, webhook_table(port, SECRET))
    url = f"http://127.0.0.1:{port}/notify"
    proc = await start_ecgw("run", config=config, log=tmp_path / "gateway.log")
    try:
        async with aiohttp.ClientSession() as session:
            for _ in range(200):
                try:
                    async with session.post(url, data=b"{}"):
                        break
                except aiohttp.ClientConnectionError:
                    await asyncio.sleep(0.1)

        async def bomber() -> list[int]:
            statuses = []
            async with aiohttp.ClientSession() as session:
                for _ in range(2):
                    headers = {"Content-Encoding": "gzip", "Content-Type": "application/json"}
                    async with session.post(url, data=bomb, headers=headers) as resp:
                        statuses.append(resp.status)
            return statuses

        async def prober() -> float:
            worst = 0.0
            connector = aiohttp.TCPConnector(force_close=True)
            async with aiohttp.ClientSession(connector=connector) as session:
                for i in range(20):
                    body = _notification(f"p{i}")
                    began = time.monotonic()
                    headers = {"X-Payload-Signature": _signature(body)}
                    async with session.post(url, data=body, headers=headers) as resp:
                        assert resp.status == 200
                    worst = max(worst, time.monotonic() - began)
                    await asyncio.sleep(0.2)
            return worst

        statuses, worst = await asyncio.gather(bomber(), prober())
        assert proc.returncode is None
    finally:
        proc.terminate()
        await proc.wait()
    assert all(s in (400, 413, 415) for s in statuses), statuses
    assert worst < 1.0, f"a signed notification waited {worst:.1f} s behind an unsigned gzip bomb"
