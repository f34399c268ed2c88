"""Pure register decoding: Modbus register words in, numbers (or no value) out.

A register is an unsigned 16-bit word, as pymodbus hands it over. A value
spans 1, 2 or 4 words:

* ``word_order="big"``: the first word holds the most significant bits (the
  Modbus convention, Eastron and SunSpec); ``"little"``: the last word does.
* ``byte_order="big"``: each word's high byte is its first byte on the wire;
  ``"little"``: the two bytes of every word are swapped.

"Not implemented" sentinels decode to ``None`` (no reading, never zero):
NaN and infinities for f32/f64, 0x8000 for s16 and for a SunSpec scale factor,
0xFFFF for u16, 0xFFFFFFFF for u32, 0x80000000 for s32, 0xFFFF...FFFF for u64,
and 0 for a SunSpec ``acc32`` accumulator.

No I/O, no clock: everything here is a function of its arguments.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from typing import Final, Literal

__all__ = [
    "ACC32_MODULUS",
    "CodecType",
    "decode",
    "register_count",
    "scaled",
    "wrapped_delta",
]

#: Every type the codec knows: the config's register types plus two SunSpec ones.
CodecType = Literal["u16", "s16", "u32", "s32", "u64", "f32", "f64", "acc32", "sunssf"]

ACC32_MODULUS: Final = 2**32

# type -> (struct format, number of registers, sentinel of an integer type)
_LAYOUT: Final[dict[str, tuple[str, int, int | None]]] = {
    "u16": ("H", 1, 0xFFFF),
    "s16": ("h", 1, -0x8000),
    "u32": ("I", 2, 0xFFFF_FFFF),
    "s32": ("i", 2, -0x8000_0000),
    "u64": ("Q", 4, 0xFFFF_FFFF_FFFF_FFFF),
    "f32": ("f", 2, None),
    "f64": ("d", 4, None),
    "acc32": ("I", 2, 0),  # SunSpec accumulator: 0 means "not accumulated"
    "sunssf": ("h", 1, -0x8000),  # SunSpec scale factor (power-of-ten exponent)
}
_SUNSSF_RANGE: Final = range(-10, 11)


def register_count(value_type: CodecType) -> int:
    """How many 16-bit registers a value of ``value_type`` spans."""
    return _LAYOUT[value_type][1]


def _to_bytes(registers: Sequence[int], word_order: str, byte_order: str) -> bytes:
    words = list(registers) if word_order == "big" else list(reversed(registers))
    for word in words:
        if not 0 <= word <= 0xFFFF:
            raise ValueError(f"register value {word!r} is not a 16-bit word")
    raw = b"".join(word.to_bytes(2, "big") for word in words)
    if byte_order == "little":
        raw = b"".join(raw[i + 1 : i + 2] + raw[i : i + 1] for i in range(0, len(raw), 2))
    return raw


def decode(
    registers: Sequence[int],
    value_type: CodecType,
    word_order: Literal["big", "little"] = "big",
    byte_order: Literal["big", "little"] = "big",
) -> float | int | None:
    """The value the registers hold, or ``None`` for a "not implemented" sentinel.

    Raises ValueError if the number of registers does not fit the type or a
    register is not a 16-bit word: that is a programming error, not device data.
    """
    fmt, count, sentinel = _LAYOUT[value_type]
    if len(registers) != count:
        raise ValueError(f"{value_type} needs {count} registers, got {len(registers)}")
    (value,) = struct.unpack(">" + fmt, _to_bytes(registers, word_order, byte_order))
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value == sentinel:
        return None
    if value_type == "sunssf" and value not in _SUNSSF_RANGE:
        return None  # SunSpec scale factors are -10..10; anything else is garbage
    return int(value)


def scaled(raw: float, exponent: int) -> float:
    """``raw * 10**exponent`` without the rounding error of multiplying by 0.1, 0.01, ...

    Dividing by an exact power of ten rounds once; multiplying by the inexact
    ``0.01`` rounds twice (``1234567 * 0.01 != 12345.67``).
    """
    if exponent >= 0:
        return float(raw * 10**exponent)
    return float(raw / 10 ** (-exponent))


def wrapped_delta(previous: int, current: int, modulus: int = ACC32_MODULUS) -> int:
    """Increase of a counter that counts modulo ``modulus`` (it wrapped if ``current`` is less).

    ``wrapped_delta(0xFFFFFF00, 0x00000100) == 512``.
    """
    if modulus <= 0:
        raise ValueError(f"modulus must be positive, got {modulus}")
    return (current - previous) % modulus
