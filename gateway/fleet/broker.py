"""STAND-IN written on h11-hub until h11-store's broker module lands (which replaces this
file on merge): the hub's broker connection with a persistent session and manual PUBACK.
"""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import aiomqtt

from gateway.config import Secret
from gateway.errors import GatewayError

__all__ = ["BrokerError", "hub_client", "manual_ack"]


class BrokerError(GatewayError):
    """The MQTT broker cannot be reached, refused us, or the connection was lost."""


@contextlib.asynccontextmanager
async def hub_client(hub: Any, password: Secret | None) -> AsyncIterator[aiomqtt.Client]:
    url = urlsplit(hub.url)
    secure = url.scheme == "mqtts"
    tls: ssl.SSLContext | None = None
    if secure:
        tls = ssl.create_default_context(cafile=hub.ca_file)
        if hub.client_cert_file is not None:
            tls.load_cert_chain(hub.client_cert_file, hub.client_key_file)
    client = aiomqtt.Client(
        url.hostname or "localhost",
        url.port or (8883 if secure else 1883),
        identifier=hub.client_id,
        clean_session=False,
        username=hub.username,
        password=None if password is None else password.reveal(),
        tls_context=tls,
        timeout=10,
    )
    client._client.manual_ack_set(True)  # aiomqtt has no API for manual PUBACK: paho's own
    async with client:
        yield client


def manual_ack(client: aiomqtt.Client, message: aiomqtt.Message) -> None:
    """Send the PUBACK of ``message`` (received with manual acknowledgement on)."""
    client._client.ack(message.mid, message.qos)  # aiomqtt has no API for manual PUBACK: paho's own
