"""A simulated meter: a resource drawing constant power. ``type = "simulated"``.

Useful for trying the gateway without hardware and for end-to-end tests::

    [adapters.test-heater]
    type = "simulated"
    power_kw = 2.5        # constant power drawn, kW (default 1.0); negative: exported
    start_kwh = 1200.0    # the counter's value when the adapter first starts (default 0)
    poll_interval = "10s"

Two channels: ``energy``, a kWh counter that grows at exactly ``power_kw``
from the moment the adapter is first entered, and ``power``, the constant
power in kW. Like a physical meter, the counter keeps counting while the
adapter is stopped and restarted; a new instance starts again at
``start_kwh``.

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
from types import TracebackType
from typing import Annotated, ClassVar

import msgspec

from gateway import AdapterConfig, AdapterReadError, Channel, ChannelKind, Reading, Unit

__all__ = ["SimulatedAdapter", "SimulatedConfig"]

ENERGY = Channel("energy", ChannelKind.ENERGY, Unit.KWH)
POWER = Channel("power", ChannelKind.POWER, Unit.KW)

_NonNegative = Annotated[float, msgspec.Meta(ge=0, le=1e12)]
_Power = Annotated[float, msgspec.Meta(ge=-sys.float_info.max, le=sys.float_info.max)]
"""Any finite power: the simulator may play a device that lies (1e308 kW); the gateway
rejects at ingest and in the energy core what no real device could read."""
"""kW, either way: up to a gigawatt (also keeps NaN and infinities out)."""


class SimulatedConfig(AdapterConfig, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``[adapters.NAME]`` for ``type = "simulated"``."""

    power_kw: _Power = 1.0
    start_kwh: _NonNegative = 0.0


class SimulatedAdapter:
    """A polling adapter whose energy counter grows at a constant power."""

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
        self._started_at: float | None = None  # first __aenter__; the counter's origin
        self._open = False

    def channels(self) -> Sequence[Channel]:
        return (ENERGY, POWER)

    async def __aenter__(self) -> SimulatedAdapter:
        if self._started_at is None:
            self._started_at = self._clock()
        self._open = True
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._open = False

    async def read(self) -> Sequence[Reading]:
        if not self._open or self._started_at is None:
            raise AdapterReadError("read outside the adapter's lifetime", adapter=self.name)
        now = self._clock()
        power_kw = self.config.power_kw
        imported_kw = max(power_kw, 0.0)  # the import register stays flat while exporting
        energy_kwh = self.config.start_kwh + imported_kw * (now - self._started_at) / 3600.0
        return (
            Reading(ENERGY.name, now, energy_kwh),
            Reading(POWER.name, now, power_kw),
        )
