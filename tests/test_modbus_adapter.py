"""The Modbus adapter end to end, against real pymodbus servers (tests/kit/modbus.py)."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest

from adapters.modbus import BackoffPolicy, ModbusAdapter
from adapters.modbus.transport import ConnectionRegistry
from gateway.errors import AdapterLoadError, AdapterReadError
from gateway.plugin import Channel, ChannelKind, PollingAdapter, Reading, Unit
from tests.kit.modbus import (
    NAN_F32,
    EastronMeter,
    SimServer,
    SunSpecMeter,
    modbus_config,
    modbus_polls_per_second,
    modbus_rtu_server,
    modbus_tcp_server,
    silent_tcp_server,
    words,
)

FAST = BackoffPolicy(initial=0.1, cap=0.4)


@pytest.fixture
def registry() -> Iterator[ConnectionRegistry]:
    """A private connection registry; every connection must be released by the test's end."""
    connections = ConnectionRegistry()
    yield connections
    assert len(connections) == 0


def make(
    registry: ConnectionRegistry,
    name: str = "meter",
    backoff: BackoffPolicy = FAST,
    **fields: Any,
) -> ModbusAdapter:
    fields.setdefault("timeout", "1s")
    return ModbusAdapter(name, modbus_config(**fields), backoff=backoff, registry=registry)


def values(readings: list[Reading] | Any) -> dict[str, float]:
    return {r.channel: r.value for r in readings}


async def read_until_ok(adapter: ModbusAdapter, within: float) -> tuple[list[Reading], float]:
    """Poll like the gateway would (every 20 ms) until a read succeeds; returns it and the wait."""
    started = time.monotonic()
    while True:
        try:
            return list(await adapter.read()), time.monotonic() - started
        except AdapterReadError:
            if time.monotonic() - started > within:
                raise
            await asyncio.sleep(0.02)


# --------------------------------------------------------------------------- profiles


async def test_sdm630_end_to_end(registry: ConnectionRegistry) -> None:
    meter = EastronMeter("sdm630", energy_kwh=1234.5, export_kwh=10.25, power_w=2300.5)
    async with (
        modbus_tcp_server({1: meter}) as server,
        make(registry, host="127.0.0.1", port=server.port, profile="eastron-sdm630") as adapter,
    ):
        assert isinstance(adapter, PollingAdapter)
        before = time.time()
        readings = await adapter.read()
        after = time.time()
    assert values(readings) == {"energy": 1234.5, "export_energy": 10.25, "power": 2300.5}
    assert all(before <= r.at <= after for r in readings)
    assert {(r.function_code, r.address, r.count) for r in server.requests} == {
        (4, 0x0034, 2),
        (4, 0x0048, 4),
    }
    assert list(adapter.channels()) == [
        Channel("energy", ChannelKind.ENERGY, Unit.KWH),
        Channel("export_energy", ChannelKind.ENERGY, Unit.KWH),
        Channel("power", ChannelKind.POWER, Unit.W),
    ]


async def test_sdm120_end_to_end(registry: ConnectionRegistry) -> None:
    meter = EastronMeter("sdm120", energy_kwh=42.0, power_w=-150.0)
    async with (
        modbus_tcp_server({7: meter}) as server,
        make(
            registry, host="127.0.0.1", port=server.port, unit=7, profile="eastron-sdm120"
        ) as adapter,
    ):
        readings = await adapter.read()
    assert values(readings) == {"energy": 42.0, "export_energy": 0.0, "power": -150.0}
    assert {r.address for r in server.requests} == {0x000C, 0x0048}
    assert {r.unit for r in server.requests} == {7}


async def test_energy_follows_the_meter(registry: ConnectionRegistry) -> None:
    clock = [0.0]
    meter = EastronMeter("sdm630")
    meter.ramp(kw=3.6, clock=lambda: clock[0], from_kwh=100.0)
    async with (
        modbus_tcp_server({1: meter}) as server,
        make(registry, host="127.0.0.1", port=server.port, profile="eastron-sdm630") as adapter,
    ):
        first = values(await adapter.read())
        clock[0] = 1000.0  # 3.6 kW for 1000 s is 1 kWh
        second = values(await adapter.read())
        meter.set_energy_kwh(1234.5)
        third = values(await adapter.read())
    assert (first["energy"], second["energy"], third["energy"]) == (100.0, 101.0, 1234.5)
    assert first["power"] == 3600.0


