"""What the report scheduler asks before it plans an event: may the site commit to its
LPC targets (:class:`~gateway.control.decider.Decider`), and how does each resource
take part in a PriceCurve (a strategy's schedule, stored once per event and resource).

For every target resource of a PriceCurve that the config names at the event's
location, the participation is the operator's override for the event, else the
resource's (``participation``, default ``shift`` with a control and a need, else
``report``). The strategy run is the one registered under that name in the entry-point
group ``gateway.strategies`` (or, for ``shift``, the resource's own ``strategy``),
contained (:func:`~gateway.control.strategies.run_strategy`): a strategy that fails
leaves the resource off the schedule (nothing switched) with the reason in its note.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Collection, Mapping

import structlog

from gateway import wire
from gateway.config import Config, ResourceConfig
from gateway.config_rules import parse_window
from gateway.control.decider import Decider
from gateway.control.plan_view import event_window
from gateway.control.shift import Slot
from gateway.control.strategies import (
    Schedule,
    Strategy,
    StrategyEvent,
    StrategyResource,
    run_strategy,
)
from gateway.store.batch import WriteBatch
from gateway.store.control import ControlStore, ScheduleRow
from gateway.timeutil import parse_timespan

__all__ = ["Participant", "slots_of"]

log = structlog.get_logger("gateway.control")


def _log_scheduled(stored: ScheduleRow) -> None:
    log.info(
        "control.scheduled",
        event_id=stored.event_id,
        resource=stored.resource_id,
        participation=stored.participation,
        runs=len(stored.runs),
        note=stored.note,
    )


def slots_of(curve: wire.PriceCurve) -> tuple[Slot, ...]:
    """The curve's points as slots, sorted (ValueError: its resolution cannot be read)."""
    step = parse_timespan(curve.price_curve_delta.resolution)
    slots = {
        (p.timestamp.timestamp(), (p.timestamp + step).timestamp(), p.price)
        for p in curve.price_curve_delta.points
    }
    return tuple(
        Slot(start, end, price)
        for start, end, price in sorted(slots, key=lambda s: (s[0], s[1], s[2] or 0.0))
    )


class Participant:
    def __init__(
        self,
        config: Config,
        store: ControlStore,
        decider: Decider,
        strategies: Mapping[str, Strategy],
    ) -> None:
        self._config = config
        self._store = store
        self._decider = decider
        self._strategies = dict(strategies)
        self._listeners: list[Callable[[], None]] = []
        self._resources = {r.resource_id: r for r in config.resources}

    def on_change(self, listener: Callable[[], None]) -> None:
        """Call ``listener`` when a decision or a schedule was stored."""
        self._listeners.append(listener)

    def _changed(self) -> None:
        for listener in self._listeners:
            listener()

    async def lpc_decisions(
        self, event_id: str, payload: wire.LocationLPC | wire.ResourceLPC, *, now: float
    ) -> dict[str, tuple[str, str]]:
        """Target key -> (decision, reason), taken now or earlier (they never change)."""
        rows = await self._decider.decide(event_id, payload, now=now)
        self._changed()
        return {r.target: (r.decision, r.reason) for r in rows}

    async def schedule(
        self,
        event_id: str,
        curve: wire.PriceCurve,
        *,
        now: float,
        batch: WriteBatch | None = None,
        scheduled: Collection[str] | None = None,
        overrides: Mapping[str, str] | None = None,
    ) -> None:
        """A schedule for every configured target resource that has none yet; stored at
        once, or with ``batch``'s commit (the listeners are called after it).

        ``scheduled`` (the resources that have a schedule) and ``overrides`` (the
        operator's, for this event) are read here unless the caller has read them."""
        if scheduled is None:
            scheduled = {s.resource_id for s in await self._store.schedules(event_id)}
        have = scheduled
        todo = [
            res
            for t in curve.targets
            if (res := self._resources.get(t.resource_id)) is not None
            and res.location_id == t.location_id
            and res.resource_id not in have
        ]
        if not todo:
            return
        window = event_window(curve)
        try:
            slots = slots_of(curve)
        except ValueError:
            return  # the planner says why the event gets no report
        if window is None or not slots:
            return
        if overrides is None:
            overrides = await self._store.overrides(event_id)
        event = StrategyEvent(event_id, slots)
        for res in {r.resource_id: r for r in todo}.values():
            participation = overrides.get(res.resource_id, res.takes_part)
            name = res.strategy if participation == "shift" and res.strategy else participation
            schedule = self._run(name, event, res, participation, now)
            # A failed strategy's empty schedule, or one that could place nothing (no need, no
            # allowed time in the window), must not read as "shift: off all window": the
            # controller would switch the load off. It is left alone, as for ``report``.
            steered = participation
            if participation == "shift" and (schedule.failed or not schedule.runs):
                steered = "report"
                if not schedule.failed:
                    schedule = Schedule((), f"{schedule.note}; nothing placed: left alone")
            row = ScheduleRow(
                event_id=event_id,
                resource_id=res.resource_id,
                participation=steered,
                strategy=name,
                runs=tuple((r.start, r.end) for r in schedule.runs),
                window=window,
                note=schedule.note,
                at=now,
            )
            if batch is None:
                _log_scheduled(await self._store.put_schedule(row))
            else:  # one per event and resource: nothing else writes it before the commit
                batch.add(functools.partial(ControlStore.put_schedule_in, row=row))
                batch.after_commit(functools.partial(_log_scheduled, row))
        if batch is None:
            self._changed()
        else:
            batch.after_commit(self._changed)

    def _run(
        self, name: str, event: StrategyEvent, res: ResourceConfig, participation: str, now: float
    ) -> Schedule:
        fn = self._strategies.get(name)
        if fn is None:
            return Schedule((), f"strategy {name!r} is not installed: nothing switched", True)
        resource = StrategyResource(
            resource_id=res.resource_id,
            rated_kw=res.rated_kw,
            need_kwh=res.need_kwh,
            allowed=tuple(parse_window(w) for w in res.allowed),
            participation=participation,
        )
        schedule = run_strategy(fn, event, resource, now, name=name)
        if participation != "shift" and schedule.runs:  # only a shift resource is switched
            return Schedule((), schedule.note, schedule.failed)
        return schedule
