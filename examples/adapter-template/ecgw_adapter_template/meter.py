"""``type = "template-meter"``: one Wh counter in two holding registers, high word first::

    [adapters.main-meter]
    type = "template-meter"
    host = "192.0.2.10"
    port = 502          # default 502
    unit = 1            # the Modbus unit id, default 1
    address = 0         # the counter's first register, default 0
    poll_interval = "10s"

The connection is opened on the first read and again after any failure; a failed read
raises AdapterReadError (the gateway logs it and shows the adapter as stale), never
returns an old value. Every network call runs under a deadline.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from types import TracebackType
from typing import Annotated, ClassVar

import msgspec
from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ModbusException

from gateway import AdapterConfig, AdapterReadError, Channel, ChannelKind, Reading, Unit

__all__ = ["TemplateMeter", "TemplateMeterConfig"]

ENERGY = Channel("energy", ChannelKind.ENERGY, Unit.WH, wrap=2.0**32)


class TemplateMeterConfig(AdapterConfig, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``[adapters.NAME]`` for ``type = "template-meter"``: unknown keys are refused."""

    host: Annotated[str, msgspec.Meta(min_length=1, max_length=253)]
    port: Annotated[int, msgspec.Meta(ge=1, le=65535)] = 502
    unit: Annotated[int, msgspec.Meta(ge=0, le=247)] = 1
    address: Annotated[int, msgspec.Meta(ge=0, le=65534)] = 0


class TemplateMeter:
    """A polling adapter: ``read()`` returns the counter, or raises AdapterReadError."""

    Config: ClassVar[type[AdapterConfig]] = TemplateMeterConfig

    def __init__(self, name: str, config: AdapterConfig) -> None:
        if not isinstance(config, TemplateMeterConfig):
            raise TypeError(f"expected TemplateMeterConfig, got {type(config).__name__}")
        self.name = name
        self.config: TemplateMeterConfig = config  # the gateway reads poll_interval here
        self._client: AsyncModbusTcpClient | None = None

    def channels(self) -> Sequence[Channel]:
        return (ENERGY,)

    async def __aenter__(self) -> TemplateMeter:
        return self  # connect lazily: a device that is down must not stop the start

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._disconnect()

    async def read(self) -> Sequence[Reading]:
        deadline = self._deadline()
        try:
            async with asyncio.timeout(deadline):
                client = await self._connected()
                response = await client.read_holding_registers(
                    self.config.address, count=2, device_id=self.config.unit
                )
                _cancelled_meanwhile()
        except (TimeoutError, OSError, ModbusException) as exc:
            self._disconnect()  # the next read connects again
            raise AdapterReadError(f"no answer: {exc!r}", adapter=self.name) from exc
        if response.isError() or len(response.registers) != 2:
            raise AdapterReadError(f"the meter answered {response}", adapter=self.name)
        high, low = response.registers
        return (Reading(ENERGY.name, time.time(), float(high << 16 | low)),)

    async def _connected(self) -> AsyncModbusTcpClient:
        if self._client is not None and self._client.connected:
            return self._client
        self._disconnect()
        client = AsyncModbusTcpClient(
            self.config.host,
            port=self.config.port,
            timeout=self._deadline(),
            retries=0,
            reconnect_delay=0,  # we reconnect on the next read, not in the background
        )
        self._client = client
        connected = await client.connect()
        _cancelled_meanwhile()
        if not connected:
            raise OSError(f"cannot connect to {self.config.host}:{self.config.port}")
        return client

    def _disconnect(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.close()

    def _deadline(self) -> float:
        timeout = self.config.read_timeout or self.config.poll_interval
        return min(float(timeout), 30.0)


def _cancelled_meanwhile() -> None:
    """Raise the cancellation pymodbus may have dropped.

    pymodbus waits (connect, each answer) with ``asyncio.wait_for``, which on Python 3.11
    returns the result when a cancellation arrives just as the result does, and the
    cancellation is lost: the task would carry on and the gateway could not stop it. The
    task still counts the request (``cancelling()``), so raise it here.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
