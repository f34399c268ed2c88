"""The connection to the fleet's MQTT broker, for the hub (``[hub]``) and a site (``[upstream]``).

    settings = hub_settings(config)            # or site_settings(config)
    async with connect(settings, will=site_will(topics, site_id)) as client:
        await client.subscribe(topic, qos=1)
        async for message in client.messages:
            ...commit it...
            ack(client, message)               # only now does the broker forget it

* **MQTT 3.1.1**, not 5: with ``clean_session = false`` a 3.1.1 session lasts until the
  broker expires it, which is what a site away for a night needs; MQTT 5 would need a
  Session Expiry Interval on every connect (0, the default, ends the session at the
  disconnect and silently drops what was queued). Shared subscriptions
  (``$share/<group>/...``) work for 3.1.1 clients in Mosquitto, EMQX, VerneMQ and HiveMQ.
* **Persistent session**: a fixed client id (the hub's ``client_id``, the site's
  ``site_id``) and ``clean_session = false``, so QoS 1 messages published while a receiver
  is away wait in the broker.
* **Manual PUBACK**: paho acknowledges a QoS 1 message as soon as aiomqtt queues it, before
  anyone stored it; :func:`connect` turns that off (before the CONNECT, so a backlog the
  broker sends at once is covered too) and :func:`ack` sends the PUBACK after the commit.
  A message not acknowledged before the connection drops is delivered again.
* **Errors**: every aiomqtt/paho/ssl failure leaves as :class:`~gateway.errors.BrokerError`,
  one line naming ``host:port`` and the reason (refused credentials, TLS, unreachable).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiomqtt
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.reasoncodes import ReasonCode

from gateway.config import Config, HubConfig, Secret, UpstreamConfig
from gateway.config_rules import parse_broker_url
from gateway.errors import BrokerError, ConfigError
from gateway.fleet.topics import OFFLINE, Topics

__all__ = [
    "BrokerSettings",
    "ack",
    "cancel_requests",
    "connect",
    "raise_dropped_cancellation",
    "enable_manual_ack",
    "hub_settings",
    "site_settings",
    "site_will",
    "tls_context",
]

KEEPALIVE = 30
"""Seconds between pings: the broker publishes a site's will (``offline``) when it has
heard nothing for 1.5 times this."""
TIMEOUT = 10.0
"""Seconds the broker has to answer a CONNECT, SUBSCRIBE or PUBLISH."""
MAX_INFLIGHT = 100
"""QoS 1 messages sent and not yet acknowledged by the broker, per connection."""

_ERRNO = re.compile(r"^\[Errno -?\d+\]\s*")
_SSL_SOURCE = re.compile(r"\s*\(_ssl\.c:\d+\)$")
DISCONNECT_TIMEOUT = 5.0  # seconds a closing connection may take to say goodbye
_TIMED_OUT = "Operation timed out"  # aiomqtt's MqttError text when CONNACK/SUBACK is late


@dataclass(frozen=True, slots=True)
class BrokerSettings:
    host: str
    port: int
    tls: ssl.SSLContext | None
    username: str | None
    password: Secret | None
    client_id: str
    clean_session: bool = False
    keepalive: int = KEEPALIVE
    timeout: float = TIMEOUT
    max_inflight: int = MAX_INFLIGHT

    @property
    def address(self) -> str:
        """``host:port`` (IPv6 in brackets), for messages."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def tls_context(
    section: str, ca_file: str | None, cert_file: str | None, key_file: str | None
) -> ssl.SSLContext:
    """A client TLS context: the broker's certificate checked against ``ca_file`` (or the
    system's CAs), and a client certificate if given. ConfigError naming the key."""
    try:
        context = ssl.create_default_context(cafile=ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"cannot load {ca_file!r}: {_clean(exc)}", key=f"{section}.ca_file"
        ) from None
    if cert_file is not None:
        try:
            context.load_cert_chain(cert_file, key_file)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                f"cannot load {cert_file!r} with {key_file!r}: {_clean(exc)}",
                key=f"{section}.client_cert_file",
            ) from None
    return context


def _settings(
    table: HubConfig | UpstreamConfig,
    section: str,
    *,
    username: str | None,
    password: Secret | None,
    client_id: str,
) -> BrokerSettings:
    host, port, tls = parse_broker_url(table.url)  # checked when the config loaded
    context = None
    if tls:
        context = tls_context(section, table.ca_file, table.client_cert_file, table.client_key_file)
    return BrokerSettings(host, port, context, username, password, client_id)


def hub_settings(config: Config) -> BrokerSettings:
    """The hub's connection, from ``[hub]``. ConfigError if there is none or a TLS file
    does not load."""
    hub = config.hub
    if hub is None:
        raise ConfigError("the [hub] table is required to run the hub", key="hub")
    return _settings(
        hub, "hub", username=hub.username, password=config.hub_password, client_id=hub.client_id
    )


def site_settings(config: Config) -> BrokerSettings:
    """A site's connection, from ``[upstream]``: its site id is its user name and client id."""
    upstream = config.upstream
    if upstream is None:
        raise ConfigError("the [upstream] table is required", key="upstream")
    return _settings(
        upstream,
        "upstream",
        username=upstream.site_id,
        password=config.upstream_password,
        client_id=upstream.site_id,
    )


