"""Energy per interval from meter readings: the pure arithmetic core of metering.

A report needs, for each interval ``(start, end)`` of a curve, the kWh a device used in
it, or ``None`` when that is not known. Two kinds of channel feed it:

* a **counter** (a cumulative register, e.g. Wh) is *unrolled* into a monotone series --
  wraps, resets and single-sample glitches taken out, see :func:`unroll_counter` -- and an
  interval's energy is that series at the end edge minus at the start edge
  (:func:`counter_intervals`). A gap inside the interval does not matter: the meter kept
  counting. Only the edges need readings.
* a **power** channel (instantaneous W or kW) is integrated with the trapezoid rule
  (:func:`power_intervals`). A gap anywhere in the interval makes it unknown.

Conventions of every function here:

* Times are floats, seconds since the epoch, UTC: nothing depends on time zones or DST.
* Samples are ``(at, value)`` pairs sorted by ``at``; of several with the same ``at`` the
  last counts. Values are floats as delivered. Nothing is rounded here (the report encoder
  rounds), and energy is always a difference of two cumulative values, never a long sum
  of small float deltas.
* An edge is usable only with a sample at most ``max_gap`` seconds before it *and* one at
  most ``max_gap`` after it (a sample exactly on the edge is both). Unknown is ``None``,
  never 0; a stuck counter is 0.0 kWh, which is known.
* A non-finite value (NaN, +-inf) is a *break*: not a measurement, and nothing is computed
  across it. Compaction uses NaN to mark power gaps (:mod:`gateway.metering.compaction`).
* Pure: no I/O, no clock, no logging. Costs are O(samples + intervals * log samples), with
  the per-sample work done by C loops (``map``, ``sorted``, ``sum``), not Python loops.

**Plausibility and direction** (:class:`Limits`: a channel's ``max_kw`` and ``direction``,
from the resource's or location's config). Given limits, what could not be real is rejected
as a *glitch* and counted in the result's ``glitches`` (:class:`Energies`):

* a power sample that is not finite or beyond ``max_kw`` either way is left out, as if it
  had never been read (its neighbours are integrated across it, within ``max_gap``);
* a counter step that would need more than ``max_kw`` over the time since the previous
  kept reading -- a wrap or a reset whose counted energy is that large, e.g. a meter
  swapped for one reading 3,000 kWh -- counts as no energy: the series goes on flat across
  it, as after a reset (what was used in that step is unknowable and is not invented);
* an interval whose counter rise is more than ``max_kw`` times its hours is None. A rise
  is judged over the interval, not per reading, because the store fetches only the
  readings at the interval edges (the fast path of :func:`counter_intervals`); over one
  interval the bound is exact: real readings never rise faster than ``max_kw``, and the
  linear interpolation between them does not either.

So every value is finite and within ``[0, max_kw * hours]`` (``import``) or
``[-max_kw * hours, max_kw * hours]`` (``net``), up to :data:`REL_TOL`/:data:`ABS_TOL_KWH`.

Direction ``import`` (the default): only energy drawn counts. A power sample below zero
(export) counts as 0 kW; each sample is clamped before the trapezoid, so an interval of
pure export is 0.0 kWh, which is known. ``net``: power keeps its sign, so an interval's
energy is import minus export and may be negative. A counter is a register that counts one
way (the import register of a meter, or the only one of a device): it runs backwards only
through a reset, a wrap or a glitch, so it is unrolled by the same rules in both
directions and never yields a negative value. A resource that should report net energy is
configured on a power channel (or a net-power channel of its meter).

A *net* register read as a counter (one that falls while the site exports) still gives
import: each persistent step back is a reset whose counted energy, the whole register, no
``max_kw`` allows, so it counts 0 and only the rises count (a single step back followed by
a rise above the reading before it is a one-sample glitch, as always). Near zero, where the
register value itself is plausible, a step back counts at most ``max_kw`` over that step.
"""

from __future__ import annotations

import enum
import math
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import chain, compress, count, islice
from operator import add, itemgetter, lt, mul, sub
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from gateway.config import Direction

