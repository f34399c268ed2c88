"""What to read and how registers become readings: a pure plan, no I/O.

A :class:`Point` is one channel's value in the device's register space (plus,
optionally, the register holding its power-of-ten scale factor). The adapter
turns points into as few read requests as it cheaply can (:func:`plan_blocks`),
performs them, and hands the answers back to :func:`evaluate`, which decodes,
drops "not implemented" sentinels and scales.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from adapters.modbus.codec import CodecType, decode, register_count, scaled
from gateway import Channel, ChannelKind, Reading, Unit

__all__ = [
    "MAX_REGISTERS_PER_READ",
    "Block",
    "Evaluation",
    "Point",
    "channel_for",
    "evaluate",
    "plan_blocks",
]

#: The Modbus limit for one "read holding/input registers" request.
MAX_REGISTERS_PER_READ = 125

Function = Literal["input", "holding"]
Order = Literal["big", "little"]


@dataclass(frozen=True, slots=True)
class Point:
    """One channel's value: where it lives, how to decode it, how to scale it.

    ``wrap`` is the raw counter's modulus; the channel's wrap is that times the
    scale. ``scale_register`` (an s16 power-of-ten exponent, same function)
    replaces ``scale`` when set.
    """

    channel: str
    kind: ChannelKind
    unit: Unit
    function: Function
    address: int
    type: CodecType
    word_order: Order = "big"
    byte_order: Order = "big"
    scale: float = 1.0
    scale_register: int | None = None
    wrap: int | None = None

    @property
    def count(self) -> int:
        return register_count(self.type)

    def spans(self) -> list[tuple[int, int]]:
        """(address, count) of every register range this point needs."""
        needed = [(self.address, self.count)]
        if self.scale_register is not None:
            needed.append((self.scale_register, 1))
        return needed


@dataclass(frozen=True, slots=True)
class Block:
    """One read request: ``count`` registers of ``function`` from ``address``."""

    function: Function
    address: int
    count: int

    def covers(self, function: Function, address: int, count: int) -> bool:
        return (
            function == self.function
            and self.address <= address
            and address + count <= self.address + self.count
        )


def plan_blocks(
    points: Iterable[Point], *, max_gap: int = 0, max_count: int = MAX_REGISTERS_PER_READ
) -> list[Block]:
    """The fewest requests that read every register the points need.

    Ranges of the same function merge when they overlap or touch, or when at
    most ``max_gap`` unneeded registers lie between them (only worth it where
    the device is known to answer for the gap), up to ``max_count`` registers.
    """
    spans = sorted({(p.function, a, c) for p in points for a, c in p.spans()})
    blocks: list[Block] = []
    for function, address, count in spans:
        last = blocks[-1] if blocks else None
        if last is not None and last.function == function:
            end = max(last.address + last.count, address + count)
            if address <= last.address + last.count + max_gap and end - last.address <= max_count:
                blocks[-1] = Block(function, last.address, end - last.address)
                continue
        blocks.append(Block(function, address, count))
    return blocks


@dataclass(frozen=True, slots=True)
class Evaluation:
    """Readings decoded from one poll, and the scale exponents seen on the way."""

    readings: list[Reading]
    exponents: dict[str, int] = field(default_factory=dict)


def _words(
    answers: Mapping[Block, tuple[Sequence[int], float]],
    function: Function,
    address: int,
    count: int,
) -> tuple[Sequence[int], float]:
    for block, (registers, at) in answers.items():
        if block.covers(function, address, count):
            start = address - block.address
            return registers[start : start + count], at
    raise KeyError(f"no block read {function} registers {address}..{address + count - 1}")


def evaluate(
    points: Iterable[Point], answers: Mapping[Block, tuple[Sequence[int], float]]
) -> Evaluation:
    """Decode every point from the blocks read (registers, arrival time).

    A point whose value or scale factor is a "not implemented" sentinel gives
    no reading. Raises KeyError if a needed register was not read.
    """
    readings: list[Reading] = []
    exponents: dict[str, int] = {}
    for point in points:
        words, at = _words(answers, point.function, point.address, point.count)
        raw = decode(words, point.type, point.word_order, point.byte_order)
        exponent: int | None = None
        if point.scale_register is not None:
            sf_words, _ = _words(answers, point.function, point.scale_register, 1)
            sf = decode(sf_words, "sunssf")
            if sf is None:
                continue
            exponent = int(sf)
            exponents[point.channel] = exponent
        if raw is None:
            continue
        value = scaled(raw, exponent) if exponent is not None else raw * point.scale
        readings.append(Reading(channel=point.channel, at=at, value=float(value)))
    return Evaluation(readings, exponents)


def channel_for(point: Point, exponent: int | None = None) -> Channel:
    """The channel a point feeds; its wrap needs the scale exponent if the scale is read."""
    wrap: float | None = None
    if point.wrap is not None:
        if point.scale_register is None:
            wrap = point.wrap * point.scale
        elif exponent is not None:
            wrap = scaled(point.wrap, exponent)
    return Channel(name=point.channel, kind=point.kind, unit=point.unit, wrap=wrap)
