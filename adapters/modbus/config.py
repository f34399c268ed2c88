"""The ``modbus`` adapter's config: one device (TCP or serial) and what to read from it.

::

    [adapters.meter]
    type = "modbus"
    host = "192.168.1.50"          # or serial_port = "/dev/ttyUSB0" (+ baudrate, parity, ...)
    port = 502
    unit = 1
    profile = "eastron-sdm630"     # or "eastron-sdm120", "sunspec", or a registers map
    poll_interval = "10s"

    [adapters.meter.registers.energy]   # instead of profile
    address = 100
    function = "holding"
    type = "u32"
    scale = 0.01
    unit = "kWh"
    wrap = 4294967296

    [adapters.meter.controls.switch]    # optional: what switches the load, by control name
    coil = 16                           # a coil (PDU address): on = 1, off = 0
    # or: holding = 9, on = 1, off = 0  # a holding register (PDU address) and its two values

Every control is an on/off switch (values 0 and 1); name the one that switches
the load ``switch``. Commands are written with function 5 (a coil) or 6 (a
holding register); the state is read back from the same coil or register.

Unknown keys are rejected by msgspec with the key's name. The cross-field rules
(exactly one of ``host``/``serial_port``, exactly one of ``profile``/``registers``,
kind/unit agreement, ...) raise ``ValueError`` from ``__post_init__``; msgspec
turns that into a ``ValidationError`` carrying the same message, which names
the offending keys.
"""

from __future__ import annotations

import math
from typing import Annotated, Literal

import msgspec

from gateway import AdapterConfig, ChannelKind, Duration, Unit

__all__ = [
    "ByteOrder",
    "ControlSpec",
    "FunctionName",
    "ModbusConfig",
    "ProfileName",
    "RegisterSpec",
    "RegisterType",
    "WordOrder",
]

ProfileName = Literal["eastron-sdm120", "eastron-sdm630", "sunspec"]
FunctionName = Literal["input", "holding"]
RegisterType = Literal["u16", "s16", "u32", "s32", "u64", "f32", "f64"]
WordOrder = Literal["big", "little"]
ByteOrder = Literal["big", "little"]

_ENERGY_UNITS = frozenset({Unit.WH, Unit.KWH})
_MAX_ADDRESS = 0xFFFF


