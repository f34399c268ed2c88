"""Attack: adapter plugins whose readings run plugin code on the gateway's event loop.

The runtime runs a plain ``def read()`` in a thread and wraps whatever ``read()`` raises,
but it iterates and converts the *returned* batch on the event loop, outside both guards:

* ``def read(self)`` written as a generator (``yield Reading(...)`` per register, the
  natural way to write a meter read): the thread only creates the generator; every
  blocking register read then runs on the event loop while ``_clean`` does ``list(batch)``.
  Found: the webhook is not answered at all (no 200, no 503) for as long as the device is
  slow; delivery, polling and every other adapter stop with it.
* A reading whose value converts with an error (a ``float`` subclass whose ``__float__``
  raises ``MemoryError``, as a device SDK's number type might): ``check_reading`` calls
  ``float()`` outside any guard, MemoryError is one of the fatal errors, and ``ecgw run``
  exits 1 within a second of every start (a crash loop under systemd), although the README
  says whatever plugin code raises fails only that adapter.

Expected: the webhook keeps answering within its deadline; the gateway keeps running and
the adapter alone is failed and restarted.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import os
import socket
import textwrap
import time
from pathlib import Path

import aiohttp
import pytest

from tests.kit.proc import offline_config, start_ecgw, webhook_table

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]

SECRET = "attack-secret"

PLUGIN = """
    import time

    from gateway import AdapterConfig, Channel, ChannelKind, Reading, Unit

    ENERGY = Channel("energy", ChannelKind.ENERGY, Unit.KWH)


    class LazyConfig(AdapterConfig, frozen=True, kw_only=True):
        pass


    class Lazy:
        Config = LazyConfig

        def __init__(self, name, config):
            self.name = name
            self.config = config
            self.n = 0

        def channels(self):
            return [ENERGY]

        async def __aenter__(self):
            return self

        async def __aexit__(self, *exc_info):
            return None

        def read(self):  # a plain read: "runs in its own thread"
            for _ in range(4):
                time.sleep(2.0)  # a slow serial device, one register at a time
                self.n += 1
                yield Reading("energy", time.time(), float(self.n))


    class Number(float):
        def __float__(self):
            raise MemoryError("the device SDK ran out of buffers")


    class Odd(Lazy):
        async def read(self):
            return [Reading("energy", time.time(), Number(1.0))]
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def install_plugin(tmp_path: Path) -> dict[str, str]:
    site = tmp_path / "site"
    info = site / "ecgw_attack_plugin-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: ecgw-attack-plugin\nVersion: 1.0\n"
    )
    (info / "entry_points.txt").write_text(
        "[gateway.adapters]\nlazy = ecgw_attack_plugin:Lazy\nodd = ecgw_attack_plugin:Odd\n"
    )
    (site / "ecgw_attack_plugin.py").write_text(textwrap.dedent(PLUGIN))
    path = os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))
    return {"PYTHONPATH": path}


def write_config(tmp_path: Path, adapter_type: str, port: int) -> Path:
    adapter = f"""[adapters.dev]
type = "{adapter_type}"
poll_interval = "1s"
read_timeout = "20s"
[[resources]]
resource_id = "r1"
location_id = "loc-1"
adapter = "dev"
"""
    return offline_config(tmp_path, webhook_table(port, SECRET) + adapter)


def notification(event_id: str) -> bytes:
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


async def post(session: aiohttp.ClientSession, url: str, body: bytes) -> int:
    mac = hmac.new(SECRET.encode(), body, hashlib.sha256).digest()
    headers = {"X-Payload-Signature": base64.b64encode(mac).decode()}
    async with session.post(url, data=body, headers=headers) as resp:
        return resp.status


async def wait_listening(url: str, proc: asyncio.subprocess.Process) -> None:
    async with aiohttp.ClientSession() as session:
        for _ in range(200):
            assert proc.returncode is None, f"ecgw run exited {proc.returncode} before listening"
            try:
                async with session.post(url, data=b"{}"):
                    return
            except aiohttp.ClientConnectionError:
                await asyncio.sleep(0.1)
    raise AssertionError("the webhook never listened")


async def test_a_generator_read_does_not_block_the_webhook(tmp_path: Path) -> None:
    port = _free_port()
    config = write_config(tmp_path, "lazy", port)
    url = f"http://127.0.0.1:{port}/notify"
    proc = await start_ecgw(
        "run", config=config, env=install_plugin(tmp_path), log=tmp_path / "gateway.log"
    )
    try:
        await wait_listening(url, proc)
        await asyncio.sleep(3)  # the first read is being consumed
        worst = 0.0
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
            for i in range(3):
                began = time.monotonic()
                status = await post(session, url, notification(f"e{i}"))
                worst = max(worst, time.monotonic() - began)
                assert status == 200
        assert worst < 1.0, f"a webhook waited {worst:.1f} s for a slow device's generator"
    finally:
        proc.terminate()
        await proc.wait()


async def test_a_reading_that_cannot_be_converted_fails_only_its_adapter(tmp_path: Path) -> None:
    port = _free_port()
    config = write_config(tmp_path, "odd", port)
    url = f"http://127.0.0.1:{port}/notify"
    log = tmp_path / "gateway.log"
    proc = await start_ecgw("run", config=config, env=install_plugin(tmp_path), log=log)
    try:
        await wait_listening(url, proc)
        await asyncio.sleep(4)
        assert proc.returncode is None, (
            f"ecgw run exited {proc.returncode}: " + log.read_text()[-1500:]
        )
        async with aiohttp.ClientSession() as session:
            assert await post(session, url, notification("after")) == 200
    finally:
        if proc.returncode is None:
            proc.terminate()
        await proc.wait()
