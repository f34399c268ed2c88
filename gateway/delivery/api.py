"""HTTP client for the Energy Coordination API: token, ``POST /reports``, ``GET /events``.

aiohttp exceptions stop here: callers see :class:`UpstreamUnavailable` (try
again), :class:`UpstreamRejected` (never again) or :class:`AuthError`.
The session is injected; this module closes nothing it did not create.

Nothing from the peer is trusted:

- Redirects are never followed (``allow_redirects=False`` on every request): a
  followed 302 turns the ``POST`` into a ``GET``, and a 307 would carry the client
  secret or a report to wherever ``Location`` points. A 3xx is reported with its
  status and ``Location``; for ``POST /reports`` it is retried (see the policy).
- Every reply body is read up to a limit (:data:`REPLY_LIMIT` for ``/reports`` and
  the token endpoint, :func:`events_limit` for a ``GET /events`` page); a longer
  one, or one whose ``Content-Length`` says so, is cut off without reading the rest.
- A 2xx from ``/reports`` is delivery whatever its body: an id is kept if one can
  be read from it, and an unreadable body is logged, never retried.
- The token is checked before it goes into a header: printable token68 characters,
  at most :data:`TOKEN_MAX_LENGTH`, ``expires_in`` a finite number of seconds.
"""

from __future__ import annotations

import asyncio
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import msgspec
import structlog

from gateway import wire
from gateway.config import Secret
from gateway.errors import (
    AuthError,
    UpstreamError,
    UpstreamRejected,
    UpstreamUnavailable,
    WireError,
    describe,
)
from gateway.health import Health
from gateway.logs import redact, register_token
from gateway.reports.clock import ServerClock

__all__ = [
    "REPLY_LIMIT",
    "ApiClient",
    "PostResult",
    "TokenSource",
    "events_limit",
    "parse_token_reply",
    "report_id_of",
]

log = structlog.get_logger("gateway.api")

DEFAULT_TOKEN_LIFETIME = 3600.0
REPLY_LIMIT = 64 * 1024  # bytes read of a /reports or token reply
EVENTS_PAGE_BASE = 64 * 1024  # bytes of a GET /events page, plus ...
EVENTS_PER_EVENT = 16 * 1024  # ... this much per event the page may hold (page_size)
TOKEN_MAX_LENGTH = 8192
TOKEN_LIFETIME_MAX = 366 * 86400.0
REPORT_ID_MAX = 200  # characters of a report id kept
_TOKEN68 = re.compile(r"[A-Za-z0-9\-._~+/]+=*")


def events_limit(page_size: int) -> int:
    """Bytes read of one ``GET /events`` page of ``page_size`` events (1000: about 16 MiB)."""
    return EVENTS_PAGE_BASE + max(page_size, 1) * EVENTS_PER_EVENT


# --- pure checks of what the peer sent ----------------------------------------------------


def parse_token_reply(payload: Any) -> tuple[str, float]:
    """``(access_token, lifetime)`` from a decoded token reply; ValueError saying what is
    wrong (never quoting the token). A missing ``expires_in`` means an hour."""
    if not isinstance(payload, dict):
        raise ValueError("the reply is not a JSON object")  # noqa: TRY004 - one error type
    token = payload.get("access_token")
    if not isinstance(token, str) or not token:
        raise ValueError("access_token: missing or not a string")
    if len(token) > TOKEN_MAX_LENGTH:
        raise ValueError(f"access_token: longer than {TOKEN_MAX_LENGTH} characters")
    if not _TOKEN68.fullmatch(token):
        raise ValueError("access_token: not a bearer token (token68 characters only)")
    lifetime = payload.get("expires_in", DEFAULT_TOKEN_LIFETIME)
    if lifetime is None:
        lifetime = DEFAULT_TOKEN_LIFETIME
    if isinstance(lifetime, bool) or not isinstance(lifetime, int | float):
        raise ValueError("expires_in: not a number of seconds")  # noqa: TRY004
    if not (math.isfinite(lifetime) and 1 <= lifetime <= TOKEN_LIFETIME_MAX):
        raise ValueError(f"expires_in: {lifetime!r} is not between 1 and {TOKEN_LIFETIME_MAX:.0f}")
    return token, float(lifetime)


