"""With limits, energy read through the store equals the pure core on every reading.

The store fetches only the readings that decide each interval (edge brackets and the
neighbourhoods of drops); plausibility must not depend on which readings were fetched.
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.metering.energy import Energies, Limits, counter_intervals
from gateway.plugin import Channel
from gateway.store.database import open_database
from gateway.store.readings import ReadingsStore
from tests.test_readings import (
    ADAPTER,
    COUNTER,
    WRAPPING,
    Sample,
    assert_same_energy,
    counter_series,
    whole_minute_intervals,
    write_in_parts,
)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from([COUNTER, WRAPPING]).flatmap(
        lambda ch: st.tuples(st.just(ch), counter_series(ch.wrap))
    ),
    st.sampled_from([0.05, 5.0, 500.0]),
    st.data(),
)
def test_counter_limits_do_not_depend_on_what_the_store_fetched(
    channel_series: tuple[Channel, list[Sample]], max_kw: float, data: st.DataObject
) -> None:
    channel, samples = channel_series
    gap = float(data.draw(st.sampled_from([20, 60, 150])))
    intervals = data.draw(whole_minute_intervals(samples))
    limits = Limits(max_kw)

    async def run(path: Path) -> Energies:
        async with open_database(path) as db:
            await write_in_parts(db, channel, samples, 1)
            store = ReadingsStore(db)
            return await store.interval_energy(
                ADAPTER, channel.name, intervals, max_gap=gap, limits=limits
            )

    with tempfile.TemporaryDirectory() as tmp:
        got = asyncio.run(run(Path(tmp) / "db.sqlite3"))
    want = counter_intervals(
        sorted(samples),
        intervals,
        to_kwh=channel.unit.to_kwh,
        wrap=channel.wrap,
        max_gap=gap,
        limits=limits,
    )
    assert_same_energy(got, want)
    for (start, end), energy in zip(intervals, got, strict=True):
        assert energy is None or limits.allows(energy.kwh, end - start)
