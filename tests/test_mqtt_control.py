"""Switching over MQTT: the pure command/report formats, then the adapter against fake plugs
(tests/kit/plugs.py) on a real Mosquitto of its own."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import aiomqtt
import msgspec
import pytest

from adapters.mqtt import MqttAdapter, MqttConfig
from adapters.mqtt.switches import (
    Command,
    Refused,
    Reported,
    ShellySwitch,
    SwitchState,
    TasmotaSwitch,
    Zigbee2MqttSwitch,
    build_switch,
    rpc_source,
)
from gateway import SWITCH, AdapterError, Control, ControlKind, ControllableAdapter, ControlState
from gateway.plugin import Reading
from tests.kit.mosquitto import Mosquitto
from tests.kit.plugs import FakeShellyPlug, FakeTasmota, FakeZigbeePlug

T = TypeVar("T")
NOW = 1_700_000_000.0


def mqtt_config(**table: Any) -> MqttConfig:
    return msgspec.convert({"type": "mqtt", **table}, MqttConfig)


def js(document: object) -> bytes:
    return json.dumps(document).encode()


# -- command formats ------------------------------------------------------------------------------


def test_shelly_command_is_a_switch_set_rpc_with_our_source() -> None:
    command = ShellySwitch("plug-a", 1, source="ecgw-plug").command(True, 17)
    assert command.topic == "plug-a/rpc"
    assert json.loads(command.payload) == {
        "id": 17,
        "src": "ecgw-plug",
        "method": "Switch.Set",
        "params": {"id": 1, "on": True},
    }
    assert ShellySwitch("plug-a", source="s").topics == (
        "plug-a/status/switch:0",
        "plug-a/events/rpc",
        "s/rpc",
    )


@pytest.mark.parametrize(
    ("index", "topic", "report_topics"),
    [
        (0, "cmnd/pow/POWER", ("stat/pow/POWER", "stat/pow/POWER1")),
        (1, "cmnd/pow/POWER2", ("stat/pow/POWER2",)),
    ],
)
def test_tasmota_command_names_the_relay(
    index: int, topic: str, report_topics: tuple[str, ...]
) -> None:
    switch = TasmotaSwitch("pow", index)
    assert switch.command(False, 1) == Command(topic, b"OFF")
    assert switch.command(True, 2) == Command(topic, b"ON")
    assert switch.topics == (*report_topics, "stat/pow/RESULT", "tele/pow/STATE")


def test_zigbee2mqtt_command_sets_the_state() -> None:
    command = Zigbee2MqttSwitch("kitchen/kettle", "zb").command(False, 1)
    assert command.topic == "zb/kitchen/kettle/set"
    assert json.loads(command.payload) == {"state": "OFF"}


def test_rpc_source_is_one_safe_topic_level() -> None:
    assert rpc_source("ecgw-plug") == "ecgw-plug"
    assert rpc_source("site/a+b#") == "site-a-b-"


def test_build_switch_follows_the_profile() -> None:
    base = {"url": "mqtt://h"}
    config = mqtt_config(**base, profile="shelly-gen2", device="d", switch=2)
    shelly = build_switch(config, "c/1")
    assert shelly is not None
    assert shelly.topics == ("d/status/switch:2", "d/events/rpc", "c-1/rpc")
    tasmota = build_switch(mqtt_config(**base, profile="tasmota", device="d"), "c")
    assert isinstance(tasmota, TasmotaSwitch)
    z2m = build_switch(mqtt_config(**base, profile="zigbee2mqtt", device="p", base_topic="zb"), "c")
    assert z2m is not None and z2m.topics == ("zb/p",)
    generic = mqtt_config(**base, channels={"e": {"topic": "x", "path": "$", "unit": "Wh"}})
    assert build_switch(generic, "c") is None


# -- reports --------------------------------------------------------------------------------------

SHELLY = ShellySwitch("plug", 0, source="me")


@pytest.mark.parametrize(
    ("topic", "document", "expected"),
    [
        ("plug/status/switch:0", {"id": 0, "output": False, "apower": 0.0}, Reported(False)),
        ("plug/status/switch:0", {"id": 0, "apower": 5.0}, None),
        ("plug/status/switch:0", {"output": "false"}, None),
        (
            "plug/events/rpc",
            {"method": "NotifyStatus", "params": {"ts": NOW, "switch:0": {"output": True}}},
            Reported(True, NOW),
        ),
        (
            "plug/events/rpc",
            {"method": "NotifyStatus", "params": {"ts": NOW, "switch:1": {"output": True}}},
            None,
        ),
        ("plug/events/rpc", {"method": "NotifyEvent", "params": {"switch:0": {}}}, None),
        (
            "me/rpc",
            {"id": 7, "src": "plug", "error": {"code": -103, "message": "Invalid argument"}},
            Refused(7, "Invalid argument (code -103)"),
        ),
        ("me/rpc", {"id": 7, "src": "plug", "result": {"was_on": True}}, None),
        ("other/rpc", {"id": 7, "error": {"code": 1}}, None),
    ],
)
def test_shelly_reports(topic: str, document: object, expected: object) -> None:
    assert SHELLY.report(topic, js(document)) == expected


@pytest.mark.parametrize(
    ("switch", "topic", "payload", "expected"),
    [
        (TasmotaSwitch("t"), "stat/t/POWER", b"OFF", Reported(False)),
        (TasmotaSwitch("t"), "stat/t/POWER1", b"on", Reported(True)),
        (TasmotaSwitch("t"), "stat/t/POWER", b"TOGGLE", None),
        (TasmotaSwitch("t"), "stat/t/RESULT", js({"POWER": "ON"}), Reported(True)),
        (TasmotaSwitch("t"), "stat/t/RESULT", js({"Dimmer": 40}), None),
        (TasmotaSwitch("t", 1), "stat/t/RESULT", js({"POWER1": "ON"}), None),
        (TasmotaSwitch("t", 1), "stat/t/RESULT", js({"POWER2": "OFF"}), Reported(False)),
        (
            TasmotaSwitch("t"),
            "tele/t/STATE",
            js({"Time": "2023-11-14T22:13:20", "POWER": "OFF"}),
            Reported(False),  # naive local time: no device time
        ),
        (
            TasmotaSwitch("t"),
            "tele/t/STATE",
            js({"Time": "2023-11-14T22:13:20+00:00", "POWER": "ON"}),
            Reported(True, NOW),
        ),
        (TasmotaSwitch("t"), "tele/t/SENSOR", js({"POWER": "ON"}), None),
        (Zigbee2MqttSwitch("p"), "zigbee2mqtt/p", js({"state": "OFF"}), Reported(False)),
        (
            Zigbee2MqttSwitch("p"),
            "zigbee2mqtt/p",
            js({"state": "ON", "last_seen": int(NOW * 1000)}),
            Reported(True, NOW),
        ),
        (Zigbee2MqttSwitch("p"), "zigbee2mqtt/p", js({"power": 5}), None),
        (Zigbee2MqttSwitch("p"), "zigbee2mqtt/p", b"not json", None),
        (Zigbee2MqttSwitch("p"), "zigbee2mqtt/p/availability", js({"state": "ON"}), None),
    ],
)
def test_tasmota_and_zigbee2mqtt_reports(
    switch: TasmotaSwitch | Zigbee2MqttSwitch, topic: str, payload: bytes, expected: object
) -> None:
    assert switch.report(topic, payload) == expected


def shelly_state() -> SwitchState:
    return SwitchState(ShellySwitch("plug", 0, source="me"), first_request_id=100)


def status(on: bool) -> bytes:
    return js({"id": 0, "output": on})


def notify(on: bool, ts: float) -> bytes:
    return js({"method": "NotifyStatus", "params": {"ts": ts, "switch:0": {"output": on}}})


def test_the_state_is_the_last_report_at_device_time_when_plausible() -> None:
    switch = shelly_state()
    assert switch.state is None
    switch.receive("plug/status/switch:0", status(True), retained=False, received_at=NOW)
    assert switch.state == ControlState(1.0, NOW)
    switch.receive("plug/events/rpc", notify(False, NOW + 0.5), retained=False, received_at=NOW + 1)
    assert switch.state == ControlState(0.0, NOW + 0.5)
    switch.receive("plug/events/rpc", notify(True, 12.0), retained=False, received_at=NOW + 2)
    assert switch.state == ControlState(1.0, NOW + 2)  # a clock that is not set
    switch.receive("plug/events/rpc", notify(False, NOW + 999), retained=False, received_at=NOW + 3)
    assert switch.state == ControlState(0.0, NOW + 3)  # a clock far ahead of ours


def test_a_retained_report_counts_only_with_a_device_time() -> None:
    switch = shelly_state()
    switch.receive("plug/status/switch:0", status(False), retained=True, received_at=NOW)
    assert switch.state is None  # replayed on subscribe: it confirms nothing
    switch.receive("plug/events/rpc", notify(False, NOW - 60), retained=True, received_at=NOW)
    assert switch.state == ControlState(0.0, NOW - 60)


def test_a_refusal_of_the_last_command_is_kept_until_the_next_command_or_report() -> None:
    switch = shelly_state()
    first = json.loads(switch.command(False).payload)["id"]
    second = json.loads(switch.command(True).payload)["id"]
    assert (first, second) == (100, 101)

    def refuse(request_id: int) -> None:
        reply = {"id": request_id, "src": "plug", "error": {"code": -1, "message": "nope"}}
        switch.receive("me/rpc", js(reply), retained=False, received_at=NOW)

    refuse(first)
    assert switch.refusal is None  # about a command already superseded
    refuse(second)
    assert switch.refusal == "nope (code -1)"
    switch.receive("plug/status/switch:0", status(False), retained=False, received_at=NOW + 1)
    assert switch.refusal is None
    refuse(second)
    switch.command(True)
    assert switch.refusal is None


def test_the_adapter_subscribes_to_the_switch_reports_too() -> None:
    def topics(**table: Any) -> tuple[str, ...]:
        config = mqtt_config(url="mqtt://h", client_id="gw", **table)
        return MqttAdapter("plug", config).topics

    assert topics(profile="shelly-gen2", device="d") == (
        "d/status/switch:0",
        "d/events/rpc",
        "gw/rpc",
    )
    assert topics(profile="tasmota", device="d") == (
        "tele/d/SENSOR",
        "stat/d/POWER",
        "stat/d/POWER1",
        "stat/d/RESULT",
        "tele/d/STATE",
    )
    assert topics(profile="zigbee2mqtt", device="d") == ("zigbee2mqtt/d",)


# -- against a broker -----------------------------------------------------------------------------

Plug = FakeShellyPlug | FakeTasmota | FakeZigbeePlug


@dataclass(frozen=True)
class Family:
    profile: str
    plug: type[Plug]


FAMILIES = [
    pytest.param(Family("shelly-gen2", FakeShellyPlug), id="shelly"),
    pytest.param(Family("tasmota", FakeTasmota), id="tasmota"),
    pytest.param(Family("zigbee2mqtt", FakeZigbeePlug), id="zigbee2mqtt"),
]

broker_tests = pytest.mark.timeout(30)


@pytest.fixture
async def broker(tmp_path: Path) -> AsyncIterator[Mosquitto]:
    async with Mosquitto.running(tmp_path / "broker") as running:
        yield running


def device_name(family: Family) -> str:
    return f"{family.plug.kind}-{secrets.token_hex(3)}"


def adapter_for(broker: Mosquitto, family: Family, device: str) -> MqttAdapter:
    config = mqtt_config(url=broker.url, profile=family.profile, device=device)
    return MqttAdapter(f"{family.plug.kind}-plug", config)


@contextlib.asynccontextmanager
async def streaming(adapter: MqttAdapter) -> AsyncIterator[list[Reading]]:
    """The adapter entered, with its stream read in the background (as the runtime does)."""
    readings: list[Reading] = []

    async def read() -> None:
        async with contextlib.aclosing(adapter.stream()) as stream:
            async for batch in stream:
                readings.extend(batch)

    async with adapter:
        reader = asyncio.create_task(read())
        try:
            yield readings
        finally:
            reader.cancel()
            await asyncio.wait([reader])


async def until(probe: Callable[[], Awaitable[T | None]], timeout: float = 5.0) -> T:
    """``probe()`` until it gives something truthy; polls with a deadline, never a fixed sleep."""
    async with asyncio.timeout(timeout):
        while not (result := await probe()):  # noqa: ASYNC110 - state() is a plain query
            await asyncio.sleep(0.01)
    return result


def reported(adapter: MqttAdapter, value: float, after: float) -> Callable[[], Awaitable[Any]]:
    async def probe() -> ControlState | None:
        state = await adapter.state(SWITCH)
        return state if state is not None and state.value == value and state.at >= after else None

    return probe


def plug_is(plug: Plug, on: bool) -> Callable[[], Awaitable[bool]]:
    async def probe() -> bool:
        return plug.on is on

    return probe


@broker_tests
@pytest.mark.parametrize("family", FAMILIES)
async def test_switch_off_then_on_is_carried_out_and_reported(
    broker: Mosquitto, family: Family
) -> None:
    device = device_name(family)
    adapter = adapter_for(broker, family, device)
    assert isinstance(adapter, ControllableAdapter)
    assert adapter.controls() == (Control(SWITCH, ControlKind.SWITCH),)
    async with streaming(adapter), family.plug(broker.host, broker.port, device) as plug:
        await until(reported(adapter, 1.0, after=0.0))
        sent = time.time()
        await adapter.apply(SWITCH, 0)
        off = await until(reported(adapter, 0.0, after=sent))
        assert not plug.on and plug.draw_kw == 0.0
        assert sent <= off.at <= time.time()

        sent = time.time()
        await adapter.apply(SWITCH, 1)
        on = await until(reported(adapter, 1.0, after=sent))
        assert plug.on and plug.draw_kw == plug.power_kw == 4.0
        assert sent <= on.at <= time.time()
        assert len(plug.commands) == 2


@broker_tests
@pytest.mark.parametrize("family", FAMILIES)
async def test_a_device_that_ignores_the_command_keeps_reporting_its_old_state(
    broker: Mosquitto, family: Family
) -> None:
    device = device_name(family)
    adapter = adapter_for(broker, family, device)
    async with (
        streaming(adapter),
        family.plug(broker.host, broker.port, device, obey=False) as plug,
    ):
        await until(reported(adapter, 1.0, after=0.0))
        sent = time.time()
        await adapter.apply(SWITCH, 0)
        later = await until(reported(adapter, 1.0, after=sent + 0.2))  # reports after the command
        assert later.value == 1.0 and plug.on
        assert len(plug.commands) == 1  # it got the command, and did not carry it out


@broker_tests
async def test_a_shelly_error_reply_fails_the_command_in_state(broker: Mosquitto) -> None:
    family = Family("shelly-gen2", FakeShellyPlug)
    device = device_name(family)
    adapter = adapter_for(broker, family, device)
    plug = FakeShellyPlug(
        broker.host, broker.port, device, error=(-103, "Invalid argument"), status_every=60.0
    )
    async with streaming(adapter), plug:
        await until(reported(adapter, 1.0, after=0.0))
        await adapter.apply(SWITCH, 0)

        async def refused() -> str | None:
            try:
                await adapter.state(SWITCH)
            except AdapterError as exc:
                return str(exc)
            return None

        message = await until(refused)
        assert "refused the last switch command: Invalid argument (code -103)" in message
        assert plug.on

        plug.error = None
        sent = time.time()
        await adapter.apply(SWITCH, 0)  # a new command clears the refusal
        await until(reported(adapter, 0.0, after=sent))


@broker_tests
@pytest.mark.parametrize("family", FAMILIES)
async def test_bad_values_are_refused_before_anything_is_published(
    broker: Mosquitto, family: Family
) -> None:
    device = device_name(family)
    adapter = adapter_for(broker, family, device)
    async with streaming(adapter), family.plug(broker.host, broker.port, device) as plug:
        for value in (0.5, 2, -1, math.nan, math.inf):
            with pytest.raises(AdapterError, match=r"switch.*0 or 1"):
                await adapter.apply(SWITCH, value)
        sent = time.time()
        await adapter.apply(SWITCH, 0)
        await until(reported(adapter, 0.0, after=sent))
        assert len(plug.commands) == 1  # QoS 1 from one client arrives in order: none before


@broker_tests
async def test_unknown_controls_are_named(broker: Mosquitto) -> None:
    adapter = adapter_for(broker, Family("tasmota", FakeTasmota), "t")
    async with adapter:
        with pytest.raises(AdapterError, match=r"no control 'dimmer' \(controls: \['switch'\]\)"):
            await adapter.apply("dimmer", 1)
        with pytest.raises(AdapterError, match="'dimmer'"):
            await adapter.state("dimmer")


async def test_generic_channels_have_no_controls() -> None:
    config = mqtt_config(url="mqtt://h", channels={"e": {"topic": "x", "path": "$", "unit": "Wh"}})
    adapter = MqttAdapter("meter", config)
    assert adapter.controls() == ()
    with pytest.raises(AdapterError, match=r"no control 'switch' \(controls: \[\]\)"):
        await adapter.apply(SWITCH, 1)


@broker_tests
async def test_commands_need_a_connection(broker: Mosquitto) -> None:
    adapter = adapter_for(broker, Family("shelly-gen2", FakeShellyPlug), "plug")
    with pytest.raises(AdapterError, match="not connected"):
        await adapter.apply(SWITCH, 1)  # not entered yet
    assert await adapter.state(SWITCH) is None
    async with streaming(adapter):
        await broker.stop()

        async def lost() -> bool:
            return not adapter.connected

        await until(lost)
        with pytest.raises(AdapterError, match="not connected"):
            await adapter.apply(SWITCH, 0)
    with pytest.raises(AdapterError, match="not connected"):
        await adapter.apply(SWITCH, 0)  # closed


@broker_tests
async def test_a_retained_state_without_device_time_confirms_nothing(broker: Mosquitto) -> None:
    family = Family("tasmota", FakeTasmota)
    device = device_name(family)
    async with aiomqtt.Client(broker.host, broker.port, identifier="retainer") as client:
        await client.publish(f"stat/{device}/POWER", b"OFF", qos=1, retain=True)
    adapter = adapter_for(broker, family, device)
    async with (
        streaming(adapter) as readings,
        aiomqtt.Client(broker.host, broker.port, identifier="live") as client,
    ):
        energy = {"ENERGY": {"Total": 1.0, "Power": 5}}
        await client.publish(f"tele/{device}/SENSOR", js(energy), qos=1)

        async def read() -> bool:
            return bool(readings)

        await until(read)  # the retained message came first, on subscribe
        assert await adapter.state(SWITCH) is None
        await client.publish(f"stat/{device}/POWER", b"ON", qos=1)
        await until(reported(adapter, 1.0, after=0.0))


@broker_tests
@pytest.mark.parametrize("family", FAMILIES)
async def test_readings_keep_flowing_while_commands_are_sent(
    broker: Mosquitto, family: Family
) -> None:
    device = device_name(family)
    adapter = adapter_for(broker, family, device)
    plug = family.plug(broker.host, broker.port, device, status_every=0.1)
    async with streaming(adapter) as readings, plug:
        await until(reported(adapter, 1.0, after=0.0))

        def more_than(count: int) -> Callable[[], Awaitable[bool]]:
            async def probe() -> bool:
                return len(readings) >= count + 2

            return probe

        for value in (0, 1, 0, 1):
            before = len(readings)
            sent = time.time()
            await adapter.apply(SWITCH, value)
            await until(reported(adapter, float(value), after=sent))
            await until(more_than(before))
        power = {r.value for r in readings if r.channel == "power"}
        assert {0.0, 4000.0} <= power
        energy = [r.value for r in readings if r.channel == "energy"]
        assert energy == sorted(energy) and energy[-1] > energy[0]
        assert adapter.malformed_count == 0
