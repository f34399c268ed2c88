"""Attack on issue 12's batched scheduler (item 3): a release from quarantine lost.

A batch reads its events (and their job outcomes) once, advances them one after another
(building reports: seconds for 250 events), then writes every plan state with an
unconditional ``UPDATE``. ``ecgw events replan`` committed in that window (it forgets the
quarantined job and puts the event back to ``new``) was overwritten: the event the batch
had read as ``planned`` with its only job quarantined was set ``done``, its job record was
gone, and the report was never built.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

from gateway import wire
from gateway.config import Config
from gateway.control.decider import Decider
from gateway.control.strategies import load_strategies
from gateway.metering.latest import LatestReadings
from gateway.reports.clock import ServerClock
from gateway.reports.planner import ENERGY_USAGE
from gateway.reports.scheduler import ReportJobs, ReportScheduler
from gateway.store.batch import WriteBatch
from gateway.store.control import ControlStore
from gateway.store.database import open_database
from gateway.store.outbox import Outbox
from gateway.store.readings import ReadingsStore
from tests.test_report_what_was_done import (
    QUARTER,
    RETRY,
    T0,
    Clock,
    curve,
    store_event,
    store_readings,
)
from tests.test_scheduler_due import BEFORE, DUE, Counted, config, state_of

__all__ = ["config"]  # the fixture


class ReleasingMeanwhile(Counted):
    """The real participant; while the batch is being built (it is asked about ``first``),
    the operator releases ``second`` from another connection, as ``ecgw events replan``."""

    def __init__(self, *args: Any, path: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.path = path
        self.released = False

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
        await super().schedule(
            event_id, curve, now=now, batch=batch, scheduled=scheduled, overrides=overrides
        )
        if event_id == "a-first" and not self.released:
            async with open_database(self.path) as cli:
                self.released = await ReportJobs(cli).release("b-second")


async def test_a_release_during_a_batch_is_not_overwritten(config: Config) -> None:
    clock = Clock(DUE + 600)
    async with open_database(config.db_path) as db:
        await store_event(db, "a-first", curve("hwt-1"), at=BEFORE)
        await store_event(db, "b-second", curve("hwt-1"), at=BEFORE)
        await store_readings(db, "tank", T0 - 60, T0 + 3 * QUARTER)
        async with db.write() as conn:  # b-second: planned, its report quarantined earlier
            await conn.execute(
                "UPDATE events SET plan_state = 'planned' WHERE event_id = 'b-second'"
            )
            await ReportJobs.record_in(
                conn, "b-second", ENERGY_USAGE, "invalid", "quarantined: a bug", now=BEFORE
            )
        store = ControlStore(db)
        readings = ReadingsStore(db)
        decider = Decider(config, store, readings, LatestReadings(clock=clock), clock=clock)
        participant = ReleasingMeanwhile(
            config, store, decider, load_strategies()[0], path=config.db_path
        )
        sched = ReportScheduler(
            db=db,
            readings=readings,
            config=config,
            server_clock=ServerClock(clock),
            on_queued=lambda: None,
            clock=clock,
            retry_every=RETRY,
            participant=participant,
        )
        for step in range(4):
            clock.now = DUE + 600 + step
            await sched.pass_once()
        assert participant.released
        kinds = {(r.event_id, r.kind) for r in await Outbox(db).items()}
        assert ("b-second", ENERGY_USAGE) in kinds, (kinds, await state_of(db, "b-second"))
