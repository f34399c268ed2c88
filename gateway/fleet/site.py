"""The site's link to its hub: events in from the broker, reports out through it.

A site in hub mode (``[upstream] mode = "hub"``) holds no Spark credentials. Two pieces
replace the webhook, the poller and the API client:

* :class:`SiteLink` owns the broker connection (a persistent session whose client id is
  the site id; ``online`` retained on its ``status`` topic, ``offline`` its will). Each
  message on ``.../events`` is stored in the inbox (``received_via = 'hub'``) exactly as a
  polled event is (a bad one quarantined and logged with its id) and acknowledged to the
  broker only after the commit (manual PUBACK); a repeat is a duplicate and changes
  nothing. A store failure drops the connection without the PUBACK, so the broker hands
  the event again after the reconnect. Each message on ``.../acks`` goes to the
  :class:`HubUpstream`. A lost connection is retried with backoff for as long as the
  link lives; a fatal error (:data:`gateway.supervise.FATAL`: a broken database) ends
  the link and goes to ``on_fatal``.
* :class:`HubUpstream` is the deliverer's transport: ``post_report`` publishes a
  :class:`~gateway.fleet.messages.SiteReport` (QoS 1, after the broker's PUBACK) and waits
  up to ``answer_timeout`` (the whole attempt) for the hub's
  :class:`~gateway.fleet.messages.HubAck` with the same ``(eventId, kind)``. ``delivered``
  is a 2xx result with Spark's report id; ``rejected`` is the ack's 4xx (422 if it names
  none), so the row goes dead with the reason; no answer in time, or no broker, is
  :class:`~gateway.errors.UpstreamUnavailable`, so the row is retried with the usual
  backoff. An answer that arrives while nobody waits for it is kept (the newest
  :data:`KEPT_ANSWERS`) for the next attempt of that report, if this site published that
  report and has had no answer to it yet; any other answer (to a report another client
  sent with the site's credentials, or to an attempt before a restart) is dropped: it
  must not decide a report the site has not sent, and a report the site sends again is
  answered again.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Self

import aiomqtt
import msgspec
import structlog

from gateway import wire
from gateway.backoff import Backoff
from gateway.config import Config, UpstreamConfig
from gateway.delivery.api import PostResult
from gateway.errors import BrokerError, StoreError, UpstreamUnavailable, WireError, describe
from gateway.fleet import broker
from gateway.fleet.messages import HubAck, SiteReport, decode_ack, encode_message
from gateway.fleet.topics import OFFLINE, ONLINE, Topics
from gateway.intake.poller import QUARANTINED, to_new_event
from gateway.store.inbox import Inbox
from gateway.supervise import FATAL

__all__ = [
    "KEPT_ANSWERS",
    "HubUpstream",
    "SiteLink",
    "hub_upstream",
    "result_of",
    "site_link",
]

log = structlog.get_logger("gateway.fleet.site")

KEPT_ANSWERS = 1024
"""Answers kept for reports nobody is waiting for, and reports published and not yet
answered (the oldest of each is dropped first)."""
GOODBYE_TIMEOUT = 2.0  # seconds for the ``offline`` publish at a clean stop
DEFAULT_REJECTION = 422  # a rejection that names no 4xx status
RECONNECT_INITIAL, RECONNECT_MAX = 1.0, 30.0  # seconds between connection attempts
_FATAL = tuple(kind for kind, _ in FATAL)

Publish = Callable[[str, bytes], Awaitable[None]]
"""Publish ``payload`` to ``topic`` at QoS 1 and return after the broker's PUBACK."""

Connect = Callable[[], contextlib.AbstractAsyncContextManager[aiomqtt.Client]]
"""Opens one broker connection: persistent session, client id = site id, manual PUBACK,
the site's will set (:func:`gateway.fleet.broker.connect`)."""

Ack = Callable[[aiomqtt.Client, aiomqtt.Message], object]
"""Sends the PUBACK of one message received with manual acknowledgement
(:func:`gateway.fleet.broker.ack`)."""


def result_of(ack: HubAck) -> PostResult:
    """What the deliverer makes of the hub's answer (pure)."""
    if ack.outcome == "delivered":
        return PostResult(
            status=200, body="delivered by the hub", report_id=ack.report_id, retry_after=None
        )
    status = ack.status if ack.status is not None and 400 <= ack.status < 500 else None
    reason = ack.reason or "no reason given"
    if status is None:
        reason = f"rejected by the hub (status {ack.status}): {reason}"
    return PostResult(
        status=status or DEFAULT_REJECTION, body=reason, report_id=None, retry_after=None
    )


