"""Modbus test kit: simulated meters behind real pymodbus servers, no mocks.

* :class:`SimMeter` holds a device's holding and input registers; subclasses
  speak in device terms: :class:`EastronMeter` (SDM120/SDM630 float32 input
  registers), :class:`SunSpecMeter` (``SunS`` + common model 1 + meter model
  203 or 213). Values can be set at any time (``meter.set_energy_kwh(1234.5)``)
  or rise at a known rate against the test's own clock (``meter.ramp(...)``).
  :meth:`EastronMeter.follow_power` makes a meter's power a live function of other
  devices (a base load plus whatever plugs are on), its counters integrating it.
* Every meter also has coils (``meter.set_coil(16, True)``, ``meter.coils``) and
  takes writes of coils (functions 5, 15) and holding registers (6, 16) into its
  model; ``meter.obey_writes = False`` plays a device that answers every write
  with success and keeps its state (a lying device).
* :func:`modbus_tcp_server` serves meters by unit id on 127.0.0.1, port 0;
  the server counts connections and records every request it receives, and
  can be stopped and started again on the same port (a device going away).
* :func:`modbus_rtu_server` serves the same over RTU through
  :func:`virtual_serial_link`, two pseudo-terminals joined by a relay in the
  event loop (no socat needed).
* :func:`silent_tcp_server` accepts connections and never answers.
* :func:`modbus_config` builds a :class:`ModbusConfig` the way a config loader
  does (msgspec, durations as ``"10s"``).
* :func:`modbus_polls_per_second` is the loopback benchmark.

Register words are encoded here with :mod:`struct`, independently of the
adapter's codec, so a symmetric bug cannot hide.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import struct
import time
import tty
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, cast

import msgspec
from pymodbus.constants import ExcCodes
from pymodbus.pdu import ModbusPDU
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from adapters.modbus import BackoffPolicy, ModbusAdapter, ModbusConfig
from adapters.modbus.transport import ConnectionRegistry
from gateway.timeutil import Duration

__all__ = [
    "EastronMeter",
    "Request",
    "SimMeter",
    "SimServer",
    "SunSpecMeter",
    "modbus_config",
    "modbus_polls_per_second",
    "modbus_rtu_server",
    "modbus_tcp_server",
    "silent_tcp_server",
    "virtual_serial_link",
    "words",
]

_FORMATS = {
    "u16": "H",
    "s16": "h",
    "u32": "I",
    "s32": "i",
    "u64": "Q",
    "f32": "f",
    "f64": "d",
}
NAN_F32 = (0x7FC0, 0x0000)


def words(
    value: float, value_type: str, word_order: str = "big", byte_order: str = "big"
) -> list[int]:
    """``value`` as the register words a device would send (struct, big-endian, then reordered)."""
    raw = struct.pack(">" + _FORMATS[value_type], value)
    pairs = [raw[i : i + 2] for i in range(0, len(raw), 2)]
    if byte_order == "little":
        pairs = [p[::-1] for p in pairs]
    if word_order == "little":
        pairs.reverse()
    return [int.from_bytes(p, "big") for p in pairs]


def _durations(kind: type, value: Any) -> Any:
    if kind is Duration:
        return Duration.parse(value)
    raise NotImplementedError(kind)


def modbus_config(**fields: Any) -> ModbusConfig:
    """A ModbusConfig from TOML-like fields, decoded like the gateway's loader would."""
    return msgspec.convert({"type": "modbus", **fields}, ModbusConfig, dec_hook=_durations)


# --------------------------------------------------------------------------- meters


_COIL_FUNCTIONS = frozenset({1, 5, 15})
_DISCRETE_INPUT_FUNCTIONS = frozenset({2})


