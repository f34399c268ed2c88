"""What the wire may hold: timestamp and resolution ranges, and nesting depth.

Pure: no I/O. :mod:`gateway.wire` builds its types and decoders on these, so that a value
the gateway cannot represent is refused at the boundary, naming the field:

* a timestamp within 2000-01-01..2200-01-01 UTC (:func:`check_times`, year first, so an
  offset form of year 1 or 9999 never overflows); :class:`SparkTime` keeps the text it
  was read from, so that a report can carry Spark's own timestamps (when the contract's
  ``date-time`` takes them as written: :meth:`SparkTime.utc_text`);
* a resolution of 1 s .. 1 day in whole seconds (:class:`Resolution`), kept ``hh:mm:ss``;
* nesting at most :data:`MAX_DEPTH` levels (:func:`too_deep`), found by C-level bytes
  operations before any decoder recurses; :func:`cut_deep` lifts out what is deeper.
"""

from __future__ import annotations

import datetime as dt
import operator
import re
import secrets
from collections.abc import Sequence
from typing import Annotated, Protocol, TypeAlias

import msgspec

__all__ = [
    "EARLIEST",
    "LATEST",
    "LONGEST",
    "MAX_DEPTH",
    "SHORTEST",
    "SURE_YEARS",
    "Resolution",
    "SparkTime",
    "Timestamp",
    "check_point_times",
    "check_times",
    "cut_deep",
    "normal_resolution",
    "restore",
    "too_deep",
]

MAX_DEPTH = 32
"""Deepest nesting accepted in a notification, an event or a report (Spark's need about 6)."""

EARLIEST = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
LATEST = dt.datetime(2200, 1, 1, tzinfo=dt.UTC)
SURE_YEARS = range(EARLIEST.year + 1, LATEST.year - 1)
"""Years each instant of which lies inside EARLIEST..LATEST whatever its offset (at most a
day): an aware stamp in one of them needs no other check (a naive one always does).
``EnergyCurvePoint`` tests this first (an int in a range, in C) and calls
:func:`check_times` only for a naive stamp or the rare edge year."""
SHORTEST = dt.timedelta(seconds=1)
LONGEST = dt.timedelta(days=1)

_STAMP = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:[.,](\d{1,9}))?"
    r"(?:[Zz]|([+-])(\d{2}):?(\d{2}))"
)

_CONTRACT_UTC = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d{1,7})?(?:Z|\+00:00)")
"""A UTC text the report contract's ``date-time`` takes as it is (``T``, at most 7 digits)."""
MAX_FRACTION = 7
"""Fractional digits a report timestamp may carry (.NET's 100 ns ticks; the contract's limit)."""


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


class SparkTime(dt.datetime):
    """An aware datetime within 2000..2200 that remembers the text it was read from.

    :attr:`text` is what Spark wrote (7 fractional digits and offset kept); the datetime
    itself holds microseconds (the 7th digit rounds). A SparkTime made by arithmetic or
    :meth:`of` has no text of its own and is written in UTC.
    """

    __slots__ = ("_text",)
    _text: str

    @classmethod
    def read(cls, moment: dt.datetime, text: str) -> SparkTime:
        """``moment`` as read from ``text`` (by msgspec, which checked both)."""
        stamp = cls._copy(moment)
        stamp._text = text
        return stamp

    @classmethod
    def of(cls, moment: dt.datetime) -> SparkTime:
        """The same instant and offset as a SparkTime (written in UTC: it has no text)."""
        return moment if isinstance(moment, cls) else cls._copy(moment)

    @classmethod
    def _copy(cls, moment: dt.datetime) -> SparkTime:
        return cls(
            moment.year,
            moment.month,
            moment.day,
            moment.hour,
            moment.minute,
            moment.second,
            moment.microsecond,
            moment.tzinfo,
            fold=moment.fold,
        )

    @property
    def text(self) -> str | None:
        """The text this timestamp was read from, if it was read."""
        return getattr(self, "_text", None)

    def utc_text(self) -> str:
        """As written when it was read in the report contract's UTC form (``T``, at most 7
        fractional digits, ``Z`` or ``+00:00``); otherwise written in that form: converted
        to UTC with ``T`` and ``Z``, its fractional digits kept as written up to the 7th
        (further digits, below .NET's 100 ns tick, are cut)."""
        text = self.text or ""
        if _CONTRACT_UTC.fullmatch(text) and self.utcoffset() == dt.timedelta(0):
            return text
        m = _STAMP.fullmatch(text)
        if m is None:
            utc: dt.datetime = self.astimezone(dt.UTC)
            frac = f"{utc.microsecond:06d}".rstrip("0")
        else:
            y, mo, d, h, mi, sec = map(int, m.groups()[:6])
            utc = dt.datetime(y, mo, d, h, mi, sec, tzinfo=self.tzinfo).astimezone(dt.UTC)
            frac = (m[7] or "")[:MAX_FRACTION]
        return utc.strftime("%Y-%m-%dT%H:%M:%S") + (f".{frac}" if frac else "") + "Z"


