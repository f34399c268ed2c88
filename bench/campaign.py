"""Fault campaign: kill -9 of a running gateway, again and again, then count what was lost.

One sandbox of the API runs in its own process (``ecgw sandbox``). ``ecgw run`` runs against
it with a webhook the sandbox pushes to, a poller (every 2 s) and three meters read every
200 ms: a simulated adapter, and two Modbus meters (the test kit's SDM630) served by this
process, whose counters keep counting while the gateway is down, as real meters do. While
the campaign runs, a feeder asks the sandbox for an event every ~1.5 s (PriceCurve,
ResourceLPC, LocationLPC, UserEligibility; one to three 10-second intervals from the next
10-second boundary; a quarter of them not pushed, so only polling finds them), and now and
then queues a fault for ``POST /reports`` (503, 429 with Retry-After, a slow answer, a
dropped connection, a report accepted and the connection dropped before the answer).

The gateway is started with each named crash point armed in turn (``ECGW_CRASH_AT``: it kills
itself with SIGKILL when it gets there), then killed with SIGKILL ``--kills`` times at random
moments (a fifth of them during start-up, the others up to 2.5 s after it is ready) and
started again at once. After every kill: ``PRAGMA integrity_check`` (read-only, so the WAL is
left for the gateway to recover), and every webhook push the gateway answered 200 must be in
its inbox. Then the feeder stops, the gateway runs undisturbed until every report is due and
delivered, and stops with SIGTERM. Figures:

* lost: (event, report kind) pairs the events ask for with no accepted report at the sandbox
* duplicates accepted: a second report for the same (event, kind) under another
  Idempotency-Key (the sandbox would have counted it twice)
* repeat POSTs: a report sent again with the key of one already accepted (allowed: a kill
  between the 2xx and its commit, or an answer lost on the way)
* stuck: outbox rows neither delivered nor dead at the end
* integrity: checks that said ``ok`` / checks made
* restart-to-ready: from spawning ``ecgw run`` to its ``gateway.started`` line

    python bench/campaign.py [--kills 100] [--seed 1] [--workdir DIR]

An event that reached the gateway only after its last interval had begun (it was created
while the gateway was down and found later) asks for no report: the gateway reports only
what it could react to (issue 9). Such events are counted apart ("arrived too late") and
expect nothing; the feeder starts events :data:`EVENT_LEAD` ahead so that they are few.
Reports wait for missing readings at most ``reporting.max_wait`` = 2 s here (a simulated
meter restarts with the gateway and leaves gaps): the figures measure crash safety.

Prints a table and, last, one JSON line with every figure. Exit 0 when nothing was lost or
accepted twice, nothing is stuck and every integrity check said ok; else 1.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime as dt
import json
import logging
import math
import random
import socket
import sqlite3
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # tests.kit, when run as ``python bench/campaign.py``

from tests.kit.gateway import toml  # noqa: E402
from tests.kit.live import (  # noqa: E402
    GatewayProcess,
    SandboxProcess,
    crash_points,
    integrity,
    query,
)
from tests.kit.modbus import EastronMeter, SimMeter, modbus_tcp_server  # noqa: E402
from tests.kit.proc import ecgw  # noqa: E402

SECRET = "campaign-webhook-secret"
RESOLUTION = 10  # seconds per interval
EVENT_LEAD = 5.0  # an event's first interval begins at least this long after it is created
# resource id -> (adapter, kW). The tank is a simulated adapter, whose counter starts again
# from zero in every new process; the charger and the site meter are Modbus meters served by
# this process, whose counters keep counting through the gateway's restarts, as real ones do.
# Every report asked for has a target on a Modbus meter, so it always has data to give.
RESOURCES = {"hwt-1": ("tank", 3.0), "evc-1": ("charger", 11.0)}
LOCATION = ("loc-1", "707057500012345678", "site", 14.0)
MODBUS_UNITS = {"charger": 1, "site": 2}
RESOURCE_METER_POINT = "707057500000000001"

# What each event type asks for (the planner's table, written out independently). The
# campaign's site has nothing the gateway can switch and a 14 kW site meter, so every LPC
# target (a 5 kW cap) is declined: the acknowledgement that declines it is the only report.
EXPECTED_KINDS = {
    "PriceCurve": ("EnergyUsage",),
    "ResourceLPC": ("ResourceLPCAcknowledgement",),
    "LocationLPC": ("LocationLPCAcknowledgement",),
    "UserEligibility": (),
}
FAULTS: tuple[dict[str, Any], ...] = (
    {"status": 503, "count": 2},
    {"status": 429, "retry_after": "1"},
    {"delay": 0.8},
    {"drop": True},
    {"drop_after_accept": True},
)


@dataclass(frozen=True)
class Settings:
    kills: int = 100
    seed: int = 1
    event_every: float = 1.5
    max_intervals: int = 3
    grace: float = 1.0
    unpushed_share: float = 0.25
    fault_share: float = 0.15
    early_kill_share: float = 0.2
    max_uptime: float = 2.5
    crash_point_timeout: float = 30.0
    ready_timeout: float = 60.0
    settle_timeout: float = 90.0


@dataclass(frozen=True)
class Planned:
    """An event the sandbox holds, and the reports it should give."""

    event_id: str
    payload_type: str
    kinds: tuple[str, ...]
    due: float
    pushed: bool
    last_start: float | None = None
    """When its last interval begins: an event that reached the gateway later asks for
    nothing. None: no intervals (or not known)."""


@dataclass
class Figures:
    kills: int = 0
    random_kills: int = 0
    crash_points: dict[str, str] = field(default_factory=dict)
    events: int = 0
    events_polled_only: int = 0
    events_missing: int = 0
    events_late: int = 0
    acked_not_stored: int = 0
    reports_expected: int = 0
    reports_accepted: int = 0
    lost: int = 0
    lost_built_early: int = 0
    duplicates_accepted: int = 0
    unexpected_reports: int = 0
    repeat_posts: int = 0
    post_attempts: int = 0
    faults: dict[str, int] = field(default_factory=dict)
    stuck: int = 0
    dead: int = 0
    integrity_ok: int = 0
    integrity_checks: int = 0
    unexpected_exits: int = 0
    slow_starts: int = 0
    ready_samples: int = 0
    ready_worst_s: float = 0.0
    ready_median_s: float = 0.0
    final_exit: int | None = None
    lost_detail: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return (
            self.lost == 0
            and self.duplicates_accepted == 0
            and self.unexpected_reports == 0
            and self.stuck == 0
            and self.dead == 0
            and self.events_missing == 0
            and self.acked_not_stored == 0
            and self.unexpected_exits == 0
            and self.slow_starts == 0
            and self.integrity_ok == self.integrity_checks
            and all(v == "reached" for v in self.crash_points.values())
            and self.final_exit == 0
        )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _iso(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).isoformat()


def gateway_config(
    sandbox: SandboxProcess, state_dir: Path, port: int, modbus_port: int, grace: float
) -> dict[str, Any]:
    location_id, meter_point, site, _ = LOCATION
    adapters: dict[str, dict[str, Any]] = {
        "tank": {"type": "simulated", "power_kw": RESOURCES["hwt-1"][1]}
    }
    for name, unit in MODBUS_UNITS.items():
        adapters[name] = {"type": "modbus", "host": "127.0.0.1", "port": modbus_port}
        adapters[name] |= {"unit": unit, "profile": "eastron-sdm630"}
    return {
        "gateway": {"state_dir": str(state_dir)},
        "api": sandbox.api_table,
        "webhook": {"listen": f"127.0.0.1:{port}", "path": "/notify", "secret": SECRET},
        "poll": {"interval": "2s", "page_size": 10},
        "delivery": {"timeout": "2s", "backoff_initial": "100ms", "backoff_max": "1s"},
        "reporting": {"grace": grace, "max_wait": "2s"},
        "adapters": {name: {**t, "poll_interval": "200ms"} for name, t in adapters.items()},
        "resources": [
            {"resource_id": rid, "location_id": location_id, "adapter": adapter}
            for rid, (adapter, _) in RESOURCES.items()
        ],
        "locations": [{"location_id": location_id, "meter_point_id": meter_point, "adapter": site}],
    }


@contextlib.asynccontextmanager
async def modbus_meters() -> AsyncIterator[int]:
    """The charger and site meters, counting at their power from now; yields the port."""
    meters: dict[int, SimMeter] = {}
    for name, unit in MODBUS_UNITS.items():
        kw = LOCATION[3] if name == LOCATION[2] else RESOURCES["evc-1"][1]
        meter = EastronMeter("sdm630")
        meter.ramp(kw, time.time, from_kwh=1000.0)
        meters[unit] = meter
    async with modbus_tcp_server(meters) as server:
        yield server.port


# -- events ----------------------------------------------------------------------------------


def event_payload(kind: str, starts: list[float], now: float) -> dict[str, Any]:
    """A contract-valid payload of ``kind`` with 10-second intervals starting at ``starts``."""
    location_id, meter_point, _, _ = LOCATION
    resolution = "00:00:10"
    if kind == "PriceCurve":
        return {
            "payloadType": "PriceCurve",
            "priceArea": "NO5",
            "targets": [{"resourceId": r, "locationId": location_id} for r in RESOURCES],
            "priceCurveDelta": {
                "points": [{"timestamp": _iso(s), "price": 0.5} for s in starts],
                "energyUnit": "kWh",
                "currency": "NOK",
                "resolution": resolution,
            },
        }
    points = [{"timestamp": _iso(s), "maxPowerInKiloWatts": 5.0} for s in starts]
    if kind == "ResourceLPC":
        targets = [
            {"resourceId": r, "locationId": location_id, "meterPointId": RESOURCE_METER_POINT}
            for r in RESOURCES
        ]
        return {
            "payloadType": "ResourceLPC",
            "targets": [t | {"resolution": resolution, "points": points} for t in targets],
        }
    if kind == "LocationLPC":
        target = {"locationId": location_id, "meterPointId": meter_point}
        return {
            "payloadType": "LocationLPC",
            "targets": [target | {"resolution": resolution, "points": points}],
        }
    return {
        "payloadType": "UserEligibility",
        "lastUpdated": _iso(now),
        "addedUsers": ["campaign-user"],
        "removedUsers": [],
    }


METERS_READ = (
    "SELECT COUNT(DISTINCT c.adapter) FROM channels AS c "
    "WHERE c.channel = 'energy' AND EXISTS (SELECT 1 FROM readings AS r WHERE r.channel_id = c.id)"
)


class Feeder:
    """Asks the sandbox for events at random, and remembers what each should give."""

    def __init__(
        self, sandbox: SandboxProcess, rng: random.Random, settings: Settings, db_path: Path
    ) -> None:
        self.sandbox = sandbox
        self.db_path = db_path
        self.rng = rng
        self.settings = settings
        self.planned: list[Planned] = []

    async def run(self) -> None:
        # No event before the meters were first read: its first edge could have no reading
        # before it, and nothing to report would be right.
        while not await asyncio.to_thread(self._meters_read):
            await asyncio.sleep(0.2)
        while True:
            await self.one()
            await asyncio.sleep(self.rng.uniform(0.5, 1.5) * self.settings.event_every)

    def _meters_read(self) -> bool:
        if not self.db_path.exists():
            return False
        try:
            rows = query(self.db_path, METERS_READ)
        except sqlite3.OperationalError:  # not migrated yet
            return False
        return int(rows[0][0]) == len(MODBUS_UNITS) + 1  # and the tank

    async def one(self) -> Planned:
        now = time.time()
        # The first is an LPC event, so that a report (its acknowledgement) is due at once.
        kind = self.rng.choices(list(EXPECTED_KINDS), weights=(4, 3, 3, 1))[0]
        kind = kind if self.planned else "LocationLPC"
        first = math.ceil((now + EVENT_LEAD) / RESOLUTION) * RESOLUTION
        count = self.rng.randint(1, self.settings.max_intervals)
        starts = [first + RESOLUTION * i for i in range(count)]
        pushed = self.rng.random() >= self.settings.unpushed_share
        event = await self.sandbox.create_event(event_payload(kind, starts, now), push=pushed)
        due = starts[-1] + RESOLUTION + self.settings.grace
        last = starts[-1] if kind != "UserEligibility" else None
        planned = Planned(event["id"], kind, EXPECTED_KINDS[kind], due, pushed, last)
        self.planned.append(planned)
        return planned


# -- the campaign ----------------------------------------------------------------------------


class Campaign:
    def __init__(self, settings: Settings, workdir: Path, out: Callable[[str], None]) -> None:
        self.settings = settings
        self.workdir = workdir
        self._out = out
        self._started = time.monotonic()
        self.rng = random.Random(settings.seed)
        self.figures = Figures()
        self.ready_times: list[float] = []
        self.config_path = workdir / "ecgw.toml"
        self.db_path = workdir / "state" / "ecgw.sqlite3"
        self.log = workdir / "gateway.log"
        workdir.mkdir(parents=True, exist_ok=True)

    def out(self, message: str) -> None:
        self._out(f"{time.monotonic() - self._started:6.1f}s  {message}")

    async def run(self) -> Figures:
        started = self._started = time.monotonic()
        async with (
            SandboxProcess.running(self.workdir / "sandbox.log") as sandbox,
            modbus_meters() as modbus_port,
        ):
            port = _free_port()
            config = gateway_config(
                sandbox, self.workdir / "state", port, modbus_port, self.settings.grace
            )
            self.config_path.write_text(toml(config))
            await sandbox.register_webhook(f"http://127.0.0.1:{port}/notify", SECRET)
            feeder = Feeder(sandbox, self.rng, self.settings, self.db_path)
            feeding = asyncio.create_task(feeder.run(), name="feeder")
            try:
                await self._crash_points(sandbox)
                await self._random_kills(sandbox)
            finally:
                feeding.cancel()
                await asyncio.gather(feeding, return_exceptions=True)
            self.out(f"{self.figures.kills} kills done; running until every report is delivered")
            await self._settle(sandbox, feeder.planned)
            await self._measure(sandbox, feeder.planned)
        self.figures.seconds = round(time.monotonic() - started, 1)
        return self.figures

    async def _spawn(self, env: dict[str, str] | None = None) -> GatewayProcess:
        return await GatewayProcess.spawn(self.config_path, self.log, env=env)

    def _note_ready(self, gateway: GatewayProcess) -> None:
        if gateway.ready_after is not None:
            self.ready_times.append(gateway.ready_after)

    async def _crash_points(self, sandbox: SandboxProcess) -> None:
        # ``ecgw run``'s points; the hub's own (``hub.*``, gateway/fleet/hub.py) are reached
        # only by ``ecgw hub run``: tests/test_fleet_hub.py kills the hub at each of them.
        for point in (p for p in crash_points() if not p.startswith("hub.")):
            gateway = await self._spawn({"ECGW_CRASH_AT": point})
            try:
                code = await gateway.wait(self.settings.crash_point_timeout)
                reached = "reached" if code == -9 else f"exited {code}"
            except TimeoutError:
                reached = "not reached"
            await gateway.kill9()
            self._note_ready(gateway)
            self.figures.crash_points[point] = reached
            self.figures.kills += 1
            self.out(f"crash point {point}: {reached}")
            await self._after_kill(sandbox)

    async def _random_kills(self, sandbox: SandboxProcess) -> None:
        for n in range(1, self.settings.kills + 1):
            await self._maybe_fault(sandbox)
            gateway = await self._spawn()
            if self.rng.random() < self.settings.early_kill_share:
                await asyncio.sleep(self.rng.uniform(0.05, 1.0))  # likely while starting
            else:
                try:
                    await gateway.wait_ready(self.settings.ready_timeout)
                except RuntimeError:  # exited: counted just below
                    pass
                except TimeoutError:
                    self.figures.slow_starts += 1
                await asyncio.sleep(self.rng.uniform(0.0, self.settings.max_uptime))
            if not gateway.alive:
                self.figures.unexpected_exits += 1
                self.out(f"kill {n}: the gateway had exited by itself\n{gateway.tail()}")
            await gateway.kill9()
            self._note_ready(gateway)
            self.figures.kills += 1
            self.figures.random_kills += 1
            await self._after_kill(sandbox)
            if n % 10 == 0:
                self.out(f"{n} kills, {self.figures.integrity_ok} integrity ok")

    async def _maybe_fault(self, sandbox: SandboxProcess) -> None:
        if self.rng.random() >= self.settings.fault_share:
            return
        fault = self.rng.choice(FAULTS)
        await sandbox.add_faults(fault)
        name = f"status {fault['status']}" if "status" in fault else next(iter(fault))
        self.figures.faults[name] = self.figures.faults.get(name, 0) + 1

    async def _after_kill(self, sandbox: SandboxProcess) -> None:
        self.figures.integrity_checks += 1
        if not self.db_path.exists():
            self.figures.integrity_ok += 1  # killed before it created the database
            return
        result = await asyncio.to_thread(integrity, self.db_path)
        if result == "ok":
            self.figures.integrity_ok += 1
        else:
            self.out(f"integrity_check after kill {self.figures.kills}: {result}")
        acked = {p["eventId"] for p in await sandbox.pushes() if p["status"] == 200}
        missing = acked - await asyncio.to_thread(self._inbox_ids)
        if missing:
            self.out(f"acknowledged but not in the inbox: {sorted(missing)}")
        self.figures.acked_not_stored = max(self.figures.acked_not_stored, len(missing))

    def _inbox_ids(self) -> set[str]:
        return {row[0] for row in query(self.db_path, "SELECT event_id FROM events")}

    def _arrived_late(self, planned: Iterable[Planned]) -> set[str]:
        """Events that reached the gateway after their last interval began: no report due."""
        arrived = dict(query(self.db_path, "SELECT event_id, received_at FROM events"))
        return {
            p.event_id
            for p in planned
            if p.last_start is not None
            and p.event_id in arrived
            and arrived[p.event_id] > p.last_start
        }

    async def _settle(self, sandbox: SandboxProcess, planned: list[Planned]) -> None:
        """Run undisturbed until every report is due and accepted, then SIGTERM."""
        gateway = await self._spawn()
        await gateway.wait_ready(self.settings.ready_timeout)
        self._note_ready(gateway)
        expected = {(p.event_id, k) for p in planned for k in p.kinds}
        last_due = max((p.due for p in planned), default=time.time())
        deadline = max(last_due, time.time()) + self.settings.settle_timeout
        while time.time() < deadline and gateway.alive:
            accepted = {_report_key(r) for r in await sandbox.reports()}
            if expected <= accepted and not self._unsettled():
                break
            await asyncio.sleep(0.5)
        if not gateway.alive:
            self.figures.unexpected_exits += 1
        self.figures.final_exit = await gateway.terminate()

    def _unsettled(self) -> int:
        rows = query(
            self.db_path,
            "SELECT COUNT(*) FROM outbox WHERE state IN (?, ?)",
            ("pending", "in_flight"),
        )
        return int(rows[0][0])

    async def _measure(self, sandbox: SandboxProcess, planned: list[Planned]) -> None:
        fig = self.figures
        fig.events = len(planned)
        fig.events_polled_only = sum(not p.pushed for p in planned)
        fig.events_missing = len({p.event_id for p in planned} - self._inbox_ids())
        late = self._arrived_late(planned)
        fig.events_late = len(late)
        planned = [replace(p, kinds=()) if p.event_id in late else p for p in planned]
        reports = await sandbox.reports()
        fig.post_attempts = len(await sandbox.attempts())
        tally = tally_reports(planned, reports)
        fig.reports_expected = tally["expected"]
        fig.reports_accepted = tally["accepted"]
        fig.lost = len(tally["lost"])
        fig.lost_detail = [f"{e} {k}: {self._why(e, k)}" for e, k in sorted(tally["lost"])][:20]
        fig.lost_built_early = sum([await self._has_data_now(e, k) for e, k in tally["lost"]])
        fig.duplicates_accepted = tally["duplicates_accepted"]
        fig.unexpected_reports = tally["unexpected"]
        fig.repeat_posts = tally["repeat_posts"]
        states = Counter(row[0] for row in query(self.db_path, "SELECT state FROM outbox"))
        fig.stuck = states["pending"] + states["in_flight"]
        fig.dead = states["dead"]
        fig.integrity_checks += 1
        fig.integrity_ok += integrity(self.db_path) == "ok"
        fig.ready_samples = len(self.ready_times)
        if self.ready_times:
            fig.ready_worst_s = round(max(self.ready_times), 3)
            fig.ready_median_s = round(statistics.median(self.ready_times), 3)

    async def _has_data_now(self, event_id: str, kind: str) -> bool:
        """Would the report be built now, from the readings stored since (``report preview``)?

        True marks a report built too early: its job found no data at the time, though the
        meters' readings that decide it arrived moments later (after a restart).
        """
        result = await asyncio.to_thread(
            ecgw, "report", "preview", event_id, config=self.config_path
        )
        if result.returncode != 0:
            return False
        previews = json.loads(result.stdout)["reports"]
        return any(p["kind"] == kind and p["report"] is not None for p in previews)

    def _why(self, event_id: str, kind: str) -> str:
        """What the gateway's database says about a report that never arrived."""
        plan = query(
            self.db_path, "SELECT plan_state, plan_note FROM events WHERE event_id = ?", (event_id,)
        )
        job = query(
            self.db_path,
            "SELECT outcome, note FROM report_jobs WHERE event_id = ? AND kind = ?",
            (event_id, kind),
        )
        row = query(
            self.db_path,
            "SELECT state, last_error FROM outbox WHERE event_id = ? AND kind = ?",
            (event_id, kind),
        )
        return f"event {plan or 'not in inbox'}, job {job or '-'}, outbox {row or '-'}"


