"""The controller: holds acknowledged caps and runs shift schedules, from what devices report.

Every ``TICK`` (and at once when a location meter's power arrives, a decision is
stored, or a cap or schedule boundary comes), for each location meter that has a
cap in force (from ``lpc.lead`` before a capped interval to its end), a
resource cap, a load it holds off, or a shift schedule running:

1. it reads the location's latest power (:class:`~gateway.metering.latest.LatestReadings`,
   filled by the readings sink after each commit) and asks each controllable
   resource's adapter for its switch state;
2. the pure :func:`gateway.control.step.step` decides which loads go off (lowest
   ``priority`` first) to keep the location at or below ``cap - margin_kw``, which
   held loads may come back on (hysteresis: ``margin_kw``), and the failsafe: the
   location's power unread for ``lpc.failsafe`` during a cap switches every
   controllable load behind it off until readings return;
3. a resource under an acknowledged ``ResourceLPC`` cap it could exceed is off for
   the cap's intervals; a resource with a shift schedule is on in its runs and off
   in the rest of its event's window (never switched on while a location cap is in
   force: then only the cap's own rules may switch a load on);
4. each command goes to the :class:`~gateway.control.commands.Commander`
   (recorded, confirmed by the device, retried), one at a time per resource. A command
   that failed is not sent again before a backoff (5 s doubling to 5 min) unless the
   controller wants the other value; a dry-run command is recorded once, not every step.

What the controller holds comes from the database only: acknowledged decisions
(``lpc_decisions``), stored schedules, and which loads it switched off (the
latest command per resource, ``commands``). A restart (kill -9 included) carries
on with the rest of a window: nothing it needs lives only in memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import structlog

from gateway.backoff import Backoff
from gateway.config import Config, ResourceConfig
from gateway.control.commands import Commander, Devices, Outcome
from gateway.control.sites import Site, power_now, sites_of
from gateway.control.step import Command, Load, step
from gateway.control.step import Reading as MeterReading
from gateway.errors import describe
from gateway.metering.latest import LatestReadings
from gateway.store.control import ControlStore, DecisionRow, ScheduleRow
from gateway.supervise import is_cancellation

__all__ = ["Controller", "HELD_REASONS"]

log = structlog.get_logger("gateway.control")

TICK = 0.5  # seconds between steps at most while anything is held or scheduled
IDLE_TICK = 5.0  # seconds between looks when nothing is
REFRESH = 5.0  # seconds between re-reading decisions and schedules from the database
STATE_TIMEOUT = 0.4  # seconds one adapter's state() may take inside a step
RETRY_FIRST, RETRY_MAX = 5.0, 300.0  # a failed command is sent again after this backoff
HELD_REASONS = ("cap", "lpc", "failsafe", "shift")
"""A command whose reason starts with one of these switched a load off for the controller:
the load is the controller's to switch back on."""


@dataclass(frozen=True, slots=True)
class _Held:
    reason: str
    event_id: str | None