def report_id_of(body: bytes) -> str | None:
    """The report id in a 2xx reply, as much of it as can be read; None if there is none."""
    try:
        raw_id: object = wire.decode_report_response(body).id
    except WireError:
        try:  # not the contract's shape (or not UTF-8): take the id if there is one
            document = msgspec.json.decode(body.decode("utf-8", "replace"))
        except msgspec.DecodeError:
            return None
        raw_id = document.get("id") if isinstance(document, dict) else None
    if not isinstance(raw_id, str):
        return None
    kept = "".join(ch for ch in raw_id[: REPORT_ID_MAX * 4] if ch.isprintable())
    return kept[:REPORT_ID_MAX] or None


# --- reading a reply ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Reply:
    status: int
    body: bytes  # at most the limit
    complete: bool  # False: longer than the limit; the rest was not read
    headers: dict[str, str]  # the few headers used: Retry-After, Date, Location

    def text(self, limit: int) -> str:
        """The body for a log line or an outbox row, with bearer tokens and secrets redacted
        (an error body may echo the request's ``Authorization`` header)."""
        text = redact(self.body.decode("utf-8", "replace"))
        return text if self.complete else f"(reply longer than {limit} bytes; not read) {text}"

    def location(self) -> str:
        where = self.headers.get("Location")
        if not where:
            return "no Location header"
        kept = "".join(ch for ch in where[:300] if ch.isprintable())
        return f"Location: {redact(kept)}"


async def _read(resp: aiohttp.ClientResponse, limit: int) -> _Reply:
    """The status, the body up to ``limit`` bytes, and the headers the gateway uses."""
    headers = {
        name: value
        for name in ("Retry-After", "Date", "Location")
        if (value := resp.headers.get(name)) is not None
    }
    declared = resp.content_length
    if declared is not None and declared > limit:  # refused without reading any of it
        return _Reply(resp.status, b"", False, headers)
    body = bytearray()
    while len(body) <= limit:
        chunk = await resp.content.read(limit + 1 - len(body))
        if not chunk:
            return _Reply(resp.status, bytes(body), True, headers)
        body += chunk
    return _Reply(resp.status, bytes(body[:limit]), False, headers)


# --- the token ------------------------------------------------------------------------------


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
        health: Health | None = None,
    ) -> None:
        self._session = session
        self._health = health
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
                await self._fetch_noted()
            assert self._token is not None
            return self._token

    def invalidate(self, token: str) -> None:
        """Forget ``token`` (the API answered 401 to it); the next get() fetches anew."""
        if self._token == token:
            self._token = None

    async def _fetch_noted(self) -> None:
        """Fetch, and tell the health record how it went."""
        try:
            await self._fetch()
        except UpstreamError as exc:
            if self._health is not None:
                self._health.token_failed(str(exc), refused=isinstance(exc, AuthError))
            raise
        if self._health is not None:
            self._health.token_fetched()

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
                    self._url,
                    data=form,
                    headers={"Accept": "application/json"},
                    allow_redirects=False,
                ) as resp,
            ):
                reply = await _read(resp, REPLY_LIMIT)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise UpstreamUnavailable(f"token endpoint: {describe(exc)}") from exc
        token, lifetime = _accept_token_reply(reply)
        register_token(token)  # redacted from every reply text kept or logged from now on
        self._token = token
        # Refresh a minute early (or at 90 % of a short lifetime).
        self._refresh_at = self._clock() + max(lifetime - min(60.0, lifetime * 0.1), 1.0)
        log.info("token.fetched", expires_in=lifetime)


