"""The sandbox's state owner (:class:`Sandbox`) and its lifetime (:func:`run_sandbox`).

``run_sandbox`` opens, in order: a client session for webhook pushes, the aiohttp server on
``host:port`` (port 0 picks a free one). On exit it stops the server (in-flight requests get
``SHUTDOWN_TIMEOUT`` seconds), cancels and awaits pushes still running, and closes the session.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import msgspec
import structlog
from aiohttp import web

from gateway import contract
from gateway.sandbox.admin import admin_routes
from gateway.sandbox.api import BASE_PATH, TOKEN_PATH, Api
from gateway.sandbox.auth import TokenBook, bearer_token
from gateway.sandbox.faults import Fault, FaultQueue
from gateway.sandbox.push import Pusher
from gateway.sandbox.simulation import notification, notification_type
from gateway.sandbox.state import (
    Answer,
    EventLog,
    PushAttempt,
    ReceivedReport,
    ReportAttempt,
    ReportLedger,
    Webhook,
    iso,
)

__all__ = ["BASE_PATH", "SHUTDOWN_TIMEOUT", "TOKEN_PATH", "Sandbox", "run_sandbox"]

SHUTDOWN_TIMEOUT = 1.0
TENANT_ID = "sandbox-tenant"
"""The ``tenantId`` of every webhook log entry (Spark's is the partner's tenant)."""
MAX_BODY = 16 * 1024 * 1024

log = structlog.get_logger(__name__)


class Sandbox:
    """A local Energy Coordination API: what it has received, and handles to steer it.

    ``reports`` (accepted, arrival order, duplicates flagged), ``attempts`` (every
    ``POST /reports``), ``pushes`` (every webhook attempt) and ``events`` (newest first) are for
    tests to read; ``add_faults``, ``revoke_tokens``, ``create_event`` and the ``wait_for_*``
    methods steer it. ``authorized``, ``issue_token``, ``submit_report`` and the other methods
    in the last group are what the HTTP layer (``api``, ``admin``) calls.
    """

    def __init__(
        self,
        *,
        session: aiohttp.ClientSession,
        client_id: str,
        client_secret: str,
        token_lifetime: float,
        push_retry_delays: Sequence[float],
    ) -> None:
        self.root_url = ""
        self.base_url = ""
        self.token_url = ""
        self.client_id = client_id
        self.client_secret = client_secret
        self.attempts: list[ReportAttempt] = []
        self.pushes: list[PushAttempt] = []
        self.webhooks: dict[str, Webhook] = {}
        self.tokens = TokenBook(token_lifetime)
        self.faults = FaultQueue()
        self._ledger = ReportLedger()
        self._events = EventLog()
        self._sent: dict[str, bytes] = {}  # notification id -> the body as pushed
        self._changed = asyncio.Condition()
        self._pusher = Pusher(session, push_retry_delays, self._record_push)

    # -- what tests read ---------------------------------------------------------------------

    @property
    def reports(self) -> list[ReceivedReport]:
        return self._ledger.reports

    @property
    def events(self) -> list[dict[str, Any]]:
        """Stored events as ``GetEventResponse`` dicts, newest first (a fresh list)."""
        return self._events.newest_first()

    # -- steering ----------------------------------------------------------------------------

    def add_faults(self, *faults: Fault) -> None:
        """Queue faults for the next ``POST /reports`` requests (FIFO, one per request)."""
        self.faults.add(*faults)

    def clear_faults(self) -> None:
        self.faults.clear()

    def revoke_tokens(self) -> None:
        """Every token issued so far is answered 401 from now on."""
        self.tokens.revoke_all()
        log.info("sandbox.tokens_revoked")

    async def create_event(
        self, payload: dict[str, Any], *, push: bool = True, validate: bool = True
    ) -> dict[str, Any]:
        """Store an event and push it to subscribed webhooks; returns its ``GetEventResponse``.

        ``validate=False`` stores a payload the contract does not allow (an unknown
        ``payloadType``, say) to test how tolerant a receiver is. Raises WireError otherwise.
        """
        now = dt.datetime.now(dt.UTC)
        event = {"id": str(uuid.uuid4()), "createdAt": iso(now), "payload": payload}
        if validate:
            contract.check("GetEventResponse", event)
        self._events.add(event)
        log.info("sandbox.event_created", event_id=event["id"], type=payload.get("payloadType"))
        if push:
            self._push(event, now)
        return event

    async def wait_for_reports(self, n: int, timeout: float) -> None:  # noqa: ASYNC109 - public API
        """Return once ``reports`` holds ``n`` entries (duplicates count); else TimeoutError."""
        await self._wait(lambda: len(self.reports) >= n, timeout, f"{n} report(s)")

    async def wait_for_pushes(
        self,
        n: int,
        timeout: float,  # noqa: ASYNC109 - same shape as wait_for_reports, fixed by its users
        *,
        where: Callable[[PushAttempt], bool] | None = None,
    ) -> None:
        """Return once ``n`` push attempts (matching ``where``, if given) are recorded."""

        def enough() -> bool:
            return sum(1 for p in self.pushes if where is None or where(p)) >= n

        await self._wait(enough, timeout, f"{n} push attempt(s)")

    # -- used by the HTTP layer --------------------------------------------------------------

    def authorized(self, authorization: str | None) -> bool:
        return self.tokens.valid(bearer_token(authorization), time.monotonic())

    def issue_token(self) -> str:
        return self.tokens.issue(time.monotonic())

    def event(self, event_id: str) -> dict[str, Any] | None:
        return self._events.get(event_id)

    def event_page(self, page: int, page_size: int) -> dict[str, Any]:
        return self._events.page(page, page_size)

    async def submit_report(self, raw: bytes, idempotency_key: str | None, now: float) -> Answer:
        answer = self._ledger.submit(
            raw,
            idempotency_key,
            known_events=self._events,
            now=now,
            report_id=str(uuid.uuid4()),
        )
        if answer.status == 200:
            report = self.reports[-1]
            log.info(
                "sandbox.report_accepted",
                report_id=report.id,
                event_id=report.event_id,
                duplicate=report.duplicate,
            )
            await self._notify()
        else:
            log.info("sandbox.report_rejected", reason=answer.body)
        return answer

    def record_attempt(self, attempt: ReportAttempt) -> None:
        self.attempts.append(attempt)

    def add_webhook(self, request: dict[str, Any]) -> Webhook:
        """Register a validated ``PostWebhookRequest``."""
        webhook = Webhook(
            id=str(uuid.uuid4()),
            url=request["webhookUrl"],
            secret=request.get("webhookSecret"),
            name=request.get("name"),
            notification_types=tuple(request.get("notificationTypes") or ()),
            created=iso(dt.datetime.now(dt.UTC)),
        )
        self.webhooks[webhook.id] = webhook
        log.info("sandbox.webhook_added", webhook_id=webhook.id, url=webhook.url)
        return webhook

    def _bind(self, root_url: str) -> None:
        self.root_url = root_url
        self.base_url = root_url + BASE_PATH
        self.token_url = root_url + TOKEN_PATH

    def _push(self, event: dict[str, Any], now: dt.datetime) -> None:
        kind = notification_type(event["payload"])
        for webhook in self.webhooks.values():
            if webhook.wants(kind):
                notification_id = str(uuid.uuid4())
                body = msgspec.json.encode(notification(event, notification_id, now))
                self._sent[notification_id] = body
                self._pusher.start(webhook, body, notification_id, event["id"], kind)

    def notification_logs(self, webhook_id: str | None) -> list[dict[str, Any]]:
        """``WebhookNotificationLog`` entries, one per push attempt, newest first."""
        return [
            p.log_entry(TENANT_ID)
            for p in reversed(self.pushes)
            if webhook_id is None or p.webhook_id == webhook_id
        ]

    def notification_log(self, notification_id: str) -> dict[str, Any] | None:
        """A ``GetWebhookNotificationLogByIdResponse``: the last attempt and the body sent."""
        attempts = [p for p in self.pushes if p.notification_id == notification_id]
        if not attempts:
            return None
        return {
            "webhookNotificationLog": attempts[-1].log_entry(TENANT_ID),
            "notificationContent": self._sent[notification_id].decode("utf-8"),
        }

    def set_webhook_enabled(self, webhook_id: str, enabled: bool) -> bool:
        """False if there is no such webhook."""
        webhook = self.webhooks.get(webhook_id)
        if webhook is None:
            return False
        webhook.enabled = enabled
        log.info("sandbox.webhook_enabled", webhook_id=webhook_id, enabled=enabled)
        return True

    async def _record_push(self, attempt: PushAttempt) -> None:
        self.pushes.append(attempt)
        webhook = self.webhooks.get(attempt.webhook_id)
        if webhook is not None:
            webhook.status = (
                "Healthy" if attempt.ok else "TimeOut" if attempt.timed_out else "Unhealthy"
            )
        await self._notify()

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def _wait(self, predicate: Callable[[], bool], seconds: float, what: str) -> None:
        try:
            async with asyncio.timeout(seconds), self._changed:
                await self._changed.wait_for(predicate)
        except TimeoutError:
            raise TimeoutError(
                f"sandbox: no {what} after {seconds}s "
                f"(reports={len(self.reports)}, pushes={len(self.pushes)})"
            ) from None

    async def _aclose(self) -> None:
        await self._pusher.aclose()


@asynccontextmanager
async def run_sandbox(
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    client_id: str = "ecgw-sandbox",
    client_secret: str = "sandbox-secret",  # noqa: S107 - a well-known sandbox default
    token_lifetime: float = 3600.0,
    push_retry_delays: Sequence[float] = (0.2, 0.4, 0.8),
) -> AsyncIterator[Sandbox]:
    """Serve a sandbox on ``host:port`` for the duration of the ``async with`` block."""
    timeout = aiohttp.ClientTimeout(total=None)  # each push sets its own deadline
    async with aiohttp.ClientSession(timeout=timeout) as session:
        sandbox = Sandbox(
            session=session,
            client_id=client_id,
            client_secret=client_secret,
            token_lifetime=token_lifetime,
            push_retry_delays=tuple(push_retry_delays),
        )
        api = Api(sandbox)
        app = web.Application(middlewares=[api.require_token], client_max_size=MAX_BODY)
        app.add_routes(api.routes())
        app.add_routes(admin_routes(sandbox))
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT)
        await runner.setup()
        try:
            site = web.TCPSite(runner, host, port)
            await site.start()
            sandbox._bind(_root_url(host, runner.addresses[0][1]))
            log.info("sandbox.started", url=sandbox.root_url)
            yield sandbox
        finally:
            await runner.cleanup()
            await sandbox._aclose()
            log.info("sandbox.stopped", url=sandbox.root_url)


def _root_url(host: str, port: int) -> str:
    """A URL clients can reach: wildcard binds are reached through loopback."""
    reachable = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)  # noqa: S104
    if ":" in reachable:
        reachable = f"[{reachable}]"
    return f"http://{reachable}:{port}"
