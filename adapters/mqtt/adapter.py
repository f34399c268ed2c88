"""The MQTT push adapter: subscribe to a device's topics and yield its readings.

Lifetime::

    async with MqttAdapter("plug", config) as adapter:   # connect + subscribe, or AdapterLoadError
        async for batch in adapter.stream():               # until cancelled; reconnects on its own
            ...
                                                           # __aexit__: DISCONNECT, bounded

Data path::

    paho socket callbacks ──▶ inbox (one per adapter, outlives connections) ──▶ stream()
                                                                                   │ Decoder,
                                                                                   │ SwitchState
                                                                                   ▼ readings

Control (device profiles only): ``apply("switch", 0|1)`` publishes one command, QoS 1, on
the current connection (AdapterError when there is none: no command waits for a reconnect,
the runtime retries); ``state("switch")`` is what the device last reported, as taken by
``stream()``. See :mod:`adapters.mqtt.switches`.

paho acknowledges a QoS 1 message as soon as aiomqtt queues it, so the queue
aiomqtt fills is the adapter's own inbox: a message acknowledged on a
connection that then drops is still decoded. A per-connection watcher puts a
``_Lost`` marker in the same inbox when its connection drops; ``stream()``
then reconnects after ``gateway.Backoff`` (capped, equal jitter) and subscribes again (a broker
restarted without persistence has forgotten our session). The session itself
is persistent (``clean_session=False``, a stable client id), so a broker
that stays up queues QoS 1 messages for us while we are away.

aiomqtt and paho exceptions stop here: they become AdapterLoadError when the
first connection fails, a logged ``mqtt.reconnect_failed`` afterwards, and
AdapterError from ``apply``.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import ssl
import time
from collections.abc import AsyncGenerator, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from types import TracebackType
from typing import ClassVar, Self

import aiomqtt
import structlog
from paho.mqtt.reasoncodes import ReasonCode
from structlog.typing import FilteringBoundLogger

from adapters.mqtt.config import MqttConfig
from adapters.mqtt.profiles import Decoder, build_profile
from adapters.mqtt.switches import SwitchState, build_switch
from gateway import (
    SWITCH,
    AdapterConfig,
    AdapterError,
    AdapterLoadError,
    Backoff,
    Channel,
    Control,
    ControlKind,
    ControlState,
    Reading,
)

__all__ = ["LogThrottle", "MqttAdapter", "default_client_id"]

_QOS = 1
_AIOMQTT_TIMEOUT = "Operation timed out"  # aiomqtt's MqttError text when CONNACK/SUBACK is late
_ERRNO = re.compile(r"^\[Errno -?\d+\]\s*")
_SSL_SOURCE = re.compile(r"\s*\(_ssl\.c:\d+\)$")


def default_client_id(name: str) -> str:
    """``ecgw-<name>``, made safe for brokers; stable, so the broker keeps our session.

    Two gateways that share a broker and an adapter name must set ``client_id``.
    """
    slug = re.sub(r"[^A-Za-z0-9_-]", "-", name)[:48]
    if slug != name:
        slug += "-" + hashlib.blake2s(name.encode(), digest_size=3).hexdigest()
    return f"ecgw-{slug}"


class LogThrottle:
    """Whether to log a recurring problem now: the first time per key, then once per interval.

    :meth:`hit` returns how many occurrences the log line should report (all
    since the last line), or None to stay quiet.
    """

    def __init__(self, interval: float = 60.0) -> None:
        self.interval = interval
        self._logged_at: dict[str, float] = {}
        self._unlogged: dict[str, int] = {}

    def hit(self, key: str, now: float) -> int | None:
        count = self._unlogged.get(key, 0) + 1
        logged_at = self._logged_at.get(key)
        if logged_at is not None and now - logged_at < self.interval:
            self._unlogged[key] = count
            return None
        self._logged_at[key] = now
        self._unlogged[key] = 0
        return count


class _PahoErrors(logging.Handler):
    """The last error paho logged: its only report of a failure between the TLS handshake
    and CONNACK (a refused client certificate, say), which aiomqtt turns into a timeout."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.last: str | None = None

    def emit(self, record: logging.LogRecord) -> None:
        self.last = record.getMessage()


