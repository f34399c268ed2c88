"""The simulated adapter's ``switch``: power follows it, the counter integrates it exactly."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from adapters.simulated import SimulatedAdapter, SimulatedConfig, SwitchedMeter
from gateway import SWITCH, AdapterError, Control, ControlKind, ControllableAdapter, ControlState
from gateway.errors import ConfigError
from gateway.metering.discovery import convert_adapter_config

T0 = 1_741_687_200.0  # 2025-03-11T10:00:00Z


class FakeClock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def make(clock: FakeClock, **table: Any) -> SimulatedAdapter:
    config = convert_adapter_config("sim", SimulatedAdapter, {"type": "simulated", **table})
    return SimulatedAdapter("sim", config, clock=clock)


async def values(adapter: SimulatedAdapter) -> tuple[float, float]:
    """(energy kWh, power kW) as read now."""
    readings = {r.channel: r.value for r in await adapter.read()}
    return readings["energy"], readings["power"]


def test_declares_one_switch_and_is_controllable() -> None:
    adapter: ControllableAdapter = make(FakeClock())  # mypy checks the protocol here
    assert isinstance(adapter, ControllableAdapter)
    assert tuple(adapter.controls()) == (Control(SWITCH, ControlKind.SWITCH),)


async def test_off_reads_zero_power_and_a_flat_counter_on_grows_again() -> None:
    clock = FakeClock()
    async with make(clock, power_kw=4.5, start_kwh=10.0) as adapter:
        clock.now += 800  # 4.5 kW for 800 s: exactly 1 kWh
        assert await values(adapter) == (11.0, 4.5)
        await adapter.apply(SWITCH, 0)
        assert await values(adapter) == (11.0, 0.0)
        clock.now += 5000
        assert await values(adapter) == (11.0, 0.0)
        await adapter.apply(SWITCH, 1)
        assert await values(adapter) == (11.0, 4.5)
        clock.now += 1600
        assert await values(adapter) == (13.0, 4.5)


async def test_energy_is_exact_across_many_switches() -> None:
    clock = FakeClock()
    async with make(clock, power_kw=9.0) as adapter:  # 9 kW: 1 kWh per 400 s
        for _ in range(50):
            clock.now += 400
            await adapter.apply(SWITCH, 0)
            clock.now += 123.456
            await adapter.apply(SWITCH, 1)
        assert (await values(adapter))[0] == 50.0


async def test_starts_off_when_configured() -> None:
    clock = FakeClock()
    async with make(clock, power_kw=2.0, on=False, start_kwh=5.0) as adapter:
        clock.now += 3600
        assert await values(adapter) == (5.0, 0.0)
        assert await adapter.state(SWITCH) == ControlState(0.0, at=T0)
        await adapter.apply(SWITCH, 1.0)
        clock.now += 1800
        assert await values(adapter) == (6.0, 2.0)


async def test_state_says_when_the_device_last_acted() -> None:
    clock = FakeClock()
    adapter = make(clock)
    clock.now += 50  # built before it is started: the first start is the origin
    async with adapter:
        assert await adapter.state(SWITCH) == ControlState(1.0, at=T0 + 50)
        clock.now += 10
        assert await adapter.state(SWITCH) == ControlState(1.0, at=T0 + 50)
        await adapter.apply(SWITCH, 0)
        clock.now += 10
        assert await adapter.state(SWITCH) == ControlState(0.0, at=T0 + 60)
        await adapter.apply(SWITCH, 0)  # already off: obeyed all the same, so confirmed
        assert await adapter.state(SWITCH) == ControlState(0.0, at=T0 + 70)


async def test_a_slow_device_switches_after_its_confirm_delay() -> None:
    clock = FakeClock()
    async with make(clock, power_kw=3.6, confirm_delay="30s") as adapter:
        await adapter.apply(SWITCH, 0)
        clock.now += 29.9
        assert await adapter.state(SWITCH) == ControlState(1.0, at=T0)
        assert (await values(adapter))[1] == 3.6
        clock.now += 970.1  # read long after: switched off exactly 30 s after the command
        assert await adapter.state(SWITCH) == ControlState(0.0, at=T0 + 30)
        assert await values(adapter) == (pytest.approx(0.03, rel=1e-12), 0.0)


async def test_a_newer_command_replaces_one_not_yet_carried_out() -> None:
    clock = FakeClock()
    async with make(clock, confirm_delay="10s") as adapter:
        await adapter.apply(SWITCH, 0)
        clock.now += 5
        await adapter.apply(SWITCH, 1)  # the off never happens
        clock.now += 100
        assert await adapter.state(SWITCH) == ControlState(1.0, at=T0 + 15)
        assert (await values(adapter))[0] == pytest.approx(105 / 3600, rel=1e-12)


async def test_a_device_that_does_not_obey_never_switches() -> None:
    clock = FakeClock()
    async with make(clock, power_kw=2.0, obey=False) as adapter:
        for _ in range(3):
            await adapter.apply(SWITCH, 0)  # taken without complaint
            clock.now += 600
        assert await adapter.state(SWITCH) == ControlState(1.0, at=T0)
        assert await values(adapter) == (1.0, 2.0)


async def test_the_counter_keeps_counting_while_stopped_at_the_state_it_had() -> None:
    clock = FakeClock()
    adapter = make(clock, power_kw=3.0, confirm_delay="100s")
    async with adapter:
        await adapter.apply(SWITCH, 0)  # carried out while the adapter is stopped
    clock.now += 1200
    async with adapter:
        assert await adapter.state(SWITCH) == ControlState(0.0, at=T0 + 100)
        assert await values(adapter) == (pytest.approx(100 / 1200, rel=1e-12), 0.0)


async def test_an_exporting_resource_switched_off_reads_zero() -> None:
    clock = FakeClock()
    async with make(clock, power_kw=-3.6, start_kwh=500.0) as adapter:
        assert await values(adapter) == (500.0, -3.6)
        await adapter.apply(SWITCH, 0)
        clock.now += 3600
        assert await values(adapter) == (500.0, 0.0)


@pytest.mark.parametrize(
    ("control", "value", "message"),
    [("switch", 0.5, "0 or 1"), ("switch", math.nan, "0 or 1"), ("relay", 1, "no control")],
)
async def test_bad_commands_are_adapter_errors(control: str, value: float, message: str) -> None:
    async with make(FakeClock()) as adapter:
        with pytest.raises(AdapterError, match=message) as caught:
            await adapter.apply(control, value)
        assert caught.value.adapter == "sim"
        assert (await adapter.state(SWITCH)) == ControlState(1.0, at=T0)
        with pytest.raises(AdapterError, match="no control"):
            await adapter.state("relay")


async def test_commands_outside_the_lifetime_fail() -> None:
    adapter = make(FakeClock())
    with pytest.raises(AdapterError, match="lifetime"):
        await adapter.apply(SWITCH, 0)
    async with adapter:
        pass
    with pytest.raises(AdapterError, match="lifetime"):
        await adapter.state(SWITCH)


def test_config_keys_and_defaults() -> None:
    config = convert_adapter_config("sim", SimulatedAdapter, {"type": "simulated"})
    assert isinstance(config, SimulatedConfig)
    assert (config.on, config.confirm_delay, config.obey) == (True, 0.0, True)
    config = convert_adapter_config(
        "sim",
        SimulatedAdapter,
        {"type": "simulated", "on": False, "confirm_delay": "1.5s", "obey": False},
    )
    assert isinstance(config, SimulatedConfig)
    assert (config.on, config.confirm_delay, config.obey) == (False, 1.5, False)


@pytest.mark.parametrize(
    ("table", "key"),
    [
        ({"on": "yes"}, "adapters.sim.on"),
        ({"obey": 1}, "adapters.sim.obey"),
        ({"confirm_delay": "-1s"}, "adapters.sim.confirm_delay"),
        ({"confirm_delay": "soon"}, "adapters.sim.confirm_delay"),
        ({"confirm_dalay": "1s"}, "adapters.sim.confirm_dalay"),
    ],
)
def test_config_errors_name_the_key(table: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        convert_adapter_config("sim", SimulatedAdapter, {"type": "simulated", **table})
    assert info.value.key == key


@given(
    power_kw=st.floats(min_value=0.0, max_value=10_000.0),
    steps=st.lists(
        st.tuples(st.floats(min_value=0.0, max_value=7200.0), st.booleans(), st.booleans()),
        max_size=40,
    ),
    delay=st.sampled_from([0.0, 15.0]),
)
def test_the_counter_integrates_the_switched_power(
    power_kw: float, steps: list[tuple[float, bool, bool]], delay: float
) -> None:
    """Energy is power times the time spent on, never decreases, and power is 0 while off."""
    now = T0
    meter = SwitchedMeter(power_kw=power_kw, start_kwh=0.0, on=True, now=now)
    on_seconds, state_since, state = 0.0, now, True
    pending: tuple[bool, float] | None = None
    previous = 0.0
    for elapsed, command, on in steps:
        end = now + elapsed
        if pending is not None and pending[1] <= end:  # the reference model, step by step
            on_seconds += (pending[1] - state_since) if state else 0.0
            state_since, state, pending = pending[1], pending[0], None
        now = end
        energy = meter.energy(now)
        assert energy >= previous
        assert meter.power(now) == (power_kw if state else 0.0)
        previous = energy
        if command:
            meter.command(on, now, delay=delay)
            pending = (on, now + delay)
            if delay == 0.0:
                on_seconds += (now - state_since) if state else 0.0
                state_since, state, pending = now, on, None
    on_seconds += (now - state_since) if state else 0.0
    expected = power_kw * on_seconds / 3600.0
    assert math.isclose(meter.energy(now), expected, rel_tol=1e-9, abs_tol=1e-9)
