"""Device payload formats: an MQTT message in, readings out. Pure: no I/O, no clock.

    payload ──JSON──▶ document ──profile──▶ samples ──Decoder──▶ readings
                                 (which value,      (which timestamp,
                                  which device       drop repeats and
                                  timestamp)         stale samples)

A *profile* knows one device family's topics and where its values are. It
may keep state (Shelly's NotifyStatus frames carry only what changed, so they
are merged onto the last known status). The :class:`Decoder` turns samples
into readings the same way for every profile:

* the timestamp is the device's own when it sent a plausible one, else the
  time the message was received;
* a *retained* message without a device timestamp yields nothing: the broker
  replays it on every (re)subscribe and we cannot know how old it is;
* per channel, time never runs backwards and an exact repeat of
  (timestamp, value) is dropped. Readings are cumulative counters: a QoS 1
  redelivery, or the same sample arriving on two topics, must not become a
  second reading, and an old sample replayed after newer ones must not look
  like a counter reset.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import msgspec

from adapters.mqtt.config import ChannelSpec, MqttConfig, ProfileName
from adapters.mqtt.jsonpath import MISSING, JsonPath
from gateway import Channel, ChannelKind, Reading, Unit, parse_timestamp

__all__ = [
    "Decoded",
    "Decoder",
    "Found",
    "Generic",
    "Profile",
    "Sample",
    "ShellyGen2",
    "Tasmota",
    "Zigbee2Mqtt",
    "aware_timestamp",
    "build_profile",
    "deep_merge",
    "last_seen_at",
    "number",
    "trusted_time",
]

ENERGY = "energy"
POWER = "power"

# Device timestamps before this (2020-01-01) mean the device's clock is not set.
_EARLIEST_DEVICE_TIME = 1_577_836_800.0


@dataclass(frozen=True, slots=True)
class Sample:
    """A value a profile found, with the device's own timestamp if it sent one."""

    channel: str
    value: float
    device_at: float | None = None


@dataclass(frozen=True, slots=True)
class Found:
    """What a profile found in one message. ``note`` says why a value was not taken."""

    samples: tuple[Sample, ...] = ()
    note: str | None = None


NOTHING = Found()


class Profile(Protocol):
    @property
    def topics(self) -> tuple[str, ...]: ...

    @property
    def channels(self) -> tuple[Channel, ...]: ...

    def decode(self, topic: str, document: object) -> Found: ...


def number(value: object) -> float | None:
    """A finite float from a JSON number or numeric string; None for anything else."""
    if isinstance(value, bool):
        return None
    try:
        result = float(value) if isinstance(value, int | float | str) else math.nan
    except (ValueError, OverflowError):
        return None
    return result if math.isfinite(result) else None


