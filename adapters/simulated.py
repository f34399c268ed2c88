"""A simulated meter: a resource drawing constant power, with a switch. ``type = "simulated"``.

Useful for trying the gateway without hardware and for end-to-end tests::

    [adapters.test-heater]
    type = "simulated"
    power_kw = 2.5        # power drawn while on, kW (default 1.0); negative: exported
    start_kwh = 1200.0    # the counter's value when the adapter first starts (default 0)
    on = true             # the switch's state when the adapter first starts (default true)
    confirm_delay = "0s"  # how long the device takes to carry out a command (default 0s)
    obey = true           # false: a device that takes commands and never carries them out
    poll_interval = "10s"

Two channels: ``power``, ``power_kw`` while the switch is on and 0 while it is
off, and ``energy``, a kWh counter that integrates that power exactly, piece by
piece between switchings, from the moment the adapter is first entered. Like a
physical meter, the counter keeps counting while the adapter is stopped and
restarted, at the state the switch had; a new instance starts again at
``start_kwh`` and ``on``.

One control, ``switch`` (0 = off, 1 = on): ``apply("switch", v)`` sends the
command at the clock's now; the device carries it out ``confirm_delay`` later
(a newer command replaces one not yet carried out), or never if ``obey =
false``. ``state("switch")`` is the state the device is in, ``at`` the moment
it last acted: when it carried out its latest command (switching, or finding
itself already in the commanded state), or its first start. So a command is
confirmed by a state at or after it, as the gateway expects, and a device that
does not obey never confirms one.

``power_kw`` may be any finite number, so the simulator can also play a device
that lies (``1e308``): the gateway's own checks must catch it.

A negative ``power_kw`` is an exporting resource (a solar inverter, a
discharging battery). It reads as a bidirectional meter's import side would:
``energy`` is the *import* register, which stays flat while the resource
exports (a register only counts up; the export register is not simulated),
and ``power`` is negative. So a resource on ``energy`` reports 0 kWh while
exporting, and one on ``power`` with ``direction = "net"`` reports the
negative energy exported.

It uses only the public plugin API, exactly as a third-party adapter would.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Annotated, ClassVar

import msgspec

from gateway import (
    SWITCH,
    AdapterConfig,
    AdapterError,
    AdapterReadError,
    Channel,
    ChannelKind,
    Control,
    ControlKind,
    ControlState,
    Duration,
    Reading,
    Unit,
)

__all__ = ["SimulatedAdapter", "SimulatedConfig", "SwitchedMeter"]

ENERGY = Channel("energy", ChannelKind.ENERGY, Unit.KWH)
POWER = Channel("power", ChannelKind.POWER, Unit.KW)
SWITCH_CONTROL = Control(SWITCH, ControlKind.SWITCH)

_NonNegative = Annotated[float, msgspec.Meta(ge=0, le=1e12)]
_Power = Annotated[float, msgspec.Meta(ge=-sys.float_info.max, le=sys.float_info.max)]
"""Any finite power: the simulator may play a device that lies (1e308 kW); the gateway
rejects at ingest and in the energy core what no real device could read. The bounds
also keep NaN and the infinities out."""


class SimulatedConfig(AdapterConfig, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``[adapters.NAME]`` for ``type = "simulated"``."""

    power_kw: _Power = 1.0
    start_kwh: _NonNegative = 0.0
    on: bool = True
    confirm_delay: Duration = Duration(0.0)
    obey: bool = True


@dataclass(frozen=True, slots=True)
class _Pending:
    on: bool
    due: float


class SwitchedMeter:
    """The pure core: a switch and the import counter behind it. Every call takes ``now``.

    The counter is kept exact as a value at a moment (``kwh`` at ``counted_at``)
    that moves only when the power changes; in between it grows linearly. A
    ``now`` earlier than the last change counts as that change's time, so the
    counter never runs back.
    """

    def __init__(self, *, power_kw: float, start_kwh: float, on: bool, now: float) -> None:
        self.power_kw = power_kw
        self.on = on
        self.acted_at = now  # when the device last acted (switched, or obeyed a command)
        self._kwh = start_kwh
        self._counted_at = now
        self._pending: _Pending | None = None

    def power(self, now: float) -> float:
        self.settle(now)
        return self.power_kw if self.on else 0.0

    def energy(self, now: float) -> float:
        self.settle(now)
        return self._kwh_at(now)

    def command(self, on: bool, now: float, *, delay: float = 0.0) -> None:
        """A command arrives at ``now``; carried out at ``now + delay``, replacing any pending."""
        self.settle(now)
        self._pending = _Pending(on, now + delay)
        self.settle(now)

    def settle(self, now: float) -> None:
        """Carry out the pending command if it is due by ``now``."""
        pending = self._pending
        if pending is None or pending.due > now:
            return
        self._pending = None
        at = max(pending.due, self._counted_at)
        if pending.on != self.on:
            self._kwh = self._kwh_at(at)
            self._counted_at = at
            self.on = pending.on
        self.acted_at = max(at, self.acted_at)

    def _kwh_at(self, now: float) -> float:
        imported_kw = max(self.power_kw, 0.0) if self.on else 0.0  # flat while exporting
        return self._kwh + imported_kw * max(now - self._counted_at, 0.0) / 3600.0


class SimulatedAdapter:
    """A polling adapter whose energy counter grows at a constant power while switched on."""

    Config: ClassVar[type[AdapterConfig]] = SimulatedConfig

    def __init__(
        self,
        name: str,
        config: AdapterConfig,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not isinstance(config, SimulatedConfig):
            raise TypeError(f"expected SimulatedConfig, got {type(config).__name__}")
        self.name = name
        self.config: SimulatedConfig = config
        self._clock = clock
        self._meter: SwitchedMeter | None = None  # built at the first __aenter__
        self._open = False

    def channels(self) -> Sequence[Channel]:
        return (ENERGY, POWER)

    def controls(self) -> Sequence[Control]:
        return (SWITCH_CONTROL,)

    async def __aenter__(self) -> SimulatedAdapter:
        if self._meter is None:
            config = self.config
            self._meter = SwitchedMeter(
                power_kw=config.power_kw,
                start_kwh=config.start_kwh,
                on=config.on,
                now=self._clock(),
            )
        self._open = True
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._open = False

    def _running(self, doing: str) -> SwitchedMeter:
        if not self._open or self._meter is None:
            error = AdapterReadError if doing == "read" else AdapterError
            raise error(f"{doing} outside the adapter's lifetime", adapter=self.name)
        return self._meter

    async def read(self) -> Sequence[Reading]:
        meter = self._running("read")
        now = self._clock()
        return (
            Reading(ENERGY.name, now, meter.energy(now)),
            Reading(POWER.name, now, meter.power(now)),
        )

    async def apply(self, control: str, value: float) -> None:
        meter = self._running("apply")
        on = self._switch_value(control, value)
        if self.config.obey:
            meter.command(on, self._clock(), delay=float(self.config.confirm_delay))

    async def state(self, control: str) -> ControlState | None:
        meter = self._running("state")
        self._check_control(control)
        meter.settle(self._clock())
        return ControlState(1.0 if meter.on else 0.0, at=meter.acted_at)

    def _check_control(self, control: str) -> None:
        if control != SWITCH:
            raise AdapterError(f"no control {control!r}; it has {SWITCH!r}", adapter=self.name)

    def _switch_value(self, control: str, value: float) -> bool:
        self._check_control(control)
        try:
            return SWITCH_CONTROL.check(value) == 1.0
        except ValueError as exc:
            raise AdapterError(str(exc), adapter=self.name) from exc
