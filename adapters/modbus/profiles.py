"""Fixed register maps (Eastron meters) and the generic map written in config.

With a profile, channel ``energy`` is the main import energy counter;
``export_energy`` and ``power`` come along where the device has them.

Eastron SDM120 / SDM630 (Modbus protocol documents, "input registers", function
code 4; every parameter is an IEEE-754 float32 in two registers, high word
first). PDU addresses, i.e. register number 3xxxx minus 30001:

=====================  ======  ======  =====
parameter              SDM120  SDM630  unit
=====================  ======  ======  =====
total system power     0x000C  0x0034  W
import active energy   0x0048  0x0048  kWh
export active energy   0x004A  0x004A  kWh
=====================  ======  ======  =====

(On the single-phase SDM120 "phase 1 power" at 0x000C is the total power; the
SDM630's 0x000C is phase 1 only, its total is 0x0034.)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from adapters.modbus.config import RegisterSpec
from adapters.modbus.points import Point
from gateway import ChannelKind, Unit

__all__ = ["EASTRON_SDM120", "EASTRON_SDM630", "PROFILES", "Profile", "generic_profile"]


@dataclass(frozen=True, slots=True)
class Profile:
    """The points of a device and how far apart two ranges may be to share one request."""

    name: str
    points: tuple[Point, ...]
    max_gap: int = 0


def _eastron(name: str, power_address: int) -> Profile:
    def f32(channel: str, kind: ChannelKind, unit: Unit, address: int) -> Point:
        return Point(channel, kind, unit, "input", address, "f32")

    return Profile(
        name,
        (
            f32("energy", ChannelKind.ENERGY, Unit.KWH, 0x0048),
            f32("export_energy", ChannelKind.ENERGY, Unit.KWH, 0x004A),
            f32("power", ChannelKind.POWER, Unit.W, power_address),
        ),
    )


EASTRON_SDM120 = _eastron("eastron-sdm120", 0x000C)
EASTRON_SDM630 = _eastron("eastron-sdm630", 0x0034)

PROFILES: Mapping[str, Profile] = {p.name: p for p in (EASTRON_SDM120, EASTRON_SDM630)}


def generic_profile(registers: Mapping[str, RegisterSpec]) -> Profile:
    """Points for a ``[adapters.<name>.registers.*]`` map, one per channel.

    Only touching or overlapping ranges share a request: nothing is known
    about what the device answers for registers nobody asked for.
    """
    points = tuple(
        Point(
            channel=name,
            kind=spec.kind,
            unit=spec.unit,
            function=spec.function,
            address=spec.address,
            type=spec.type,
            word_order=spec.word_order,
            byte_order=spec.byte_order,
            scale=spec.scale,
            scale_register=spec.scale_register,
            wrap=spec.wrap,
        )
        for name, spec in sorted(registers.items())
    )
    return Profile("registers", points)
