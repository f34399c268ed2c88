"""A Modbus TCP server with a register map, for adapter tests (pymodbus, 127.0.0.1, port 0).

    async with RegisterServer.running({0: 0, 1: 1500}) as device:   # holding registers
        ... device.port ...
        device.set_holding(0, u32_words(2_000))   # the next read sees it
        await device.stop()                       # the device is gone (connections closed)
        await device.start()                      # back, on the same port

The map is fixed in size when the server starts (addresses 0 .. the highest given); a
value can change at any time. Input registers work the same (``input=``, ``set_input``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import cast

from pymodbus.constants import ExcCodes
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

__all__ = ["RegisterServer", "u32_words"]


def u32_words(value: int) -> list[int]:
    """An unsigned 32-bit value as two registers, high word first (the common order)."""
    if not 0 <= value < 2**32:
        raise ValueError(f"{value!r} does not fit 32 bits unsigned")
    return [value >> 16, value & 0xFFFF]


class RegisterServer:
    """One unit (``unit``, default 1) on a Modbus TCP server; stop and start keep the port."""

    def __init__(
        self,
        holding: Mapping[int, int] | None = None,
        *,
        input: Mapping[int, int] | None = None,
        unit: int = 1,
        host: str = "127.0.0.1",
    ) -> None:
        self.holding = {a: v & 0xFFFF for a, v in (holding or {}).items()}
        self.input = {a: v & 0xFFFF for a, v in (input or {}).items()}
        self.unit = unit
        self.host = host
        self.port = 0
        self.requests = 0  # requests answered, over every start
        self._server: ModbusTcpServer | None = None

    @classmethod
    @contextlib.asynccontextmanager
    async def running(
        cls,
        holding: Mapping[int, int] | None = None,
        *,
        input: Mapping[int, int] | None = None,
        unit: int = 1,
    ) -> AsyncIterator[RegisterServer]:
        server = cls(holding, input=input, unit=unit)
        await server.start()
        try:
            yield server
        finally:
            await server.stop()

    @property
    def is_running(self) -> bool:
        return self._server is not None

    def set_holding(self, address: int, words: Sequence[int]) -> None:
        self._set(self.holding, address, words)

    def set_input(self, address: int, words: Sequence[int]) -> None:
        self._set(self.input, address, words)

    @staticmethod
    def _set(space: dict[int, int], address: int, words: Sequence[int]) -> None:
        for offset, word in enumerate(words):
            if address + offset not in space:
                raise KeyError(f"register {address + offset} is not in the map")
            space[address + offset] = word & 0xFFFF

    async def start(self) -> None:
        """Listen: on a free port the first time, on the same port after :meth:`stop`."""
        if self._server is not None:
            raise RuntimeError("the Modbus server is already running")
        server = ModbusTcpServer([self._device()], address=(self.host, self.port))
        await server.serve_forever(background=True)
        self.port = cast(asyncio.Server, server.transport).sockets[0].getsockname()[1]
        self._server = server

    async def stop(self) -> None:
        """Close the listener and every open connection: the device has gone away."""
        server, self._server = self._server, None
        if server is None:
            return
        await server.shutdown()  # type: ignore[no-untyped-call]
        # A connection accepted just before the listener closed is set up a few loop
        # steps later, after pymodbus closed the ones it knew: close those too.
        for _ in range(5):
            await asyncio.sleep(0)
        for connection in list(server.active_connections.values()):
            connection.close()

    def _device(self) -> SimDevice:
        def block(space: Mapping[int, int]) -> list[SimData]:
            size = max(space, default=0) + 1
            values = [space.get(a, 0) for a in range(size)]
            return [SimData(0, values=values, datatype=DataType.REGISTERS)]

        bits = [SimData(0, values=[False] * 16, datatype=DataType.BITS)]
        return SimDevice(
            self.unit,
            simdata=(bits, bits, block(self.holding), block(self.input)),
            action=self._serve,
        )

    async def _serve(
        self,
        function_code: int,
        start_address: int,
        address: int,
        count: int,
        registers: list[int],
        set_values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        """Copy the map into pymodbus's registers before each request (writes go to the map)."""
        self.requests += 1
        if function_code in (1, 2, 5, 15):
            return None
        space = self.holding if function_code in (3, 6, 16, 23) else self.input
        for offset, value in enumerate(set_values or ()):
            space[address + offset] = int(value) & 0xFFFF
        for offset in range(count):
            if address + offset in space:
                registers[address - start_address + offset] = space[address + offset]
        return None
