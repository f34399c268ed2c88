"""Modbus switches (a coil or a holding register) and the site meter kit, against real
pymodbus servers (tests/kit/modbus.py)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest

from adapters.modbus import BackoffPolicy, ModbusAdapter
from adapters.modbus.transport import ConnectionRegistry, DeviceRefused
from gateway import AdapterError, Control, ControlKind, ControllableAdapter, ControlState
from gateway.errors import ConfigError
from gateway.metering.discovery import convert_adapter_config
from tests.kit.modbus import EastronMeter, modbus_config, modbus_tcp_server, words

FAST = BackoffPolicy(initial=0.1, cap=0.4)
COIL = {"switch": {"coil": 16}}
HOLDING = {"switch": {"holding": 9, "on": 0x00A5, "off": 0x005A}}
READ_COILS, WRITE_COIL, READ_HOLDING, WRITE_REGISTER = 1, 5, 3, 6


@pytest.fixture
def registry() -> Iterator[ConnectionRegistry]:
    connections = ConnectionRegistry()
    yield connections
    assert len(connections) == 0


def make(registry: ConnectionRegistry, port: int, **fields: Any) -> ModbusAdapter:
    fields.setdefault("timeout", "1s")
    fields.setdefault("profile", "eastron-sdm630")
    config = modbus_config(host="127.0.0.1", port=port, **fields)
    return ModbusAdapter("boiler", config, backoff=FAST, registry=registry)


def relay(*, coil: bool = False, register: int = 0x005A) -> EastronMeter:
    """A metered relay: an SDM630 map plus coil 16 and holding register 9."""
    meter = EastronMeter(power_w=2000.0)
    meter.set_coil(16, coil)
    meter.write("holding", 9, [register])
    return meter


def test_controls_are_switches_by_name() -> None:
    adapter = ModbusAdapter(
        "x", modbus_config(host="h", profile="sunspec", controls={**COIL, "pump": {"coil": 3}})
    )
    assert isinstance(adapter, ControllableAdapter)
    assert list(adapter.controls()) == [
        Control("pump", ControlKind.SWITCH),
        Control("switch", ControlKind.SWITCH),
    ]
    assert list(ModbusAdapter("y", modbus_config(host="h", profile="sunspec")).controls()) == []


async def test_a_coil_is_written_and_read_back(registry: ConnectionRegistry) -> None:
    meter = relay(coil=False)
    async with (
        modbus_tcp_server({3: meter}) as server,
        make(registry, server.port, unit=3, controls=COIL) as adapter,
    ):
        before = time.time()
        first = await adapter.state("switch")
        await adapter.apply("switch", 1)
        assert meter.coils[16] is True
        on = await adapter.state("switch")
        await adapter.apply("switch", 0.0)
        off = await adapter.state("switch")
        after = time.time()
        readings = await adapter.read()  # the meter still reads between commands
    assert (first.value, on.value, off.value) == (0.0, 1.0, 0.0)
    assert before <= first.at <= on.at <= off.at <= after  # stamped with each read's answer
    assert meter.coils[16] is False
    assert {r.channel for r in readings} == {"energy", "export_energy", "power"}
    controls = [(r.unit, r.function_code, r.address) for r in server.requests if r.address == 16]
    assert controls == [(3, READ_COILS, 16), (3, WRITE_COIL, 16)] * 2 + [(3, READ_COILS, 16)]


async def test_a_coil_set_by_the_device_itself_is_reported(registry: ConnectionRegistry) -> None:
    meter = relay(coil=True)
    async with (
        modbus_tcp_server({1: meter}) as server,
        make(registry, server.port, controls=COIL) as adapter,
    ):
        assert (await adapter.state("switch")).value == 1.0
        meter.set_coil(16, False)  # someone pressed the button on the device
        assert (await adapter.state("switch")).value == 0.0


async def test_a_holding_register_takes_its_on_and_off_values(
    registry: ConnectionRegistry,
) -> None:
    meter = relay(register=0x005A)
    async with (
        modbus_tcp_server({1: meter}) as server,
        make(registry, server.port, controls=HOLDING) as adapter,
    ):
        assert (await adapter.state("switch")).value == 0.0
        await adapter.apply("switch", 1)
        assert meter.holding[9] == 0x00A5
        assert (await adapter.state("switch")).value == 1.0
        await adapter.apply("switch", 0)
        assert meter.holding[9] == 0x005A
        assert (await adapter.state("switch")).value == 0.0
    requests = [r.function_code for r in server.requests if r.address == 9]
    assert requests == [READ_HOLDING, WRITE_REGISTER, READ_HOLDING, WRITE_REGISTER, READ_HOLDING]


async def test_a_holding_register_defaults_to_one_and_zero(registry: ConnectionRegistry) -> None:
    meter = relay(register=0)
    async with (
        modbus_tcp_server({1: meter}) as server,
        make(registry, server.port, controls={"switch": {"holding": 9}}) as adapter,
    ):
        await adapter.apply("switch", 1)
        assert meter.holding[9] == 1
        assert (await adapter.state("switch")).value == 1.0


async def test_a_register_neither_on_nor_off_is_an_error_naming_it(
    registry: ConnectionRegistry,
) -> None:
    meter = relay(register=7)
    async with (
        modbus_tcp_server({1: meter}) as server,
        make(registry, server.port, controls=HOLDING) as adapter,
    ):
        with pytest.raises(AdapterError, match=r"register 9 reads 7, neither on \(165\)") as caught:
            await adapter.state("switch")
        assert caught.value.adapter == "boiler"
        await adapter.apply("switch", 0)  # the command still goes through
        assert (await adapter.state("switch")) == ControlState(
            0.0, at=pytest.approx(time.time(), abs=5)
        )


async def test_a_device_that_ignores_writes_keeps_its_state(registry: ConnectionRegistry) -> None:
    meter = relay(coil=True, register=0x00A5)
    meter.obey_writes = False
    both = {**COIL, "pump": {"holding": 9, "on": 0x00A5, "off": 0x005A}}
    async with (
        modbus_tcp_server({1: meter}) as server,
        make(registry, server.port, controls=both) as adapter,
    ):
        await adapter.apply("switch", 0)  # answered with success ...
        await adapter.apply("pump", 0)
        assert (await adapter.state("switch")).value == 1.0  # ... and not done
        assert (await adapter.state("pump")).value == 1.0
    assert (meter.coils[16], meter.holding[9]) == (True, 0x00A5)
    assert [r.function_code for r in server.requests].count(WRITE_COIL) == 1


async def test_a_refused_write_is_an_error_with_the_code(registry: ConnectionRegistry) -> None:
    meter = relay()
    async with (
        modbus_tcp_server({1: meter}) as server,
        make(registry, server.port, controls={"switch": {"holding": 500}}) as adapter,
    ):
        with pytest.raises(
            DeviceRefused, match="refused to write 1 to the holding register at 500"
        ) as caught:
            await adapter.apply("switch", 1)
        assert caught.value.code == 2  # illegal address
        with pytest.raises(DeviceRefused, match="holding registers at 500"):
            await adapter.state("switch")


async def test_server_down_is_an_adapter_error(registry: ConnectionRegistry) -> None:
    meter = relay()
    async with (
        modbus_tcp_server({1: meter}) as server,
        make(registry, server.port, controls=COIL) as adapter,
    ):
        await adapter.apply("switch", 1)
        await server.stop()
        with pytest.raises(AdapterError):
            await adapter.apply("switch", 0)
        with pytest.raises(AdapterError):  # and fails fast within the backoff
            await adapter.state("switch")
    assert meter.coils[16] is True


async def test_bad_commands_and_calls_outside_the_lifetime(registry: ConnectionRegistry) -> None:
    meter = relay()
    async with modbus_tcp_server({1: meter}) as server:
        adapter = make(registry, server.port, controls=COIL)
        with pytest.raises(AdapterError, match="lifetime"):
            await adapter.apply("switch", 1)
        async with adapter:
            with pytest.raises(AdapterError, match="0 or 1"):
                await adapter.apply("switch", 0.5)
            with pytest.raises(AdapterError, match=r"no control 'pump' \(it has 'switch'\)"):
                await adapter.state("pump")
        with pytest.raises(AdapterError, match="lifetime"):
            await adapter.state("switch")
    assert not any(r.address == 16 for r in server.requests)


# --------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    ("controls", "key", "message"),
    [
        ({"switch": {}}, "", "controls.switch: set exactly one of `coil` or `holding`"),
        ({"switch": {"coil": 1, "holding": 2}}, "", "controls.switch: set exactly one"),
        ({"switch": {"coil": 70000}}, "", "controls.switch.coil: 70000 is outside 0..65535"),
        ({"switch": {"holding": -1}}, "", "controls.switch.holding: -1 is outside"),
        ({"switch": {"coil": 1, "on": 1}}, "", "controls.switch.on: only for a holding register"),
        ({"switch": {"holding": 1, "on": 3, "off": 3}}, "", "`on` and `off` are both 3"),
        ({"switch": {"holding": 1, "on": 0}}, "", "`on` and `off` are both 0"),
        ({"switch": {"holding": 1, "off": 65536}}, "", "controls.switch.off: 65536 is outside"),
        # msgspec does not say which table of a map: the key itself is named
        ({"switch": {"cooil": 1}}, ".controls[...].cooil", "unknown key"),
        ({"switch": {"coil": "16"}}, ".controls[...].coil", "got `str`"),
        ({" ": {"coil": 1}}, ".controls", "a control with an empty name"),
    ],
)
def test_config_errors_name_the_key(controls: dict[str, Any], key: str, message: str) -> None:
    table = {"type": "modbus", "host": "h", "profile": "sunspec", "controls": controls}
    with pytest.raises(ConfigError) as caught:
        convert_adapter_config("boiler", ModbusAdapter, table)
    assert caught.value.key == f"adapters.boiler{key}"
    assert message in str(caught.value)


def test_config_takes_a_coil_or_a_holding_register() -> None:
    config = modbus_config(
        host="h", profile="sunspec", controls={**COIL, "pump": HOLDING["switch"]}
    )
    coil, holding = config.controls["switch"], config.controls["pump"]
    assert (coil.coil, coil.holding, coil.on_value, coil.off_value) == (16, None, 1, 0)
    assert (holding.holding, holding.on_value, holding.off_value) == (9, 0xA5, 0x5A)
    with pytest.raises(msgspec.ValidationError, match=r"controls\.switch: set exactly one"):
        modbus_config(host="h", profile="sunspec", controls={"switch": {}})


# --------------------------------------------------------------------------- the site meter


async def test_follow_power_is_reflected_in_every_read(registry: ConnectionRegistry) -> None:
    plugs = {"a": True, "b": True}
    clock = [0.0]
    meter = EastronMeter("sdm630")
    meter.follow_power(
        lambda: 3.0 + 4.0 * sum(plugs.values()), clock=lambda: clock[0], from_kwh=100.0
    )
    async with (
        modbus_tcp_server({1: meter}) as server,
        make(registry, server.port) as adapter,
    ):
        first = {r.channel: r.value for r in await adapter.read()}
        plugs["a"] = False
        clock[0] = 360.0  # 11 kW for 360 s (until this read sampled 7 kW): 1.1 kWh
        second = {r.channel: r.value for r in await adapter.read()}
        plugs["b"] = False
        clock[0] = 720.0  # then 7 kW for 360 s: 0.7 kWh
        third = {r.channel: r.value for r in await adapter.read()}
    assert first == {"energy": 100.0, "export_energy": 0.0, "power": 11000.0}
    assert second["power"] == 7000.0
    assert second["energy"] == pytest.approx(101.1, abs=1e-4)  # float32 on the wire
    assert third["power"] == 3000.0
    assert third["energy"] == pytest.approx(101.8, abs=1e-4)


async def test_follow_power_exporting_counts_on_the_export_register() -> None:
    clock = [0.0]
    meter = EastronMeter("sdm120", energy_kwh=5.0)
    meter.follow_power(lambda: -1.8, clock=lambda: clock[0])
    clock[0] = 1000.0
    meter.refresh()
    assert (meter.energy_kwh, meter.export_kwh) == (5.0, 0.5)
    assert [meter.input[meter.power_address], meter.input[meter.power_address + 1]] == words(
        -1800.0, "f32"
    )


async def test_a_failing_follow_callable_is_a_device_failure(registry: ConnectionRegistry) -> None:
    power = [2.0]
    meter = EastronMeter("sdm630")
    meter.follow_power(lambda: power[0])
    async with (
        modbus_tcp_server({1: meter}) as server,
        make(registry, server.port) as adapter,
    ):
        power[0] = float("nan")
        with pytest.raises(DeviceRefused) as caught:
            await adapter.read()
        assert caught.value.code == 4
        power[0] = 2.5
        readings = {r.channel: r.value for r in await adapter.read()}
    assert readings["power"] == 2500.0
    assert len(meter.failures) == 1 and "nan" in str(meter.failures[0])


def test_set_power_stops_following() -> None:
    meter = EastronMeter()
    meter.follow_power(lambda: 5.0)
    meter.set_power_w(100.0)
    meter.refresh()
    assert [meter.input[meter.power_address], meter.input[meter.power_address + 1]] == words(
        100.0, "f32"
    )


async def test_the_kit_serves_coils_up_to_the_highest_one_set(
    registry: ConnectionRegistry,
) -> None:
    meter = EastronMeter()
    meter.set_coil(40, True)
    controls = {name: {"coil": coil} for name, coil in (("a", 40), ("b", 41), ("c", 48))}
    async with (
        modbus_tcp_server({1: meter}) as server,
        make(registry, server.port, controls=controls) as adapter,
    ):
        assert (await adapter.state("a")).value == 1.0
        assert (await adapter.state("b")).value == 0.0
        with pytest.raises(DeviceRefused, match="coil at 48"):
            await adapter.state("c")
