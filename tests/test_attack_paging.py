"""Attack: a ``GET /events`` server that ignores ``page`` makes the poller page 100,000 times.

A server (or a caching proxy in front of it) that answers every request with the same first
page, ``currentPage: 1`` and ``nextPage: 2``, is never caught by the repeated-page check:
the check records the page the *reply* names (1), not the page the gateway asked for (2),
so ``nextPage`` 2 never looks repeated. Found: about 700 ``GET /events`` per second, up to
``MAX_PAGES`` (100,000) per sweep, sweep after sweep. Expected: paging stops at the second
request (the page asked for was not the page answered, or page 2 was already requested).
"""

from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path

import pytest
from aiohttp import web

from tests.kit.proc import offline_config, start_ecgw

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


PAGE = {
    "pagination": {"currentPage": 1, "nextPage": 2, "pageSize": 1000},
    "events": [
        {
            "id": "ev-1",
            "createdAt": "2026-12-01T10:00:00Z",
            "payload": {"payloadType": "UserEligibility", "addedUsers": [], "removedUsers": []},
        }
    ],
}


async def test_a_server_that_ignores_page_is_not_paged_forever(tmp_path: Path) -> None:
    asked: list[str | None] = []

    async def token(request: web.Request) -> web.Response:
        return web.json_response({"access_token": "tok", "expires_in": 3600})

    async def events(request: web.Request) -> web.Response:
        asked.append(request.query.get("page"))
        return web.json_response(PAGE)

    app = web.Application()
    app.router.add_post("/connect/token", token)
    app.router.add_get("/v1/events", events)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    config = offline_config(
        tmp_path,
        """[poll]
interval = "1s"
""",
        api=f"http://127.0.0.1:{port}",
    )
    proc = await start_ecgw("run", config=config, log=tmp_path / "gateway.log")
    try:
        await asyncio.sleep(6)
        assert proc.returncode is None, (tmp_path / "gateway.log").read_text()[-2000:]
    finally:
        proc.terminate()
        await proc.wait()
        await runner.cleanup()
    # about 6 sweeps of at most 2 requests each; found: thousands
    assert len(asked) <= 20, (
        f"{len(asked)} GET /events in 6 s; pages asked: {json.dumps(asked[:6])}..."
    )
