"""The template meter against a real Modbus server (the kit's fixtures), and the kit's suite."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from ecgw_adapter_template import TemplateMeter

from gateway import AdapterReadError, ConfigError
from gateway.testing import RegisterServer, config_for, conformance, u32_words


class MeterDevice:
    """The meter behind the adapter, for the conformance suite: a register map on a server."""

    def __init__(self, server: RegisterServer) -> None:
        self.server = server
        self.config = {
            "type": "template-meter",
            "host": "127.0.0.1",
            "port": server.port,
            "poll_interval": "1s",
        }

    async def stop(self) -> None:
        await self.server.stop()

    async def start(self) -> None:
        await self.server.start()

    async def set_counter(self, value: float) -> None:
        self.server.set_holding(0, u32_words(int(value)))


@contextlib.asynccontextmanager
async def meter_device() -> AsyncIterator[MeterDevice]:
    async with RegisterServer.running({0: 0, 1: 1000}) as server:
        yield MeterDevice(server)


TestTemplateMeter = conformance.suite(
    TemplateMeter, device=meter_device, bad_values={"port": 70000, "host": ""}
)


@pytest.mark.asyncio
async def test_reads_the_counter(
    ecgw_modbus: Callable[..., Awaitable[RegisterServer]],
) -> None:
    server = await ecgw_modbus({0: 0, 1: 0})
    server.set_holding(0, u32_words(123_456_789))
    table = {"type": "template-meter", "host": "127.0.0.1", "port": server.port}
    config = config_for(TemplateMeter, {**table, "poll_interval": "1s"})
    async with TemplateMeter("m", config) as meter:
        (reading,) = await meter.read()
        assert (reading.channel, reading.value) == ("energy", 123_456_789.0)
        await server.stop()
        with pytest.raises(AdapterReadError):
            await meter.read()


def test_bad_config_names_the_key() -> None:
    table: dict[str, Any] = {"type": "template-meter", "host": "h", "unit": 300}
    with pytest.raises(ConfigError) as caught:
        config_for(TemplateMeter, table, name="main-meter")
    assert caught.value.key == "adapters.main-meter.unit"