class Resolution(str):
    """An interval length of 1 s .. 1 day in whole seconds, normalised to ``hh:mm:ss``.

    Read from a .NET time-span (``01:00:00``, ``1.00:00:00``, ``01:00:00.0000000``) or an
    ISO-8601 duration (``PT1H``); one day is written ``1.00:00:00`` (.NET reads no ``24:``).
    """

    __slots__ = ()

    @classmethod
    def parse(cls, value: object) -> Resolution:
        if not isinstance(value, str):
            raise TypeError(f"expected a time-span like '01:00:00', got {_shown(value)}")
        plain = type(value) is str  # a subclass may not be what it says: never kept
        if plain and (known := _READ.get(value)) is not None:
            return known
        parsed = cls(normal_resolution(value))
        if plain and len(_READ) < _READ_MAX:  # a few spellings in practice; a flood of odd
            _READ[value] = parsed  # ones is parsed each time, never kept
        return parsed


_READ: dict[str, Resolution] = {}
"""Resolutions read so far, by the text they were read from (valid ones only)."""
_READ_MAX = 64


_NET_SPAN = re.compile(r"(?:(\d{1,9})\.)?(\d{1,2}):(\d{2}):(\d{2})(?:\.(\d{1,7}))?")
_ISO_SPAN = re.compile(r"P(?:(\d{1,9})D)?(?:T(?:(\d{1,9})H)?(?:(\d{1,9})M)?(?:(\d{1,9})S)?)?")


def _span_parts(text: str) -> tuple[int, int, int, int, str]:
    if m := _NET_SPAN.fullmatch(text):
        days, hours, minutes, seconds, frac = m.groups()
        if int(hours) > 23 or int(minutes) > 59 or int(seconds) > 59:
            raise ValueError(f"time-span {_shown(text)} has a field out of range")
        return int(days or 0), int(hours), int(minutes), int(seconds), frac or ""
    if (m := _ISO_SPAN.fullmatch(text)) and text not in ("P", "PT") and not text.endswith("T"):
        days, hours, minutes, seconds = (int(g or 0) for g in m.groups())
        return days, hours, minutes, seconds, ""
    raise ValueError(f"expected a time-span like '01:00:00', got {_shown(text)}")


def normal_resolution(text: str) -> str:
    """``"1:00:00"``, ``"01:00:00.0000000"``, ``"PT1H"`` -> ``"01:00:00"``; ValueError if bad."""
    days, hours, minutes, seconds, frac = _span_parts(text.strip())
    if frac.strip("0"):
        raise ValueError(f"resolution {_shown(text)} is not a whole number of seconds")
    total = ((days * 24 + hours) * 60 + minutes) * 60 + seconds
    if not SHORTEST.total_seconds() <= total <= LONGEST.total_seconds():
        raise ValueError(f"resolution {_shown(text)} is outside 00:00:01..1.00:00:00")
    if total == LONGEST.total_seconds():
        return "1.00:00:00"
    return f"{total // 3600:02d}:{total // 60 % 60:02d}:{total % 60:02d}"


Timestamp: TypeAlias = Annotated[dt.datetime, msgspec.Meta(tz=True)]
"""An aware datetime: a timestamp without an offset is refused, never guessed. A Struct that
holds one checks its range in ``__post_init__`` (:func:`check_times`)."""


