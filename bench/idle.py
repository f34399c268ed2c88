"""Idle cost of ``ecgw run``: resident memory and CPU while nothing happens.

The gateway runs as ``ecgw run`` in its own process with the sandbox (its own
process, not counted), the webhook listening and two simulated adapters read
every second (so "idle" includes metering: two reads and a commit per second).
The baseline, in the same run, is a bare aiohttp server process (Python, aiohttp
imported, one route) left idle for as long. They run in pairs, one after the
other, the order alternating (bare first, then the gateway first, ...).

    python bench/idle.py [--seconds 60] [--pairs 2] [--quick]

Prints RSS (at the start and end of the window, and the peak the kernel saw) and
CPU (% of one core, and CPU seconds per minute) of every run, and every pair's
ratio gateway / bare with the median and spread (the CPU ratio is not finite
when the bare server used no measurable CPU; the gateway's CPU is then the figure).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from pairs import interleave, load_line, ratio_line, ratios
from webhook import cpu_seconds, server


def rss_mb(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of a process in MB."""
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    return tuple(int(fields[k].split()[0]) / 1024 for k in ("VmRSS", "VmHWM"))  # type: ignore[return-value]


def watch(kind: str, seconds: float) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp, server(kind, Path(tmp)) as (_, pid):
        time.sleep(min(5.0, seconds / 4))  # let start-up work (imports, first reads) settle
        start_rss, _ = rss_mb(pid)
        cpu, start = cpu_seconds(pid), time.monotonic()
        time.sleep(seconds)
        cpu, elapsed = cpu_seconds(pid) - cpu, time.monotonic() - start
        end_rss, peak = rss_mb(pid)
    return {
        "start_rss": start_rss,
        "end_rss": end_rss,
        "peak_rss": peak,
        "cpu_pct": 100 * cpu / elapsed,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--pairs", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="4 seconds, 3 pairs")
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.pairs = 4, 3
    runs = interleave(
        args.pairs, lambda _: watch("bare", args.seconds), lambda _: watch("gateway", args.seconds)
    )
    print(
        f"idle for {args.seconds:.0f} s per run; pairs: {args.pairs}; "
        f"{load_line(os.getloadavg())}; "
        "gateway = ecgw run with the webhook and two simulated adapters read every second"
    )
    for i, pair in enumerate(runs):
        for kind, r in (("bare", pair.baseline), ("gateway", pair.subject)):
            print(
                f"pair {i} {kind:8s}: RSS {r['start_rss']:6.1f} -> {r['end_rss']:6.1f} MB "
                f"(peak {r['peak_rss']:6.1f} MB), CPU {r['cpu_pct']:5.2f} % of a core "
                f"({r['cpu_pct'] * 0.6:5.2f} CPU s per minute)"
            )
    print(ratio_line("ratio gateway / bare, RSS at the end", ratios(runs, lambda r: r["end_rss"])))
    print(ratio_line("ratio gateway / bare, CPU", ratios(runs, lambda r: r["cpu_pct"]), digits=1))


if __name__ == "__main__":
    main()