class _LinkFailed(Exception):
    """A connection could not be opened; ``reason`` is one line for an operator."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


@dataclass(eq=False)
class _Link:
    """One connection: its client (owned by ``stack``) and the task that watches it."""

    client: aiomqtt.Client
    stack: AsyncExitStack
    opened_at: float
    watcher: asyncio.Task[None] | None = field(default=None)


@dataclass(frozen=True, slots=True)
class _Arrived:
    received_at: float
    message: aiomqtt.Message


@dataclass(frozen=True, slots=True)
class _Lost:
    link: _Link
    reason: str


_Item = _Arrived | _Lost


def _inbox_queue(inbox: asyncio.Queue[_Item]) -> type[asyncio.Queue[aiomqtt.Message]]:
    """A queue class for aiomqtt whose instances hand every message to ``inbox``."""

    class _ToInbox(asyncio.Queue[aiomqtt.Message]):
        def put_nowait(self, item: aiomqtt.Message) -> None:
            inbox.put_nowait(_Arrived(time.time(), item))

    return _ToInbox


class MqttAdapter:
    """Push adapter for devices that publish their meters over MQTT (see the module doc).

    With a device profile it is also a controllable adapter: one ``switch`` control,
    commanded by :meth:`apply` and reported by :meth:`state` (formats and rules in
    :mod:`adapters.mqtt.switches`). Reports are taken as :meth:`stream` takes its
    messages, so ``state`` follows the device while the stream is being read.

    Counters for monitoring: ``message_count`` (messages decoded),
    ``malformed_count`` (payloads that are not JSON), ``dropped_count``
    (samples not emitted: repeats, stale or retained without a device time).
    """

    Config: ClassVar[type[AdapterConfig]] = MqttConfig

    def __init__(self, name: str, config: MqttConfig) -> None:
        self.name = name
        self.config = config
        self.client_id = config.client_id or default_client_id(name)
        self.message_count = 0
        self.malformed_count = 0
        self.dropped_count = 0
        self._broker = config.broker
        self._decoder = Decoder(build_profile(config))
        family = build_switch(config, self.client_id)
        self._switch = (
            None
            if family is None
            else SwitchState(family, first_request_id=time.time_ns() // 1_000_000)
        )
        self._switch_control = Control(SWITCH, ControlKind.SWITCH)
        self._timeout = (
            float(config.read_timeout)
            if config.read_timeout is not None
            else min(float(config.poll_interval), 30.0)
        )
        self._backoff = Backoff(initial=0.5, maximum=30.0)  # reconnect delays
        self._malformed_log = LogThrottle()
        self._notes_logged: set[str] = set()
        self._tls: ssl.SSLContext | None = None
        self._inbox: asyncio.Queue[_Item] | None = None
        self._link: _Link | None = None
        self._log: FilteringBoundLogger = structlog.get_logger(__name__).bind(adapter=name)
        # paho logs through this (WARNING and up reach the gateway's handlers as usual)
        self._paho_log = logging.getLogger("adapters.mqtt.paho").getChild(name)
        self._paho_log.setLevel(logging.WARNING)
        self._paho_errors = _PahoErrors()

    def channels(self) -> Sequence[Channel]:
        return self._decoder.profile.channels

    @property
    def topics(self) -> tuple[str, ...]:
        """What we subscribe to: the profile's reading topics, then the switch's report topics."""
        topics = self._decoder.profile.topics
        if self._switch is not None:
            topics += tuple(t for t in self._switch.topics if t not in topics)
        return topics

    @property
    def connected(self) -> bool:
        return self._link is not None

    async def __aenter__(self) -> Self:
        if self._inbox is not None:
            raise RuntimeError(f"adapter {self.name!r} is already open")
        if self._broker.tls:
            self._tls = await asyncio.to_thread(self._tls_context)
        self._inbox = asyncio.Queue()
        self._paho_log.addHandler(self._paho_errors)
        try:
            self._link = await self._open_link()
        except _LinkFailed as exc:
            self._inbox = None
            self._paho_log.removeHandler(self._paho_errors)
            raise AdapterLoadError(exc.reason, adapter=self.name) from exc.__cause__
        self._log.info("mqtt.connected", broker=self._broker.url, client_id=self.client_id)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        link, self._link, self._inbox = self._link, None, None
        if link is not None:
            await self._close_link(link)
            self._log.info("mqtt.disconnected", broker=self._broker.url)
        self._paho_log.removeHandler(self._paho_errors)

    async def stream(self) -> AsyncGenerator[Sequence[Reading], None]:
        """Batches of readings as messages arrive; reconnects as needed; ends when cancelled."""
        inbox = self._inbox
        if inbox is None:
            raise RuntimeError(f"adapter {self.name!r}: use stream() inside `async with adapter`")
        while True:
            if self._link is None:
                await self._reconnect()
            items = [await inbox.get()]
            while not inbox.empty():
                items.append(inbox.get_nowait())
            readings = await self._take(items)
            if readings:
                yield readings

    # -- control ------------------------------------------------------------------------------

    def controls(self) -> Sequence[Control]:
        return () if self._switch is None else (self._switch_control,)

    async def apply(self, control: str, value: float) -> None:
        """Publish one on/off command (QoS 1, bounded by ``read_timeout``).

        Returning means the broker has it, not that the device obeyed: :meth:`state` tells.
        """
        switch = self._switch_named(control)
        try:
            on = self._switch_control.check(value) == 1.0
        except ValueError as exc:
            raise AdapterError(str(exc), adapter=self.name) from exc
        link = self._link
        if link is None:
            raise AdapterError("not connected", adapter=self.name)
        command = switch.command(on)
        try:
            await link.client.publish(
                command.topic, command.payload, qos=_QOS, timeout=self._timeout
            )
        except (aiomqtt.MqttError, OSError) as exc:
            raise AdapterError(
                f"cannot send {command.topic} to {self._broker.url}: {_clean(str(exc))}",
                adapter=self.name,
            ) from exc
        self._log.info("mqtt.command_sent", control=control, value=int(on), topic=command.topic)

    async def state(self, control: str) -> ControlState | None:
        """What the device last reported; AdapterError if it refused the last command."""
        switch = self._switch_named(control)
        if switch.refusal is not None:
            raise AdapterError(
                f"the device refused the last {control} command: {switch.refusal}",
                adapter=self.name,
            )
        return switch.state

    def _switch_named(self, control: str) -> SwitchState:
        if self._switch is None or control != SWITCH:
            known = [c.name for c in self.controls()]
            raise AdapterError(f"no control {control!r} (controls: {known})", adapter=self.name)
        return self._switch

    # -- messages -----------------------------------------------------------------------------

    async def _take(self, items: list[_Item]) -> list[Reading]:
        readings: list[Reading] = []
        for item in items:
            if isinstance(item, _Arrived):
                readings.extend(self._decode(item))
            elif item.link is self._link:
                await self._drop_link(item)
        return readings

    def _decode(self, item: _Arrived) -> list[Reading]:
        message = item.message
        topic = message.topic.value
        decoded = self._decoder.decode(
            topic, message.payload, retained=message.retain, received_at=item.received_at
        )
        if self._switch is not None:
            self._switch.receive(
                topic, message.payload, retained=message.retain, received_at=item.received_at
            )
        self.message_count += 1
        self.dropped_count += decoded.dropped
        if decoded.malformed is not None:
            self.malformed_count += 1
            count = self._malformed_log.hit(topic, time.monotonic())
            if count is not None:
                self._log.warning(
                    "mqtt.malformed_payload",
                    topic=topic,
                    count=count,
                    error=decoded.malformed,
                    payload_head=message.payload[:64].decode("utf-8", "backslashreplace"),
                )
        if decoded.note is not None and decoded.note not in self._notes_logged:
            self._notes_logged.add(decoded.note)
            self._log.warning("mqtt.value_not_taken", topic=topic, reason=decoded.note)
        return decoded.readings

    # -- connections --------------------------------------------------------------------------

    async def _reconnect(self) -> None:
        while self._link is None:
            delay = self._backoff.next()
            await asyncio.sleep(delay)
            try:
                self._link = await self._open_link()
            except _LinkFailed as exc:
                self._log.warning(
                    "mqtt.reconnect_failed", reason=exc.reason, waited=round(delay, 2)
                )
        self._log.info("mqtt.reconnected", broker=self._broker.url)

    async def _drop_link(self, lost: _Lost) -> None:
        self._link = None
        if time.monotonic() - lost.link.opened_at >= self._backoff.maximum:
            self._backoff.reset()
        self._log.warning("mqtt.connection_lost", broker=self._broker.url, reason=lost.reason)
        await self._close_link(lost.link)

    async def _open_link(self) -> _Link:
        """Connect and subscribe. aiomqtt bounds CONNACK and SUBACK by ``self._timeout``
        each and paho the TCP connect by 5 s; the outer deadline only guards against
        the unforeseen (a hung DNS lookup), as cancelling aiomqtt mid-connect leaves its
        client unusable and its socket to the garbage collector."""
        stack = AsyncExitStack()
        self._paho_errors.last = None
        try:
            async with asyncio.timeout(2 * self._timeout + 10.0):
                client = await stack.enter_async_context(self._client())
                await self._subscribe(client)
        except Exception as exc:
            await self._close_stack(stack)
            if isinstance(exc, _LinkFailed):
                raise
            raise _LinkFailed(self._describe(exc)) from exc
        except BaseException:
            await self._close_stack(stack)
            raise
        link = _Link(client, stack, opened_at=time.monotonic())
        link.watcher = asyncio.create_task(self._watch(link), name=f"mqtt-watch-{self.name}")
        return link

    def _client(self) -> aiomqtt.Client:
        assert self._inbox is not None
        return aiomqtt.Client(
            self._broker.host,
            self._broker.port,
            username=self.config.username,
            password=self.config.password,
            identifier=self.client_id,
            queue_type=_inbox_queue(self._inbox),
            clean_session=False,
            timeout=self._timeout,
            keepalive=max(1, round(float(self.config.keepalive))),
            tls_context=self._tls,
            logger=self._paho_log,
        )

    async def _subscribe(self, client: aiomqtt.Client) -> None:
        topics = self.topics
        codes = await client.subscribe([(topic, _QOS) for topic in topics])
        refused = [topic for topic, code in zip(topics, codes, strict=True) if _failed(code)]
        if refused:
            raise _LinkFailed(f"{self._broker.url} refused the subscription to {refused}")

    async def _watch(self, link: _Link) -> None:
        """Wait until the connection drops, then say so in the inbox.

        aiomqtt's message iterator raises MqttError when its client disconnects;
        it yields nothing here, as every message goes straight to the inbox.
        """
        assert self._inbox is not None
        inbox = self._inbox
        try:
            async for _ in link.client.messages:
                pass
        except Exception as exc:  # MqttError on disconnect; anything else ends the link too
            cause = exc.__cause__
            inbox.put_nowait(_Lost(link, _clean(str(cause if cause is not None else exc))))

    async def _close_link(self, link: _Link) -> None:
        if link.watcher is not None:
            link.watcher.cancel()
            await asyncio.wait([link.watcher])
        await self._close_stack(link.stack)

    async def _close_stack(self, stack: AsyncExitStack) -> None:
        """Disconnect, bounded; a failure to say goodbye is only worth a debug line."""
        try:
            async with asyncio.timeout(self._timeout):
                await stack.aclose()
        except (aiomqtt.MqttError, OSError, TimeoutError) as exc:
            self._log.debug("mqtt.disconnect_failed", reason=_clean(str(exc)))

    def _describe(self, exc: Exception) -> str:
        url = self._broker.url
        rc = getattr(exc, "rc", None)
        if isinstance(exc, aiomqtt.MqttCodeError) and isinstance(rc, ReasonCode):
            return f"{url} refused the connection: {rc}"
        timed_out = isinstance(exc, TimeoutError) or str(exc) == _AIOMQTT_TIMEOUT
        if timed_out and self._paho_errors.last is not None:
            return f"cannot connect to {url}: {_clean(self._paho_errors.last)}"
        if timed_out:
            return f"no answer from {url} within {self._timeout:g} s"
        return f"cannot connect to {url}: {_clean(str(exc)) or type(exc).__name__}"

    def _tls_context(self) -> ssl.SSLContext:
        """The TLS context for mqtts://; AdapterLoadError naming the key of a file that fails."""
        config = self.config
        try:
            context = ssl.create_default_context(cafile=config.ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise AdapterLoadError(
                f"ca_file: cannot load {config.ca_file!r}: {_clean(str(exc))}", adapter=self.name
            ) from exc
        if config.cert_file is not None:
            try:
                context.load_cert_chain(config.cert_file, config.key_file)
            except (OSError, ssl.SSLError) as exc:
                raise AdapterLoadError(
                    f"cert_file/key_file: cannot load {config.cert_file!r}: {_clean(str(exc))}",
                    adapter=self.name,
                ) from exc
        return context


def _failed(code: object) -> bool:
    """A SUBACK code that refuses the subscription (0x80 and up, in MQTT 3.1.1 and 5)."""
    value = code.value if isinstance(code, ReasonCode) else code
    return isinstance(value, int) and value >= 0x80


def _clean(text: str) -> str:
    """An exception's text without ``[Errno N]`` and ``(_ssl.c:N)`` noise."""
    return _SSL_SOURCE.sub("", _ERRNO.sub("", text.strip()))