def _report_key(report: dict[str, Any]) -> tuple[str, str]:
    """(event id, report kind) of an accepted report body."""
    body = report["body"]
    return str(body.get("eventId")), str(body["payloads"][0]["payloadType"])


def tally_reports(planned: Iterable[Planned], reports: list[dict[str, Any]]) -> dict[str, Any]:
    """Count, from the sandbox's list of accepted reports, what the figures say.

    A report is *fresh* when its Idempotency-Key was not accepted before; a repeat otherwise.
    Two fresh reports for one (event, kind) are a duplicate accepted.
    """
    expected = {(p.event_id, k) for p in planned for k in p.kinds}
    keys: dict[tuple[str, str], set[str]] = {}
    repeats = 0
    for report in reports:
        if report["duplicate"]:
            repeats += 1
            continue
        keys.setdefault(_report_key(report), set()).add(report["idempotencyKey"])
    return {
        "expected": len(expected),
        "accepted": len(expected & keys.keys()),
        "lost": expected - keys.keys(),
        "duplicates_accepted": sum(len(k) - 1 for k in keys.values()),
        "unexpected": len(keys.keys() - expected),
        "repeat_posts": repeats,
    }


# -- output ----------------------------------------------------------------------------------


def summary(fig: Figures) -> str:
    points = ", ".join(f"{name} {state}" for name, state in fig.crash_points.items())
    faults = ", ".join(f"{name} {n}" for name, n in sorted(fig.faults.items())) or "none"
    rows = [
        (
            "kills (kill -9)",
            f"{fig.kills}: {len(fig.crash_points)} named, {fig.random_kills} random",
        ),
        ("named crash points", points),
        ("events (polled only)", f"{fig.events} ({fig.events_polled_only})"),
        ("events missing from inbox", fig.events_missing),
        ("arrived too late (no report due)", fig.events_late),
        ("webhook 200 but not stored", fig.acked_not_stored),
        ("reports expected / accepted", f"{fig.reports_expected} / {fig.reports_accepted}"),
        (
            "reports lost",
            f"{fig.lost} (built before the meters read again: {fig.lost_built_early})",
        ),
        ("duplicates accepted", fig.duplicates_accepted),
        ("reports nobody asked for", fig.unexpected_reports),
        ("repeat POSTs (same key)", fig.repeat_posts),
        ("POST /reports attempts", fig.post_attempts),
        ("faults injected", faults),
        ("stuck rows (pending/in_flight)", fig.stuck),
        ("dead rows", fig.dead),
        ("integrity_check ok", f"{fig.integrity_ok} / {fig.integrity_checks}"),
        ("died by itself", fig.unexpected_exits),
        ("not ready within 60 s", fig.slow_starts),
        (
            "restart-to-ready worst",
            f"{fig.ready_worst_s:.2f} s (median {fig.ready_median_s:.2f} s,"
            f" {fig.ready_samples} starts)",
        ),
        ("final SIGTERM exit", fig.final_exit),
        ("campaign time", f"{fig.seconds:.0f} s"),
    ]
    width = max(len(name) for name, _ in rows)
    lines = [f"{name:<{width}}  {value}" for name, value in rows]
    lines += [f"lost: {detail}" for detail in fig.lost_detail]
    return "\n".join(lines)


async def run_campaign(
    settings: Settings, workdir: Path, out: Callable[[str], None] = print
) -> Figures:
    return await Campaign(settings, workdir, out).run()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kills", type=int, default=100, help="random kills (default 100)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--grace", type=float, default=1.0, help="reporting.grace, s (default 1)")
    parser.add_argument("--workdir", type=Path, help="keep logs and database here")
    args = parser.parse_args()
    settings = Settings(kills=args.kills, seed=args.seed, grace=args.grace)
    with contextlib.ExitStack() as stack:
        workdir = args.workdir or Path(
            stack.enter_context(tempfile.TemporaryDirectory(prefix="ecgw-campaign-"))
        )
        workdir.mkdir(parents=True, exist_ok=True)
        # This process serves the Modbus meters: pymodbus's complaints about the connections
        # the kills cut go to a file, not between the figures.
        logging.basicConfig(filename=workdir / "campaign.log", level=logging.WARNING)
        figures = asyncio.run(run_campaign(settings, workdir))
    print(summary(figures))
    record = dataclasses.asdict(figures) | {"passed": figures.passed, "seed": args.seed}
    print(json.dumps(record, sort_keys=True))
    return 0 if figures.passed else 1


if __name__ == "__main__":
    sys.exit(main())
