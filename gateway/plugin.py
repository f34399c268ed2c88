"""The adapter plugin API: what a device adapter is and what it produces.

An adapter is a class registered under the entry-point group
``gateway.adapters``. The entry-point name is the ``type`` written in config::

    [project.entry-points."gateway.adapters"]
    my-meter = "my_package.meter:MyMeterAdapter"

The class has a ``Config`` (a :class:`AdapterConfig` subclass: unknown keys are
rejected with the key's name), is built as ``cls(name, config)``, and is an
async context manager that owns its connections. Inside that lifetime it is
either a *polling* adapter (``read()`` is called every ``poll_interval`` under
a deadline) or a *push* adapter (``stream()`` yields batches as they arrive).

Readings are plain values: a channel name, a UTC timestamp (seconds since the
epoch) and the value as the device gave it, in the unit its :class:`Channel`
declares. The gateway converts units, detects wraps and resets, and integrates.

**Controls.** An adapter that can switch or steer its load is also a
:class:`ControllableAdapter`: ``controls()`` declares what it can do (a
:class:`Control`: name, kind ``switch`` or ``power`` setpoint, limits),
``apply(control, value)`` sends one command, and ``state(control)`` says what the
device last *reported* for it (a :class:`ControlState`: value and when). The gateway
never takes ``apply`` returning as done: it confirms each command by ``state``
(a report at or after the command, with the commanded value) within a deadline,
retries, and records every command and its confirmation. ``apply`` and ``state``
are only called while the adapter is entered (between ``__aenter__`` and
``__aexit__``); either may raise AdapterError (or anything: that command fails).
Every built-in adapter that can switch its load names that on/off control
``switch`` (values 0 = off, 1 = on).
"""

from __future__ import annotations

import enum
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import ClassVar, Protocol, runtime_checkable

import msgspec

from gateway.timeutil import Duration

__all__ = [
    "SWITCH",
    "Adapter",
    "AdapterConfig",
    "Channel",
    "ChannelKind",
    "Control",
    "ControlKind",
    "ControlState",
    "ControllableAdapter",
    "PollingAdapter",
    "PushAdapter",
    "Reading",
    "Unit",
]


class ChannelKind(enum.StrEnum):
    ENERGY = "energy"  # a cumulative counter that only grows (until it wraps or resets)
    POWER = "power"  # an instantaneous power, integrated over time


class Unit(enum.StrEnum):
    WH = "Wh"
    KWH = "kWh"
    W = "W"
    KW = "kW"

    @property
    def to_kwh(self) -> float:
        """Factor to kWh (for energy) or to kW (for power)."""
        return 0.001 if self in (Unit.WH, Unit.W) else 1.0


@dataclass(frozen=True, slots=True)
class Channel:
    """One measured quantity of an adapter. ``wrap`` is the counter's modulus, in ``unit``."""

    name: str
    kind: ChannelKind
    unit: Unit
    wrap: float | None = None

    def __post_init__(self) -> None:
        energy_units = (Unit.WH, Unit.KWH)
        if (self.kind is ChannelKind.ENERGY) != (self.unit in energy_units):
            raise ValueError(
                f"channel {self.name!r}: unit {self.unit} does not fit kind {self.kind}"
            )
        if self.wrap is not None and (self.kind is not ChannelKind.ENERGY or self.wrap <= 0):
            raise ValueError(f"channel {self.name!r}: wrap needs a positive energy counter modulus")


@dataclass(frozen=True, slots=True)
class Reading:
    """One value of one channel at one moment (``at``: seconds since the epoch, UTC)."""

    channel: str
    at: float
    value: float


class AdapterConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    """Base of every adapter's config. Subclass it and add the adapter's own keys."""

    type: str
    poll_interval: Duration = Duration(10.0)
    read_timeout: Duration | None = None  # defaults to the poll interval, at most 30 s


@runtime_checkable
class Adapter(Protocol):
    """What every adapter class provides. Built as ``cls(name, config)``."""

    Config: ClassVar[type[AdapterConfig]]
    name: str

    def channels(self) -> Sequence[Channel]: ...

    async def __aenter__(self) -> Adapter: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None: ...


@runtime_checkable
class PollingAdapter(Adapter, Protocol):
    """Read once per ``poll_interval``. A failed read raises AdapterReadError; no reading."""

    async def read(self) -> Sequence[Reading]: ...


@runtime_checkable
class PushAdapter(Adapter, Protocol):
    """Yields batches of readings as the device sends them, until cancelled."""

    def stream(self) -> AsyncIterator[Sequence[Reading]]: ...


# --- controls -------------------------------------------------------------------------------------

SWITCH = "switch"
"""The name every built-in adapter gives its on/off control."""


class ControlKind(enum.StrEnum):
    SWITCH = "switch"  # on/off: 0 = off, 1 = on
    POWER = "power"  # a power setpoint in kW, between the control's minimum and maximum


@dataclass(frozen=True, slots=True)
class Control:
    """One thing an adapter can command. A ``switch`` takes 0 or 1; a ``power`` setpoint
    any kW value in ``minimum .. maximum``."""

    name: str
    kind: ControlKind
    minimum: float = 0.0
    maximum: float = 1.0

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("a control needs a name")
        if self.kind is ControlKind.SWITCH and (self.minimum, self.maximum) != (0.0, 1.0):
            raise ValueError(f"control {self.name!r}: a switch takes 0 and 1 only")
        if not self.minimum <= self.maximum:  # also refuses NaN
            raise ValueError(f"control {self.name!r}: minimum above maximum")

    def check(self, value: float) -> float:
        """``value`` as a command for this control; ValueError if it is not one."""
        if self.kind is ControlKind.SWITCH:
            if value not in (0, 1):
                raise ValueError(f"control {self.name!r} is a switch: 0 or 1, not {value!r}")
            return float(value)
        if not self.minimum <= value <= self.maximum:
            raise ValueError(
                f"control {self.name!r} takes {self.minimum:g} .. {self.maximum:g} kW, "
                f"not {value!r}"
            )
        return float(value)


@dataclass(frozen=True, slots=True)
class ControlState:
    """What the device last reported for a control: the value, and when (seconds since
    the epoch, UTC; the device's time if it sent one, else when the report arrived)."""

    value: float
    at: float


@runtime_checkable
class ControllableAdapter(Adapter, Protocol):
    """An adapter that can also command its device (see the module's *Controls*)."""

    def controls(self) -> Sequence[Control]: ...

    async def apply(self, control: str, value: float) -> None:
        """Send one command. Returning means it was sent, not that the device obeyed."""
        ...

    async def state(self, control: str) -> ControlState | None:
        """The control's value as the device last reported it; None if never reported."""
        ...
