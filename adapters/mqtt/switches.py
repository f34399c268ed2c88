"""Switching a device's load over MQTT: commands out, state reports in. Pure: no I/O, no clock.

    on/off ──family.command──▶ (topic, payload) ──adapter publishes, QoS 1──▶ device
    device ──report topics──▶ family.report ──▶ Reported(on, device time) ──▶ ControlState
                                             └─▶ Refused(request id, why)

A *family* knows one device family's command and report formats:

==============  ====================================  ===========================================
family          command                               reports (what ``state`` is built from)
==============  ====================================  ===========================================
Shelly Gen2     ``<device>/rpc``: JSON-RPC            ``output`` of ``<device>/status/switch:N``;
                ``Switch.Set {"id": N, "on": ..}``,   ``NotifyStatus``/``NotifyFullStatus`` on
                replies to ``<src>/rpc``              ``<device>/events/rpc`` (``params.ts``)
Tasmota         ``cmnd/<topic>/POWER`` (relay 1) or   ``stat/<topic>/POWER<n>`` (text),
                ``POWER<n>`` (``index`` n-1), ON/OFF  ``stat/<topic>/RESULT`` and
                                                      ``tele/<topic>/STATE`` (``POWER<n>`` key)
Zigbee2MQTT     ``<base>/<name>/set``                 ``state`` in ``<base>/<name>``
                ``{"state": "ON"}``                   (``last_seen`` as the time)
==============  ====================================  ===========================================

:class:`SwitchState` keeps what one switch last reported, with the same timestamp rules
as readings (:func:`adapters.mqtt.profiles.trusted_time`): the device's time when it sent
a plausible one, else the receive time. A *retained* report without a device time is
ignored: the broker replays it on every (re)subscribe, so its receive time says nothing
about when the device was in that state, and taking it would confirm a command the device
never carried out. A Shelly error reply to the last command is kept as a refusal (see
:meth:`SwitchState.refusal`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Protocol

import msgspec

from adapters.mqtt.config import MqttConfig, ProfileName
from adapters.mqtt.profiles import aware_timestamp, last_seen_at, number, trusted_time
from gateway import ControlState

__all__ = [
    "Command",
    "Family",
    "Refused",
    "Reported",
    "ShellySwitch",
    "SwitchState",
    "TasmotaSwitch",
    "Zigbee2MqttSwitch",
    "build_switch",
    "rpc_source",
]

_JSON = msgspec.json.Decoder()
_ENCODE = msgspec.json.Encoder()
_UNSAFE_IN_TOPIC = re.compile(r"[^A-Za-z0-9_.-]")


@dataclass(frozen=True, slots=True)
class Command:
    """One MQTT message that commands the device."""

    topic: str
    payload: bytes


@dataclass(frozen=True, slots=True)
class Reported:
    """The device said its relay is ``on``; ``device_at`` is its own time, if it sent one."""

    on: bool
    device_at: float | None = None


@dataclass(frozen=True, slots=True)
class Refused:
    """The device answered request ``request_id`` with an error."""

    request_id: int
    reason: str


class Family(Protocol):
    @property
    def topics(self) -> tuple[str, ...]: ...

    def command(self, on: bool, request_id: int) -> Command: ...

    def report(self, topic: str, payload: bytes) -> Reported | Refused | None: ...


def _json(payload: bytes) -> object:
    try:
        return _JSON.decode(payload)
    except msgspec.DecodeError:
        return None


def _on_off(value: object) -> bool | None:
    """Tasmota's and Zigbee2MQTT's ``"ON"``/``"OFF"`` (any case); None for anything else."""
    if not isinstance(value, str):
        return None
    return {"ON": True, "OFF": False}.get(value.strip().upper())


def rpc_source(client_id: str) -> str:
    """The ``src`` of our Shelly RPC requests: the client id, made safe as a topic level
    (the device replies on ``<src>/rpc``; a ``+``, ``#`` or ``/`` there would break it)."""
    return _UNSAFE_IN_TOPIC.sub("-", client_id)


class ShellySwitch:
    """Shelly Gen2+ ``switch:N`` over MQTT RPC (the device's "RPC over MQTT" must be on)."""

    _NOTIFY = ("NotifyStatus", "NotifyFullStatus")

    def __init__(self, device: str, switch: int = 0, *, source: str) -> None:
        self._switch = switch
        self._component = f"switch:{switch}"
        self._status = f"{device}/status/{self._component}"
        self._events = f"{device}/events/rpc"
        self._requests = f"{device}/rpc"
        self._replies = f"{source}/rpc"
        self._source = source

    @property
    def topics(self) -> tuple[str, ...]:
        return (self._status, self._events, self._replies)

    def command(self, on: bool, request_id: int) -> Command:
        frame = {
            "id": request_id,
            "src": self._source,
            "method": "Switch.Set",
            "params": {"id": self._switch, "on": on},
        }
        return Command(self._requests, _ENCODE.encode(frame))

    def report(self, topic: str, payload: bytes) -> Reported | Refused | None:
        document = _json(payload)
        if not isinstance(document, dict):
            return None
        if topic == self._status:
            return _output(document, None)
        if topic == self._events and document.get("method") in self._NOTIFY:
            params = document.get("params")
            if isinstance(params, dict) and isinstance(change := params.get(self._component), dict):
                return _output(change, number(params.get("ts")))
            return None
        if topic == self._replies:
            return _refusal(document)
        return None


def _output(status: dict[str, object], at: float | None) -> Reported | None:
    output = status.get("output")
    return Reported(output, at) if isinstance(output, bool) else None


def _refusal(reply: dict[str, object]) -> Refused | None:
    """A JSON-RPC error frame ``{"id": .., "error": {"code": .., "message": ..}}``."""
    request_id, error = reply.get("id"), reply.get("error")
    if not isinstance(request_id, int) or isinstance(request_id, bool) or error is None:
        return None
    if isinstance(error, dict):
        reason = f"{error.get('message', 'error')} (code {error.get('code')})"
    else:
        reason = str(error)
    return Refused(request_id, reason[:200])


class TasmotaSwitch:
    """Tasmota relay ``index + 1``. Tasmota calls relay 1 ``POWER`` on a one-relay device and
    ``POWER1`` on a multi-relay one; both are taken for index 0, and ``POWER`` (which
    always means relay 1) is the command."""

    def __init__(self, topic: str, index: int = 0) -> None:
        relay = f"POWER{index + 1}"
        self._keys = ("POWER", relay) if index == 0 else (relay,)
        self._command = f"cmnd/{topic}/{self._keys[0]}"
        self._power = tuple(f"stat/{topic}/{key}" for key in self._keys)
        self._result = f"stat/{topic}/RESULT"
        self._state = f"tele/{topic}/STATE"

    @property
    def topics(self) -> tuple[str, ...]:
        return (*self._power, self._result, self._state)

    def command(self, on: bool, request_id: int) -> Command:
        return Command(self._command, b"ON" if on else b"OFF")

    def report(self, topic: str, payload: bytes) -> Reported | Refused | None:
        if topic in self._power:
            on = _on_off(payload.decode("utf-8", "replace"))
            return None if on is None else Reported(on)
        if topic not in (self._result, self._state):
            return None
        document = _json(payload)
        if not isinstance(document, dict):
            return None
        for key in self._keys:
            if (on := _on_off(document.get(key))) is not None:
                return Reported(on, aware_timestamp(document.get("Time")))
        return None


class Zigbee2MqttSwitch:
    """A Zigbee2MQTT device with an on/off ``state`` (a smart plug)."""

    def __init__(self, friendly_name: str, base_topic: str = "zigbee2mqtt") -> None:
        self._topic = f"{base_topic}/{friendly_name}"

    @property
    def topics(self) -> tuple[str, ...]:
        return (self._topic,)

    def command(self, on: bool, request_id: int) -> Command:
        return Command(f"{self._topic}/set", _ENCODE.encode({"state": "ON" if on else "OFF"}))

    def report(self, topic: str, payload: bytes) -> Reported | Refused | None:
        if topic != self._topic:
            return None
        document = _json(payload)
        if not isinstance(document, dict) or (on := _on_off(document.get("state"))) is None:
            return None
        return Reported(on, last_seen_at(document))


def build_switch(config: MqttConfig, client_id: str) -> Family | None:
    """The switch a (validated) config's profile can command; None for generic channels."""
    device = config.device or ""
    match config.profile:
        case ProfileName.SHELLY_GEN2:
            return ShellySwitch(device, config.switch, source=rpc_source(client_id))
        case ProfileName.TASMOTA:
            return TasmotaSwitch(device, config.index)
        case ProfileName.ZIGBEE2MQTT:
            return Zigbee2MqttSwitch(device, config.base_topic)
        case None:
            return None


class SwitchState:
    """One switch: numbers its commands, and keeps what the device last reported.

    ``first_request_id`` should differ from any id an earlier run used (the adapter
    takes the time in milliseconds): a persistent session may deliver a reply to an
    earlier run's request, which must not be taken for a reply to ours.
    """

    def __init__(self, family: Family, *, first_request_id: int, max_ahead: float = 300.0) -> None:
        self.family = family
        self.state: ControlState | None = None
        self._next_id = first_request_id
        self._last_id: int | None = None
        self._refusal: str | None = None
        self._max_ahead = max_ahead

    @property
    def topics(self) -> tuple[str, ...]:
        return self.family.topics

    @property
    def refusal(self) -> str | None:
        """Why the device refused the last command; cleared by the next command or by a
        report that arrives after the refusal (the device's state then speaks for itself)."""
        return self._refusal

    def command(self, on: bool) -> Command:
        self._last_id = self._next_id
        self._next_id += 1
        self._refusal = None
        return self.family.command(on, self._last_id)

    def receive(self, topic: str, payload: bytes, *, retained: bool, received_at: float) -> None:
        match self.family.report(topic, payload):
            case Reported(on=on, device_at=device_at):
                at = trusted_time(device_at, received_at, self._max_ahead)
                if at is None and retained:
                    return  # replayed on subscribe: we cannot know when it was true
                self.state = ControlState(1.0 if on else 0.0, received_at if at is None else at)
                self._refusal = None
            case Refused(request_id=request_id, reason=reason) if request_id == self._last_id:
                self._refusal = reason
            case _:
                pass