async def test_sunspec_model_203_end_to_end(registry: ConnectionRegistry) -> None:
    meter = SunSpecMeter(model_id=203)
    meter.set_energy(123456, sf=1)  # TotWhImp 123456 x 10^1 Wh
    meter.set_export(789)
    meter.set_power(23005, sf=-1)  # 2300.5 W
    async with (
        modbus_tcp_server({1: meter}) as server,
        make(registry, host="127.0.0.1", port=server.port, profile="sunspec") as adapter,
    ):
        before = list(adapter.channels())
        readings = await adapter.read()
        after = {c.name: c for c in adapter.channels()}
    assert values(readings) == {"energy": 1234560.0, "export_energy": 7890.0, "power": 2300.5}
    assert [c.wrap for c in before] == [None, None, None]
    assert after["energy"] == Channel("energy", ChannelKind.ENERGY, Unit.WH, wrap=2**32 * 10)
    assert after["export_energy"].wrap == 2**32 * 10
    assert after["power"] == Channel("power", ChannelKind.POWER, Unit.W)
    # Discovery (marker + header), then W .. TotWh_SF of the model in one request.
    assert [(r.function_code, r.address, r.count) for r in server.requests] == [
        (3, 40000, 4),
        (3, 40070, 2),
        (3, 40070 + 18, 37),
    ]


async def test_sunspec_float_model_at_another_base(registry: ConnectionRegistry) -> None:
    meter = SunSpecMeter(base=50000, model_id=213, fillers=[(101, 50)])
    meter.set_energy(98765.5)
    meter.set_power(-420.25)
    async with (
        modbus_tcp_server({3: meter}) as server,
        make(registry, host="127.0.0.1", port=server.port, unit=3, profile="sunspec") as adapter,
    ):
        readings = await adapter.read()
        channels = {c.name: c for c in adapter.channels()}
    # export_energy is NaN ("not implemented") in the float model: no reading.
    assert values(readings) == {"energy": 98765.5, "power": -420.25}
    assert channels["energy"].wrap is None


async def test_sunspec_layout_is_cached_and_rediscovered_after_reconnect(
    registry: ConnectionRegistry,
) -> None:
    old = SunSpecMeter(model_id=203)
    old.set_energy(1000)
    async with (
        modbus_tcp_server({1: old}) as server,
        make(registry, host="127.0.0.1", port=server.port, profile="sunspec") as adapter,
    ):
        for _ in range(3):
            assert values(await adapter.read())["energy"] == 1000.0
        assert server.reads_at(40000) == 1
        await server.stop()
        # A different device (firmware update): the meter model moved and is float now.
        new = SunSpecMeter(model_id=213, fillers=[(120, 26)])
        new.set_energy(2000.5)
        replacement = SimServer({1: new}, port=server.port)
        await replacement.start()
        try:
            readings, _ = await read_until_ok(adapter, within=2.0)
        finally:
            await replacement.stop()
    assert values(readings)["energy"] == 2000.5
    assert replacement.reads_at(40000) == 1


# --------------------------------------------------------------------------- generic map


async def test_generic_map_holding_u32_with_scale(registry: ConnectionRegistry) -> None:
    meter = EastronMeter()
    meter.write("holding", 100, words(123456, "u32"))
    meter.write("holding", 200, words(123456, "u32", word_order="little"))
    meter.write("holding", 300, [*words(-15, "s16"), *words(2, "s16")])
    registers = {
        "energy": {
            "address": 100,
            "function": "holding",
            "type": "u32",
            "scale": 0.01,
            "unit": "kWh",
            "wrap": 4294967296,
        },
        "swapped": {
            "address": 200,
            "function": "holding",
            "type": "u32",
            "word_order": "little",
            "unit": "Wh",
        },
        "power": {
            "address": 300,
            "function": "holding",
            "type": "s16",
            "scale_register": 301,
            "kind": "power",
            "unit": "W",
        },
    }
    async with (
        modbus_tcp_server({1: meter}) as server,
        make(registry, host="127.0.0.1", port=server.port, registers=registers) as adapter,
    ):
        readings = await adapter.read()
        channels = {c.name: c for c in adapter.channels()}
    assert values(readings) == {"energy": 1234.56, "swapped": 123456.0, "power": -1500.0}
    assert channels["energy"].wrap == pytest.approx(42949672.96)
    assert channels["energy"].unit is Unit.KWH
    assert channels["power"].kind is ChannelKind.POWER
    assert {r.function_code for r in server.requests} == {3}


