"""The webhook receiver: signed ``EventNotification`` POSTs from Spark into the inbox.

Order of checks: content encoding (415: Spark sends plain JSON; a gzip or deflate body
is refused before a byte of it is read, and the connection is closed so that aiohttp
never inflates the rest), size (413), read deadline (408), a body that cannot be read
(400: cut short or badly framed; one log line), signature before any parsing
(401, nothing stored), shape (400), then the inbox commit; only after it is
committed does Spark get its 200. A duplicate is answered 200 and changes
nothing. A database failure is answered 503 so that Spark retries.

**Group commit.** Notifications that arrive together share one transaction
(one fsync): :class:`InboxCommitter` commits the first at once and gathers
whatever arrives while that commit runs into the next. Each request is still
answered only after the commit that holds it; if that commit fails, every
request of the batch is answered 503 and none of them is stored. Each commit
logs one ``webhook.received`` line naming its events. The committer
lives exactly as long as :func:`serve_webhook`: the server stops taking
requests and finishes the ones it has, then the committer stores what is
queued and ends; a request it can no longer store is answered 503, never left
waiting.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import TypeAlias

import structlog
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from gateway import wire
from gateway.config import Secret
from gateway.errors import ConfigError, SignatureError, StoreError, WireError, describe
from gateway.health import Health
from gateway.intake.signature import verify
from gateway.store.inbox import Inbox, NewEvent
from gateway.timeutil import format_utc

__all__ = ["InboxCommitter", "WebhookSettings", "build_webhook_app", "serve_webhook"]

log = structlog.get_logger("gateway.webhook")

SIGNATURE_HEADER = "X-Payload-Signature"
MAX_BATCH = 512  # notifications per transaction at most


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


_PLAIN = ("", "identity")


def _refused_encoding() -> web.Response:
    """415 for a compressed body; the connection closes after it (the body is never read)."""
    resp = _reply(415, "Content-Encoding not supported; send the JSON body unencoded")
    resp.headers["Accept-Encoding"] = "identity"
    resp.force_close()
    return resp


_STORED = json.dumps({"status": 200, "message": "stored"}).encode()
_DUPLICATE = json.dumps({"status": 200, "message": "duplicate"}).encode()


def _accepted(new: bool) -> web.Response:
    """The 200 (built from bytes made once: it is the answer to nearly every request)."""
    return web.Response(body=_STORED if new else _DUPLICATE, content_type="application/json")


_Queued: TypeAlias = tuple[NewEvent, "asyncio.Future[bool]"]
"""A queued event and the future its request waits on (a tuple: built per notification)."""


class InboxCommitter:
    """Stores notifications in the inbox, many to a transaction.

    :meth:`add` queues one event and returns, once it is committed, whether it was
    new. ``async with committer.running():`` owns the task that commits.
    """

    def __init__(
        self, inbox: Inbox, *, clock: Callable[[], float] = time.time, max_batch: int = MAX_BATCH
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be positive")
        self._inbox = inbox
        self._clock = clock
        self._max_batch = max_batch
        self._queue: deque[_Queued] = deque()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping = False
        self.commits = 0
        """Transactions committed since start."""

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[InboxCommitter]:
        """Commit until the block ends, then store what is queued and stop. Cancelled
        while stopping, it stops at once: what it could not store is answered with
        StoreError (and may or may not be in the inbox; a retry is a duplicate)."""
        if self._task is not None:
            raise RuntimeError("the webhook committer is already running")
        self._stopping = False
        self._loop = asyncio.get_running_loop()  # asking for it each time costs a getpid()
        task = self._loop.create_task(self._run(), name="webhook.commit")
        self._task = task
        try:
            yield self
        finally:
            self._stopping = True
            self._wake.set()
            try:
                await asyncio.shield(task)
            except BaseException:
                task.cancel()
                await asyncio.wait([task])
                raise
            finally:
                self._task = None

    def add(self, event: NewEvent) -> asyncio.Future[bool]:
        """Queue ``event``; the future says whether it was new, once committed, or fails
        with StoreError if it was not stored. StoreError at once while shutting down."""
        if self._task is None or self._task.done() or self._stopping or self._loop is None:
            raise StoreError("the webhook is shutting down")
        done: asyncio.Future[bool] = self._loop.create_future()
        self._queue.append((event, done))
        self._wake.set()
        return done

    async def _run(self) -> None:
        try:
            while True:
                await self._wake.wait()
                batch = self._take()
                if batch:
                    await self._commit(batch)
                elif self._stopping:
                    return
        finally:
            _fail([done for _, done in self._queue], "the webhook stopped before storing this")
            self._queue.clear()

    def _take(self) -> list[_Queued]:
        take = min(len(self._queue), self._max_batch)
        batch = [self._queue.popleft() for _ in range(take)]
        if not self._queue and not self._stopping:
            self._wake.clear()
        return batch

    async def _commit(self, batch: list[_Queued]) -> None:
        events = [event for event, _ in batch]
        dones = [done for _, done in batch]
        try:
            news = await self._inbox.add_many(events, via="webhook", at=self._clock())
        except StoreError as exc:
            _fail(dones, str(exc))
            return
        except Exception as exc:  # a bug of ours: this batch is answered 503, the rest goes on
            log.error("webhook.commit_failed", error=describe(exc), notifications=len(batch))
            _fail(dones, f"could not store the event ({describe(exc)})")
            return
        except BaseException:
            _fail(dones, "the webhook stopped while storing this; it may be stored")
            raise
        self.commits += 1
        log.info(  # one line per commit: at a burst, one per notification costs a third
            "webhook.received",  # of the receiver's time; at Spark's usual pace it is one.
            count=len(batch),  # Ids only: a dict per event cost as much as the rest of it.
            events=[event.event_id for event in events],
            payload_types=Counter(event.payload_type for event in events),
            **_duplicates(events, news),
        )
        for done, new in zip(dones, news, strict=True):
            if not done.done():  # its request may have been cancelled meanwhile
                done.set_result(new)


def _duplicates(events: list[NewEvent], news: list[bool]) -> dict[str, list[str]]:
    """``duplicates``: the events of a commit that were stored before (none: no field)."""
    old = [event.event_id for event, new in zip(events, news, strict=True) if not new]
    return {"duplicates": old} if old else {}


def _fail(dones: list[asyncio.Future[bool]], message: str) -> None:
    for done in dones:
        if not done.done():
            done.set_exception(StoreError(message))


class _Receiver:
    def __init__(
        self,
        settings: WebhookSettings,
        committer: InboxCommitter,
        on_event: Callable[[str], None],
        health: Health | None = None,
    ) -> None:
        self._settings = settings
        self._committer = committer
        self._on_event = on_event
        self._health = health

    async def handle(self, request: web.Request) -> web.Response:
        """Answer one notification; its outcome is counted for the metrics."""
        response = await self._handle(request)
        if self._health is not None:
            self._health.webhook_request(_outcome(response))
        return response

    async def _handle(self, request: web.Request) -> web.Response:
        encoding = request.headers.get("Content-Encoding", "").strip().lower()
        if encoding not in _PLAIN:
            _log_refusal(request, "webhook.rejected", reason="encoding", encoding=encoding[:40])
            return _refused_encoding()
        limit = self._settings.max_body
        size = request.content_length
        if size is not None and size > limit:
            _log_refusal(request, "webhook.rejected", reason="too_large", size=size)
            return _reply(413, f"body larger than {limit} bytes")
        try:
            if request.content.is_eof():  # the whole body is here already (the usual case):
                body = request.content.read_nowait()  # taken as it is, without a copy
            else:
                async with asyncio.timeout(self._settings.read_timeout):
                    body = await request.read()
        except TimeoutError:
            _log_refusal(request, "webhook.rejected", reason="read_timeout")
            return _reply(408, "body not received in time")
        except web.HTTPRequestEntityTooLarge:
            _log_refusal(request, "webhook.rejected", reason="too_large")
            return _reply(413, f"body larger than {limit} bytes")
        except (web.RequestPayloadError, ConnectionError) as exc:
            # cut short, or framing aiohttp could not follow: the client's mistake, not ours
            detail = str(exc.__cause__ or exc) or type(exc).__name__
            _log_refusal(request, "webhook.rejected", reason="unreadable", detail=detail[:200])
            return _reply(400, "body could not be read")
        if len(body) > limit:  # chunked: no Content-Length was checked above
            _log_refusal(request, "webhook.rejected", reason="too_large", size=len(body))
            return _reply(413, f"body larger than {limit} bytes")
        try:
            verify(body, request.headers.get(SIGNATURE_HEADER), self._settings.secret.reveal())
        except SignatureError as exc:
            _log_refusal(request, "webhook.rejected", reason="signature", detail=str(exc))
            return _reply(401, str(exc))
        try:
            note, payload = wire.decode_notification(body)
        except WireError as exc:
            _log_refusal(request, "webhook.rejected", reason="shape", detail=str(exc))
            return _reply(400, str(exc))
        event = _new_event(note, payload)
        try:
            new = await self._committer.add(event)
        except StoreError as exc:
            log.error("webhook.store_failed", event_id=event.event_id, error=str(exc))
            return _reply(503, "could not store the event; retry later")
        if new:
            self._on_event(event.event_id)
        return _accepted(new)


def _new_event(note: wire.EventNotification, payload: wire.EventPayload) -> NewEvent:
    """The inbox row of a checked notification."""
    return NewEvent(
        event_id=note.event_id,
        payload_type=wire.payload_type(payload),
        created_at=format_utc(note.event_created_at_utc),
        payload=bytes(note.payload),
        notification_id=note.notification_id,
        notification_type=note.notification_type,
    )


def _log_refusal(request: web.Request, event: str, **fields: object) -> None:
    """Log a refusal with the sender's address (a misconfigured peer, a probe), looked up
    only when there is one to log (binding a logger per request was a tenth of the
    receiver's time)."""
    log.warning(event, remote=request.remote, **fields)


def _outcome(response: web.Response) -> str:
    """``stored``, ``duplicate``, ``rejected`` (the sender's fault) or ``failed`` (ours)."""
    if response.status == 200:
        return "duplicate" if response.body == _DUPLICATE else "stored"
    return "failed" if response.status >= 500 else "rejected"


def build_webhook_app(
    settings: WebhookSettings,
    committer: InboxCommitter,
    on_event: Callable[[str], None],
    health: Health | None = None,
) -> web.Application:
    """The receiver as an app; ``committer`` must be running while it serves."""
    app = web.Application(client_max_size=settings.max_body)
    receiver = _Receiver(settings, committer, on_event, health)
    app.router.add_post(settings.path, receiver.handle)
    return app


@contextlib.asynccontextmanager
async def serve_webhook(
    settings: WebhookSettings,
    inbox: Inbox,
    on_event: Callable[[str], None],
    *,
    clock: Callable[[], float] = time.time,
    health: Health | None = None,
) -> AsyncIterator[str]:
    """Serve until the context exits; yields the URL it listens on (port 0 picks one).

    On the way out the server stops listening and answers the requests it holds
    (the committer still runs), then the committer stores what is left and stops."""
    committer = InboxCommitter(inbox, clock=clock)
    app = build_webhook_app(settings, committer, on_event, health)
    async with committer.running(), _serving(app, settings) as url:
        yield url


class _BadRequestsOnOneLine(logging.Filter):
    """aiohttp logs a request it cannot parse (a bad head, bad chunking, an encoding it
    cannot decode) with a traceback before any handler runs; it has answered 400 already.
    That is the client's mistake: one ``webhook.rejected`` line instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            log.warning("webhook.rejected", reason="malformed", detail=str(exc.message)[:200])
            return False
        return True


@contextlib.asynccontextmanager
async def _serving(app: web.Application, settings: WebhookSettings) -> AsyncIterator[str]:
    runner = web.AppRunner(
        app,
        access_log=None,
        handle_signals=False,
        shutdown_timeout=5.0,
        # aiohttp (>= 3.14.4) closes a connection that has not sent a whole request head
        # this long after it opened or after its last answer: the deadline for headers.
        keepalive_timeout=settings.read_timeout,
        # a body the handler did not read (refused for its size or encoding) is not drained:
        # the connection closes instead, so a compressed body is never inflated on the loop
        lingering_time=0,
    )
    await runner.setup()
    one_line = _BadRequestsOnOneLine()
    logging.getLogger("aiohttp.server").addFilter(one_line)
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
        logging.getLogger("aiohttp.server").removeFilter(one_line)