def check_times(**stamps: dt.datetime | None) -> None:
    """ValueError ``"name: why"`` for the first stamp outside 2000..2200 (the year first:
    comparing a year-1 or year-9999 time that has an offset can overflow)."""
    for name, stamp in stamps.items():
        if stamp is not None and stamp.tzinfo is None:  # one built in Python; never guessed
            raise ValueError(f"{name}: {stamp.isoformat()} has no offset")
        if stamp is not None and not (1999 <= stamp.year <= 2200 and EARLIEST <= stamp <= LATEST):
            shown = stamp.isoformat() if stamp.tzinfo is None else f"{stamp:%Y-%m-%dT%H:%M:%S%z}"
            raise ValueError(f"{name}: {shown} is outside 2000-01-01..2200-01-01")


_TIMESTAMP = operator.attrgetter("timestamp")


class _Stamped(Protocol):
    @property
    def timestamp(self) -> dt.datetime: ...


def check_point_times(points: Sequence[_Stamped]) -> None:
    """ValueError ``"points[i].timestamp: why"`` for the first point whose timestamp
    :func:`check_times` refuses. The holder of a list of points calls it from its
    ``__post_init__``: the earliest and latest stamps, compared in C, clear the usual
    list at once (a ``__post_init__`` per point cost a Python call per point). A naive
    stamp makes the comparison raise and one out of range fails it; then each point is
    looked at, so that the error names the first bad one."""
    if not points:
        return
    try:
        stamps = list(map(_TIMESTAMP, points))
        if min(stamps) >= EARLIEST and max(stamps) <= LATEST:
            return
    except (TypeError, OverflowError):
        pass
    for i, point in enumerate(points):
        try:
            check_times(timestamp=point.timestamp)
        except ValueError as exc:
            raise ValueError(f"points[{i}].{exc}") from None


_STRINGS = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_ONE_KIND = bytes.maketrans(b"{}", b"[]")
_TOKENS = re.compile(rb'"(?:[^"\\]++|\\.)*+"|[\[\]{}]')


def too_deep(raw: bytes, limit: int = MAX_DEPTH) -> bool:
    """Whether ``raw`` nests deeper than ``limit`` (brackets outside strings count).

    Cheap and never recursive: C-level bytes operations, one pass per level up to ``limit``.
    Malformed nesting is left to the decoder to report, unless it opens too many levels.
    """
    if raw.count(b"[") + raw.count(b"{") <= limit:
        return False
    # without escapes every quote opens or closes a string
    outside = _STRINGS.sub(b"", raw) if b"\\" in raw else b"".join(raw.split(b'"')[0::2])
    brackets = outside.translate(_ONE_KIND, _NOT_BRACKETS)
    run = b"[" * (limit + 1)
    for _ in range(limit):
        if run in brackets:  # the usual deep document: caught without peeling
            return True
        inner = brackets.replace(b"[]", b"")  # every innermost pair: one level less
        if not inner:
            return False
        if len(inner) == len(brackets):  # unbalanced: what is left only opens or closes
            return brackets.count(b"[") > limit
        brackets = inner
    return True


def cut_deep(raw: bytes, limit: int) -> tuple[bytes, dict[bytes, bytes]]:
    """``raw`` with every value nested deeper than ``limit`` replaced by a marker string.

    Returns the shallow document and marker -> the bytes it replaced, so that the parts
    can be put back into each event once the page around them is decoded.
    """
    nonce = secrets.token_hex(8).encode()
    parts: list[bytes] = []
    cuts: dict[bytes, bytes] = {}
    depth = done = start = 0
    for m in _TOKENS.finditer(raw):
        char = raw[m.start()]
        if char == 0x22:  # a string
            continue
        depth += 1 if char in b"[{" else -1
        if char in b"[{" and depth == limit + 1:
            start = m.start()
        elif char in b"]}" and depth == limit:
            marker = b'"\\u0000cut:' + nonce + b":%d" % len(cuts) + b'"'
            cuts[marker] = raw[start : m.end()]
            parts += (raw[done:start], marker)
            done = m.end()
    parts.append(raw[done:])
    return b"".join(parts), cuts


def restore(raw: bytes, cuts: dict[bytes, bytes]) -> bytes:
    for marker, part in cuts.items():
        if marker in raw:
            raw = raw.replace(marker, part)
    return raw