async def test_device_exception_is_a_read_error(registry: ConnectionRegistry) -> None:
    registers = {"energy": {"address": 999, "function": "input", "type": "f32", "unit": "kWh"}}
    meter = EastronMeter(energy_kwh=5.0)
    async with (
        modbus_tcp_server({1: meter}) as server,
        make(registry, host="127.0.0.1", port=server.port, registers=registers) as bad,
        make(
            registry, "good", host="127.0.0.1", port=server.port, profile="eastron-sdm630"
        ) as good,
    ):
        with pytest.raises(AdapterReadError, match="Modbus exception 2") as caught:
            await bad.read()
        assert caught.value.adapter == "meter"
        # The device answered: the link is healthy and the other adapter reads at once.
        assert values(await good.read())["energy"] == 5.0
    assert server.connections == 1


# --------------------------------------------------------------------------- sentinels


async def test_not_implemented_values_give_no_reading(registry: ConnectionRegistry) -> None:
    eastron = EastronMeter(power_w=100.0)
    eastron.write("input", EastronMeter.IMPORT, NAN_F32)
    sunspec = SunSpecMeter(model_id=203)
    sunspec.set_energy(0, sf=0)  # acc32 0: not accumulated
    sunspec.set_export(500)
    sunspec.set_power(0x8000 - 0x10000, sf=0)  # int16 0x8000: not implemented
    no_sf = SunSpecMeter(model_id=203)
    no_sf.set_energy(1000)
    no_sf.set_raw(54, [0x8000])  # TotWh_SF not implemented
    no_sf.set_power(10, sf=0)
    async with (
        modbus_tcp_server({1: eastron, 2: sunspec, 3: no_sf}) as server,
        make(registry, "e", host="127.0.0.1", port=server.port, profile="eastron-sdm630") as e,
        make(registry, "s", host="127.0.0.1", port=server.port, unit=2, profile="sunspec") as s,
        make(registry, "n", host="127.0.0.1", port=server.port, unit=3, profile="sunspec") as n,
    ):
        assert values(await e.read()) == {"export_energy": 0.0, "power": 100.0}
        assert values(await s.read()) == {"export_energy": 500.0}
        assert values(await n.read()) == {"power": 10.0}


# --------------------------------------------------------------------------- sharing


async def test_adapters_on_one_endpoint_share_a_connection_and_take_turns(
    registry: ConnectionRegistry,
) -> None:
    meters = {1: EastronMeter(energy_kwh=1.0), 2: EastronMeter(energy_kwh=2.0)}
    async with modbus_tcp_server(meters) as server:
        async with (
            make(registry, "a", host="127.0.0.1", port=server.port, profile="eastron-sdm630") as a,
            make(
                registry, "b", host="127.0.0.1", port=server.port, unit=2, profile="eastron-sdm630"
            ) as b,
        ):
            assert len(registry) == 1
            for _ in range(5):
                ra, rb = await asyncio.gather(a.read(), b.read())
                assert (values(ra)["energy"], values(rb)["energy"]) == (1.0, 2.0)
        assert len(registry) == 0  # closed when the last user left
    assert server.connections == 1
    units = [r.unit for r in server.requests]
    assert len(units) == 20
    # Each poll is two requests; a poll never interleaves with the other unit's.
    assert all(units[i] == units[i + 1] for i in range(0, len(units), 2))
    assert units.count(1) == units.count(2) == 10


async def test_different_endpoints_get_their_own_connections(
    registry: ConnectionRegistry,
) -> None:
    async with (
        modbus_tcp_server({1: EastronMeter(energy_kwh=1.0)}) as one,
        modbus_tcp_server({1: EastronMeter(energy_kwh=2.0)}) as two,
        make(registry, "a", host="127.0.0.1", port=one.port, profile="eastron-sdm630") as a,
        make(registry, "b", host="127.0.0.1", port=two.port, profile="eastron-sdm630") as b,
    ):
        assert len(registry) == 2
        ra, rb = await asyncio.gather(a.read(), b.read())
    assert (values(ra)["energy"], values(rb)["energy"]) == (1.0, 2.0)


async def test_close_after_poll_reconnects_each_poll_but_keeps_the_layout(
    registry: ConnectionRegistry,
) -> None:
    meter = SunSpecMeter()
    meter.set_energy(10)
    async with (
        modbus_tcp_server({1: meter}) as server,
        make(
            registry,
            host="127.0.0.1",
            port=server.port,
            profile="sunspec",
            close_after_poll=True,
        ) as adapter,
    ):
        for _ in range(3):
            assert values(await adapter.read())["energy"] == 10.0
    assert server.connections == 3
    assert server.reads_at(40000) == 1


