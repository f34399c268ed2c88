"""Fake smart plugs on a real MQTT broker: they obey (or ignore) commands and report like the real
devices do, each through its own aiomqtt client.

    async with FakeShellyPlug(broker.host, broker.port, "shellyplug-a", power_kw=4.0) as plug:
        ...                       # the gateway switches it; plug.on, plug.draw_kw, plug.commands

Each plug draws ``power_kw`` while on and 0 while off, and integrates its draw into an energy
counter from the moment it is created. It publishes its status on every change and every
``status_every`` seconds. ``obey = False`` makes a lying device: it acknowledges commands (as a
plug behind an interlock or with a stuck relay would) but its relay stays where it is.

* :class:`FakeShellyPlug`: Shelly Gen2 RPC over MQTT. ``Switch.Set`` on ``<device>/rpc``, the reply
  on ``<src>/rpc``; ``<device>/status/switch:0`` with ``output``, ``apower`` (W) and
  ``aenergy.total`` (Wh). A real device commits ``aenergy.total`` once a minute with
  ``minute_ts``; the fake sends the running total without ``minute_ts`` (so it is stamped with
  the receive time), for tests that last seconds. ``error = (code, message)`` makes it answer
  every RPC with that error.
* :class:`FakeTasmota`: ``cmnd/<topic>/POWER`` (``ON``/``OFF``/``TOGGLE``) answered on
  ``stat/<topic>/RESULT`` and ``stat/<topic>/POWER``; ``tele/<topic>/STATE`` and
  ``tele/<topic>/SENSOR`` (``ENERGY.Total`` kWh, ``Power`` W) every ``status_every``.
* :class:`FakeZigbeePlug`: Zigbee2MQTT, ``<base>/<name>/set`` ``{"state": "ON"}``; the state on
  ``<base>/<name>`` with ``state``, ``power`` (W), ``energy`` (kWh), ``last_seen`` (epoch ms).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import secrets
import time
from contextlib import AsyncExitStack
from types import TracebackType
from typing import Any, Self

import aiomqtt

__all__ = ["FakeShellyPlug", "FakeTasmota", "FakeZigbeePlug"]

_QOS = 1


class _FakePlug:
    """A relay with a meter, on a broker. Subclasses say which topics and formats."""

    kind = "plug"

    def __init__(
        self,
        host: str,
        port: int,
        device: str,
        *,
        power_kw: float = 4.0,
        on: bool = True,
        status_every: float = 0.5,
        obey: bool = True,
    ) -> None:
        self.host, self.port, self.device = host, port, device
        self.status_every = status_every
        self.obey = obey
        self.commands: list[Any] = []
        self._on = on
        self._power_kw = power_kw
        self._energy_wh = 0.0
        self._since = time.monotonic()
        self._client: aiomqtt.Client | None = None
        self._stack = AsyncExitStack()
        self._tasks: list[asyncio.Task[None]] = []

    # -- the relay and its meter ----------------------------------------------------------------

    @property
    def on(self) -> bool:
        return self._on

    @on.setter
    def on(self, value: bool) -> None:
        self._integrate()
        self._on = value

    @property
    def power_kw(self) -> float:
        return self._power_kw

    @power_kw.setter
    def power_kw(self, value: float) -> None:
        self._integrate()
        self._power_kw = value

    @property
    def draw_kw(self) -> float:
        return self._power_kw if self._on else 0.0

    @property
    def energy_wh(self) -> float:
        self._integrate()
        return self._energy_wh

    def _integrate(self) -> None:
        now = time.monotonic()
        self._energy_wh += self.draw_kw * 1000.0 * (now - self._since) / 3600.0
        self._since = now

    def _command(self, on: bool) -> bool:
        """Switch (if obeying); True if the relay changed."""
        if not self.obey or on == self._on:
            return False
        self.on = on
        return True

    # -- the MQTT side --------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        identifier = f"fake-{self.kind}-{secrets.token_hex(4)}"
        client = aiomqtt.Client(self.host, self.port, identifier=identifier)
        self._client = await self._stack.enter_async_context(client)
        await client.subscribe([(topic, _QOS) for topic in self.command_topics()])
        await self.publish_status()
        self._tasks = [
            asyncio.create_task(self._listen(client), name=f"{identifier}-listen"),
            asyncio.create_task(self._tick(), name=f"{identifier}-tick"),
        ]
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for task in self._tasks:
            task.cancel()
        # Python 3.11's asyncio.wait_for (under aiomqtt's publish) can swallow a cancellation
        # that meets a PUBACK; disconnecting then ends the message loop all the same.
        await asyncio.wait(self._tasks, timeout=1.0)
        with contextlib.suppress(aiomqtt.MqttError):
            await self._stack.aclose()
        results = await asyncio.gather(*self._tasks, return_exceptions=True)
        self._client = None
        for result in results:  # a broker that went away is the test's doing; a bug is not
            if isinstance(result, Exception) and not isinstance(result, aiomqtt.MqttError):
                raise result

    async def publish(self, topic: str, payload: bytes | str) -> None:
        assert self._client is not None, "use the plug inside `async with`"
        await self._client.publish(topic, payload, qos=_QOS)

    async def publish_status(self) -> None:
        for topic, payload in self.status_messages():
            await self.publish(topic, payload)

    async def _listen(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            payload = message.payload if isinstance(message.payload, bytes) else b""
            await self.handle(message.topic.value, payload)

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(self.status_every)
            await self.publish_status()

    # -- per device family ----------------------------------------------------------------------

    def command_topics(self) -> list[str]:
        raise NotImplementedError

    def status_messages(self) -> list[tuple[str, bytes | str]]:
        raise NotImplementedError

    async def handle(self, topic: str, payload: bytes) -> None:
        raise NotImplementedError


def _json_object(payload: bytes) -> dict[str, Any] | None:
    try:
        document = json.loads(payload)
    except ValueError:
        return None
    return document if isinstance(document, dict) else None


def _on_off(on: bool) -> str:
    return "ON" if on else "OFF"


def _switch_word(text: object, current: bool) -> bool | None:
    """ON/OFF/TOGGLE (and Tasmota's 1/0/true/false) as the new relay state."""
    word = str(text).strip().upper()
    if word in ("ON", "1", "TRUE"):
        return True
    if word in ("OFF", "0", "FALSE"):
        return False
    return not current if word in ("TOGGLE", "2") else None


class FakeShellyPlug(_FakePlug):
    """A Shelly Gen2 plug (switch:0) with RPC over MQTT; see the module doc."""

    kind = "shelly"

    def __init__(
        self,
        host: str,
        port: int,
        device: str,
        *,
        power_kw: float = 4.0,
        on: bool = True,
        status_every: float = 0.5,
        obey: bool = True,
        error: tuple[int, str] | None = None,
    ) -> None:
        super().__init__(
            host, port, device, power_kw=power_kw, on=on, status_every=status_every, obey=obey
        )
        self.error = error

    def command_topics(self) -> list[str]:
        return [f"{self.device}/rpc"]

    def status_messages(self) -> list[tuple[str, bytes | str]]:
        status = {
            "id": 0,
            "source": "fake",
            "output": self.on,
            "apower": round(self.draw_kw * 1000.0, 1),
            "voltage": 230.0,
            "current": round(self.draw_kw * 1000.0 / 230.0, 3),
            "aenergy": {"total": round(self.energy_wh, 3)},
            "temperature": {"tC": 40.0},
        }
        return [(f"{self.device}/status/switch:0", json.dumps(status))]

    async def handle(self, topic: str, payload: bytes) -> None:
        frame = _json_object(payload)
        if frame is None or not isinstance(frame.get("src"), str):
            return  # Shelly drops frames it cannot answer
        self.commands.append(frame)
        reply: dict[str, Any] = {"id": frame.get("id"), "src": self.device, "dst": frame["src"]}
        params = frame.get("params")
        changed = False
        if self.error is not None:
            reply["error"] = {"code": self.error[0], "message": self.error[1]}
        elif frame.get("method") != "Switch.Set":
            reply["error"] = {"code": 404, "message": f"No handler for {frame.get('method')}"}
        elif not isinstance(params, dict) or params.get("id") != 0:
            reply["error"] = {"code": -105, "message": "Argument 'id' not found!"}
        elif not isinstance(params.get("on"), bool):
            reply["error"] = {"code": -103, "message": "Invalid argument 'on'!"}
        else:
            reply["result"] = {"was_on": self.on}
            changed = self._command(params["on"])
        await self.publish(f"{frame['src']}/rpc", json.dumps(reply))
        if changed:
            await self.publish_status()


class FakeTasmota(_FakePlug):
    """A Tasmota plug with an energy monitor (one relay); see the module doc."""

    kind = "tasmota"

    def command_topics(self) -> list[str]:
        return [f"cmnd/{self.device}/POWER", f"cmnd/{self.device}/POWER1"]

    def status_messages(self) -> list[tuple[str, bytes | str]]:
        local = time.strftime("%Y-%m-%dT%H:%M:%S")  # Tasmota's default: local time, no offset
        state = {"Time": local, "Uptime": "0T00:01:00", "POWER": _on_off(self.on)}
        energy = {"Total": round(self.energy_wh / 1000.0, 6), "Power": round(self.draw_kw * 1000)}
        return [
            (f"tele/{self.device}/STATE", json.dumps(state)),
            (f"tele/{self.device}/SENSOR", json.dumps({"Time": local, "ENERGY": energy})),
        ]

    async def handle(self, topic: str, payload: bytes) -> None:
        text = payload.decode("utf-8", "replace")
        self.commands.append({"topic": topic, "payload": text})
        if not text.strip():
            on: bool | None = self.on  # an empty payload asks for the state
        else:
            on = _switch_word(text, self.on)
        if on is None:
            await self.publish(f"stat/{self.device}/RESULT", json.dumps({"Command": "Error"}))
            return
        self._command(on)
        await self.publish(f"stat/{self.device}/RESULT", json.dumps({"POWER": _on_off(self.on)}))
        await self.publish(f"stat/{self.device}/POWER", _on_off(self.on))


class FakeZigbeePlug(_FakePlug):
    """A Zigbee smart plug behind Zigbee2MQTT; see the module doc."""

    kind = "zigbee"

    def __init__(
        self,
        host: str,
        port: int,
        device: str,
        *,
        base_topic: str = "zigbee2mqtt",
        power_kw: float = 4.0,
        on: bool = True,
        status_every: float = 0.5,
        obey: bool = True,
    ) -> None:
        super().__init__(
            host, port, device, power_kw=power_kw, on=on, status_every=status_every, obey=obey
        )
        self.topic = f"{base_topic}/{device}"

    def command_topics(self) -> list[str]:
        return [f"{self.topic}/set"]

    def status_messages(self) -> list[tuple[str, bytes | str]]:
        state = {
            "state": _on_off(self.on),
            "power": round(self.draw_kw * 1000.0, 1),
            "energy": round(self.energy_wh / 1000.0, 6),
            "linkquality": 120,
            "last_seen": math.ceil(time.time() * 1000),  # never before the command it answers
        }
        return [(self.topic, json.dumps(state))]

    async def handle(self, topic: str, payload: bytes) -> None:
        frame = _json_object(payload)
        if frame is None:
            return
        self.commands.append(frame)
        on = _switch_word(frame["state"], self.on) if "state" in frame else None
        if on is not None:
            self._command(on)
        await self.publish_status()  # Zigbee2MQTT publishes the state after a set
