"""Shared Modbus connections: one per TCP endpoint or serial port, taken in turns.

Several adapters naming the same ``(host, port)`` or the same serial port share
one :class:`Connection` from a process-wide :class:`ConnectionRegistry`
(reference counted; the link closes when its last user leaves). An adapter
holds the connection's lock for a whole poll (:meth:`Connection.session`), so
polls of different units never interleave on the wire.

Failure policy (:class:`ConnectBackoff` keeps the time before which no attempt is
made; its delays are ``gateway.Backoff``'s, the gateway's one backoff):

* A failed connect, a timed-out read or a broken link closes the link and
  pushes the next connection attempt out by a capped exponential backoff with
  equal jitter. Until then every poll fails fast, without touching the network.
* Any answer from the device, even a Modbus exception response, resets it.
* ``epoch`` counts unplanned losses of the link; whoever caches what it learnt
  about the device (the SunSpec layout) re-learns it when the epoch moves.
  ``close_after_poll`` closes on purpose and keeps the epoch.

pymodbus exceptions are translated here into :class:`AdapterReadError` (for writes
too: the link failed either way), a Modbus exception response into :class:`DeviceRefused`.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import structlog
from pymodbus import FramerType, ModbusException
from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient, ModbusBaseClient
from pymodbus.pdu import ModbusPDU

from adapters.modbus.points import Block
from gateway import AdapterReadError, Backoff

__all__ = [
    "BackoffPolicy",
    "ConnectBackoff",
    "Connection",
    "ConnectionRegistry",
    "DeviceRefused",
    "Endpoint",
    "Session",
    "SessionOptions",
    "default_registry",
]

_log = structlog.get_logger("adapters.modbus")


class DeviceRefused(AdapterReadError):
    """The device answered with a Modbus exception response (``code``, e.g. 2 = illegal address)."""

    def __init__(self, message: str, *, code: int, adapter: str | None = None) -> None:
        self.code = code
        super().__init__(message, adapter=adapter)


@dataclass(frozen=True, slots=True)
class BackoffPolicy:
    """Delays between connection attempts: doubling from ``initial`` up to ``cap`` seconds."""

    initial: float = 1.0
    cap: float = 30.0


class ConnectBackoff:
    """When the next connection attempt may happen. The caller passes ``now``."""

    def __init__(self, policy: BackoffPolicy, rng: random.Random | None = None) -> None:
        self.policy = policy
        self._delays = Backoff(policy.initial, policy.cap, rng=rng)
        self.not_before = float("-inf")

    @property
    def failures(self) -> int:
        """Consecutive failures since the last success."""
        return self._delays.failures

    def failed(self, now: float) -> float:
        """Record a failure at ``now``; returns the delay until the next attempt."""
        delay = self._delays.next()
        self.not_before = now + delay
        return delay

    def succeeded(self) -> None:
        self._delays.reset()
        self.not_before = float("-inf")

    def remaining(self, now: float) -> float:
        """Seconds until an attempt is allowed (0 if it is allowed now)."""
        return max(0.0, self.not_before - now)


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where a device is: a TCP ``host``/``port`` or a ``serial_port`` with line settings."""

    host: str | None = None
    port: int = 502
    serial_port: str | None = None
    baudrate: int = 9600
    parity: str = "N"
    stopbits: int = 1
    bytesize: int = 8

    @property
    def key(self) -> tuple[str, str, int]:
        """Endpoints with the same key share one connection."""
        if self.serial_port is not None:
            return ("serial", os.path.realpath(self.serial_port), 0)
        return ("tcp", (self.host or "").strip().lower(), self.port)

    def __str__(self) -> str:
        if self.serial_port is not None:
            return f"serial:{self.serial_port}"
        return f"tcp://{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class SessionOptions:
    """Per-adapter pacing, applied while that adapter holds the connection."""

    timeout: float = 3.0
    connect_delay: float = 0.0
    request_pause: float = 0.0
    close_after_poll: bool = False


