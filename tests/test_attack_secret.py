"""Attack: an API error body that echoes the request puts the bearer token in logs and the DB.

Many API gateways and debugging proxies answer a 4xx with the request they refused, headers
included. The gateway keeps a dead report's reply body (``outbox.last_error``, shown by
``ecgw outbox list/show``) and logs it (``report.dead``), but only the client secret and
the webhook secret are registered for redaction: the OAuth access token, a bearer
credential valid for up to an hour, lands verbatim in the log and in the database.

Expected: the access token is redacted wherever a reply body is logged or stored.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from aiohttp import web

from tests.kit.gateway import report_body
from tests.kit.proc import ecgw, offline_config, start_ecgw

pytestmark = pytest.mark.slow

TOKEN = "eyJhbGciOiJSUzI1NiJ9.c2VjcmV0LWFjY2Vzcy10b2tlbg.c2ln"


async def test_the_access_token_is_not_logged_or_stored(tmp_path: Path) -> None:
    posts = 0

    async def token(request: web.Request) -> web.Response:
        return web.json_response({"access_token": TOKEN, "expires_in": 3600})

    async def reports(request: web.Request) -> web.Response:
        nonlocal posts
        posts += 1
        echo = {"error": "bad request", "headers": dict(request.headers)}
        return web.json_response(echo, status=400)

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
timeout = "2s"
backoff_initial = "100ms"
backoff_max = "1s"
""",
        api=f"http://127.0.0.1:{port}",
        client_secret="client-secret-value",
    )
    report = tmp_path / "report.json"
    report.write_bytes(report_body("ev-1"))
    submitted = await asyncio.to_thread(ecgw, "report", "submit", str(report), config=config)
    assert submitted.returncode == 0, submitted.stderr
    log = tmp_path / "gateway.log"
    proc = await start_ecgw("run", config=config, log=log)
    try:
        for _ in range(100):
            if posts:
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(1)
    finally:
        proc.terminate()
        await proc.wait()
        await runner.cleanup()
    assert posts >= 1
    listed = await asyncio.to_thread(ecgw, "outbox", "list", "--json", config=config)
    shown = await asyncio.to_thread(ecgw, "outbox", "show", "ev-1", config=config)
    assert json.loads(listed.stdout)  # the dead row is there
    assert TOKEN not in log.read_text(), "the bearer token is in the gateway's log"
    assert TOKEN not in listed.stdout + shown.stdout, "the bearer token is in the outbox"
