"""The ``modbus`` polling adapter: Eastron meters, SunSpec meters, or a register map.

Each ``read()`` takes the shared connection's turn, works out which points to
read (for SunSpec: walks the model chain once per connection epoch), reads them
in as few requests as the profile allows, and decodes. Any failed request fails
the whole poll with AdapterReadError: no reading, never a zero.

Controls (``[adapters.NAME.controls.*]``, see config.py) are on/off switches on a
coil or a holding register. ``apply`` writes it and ``state`` reads it back,
each in its own turn on the shared connection, with the adapter's unit id and
pacing; ``state`` is stamped with the time the answer arrived. A holding
register that holds neither the ``on`` nor the ``off`` value is an AdapterError
naming both, never a guess.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import TracebackType
from typing import ClassVar

import structlog

from adapters.modbus.config import ControlSpec, ModbusConfig
from adapters.modbus.points import Block, Point, channel_for, evaluate, plan_blocks
from adapters.modbus.profiles import PROFILES, Profile, generic_profile
from adapters.modbus.sunspec import MeterModel, ModelWalk
from adapters.modbus.transport import (
    BackoffPolicy,
    Connection,
    ConnectionRegistry,
    DeviceRefused,
    Endpoint,
    Session,
    SessionOptions,
    default_registry,
)
from gateway import (
    AdapterConfig,
    AdapterError,
    AdapterLoadError,
    AdapterReadError,
    Channel,
    ChannelKind,
    Control,
    ControlKind,
    ControlState,
    Reading,
    Unit,
)

__all__ = ["ModbusAdapter"]

_log = structlog.get_logger("adapters.modbus")

# Before discovery a SunSpec device's channels are known by name, kind and unit only.
_SUNSPEC_CHANNELS = (
    Channel("energy", ChannelKind.ENERGY, Unit.WH),
    Channel("export_energy", ChannelKind.ENERGY, Unit.WH),
    Channel("power", ChannelKind.POWER, Unit.W),
)
# Registers between the points of one SunSpec model all exist: read across them.
_SUNSPEC_MAX_GAP = 64


def _endpoint(config: ModbusConfig) -> Endpoint:
    return Endpoint(
        host=config.host,
        port=config.port,
        serial_port=config.serial_port,
        baudrate=config.baudrate,
        parity=config.parity,
        stopbits=config.stopbits,
        bytesize=config.bytesize,
    )


class ModbusAdapter:
    """A polling adapter for one Modbus device (one unit id on a TCP endpoint or serial line),
    and a controllable one for the switches named in its ``controls``.

    ``backoff`` and ``registry`` are for tests and embedders; the gateway builds
    the adapter as ``ModbusAdapter(name, config)``.
    """

    Config: ClassVar[type[AdapterConfig]] = ModbusConfig

    def __init__(
        self,
        name: str,
        config: AdapterConfig,
        *,
        backoff: BackoffPolicy | None = None,
        registry: ConnectionRegistry | None = None,
    ) -> None:
        if not isinstance(config, ModbusConfig):
            raise AdapterLoadError(
                f"expected a ModbusConfig, got {type(config).__name__}", adapter=name
            )
        self.name = name
        self.config = config
        self._endpoint = _endpoint(config)
        self._options = SessionOptions(
            timeout=float(config.timeout),
            connect_delay=float(config.connect_delay),
            request_pause=float(config.request_pause),
            close_after_poll=config.close_after_poll,
        )
        self._policy = backoff if backoff is not None else BackoffPolicy()
        self._registry = registry if registry is not None else default_registry()
        self._connection: Connection | None = None
        self._profile: Profile | None = None
        if config.profile is None:
            self._profile = generic_profile(config.registers)
        elif config.profile != "sunspec":
            self._profile = PROFILES[config.profile]
        self._meter: MeterModel | None = None  # SunSpec layout, valid for one epoch
        self._last_meter: MeterModel | None = None  # the latest layout seen, for channels()
        self._meter_epoch = -1
        self._exponents: dict[str, int] = {}

    def __repr__(self) -> str:
        return f"ModbusAdapter({self.name!r}, {self._endpoint}, unit={self.config.unit})"

    def channels(self) -> Sequence[Channel]:
        """The channels; a wrap that depends on a device scale factor is known after a read."""
        points = self._points()
        if points is None:
            return list(_SUNSPEC_CHANNELS)
        return [channel_for(p, self._exponents.get(p.channel)) for p in points]

    def _points(self) -> tuple[Point, ...] | None:
        if self._profile is not None:
            return self._profile.points
        return self._last_meter.points() if self._last_meter is not None else None

    async def __aenter__(self) -> ModbusAdapter:
        try:
            self._connection = self._registry.acquire(self._endpoint, self._policy)
        except ValueError as exc:
            raise AdapterLoadError(str(exc), adapter=self.name) from exc
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            self._registry.release(connection)

    async def read(self) -> Sequence[Reading]:
        """One poll. Raises AdapterReadError if any request fails; sentinels give no reading."""
        connection = self._connection
        if connection is None:
            raise AdapterReadError("read() outside the adapter's lifetime", adapter=self.name)
        async with connection.session(self.name, self._options) as session:
            points, max_gap = await self._plan(session)
            answers: dict[Block, tuple[Sequence[int], float]] = {}
            try:
                for block in plan_blocks(points, max_gap=max_gap):
                    answers[block] = await session.read(block, self.config.unit)
            except DeviceRefused:
                self._meter = None  # the layout may be stale: walk again next time
                raise
        result = evaluate(points, answers)
        self._exponents.update(result.exponents)
        return result.readings

    async def _plan(self, session: Session) -> tuple[tuple[Point, ...], int]:
        if self._profile is not None:
            return self._profile.points, self._profile.max_gap
        if self._meter is None or self._meter_epoch != session.epoch:
            self._meter = None
            meter = await self._discover(session)
            self._meter, self._last_meter, self._meter_epoch = meter, meter, session.epoch
        return self._meter.points(), _SUNSPEC_MAX_GAP

    async def _discover(self, session: Session) -> MeterModel:
        walk = ModelWalk()
        while (request := walk.request) is not None:
            block = Block("holding", request.address, request.count)
            try:
                registers: list[int] | None = (await session.read(block, self.config.unit))[0]
            except DeviceRefused:
                registers = None
            walk.feed(registers)
        if walk.meter is None:
            raise AdapterReadError(f"SunSpec discovery failed: {walk.failure}", adapter=self.name)
        _log.info(
            "modbus.sunspec_discovered",
            adapter=self.name,
            model=walk.meter.model_id,
            address=walk.meter.address,
            length=walk.meter.length,
        )
        return walk.meter

    # --- controls ---------------------------------------------------------------------------------

    def controls(self) -> Sequence[Control]:
        """One on/off switch per ``[adapters.NAME.controls.*]`` table."""
        return tuple(Control(name, ControlKind.SWITCH) for name in sorted(self.config.controls))

    async def apply(self, control: str, value: float) -> None:
        """Write the coil (on = 1) or the holding register (its ``on``/``off`` value)."""
        spec, connection = self._control(control, "apply")
        try:
            on = Control(control, ControlKind.SWITCH).check(value) == 1.0
        except ValueError as exc:
            raise AdapterError(str(exc), adapter=self.name) from exc
        unit = self.config.unit
        async with connection.session(self.name, self._options) as session:
            if spec.coil is not None:
                await session.write_coil(spec.coil, on, unit)
            else:
                assert spec.holding is not None  # the config's rule: exactly one of them
                word = spec.on_value if on else spec.off_value
                await session.write_register(spec.holding, word, unit)

    async def state(self, control: str) -> ControlState:
        """Read the coil or holding register back: 1 (on) or 0 (off), at the answer's time."""
        spec, connection = self._control(control, "state")
        unit = self.config.unit
        async with connection.session(self.name, self._options) as session:
            if spec.coil is not None:
                on, at = await session.read_coil(spec.coil, unit)
                return ControlState(1.0 if on else 0.0, at=at)
            assert spec.holding is not None
            (word,), at = await session.read(Block("holding", spec.holding, 1), unit)
        if word not in (spec.on_value, spec.off_value):
            raise AdapterError(
                f"control {control!r}: holding register {spec.holding} reads {word}, "
                f"neither on ({spec.on_value}) nor off ({spec.off_value})",
                adapter=self.name,
            )
        return ControlState(1.0 if word == spec.on_value else 0.0, at=at)

    def _control(self, control: str, doing: str) -> tuple[ControlSpec, Connection]:
        spec = self.config.controls.get(control)
        if spec is None:
            known = ", ".join(repr(name) for name in sorted(self.config.controls)) or "none"
            raise AdapterError(f"no control {control!r} (it has {known})", adapter=self.name)
        if self._connection is None:
            raise AdapterError(f"{doing}() outside the adapter's lifetime", adapter=self.name)
        return spec, self._connection
