"""The built-in Modbus adapter passes the same conformance suite a partner's adapter must
(gateway/testing/conformance.py), against a real pymodbus server."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from adapters.modbus import ModbusAdapter
from gateway.testing import RegisterServer, conformance, u32_words


class Meter:
    """A u32 Wh counter in holding registers 0-1 of a real Modbus TCP server."""

    def __init__(self, server: RegisterServer) -> None:
        self.server = server
        self.config = {
            "type": "modbus",
            "host": "127.0.0.1",
            "port": server.port,
            "poll_interval": "1s",
            "timeout": "1s",
            "registers": {
                "energy": {
                    "address": 0,
                    "function": "holding",
                    "type": "u32",
                    "unit": "Wh",
                    "wrap": 4294967296,
                }
            },
        }

    async def stop(self) -> None:
        await self.server.stop()

    async def start(self) -> None:
        await self.server.start()

    async def set_counter(self, value: float) -> None:
        self.server.set_holding(0, u32_words(int(value)))


@contextlib.asynccontextmanager
async def meter() -> AsyncIterator[Meter]:
    async with RegisterServer.running({0: 0, 1: 1000}) as server:
        yield Meter(server)


TestModbusAdapter = conformance.suite(
    ModbusAdapter, device=meter, bad_values={"port": 70000, "host": "", "timeout": "0s"}
)