__all__ = [
    "ABS_TOL_KWH",
    "REL_TOL",
    "Energies",
    "Limits",
    "Quality",
    "IntervalEnergy",
    "UnrolledCounter",
    "Edge",
    "unroll_counter",
    "counter_intervals",
    "power_intervals",
]

_AT = itemgetter(0)
_VALUE = itemgetter(1)


class Quality(enum.StrEnum):
    MEASURED = "measured"  # both edges have a sample exactly on them
    INTERPOLATED = "interpolated"  # at least one edge value is linearly interpolated


@dataclass(frozen=True, slots=True)
class IntervalEnergy:
    start: float
    end: float
    kwh: float
    quality: Quality


REL_TOL = 1e-6
"""Relative margin on ``max_kw``: float rounding of interpolation and differences only."""
ABS_TOL_KWH = 1e-6
"""Absolute margin on an interval's bound, in kWh (1 mWh, the report's resolution)."""


@dataclass(frozen=True, slots=True)
class Limits:
    """What one metered channel can plausibly do, and which direction of energy counts."""

    max_kw: float
    direction: Direction = "import"

    def __post_init__(self) -> None:
        if not (math.isfinite(self.max_kw) and self.max_kw > 0):
            raise ValueError(f"max_kw must be a positive finite number, got {self.max_kw!r}")
        if self.direction not in ("import", "net"):
            raise ValueError(f"direction must be 'import' or 'net', got {self.direction!r}")

    def bound_kwh(self, seconds: float) -> float:
        """The most energy, in kWh, that ``seconds`` at ``max_kw`` give, with the margin."""
        return self.max_kw * seconds / 3600.0 * (1.0 + REL_TOL) + ABS_TOL_KWH

    def allows(self, kwh: float, seconds: float) -> bool:
        """True if ``kwh`` over ``seconds`` could be real: finite, within the bound, and not
        below zero for ``import`` (exactly: import energy is never computed below 0)."""
        bound = self.bound_kwh(seconds)
        low = -bound if self.direction == "net" else 0.0
        return math.isfinite(kwh) and low <= kwh <= bound


class Energies(list["IntervalEnergy | None"]):
    """Energy per interval (a list, aligned with the intervals asked for), plus ``glitches``:
    how many readings, counter steps or intervals were rejected as implausible."""

    __slots__ = ("glitches",)

    def __init__(self, values: Iterable[IntervalEnergy | None] = (), glitches: int = 0) -> None:
        super().__init__(values)
        self.glitches = glitches


# Helpers shared with :mod:`gateway.metering.compaction` (not part of ``__all__``).


def columns(samples: Sequence[tuple[float, float]]) -> tuple[list[float], list[float]]:
    """``(ats, values)`` of sorted samples; of several with the same ``at`` the last counts."""
    ats: list[float] = list(map(_AT, samples))
    vals: list[float] = list(map(_VALUE, samples))
    if not all(map(lt, ats, islice(ats, 1, None))):  # not strictly increasing: duplicates
        keep = [i for i in range(len(ats) - 1) if ats[i] != ats[i + 1]]
        keep.append(len(ats) - 1)
        ats = [ats[i] for i in keep]
        vals = [vals[i] for i in keep]
    return ats, vals


def _breaks_of(vals: list[float]) -> list[int]:
    """Indices of non-finite values. One C-speed ``sum`` in the usual all-finite case."""
    if math.isfinite(sum(vals)):
        return []
    return [i for i, v in enumerate(vals) if not math.isfinite(v)]


_CHUNK = 256


def _drops_of(vals: list[float]) -> list[int]:
    """Indices ``i`` with ``vals[i] < vals[i - 1]``, for finite values.

    ``sorted`` recognises an ascending run in one C pass, so monotone stretches cost almost
    nothing; only chunks holding a drop are compared pair by pair.
    """
    if sorted(vals) == vals:
        return []
    out: list[int] = []
    for a in range(0, len(vals) - 1, _CHUNK):
        chunk = vals[a : a + _CHUNK + 1]  # overlapping by one: drops on chunk borders count
        if sorted(chunk) != chunk:
            out.extend(_drops_in(chunk, a))
    return out