def _accept_token_reply(reply: _Reply) -> tuple[str, float]:
    status, text = reply.status, reply.text(REPLY_LIMIT)[:500]
    if status in (400, 401, 403):
        raise AuthError(
            f"token endpoint refused the client credentials (HTTP {status})",
            status=status,
            body=text,
        )
    if 300 <= status < 400:
        message = f"token endpoint answered HTTP {status} ({reply.location()}); not followed"
        log.error("token.redirect_refused", status=status, location=reply.location())
        raise UpstreamUnavailable(message, status=status, body=text)
    if status != 200:
        raise UpstreamUnavailable(
            f"token endpoint answered HTTP {status}", status=status, body=text
        )
    try:
        return parse_token_reply(_decode_complete(reply))
    except (ValueError, msgspec.DecodeError) as exc:
        reason = describe(exc) if isinstance(exc, msgspec.DecodeError) else str(exc)
        log.error("token.reply_unusable", reason=reason)
        raise UpstreamUnavailable(
            f"token endpoint sent an unusable reply: {reason}", status=status
        ) from exc


def _decode_complete(reply: _Reply) -> Any:
    if not reply.complete:
        raise ValueError(f"the reply is longer than {REPLY_LIMIT} bytes")
    return msgspec.json.decode(reply.body)


# --- the API --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PostResult:
    """The API's answer to one report POST (any status); transport failures raise instead.

    ``body`` is the reply as text (at most :data:`REPLY_LIMIT` bytes of it); for a 3xx
    it names the status and ``Location`` instead, as the redirect was not followed."""

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
                self._session.post(
                    f"{self._base}/reports", data=body, headers=headers, allow_redirects=False
                ) as resp,
            ):
                reply = await _read(resp, REPLY_LIMIT)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise UpstreamUnavailable(f"POST /reports: {describe(exc)}") from exc
        self.server_clock.observe(reply.headers.get("Date"))
        return _post_result(reply)

    async def get_events(self, *, page: int | None, page_size: int) -> wire.GetEventsResponse:
        params = {"pageSize": str(page_size)}
        if page is not None:
            params["page"] = str(page)
        limit = events_limit(page_size)
        for first in (True, False):
            token = await self._tokens.get()
            try:
                async with (
                    asyncio.timeout(self._timeout),
                    self._session.get(
                        f"{self._base}/events",
                        params=params,
                        headers={"Authorization": f"Bearer {token}", "Accept": "application/json"},
                        allow_redirects=False,
                    ) as resp,
                ):
                    reply = await _read(resp, limit)
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise UpstreamUnavailable(f"GET /events: {describe(exc)}") from exc
            self.server_clock.observe(reply.headers.get("Date"))
            if reply.status == 401 and first:
                self._tokens.invalidate(token)
                continue
            return _events_page(reply, limit=limit, page_size=page_size)
        raise AssertionError("unreachable")  # pragma: no cover


def _post_result(reply: _Reply) -> PostResult:
    status = reply.status
    if 200 <= status < 300:
        report_id = report_id_of(reply.body) if reply.complete else None
        if report_id is None:
            why = "longer than the limit" if not reply.complete else "no readable id"
            log.warning("report.reply_unreadable", status=status, reason=why)
        return PostResult(status=status, body="", report_id=report_id, retry_after=None)
    text = reply.text(REPLY_LIMIT)
    if 300 <= status < 400:
        log.warning("report.redirect_refused", status=status, location=reply.location())
        text = f"redirect not followed ({reply.location()})"
    return PostResult(
        status=status, body=text, report_id=None, retry_after=reply.headers.get("Retry-After")
    )


def _events_page(reply: _Reply, *, limit: int, page_size: int) -> wire.GetEventsResponse:
    status = reply.status
    if status == 200:
        if not reply.complete:
            raise UpstreamUnavailable(
                f"GET /events reply is longer than {limit} bytes "
                f"(the limit for poll.page_size {page_size}); not read",
                status=status,
            )
        return wire.decode_events_page(reply.body)
    text = reply.text(limit)[:500]
    if 300 <= status < 400:
        raise UpstreamUnavailable(
            f"GET /events answered HTTP {status} ({reply.location()}); not followed",
            status=status,
            body=text,
        )
    if status in (408, 425, 429) or status >= 500 or status < 200:
        raise UpstreamUnavailable(f"GET /events answered HTTP {status}", status=status, body=text)
    raise UpstreamRejected(f"GET /events answered HTTP {status}", status=status, body=text)
