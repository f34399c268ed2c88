"""The management side of the Energy Coordination API: webhooks, their logs, events by id.

What ``ecgw api ...`` needs beyond the gateway's own client (:mod:`gateway.delivery.api`):
``GET/POST /webhooks``, ``PUT /webhooks/{id}/enabled``, ``GET /webhooks/logs`` and
``GET /events`` / ``GET /events/{id}`` as raw JSON. The token comes from the same
:class:`~gateway.delivery.api.TokenSource`. aiohttp exceptions stop here: callers see
:class:`UpstreamUnavailable` or :class:`UpstreamRejected` naming the request. Redirects are
never followed and every reply is read up to :data:`REPLY_LIMIT`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Mapping
from typing import Any
from urllib.parse import quote

import aiohttp
import msgspec

from gateway.delivery.api import TokenSource
from gateway.errors import UpstreamRejected, UpstreamUnavailable, describe
from gateway.logs import redact

__all__ = ["REPLY_LIMIT", "SparkAdmin"]

REPLY_LIMIT = 32 * 1024 * 1024
PAGE_SIZE = 1000
MAX_PAGES = 1000


def _segment(identifier: str) -> str:
    """An id the API gave, as one path segment: ``../webhooks`` or ``a?x=1`` must not reach
    another resource with the gateway's token."""
    return quote(identifier, safe="")


class SparkAdmin:
    """Calls under ``base_url`` with a bearer token; one fresh token after a 401."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        base_url: str,
        tokens: TokenSource,
        timeout: float,
    ) -> None:
        self._session = session
        self._base = base_url.rstrip("/")
        self._tokens = tokens
        self._timeout = timeout

    async def token(self) -> None:
        """Fetch a token (AuthError if the credentials are refused)."""
        await self._tokens.get()

    async def call(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        body: Any = None,
        missing_ok: bool = False,
    ) -> tuple[int, bytes]:
        """``(status, body)`` of a 2xx (or a 404 when ``missing_ok``); else an UpstreamError."""
        what = f"{method} {path}"
        data = None if body is None else msgspec.json.encode(body)
        for first in (True, False):
            token = await self._tokens.get()
            headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
            if data is not None:
                headers["Content-Type"] = "application/json"
            try:
                async with (
                    asyncio.timeout(self._timeout),
                    self._session.request(
                        method,
                        self._base + path,
                        params=params,
                        data=data,
                        headers=headers,
                        allow_redirects=False,
                    ) as resp,
                ):
                    status, raw = resp.status, await resp.content.read(REPLY_LIMIT + 1)
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise UpstreamUnavailable(f"{what}: {describe(exc)}") from exc
            if status == 401 and first:
                self._tokens.invalidate(token)
                continue
            if len(raw) > REPLY_LIMIT:
                raise UpstreamUnavailable(f"{what}: reply longer than {REPLY_LIMIT} bytes")
            if 200 <= status < 300 or (status == 404 and missing_ok):
                return status, raw
            text = redact(raw.decode("utf-8", "replace"))[:300]
            error = UpstreamUnavailable if status >= 500 or status == 429 else UpstreamRejected
            raise error(f"{what} answered HTTP {status}: {text}".rstrip(": "), status=status)
        raise AssertionError("unreachable")  # pragma: no cover

    async def json(self, method: str, path: str, **kwargs: Any) -> Any:
        status, raw = await self.call(method, path, **kwargs)
        if not raw.strip():
            return None
        try:
            return msgspec.json.decode(raw)
        except msgspec.DecodeError as exc:
            raise UpstreamUnavailable(
                f"{method} {path}: reply is not JSON ({describe(exc)})", status=status
            ) from exc

    async def webhooks(self) -> list[dict[str, Any]]:
        reply = await self.json("GET", "/webhooks")
        found = reply.get("webhooks") if isinstance(reply, dict) else None
        return [w for w in found or [] if isinstance(w, dict)]

    async def register_webhook(self, request: dict[str, Any]) -> dict[str, Any]:
        reply = await self.json("POST", "/webhooks", body=request)
        return reply if isinstance(reply, dict) else {}

    async def set_enabled(self, webhook_id: str, enabled: bool) -> None:
        params = {"enabled": "true" if enabled else "false"}
        await self.call("PUT", f"/webhooks/{_segment(webhook_id)}/enabled", params=params)

    async def event(self, event_id: str) -> bytes | None:
        """One event's raw JSON (``GetEventResponse``), or None if the API has no such event."""
        status, raw = await self.call("GET", f"/events/{_segment(event_id)}", missing_ok=True)
        return None if status == 404 else raw

    async def notification_logs(self) -> AsyncGenerator[dict[str, Any]]:
        """Every ``WebhookNotificationLog`` entry, page by page."""
        async for item in self._paged("/webhooks/logs", "webhookNotificationLogs"):
            yield item

    async def events(self) -> AsyncGenerator[dict[str, Any]]:
        """Every event (``GetEventResponse``), newest first, page by page."""
        async for item in self._paged("/events", "events"):
            yield item

    async def _paged(self, path: str, key: str) -> AsyncGenerator[dict[str, Any]]:
        page = 1
        for _ in range(MAX_PAGES):
            reply = await self.json(
                "GET", path, params={"page": str(page), "pageSize": str(PAGE_SIZE)}
            )
            if not isinstance(reply, dict):
                return
            items = reply.get(key) or []
            if not isinstance(items, list):
                raise UpstreamUnavailable(f"GET {path}: {key!r} is not a list")
            for item in items:
                if isinstance(item, dict):
                    yield item
            pagination = reply.get("pagination") or {}
            following = pagination.get("nextPage") if isinstance(pagination, dict) else None
            if not isinstance(following, int) or following <= page:
                return
            page = following
