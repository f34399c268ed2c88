"""The simulated adapter: a counter growing at constant power, through the public API only."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from adapters.simulated import SimulatedAdapter, SimulatedConfig
from gateway.errors import AdapterReadError, ConfigError
from gateway.metering.discovery import convert_adapter_config, find_plugins, load_plugin
from gateway.plugin import ChannelKind, PollingAdapter, Reading, Unit


class FakeClock:
    def __init__(self, now: float = 1_741_687_200.0) -> None:  # 2025-03-11T10:00:00Z
        self.now = now

    def __call__(self) -> float:
        return self.now


def make(clock: FakeClock, *, power_kw: float = 1.0, start_kwh: float = 0.0) -> SimulatedAdapter:
    config = SimulatedConfig(type="simulated", power_kw=power_kw, start_kwh=start_kwh)
    return SimulatedAdapter("sim", config, clock=clock)


def values(readings: object) -> dict[str, float]:
    assert isinstance(readings, tuple | list)
    return {r.channel: r.value for r in readings}


def test_channels_energy_counter_and_power() -> None:
    energy, power = make(FakeClock()).channels()
    assert (energy.name, energy.kind, energy.unit) == ("energy", ChannelKind.ENERGY, Unit.KWH)
    assert (power.name, power.kind, power.unit) == ("power", ChannelKind.POWER, Unit.KW)


def test_satisfies_the_polling_protocol() -> None:
    adapter: PollingAdapter = make(FakeClock())  # mypy checks the protocol here
    assert isinstance(adapter, PollingAdapter)


async def test_counter_grows_exactly_with_power() -> None:
    clock = FakeClock()
    adapter = make(clock, power_kw=2.5)
    async with adapter:
        assert values(await adapter.read()) == {"energy": 0.0, "power": 2.5}
        clock.now += 3600
        assert values(await adapter.read()) == {"energy": 2.5, "power": 2.5}
        clock.now += 36
        assert values(await adapter.read())["energy"] == pytest.approx(2.525, rel=1e-12)


async def test_readings_carry_the_clock_time() -> None:
    clock = FakeClock()
    async with make(clock) as adapter:
        clock.now += 10
        readings = await adapter.read()
    assert all(isinstance(r, Reading) and r.at == clock.now for r in readings)


async def test_start_kwh_is_the_counter_origin() -> None:
    clock = FakeClock()
    async with make(clock, power_kw=1.0, start_kwh=1200.0) as adapter:
        assert values(await adapter.read())["energy"] == 1200.0
        clock.now += 1800
        assert values(await adapter.read())["energy"] == 1200.5


async def test_counter_starts_at_first_enter_not_at_construction() -> None:
    clock = FakeClock()
    adapter = make(clock, power_kw=3.6)
    clock.now += 1000  # built long before it is started
    async with adapter:
        assert values(await adapter.read())["energy"] == 0.0


async def test_counter_keeps_counting_across_a_restart() -> None:
    clock = FakeClock()
    adapter = make(clock, power_kw=3.6)
    async with adapter:
        clock.now += 100
    clock.now += 100  # stopped: a real meter keeps counting
    async with adapter:
        assert values(await adapter.read())["energy"] == pytest.approx(0.2)


async def test_read_outside_the_lifetime_fails() -> None:
    adapter = make(FakeClock())
    with pytest.raises(AdapterReadError, match="'sim'"):
        await adapter.read()
    async with adapter:
        pass
    with pytest.raises(AdapterReadError):
        await adapter.read()


@given(
    power_kw=st.floats(min_value=0.0, max_value=10_000.0),
    start_kwh=st.floats(min_value=0.0, max_value=1e7),
    intervals=st.integers(min_value=1, max_value=2000),
)
async def test_ten_second_intervals_sum_to_power_times_duration(
    power_kw: float, start_kwh: float, intervals: int
) -> None:
    clock = FakeClock()
    adapter = make(clock, power_kw=power_kw, start_kwh=start_kwh)
    async with adapter:
        previous = values(await adapter.read())["energy"]
        total = 0.0
        for _ in range(intervals):
            clock.now += 10.0
            energy = values(await adapter.read())["energy"]
            assert energy >= previous
            total += energy - previous
            previous = energy
    expected = power_kw * intervals * 10.0 / 3600.0
    # within 0.1 %, or within the float resolution of the counter (a tiny power on a huge count)
    resolution = intervals * 2 * math.ulp(start_kwh + expected)
    assert math.isclose(total, expected, rel_tol=1e-3, abs_tol=resolution)


def test_config_defaults_and_durations() -> None:
    config = convert_adapter_config(
        "sim", SimulatedAdapter, {"type": "simulated", "poll_interval": "500ms"}
    )
    assert isinstance(config, SimulatedConfig)
    assert (config.power_kw, config.start_kwh, config.poll_interval) == (1.0, 0.0, 0.5)


@pytest.mark.parametrize(
    ("table", "key"),
    [
        ({"type": "simulated", "power_kw": math.nan}, "adapters.sim.power_kw"),
        ({"type": "simulated", "power_kw": -math.inf}, "adapters.sim.power_kw"),
        ({"type": "simulated", "start_kwh": math.nan}, "adapters.sim.start_kwh"),
        ({"type": "simulated", "start_kwh": -5}, "adapters.sim.start_kwh"),
        ({"type": "simulated", "power_kw": "2kW"}, "adapters.sim.power_kw"),
        ({"type": "simulated", "powerkw": 2}, "adapters.sim.powerkw"),
    ],
)
def test_config_errors_name_the_key(table: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        convert_adapter_config("sim", SimulatedAdapter, table)
    assert info.value.key == key


def test_a_lying_power_is_accepted_so_the_gateway_checks_can_be_tried() -> None:
    for lie in (1e308, -1e308):
        config = convert_adapter_config(
            "sim", SimulatedAdapter, {"type": "simulated", "power_kw": lie}
        )
        assert isinstance(config, SimulatedConfig)
        assert config.power_kw == lie


def test_a_negative_power_is_an_exporting_resource() -> None:
    config = convert_adapter_config("sim", SimulatedAdapter, {"type": "simulated", "power_kw": -3})
    assert isinstance(config, SimulatedConfig)
    assert config.power_kw == -3.0


async def test_an_exporting_resource_keeps_its_import_register_flat() -> None:
    """As a bidirectional meter's import side: the register never runs back, power is < 0."""
    clock = FakeClock()
    async with make(clock, power_kw=-3.6, start_kwh=500.0) as adapter:
        assert values(await adapter.read()) == {"energy": 500.0, "power": -3.6}
        clock.now += 3600
        assert values(await adapter.read()) == {"energy": 500.0, "power": -3.6}


def test_registered_under_its_entry_point() -> None:
    (plugin,) = [p for p in find_plugins() if p.name == "simulated"]
    assert load_plugin(plugin) is SimulatedAdapter
