"""The ``[adapters.<name>]`` table of an MQTT adapter.

Either a ``profile`` (a known device family, which fixes topics, paths and
units) or a ``channels`` table (one topic, JSON path and unit per channel),
never both::

    [adapters.plug]
    type = "mqtt"
    url = "mqtt://127.0.0.1:1883"
    profile = "shelly-gen2"
    device = "shellyplus1pm-a8032ab1c2d3"

    [adapters.meter]
    type = "mqtt"
    url = "mqtts://broker.example:8883"
    ca_file = "/etc/ecgw/broker-ca.pem"
    channels.energy = { topic = "meter/1/state", path = "ENERGY.Total", unit = "kWh" }

Checks that span fields raise ``ValueError`` from ``__post_init__``; msgspec
turns that into a ``ValidationError`` whose message starts with the key.
"""

from __future__ import annotations

import enum
import re
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

import msgspec

from adapters.mqtt.jsonpath import JsonPath
from gateway import AdapterConfig, Channel, ChannelKind, Duration, Unit

__all__ = ["Broker", "ChannelSpec", "MqttConfig", "ProfileName", "parse_broker_url"]

_DEFAULT_PORTS = {"mqtt": 1883, "mqtts": 8883}
_TOPIC_FORBIDDEN = re.compile(r"[+#\x00]")


class ProfileName(enum.StrEnum):
    SHELLY_GEN2 = "shelly-gen2"
    TASMOTA = "tasmota"
    ZIGBEE2MQTT = "zigbee2mqtt"


class ChannelSpec(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """One channel of the generic form: where its value is and what unit it is in.

    ``kind`` defaults from the unit (Wh/kWh: energy, W/kW: power); ``wrap`` is
    the modulus of a counter that wraps, in ``unit``.
    """

    topic: str
    path: str
    unit: Unit
    kind: ChannelKind | None = None
    wrap: float | None = None

    def channel(self, name: str) -> Channel:
        kind = self.kind
        if kind is None:
            kind = ChannelKind.ENERGY if self.unit in (Unit.WH, Unit.KWH) else ChannelKind.POWER
        return Channel(name=name, kind=kind, unit=self.unit, wrap=self.wrap)


@dataclass(frozen=True, slots=True)
class Broker:
    """Where the broker is, from ``url``."""

    host: str
    port: int
    tls: bool

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'mqtts' if self.tls else 'mqtt'}://{host}:{self.port}"


def parse_broker_url(url: str) -> Broker:
    """``mqtt://host[:port]`` or ``mqtts://host[:port]``. Raises ValueError saying what is wrong."""
    parts = urllib.parse.urlsplit(url.strip())
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS:
        raise ValueError(f"expected mqtt://host[:port] or mqtts://host[:port], got {url!r}")
    if parts.username is not None or parts.password is not None:
        raise ValueError("put credentials in `username` and `password`, not in the url")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(f"an MQTT url has no path, query or fragment, got {url!r}")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"invalid port in {url!r}") from None
    if not parts.hostname:
        raise ValueError(f"no host in {url!r}")
    return Broker(parts.hostname, port or _DEFAULT_PORTS[scheme], tls=scheme == "mqtts")


class MqttConfig(AdapterConfig, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Connection, then either a device profile or generic channels.

    ``device`` is the Shelly topic prefix, the Tasmota ``<topic>`` or the
    Zigbee2MQTT friendly name. ``switch`` picks the Shelly ``switch:N``
    component; ``index`` picks the element of Tasmota's per-channel arrays
    and relay ``index + 1``. With a profile the adapter has a ``switch``
    control (a Shelly needs "RPC over MQTT" enabled; it answers on
    ``<client_id>/rpc``).
    ``client_id`` defaults to one derived from the adapter's name, so the
    broker keeps our session (and queues QoS 1 messages) across restarts.
    """

    url: str
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    username: str | None = None
    password: str | None = None
    client_id: str | None = None
    keepalive: Duration = Duration(60.0)
    profile: ProfileName | None = None
    device: str | None = None
    base_topic: str = "zigbee2mqtt"
    switch: Annotated[int, msgspec.Meta(ge=0)] = 0
    index: Annotated[int, msgspec.Meta(ge=0)] = 0
    channels: dict[str, ChannelSpec] | None = None

    def __post_init__(self) -> None:
        _check("url", parse_broker_url, self.url)
        self._check_tls()
        if self.password is not None and self.username is None:
            raise ValueError("`password`: set `username` too")
        if self.client_id is not None and not self.client_id.strip():
            raise ValueError("`client_id`: must not be empty")
        if not 1.0 <= float(self.keepalive) <= 65535.0:
            raise ValueError(f"`keepalive`: must be 1 s to 65535 s, got {float(self.keepalive)} s")
        if (self.profile is None) == (self.channels is None):
            raise ValueError("set exactly one of `profile` or `channels`")
        if self.profile is not None:
            self._check_profile()
        else:
            self._check_channels()

    @property
    def broker(self) -> Broker:
        return parse_broker_url(self.url)

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={value!r}" for name, value in self.__rich_repr__())
        return f"{type(self).__name__}({fields})"

    def __rich_repr__(self) -> list[tuple[str, Any]]:
        """The fields, with the password masked (rich and our ``__repr__`` both use this)."""
        fields = [(name, getattr(self, name)) for name in self.__struct_fields__]
        return [
            (name, "***" if name == "password" and value is not None else value)
            for name, value in fields
        ]

    def _check_tls(self) -> None:
        tls = self.broker.tls
        for key in ("ca_file", "cert_file", "key_file"):
            if getattr(self, key) is not None and not tls:
                raise ValueError(f"`{key}`: needs an mqtts:// url")
        if self.key_file is not None and self.cert_file is None:
            raise ValueError("`key_file`: set `cert_file` too")

    def _check_profile(self) -> None:
        if self.device is None or not self.device.strip():
            raise ValueError(f"`device`: profile {self.profile} needs the device's topic or name")
        _check("device", _topic_part, self.device)
        _check("base_topic", _topic_part, self.base_topic)

    def _check_channels(self) -> None:
        if self.device is not None:
            raise ValueError("`device`: only used with a `profile`; the channels name their topics")
        if not self.channels:
            raise ValueError("`channels`: name at least one channel")
        for name, spec in self.channels.items():
            key = f"channels.{name}"
            _check(f"{key}.topic", _topic_part, spec.topic)
            _check(f"{key}.path", JsonPath.parse, spec.path)
            _check(key, spec.channel, name)


def _topic_part(text: str) -> None:
    if not text or _TOPIC_FORBIDDEN.search(text) or text.startswith("/") or text.endswith("/"):
        raise ValueError(f"must be a topic without wildcards or leading/trailing '/', got {text!r}")


def _check(key: str, check: Callable[[str], object], value: str) -> None:
    """``check(value)``, with the key put in front of the ValueError it raises."""
    try:
        check(value)
    except ValueError as exc:
        raise ValueError(f"`{key}`: {exc}") from None