async def test_connect_delay_and_request_pause_pace_the_device(
    registry: ConnectionRegistry,
) -> None:
    async with (
        modbus_tcp_server({1: EastronMeter()}) as server,
        make(
            registry,
            host="127.0.0.1",
            port=server.port,
            profile="eastron-sdm630",
            connect_delay="150ms",
            request_pause="100ms",
        ) as adapter,
    ):
        started = time.monotonic()
        await adapter.read()  # connect, wait 150 ms, request, wait 100 ms, request
        first = time.monotonic() - started
    assert first >= 0.25


# --------------------------------------------------------------------------- failures


async def test_device_gone_backs_off_and_resumes(registry: ConnectionRegistry) -> None:
    meter = EastronMeter(energy_kwh=7.0)
    async with (
        modbus_tcp_server({1: meter}) as server,
        make(registry, host="127.0.0.1", port=server.port, profile="eastron-sdm630") as adapter,
    ):
        assert values(await adapter.read())["energy"] == 7.0
        await server.stop()

        attempts: list[float] = []
        failures = 0
        started = time.monotonic()
        while time.monotonic() - started < 2.0:  # a gateway polling much too often
            try:
                await adapter.read()
            except AdapterReadError as exc:
                failures += 1
                if "cannot connect" in str(exc):
                    attempts.append(time.monotonic())
            else:
                raise AssertionError("a reading from a device that is gone")
            await asyncio.sleep(0.01)

        # Spaced by the backoff (0.05-0.1, 0.1-0.2, then 0.2-0.4 s: equal jitter), never a loop.
        gaps = [b - a for a, b in itertools.pairwise(attempts)]
        assert 4 <= len(attempts) <= 12, gaps
        assert all(gap >= 0.045 for gap in gaps), gaps
        assert all(gap >= 0.19 for gap in gaps[2:]), gaps
        assert max(gaps) <= FAST.cap + 0.2, gaps
        assert failures > 3 * len(attempts)  # the rest failed fast, without a connect

        await server.start()
        readings, waited = await read_until_ok(adapter, within=FAST.cap + 1.0)
    assert values(readings)["energy"] == 7.0
    assert waited <= FAST.cap + 1.0


async def test_silent_device_times_out_and_is_not_hammered(registry: ConnectionRegistry) -> None:
    async with (
        silent_tcp_server() as silent,
        make(
            registry,
            host="127.0.0.1",
            port=silent.port,
            profile="eastron-sdm630",
            timeout="200ms",
            backoff=BackoffPolicy(initial=0.2, cap=0.4),
        ) as adapter,
    ):
        timeouts = 0
        started = time.monotonic()
        while time.monotonic() - started < 1.5:
            try:
                await adapter.read()
            except AdapterReadError as exc:
                timeouts += "no answer" in str(exc)
            else:
                raise AssertionError("a reading from a silent device")
            await asyncio.sleep(0.01)
    # Each connection: 200 ms timeout, then 0.1-0.2 / 0.2-0.4 / 0.2-0.4 s backoff: 3 to 5.
    assert 2 <= silent.connections <= 5
    assert timeouts == silent.connections


async def test_read_outside_the_lifetime_fails(registry: ConnectionRegistry) -> None:
    adapter = make(registry, host="127.0.0.1", port=1, profile="eastron-sdm630")
    with pytest.raises(AdapterReadError, match="lifetime"):
        await adapter.read()


# --------------------------------------------------------------------------- RTU


async def test_rtu_reads_the_same_values_as_tcp(registry: ConnectionRegistry) -> None:
    meter = EastronMeter("sdm630", energy_kwh=1234.5, export_kwh=3.5, power_w=-99.0)
    async with (
        modbus_tcp_server({5: meter}) as tcp,
        modbus_rtu_server({5: meter}) as (rtu, serial_port),
        make(
            registry, "tcp", host="127.0.0.1", port=tcp.port, unit=5, profile="eastron-sdm630"
        ) as over_tcp,
        make(
            registry,
            "rtu",
            serial_port=serial_port,
            baudrate=9600,
            unit=5,
            profile="eastron-sdm630",
        ) as over_rtu,
    ):
        via_tcp = values(await over_tcp.read())
        via_rtu = values(await over_rtu.read())
        meter.set_energy_kwh(1300.25)
        again = values(await over_rtu.read())
    assert via_rtu == via_tcp == {"energy": 1234.5, "export_energy": 3.5, "power": -99.0}
    assert again["energy"] == 1300.25
    assert {r.unit for r in rtu.requests} == {5}