def _drops_in(vals: list[float], base: int) -> list[int]:
    return list(compress(count(base + 1), map(lt, islice(vals, 1, None), vals)))


def interpolate(t: float, t0: float, v0: float, t1: float, v1: float) -> float:
    """The value at ``t`` on the line through ``(t0, v0)`` and ``(t1, v1)``, t0 <= t <= t1.

    Clamped between ``v0`` and ``v1`` so float rounding can never make a monotone series
    step backwards.
    """
    if t <= t0:
        return v0
    if t >= t1:
        return v1
    v = v0 + (v1 - v0) * ((t - t0) / (t1 - t0))
    lo, hi = (v0, v1) if v0 <= v1 else (v1, v0)
    return min(max(v, lo), hi)


# --------------------------------------------------------------------------- counters


def _not_below(cur: float, off: float, target: float) -> float:
    """``off``, raised by the float rounding it needs so that ``cur + off >= target``.

    Steps by the remaining gap (at least one ulp), so huge values converge in a step or two
    instead of an ulp at a time; a NaN or infinite gap ends it (the value is then a break
    or beyond any bound, and is rejected downstream).
    """
    for _ in range(64):
        gap = target - (cur + off)
        if not gap > 0:
            break
        off += max(gap, math.ulp(off))
    return off


class Edge(NamedTuple):
    """The unrolled counter at an edge: bracketing sample indices, value, exactly on a sample."""

    lo: int
    hi: int
    value: float
    exact: bool


