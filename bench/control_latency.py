"""The controller end to end for 50 controllable loads: one step (read, decide, command)
and the time from a cap violation being read to the first command leaving.

    python bench/control_latency.py [--loads 50] [--rounds 30] [--quick]

In one process, with the gateway's own parts: 50 simulated adapters (each with its
``switch`` control, entered as the runtime would), a real SQLite database
(``synchronous=FULL``) for the decisions and the command log, the latest-readings
cache, and :class:`gateway.control.controller.Controller` holding a 10 kW cap at one
location whose meter reads 3 kW plus every load that is on.

* **step**: :meth:`Controller.tick` while the location is over its cap: the switch
  state of all 50 loads (``state()`` of each adapter), the meter, the pure step, and the
  commands handed to their tasks (the commands' own confirmation runs after).
* **violation to command**: a meter reading above the cap is put in the cache (as the
  readings sink does after its commit) and the clock runs until the first ``apply()``
  reaches a device: the controller's wake-up, its step, and the command's row committed
  before it is sent (nothing is sent that is not recorded).
* **baseline** (same run): a bare task woken by the same cache listener that calls
  ``apply()`` at once: what any reaction costs on this event loop. The ratio says what
  the controller's step and its durable command log add.

Each round is one pair: violation to command and the baseline, measured one after the
other in the same database and event loop, the order alternating from round to round.
Prints medians and p90 over the rounds, and every round's ratio violation / baseline
with the median and spread.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import structlog

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pairs import load_line, order, ratio, ratio_line

from adapters.simulated import SimulatedAdapter, SimulatedConfig
from gateway.config import parse_config
from gateway.control.commands import Commander
from gateway.control.controller import Controller
from gateway.metering.latest import LatestReadings
from gateway.plugin import Channel, ChannelKind, Reading, Unit
from gateway.store.control import ControlStore, DecisionRow, location_key
from gateway.store.database import open_database

BASE_KW = 3.0
LOAD_KW = 2.0
CAP_KW = 10.0


class Timed(SimulatedAdapter):
    """A simulated load that notes when the first command after ``arm()`` arrives."""

    first_apply: float | None = None
    armed = False
    arrived: asyncio.Event | None = None  # set with first_apply: a signal, not a poll

    async def apply(self, control: str, value: float) -> None:
        if Timed.armed and Timed.first_apply is None:
            Timed.first_apply = time.perf_counter()
            if Timed.arrived is not None:
                Timed.arrived.set()
        await super().apply(control, value)


class Devices:
    def __init__(self, adapters: dict[str, SimulatedAdapter]) -> None:
        self.adapters = adapters

    def controllable(self, name: str) -> SimulatedAdapter:
        return self.adapters[name]


def config(loads: int, state_dir: str) -> Any:
    return parse_config(
        {
            "gateway": {"state_dir": state_dir},
            "adapters": {
                "meter": {"type": "simulated", "poll_interval": "1s"},
                **{f"load-{i}": {"type": "simulated", "power_kw": LOAD_KW} for i in range(loads)},
            },
            "locations": [{"location_id": "site", "meter_point_id": "mp", "adapter": "meter"}],
            "resources": [
                {
                    "resource_id": f"load-{i}",
                    "location_id": "site",
                    "adapter": f"load-{i}",
                    "control": "switch",
                    "rated_kw": LOAD_KW,
                    "priority": i % 5,
                }
                for i in range(loads)
            ],
            "control": {"confirm_timeout": "2s"},
        },
        base=Path("/"),
    )


async def one_round(loads: int, work: Path, index: int) -> dict[str, float]:
    cfg = config(loads, str(work))
    adapters: dict[str, SimulatedAdapter] = {
        f"load-{i}": Timed(f"load-{i}", SimulatedConfig(type="simulated", power_kw=LOAD_KW))
        for i in range(loads)
    }
    for adapter in adapters.values():
        await adapter.__aenter__()
    latest = LatestReadings()
    latest.channels("meter", (Channel("power", ChannelKind.POWER, Unit.KW),))
    now = time.time()

    def meter_kw() -> float:
        clock = time.time()
        return BASE_KW + sum(a._running("bench").power(clock) for a in adapters.values())

    async with open_database(work / "ecgw.sqlite3") as db:
        store = ControlStore(db)
        await store.decide(
            [
                DecisionRow(
                    event_id="bench",
                    target=location_key("site", "mp"),
                    kind="location",
                    location_id="site",
                    meter_point_id="mp",
                    resource_id=None,
                    decision="acknowledged",
                    reason="bench",
                    caps=((now - 60, now + 3600, CAP_KW),),
                    decided_at=now,
                )
            ]
        )
        devices = Devices(adapters)
        commander = Commander(store, devices, confirm_timeout=2.0, attempts=1)
        controller = Controller(cfg, store, commander, latest, devices)  # type: ignore[arg-type]
        latest.put("meter", [Reading("power", time.time(), meter_kw())])
        # 1. one step over the cap: read, decide, dispatch (the commands confirm afterwards)
        start = time.perf_counter()
        await controller.tick()
        step = time.perf_counter() - start
        await asyncio.gather(*controller._pending.values())
        target = adapters["load-0"]

        async def violation() -> float:
            """Back on, the meter under the cap, the controller running; then a violation read."""
            for adapter in adapters.values():
                await adapter.apply("switch", 1.0)
            latest.put("meter", [Reading("power", time.time(), BASE_KW)])
            running = asyncio.create_task(controller.run())
            await asyncio.sleep(0.3)
            Timed.first_apply, Timed.armed, Timed.arrived = None, True, asyncio.Event()
            read_at = time.perf_counter()
            latest.put("meter", [Reading("power", time.time(), meter_kw())])
            await Timed.arrived.wait()
            assert Timed.first_apply is not None
            took = Timed.first_apply - read_at
            Timed.armed = False
            running.cancel()
            await asyncio.gather(running, return_exceptions=True)
            return took

        async def baseline() -> float:
            """A bare listener task that calls apply() at once."""
            wake = asyncio.Event()
            latest.listen(lambda adapter, channel: wake.set())

            async def bare() -> None:
                await wake.wait()
                await target.apply("switch", 0.0)

            waiter = asyncio.create_task(bare())
            await asyncio.sleep(0.05)
            Timed.first_apply, Timed.armed = None, True
            read_at = time.perf_counter()
            latest.put("meter", [Reading("power", time.time() + 1, meter_kw())])
            await waiter
            assert Timed.first_apply is not None
            took = Timed.first_apply - read_at
            Timed.armed = False
            return took

        # 2. and 3., in the order this pair wants
        measured: dict[str, float] = {}
        for side in order(index):
            if side == "subject":
                measured["violation"] = await violation()
            else:
                measured["baseline"] = await baseline()
    return {"step": step, **measured}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--loads", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--quick", action="store_true", help="5 rounds")
    args = parser.parse_args()
    rounds = 5 if args.quick else args.rounds
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(30))  # warnings up
    results = []
    for _ in range(rounds):
        with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR")) as tmp:
            results.append(asyncio.run(one_round(args.loads, Path(tmp), len(results))))

    def show(key: str) -> tuple[float, float]:
        values = sorted(r[key] * 1e3 for r in results)
        return statistics.median(values), values[int(0.9 * (len(values) - 1))]

    print(
        f"loads: {args.loads}; rounds: {rounds}; synchronous=FULL; "
        f"{load_line(os.getloadavg())}; python {sys.version.split()[0]}"
    )
    step, violation, baseline = show("step"), show("violation"), show("baseline")
    print(
        f"step (read 50 states + meter, decide, dispatch): median {step[0]:.2f} ms, "
        f"p90 {step[1]:.2f} ms"
    )
    print(
        f"violation read -> first command sent: median {violation[0]:.2f} ms, "
        f"p90 {violation[1]:.2f} ms (includes committing the command's row)"
    )
    print(
        f"baseline (bare listener -> apply): median {baseline[0]:.3f} ms, p90 {baseline[1]:.3f} ms"
    )
    pairs = [ratio(r["violation"], r["baseline"]) for r in results]
    print(ratio_line("ratio violation / baseline", pairs, digits=0))
    print("target: a violation is acted on well within the meter's 1 s reading cadence")


if __name__ == "__main__":
    main()
