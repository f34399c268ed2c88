"""HTTP client for the Energy Coordination API: token, ``POST /reports``, ``GET /events``.

aiohttp exceptions stop here: callers see :class:`UpstreamUnavailable` (try
again), :class:`UpstreamRejected` (never again) or :class:`AuthError`.
The session is injected; this module closes nothing it did not create.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp
import structlog

from gateway import wire
from gateway.config import Secret
from gateway.errors import AuthError, UpstreamRejected, UpstreamUnavailable, WireError
from gateway.reports.clock import parse_http_date

__all__ = ["ApiClient", "PostResult", "ServerClock", "TokenSource"]

log = structlog.get_logger("gateway.api")

DEFAULT_TOKEN_LIFETIME = 3600.0


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


class ServerClock:
    """The API's ``Date`` header as last seen, and our clock at that moment."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self.api_date: float | None = None
        self.seen_at: float | None = None

    def observe(self, header: str | None) -> None:
        """Note the header; at most once a second (HTTP dates have whole seconds anyway)."""
        now = self._clock()
        if self.seen_at is not None and now - self.seen_at < 1.0:
            return
        api_date = parse_http_date(header)
        if api_date is not None:
            self.api_date, self.seen_at = api_date, now


class TokenSource:
    """OAuth2 client credentials; the token is cached and refreshed before it expires."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        token_url: str,
        client_id: str,
        client_secret: Secret,
        timeout: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._session = session
        self._url = token_url
        self._client_id = client_id
        self._secret = client_secret
        self._timeout = timeout
        self._clock = clock
        self._token: str | None = None
        self._refresh_at = 0.0
        self._lock = asyncio.Lock()

    async def get(self) -> str:
        async with self._lock:
            if self._token is None or self._clock() >= self._refresh_at:
                await self._fetch()
            assert self._token is not None
            return self._token

    def invalidate(self, token: str) -> None:
        """Forget ``token`` (the API answered 401 to it); the next get() fetches anew."""
        if self._token == token:
            self._token = None

    async def _fetch(self) -> None:
        form = {
            "grant_type": "client_credentials",
            "client_id": self._client_id,
            "client_secret": self._secret.reveal(),
        }
        try:
            async with (
                asyncio.timeout(self._timeout),
                self._session.post(
                    self._url, data=form, headers={"Accept": "application/json"}
                ) as resp,
            ):
                text = await resp.text()
                status = resp.status
                payload = await resp.json(content_type=None) if status == 200 else None
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise UpstreamUnavailable(f"token endpoint: {_describe(exc)}") from exc
        if status in (400, 401, 403):
            raise AuthError(
                f"token endpoint refused the client credentials (HTTP {status})",
                status=status,
                body=text[:500],
            )
        if status != 200 or not isinstance(payload, dict) or not payload.get("access_token"):
            raise UpstreamUnavailable(
                f"token endpoint answered HTTP {status}", status=status, body=text[:500]
            )
        lifetime = payload.get("expires_in")
        if not isinstance(lifetime, int | float) or lifetime <= 0:
            lifetime = DEFAULT_TOKEN_LIFETIME
        self._token = str(payload["access_token"])
        # Refresh a minute early (or at 90 % of a short lifetime).
        self._refresh_at = self._clock() + max(lifetime - min(60.0, lifetime * 0.1), 1.0)
        log.info("token.fetched", expires_in=lifetime)


@dataclass(frozen=True, slots=True)
class PostResult:
    """The API's answer to one report POST (any status); transport failures raise instead."""

    status: int
    body: str
    report_id: str | None
    retry_after: str | None


class ApiClient:
    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        base_url: str,
        tokens: TokenSource,
        timeout: float,
        server_clock: ServerClock | None = None,
    ) -> None:
        self._session = session
        self._base = base_url.rstrip("/")
        self._tokens = tokens
        self._timeout = timeout
        self.server_clock = server_clock or ServerClock()

    async def post_report(self, body: bytes, *, idempotency_key: str) -> PostResult:
        """POST one frozen report body. A 401 gets one fresh token and one more try."""
        for first in (True, False):
            token = await self._tokens.get()
            result = await self._post(body, token, idempotency_key)
            if result.status == 401 and first:
                log.info("token.rejected")
                self._tokens.invalidate(token)
                continue
            return result
        raise AssertionError("unreachable")  # pragma: no cover

    async def _post(self, body: bytes, token: str, key: str) -> PostResult:
        headers = {
            "Authorization": f"Bearer {token}",
            "Content-Type": "application/json",
            "Accept": "application/json",
            "Idempotency-Key": key,
        }
        try:
            async with (
                asyncio.timeout(self._timeout),
                self._session.post(f"{self._base}/reports", data=body, headers=headers) as resp,
            ):
                text = await resp.text()
                status = resp.status
                retry_after = resp.headers.get("Retry-After")
                self.server_clock.observe(resp.headers.get("Date"))
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise UpstreamUnavailable(f"POST /reports: {_describe(exc)}") from exc
        report_id = None
        if 200 <= status < 300:
            try:
                report_id = wire.decode_report_response(text.encode()).id
            except WireError as exc:
                log.warning("report.reply_unreadable", error=str(exc))
        return PostResult(status=status, body=text, report_id=report_id, retry_after=retry_after)

    async def get_events(self, *, page: int | None, page_size: int) -> wire.GetEventsResponse:
        params = {"pageSize": str(page_size)}
        if page is not None:
            params["page"] = str(page)
        for first in (True, False):
            token = await self._tokens.get()
            try:
                async with (
                    asyncio.timeout(self._timeout),
                    self._session.get(
                        f"{self._base}/events",
                        params=params,
                        headers={"Authorization": f"Bearer {token}", "Accept": "application/json"},
                    ) as resp,
                ):
                    raw = await resp.read()
                    status = resp.status
                    self.server_clock.observe(resp.headers.get("Date"))
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise UpstreamUnavailable(f"GET /events: {_describe(exc)}") from exc
            if status == 401 and first:
                self._tokens.invalidate(token)
                continue
            if status == 200:
                return wire.decode_events_page(raw)
            text = raw[:500].decode("utf-8", "replace")
            if status in (408, 425, 429) or status >= 500:
                raise UpstreamUnavailable(
                    f"GET /events answered HTTP {status}", status=status, body=text
                )
            raise UpstreamRejected(f"GET /events answered HTTP {status}", status=status, body=text)
        raise AssertionError("unreachable")  # pragma: no cover