class UnrolledCounter:
    """A raw counter, unrolled, with cheap look-ups of its value at any time.

    The unrolled value of a kept sample ``k`` is ``raw[k] + offset``, where the offset is
    piecewise constant and changes only at a wrap or a reset: a difference of two
    cumulative values, never a running sum of deltas. Building one costs a few C-speed
    passes over the values plus Python work only around drops and breaks.

    Rules, applied walking from each sample to the next (``prev`` is the last kept
    sample, ``cur`` this one, ``next`` the one after):

    * ``cur >= prev``: kept, the delta is ``cur - prev`` (a stuck counter is zero
      consumption, not missing data) -- unless it is a **spike**: ``prev <= next < cur``,
      the reading falls straight back to at least where it was. The spike is dropped.
      A reset right after a rise is not taken for a spike: after a reset ``next`` lies
      below ``prev``, unless the restarted counter re-counted more than its whole past
      within one reading (then the rise is dropped, which undercounts, never invents).
    * ``cur < prev`` and ``next >= prev``: a **glitch** (e.g. 100, 0, 101); dropped.
    * ``cur < prev`` with no ``next`` yet (the last sample, or one before a break):
      undecided, so left out until the next reading decides it.
    * ``cur < prev`` otherwise, with ``wrap`` set and ``0 < cur + wrap - prev < wrap / 2``:
      a **wrap**; the delta is that forward distance. (A reset from the upper half of the
      range to a low reading looks exactly like this and is counted as a wrap.)
    * ``cur < prev`` otherwise: a **reset** to zero that persists; the delta is
      ``max(cur, 0)``, the energy counted since the restart. What was used between
      ``prev`` and the restart is unknowable and is not invented.

    So every delta is >= 0 and bounded by what the readings themselves show: at most
    ``cur - prev`` for an increase, below ``wrap / 2`` for a wrap, at most ``cur`` (which
    is below ``prev``) for a reset. Only *single* bad samples are recognised as glitches;
    two bad readings in a row look like real data.

    A non-finite reading is a break: the counter is split there, the first sample after
    it is kept as is, the offset carries on unchanged (values may step down across a
    break, e.g. after a meter swap) and no energy is ever computed across it.

    ``offset`` is the unrolled value of the first sample minus its raw reading (0: the
    series starts at the first raw reading). Compaction passes it to continue a series.

    ``max_rate`` (raw units per second), when given, bounds a wrap or a reset: one whose
    delta is more than ``max_rate`` times the seconds since the previous kept sample is
    implausible, and the series goes on flat across it (delta 0) instead; ``glitches``
    counts those steps plus the glitches and spikes dropped above.
    """

    __slots__ = ("_breaks", "_seg_idx", "_seg_off", "_skipped", "ats", "glitches", "vals")

    def __init__(
        self,
        samples: Sequence[tuple[float, float]],
        *,
        wrap: float | None,
        offset: float = 0.0,
        max_rate: float | None = None,
    ) -> None:
        if wrap is not None and not wrap > 0:
            raise ValueError(f"wrap must be a positive counter modulus, got {wrap!r}")
        self.ats, self.vals = columns(samples)
        self._breaks = _breaks_of(self.vals)
        self._skipped: set[int] = set()
        self.glitches = 0
        self._seg_idx = [0]
        self._seg_off = [offset]
        vals = self.vals
        drops = _drops_of(vals) if not self._breaks else _drops_in(vals, 0)
        if not drops and not self._breaks:
            return  # monotone, nothing to decide: the common case, all in C
        events = {0, *self._breaks, *(b + 1 for b in self._breaks)}
        for i in drops:
            events.update((i - 1, i))
        self._walk(sorted(e for e in events if e < len(vals)), wrap, offset, max_rate)

    def _walk(
        self, events: list[int], wrap: float | None, off: float, max_rate: float | None
    ) -> None:
        """Decide every sample whose fate is not trivially "kept, same offset".

        Only drops (and their neighbours) and breaks need a decision; any other sample is
        kept with the current offset, so the walk visits just those ``events``.
        """
        vals, n, breaks = self.vals, len(self.vals), set(self._breaks)
        pk = -1  # the last kept sample of the current piece; -1 at the start of a piece
        last_event = -1
        for k in events:
            if k in breaks:
                pk, last_event = -1, k
                continue
            if last_event != k - 1:
                pk = k - 1  # not an event, hence kept (and in this piece)
            last_event = k
            if pk < 0:
                pk = k  # first sample of a piece: kept as is
                continue
            prev, cur = vals[pk], vals[k]
            nxt = vals[k + 1] if k + 1 < n and k + 1 not in breaks else None
            if cur >= prev:
                if nxt is not None and prev <= nxt < cur:
                    self._skipped.add(k)  # spike
                    self.glitches += 1
                else:
                    pk = k
                continue
            if nxt is None or nxt >= prev:
                self._skipped.add(k)  # glitch, or a drop the next reading has yet to decide
                self.glitches += nxt is not None
                continue
            u_prev = prev + off
            if wrap is not None and 0 < cur + wrap - prev < wrap / 2:
                new, delta = off + wrap, cur + wrap - prev
            else:
                new, delta = (off + prev, cur) if cur >= 0 else (off + prev - cur, 0.0)
            if max_rate is not None and not delta <= max_rate * (self.ats[k] - self.ats[pk]) * (
                1.0 + REL_TOL
            ):
                new = off + prev - cur  # implausible: flat across the step
                self.glitches += 1
            new = _not_below(cur, new, u_prev)  # never let rounding step the series backwards
            self._seg_idx.append(k)
            self._seg_off.append(new)
            off, pk = new, k

    def value(self, k: int) -> float:
        """The unrolled value of kept sample ``k``."""
        return self.vals[k] + self._seg_off[bisect_right(self._seg_idx, k) - 1]

    def offset(self, k: int) -> float:
        """Unrolled minus raw value at kept sample ``k``."""
        return self._seg_off[bisect_right(self._seg_idx, k) - 1]

    def kept(self, k: int) -> bool:
        return k not in self._skipped and not self.is_break(k)

    def is_break(self, k: int) -> bool:
        if not self._breaks:
            return False
        i = bisect_left(self._breaks, k)
        return i < len(self._breaks) and self._breaks[i] == k

    @property
    def breaks(self) -> list[int]:
        return self._breaks

    def continuous(self, lo: int, hi: int) -> bool:
        """No break between samples ``lo`` and ``hi``."""
        b = self._breaks
        return not b or bisect_right(b, lo) == bisect_left(b, hi)

    def edge(self, t: float, max_gap: float) -> Edge | None:
        """The unrolled counter at ``t``, or None without kept samples within ``max_gap``."""
        ats, skipped, n = self.ats, self._skipped, len(self.ats)
        lo = bisect_right(ats, t) - 1
        while lo >= 0 and lo in skipped:
            lo -= 1
        if lo < 0 or t - ats[lo] > max_gap or self.is_break(lo):
            return None
        if ats[lo] == t:
            return Edge(lo, lo, self.value(lo), True)
        hi = lo + 1
        while hi < n and hi in skipped:
            hi += 1
        if hi >= n or ats[hi] - t > max_gap or self.is_break(hi):
            return None
        value = interpolate(t, ats[lo], self.value(lo), ats[hi], self.value(hi))
        return Edge(lo, hi, value, False)

    def points(self) -> list[tuple[float, float]]:
        """Kept samples as ``(at, unrolled value)``; a break as ``(at, nan)``."""
        ats, vals, skipped = self.ats, self.vals, self._skipped
        bounds = [*self._seg_idx[1:], len(ats)]
        out: list[tuple[float, float]] = []
        for start, stop, off in zip(self._seg_idx, bounds, self._seg_off, strict=True):
            out.extend(
                (ats[k], vals[k] + off if math.isfinite(vals[k]) else math.nan)
                for k in range(start, stop)
                if k not in skipped
            )
        return out