def site_will(topics: Topics, site_id: str) -> aiomqtt.Will:
    """``offline`` on the site's status topic (QoS 1, retained): what the broker publishes
    for a site whose connection ends without a DISCONNECT."""
    return aiomqtt.Will(topics.status(site_id), OFFLINE, qos=1, retain=True)


# --- the private paho access, in one place ---------------------------------------------------
# aiomqtt 2.5 has no public API for acknowledging a message after it was handled. Its paho
# client (``Client._client``, paho-mqtt 2.2) has ``manual_ack_set`` and ``ack(mid, qos)``.
# tests/test_fleet_broker.py proves both against a real Mosquitto: a message not acked
# before a disconnect is delivered again, an acked one is not.


def enable_manual_ack(client: aiomqtt.Client) -> None:
    """From now on paho does not PUBACK a QoS 1 message by itself: :func:`ack` does.
    Before the CONNECT (as :func:`connect` does) to cover a session's backlog."""
    client._client.manual_ack_set(True)


def ack(client: aiomqtt.Client, message: aiomqtt.Message) -> bool:
    """PUBACK ``message`` (a no-op for QoS 0). False if it could not be sent (the
    connection is gone): the broker then delivers the message again."""
    code = client._client.ack(message.mid, message.qos)
    return code == MQTTErrorCode.MQTT_ERR_SUCCESS


# --- connecting ----------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def connect(
    settings: BrokerSettings, *, will: aiomqtt.Will | None = None, manual_ack: bool = True
) -> AsyncIterator[aiomqtt.Client]:
    """A connected aiomqtt client (MQTT 3.1.1, persistent session, manual PUBACK unless
    ``manual_ack`` is False), disconnected at the end. Every aiomqtt error, on connecting
    or in the block (a publish on a lost connection), leaves as BrokerError."""
    password = settings.password.reveal() if settings.password is not None else None
    client = aiomqtt.Client(
        settings.host,
        settings.port,
        username=settings.username,
        password=password,
        identifier=settings.client_id,
        protocol=aiomqtt.ProtocolVersion.V311,
        clean_session=settings.clean_session,
        keepalive=settings.keepalive,
        timeout=settings.timeout,
        tls_context=settings.tls,
        will=will,
        max_inflight_messages=settings.max_inflight,
    )
    if manual_ack:
        enable_manual_ack(client)
    before = cancel_requests()
    try:
        await client.__aenter__()
    except aiomqtt.MqttError as exc:
        raise broker_error(settings, exc, connecting=True) from None
    try:
        raise_dropped_cancellation(before)
    except asyncio.CancelledError:
        with contextlib.suppress(aiomqtt.MqttError, OSError, TimeoutError):
            async with asyncio.timeout(DISCONNECT_TIMEOUT):
                await client.__aexit__(None, None, None)
        raise
    try:
        yield client
    except aiomqtt.MqttError as exc:
        raise broker_error(settings, exc, connecting=False) from exc
    finally:
        # Bounded: aiomqtt waits for paho's disconnect callback, which a connection torn
        # down meanwhile may never give; a stopping hub or site must not wait on it for ever.
        with contextlib.suppress(aiomqtt.MqttError, OSError, TimeoutError):
            async with asyncio.timeout(DISCONNECT_TIMEOUT):
                await client.__aexit__(None, None, None)


def broker_error(settings: BrokerSettings, exc: Exception, *, connecting: bool) -> BrokerError:
    """One line for what went wrong with the broker at ``settings``."""
    where = f"broker {settings.address}"
    rc = getattr(exc, "rc", None)
    text = _clean(exc)
    if isinstance(exc, aiomqtt.MqttCodeError) and connecting:
        shown = str(rc) if isinstance(rc, ReasonCode) else text
        return _error(f"{where} refused the connection: {shown}", settings, "credentials")
    if "SSL" in text or "certificate" in text.lower():
        return _error(f"{where}: TLS failure: {text}", settings, "tls")
    if text == _TIMED_OUT:
        return _error(f"{where}: no answer within {settings.timeout:g} s", settings, "timeout")
    if connecting:
        return _error(f"{where} is unreachable: {text}", settings, "unreachable")
    return _error(f"{where}: connection lost: {text}", settings, "lost")


def _error(message: str, settings: BrokerSettings, reason: str) -> BrokerError:
    return BrokerError(message, host=settings.host, port=settings.port, reason=reason)


def _clean(exc: BaseException) -> str:
    """An exception's text on one line, without ``[Errno N]`` and ``(_ssl.c:N)`` noise."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return _SSL_SOURCE.sub("", _ERRNO.sub("", text))[:300]


def cancel_requests() -> int:
    """How many cancellations the current task has been asked for so far (0 outside one)."""
    task = asyncio.current_task()
    return task.cancelling() if task is not None else 0


def raise_dropped_cancellation(before: int) -> None:
    """Raise the cancellation aiomqtt may have dropped during an await that began with
    ``before`` = :func:`cancel_requests`. aiomqtt waits for CONNACK and SUBACK with
    ``asyncio.wait_for``, which on Python 3.11 returns the result when a cancellation
    arrives just as the result does: the task would go on (into a task group nobody cancels
    any more) and a stopping hub or site would wait for it for ever. The task still counts
    the request: a count above ``before`` is a cancellation to raise."""
    if cancel_requests() > before:
        raise asyncio.CancelledError