class HubUpstream:
    """The deliverer's transport through the hub (see the module docstring).

    The link tells it when a connection is up (:meth:`use`) and hands it every answer
    (:meth:`hear`); without a connection an attempt fails at once as unavailable.
    """

    def __init__(
        self, *, topic: str, answer_timeout: float, kept_answers: int = KEPT_ANSWERS
    ) -> None:
        self._topic = topic
        self._answer_timeout = answer_timeout
        self._kept_max = kept_answers
        self._publish: Publish | None = None
        self._waiting: dict[tuple[str, str], asyncio.Future[HubAck]] = {}
        self._kept: collections.OrderedDict[tuple[str, str], HubAck] = collections.OrderedDict()
        self._asked: collections.OrderedDict[tuple[str, str], None] = collections.OrderedDict()
        """Reports published and not yet answered: the only answers worth keeping."""

    def use(self, publish: Publish | None) -> None:
        """The connection's publish (None: the broker is not connected)."""
        self._publish = publish

    def hear(self, ack: HubAck) -> None:
        """An answer from the hub: to whoever waits for it, else kept for the next attempt
        of a report published and not yet answered, else dropped."""
        key = (ack.event_id, ack.kind)
        waiter = self._waiting.get(key)
        if waiter is not None and not waiter.done():
            waiter.set_result(ack)
            return
        if key not in self._asked:
            log.warning(
                "site_link.answer_unasked",
                event_id=ack.event_id,
                kind=ack.kind,
                outcome=ack.outcome,
                note="no report of this site waits for it: dropped",
            )
            return
        self._kept[key] = ack
        self._kept.move_to_end(key)
        while len(self._kept) > self._kept_max:
            self._kept.popitem(last=False)

    @property
    def kept(self) -> int:
        """Answers held for a next attempt."""
        return len(self._kept)

    async def post_report(self, body: bytes, *, idempotency_key: str) -> PostResult:
        """Publish one frozen report and wait for the hub's answer.

        ``idempotency_key`` is not sent: the hub knows a report by its site, event id and
        kind, and sends it to Spark under its own key."""
        del idempotency_key
        try:
            request = wire.decode_report_request(body)
        except WireError as exc:  # the site froze it itself: only a bug gets here
            return PostResult(
                status=DEFAULT_REJECTION, body=str(exc), report_id=None, retry_after=None
            )
        key = (request.event_id, wire.report_kind(request))
        kept = self._kept.pop(key, None)
        if kept is not None:
            self._asked.pop(key, None)
            return result_of(kept)
        publish = self._publish
        if publish is None:
            raise UpstreamUnavailable("the hub's broker is not connected")
        message = encode_message(SiteReport(event_id=key[0], kind=key[1], body=msgspec.Raw(body)))
        waiter: asyncio.Future[HubAck] = asyncio.get_running_loop().create_future()
        self._waiting[key] = waiter
        self._ask(key)  # before the publish: a publish that fails may still have arrived
        try:
            async with asyncio.timeout(self._answer_timeout):
                await publish(self._topic, message)
                ack = await waiter
        except TimeoutError:
            raise UpstreamUnavailable(
                f"no answer from the hub within {self._answer_timeout:g}s"
            ) from None
        finally:
            if self._waiting.get(key) is waiter:
                del self._waiting[key]
        self._asked.pop(key, None)
        return result_of(ack)

    def _ask(self, key: tuple[str, str]) -> None:
        self._asked[key] = None
        self._asked.move_to_end(key)
        while len(self._asked) > self._kept_max:
            self._asked.popitem(last=False)