def unroll_counter(
    samples: Sequence[tuple[float, float]], *, wrap: float | None
) -> list[tuple[float, float]]:
    """A raw cumulative counter as a monotone non-decreasing series in the same unit.

    The result starts at the first sample's reading and keeps every sample except
    glitches, spikes and a trailing undecided drop; see :class:`UnrolledCounter` for the
    rules and the bound on every step. A break (non-finite reading) is kept as
    ``(at, nan)``; the series is monotone between breaks.
    """
    return UnrolledCounter(samples, wrap=wrap).points()


def counter_intervals(
    samples: Sequence[tuple[float, float]],
    intervals: Sequence[tuple[float, float]],
    *,
    to_kwh: float,
    wrap: float | None,
    max_gap: float,
    limits: Limits | None = None,
) -> Energies:
    """kWh per interval from a cumulative counter, aligned with ``intervals``.

    The unrolled counter (:class:`UnrolledCounter`) is linearly interpolated at each
    edge between the kept samples on either side; the energy is
    ``(value at end - value at start) * to_kwh``. An edge without a kept sample within
    ``max_gap`` on either side, or a break between the edges, makes the interval None, as
    does an energy that is not finite. Quality is MEASURED when both edges have a sample
    exactly on them. With ``limits``, implausible steps and intervals are rejected and
    counted (see the module docstring).

    **Fast path.** The result is the same (bit for bit) when ``samples`` is any
    subsequence that contains, for each edge, the last sample at or before it and the
    first at or after it; for every drop (``value[i] < value[i-1]``) the samples
    ``i-2, i-1, i, i+1`` (the two samples of the drop and one neighbour on each side);
    and every non-finite sample. A store can fetch just those instead of every reading:
    a few hundred rows a day instead of 8,640. (``glitches`` may differ: it counts what
    the samples given show.)
    """
    max_rate = None if limits is None else limits.max_kw / 3600.0 / to_kwh
    counter = UnrolledCounter(samples, wrap=wrap, max_rate=max_rate)
    out = Energies()
    rejected = 0
    last_t: float | None = None
    last_edge: Edge | None = None
    for start, end in intervals:
        a = last_edge if start == last_t else counter.edge(start, max_gap)
        b = counter.edge(end, max_gap)
        last_t, last_edge = end, b
        if a is None or b is None or not counter.continuous(a.lo, b.hi):
            out.append(None)
            continue
        kwh = (b.value - a.value) * to_kwh
        if not math.isfinite(kwh) or (limits is not None and not limits.allows(kwh, end - start)):
            rejected += 1
            out.append(None)
            continue
        quality = Quality.MEASURED if a.exact and b.exact else Quality.INTERPOLATED
        out.append(IntervalEnergy(start, end, kwh, quality))
    out.glitches = counter.glitches + rejected if limits is not None else 0
    return out


# --------------------------------------------------------------------------- power


