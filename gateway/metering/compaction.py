"""Compaction: raw readings become one cumulative value per channel per whole minute.

Raw readings are kept 48 h; older ones are compacted and the result kept 62 days.
Compaction never changes the energy of an interval whose edges are whole minutes --
neither its value (beyond float rounding) nor whether it is known.

The compacted series of a channel is a list of ``(at, value)``:

* for a **counter**, the unrolled counter (:class:`~gateway.metering.energy.UnrolledCounter`,
  raw unit) at every whole minute ``m < before`` with kept samples within ``max_gap`` on
  both sides -- exactly the minutes where :func:`counter_intervals` on the raw data has a
  value;
* for **power**, the energy in kWh integrated from the first sample, at every whole minute
  ``m < before`` that :func:`power_intervals` accepts as an edge (not inside a segment
  longer than ``max_gap``);
* ``(at, nan)`` break markers: a raw break (non-finite reading), and for power a point
  inside every segment longer than ``max_gap`` and every sample beyond
  :data:`ABSURD_KW` either way (one such glitch would otherwise make the running total
  infinite, or so large that later minutes no longer differ, for the rest of the series).
  Nothing is computed across a marker, so an interval spanning a power gap stays None even
  though both its edges have a value.

Read it like a counter that never wraps and whose valid edges all carry a point::

    counter_intervals(compacted, intervals, to_kwh=k, wrap=None, max_gap=COMPACTED_MAX_GAP)

with ``k`` the channel's factor for a counter and 1.0 for power. ``COMPACTED_MAX_GAP`` is
0: a minute without a point is a minute the raw data could not value, and must not be
interpolated over (with raw samples at 0 s, 150 s and 200 s and ``max_gap`` 100 s, minutes
60 and 180 have values but 120 has none; any ``max_gap >= 60`` would invent one).

**Contract with the store.** Runs chain through a *hand-over*: the newest settled raw
sample before ``before`` and the series' state there -- the unrolled-minus-raw offset of a
counter (:func:`counter_handover`) or the cumulative kWh of power (:func:`power_handover`).
Each run passes the raw samples from the previous hand-over sample on, reaching at least
``max_gap`` and two readings past ``before`` (so every decision before ``before`` is
final), with the previous state (0.0 the first time); it stores the returned points at or
after the previous run's ``before`` and saves the new hand-over. Chained runs give, bit for
bit, the points of one run over all the data. Raw samples before the hand-over sample may
then be deleted: the raw samples left start with it and unroll as all the data would.

Reading: an interval ending before ``before`` comes from the compacted series; one starting
at or after the hand-over sample ``h`` from the raw samples; one spanning ``h`` is split
there -- compacted ``[start, h]``, with the point ``(h, value at h)`` added (``raw + offset``
for a counter, the energy for power), plus raw ``[h, end]``. Never subtract a compacted
value from a raw one: they are in different references. Compacted intervals read as
MEASURED (every edge is a point); the caller labels them as it sees fit.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import pairwise

from gateway.metering.energy import UnrolledCounter, columns, interpolate

__all__ = [
    "ABSURD_KW",
    "COMPACTED_MAX_GAP",
    "compact_counter",
    "counter_handover",
    "compact_power",
    "power_handover",
]

COMPACTED_MAX_GAP = 0.0
ABSURD_KW = 1e7
"""10 GW: no metered site draws that. Compaction does not know a channel's configured
``max_kw`` (several targets may share a channel), so it only sets aside what no channel can
mean; reports apply each target's own limit on top (:mod:`gateway.metering.energy`)."""
_MINUTE = 60


def _first_minute(t: float) -> float:
    """The first whole minute at or after ``t``."""
    m = float(math.ceil(t / _MINUTE) * _MINUTE)
    while m < t:
        m += _MINUTE
    while m - _MINUTE >= t:
        m -= _MINUTE
    return m


def _is_minute(t: float) -> bool:
    return t % _MINUTE == 0


def compact_counter(
    samples: Sequence[tuple[float, float]],
    *,
    wrap: float | None,
    max_gap: float,
    before: float,
    offset: float = 0.0,
) -> list[tuple[float, float]]:
    """The unrolled counter at whole minutes before ``before``, plus break markers.

    Values are bit for bit what :func:`counter_intervals` computes at those minutes, so
    any whole-minute interval before ``before`` reads back the same energy (or None).
    ``offset`` continues a chained series (see the module docstring).
    """
    counter = UnrolledCounter(samples, wrap=wrap, offset=offset)
    ats = counter.ats
    kept = [k for k in range(len(ats)) if counter.kept(k)]
    out: list[tuple[float, float]] = [(ats[b], math.nan) for b in counter.breaks if ats[b] < before]
    for a, b in pairwise(kept):
        ta, tb = ats[a], ats[b]
        if ta >= before:
            break
        if _is_minute(ta):
            out.append((ta, counter.value(a)))
        if not counter.continuous(a, b):
            continue  # nothing is known across a break
        m = _first_minute(max(ta, tb - max_gap))
        if m == ta:
            m += _MINUTE
        while m < tb and m - ta <= max_gap and m < before:
            edge = counter.edge(m, max_gap)
            if edge is not None:  # always, by construction; kept for safety
                out.append((m, edge.value))
            m += _MINUTE
    if kept and ats[kept[-1]] < before and _is_minute(ats[kept[-1]]):
        out.append((ats[kept[-1]], counter.value(kept[-1])))
    out.sort(key=lambda p: p[0])
    return out