def deep_merge(base: Mapping[str, Any], change: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` overlaid with ``change``: objects merge key by key, ``null`` removes a key.

    This is how Shelly says NotifyStatus frames are meant to be applied. Neither
    argument is modified.
    """
    merged = dict(base)
    for key, value in change.items():
        if value is None:
            merged.pop(key, None)
        elif isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def aware_timestamp(value: object) -> float | None:
    """Seconds since the epoch from ISO-8601 text with an offset; None when it has none."""
    if not isinstance(value, str):
        return None
    try:
        return parse_timestamp(value).timestamp()
    except ValueError:
        return None


def last_seen_at(document: Mapping[str, Any]) -> float | None:
    """Zigbee2MQTT's ``last_seen`` in seconds since the epoch: epoch milliseconds or
    ISO-8601 with an offset; None when absent or naive."""
    last_seen = document.get("last_seen")
    epoch_ms = number(last_seen) if not isinstance(last_seen, str) else None
    return epoch_ms / 1000.0 if epoch_ms is not None else aware_timestamp(last_seen)


def trusted_time(device_at: float | None, received_at: float, max_ahead: float) -> float | None:
    """``device_at`` if it is plausible: the clock is set (after 2020) and runs at most
    ``max_ahead`` seconds ahead of ours. None means: use the receive time."""
    if device_at is None or device_at < _EARLIEST_DEVICE_TIME:
        return None
    return device_at if device_at <= received_at + max_ahead else None


class ShellyGen2:
    """Shelly Gen2+ relays (Plus/Pro/Mini 1PM, 2PM, Plug S): the ``switch:N`` component.

    ``<device>/status/switch:N`` carries the full status; ``<device>/events/rpc``
    carries JSON-RPC ``NotifyStatus`` frames with only the changed keys (merged
    onto the last status) and ``NotifyFullStatus`` frames (which replace it).

    ``aenergy.total`` (Wh) is committed once a minute and stamped with
    ``aenergy.minute_ts``, the device's time of that minute; we use it as the
    reading's time, so the status frame and the NotifyStatus frame that report
    the same minute give the same reading (and one is dropped as a repeat).
    ``apower`` (W) is stamped with the frame's ``params.ts``. Both frame kinds
    report the same changes, so once the device is seen sending NotifyStatus
    for the switch, status frames only update the state: power then comes from
    NotifyStatus alone, on the device's clock, instead of alternating between
    the device's clock and our receive time.
    """

    _NOTIFY = ("NotifyStatus", "NotifyFullStatus")

    def __init__(self, device: str, switch: int = 0) -> None:
        self._component = f"switch:{switch}"
        self._status_topic = f"{device}/status/{self._component}"
        self._rpc_topic = f"{device}/events/rpc"
        self._state: dict[str, Any] = {}
        self._notifies = False  # seen a NotifyStatus for our component

    @property
    def topics(self) -> tuple[str, ...]:
        return (self._status_topic, self._rpc_topic)

    @property
    def channels(self) -> tuple[Channel, ...]:
        return (
            Channel(ENERGY, ChannelKind.ENERGY, Unit.WH),
            Channel(POWER, ChannelKind.POWER, Unit.W),
        )

    @property
    def state(self) -> Mapping[str, Any]:
        """The last known status of the switch component."""
        return self._state

    def decode(self, topic: str, document: object) -> Found:
        if not isinstance(document, dict):
            return NOTHING
        if topic == self._status_topic:
            self._state = document
            return self._found(frame_at=None, power=not self._notifies)
        if topic != self._rpc_topic or document.get("method") not in self._NOTIFY:
            return NOTHING
        params = document.get("params")
        if not isinstance(params, dict) or not isinstance(params.get(self._component), dict):
            return NOTHING  # a notification about another component
        change = params[self._component]
        base = self._state if document["method"] == "NotifyStatus" else {}
        self._state = deep_merge(base, change)
        self._notifies = True
        return self._found(frame_at=number(params.get("ts")))

    def _found(self, frame_at: float | None, *, power: bool = True) -> Found:
        samples = []
        aenergy = self._state.get("aenergy")
        if isinstance(aenergy, dict) and (total := number(aenergy.get("total"))) is not None:
            minute_at = number(aenergy.get("minute_ts"))
            samples.append(Sample(ENERGY, total, frame_at if minute_at is None else minute_at))
        if power and (watts := number(self._state.get("apower"))) is not None:
            samples.append(Sample(POWER, watts, frame_at))
        return Found(tuple(samples))


class _KwhMeterOnOneTopic:
    """A device that publishes ``energy`` in kWh and ``power`` in W on one topic."""

    _topic: str

    @property
    def topics(self) -> tuple[str, ...]:
        return (self._topic,)

    @property
    def channels(self) -> tuple[Channel, ...]:
        return (
            Channel(ENERGY, ChannelKind.ENERGY, Unit.KWH),
            Channel(POWER, ChannelKind.POWER, Unit.W),
        )


class Tasmota(_KwhMeterOnOneTopic):
    """Tasmota energy monitors: ``tele/<topic>/SENSOR`` with an ``ENERGY`` object.

    ``ENERGY.Total`` is kWh, ``ENERGY.Power`` is W. Multi-channel devices send
    arrays, picked with ``index``. A scalar ``Total`` next to an array ``Power``
    is the sum over all channels (Tasmota's default); it is not taken, and the
    note asks for ``SetOption129 1`` (per-channel totals).

    Tasmota's ``Time`` is local time without an offset unless ``SetOption52 1``
    is set. Naive local time cannot be placed on the UTC axis without knowing the
    device's timezone and DST rules, so then the receive time is used (the
    teleperiod message is sent as it is built, seconds at most before it
    arrives). With an offset, ``Time`` is exact and is used.
    """

    def __init__(self, topic: str, index: int = 0) -> None:
        self._topic = f"tele/{topic}/SENSOR"
        self._index = index

    def decode(self, topic: str, document: object) -> Found:
        if topic != self._topic or not isinstance(document, dict):
            return NOTHING
        energy = document.get("ENERGY")
        if not isinstance(energy, dict):
            return NOTHING  # a SENSOR message of another sensor (temperature, ...)
        at = aware_timestamp(document.get("Time"))
        total, power = energy.get("Total"), energy.get("Power")
        samples, note = [], None
        if isinstance(power, list) and total is not None and not isinstance(total, list):
            note = "ENERGY.Total is the sum of all channels; set SetOption129 1 on the device"
        elif (value := self._pick(total)) is not None:
            samples.append(Sample(ENERGY, value, at))
        elif isinstance(total, list):
            note = f"index {self._index} is not in ENERGY.Total (length {len(total)})"
        if (value := self._pick(power)) is not None:
            samples.append(Sample(POWER, value, at))
        return Found(tuple(samples), note)

    def _pick(self, value: object) -> float | None:
        if isinstance(value, list):
            return number(value[self._index]) if self._index < len(value) else None
        return number(value) if self._index == 0 else None


class Zigbee2Mqtt(_KwhMeterOnOneTopic):
    """Zigbee2MQTT devices: ``<base_topic>/<friendly_name>``, ``energy`` kWh, ``power`` W.

    ``last_seen`` (present when Zigbee2MQTT's ``advanced.last_seen`` is set) is
    when the bridge last heard the device; with an offset or as epoch
    milliseconds it is used as the timestamp, else the receive time.
    """

    def __init__(self, friendly_name: str, base_topic: str = "zigbee2mqtt") -> None:
        self._topic = f"{base_topic}/{friendly_name}"

    def decode(self, topic: str, document: object) -> Found:
        if topic != self._topic or not isinstance(document, dict):
            return NOTHING
        at = last_seen_at(document)
        samples = [
            Sample(name, value, at)
            for name in (ENERGY, POWER)
            if (value := number(document.get(name))) is not None
        ]
        return Found(tuple(samples))


@dataclass(frozen=True, slots=True)
class _GenericChannel:
    channel: Channel
    topic: str
    path: JsonPath


class Generic:
    """Any JSON (or bare number) payload: per channel a topic, a JSON path and a unit.

    No device timestamp: readings are stamped with the receive time.
    """

    def __init__(self, specs: Mapping[str, ChannelSpec]) -> None:
        self._by_topic: dict[str, list[_GenericChannel]] = {}
        self._channels = []
        for name, spec in specs.items():
            entry = _GenericChannel(spec.channel(name), spec.topic, JsonPath.parse(spec.path))
            self._by_topic.setdefault(spec.topic, []).append(entry)
            self._channels.append(entry.channel)

    @property
    def topics(self) -> tuple[str, ...]:
        return tuple(self._by_topic)

    @property
    def channels(self) -> tuple[Channel, ...]:
        return tuple(self._channels)

    def decode(self, topic: str, document: object) -> Found:
        samples = [
            Sample(entry.channel.name, value)
            for entry in self._by_topic.get(topic, ())
            if (found := entry.path.find(document)) is not MISSING
            and (value := number(found)) is not None
        ]
        return Found(tuple(samples))


def build_profile(config: MqttConfig) -> Profile:
    """The profile a (validated) config asks for."""
    match config.profile:
        case ProfileName.SHELLY_GEN2:
            return ShellyGen2(config.device or "", config.switch)
        case ProfileName.TASMOTA:
            return Tasmota(config.device or "", config.index)
        case ProfileName.ZIGBEE2MQTT:
            return Zigbee2Mqtt(config.device or "", config.base_topic)
        case None:
            return Generic(config.channels or {})


@dataclass(frozen=True, slots=True)
class Decoded:
    """What one message gave: readings, or why it gave none.

    ``malformed`` is set when the payload is not JSON; ``dropped`` counts samples
    not emitted (repeats, samples older than the channel's last reading, and
    retained samples without a device timestamp).
    """

    readings: list[Reading] = field(default_factory=list)
    malformed: str | None = None
    note: str | None = None
    dropped: int = 0


@dataclass(slots=True)
class _Latest:
    at: float
    values: set[float]


class Decoder:
    """One adapter's message pipeline: payload bytes in, readings out (see the module doc).

    ``max_ahead`` is how far (seconds) a device clock may run ahead of ours
    before its timestamps are distrusted and the receive time is used.
    """

    def __init__(self, profile: Profile, *, max_ahead: float = 300.0) -> None:
        self.profile = profile
        self._max_ahead = max_ahead
        self._topics = frozenset(profile.topics)
        self._json = msgspec.json.Decoder()
        self._latest: dict[str, _Latest] = {}

    def decode(
        self, topic: str, payload: bytes, *, retained: bool = False, received_at: float
    ) -> Decoded:
        if topic not in self._topics or not payload.strip():
            # not ours (a persistent session may hold an older config's subscriptions),
            # or empty (what clearing a retained message looks like): no value
            return Decoded()
        try:
            document = self._json.decode(payload)
        except msgspec.DecodeError as exc:
            return Decoded(malformed=str(exc))
        found = self.profile.decode(topic, document)
        readings, dropped = [], 0
        for sample in found.samples:
            at = trusted_time(sample.device_at, received_at, self._max_ahead)
            if at is None and retained:
                dropped += 1
                continue
            reading = Reading(sample.channel, received_at if at is None else at, sample.value)
            if self._is_new(reading):
                readings.append(reading)
            else:
                dropped += 1
        return Decoded(readings, note=found.note, dropped=dropped)

    def _is_new(self, reading: Reading) -> bool:
        latest = self._latest.get(reading.channel)
        if latest is None or reading.at > latest.at:
            self._latest[reading.channel] = _Latest(reading.at, {reading.value})
            return True
        if reading.at == latest.at and reading.value not in latest.values:
            latest.values.add(reading.value)
            return True
        return False