class SiteLink:
    """``async with SiteLink(...):`` keeps the site connected to its broker until the block
    ends (see the module docstring). ``connected`` is set while a connection is up and
    subscribed."""

    def __init__(
        self,
        *,
        site_id: str,
        topics: Topics,
        connect: Connect,
        ack: Ack,
        inbox: Inbox,
        on_event: Callable[[str], None],
        upstream: HubUpstream,
        clock: Callable[[], float] = time.time,
        backoff: Backoff | None = None,
        on_fatal: Callable[[BaseException], None] | None = None,
    ) -> None:
        self._site_id = site_id
        self._on_fatal = on_fatal
        self._events = topics.events(site_id)
        self._acks = topics.acks(site_id)
        self._status = topics.status(site_id)
        self._connect = connect
        self._ack = ack
        self._inbox = inbox
        self._on_event = on_event
        self._upstream = upstream
        self._clock = clock
        self._backoff = backoff or Backoff(RECONNECT_INITIAL, RECONNECT_MAX)
        self._client: aiomqtt.Client | None = None
        self._task: asyncio.Task[None] | None = None
        self.connected = asyncio.Event()

    async def __aenter__(self) -> Self:
        self._task = asyncio.create_task(self._run(), name=f"site-link:{self._site_id}")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        client = self._client
        if client is not None:  # a clean stop says so; the will is for an unclean one
            with contextlib.suppress(aiomqtt.MqttError, TimeoutError):
                async with asyncio.timeout(GOODBYE_TIMEOUT):
                    await client.publish(self._status, OFFLINE, qos=1, retain=True)
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        while True:
            try:
                await self._session()
            except _FATAL as exc:  # a broken database: the gateway stops (gateway.supervise)
                log.error("site_link.fatal", error=describe(exc))
                if self._on_fatal is None:
                    raise
                self._on_fatal(exc)
                return
            except BrokerError as exc:
                log.warning("site_link.disconnected", error=str(exc), reason=exc.reason)
            except StoreError as exc:  # not acknowledged: the broker hands it again
                log.error("site_link.store_failed", error=str(exc))
            except Exception:  # a bug: logged, and the link tries again (as a supervisor would)
                log.exception("site_link.failed")
            await asyncio.sleep(self._backoff.next())

    async def _session(self) -> None:
        """One connection, from CONNACK until it breaks."""
        try:
            async with self._connect() as client:
                before = broker.cancel_requests()
                await client.subscribe(self._events, qos=1)
                await client.subscribe(self._acks, qos=1)
                broker.raise_dropped_cancellation(before)
                await client.publish(self._status, ONLINE, qos=1, retain=True)
                self._client = client
                self._upstream.use(_publisher(client))
                self.connected.set()
                self._backoff.reset()
                log.info("site_link.connected", site_id=self._site_id)
                async for message in client.messages:
                    await self._take(client, message)
        finally:
            self._client = None
            self._upstream.use(None)
            self.connected.clear()

    async def _take(self, client: aiomqtt.Client, message: aiomqtt.Message) -> None:
        """Handle one message, then acknowledge it (a StoreError leaves it unacknowledged)."""
        raw = message.payload if isinstance(message.payload, bytes | bytearray) else b""
        topic = message.topic.value
        if topic == self._events:
            await self._store_event(bytes(raw))
        elif topic == self._acks:
            self._hear(bytes(raw))
        else:
            log.warning("site_link.unexpected_topic", topic=topic[:200])
        self._ack(client, message)

    async def _store_event(self, raw: bytes) -> None:
        event = to_new_event(raw)
        new = await self._inbox.add(event, via="hub", at=self._clock())
        if not new:
            log.info("site_link.event_duplicate", event_id=event.event_id)
        elif event.plan_state == QUARANTINED:
            log.warning(
                "site_link.event_quarantined", event_id=event.event_id, reason=event.plan_note
            )
        else:
            log.info(
                "site_link.event_received", event_id=event.event_id, payload_type=event.payload_type
            )
            self._on_event(event.event_id)

    def _hear(self, raw: bytes) -> None:
        try:
            ack = decode_ack(raw)
        except WireError as exc:
            log.warning("site_link.bad_ack", error=str(exc))
            return
        log.info(
            "site_link.answer",
            event_id=ack.event_id,
            kind=ack.kind,
            outcome=ack.outcome,
            report_id=ack.report_id,
        )
        self._upstream.hear(ack)


def _publisher(client: aiomqtt.Client) -> Publish:
    """Publish at QoS 1 through ``client``, its errors as UpstreamUnavailable."""

    async def publish(topic: str, payload: bytes) -> None:
        try:
            await client.publish(topic, payload, qos=1)
        except aiomqtt.MqttError as exc:
            raise UpstreamUnavailable(f"publish to the hub's broker: {describe(exc)}") from exc

    return publish


# --- from the config (the composition root's entry) ---------------------------------------


def hub_upstream(upstream: UpstreamConfig) -> HubUpstream:
    topics = Topics(prefix=upstream.prefix)
    return HubUpstream(
        topic=topics.reports(upstream.site_id), answer_timeout=float(upstream.answer_timeout)
    )


def site_link(
    config: Config,
    *,
    inbox: Inbox,
    on_event: Callable[[str], None],
    upstream: HubUpstream,
    clock: Callable[[], float] = time.time,
    on_fatal: Callable[[BaseException], None] | None = None,
) -> SiteLink:
    """The link ``[upstream]`` describes (``config.upstream`` must be set)."""
    table = config.upstream
    assert table is not None  # the caller runs a site only with [upstream]
    topics = Topics(prefix=table.prefix)
    settings = broker.site_settings(config)  # a TLS file that does not load: ConfigError now
    will = broker.site_will(topics, table.site_id)

    def connect() -> contextlib.AbstractAsyncContextManager[aiomqtt.Client]:
        return broker.connect(settings, will=will)

    return SiteLink(
        site_id=table.site_id,
        topics=topics,
        connect=connect,
        ack=broker.ack,
        inbox=inbox,
        on_event=on_event,
        upstream=upstream,
        clock=clock,
        on_fatal=on_fatal,
    )