class Controller:
    def __init__(
        self,
        config: Config,
        store: ControlStore,
        commander: Commander,
        latest: LatestReadings,
        devices: Devices,
        *,
        states: dict[str, bool | None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._config = config
        self._store = store
        self._commander = commander
        self._latest = latest
        self._devices = devices
        self._clock = clock
        self._sites = [s for s in sites_of(config) if s.resources]
        self._meters = {
            (s.location.adapter, s.location.power_channel)
            for s in self._sites
            if s.location is not None
        }
        self._held: dict[str, _Held] = {}
        self._pending: dict[str, asyncio.Task[None]] = {}
        self._last: dict[str, tuple[bool, Outcome, float]] = {}  # on, outcome, retry not before
        self._backoffs: dict[str, Backoff] = {}
        self._returned: set[tuple[str, str]] = set()  # (resource, cap event) let back on
        self._stay_off: set[tuple[str, str]] = set()  # ... that then had to go off again
        self._caps: list[DecisionRow] = []
        self._schedules: list[ScheduleRow] = []
        self._event_of: dict[str, str] = {}  # resource id -> the event of its next command
        self._refreshed_at = -math.inf
        self._wake = asyncio.Event()
        self.states: dict[str, bool | None] = {} if states is None else states
        """Each controllable resource's switch state as last reported (shared with the
        decider, for the base load now)."""
        latest.listen(self._reading)

    def wake(self, *_: object) -> None:
        """Something changed (a decision, a schedule): look again now."""
        self._refreshed_at = -math.inf
        self._wake.set()

    def _reading(self, adapter: str, channel: str) -> None:
        if (adapter, channel) in self._meters:
            self._wake.set()

    async def run(self) -> None:
        if not self._sites:
            log.info("control.nothing_to_control")
            await asyncio.Event().wait()
        failed = await self._store.interrupted(now=self._clock())
        if failed:
            log.warning("control.interrupted_commands", count=failed)
        await self._load_held()
        try:
            while True:
                self._wake.clear()
                busy = await self.tick()
                timeout = TICK if busy else IDLE_TICK
                timeout = min(timeout, max(self._next_boundary() - self._clock(), 0.0))
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(timeout):
                        await self._wake.wait()
        finally:
            for task in self._pending.values():
                task.cancel()
            if self._pending:
                await asyncio.wait(self._pending.values(), timeout=2.0)

    async def _load_held(self) -> None:
        ids = [r.resource_id for s in self._sites for r in s.resources]
        for resource_id, row in (await self._store.last_commands(ids)).items():
            if row.value == 0 and row.reason.startswith(HELD_REASONS):
                self._held[resource_id] = _Held(row.reason, row.event_id)
        if self._held:
            log.info("control.holding", resources=sorted(self._held))

    async def _refresh(self, now: float) -> None:
        if now - self._refreshed_at < REFRESH:
            return
        self._refreshed_at = now
        lead = self._config.lpc.lead
        self._caps = await self._store.held_caps(now=now - lead)
        self._schedules = await self._store.schedules_open(now=now)

    def _next_boundary(self) -> float:
        """The next moment a cap or a schedule run starts or ends (or +inf)."""
        now, lead = self._clock(), self._config.lpc.lead
        edges = [t for d in self._caps for s, e, _ in d.caps for t in (s - lead, e)]
        edges += [t for s in self._schedules for a, b in s.runs for t in (a, b)]
        edges += [t for s in self._schedules for t in s.window]
        return min((t for t in edges if t > now), default=math.inf)

    async def tick(self) -> bool:
        """One step for every location; True if anything was held or scheduled."""
        now = self._clock()
        await self._refresh(now)
        busy = False
        for site in self._sites:
            try:
                busy |= await self._site_step(site, now)
            except Exception as exc:  # one location's failure must not stop the others
                if is_cancellation(exc):
                    raise
                where = (
                    site.location.location_id if site.location else site.resources[0].location_id
                )
                log.error("control.step_failed", location=where, error=describe(exc))
        return busy

    # --- one location ---------------------------------------------------------------------------

    def _limit(self, site: Site, now: float) -> tuple[float | None, str | None]:
        """``cap - margin`` in force at the location now (or within the lead), and its event."""
        loc, lead = site.location, self._config.lpc.lead
        if loc is None:
            return None, None
        found: list[tuple[float, str]] = []
        for d in self._caps:
            if d.kind != "location" or (d.location_id, d.meter_point_id) != (
                loc.location_id,
                loc.meter_point_id,
            ):
                continue
            found += [(cap, d.event_id) for s, e, cap in d.caps if s - lead <= now < e]
        if not found:
            return None, None
        cap, event_id = min(found)
        return cap - self._config.lpc.margin_kw, event_id

    def _resource_cap(self, res: ResourceConfig, now: float) -> tuple[float, str] | None:
        lead = self._config.lpc.lead
        found = [
            (cap, d.event_id)
            for d in self._caps
            if d.kind == "resource" and d.resource_id == res.resource_id
            for s, e, cap in d.caps
            if s - lead <= now < e
        ]
        return min(found) if found else None

    def _shift_wish(self, res: ResourceConfig, now: float) -> tuple[bool, str] | None:
        """(on?, event id) while one of the resource's shift schedules is in its window."""
        for sched in self._schedules:
            if sched.resource_id != res.resource_id or sched.participation != "shift":
                continue
            if sched.window[0] <= now < sched.window[1]:
                return any(a <= now < b for a, b in sched.runs), sched.event_id
        return None

    async def _site_step(self, site: Site, now: float) -> bool:
        limit, cap_event = self._limit(site, now)
        res_caps = {r.resource_id: self._resource_cap(r, now) for r in site.resources}
        wishes = {r.resource_id: self._shift_wish(r, now) for r in site.resources}
        held_here = [r for r in site.resources if r.resource_id in self._held]
        # Read even when idle: the decider counts only on switches that answer.
        states = await self._states(site.resources)
        self.states.update(states)
        if (
            limit is None
            and not any(res_caps.values())
            and not any(wishes.values())
            and not held_here
        ):
            return False
        loc = site.location
        latest = None if loc is None else self._latest.get(loc.adapter, loc.power_channel)
        meter = MeterReading(
            power_kw=None if latest is None else latest[1],
            age=None if latest is None else max(now - latest[0], 0.0),
        )
        # Loads the cap's own rules may switch back on: held for the cap, not kept off by a
        # resource cap or a shift schedule.
        kept_off = {
            rid
            for rid in res_caps
            if (res_caps[rid] is not None) or ((wish := wishes[rid]) is not None and not wish[0])
        }
        loads = [
            Load(
                resource_id=r.resource_id,
                priority=r.priority,
                rated_kw=r.rated_kw or 0.0,
                on=states.get(r.resource_id),
                measured_kw=_own_power(self._latest, r, now, self._config),
                held=r.resource_id in self._held
                and r.resource_id not in kept_off
                and (r.resource_id, cap_event) not in self._stay_off,
            )
            for r in site.resources
        ]
        commands = list(
            step(
                limit_kw=limit,
                meter=meter,
                failsafe=self._config.lpc.failsafe,
                loads=loads,
                hysteresis_kw=self._config.lpc.margin_kw,
            )
        )
        chosen = {c.resource_id for c in commands}
        by_id = {r.resource_id: r for r in site.resources}
        for rid, rc in res_caps.items():
            res = by_id[rid]
            if rc is not None and rid not in chosen and states.get(rid) is not False:
                cap, event_id = rc
                draws = power_now(self._latest, res, states.get(rid), now, self._config)
                if cap < (draws if draws is not None else res.rated_kw or 0.0) or cap < (
                    res.rated_kw or 0.0
                ):
                    commands.append(Command(rid, False, f"lpc: resource cap {cap:g} kW"))
                    chosen.add(rid)
                    self._event_of[rid] = event_id
        for rid, wish in wishes.items():
            if wish is None or rid in chosen or res_caps.get(rid) is not None:
                continue
            on, event_id = wish
            state = states.get(rid)
            if not on and state is not False:
                commands.append(Command(rid, False, "shift: outside the paid hours"))
            elif on and state is False and rid in self._held and limit is None:
                commands.append(Command(rid, True, "shift: paid hours"))
            else:
                continue
            chosen.add(rid)
            self._event_of[rid] = event_id
        for cmd in commands:
            self._note_return(cmd, limit, cap_event)
            chosen_event: str | None = self._event_of.pop(cmd.resource_id, None) or cap_event
            if chosen_event is None and cmd.resource_id in self._held:
                chosen_event = self._held[cmd.resource_id].event_id
            self._send(by_id[cmd.resource_id], cmd, chosen_event)
        return True

    def _note_return(self, cmd: Command, limit: float | None, cap_event: str | None) -> None:
        """A load let back on under a cap that had to go off again under the same cap draws
        more than its ``rated_kw`` says: it stays off until that cap is over (no switching
        back and forth, each time above the cap)."""
        if limit is None or cap_event is None:
            return
        key = (cmd.resource_id, cap_event)
        if cmd.on:
            self._returned.add(key)
        elif key in self._returned:
            self._stay_off.add(key)
            log.warning(
                "control.load_stays_off",
                resource=cmd.resource_id,
                event_id=cap_event,
                reason="it drew more than its rated_kw when let back on under the cap",
            )

    async def _states(self, resources: Sequence[ResourceConfig]) -> dict[str, bool | None]:
        async def one(res: ResourceConfig) -> bool | None:
            assert res.control is not None
            try:
                device = self._devices.controllable(res.adapter)
                async with asyncio.timeout(STATE_TIMEOUT):
                    state = await device.state(res.control)
            except BaseException as exc:  # plugin code, or the adapter is not running
                if is_cancellation(exc):
                    raise
                return None
            value = getattr(state, "value", None)
            if not isinstance(value, int | float) or not math.isfinite(value):
                return None
            return value >= 0.5

        found = await asyncio.gather(*(one(r) for r in resources))
        return {r.resource_id: on for r, on in zip(resources, found, strict=True)}

    def _send(self, res: ResourceConfig, cmd: Command, event_id: str | None) -> None:
        running = self._pending.get(res.resource_id)
        if running is not None and not running.done():
            return  # one command at a time per resource; the next step looks again
        last = self._last.get(res.resource_id)
        if last is not None and last[0] == cmd.on:
            if last[1] == "dry_run":
                return  # the same command computed again: recorded once is enough
            if last[1] == "failed" and self._clock() < last[2]:
                return  # a device that did not obey: the same command again after a backoff
        assert res.control is not None
        if not cmd.on:
            self._held[res.resource_id] = _Held(cmd.reason, event_id)
        log.info(
            "control.command",
            resource=res.resource_id,
            on=cmd.on,
            reason=cmd.reason,
            event_id=event_id,
        )
        task = asyncio.create_task(
            self._command(res, cmd, event_id), name=f"control:{res.resource_id}"
        )
        self._pending[res.resource_id] = task

    async def _command(self, res: ResourceConfig, cmd: Command, event_id: str | None) -> None:
        assert res.control is not None
        try:
            outcome = await self._commander.command(
                adapter=res.adapter,
                control=res.control,
                value=1.0 if cmd.on else 0.0,
                reason=cmd.reason,
                event_id=event_id,
                resource_id=res.resource_id,
            )
        except Exception as exc:  # the database: the next step tries again
            log.error("control.command_failed", resource=res.resource_id, error=describe(exc))
            return
        if cmd.on and outcome == "confirmed":
            self._held.pop(res.resource_id, None)
        backoff = self._backoffs.setdefault(res.resource_id, Backoff(RETRY_FIRST, RETRY_MAX))
        retry_at = self._clock()
        if outcome == "failed":
            retry_at += backoff.next()
        else:
            backoff.reset()
        self._last[res.resource_id] = (cmd.on, outcome, retry_at)
        self._wake.set()


def _own_power(
    latest: LatestReadings, res: ResourceConfig, now: float, config: Config
) -> float | None:
    """The resource's own fresh power reading, if its adapter has a power channel."""
    return power_now(latest, res, None, now, config)
