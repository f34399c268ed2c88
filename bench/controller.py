"""The controller's decision time: one ``gateway.control.step.step()`` for 50 loads.

    python bench/controller.py [--loads 50] [--runs 20000] [--pairs 10] [--quick]

Each run decides one step for one location from what was read: the meter shows the
location over its limit by about half of the controllable load, so the step sorts all
the loads and switches about half of them off (the busiest case; a step under the
limit with nothing held returns sooner). The baseline, in the same run, is a step with
no loads (the call, the meter check and the empty result): what is left is the cost
of the loads. The runs go in ``--pairs`` pairs of blocks (``runs / pairs`` steps
each; baseline block first, then the full one first, ...); each pair gives one
ratio of the blocks' medians. Prints the median and p99 of each side over all runs,
and every pair's ratio with the median and spread.

Only the pure decision is timed: reading the meter and sending the commands are I/O,
measured by the site tests.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pairs import interleave, load_line, ratio_line, ratios

from gateway.control.step import Load, Reading, step


def site(count: int) -> tuple[list[Load], float]:
    """``count`` loads of 1..4 kW in 5 priorities, half of them measured; and the meter's power."""
    loads = [
        Load(
            resource_id=f"load-{i:03d}",
            priority=i % 5,
            rated_kw=1.0 + (i % 4),
            on=True if i % 7 else None,
            measured_kw=(0.9 + (i % 4)) if i % 2 else None,
            held=False,
        )
        for i in range(count)
    ]
    power = 3.0 + sum(ld.measured_kw if ld.measured_kw is not None else ld.rated_kw for ld in loads)
    return loads, power


def timings(loads: Sequence[Load], power: float, limit: float, runs: int) -> list[float]:
    """Seconds per step(), one sample per run."""
    meter = Reading(power, 0.2)
    samples = []
    for _ in range(runs):
        start = time.perf_counter_ns()
        step(limit_kw=limit, meter=meter, failsafe=10.0, loads=loads, hysteresis_kw=0.5)
        samples.append((time.perf_counter_ns() - start) / 1e9)
    return samples


def p99(samples: list[float]) -> float:
    return sorted(samples)[min(len(samples) - 1, int(len(samples) * 0.99))]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--loads", type=int, default=50)
    parser.add_argument("--runs", type=int, default=20000, help="steps per side, all pairs")
    parser.add_argument("--pairs", type=int, default=10)
    parser.add_argument("--quick", action="store_true", help="2,000 runs, 5 pairs")
    args = parser.parse_args()
    if args.quick:
        args.runs, args.pairs = 2000, 5
    block = max(args.runs // args.pairs, 1)
    loads, power = site(args.loads)
    limit = 3.0 + (power - 3.0) / 2  # about half the controllable load must go
    commands = step(
        limit_kw=limit, meter=Reading(power, 0.2), failsafe=10.0, loads=loads, hysteresis_kw=0.5
    )
    timings(loads, power, limit, min(args.runs, 500))  # warm up
    runs = interleave(
        args.pairs,
        lambda _: timings([], 3.0, limit, block),
        lambda _: timings(loads, power, limit, block),
    )
    base = [t for p in runs for t in p.baseline]
    full = [t for p in runs for t in p.subject]
    print(
        f"step() for {args.loads} loads ({len(commands)} switched off: location at {power:g} kW, "
        f"limit {limit:g} kW), {args.pairs} pairs of {block} runs per side; "
        f"{load_line(os.getloadavg())}"
    )
    for name, samples in (("no loads", base), (f"{args.loads} loads", full)):
        print(
            f"{name:>9s}: median {statistics.median(samples) * 1e6:7.1f} us, "
            f"p99 {p99(samples) * 1e6:7.1f} us (all runs)"
        )
    print(
        ratio_line(
            f"ratio {args.loads} loads / no loads, median", ratios(runs, statistics.median), 1
        )
    )
    print(ratio_line(f"ratio {args.loads} loads / no loads, p99", ratios(runs, p99), 1))


if __name__ == "__main__":
    main()