class SimMeter:
    """A device's register spaces and coils. Subclasses fill them in device terms.

    Registers and coils must exist before the server starts (pymodbus fixes the valid
    addresses then): coils 0..15 always exist, more as far as the highest one set.
    ``failures`` collects what :meth:`refresh` raised; the request got exception 4.
    """

    def __init__(self) -> None:
        self.holding: dict[int, int] = {}
        self.input: dict[int, int] = {}
        self.coils: dict[int, bool] = {}
        self.obey_writes = True
        self.failures: list[Exception] = []

    def space(self, function_code: int) -> dict[int, int]:
        return self.holding if function_code in (3, 6, 16, 23) else self.input

    def write(self, function: str, address: int, values: Sequence[int]) -> None:
        space = self.holding if function == "holding" else self.input
        for offset, word in enumerate(values):
            space[address + offset] = word & 0xFFFF

    def set_coil(self, address: int, on: bool) -> None:
        self.coils[address] = on

    def refresh(self) -> None:
        """Called before every request the server answers: recompute live values here."""

    async def _serve(
        self,
        function_code: int,
        start_address: int,
        address: int,
        count: int,
        registers: list[int],
        set_values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        """pymodbus SimDevice action: copy the model into the server's registers.

        A write reaches the model first; a device that does not obey rewrites the
        request's values to what it holds, so pymodbus stores those.
        """
        try:
            self.refresh()
        except Exception as exc:  # a broken follow_power callable: the device fails
            self.failures.append(exc)
            return ExcCodes.DEVICE_FAILURE
        if function_code in _COIL_FUNCTIONS:
            self._serve_coils(start_address, address, registers, set_values)
            return None
        if function_code in _DISCRETE_INPUT_FUNCTIONS:
            return None
        space = self.space(function_code)
        if set_values is not None:
            for offset, value in enumerate(set_values):
                at = address + offset
                if self.obey_writes:
                    space[at] = int(value)
                else:
                    cast(list[int], set_values)[offset] = space.get(
                        at, registers[at - start_address]
                    )
        for offset in range(count):
            if (address + offset) in space:
                registers[address - start_address + offset] = space[address + offset]
        return None

    def _serve_coils(
        self,
        start_word: int,
        address: int,
        words: list[int],
        set_values: list[int] | list[bool] | None,
    ) -> None:
        """Coils live 16 to a word (bit 0 first), ``start_word`` is the first word's index."""

        def bit(coil: int) -> bool:
            return bool(words[coil // 16 - start_word] >> (coil % 16) & 1)

        if set_values is not None:
            for offset, value in enumerate(set_values):
                coil = address + offset
                if self.obey_writes:
                    self.coils[coil] = bool(value)
                else:
                    cast(list[bool], set_values)[offset] = self.coils.get(coil, bit(coil))
        for coil, on in self.coils.items():
            index = coil // 16 - start_word
            if 0 <= index < len(words):
                mask = 1 << (coil % 16)
                words[index] = words[index] | mask if on else words[index] & ~mask

    def simdevice(self, unit: int) -> SimDevice:
        """A pymodbus SimDevice with separate holding and input spaces, backed by this meter."""
        self.refresh()

        def blocks(space: Mapping[int, int]) -> list[SimData]:
            if not space:
                return [SimData(0, datatype=DataType.INVALID)]
            runs: list[SimData] = []
            addresses = sorted(space)
            start = prev = addresses[0]
            for address in [*addresses[1:], None]:
                if address is not None and address == prev + 1:
                    prev = address
                    continue
                values = [space[a] for a in range(start, prev + 1)]
                runs.append(SimData(start, values=values, datatype=DataType.REGISTERS))
                if address is not None:
                    start = prev = address
            return runs

        n_coils = (max(self.coils, default=0) // 16 + 1) * 16
        coils = [
            SimData(
                0, values=[self.coils.get(a, False) for a in range(n_coils)], datatype=DataType.BITS
            )
        ]
        inputs = [SimData(0, values=[False] * 16, datatype=DataType.BITS)]
        return SimDevice(
            unit,
            simdata=(coils, inputs, blocks(self.holding), blocks(self.input)),
            action=self._serve,
        )


@dataclass
class _Follow:
    power_kw: Callable[[], float]
    clock: Callable[[], float]
    at: float
    kw: float


class EastronMeter(SimMeter):
    """Eastron SDM630 or SDM120: float32 input registers, high word first."""

    IMPORT, EXPORT = 0x0048, 0x004A
    POWER: ClassVar[Mapping[str, int]] = {"sdm630": 0x0034, "sdm120": 0x000C}

    def __init__(
        self,
        model: str = "sdm630",
        *,
        energy_kwh: float = 0.0,
        export_kwh: float = 0.0,
        power_w: float = 0.0,
    ) -> None:
        super().__init__()
        self.model = model
        self.power_address = self.POWER[model]
        self._ramp: tuple[float, float, float, Callable[[], float]] | None = None
        self._follow: _Follow | None = None
        self.energy_kwh = self.export_kwh = 0.0
        # A few neighbours so the map looks like a real one (voltage, frequency).
        self.write("input", 0x0000, words(230.0, "f32"))
        self.write("input", 0x0046, words(50.0, "f32"))
        self.set_energy_kwh(energy_kwh)
        self.set_export_kwh(export_kwh)
        self.set_power_w(power_w)

    def set_energy_kwh(self, kwh: float) -> None:
        """Set the import counter; stops a ramp or a :meth:`follow_power`."""
        self._ramp = self._follow = None
        self._set_import(kwh)

    def set_export_kwh(self, kwh: float) -> None:
        self.export_kwh = kwh
        self.write("input", self.EXPORT, words(kwh, "f32"))

    def set_power_w(self, watts: float) -> None:
        """Set the power register; stops a :meth:`follow_power` (its counters stay)."""
        self._follow = None
        self._write_power(watts)

    def _set_import(self, kwh: float) -> None:
        self.energy_kwh = kwh
        self.write("input", self.IMPORT, words(kwh, "f32"))

    def _write_power(self, watts: float) -> None:
        self.write("input", self.power_address, words(watts, "f32"))

    def ramp(self, kw: float, clock: Callable[[], float], *, from_kwh: float = 0.0) -> None:
        """Import energy rises at ``kw`` from ``from_kwh``, by the test's ``clock`` (seconds)."""
        self._follow = None
        self._ramp = (from_kwh, kw, clock(), clock)
        self._write_power(kw * 1000)

    def follow_power(
        self,
        power_kw: Callable[[], float],
        *,
        clock: Callable[[], float] = time.monotonic,
        from_kwh: float | None = None,
    ) -> None:
        """The power follows ``power_kw()`` (kW; negative: exporting), live.

        Every request the server answers calls ``power_kw()`` and writes it to the
        power register (in W), so a read sees the callable's value at read time. The
        import counter (from ``from_kwh``, default its current value) and the export
        counter integrate it by ``clock`` (seconds): the power sampled at one request
        holds until the next, as between a real meter's own samples. A callable that
        raises (or returns NaN or an infinity) fails that request with Modbus
        exception 4 and lands in ``failures``. Stopped by ``set_power_w``,
        ``set_energy_kwh`` or ``ramp``.
        """
        self._ramp = None
        if from_kwh is not None:
            self._set_import(from_kwh)
        self._follow = _Follow(power_kw, clock, clock(), self._sample(power_kw))
        self._write_power(self._follow.kw * 1000)

    @staticmethod
    def _sample(power_kw: Callable[[], float]) -> float:
        kw = float(power_kw())
        if not math.isfinite(kw):
            raise ValueError(f"follow_power: the power is {kw!r} kW")
        return kw

    def refresh(self) -> None:
        if self._ramp is not None:
            start_kwh, kw, started, clock = self._ramp
            kwh = start_kwh + kw * (clock() - started) / 3600
            self.write("input", self.IMPORT, words(kwh, "f32"))
        follow = self._follow
        if follow is not None:
            now = follow.clock()
            kwh = follow.kw * max(now - follow.at, 0.0) / 3600
            if kwh > 0:
                self._set_import(self.energy_kwh + kwh)
            elif kwh < 0:
                self.set_export_kwh(self.export_kwh - kwh)
            follow.at = now
            follow.kw = self._sample(follow.power_kw)
            self._write_power(follow.kw * 1000)


class SunSpecMeter(SimMeter):
    """``SunS`` at ``base``, common model 1 (L=66), optional filler models, then a meter model.

    ``model_id`` 201-204 is the integer + scale-factor layout (L=105), 211-214
    the float32 one (L=124). Offsets as in the SunSpec model definitions.
    """

    COMMON_LENGTH = 66

    def __init__(
        self,
        *,
        base: int = 40000,
        model_id: int = 203,
        fillers: Sequence[tuple[int, int]] = (),
    ) -> None:
        super().__init__()
        self.model_id = model_id
        self.is_float = model_id >= 211
        self.write("holding", base, [0x5375, 0x6E53])  # "SunS"
        address = base + 2
        common = [1, self.COMMON_LENGTH, *_string_words("ECGW test kit", 16)]
        common += [0] * (2 + self.COMMON_LENGTH - len(common))
        self.write("holding", address, common)
        address += 2 + self.COMMON_LENGTH
        for filler_id, length in fillers:
            self.write("holding", address, [filler_id, length] + [0] * length)
            address += 2 + length
        length = 124 if self.is_float else 105
        self.meter_address = address
        body = [model_id, length] + [0] * length
        if self.is_float:  # float "not implemented" is NaN
            for offset in range(2, length + 2, 2):
                body[offset : offset + 2] = NAN_F32
        self.write("holding", address, body)
        self.write("holding", address + 2 + length, [0xFFFF, 0])

    def _at(self, offset: int, values: Sequence[int]) -> None:
        self.write("holding", self.meter_address + offset, values)

    def set_energy(self, value: float, sf: int = 0) -> None:
        """TotWhImp: the raw acc32 counter and TotWh_SF (or float Wh)."""
        if self.is_float:
            self._at(68, words(value, "f32"))
        else:
            self._at(46, words(int(value), "u32"))
            self._at(54, words(sf, "s16"))

    def set_export(self, value: float) -> None:
        if self.is_float:
            self._at(60, words(value, "f32"))
        else:
            self._at(38, words(int(value), "u32"))

    def set_power(self, value: float, sf: int = 0) -> None:
        if self.is_float:
            self._at(28, words(value, "f32"))
        else:
            self._at(18, words(int(value), "s16"))
            self._at(22, words(sf, "s16"))

    def set_raw(self, offset: int, values: Sequence[int]) -> None:
        self._at(offset, values)


def _string_words(text: str, length: int) -> list[int]:
    raw = text.encode().ljust(2 * length, b"\0")[: 2 * length]
    return [int.from_bytes(raw[i : i + 2], "big") for i in range(0, len(raw), 2)]


# --------------------------------------------------------------------------- servers


@dataclass(frozen=True)
class Request:
    """A request as the server received it."""

    unit: int
    function_code: int
    address: int
    count: int


@dataclass
class SimServer:
    """A pymodbus server serving ``meters`` by unit id; counts connections, logs requests."""

    meters: Mapping[int, SimMeter]
    host: str = "127.0.0.1"
    port: int = 0
    serial_port: str | None = None
    connections: int = 0
    requests: list[Request] = field(default_factory=list)
    _server: ModbusTcpServer | ModbusSerialServer | None = None

    def _trace_pdu(self, sending: bool, pdu: ModbusPDU) -> ModbusPDU:
        if not sending:
            self.requests.append(Request(pdu.dev_id, pdu.function_code, pdu.address, pdu.count))
        return pdu

    def _trace_connect(self, connected: bool) -> None:
        if connected:
            self.connections += 1

    def _devices(self) -> list[SimDevice]:
        return [meter.simdevice(unit) for unit, meter in self.meters.items()]

    @property
    def running(self) -> bool:
        return self._server is not None

    async def start(self) -> None:
        """Listen (again): on a free port the first time, on the same port after a stop."""
        if self.serial_port is not None:
            server: ModbusTcpServer | ModbusSerialServer = ModbusSerialServer(
                self._devices(), port=self.serial_port, baudrate=9600, trace_pdu=self._trace_pdu
            )
        else:
            server = ModbusTcpServer(
                self._devices(),
                address=(self.host, self.port),
                trace_pdu=self._trace_pdu,
                trace_connect=self._trace_connect,
            )
        await server.serve_forever(background=True)
        if self.serial_port is None:
            self.port = cast(asyncio.Server, server.transport).sockets[0].getsockname()[1]
        self._server = server

    async def stop(self) -> None:
        """Close the listener and every open connection: the device is gone."""
        server, self._server = self._server, None
        if server is not None:
            await server.shutdown()  # type: ignore[no-untyped-call]

    def reads_at(self, address: int) -> int:
        return sum(1 for r in self.requests if r.address == address)


@contextlib.asynccontextmanager
async def modbus_tcp_server(meters: Mapping[int, SimMeter]) -> AsyncIterator[SimServer]:
    """A Modbus TCP server on 127.0.0.1 (a free port) serving ``meters`` by unit id."""
    server = SimServer(meters)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@contextlib.asynccontextmanager
async def virtual_serial_link() -> AsyncIterator[tuple[str, str]]:
    """Two serial device paths wired to each other (like ``socat pty pty``), in-process."""
    loop = asyncio.get_running_loop()
    master_a, slave_a = os.openpty()
    master_b, slave_b = os.openpty()
    for fd in (slave_a, slave_b):
        tty.setraw(fd)
    for fd in (master_a, master_b):
        os.set_blocking(fd, False)

    def pump(source: int, sink: int) -> None:
        with contextlib.suppress(BlockingIOError, InterruptedError):
            data = os.read(source, 4096)
            if data:
                os.write(sink, data)

    loop.add_reader(master_a, pump, master_a, master_b)
    loop.add_reader(master_b, pump, master_b, master_a)
    try:
        yield os.ttyname(slave_a), os.ttyname(slave_b)
    finally:
        loop.remove_reader(master_a)
        loop.remove_reader(master_b)
        for fd in (master_a, slave_a, master_b, slave_b):
            os.close(fd)


@contextlib.asynccontextmanager
async def modbus_rtu_server(
    meters: Mapping[int, SimMeter],
) -> AsyncIterator[tuple[SimServer, str]]:
    """A Modbus RTU server on one end of a virtual serial link; yields it and the other end."""
    async with virtual_serial_link() as (client_end, server_end):
        server = SimServer(meters, serial_port=server_end)
        await server.start()
        try:
            yield server, client_end
        finally:
            await server.stop()


@dataclass
class SilentServer:
    """Accepts TCP connections, reads whatever comes, never answers."""

    port: int = 0
    connections: int = 0


@contextlib.asynccontextmanager
async def silent_tcp_server() -> AsyncIterator[SilentServer]:
    state = SilentServer()
    writers: list[asyncio.StreamWriter] = []

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        state.connections += 1
        writers.append(writer)
        with contextlib.suppress(ConnectionError):
            while await reader.read(1024):
                pass

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    state.port = server.sockets[0].getsockname()[1]
    try:
        yield state
    finally:
        for writer in writers:
            writer.close()
        server.close()
        await server.wait_closed()


# --------------------------------------------------------------------------- benchmark


async def modbus_polls_per_second(
    n_devices: int = 50, seconds: float = 5.0, *, one_server: bool = False
) -> float:
    """Successful polls per second of ``n_devices`` SDM630 adapters over loopback.

    Default: ``n_devices`` separate TCP servers, one connection per adapter, all
    adapters polling flat out at once. ``one_server=True``: one server with
    unit ids 1..n behind one shared connection (polls take turns). Servers run
    in the same process and event loop, so their cost is included.
    """
    registry = ConnectionRegistry()
    meters = [EastronMeter(energy_kwh=100.0 + i, power_w=1000.0) for i in range(n_devices)]
    async with contextlib.AsyncExitStack() as stack:
        if one_server:
            shared = await stack.enter_async_context(
                modbus_tcp_server({i + 1: m for i, m in enumerate(meters)})
            )
            places = [(shared.port, i + 1) for i in range(n_devices)]
        else:
            servers = [await stack.enter_async_context(modbus_tcp_server({1: m})) for m in meters]
            places = [(s.port, 1) for s in servers]
        adapters = [
            await stack.enter_async_context(
                ModbusAdapter(
                    f"bench-{i}",
                    modbus_config(host="127.0.0.1", port=port, unit=unit, profile="eastron-sdm630"),
                    backoff=BackoffPolicy(initial=0.05, cap=0.5),
                    registry=registry,
                )
            )
            for i, (port, unit) in enumerate(places)
        ]
        deadline = time.monotonic() + seconds
        counts = [0] * n_devices

        async def poll(index: int, adapter: ModbusAdapter) -> None:
            while time.monotonic() < deadline:
                readings = await adapter.read()
                if not any(math.isfinite(r.value) for r in readings):
                    raise AssertionError("a poll without readings")
                counts[index] += 1

        started = time.monotonic()
        async with asyncio.TaskGroup() as group:
            for index, adapter in enumerate(adapters):
                group.create_task(poll(index, adapter), name=f"bench-poll-{index}")
        return sum(counts) / (time.monotonic() - started)