class Connection:
    """One link to one endpoint, shared by every adapter that names it."""

    def __init__(self, endpoint: Endpoint, policy: BackoffPolicy) -> None:
        self.endpoint = endpoint
        self.lock = asyncio.Lock()
        self.users = 0
        self.epoch = 0
        self.connect_attempts = 0
        self._connected_before = False
        self._backoff = ConnectBackoff(policy)
        self._client: ModbusBaseClient | None = None
        self._lost = asyncio.Event()  # set by pymodbus when the current client's link drops
        self._last_request_end: float | None = None

    @asynccontextmanager
    async def session(self, adapter: str, options: SessionOptions) -> AsyncIterator[Session]:
        """Hold the link for one poll: connected, paced, closed afterwards if asked."""
        async with self.lock:
            await self._open(adapter, options)
            try:
                yield Session(self, adapter, options)
            finally:
                if options.close_after_poll:
                    self._drop()

    def close(self) -> None:
        self._drop()

    def _drop(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.close()

    def _fail(self, adapter: str, event: str, reason: str) -> float:
        """The link failed: close it, move the epoch, back off. Returns the delay."""
        self._drop()
        self.epoch += 1
        delay = self._backoff.failed(time.monotonic())
        _log.warning(
            event, adapter=adapter, endpoint=str(self.endpoint), reason=reason, retry_in=delay
        )
        return delay

    async def _open(self, adapter: str, options: SessionOptions) -> None:
        if self._client is not None:
            if self._client.connected:
                return
            self._drop()  # the peer closed it since the last poll
            self.epoch += 1
        wait = self._backoff.remaining(time.monotonic())
        if wait > 0:
            raise AdapterReadError(
                f"{self.endpoint} is unreachable; next connection attempt in {wait:.1f} s",
                adapter=adapter,
            )
        self.connect_attempts += 1
        client = self._new_client(options.timeout)
        try:
            async with asyncio.timeout(options.timeout):
                connected = bool(await client.connect())
            _raise_dropped_cancellation()
        except (TimeoutError, OSError, ModbusException):
            connected = False
        except BaseException:
            client.close()
            raise
        if not connected:
            client.close()
            delay = self._fail(adapter, "modbus.connect_failed", "no connection")
            raise AdapterReadError(
                f"cannot connect to {self.endpoint}; next attempt in {delay:.1f} s", adapter=adapter
            )
        self._client = client
        # Routine reconnects (close_after_poll, a peer's idle close) are not news.
        routine = self._connected_before and not self._backoff.failures
        (_log.debug if routine else _log.info)(
            "modbus.connected", adapter=adapter, endpoint=str(self.endpoint)
        )
        self._connected_before = True
        if options.connect_delay > 0:
            await asyncio.sleep(options.connect_delay)

    def _new_client(self, timeout: float) -> ModbusBaseClient:
        lost = self._lost = asyncio.Event()
        # Our asyncio.timeout is the deadline; pymodbus's own one only backs it up.
        timeout += 1.0

        def on_connect(connected: bool) -> None:
            if not connected:
                lost.set()

        ep = self.endpoint
        if ep.serial_port is not None:
            return AsyncModbusSerialClient(
                ep.serial_port,
                framer=FramerType.RTU,
                baudrate=ep.baudrate,
                bytesize=ep.bytesize,
                parity=ep.parity,
                stopbits=ep.stopbits,
                reconnect_delay=0,  # we reconnect ourselves, with our backoff
                timeout=timeout,
                retries=0,
                trace_connect=on_connect,
            )
        return AsyncModbusTcpClient(
            ep.host or "",
            port=ep.port,
            reconnect_delay=0,
            timeout=timeout,
            retries=0,
            trace_connect=on_connect,
        )

    async def _answer_or_loss(self, request: Awaitable[ModbusPDU]) -> ModbusPDU:
        """The answer to ``request``, or ConnectionError as soon as the link drops.

        pymodbus leaves a request whose connection died waiting for its timeout.
        """
        answer = asyncio.ensure_future(request)
        loss = asyncio.ensure_future(self._lost.wait())
        try:
            await asyncio.wait((answer, loss), return_when=asyncio.FIRST_COMPLETED)
        finally:
            answer.cancel()
            loss.cancel()
            await asyncio.gather(answer, loss, return_exceptions=True)
        if answer.done() and not answer.cancelled():
            return answer.result()
        raise ConnectionError("the connection was closed while waiting for the answer")

    async def _pace(self, pause: float) -> None:
        if pause > 0 and self._last_request_end is not None:
            wait = self._last_request_end + pause - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)

    async def _request(
        self,
        adapter: str,
        options: SessionOptions,
        call: Callable[[ModbusBaseClient], Awaitable[ModbusPDU]],
        what: str,
        unit: int,
        *,
        event: str = "modbus.read_failed",
    ) -> tuple[ModbusPDU, float]:
        """One request on the link and the wall-clock time its answer arrived.

        ``what`` says what was asked (``read 2 input registers at 52``) for the errors:
        a link failure raises AdapterReadError (logged as ``event``), an exception
        response DeviceRefused.
        """
        client = self._client
        if client is None or not client.connected:
            self._fail(adapter, "modbus.link_lost", "connection closed by the peer")
            raise AdapterReadError(f"lost the connection to {self.endpoint}", adapter=adapter)
        await self._pace(options.request_pause)
        try:
            async with asyncio.timeout(options.timeout):
                response = await self._answer_or_loss(call(client))
        except TimeoutError as exc:
            self._fail(adapter, event, "timeout")
            raise AdapterReadError(
                f"no answer from unit {unit} at {self.endpoint} within {options.timeout:g} s "
                f"(asked to {what})",
                adapter=adapter,
            ) from exc
        except (ModbusException, OSError) as exc:
            self._fail(adapter, event, str(exc))
            raise AdapterReadError(
                f"asking unit {unit} at {self.endpoint} to {what} failed: {exc}", adapter=adapter
            ) from exc
        except BaseException:
            self._drop()  # cancelled mid-request: the stream's state is unknown
            raise
        finally:
            self._last_request_end = time.monotonic()
        at = time.time()
        self._backoff.succeeded()
        if response.isError():
            code = response.exception_code
            raise DeviceRefused(
                f"unit {unit} refused to {what} (Modbus exception {code})",
                code=code,
                adapter=adapter,
            )
        return response, at

    async def read(
        self, adapter: str, options: SessionOptions, block: Block, unit: int
    ) -> tuple[list[int], float]:
        """Registers of ``block`` and the wall-clock time their answer arrived."""

        def call(client: ModbusBaseClient) -> Awaitable[ModbusPDU]:
            reader = (
                client.read_holding_registers
                if block.function == "holding"
                else client.read_input_registers
            )
            return reader(block.address, count=block.count, device_id=unit)

        what = f"read {block.count} {block.function} registers at {block.address}"
        response, at = await self._request(adapter, options, call, what, unit)
        registers = list(response.registers)
        if len(registers) != block.count:
            raise AdapterReadError(
                f"unit {unit} sent {len(registers)} registers, {block.count} were asked for",
                adapter=adapter,
            )
        return registers, at

    async def read_coil(
        self, adapter: str, options: SessionOptions, address: int, unit: int
    ) -> tuple[bool, float]:
        """One coil (function 1) and the wall-clock time its answer arrived."""

        def call(client: ModbusBaseClient) -> Awaitable[ModbusPDU]:
            return client.read_coils(address, count=1, device_id=unit)

        response, at = await self._request(
            adapter, options, call, f"read the coil at {address}", unit
        )
        if not response.bits:
            raise AdapterReadError(f"unit {unit} sent no coil for {address}", adapter=adapter)
        return bool(response.bits[0]), at

    async def write_coil(
        self, adapter: str, options: SessionOptions, address: int, on: bool, unit: int
    ) -> None:
        """Write one coil (function 5)."""

        def call(client: ModbusBaseClient) -> Awaitable[ModbusPDU]:
            return client.write_coil(address, on, device_id=unit)

        what = f"set the coil at {address} {'on' if on else 'off'}"
        await self._request(adapter, options, call, what, unit, event="modbus.write_failed")

    async def write_register(
        self, adapter: str, options: SessionOptions, address: int, value: int, unit: int
    ) -> None:
        """Write one holding register (function 6)."""

        def call(client: ModbusBaseClient) -> Awaitable[ModbusPDU]:
            return client.write_register(address, value, device_id=unit)

        what = f"write {value} to the holding register at {address}"
        await self._request(adapter, options, call, what, unit, event="modbus.write_failed")