def power_intervals(
    samples: Sequence[tuple[float, float]],
    intervals: Sequence[tuple[float, float]],
    *,
    to_kw: float,
    max_gap: float,
    limits: Limits | None = None,
) -> Energies:
    """kWh per interval from instantaneous power (``value * to_kw`` is kW).

    Trapezoid rule between consecutive samples, with the power at each edge linearly
    interpolated; ``kWh = integral of kW dt / 3600``. The interval is None when an edge
    has no sample within ``max_gap`` on either side, or any segment overlapping it spans
    more than ``max_gap`` seconds or touches a non-finite sample, or its energy is not
    finite. Quality is MEASURED when both edges have a sample exactly on them. Splitting
    an interval at any point conserves its energy (up to float rounding): the trapezoid is
    exact for the linear interpolant.

    With ``limits``, samples beyond ``max_kw`` or not finite are left out and counted in
    ``glitches``, and for ``import`` each sample below 0 counts as 0 kW (see the module
    docstring).
    """
    ats, vals = columns(samples)
    glitches = 0
    if limits is not None:
        ats, vals, glitches = _screen_power(ats, vals, limits, to_kw)
    n = len(ats)
    dts = list(map(sub, islice(ats, 1, None), ats))
    for b in _breaks_of(vals):  # segments touching a break are unknown
        if b > 0:
            dts[b - 1] = math.inf
        if b < n - 1:
            dts[b] = math.inf
    sums = list(map(add, islice(vals, 1, None), vals))
    out = Energies(glitches=glitches)
    for start, end in intervals:
        i = bisect_right(ats, start) - 1  # last sample at or before start
        j = bisect_left(ats, end)  # first sample at or after end
        if (
            i < 0
            or j >= n
            or start - ats[i] > max_gap
            or ats[j] - end > max_gap
            or not (math.isfinite(vals[i]) and math.isfinite(vals[j]))
            or (j > i and max(dts[i:j]) > max_gap)
        ):
            out.append(None)
            continue
        kwh = _area(ats, vals, dts, sums, i, j, start, end) * to_kw / 7200.0
        if not math.isfinite(kwh):  # only without limits: values near the float range
            out.append(None)
            continue
        quality = Quality.MEASURED if ats[i] == start and ats[j] == end else Quality.INTERPOLATED
        out.append(IntervalEnergy(start, end, kwh, quality))
    return out


def _screen_power(
    ats: list[float], vals: list[float], limits: Limits, to_kw: float
) -> tuple[list[float], list[float], int]:
    """Samples without the implausible ones, clamped at 0 for ``import``; how many went.

    One C-speed pass each over the values when nothing is out of range (the usual case).
    """
    top = limits.max_kw / to_kw
    glitches = 0
    if not (vals and math.isfinite(sum(vals)) and -top <= min(vals) and max(vals) <= top):
        keep = [math.isfinite(v) and -top <= v <= top for v in vals]
        glitches = len(vals) - sum(keep)
        ats, vals = list(compress(ats, keep)), list(compress(vals, keep))
    if limits.direction == "import" and vals and min(vals) < 0:
        vals = [v if v > 0 else 0.0 for v in vals]
    return ats, vals, glitches


def _area(
    ats: list[float],
    vals: list[float],
    dts: list[float],
    sums: list[float],
    i: int,
    j: int,
    start: float,
    end: float,
) -> float:
    """Twice the integral of the interpolated power over [start, end].

    ``i`` is the last sample at or before ``start``, ``j`` the first at or after ``end``.
    """
    if j <= i:
        return 0.0
    p_start = interpolate(start, ats[i], vals[i], ats[i + 1], vals[i + 1])
    p_end = interpolate(end, ats[j - 1], vals[j - 1], ats[j], vals[j])
    if j == i + 1:
        return (p_start + p_end) * (end - start)
    first = (p_start + vals[i + 1]) * (ats[i + 1] - start)
    last = (vals[j - 1] + p_end) * (end - ats[j - 1])
    inner = map(mul, dts[i + 1 : j - 1], sums[i + 1 : j - 1])
    try:
        return math.fsum(chain((first, last), inner))
    except (OverflowError, ValueError):  # beyond the float range: no number
        return math.nan