async def test_serial_port_shared_only_with_the_same_line_settings(
    registry: ConnectionRegistry,
) -> None:
    first = make(registry, "a", serial_port="/dev/ttyECGW0", profile="eastron-sdm630")
    same = make(registry, "b", serial_port="/dev/ttyECGW0", unit=2, profile="eastron-sdm630")
    other = make(
        registry, "c", serial_port="/dev/ttyECGW0", baudrate=19200, profile="eastron-sdm630"
    )
    async with first, same:
        assert len(registry) == 1
        with pytest.raises(AdapterLoadError, match="baudrate") as caught:
            await other.__aenter__()
        assert caught.value.adapter == "c"


async def test_serial_port_that_does_not_exist_is_a_read_error(
    registry: ConnectionRegistry,
) -> None:
    async with make(
        registry, serial_port="/dev/does-not-exist-ecgw", profile="eastron-sdm630"
    ) as adapter:
        with pytest.raises(AdapterReadError, match="cannot connect"):
            await adapter.read()
        with pytest.raises(AdapterReadError, match="next connection attempt"):
            await adapter.read()


# --------------------------------------------------------------------------- config


def _energy(**extra: Any) -> dict[str, Any]:
    return {"address": 1, "function": "input", "type": "f32", "unit": "kWh", **extra}


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"host": "h", "serial_port": "/dev/x", "profile": "sunspec"}, ["host", "serial_port"]),
        ({"profile": "sunspec"}, ["host", "serial_port"]),
        ({"host": "h"}, ["profile", "registers"]),
        ({"host": "h", "profile": "sunspec", "registers": {"e": _energy()}}, ["profile"]),
        ({"hots": "h", "profile": "sunspec"}, ["hots"]),
        ({"host": "h", "profile": "eastron-sdm999"}, ["profile"]),
        ({"host": "h", "profile": "sunspec", "parity": "X"}, ["parity"]),
        ({"host": "h", "profile": "sunspec", "port": 0}, ["port"]),
        ({"host": "h", "profile": "sunspec", "unit": 300}, ["unit"]),
        ({"host": "h", "profile": "sunspec", "timeout": "0s"}, ["timeout"]),
        ({"host": "h", "registers": {"e": _energy(unit="W")}}, ["registers.e.unit"]),
        (
            {"host": "h", "registers": {"e": _energy(scale=0.1, scale_register=2)}},
            ["registers.e", "scale_register"],
        ),
        (
            {"host": "h", "registers": {"p": _energy(kind="power", unit="W", wrap=65536)}},
            ["registers.p.wrap"],
        ),
        ({"host": "h", "registers": {"e": _energy(type="f16")}}, ["registers", "type"]),
        ({"host": "h", "registers": {"e": _energy(functon="input")}}, ["functon"]),
    ],
)
def test_config_errors_name_the_key(fields: dict[str, Any], named: list[str]) -> None:
    with pytest.raises(msgspec.ValidationError) as caught:
        modbus_config(**fields)
    for key in named:
        assert key in str(caught.value)


def test_config_defaults_and_durations() -> None:
    config = modbus_config(host="192.168.1.50", profile="eastron-sdm630", poll_interval="10s")
    assert (config.port, config.unit, config.timeout, config.poll_interval) == (502, 1, 3.0, 10.0)
    assert (config.connect_delay, config.request_pause, config.close_after_poll) == (0, 0, False)
    serial = modbus_config(serial_port="/dev/ttyUSB0", profile="sunspec", parity="E", stopbits=2)
    assert (serial.baudrate, serial.parity, serial.stopbits, serial.bytesize) == (9600, "E", 2, 8)


def test_adapter_refuses_a_foreign_config() -> None:
    from gateway.plugin import AdapterConfig

    with pytest.raises(AdapterLoadError, match="ModbusConfig"):
        ModbusAdapter("x", AdapterConfig(type="modbus"))


# --------------------------------------------------------------------------- benchmark


async def test_benchmark_helper_runs() -> None:
    rate = await modbus_polls_per_second(n_devices=3, seconds=0.3)
    shared = await modbus_polls_per_second(n_devices=3, seconds=0.3, one_server=True)
    assert rate > 0
    assert shared > 0