class Session:
    """An adapter's turn on a connection: read blocks from its unit, read and write its
    coils and holding registers."""

    def __init__(self, connection: Connection, adapter: str, options: SessionOptions) -> None:
        self.connection = connection
        self._adapter = adapter
        self._options = options

    @property
    def epoch(self) -> int:
        return self.connection.epoch

    async def read(self, block: Block, unit: int) -> tuple[list[int], float]:
        return await self.connection.read(self._adapter, self._options, block, unit)

    async def read_coil(self, address: int, unit: int) -> tuple[bool, float]:
        return await self.connection.read_coil(self._adapter, self._options, address, unit)

    async def write_coil(self, address: int, on: bool, unit: int) -> None:
        await self.connection.write_coil(self._adapter, self._options, address, on, unit)

    async def write_register(self, address: int, value: int, unit: int) -> None:
        await self.connection.write_register(self._adapter, self._options, address, value, unit)


class ConnectionRegistry:
    """Connections by endpoint, reference counted."""

    def __init__(self) -> None:
        self._connections: dict[tuple[str, str, int], Connection] = {}

    def __len__(self) -> int:
        return len(self._connections)

    def acquire(self, endpoint: Endpoint, policy: BackoffPolicy) -> Connection:
        """The connection for ``endpoint``, shared; ValueError if line settings disagree."""
        connection = self._connections.get(endpoint.key)
        if connection is None:
            connection = self._connections[endpoint.key] = Connection(endpoint, policy)
        elif connection.endpoint != endpoint and endpoint.serial_port is not None:
            raise ValueError(
                f"{endpoint} is already in use with other settings (baudrate, parity, stopbits, "
                f"bytesize): {connection.endpoint!r}"
            )
        connection.users += 1
        return connection

    def release(self, connection: Connection) -> None:
        connection.users -= 1
        if connection.users <= 0:
            connection.close()
            if self._connections.get(connection.endpoint.key) is connection:
                del self._connections[connection.endpoint.key]


_DEFAULT_REGISTRY = ConnectionRegistry()


def default_registry() -> ConnectionRegistry:
    """The process-wide registry every adapter uses unless given another one."""
    return _DEFAULT_REGISTRY


def _raise_dropped_cancellation() -> None:
    """Raise the cancellation pymodbus may have dropped.

    pymodbus waits for its connection with ``asyncio.wait_for``, which on Python 3.11
    returns the result when a cancellation arrives just as the result does: the
    cancellation is lost and the adapter's task would carry on, so the gateway could not
    stop it. The task still counts the request (``cancelling()``): raise it here.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
