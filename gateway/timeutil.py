"""Durations, .NET time-spans and UTC timestamps. Pure: no clock reads."""

from __future__ import annotations

import datetime as dt
import math
import re

import msgspec

__all__ = [
    "Duration",
    "MAX_DURATION",
    "UTC",
    "format_duration",
    "format_timespan",
    "format_utc",
    "month_end",
    "parse_duration",
    "parse_timespan",
    "parse_timestamp",
    "to_utc",
]

UTC = dt.UTC

_DURATION = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*(ms|s|m|h|d)?\s*$", re.ASCII)
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}
MAX_DURATION = 100 * 365.25 * 86400.0
"""No duration is longer than 100 years: beyond it a value is a typo, not a wish."""
# .NET TimeSpan "c" format: [-][d.]hh:mm:ss[.fffffff]
_TIMESPAN = re.compile(r"^(?:(\d+)\.)?(\d{1,2}):(\d{2}):(\d{2})(?:\.(\d{1,7}))?$")


def parse_duration(value: object) -> float:
    """Seconds from ``"500ms"``, ``"10s"``, ``"5m"``, ``"1h"``, ``"62d"`` or a number.

    Always finite, never negative, at most :data:`MAX_DURATION`: ``nan``, ``inf``,
    ``"1e400s"`` and ``-1`` are refused. Zero is a valid duration here; a config key
    that needs more says so with its own limit. Raises ValueError naming what was
    wrong (the value cut short); callers add the config key.
    """
    if isinstance(value, int) and not isinstance(value, bool):
        seconds = (
            float(value) if abs(value) <= MAX_DURATION else (math.inf if value > 0 else -math.inf)
        )
    elif isinstance(value, float):
        seconds = value
    elif isinstance(value, str) and (m := _DURATION.match(value)):
        seconds = float(m.group(1)) * _UNIT_SECONDS[m.group(2)]
    else:
        raise ValueError(
            f"expected a duration like '500ms', '10s', '5m', '1h' or '2d', got {_shown(value)}"
        )
    if math.isnan(seconds):
        raise ValueError(f"a duration must be finite, got {_shown(value)}")
    if seconds < 0:
        raise ValueError(f"a duration cannot be negative, got {_shown(value)}")
    if seconds > MAX_DURATION:
        raise ValueError(f"a duration must be at most 100 years, got {_shown(value)}")
    return seconds


def format_duration(seconds: float) -> str:
    """``86400`` -> ``"1d"``, ``0.5`` -> ``"500ms"``, ``90`` -> ``"90s"``: as config writes it."""
    if seconds == 0:
        return "0s"
    for unit in ("d", "h", "m", "s"):
        size = _UNIT_SECONDS[unit]
        if seconds >= size and (seconds / size).is_integer():
            return f"{int(seconds / size)}{unit}"
    millis = seconds * 1000.0
    if millis.is_integer():
        return f"{int(millis)}ms"
    return f"{seconds:g}s"


def _shown(value: object) -> str:
    """A value for an error message: its repr, one line, cut at 40 characters."""
    try:
        text = repr(value)
    except ValueError:  # an int too long for str()
        return "a number with thousands of digits"
    return text if len(text) <= 40 else text[:37] + "..."


def parse_timespan(value: str) -> dt.timedelta:
    """A .NET time-span such as ``"01:00:00"``, ``"00:00:10"`` or ``"1.00:00:00"``."""
    m = _TIMESPAN.match(value.strip())
    if not m:
        raise ValueError(f"expected a time-span like '01:00:00', got {value!r}")
    days, hours, minutes, seconds, frac = m.groups()
    span = dt.timedelta(
        days=int(days or 0),
        hours=int(hours),
        minutes=int(minutes),
        seconds=int(seconds),
        microseconds=int((frac or "0").ljust(7, "0")) // 10,
    )
    if span <= dt.timedelta(0):
        raise ValueError(f"a time-span must be positive, got {value!r}")
    return span


def format_timespan(span: dt.timedelta) -> str:
    """``timedelta(hours=1)`` -> ``"01:00:00"`` (the form Spark writes)."""
    total = int(span.total_seconds())
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, seconds = divmod(rest, 60)
    text = f"{hours:02d}:{minutes:02d}:{seconds:02d}"
    return f"{days}.{text}" if days else text


def to_utc(moment: dt.datetime) -> dt.datetime:
    """An aware datetime in UTC. Naive datetimes are refused: they hide bugs."""
    if moment.tzinfo is None:
        raise ValueError(f"naive datetime {moment.isoformat()} has no offset")
    return moment.astimezone(UTC)


def parse_timestamp(value: str) -> dt.datetime:
    """ISO-8601 with any offset and up to 7 fractional digits, returned in UTC."""
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    m = re.match(r"^(.*T\d{2}:\d{2}:\d{2})(?:\.(\d+))?(.*)$", text)
    if m and m.group(2) and len(m.group(2)) > 6:
        text = f"{m.group(1)}.{m.group(2)[:6]}{m.group(3)}"
    try:
        parsed = dt.datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"expected an ISO-8601 timestamp, got {value!r}") from None
    return to_utc(parsed)


def _plain(value: object) -> object:
    """A datetime subclass (SparkTime) as a plain datetime: msgspec encodes only the type itself."""
    if isinstance(value, dt.datetime):
        return dt.datetime.combine(value.date(), value.timetz())
    raise NotImplementedError(f"cannot encode {type(value).__name__}")


_encode_json = msgspec.json.Encoder(enc_hook=_plain).encode


def format_utc(moment: dt.datetime) -> str:
    """``2025-03-11T10:00:00Z``; fractional seconds only when present."""
    utc = to_utc(moment)
    text = _encode_json(utc)[1:-1].decode()  # msgspec writes a UTC time with "Z", in
    return text[:-1].rstrip("0") + "Z" if utc.microsecond else text  # a fifth of isoformat()


def month_end(moment: dt.datetime) -> dt.datetime:
    """The first instant (UTC) of the month after ``moment``: Spark's reporting cut-off."""
    utc = to_utc(moment)
    if utc.month == 12:
        return dt.datetime(utc.year + 1, 1, 1, tzinfo=UTC)
    return dt.datetime(utc.year, utc.month + 1, 1, tzinfo=UTC)


class Duration(float):
    """Seconds, as written in config (``"10s"``, ``"5m"``, ``"62d"`` or a number).

    A float subclass so config Structs can name it as a field type; the config
    loader turns the written form into seconds with :func:`parse_duration`, so a
    parsed Duration is finite, not negative and at most 100 years.
    """

    __slots__ = ()

    @classmethod
    def parse(cls, value: object) -> Duration:
        return cls(parse_duration(value))
