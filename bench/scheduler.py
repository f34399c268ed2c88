"""The report scheduler at rest and after a burst: ``ecgw run`` with 0 and 5,000 open events.

Each pair runs two gateways, one after the other, each ``ecgw run`` in its own process
with a fresh state directory, the sandbox API (its own process, not counted), the webhook,
and one simulated meter read every 10 s:

* **baseline**: no events; after a settling pause, the gateway's CPU (user + system, from
  /proc) over ``--seconds``.
* **subject**: a burst of ``--events`` signed PriceCurve notifications through the webhook
  (64 keep-alive connections), every one for the configured resource and with its window
  tomorrow, so every event stays open (``planned``, its report due after the window).
  Timed: the burst until the last answer, then until the scheduler has planned every
  event (no event left ``new``; looked at every 20 ms from a read-only connection, outside
  the gateway). Then, after the same settling pause, its CPU over ``--seconds`` with those
  events open.

    python bench/scheduler.py [--pairs 3] [--seconds 60] [--events 5000] [--quick]

The pairs alternate which goes first (baseline in pairs 1, 3, ...; subject in 2, 4, ...).
Prints each pair (baseline and subject CPU, their ratio; the burst's figures), then the
medians and the spread (min-max) of the pairs, and the load average. Targets: subject
idle CPU <= 1 % of a core; every event planned <= 5 s after the last answer.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import sqlite3
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from webhook import PATH, SECRET, _free_port, blast, cpu_seconds, requests, sandbox

RESOURCE, LOCATION = "bench-meter", "bench-site"
SETTLE = 5.0  # seconds after start (or after the burst is planned) before CPU is counted


def config(api: dict[str, str], state: Path, port: int) -> str:
    lines = ["[gateway]", f"state_dir = {json.dumps(str(state))}", "[api]"]
    lines += [f"{k} = {json.dumps(v)}" for k, v in api.items()]
    lines += ["[webhook]", f'listen = "127.0.0.1:{port}"', f'path = "{PATH}"']
    lines += [f'secret = "{SECRET}"']
    lines += ["[adapters.meter]", 'type = "simulated"', "power_kw = 3.0", 'poll_interval = "10s"']
    lines += ["[[resources]]", f'resource_id = "{RESOURCE}"', f'location_id = "{LOCATION}"']
    lines += ['adapter = "meter"']
    return "\n".join(lines) + "\n"


def price_curves(n: int, tag: str) -> list[bytes]:
    """``n`` PriceCurve notifications for the configured resource, windows tomorrow."""
    start = dt.datetime.now(dt.UTC).replace(minute=0, second=0, microsecond=0)
    start += dt.timedelta(days=1)
    points = [
        {"price": 0.1 * (h + 1), "timestamp": (start + dt.timedelta(hours=h)).isoformat()}
        for h in range(4)
    ]
    bodies = []
    for i in range(n):
        note = {
            "notificationId": f"bench-{tag}-note-{i:07d}",
            "eventId": f"bench-{tag}-event-{i:07d}",
            "eventCreatedAtUtc": start.isoformat(),
            "notificationSentUtc": start.isoformat(),
            "notificationType": "PriceCurveCreated",
            "payload": {
                "payloadType": "PriceCurve",
                "targets": [{"resourceId": RESOURCE, "locationId": LOCATION}],
                "priceCurveDelta": {
                    "points": points,
                    "energyUnit": "kWh",
                    "currency": "NOK",
                    "resolution": "01:00:00",
                },
                "priceArea": "SE1",
            },
        }
        bodies.append(json.dumps(note, separators=(",", ":")).encode())
    return bodies


@contextlib.contextmanager
def gateway(state: Path) -> Iterator[tuple[str, int, int]]:
    """``ecgw run`` in its own process; yields (host, port, pid) once it has started."""
    import subprocess

    port = _free_port()
    with sandbox() as api:
        path = state / "ecgw.toml"
        path.write_text(config(api, state, port))
        log = state / "gateway.log"
        proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "run"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=log.open("wb"),
            env={**os.environ, "ECGW_CONFIG": str(path)},
        )
        try:
            deadline = time.monotonic() + 30
            while b"gateway.started" not in log.read_bytes():
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"ecgw run did not start; see {log}")
                time.sleep(0.05)
            yield "127.0.0.1", port, proc.pid
        finally:
            proc.terminate()
            if proc.wait(timeout=60) != 0:
                raise RuntimeError(f"ecgw run did not exit cleanly; see {log}")


def idle_cpu(pid: int, seconds: float) -> float:
    """% of one core the process used over ``seconds`` (in clock ticks: 0.01 s of CPU, so
    0.017 % over 60 s is the resolution)."""
    cpu, start = cpu_seconds(pid), time.monotonic()
    time.sleep(seconds)
    return 100 * (cpu_seconds(pid) - cpu) / (time.monotonic() - start)


def plan_states(state: Path) -> Counter[str]:
    uri = f"file:{state / 'ecgw.sqlite3'}?mode=ro"
    with contextlib.closing(sqlite3.connect(uri, uri=True)) as conn:
        return Counter(
            dict(conn.execute("SELECT plan_state, COUNT(*) FROM events GROUP BY plan_state"))
        )


def until_planned(state: Path, timeout: float = 300) -> float:
    """Wait until no event is ``new``; returns the monotonic time it was first seen so."""
    deadline = time.monotonic() + timeout
    uri = f"file:{state / 'ecgw.sqlite3'}?mode=ro"
    with contextlib.closing(sqlite3.connect(uri, uri=True)) as conn:
        while conn.execute("SELECT 1 FROM events WHERE plan_state = 'new' LIMIT 1").fetchone():
            if time.monotonic() > deadline:
                raise RuntimeError("the scheduler did not plan every event in time")
            time.sleep(0.02)
        return time.monotonic()


def baseline(seconds: float) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp, gateway(Path(tmp)) as (_, _, pid):
        time.sleep(SETTLE)
        return {"cpu": idle_cpu(pid, seconds)}


def subject(seconds: float, events: int, tag: str) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp)
        with gateway(state) as (host, port, pid):
            reqs = requests(price_curves(events, tag), f"{host}:{port}")
            time.sleep(SETTLE)
            burst, statuses = asyncio.run(blast(host, port, reqs, 64))
            answered = time.monotonic()  # the last answer was read just before
            planned = until_planned(state) - answered
            if statuses != Counter({200: events}):
                raise RuntimeError(f"answers {dict(statuses)}, expected {events} x 200")
            found = plan_states(state)
            if found != Counter({"planned": events}):
                raise RuntimeError(f"plan states {dict(found)}, expected {events} planned")
            time.sleep(SETTLE)
            cpu = idle_cpu(pid, seconds)
            if (after := plan_states(state)) != found:
                raise RuntimeError(f"events changed state while idle: {dict(after)}")
    return {"cpu": cpu, "burst": burst, "planned": planned}


def spread(values: list[float], fmt: str) -> str:
    return (
        f"median {format(statistics.median(values), fmt)} "
        f"(spread {format(min(values), fmt)}-{format(max(values), fmt)})"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--events", type=int, default=5000)
    parser.add_argument("--quick", action="store_true", help="2 pairs, 10 s windows")
    args = parser.parse_args()
    if args.quick:
        args.pairs, args.seconds = 2, 10
    print(
        f"ecgw run idle for {args.seconds:.0f} s per window; baseline: 0 open events, "
        f"subject: {args.events} open PriceCurve events after a burst through the webhook; "
        f"{args.pairs} pairs, baseline first in odd pairs, subject first in even ones"
    )
    pairs = []
    for i in range(args.pairs):
        if i % 2 == 0:  # the order alternates (bench/pairs.py): neither always goes second
            a = baseline(args.seconds)
            b = subject(args.seconds, args.events, f"{i}")
        else:
            b = subject(args.seconds, args.events, f"{i}")
            a = baseline(args.seconds)
        ratio = b["cpu"] / a["cpu"] if a["cpu"] > 0 else None
        pairs.append((a, b, ratio))
        shown = f"{ratio:.2f}" if ratio is not None else "n/a (baseline used no measurable CPU)"
        print(
            f"pair {i + 1}: idle CPU baseline {a['cpu']:.2f} %, subject {b['cpu']:.2f} % "
            f"of a core, ratio {shown}; burst answered in {b['burst']:.2f} s "
            f"({args.events / b['burst']:.0f}/s), every event planned "
            f"{b['planned']:.2f} s after the last answer",
            flush=True,
        )
    print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"idle CPU baseline (% of a core): {spread([a['cpu'] for a, _, _ in pairs], '.2f')}")
    print(f"idle CPU subject  (% of a core): {spread([b['cpu'] for _, b, _ in pairs], '.2f')}")
    ratios = [r for _, _, r in pairs if r is not None]
    print(
        "ratio subject/baseline:          "
        + (spread(ratios, ".2f") if ratios else "n/a (no baseline used measurable CPU)")
        + f" over {len(ratios)} of {len(pairs)} pairs"
    )
    print(f"burst answered (s):              {spread([b['burst'] for _, b, _ in pairs], '.2f')}")
    print(f"planned after last answer (s):   {spread([b['planned'] for _, b, _ in pairs], '.2f')}")
    print("targets: subject idle CPU <= 1 % of a core; planned <= 5 s after the last answer")


if __name__ == "__main__":
    main()