def counter_handover(
    samples: Sequence[tuple[float, float]],
    *,
    wrap: float | None,
    before: float,
    offset: float = 0.0,
) -> tuple[float, float] | None:
    """``(at, offset)`` where the next counter compaction run starts.

    The newest kept sample before ``before`` whose fate is settled (a later sample
    exists), and its unrolled-minus-raw offset. None if there is no such sample yet:
    keep the previous hand-over.
    """
    counter = UnrolledCounter(samples, wrap=wrap, offset=offset)
    ats = counter.ats
    for k in range(len(ats) - 2, -1, -1):
        if ats[k] < before and counter.kept(k):
            return ats[k], counter.offset(k)
    return None


def compact_power(
    samples: Sequence[tuple[float, float]],
    *,
    to_kw: float,
    max_gap: float,
    before: float,
    energy: float = 0.0,
) -> list[tuple[float, float]]:
    """Cumulative kWh at whole minutes before ``before``, plus gap and break markers.

    Starts at ``energy`` at the first sample (0.0, or the previous hand-over's energy)
    and adds the trapezoid of every segment of at most ``max_gap`` seconds; a longer
    segment adds nothing and gets a NaN marker at its midpoint, a non-finite sample is a
    marker itself. The series only grows, so power must not be negative: a counter read
    back through :func:`counter_intervals` would take a decrease for a reset.

    Raises ValueError on a negative power sample (one beyond :data:`ABSURD_KW` is a break
    marker instead) or a non-positive ``to_kw``.
    """
    return _integrate(samples, to_kw=to_kw, max_gap=max_gap, before=before, energy=energy)[0]


def power_handover(
    samples: Sequence[tuple[float, float]],
    *,
    to_kw: float,
    max_gap: float,
    before: float,
    energy: float = 0.0,
) -> tuple[float, float] | None:
    """``(at, energy)`` where the next power compaction run starts, or None if none yet.

    The newest finite sample before ``before`` and the cumulative kWh there.
    """
    return _integrate(samples, to_kw=to_kw, max_gap=max_gap, before=before, energy=energy)[1]


def _integrate(
    samples: Sequence[tuple[float, float]],
    *,
    to_kw: float,
    max_gap: float,
    before: float,
    energy: float,
) -> tuple[list[tuple[float, float]], tuple[float, float] | None]:
    if not to_kw > 0:
        raise ValueError(f"power compaction needs a positive to_kw, got {to_kw!r}")
    ats, vals = columns(samples)
    top = ABSURD_KW / to_kw
    if vals and not (math.isfinite(sum(vals)) and -top <= min(vals) and max(vals) <= top):
        vals = [v if -top <= v <= top else math.nan for v in vals]
    for t, v in zip(ats, vals, strict=True):
        if v < 0:  # absurd values and -inf are breaks like NaN by now, not a power
            raise ValueError(
                f"power sample at {t} is negative ({v}): compacted power must only grow;"
                " keep this channel raw or split import and export"
            )
    scale = to_kw / 7200.0  # a doubled trapezoid in value x s -> kWh
    acc = energy
    out: list[tuple[float, float]] = []
    handover: tuple[float, float] | None = None
    for k, (t, v) in enumerate(zip(ats, vals, strict=True)):
        if t >= before:
            break
        if not math.isfinite(v):
            out.append((t, math.nan))
            continue
        handover = (t, acc)
        if _is_minute(t):
            out.append((t, acc))
        if k + 1 == len(ats) or not math.isfinite(vals[k + 1]):
            continue
        t1, v1 = ats[k + 1], vals[k + 1]
        if t1 - t > max_gap:
            if (t + t1) / 2 < before:
                out.append(((t + t1) / 2, math.nan))
            continue
        full = (v + v1) * (t1 - t)
        m = _first_minute(math.nextafter(t, math.inf))
        while m < t1 and m < before:
            part = min((v + interpolate(m, t, v, t1, v1)) * (m - t), full)
            out.append((m, acc + part * scale))
            m += _MINUTE
        acc += full * scale
    return out, handover
