"""The admin listener (``[admin] listen``): ``GET /healthz`` and ``GET /metrics``.

``/healthz`` answers 200 ``{"status": "ok"}`` when the database answers a read within
:data:`DB_TIMEOUT`, the API has not been failing beyond its retry budget and no adapter
is stale (the rules: :class:`gateway.health.HealthRules`); otherwise 503
``{"status": "unhealthy", "problems": [...]}`` with one reason per problem.
``/metrics`` is :func:`gateway.metrics.render_metrics`. Bind it to localhost or a
management network: it tells anyone who asks what the site is doing.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_PLAIN_0_0_4

from gateway.errors import ConfigError, StoreError, describe
from gateway.health import Health, HealthRules, problems
from gateway.metrics import Extra, render_metrics
from gateway.store.observed import Observed

__all__ = ["DB_TIMEOUT", "serve_admin"]

log = structlog.get_logger("gateway.admin")

DB_TIMEOUT = 5.0  # seconds a health or metrics read of the database may take


class _Admin:
    def __init__(
        self,
        health: Health,
        rules: HealthRules,
        observed: Observed,
        clock: Callable[[], float],
        extra: Extra | None,
    ) -> None:
        self._extra = extra
        self._health = health
        self._rules = rules
        self._observed = observed
        self._clock = clock

    async def healthz(self, request: web.Request) -> web.Response:
        found = problems(self._health, self._rules, self._clock())
        try:
            async with asyncio.timeout(DB_TIMEOUT):
                await self._observed.usable()
        except (StoreError, TimeoutError) as exc:
            found.insert(0, f"database: {describe(exc)}")
        if found:
            return web.json_response({"status": "unhealthy", "problems": found}, status=503)
        return web.json_response({"status": "ok"})

    async def metrics(self, request: web.Request) -> web.Response:
        try:
            async with asyncio.timeout(DB_TIMEOUT):
                body = await render_metrics(
                    self._health, self._observed, now=self._clock(), extra=self._extra
                )
        except (StoreError, TimeoutError) as exc:
            log.warning("admin.metrics_failed", error=describe(exc))
            return web.json_response({"error": f"database: {describe(exc)}"}, status=503)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_PLAIN_0_0_4})


@contextlib.asynccontextmanager
async def serve_admin(
    host: str,
    port: int,
    *,
    health: Health,
    rules: HealthRules,
    observed: Observed,
    clock: Callable[[], float],
    extra: Extra | None = None,
) -> AsyncIterator[str]:
    """Serve until the context exits; yields the base URL (port 0 picks a free port).
    ``extra``: more metric families for ``/metrics`` (the hub's)."""
    admin = _Admin(health, rules, observed, clock, extra)
    app = web.Application()
    app.router.add_get("/healthz", admin.healthz)
    app.router.add_get("/metrics", admin.metrics)
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=2.0)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        try:
            await site.start()
        except OSError as exc:
            raise ConfigError(
                f"cannot listen on {host}:{port}: {exc.strerror}", key="admin.listen"
            ) from None
        bound = runner.addresses[0]
        shown = f"[{bound[0]}]" if ":" in bound[0] else bound[0]
        url = f"http://{shown}:{bound[1]}"
        log.info("admin.listening", url=url)
        yield url
    finally:
        await runner.cleanup()
