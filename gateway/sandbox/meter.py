"""A simulated Eastron SDM630 on Modbus TCP: try a Modbus site without hardware.

    ecgw sandbox meter --listen 127.0.0.1:5020 --kw 3.0

It answers function code 4 (input registers) for unit ``--unit`` exactly where the
``eastron-sdm630`` profile reads (float32, high word first): total system power
(0x0034, W), import energy (0x0048, kWh) and export energy (0x004A, kWh, always 0).
The import counter integrates ``--kw`` from the moment it starts (from 10 kWh: a float32
counter that starts low keeps watt-hour resolution), like a meter under a constant load.
Served by pymodbus (:class:`gateway.sandbox.registers.RegisterServer`).
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
import time
from collections.abc import AsyncIterator, Callable

from gateway.sandbox.registers import RegisterServer

__all__ = ["POWER", "IMPORT", "EXPORT", "SimulatedSdm630", "f32_words"]

POWER, IMPORT, EXPORT = 0x0034, 0x0048, 0x004A
UPDATE_EVERY = 0.2  # seconds between counter updates


def f32_words(value: float) -> list[int]:
    """A float32 as two registers, high word first (Eastron's order)."""
    high, low = struct.unpack(">HH", struct.pack(">f", value))
    return [high, low]


class SimulatedSdm630:
    def __init__(
        self,
        *,
        kw: float,
        start_kwh: float = 10.0,
        unit: int = 1,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.kw = kw
        self._start_kwh = start_kwh
        self._clock = clock
        self._origin = clock()
        registers = dict.fromkeys(range(EXPORT + 2), 0)
        self.server = RegisterServer(input=registers, unit=unit)
        self._update()

    def energy_kwh(self) -> float:
        return self._start_kwh + max(self.kw, 0.0) * (self._clock() - self._origin) / 3600.0

    def _update(self) -> None:
        self.server.set_input(POWER, f32_words(self.kw * 1000.0))
        self.server.set_input(IMPORT, f32_words(self.energy_kwh()))
        self.server.set_input(EXPORT, f32_words(0.0))

    @contextlib.asynccontextmanager
    async def serving(self, host: str, port: int) -> AsyncIterator[SimulatedSdm630]:
        """Listen on ``host:port`` (0: a free one) and keep the counter moving."""
        self.server.host, self.server.port = host, port
        await self.server.start()

        async def tick() -> None:
            while True:
                await asyncio.sleep(UPDATE_EVERY)
                self._update()

        ticking = asyncio.create_task(tick(), name="sandbox-meter")
        try:
            yield self
        finally:
            ticking.cancel()
            await asyncio.gather(ticking, return_exceptions=True)
            await self.server.stop()
