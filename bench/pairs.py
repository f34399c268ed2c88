"""Paired benchmark runs: a baseline and a subject interleaved (ABAB...), one ratio per pair.

On a shared machine the speed of everything moves from minute to minute, so two
medians taken minutes apart compare two machines. Two runs side by side see nearly
the same machine. So each bench runs its baseline and its subject in pairs,
alternating which of the two goes first (baseline first in pairs 0, 2, 4, ...;
subject first in 1, 3, 5, ...) so that neither always gets the warmer or the
colder slot, and reports every pair's ratio with their median and spread, never a
ratio of two medians.

Pure, but for :func:`interleave`, which calls the two measuring functions it is
given (in the order :func:`order` says) and nothing else.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, Literal, TypeVar

T = TypeVar("T")
Side = Literal["baseline", "subject"]


@dataclass(frozen=True)
class Pair(Generic[T]):
    """One pair of runs: what each side measured, and which ran first."""

    baseline: T
    subject: T
    subject_first: bool


def order(index: int) -> tuple[Side, Side]:
    """Which side runs first in pair ``index``: the baseline in even pairs, the subject in odd."""
    return ("baseline", "subject") if index % 2 == 0 else ("subject", "baseline")


def interleave(
    pairs: int, baseline: Callable[[int], T], subject: Callable[[int], T]
) -> list[Pair[T]]:
    """Run ``pairs`` pairs, ABAB... with the order alternating; each function gets the
    pair's index (e.g. to tag what it sends) and returns what it measured."""
    if pairs < 1:
        raise ValueError(f"pairs: {pairs} is not at least 1")
    runs: list[Pair[T]] = []
    for index in range(pairs):
        got: dict[Side, T] = {}
        for side in order(index):
            got[side] = (baseline if side == "baseline" else subject)(index)
        runs.append(Pair(got["baseline"], got["subject"], order(index)[0] == "subject"))
    return runs


def ratio(subject: float, baseline: float) -> float:
    """``subject / baseline``; inf when only the baseline is 0, nan when both are."""
    if baseline == 0:
        return math.nan if subject == 0 else math.inf
    return subject / baseline


def ratios(runs: Sequence[Pair[T]], measure: Callable[[T], float]) -> list[float]:
    """Each pair's ``measure(subject) / measure(baseline)``, in pair order."""
    return [ratio(measure(p.subject), measure(p.baseline)) for p in runs]


@dataclass(frozen=True)
class Spread:
    """Median, range and interquartile range of some values (the finite ones)."""

    count: int
    median: float
    low: float
    high: float
    q1: float
    q3: float


def spread(values: Sequence[float]) -> Spread | None:
    """The spread of the finite values; None when there is none. Quartiles by the
    inclusive method (a single value is its own quartiles)."""
    finite = sorted(v for v in values if math.isfinite(v))
    if not finite:
        return None
    if len(finite) == 1:
        q1 = q3 = finite[0]
    else:
        q1, _, q3 = statistics.quantiles(finite, n=4, method="inclusive")
    return Spread(len(finite), statistics.median(finite), finite[0], finite[-1], q1, q3)


def _number(value: float, digits: int) -> str:
    return f"{value:.{digits}f}" if math.isfinite(value) else "n/a"


def describe(values: Sequence[float], digits: int = 2) -> str:
    """``median M (min-max L-H, IQR A-B; N pairs)``, or why there is no figure."""
    found = spread(values)
    if found is None:
        return "no finite ratio"
    n = lambda v: _number(v, digits)  # noqa: E731 - a local shorthand
    skipped = len(values) - found.count
    note = f", {skipped} not finite" if skipped else ""
    return (
        f"median {n(found.median)} (min-max {n(found.low)}-{n(found.high)}, "
        f"IQR {n(found.q1)}-{n(found.q3)}; {found.count} pairs{note})"
    )


def ratio_line(label: str, values: Sequence[float], digits: int = 2) -> str:
    """One line: every pair's ratio in order, then the median and the spread."""
    each = " ".join(_number(v, digits) for v in values)
    return f"{label}: pairs [{each}] {describe(values, digits)}"


def load_line(load: tuple[float, float, float]) -> str:
    """The load average as ``os.getloadavg()`` gives it, labelled."""
    return f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} (1, 5, 15 min)"