class RegisterSpec(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    """Where one channel's value lives and how to turn its registers into a number.

    ``address`` is the PDU address (0-based, as sent on the wire). ``scale``
    multiplies the raw value; ``scale_register`` instead names an s16 register
    (same function) holding a power-of-ten exponent, SunSpec ``sunssf`` style.
    ``wrap`` is the raw counter's modulus (e.g. ``4294967296`` for a u32).
    """

    address: int
    function: FunctionName
    type: RegisterType
    unit: Unit
    word_order: WordOrder = "big"
    byte_order: ByteOrder = "big"
    scale: float = 1.0
    scale_register: int | None = None
    kind: ChannelKind = ChannelKind.ENERGY
    wrap: int | None = None

    def problems(self, key: str) -> list[str]:
        """Messages for every rule this spec breaks; ``key`` is its dotted config key."""
        found: list[str] = []
        if not 0 <= self.address <= _MAX_ADDRESS:
            found.append(f"{key}.address: {self.address} is outside 0..65535")
        if self.scale_register is not None and not 0 <= self.scale_register <= _MAX_ADDRESS:
            found.append(f"{key}.scale_register: {self.scale_register} is outside 0..65535")
        if self.scale_register is not None and self.scale != 1.0:
            found.append(f"{key}: set either scale or scale_register, not both")
        if not math.isfinite(self.scale) or self.scale == 0:
            found.append(f"{key}.scale: must be a finite, non-zero number")
        if (self.kind is ChannelKind.ENERGY) != (self.unit in _ENERGY_UNITS):
            found.append(f"{key}.unit: {self.unit} does not fit kind {self.kind}")
        if self.kind is ChannelKind.ENERGY and self.scale < 0:
            found.append(f"{key}.scale: an energy counter needs a positive scale")
        if self.wrap is not None:
            if self.kind is not ChannelKind.ENERGY:
                found.append(f"{key}.wrap: only an energy counter can wrap")
            if self.wrap <= 0:
                found.append(f"{key}.wrap: must be a positive modulus")
        return found


class ControlSpec(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    """What one on/off control writes: a ``coil``, or a ``holding`` register with the
    values that mean ``on`` and ``off`` (default 1 and 0). Addresses are PDU addresses."""

    coil: int | None = None
    holding: int | None = None
    on: int | None = None
    off: int | None = None

    @property
    def on_value(self) -> int:
        return 1 if self.on is None else self.on

    @property
    def off_value(self) -> int:
        return 0 if self.off is None else self.off

    def problems(self, key: str) -> list[str]:
        """Messages for every rule this spec breaks; ``key`` is its dotted config key."""
        if (self.coil is None) == (self.holding is None):
            return [f"{key}: set exactly one of `coil` or `holding`"]
        found: list[str] = []
        for name in ("coil", "holding"):
            address = getattr(self, name)
            if address is not None and not 0 <= address <= _MAX_ADDRESS:
                found.append(f"{key}.{name}: {address} is outside 0..65535")
        if self.coil is not None:
            found.extend(
                f"{key}.{name}: only for a holding register; a coil is on = 1, off = 0"
                for name in ("on", "off")
                if getattr(self, name) is not None
            )
            return found
        for name in ("on", "off"):
            value = getattr(self, name)
            if value is not None and not 0 <= value <= _MAX_ADDRESS:
                found.append(f"{key}.{name}: {value} is outside 0..65535 (one register)")
        if self.on_value == self.off_value:
            found.append(f"{key}: `on` and `off` are both {self.on_value}")
        return found


class ModbusConfig(AdapterConfig, kw_only=True, frozen=True):
    """One Modbus device: a TCP endpoint or a serial port, a unit id, and a register map."""

    host: Annotated[str, msgspec.Meta(min_length=1)] | None = None
    port: Annotated[int, msgspec.Meta(ge=1, le=65535)] = 502
    serial_port: Annotated[str, msgspec.Meta(min_length=1)] | None = None
    baudrate: Annotated[int, msgspec.Meta(gt=0)] = 9600
    parity: Literal["N", "E", "O"] = "N"
    stopbits: Literal[1, 2] = 1
    bytesize: Literal[7, 8] = 8
    unit: Annotated[int, msgspec.Meta(ge=0, le=255)] = 1
    profile: ProfileName | None = None
    registers: dict[str, RegisterSpec] = msgspec.field(default_factory=dict)
    controls: dict[str, ControlSpec] = msgspec.field(default_factory=dict)
    connect_delay: Duration = Duration(0.0)
    request_pause: Duration = Duration(0.0)
    close_after_poll: bool = False
    timeout: Duration = Duration(3.0)

    def __post_init__(self) -> None:
        found = self._transport_problems() + self._map_problems() + self._control_problems()
        if found:
            raise ValueError("; ".join(found))

    def _transport_problems(self) -> list[str]:
        found: list[str] = []
        if (self.host is None) == (self.serial_port is None):
            found.append("set exactly one of `host` (Modbus TCP) or `serial_port` (Modbus RTU)")
        if self.host is not None and not self.host.strip():
            found.append("`host` is empty")
        if self.serial_port is not None and not self.serial_port.strip():
            found.append("`serial_port` is empty")
        if self.timeout <= 0:
            found.append("`timeout` must be longer than 0 s")
        return found

    def _map_problems(self) -> list[str]:
        if (self.profile is None) == (not self.registers):
            return ["set exactly one of `profile` or a `registers` map"]
        found: list[str] = []
        for name, spec in self.registers.items():
            if not name.strip():
                found.append("`registers` has a channel with an empty name")
            found.extend(spec.problems(f"registers.{name}"))
        return found

    def _control_problems(self) -> list[str]:
        found: list[str] = []
        for name, spec in self.controls.items():
            if not name.strip():
                found.append("`controls` has a control with an empty name")
            found.extend(spec.problems(f"controls.{name}"))
        return found
