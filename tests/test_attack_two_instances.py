"""Attack: a second ``ecgw run`` on the same state directory sends every report again.

Nothing stops two gateways on one database: only the webhook port clashes, so a config
without ``[webhook]`` (polling only), or a second copy started by hand beside systemd with
another ``listen``, runs happily. At start the deliverer "recovers" every ``in_flight`` row
as if the previous process had crashed, although the first gateway is sending them right
now: found, 4 queued reports, 8 POSTs to ``/reports`` (each twice, same Idempotency-Key).

Expected: the second ``ecgw run`` refuses to start (exit 2, one line: another gateway runs
on this state directory), or at least never hands back rows another live process holds.
"""

from __future__ import annotations

import asyncio
import collections
from pathlib import Path

import pytest
from aiohttp import web

from tests.kit.gateway import report_body
from tests.kit.proc import ecgw, offline_config, start_ecgw

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]


async def test_a_second_gateway_does_not_resend_what_the_first_is_sending(
    tmp_path: Path,
) -> None:
    keys: list[str] = []

    async def token(request: web.Request) -> web.Response:
        return web.json_response({"access_token": "tok", "expires_in": 3600})

    async def reports(request: web.Request) -> web.Response:
        keys.append(request.headers.get("Idempotency-Key", ""))
        await asyncio.sleep(3)  # a slow API: the first gateway holds its rows in flight
        return web.json_response({"id": "r"})

    app = web.Application()
    app.router.add_post("/connect/token", token)
    app.router.add_post("/v1/reports", reports)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    port = runner.addresses[0][1]
    config = offline_config(
        tmp_path,
        """[delivery]
timeout = "10s"
""",
        api=f"http://127.0.0.1:{port}",
    )
    for i in range(4):
        path = tmp_path / f"report-{i}.json"
        path.write_bytes(report_body(f"ev-{i}"))
        done = await asyncio.to_thread(ecgw, "report", "submit", str(path), config=config)
        assert done.returncode == 0, done.stderr
    first = await start_ecgw("run", config=config, log=tmp_path / "first.log")
    second = None
    try:
        await asyncio.sleep(2)  # the first has claimed all four and is waiting for answers
        second = await start_ecgw("run", config=config, log=tmp_path / "second.log")
        await asyncio.sleep(8)
    finally:
        for proc in (first, second):
            if proc is not None and proc.returncode is None:
                proc.terminate()
            if proc is not None:
                await proc.wait()
        await runner.cleanup()
    repeated = {k: n for k, n in collections.Counter(keys).items() if n > 1}
    assert not repeated, f"{len(keys)} POSTs for 4 reports; sent more than once: {repeated}"
