"""The webhook receiver: signed ``EventNotification`` POSTs from Spark into the inbox.

Order of checks: size (413), read deadline (408), signature before any parsing
(401, nothing stored), shape (400), then the inbox commit; only after it is
committed does Spark get its 200. A duplicate is answered 200 and changes
nothing. A database failure is answered 503 so that Spark retries.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import structlog
from aiohttp import web

from gateway import wire
from gateway.config import Secret
from gateway.errors import ConfigError, SignatureError, StoreError, WireError
from gateway.intake.signature import verify
from gateway.store.inbox import Inbox, NewEvent
from gateway.timeutil import format_utc

__all__ = ["WebhookSettings", "build_webhook_app", "serve_webhook"]

log = structlog.get_logger("gateway.webhook")

SIGNATURE_HEADER = "X-Payload-Signature"


@dataclass(frozen=True, slots=True)
class WebhookSettings:
    host: str
    port: int
    path: str
    secret: Secret
    max_body: int
    read_timeout: float


def _reply(status: int, message: str) -> web.Response:
    return web.json_response({"status": status, "message": message}, status=status)


class _Receiver:
    def __init__(
        self,
        settings: WebhookSettings,
        inbox: Inbox,
        on_event: Callable[[str], None],
        clock: Callable[[], float],
    ) -> None:
        self._settings = settings
        self._inbox = inbox
        self._on_event = on_event
        self._clock = clock

    async def handle(self, request: web.Request) -> web.Response:
        limit = self._settings.max_body
        if request.content_length is not None and request.content_length > limit:
            log.warning("webhook.rejected", reason="too_large", size=request.content_length)
            return _reply(413, f"body larger than {limit} bytes")
        try:
            async with asyncio.timeout(self._settings.read_timeout):
                body = await request.read()
        except TimeoutError:
            log.warning("webhook.rejected", reason="read_timeout")
            return _reply(408, "body not received in time")
        except web.HTTPRequestEntityTooLarge:
            log.warning("webhook.rejected", reason="too_large")
            return _reply(413, f"body larger than {limit} bytes")
        try:
            verify(body, request.headers.get(SIGNATURE_HEADER), self._settings.secret.reveal())
        except SignatureError as exc:
            log.warning("webhook.rejected", reason="signature", detail=str(exc))
            return _reply(401, str(exc))
        try:
            note, payload = wire.decode_notification(body)
        except WireError as exc:
            log.warning("webhook.rejected", reason="shape", detail=str(exc))
            return _reply(400, str(exc))
        return await self._store(note, payload)

    async def _store(
        self, note: wire.EventNotification, payload: wire.EventPayload
    ) -> web.Response:
        payload_type = wire.payload_type(payload)
        event = NewEvent(
            event_id=note.event_id,
            payload_type=payload_type,
            created_at=format_utc(note.event_created_at_utc),
            payload=bytes(note.payload),
            notification_id=note.notification_id,
            notification_type=note.notification_type,
        )
        with structlog.contextvars.bound_contextvars(event_id=note.event_id):
            try:
                new = await self._inbox.add(event, via="webhook", at=self._clock())
            except StoreError as exc:
                log.error("webhook.store_failed", error=str(exc))
                return _reply(503, "could not store the event; retry later")
            log.info(
                "webhook.received",
                new=new,
                payload_type=payload_type,
                notification_id=note.notification_id,
            )
        if new:
            self._on_event(note.event_id)
        return _reply(200, "stored" if new else "duplicate")


def build_webhook_app(
    settings: WebhookSettings,
    inbox: Inbox,
    on_event: Callable[[str], None],
    clock: Callable[[], float] = time.time,
) -> web.Application:
    app = web.Application(client_max_size=settings.max_body)
    app.router.add_post(settings.path, _Receiver(settings, inbox, on_event, clock).handle)
    return app


@contextlib.asynccontextmanager
async def serve_webhook(
    settings: WebhookSettings,
    inbox: Inbox,
    on_event: Callable[[str], None],
) -> AsyncIterator[str]:
    """Serve until the context exits; yields the URL it listens on (port 0 picks one)."""
    runner = web.AppRunner(
        build_webhook_app(settings, inbox, on_event),
        access_log=None,
        handle_signals=False,
        shutdown_timeout=5.0,
        # aiohttp (>= 3.14.4) closes a connection that has not sent a whole request head
        # this long after it opened or after its last answer: the deadline for headers.
        keepalive_timeout=settings.read_timeout,
    )
    await runner.setup()
    try:
        site = web.TCPSite(runner, settings.host, settings.port)
        try:
            await site.start()
        except OSError as exc:
            raise ConfigError(
                f"cannot listen on {settings.host}:{settings.port}: {exc.strerror}",
                key="webhook.listen",
            ) from None
        sockets = runner.addresses
        host, port = sockets[0][0], sockets[0][1]
        url = f"http://{host}:{port}{settings.path}"
        log.info("webhook.listening", url=url)
        yield url
    finally:
        await runner.cleanup()
