"""The readings store: group commit, drop flags, sparse reads, compaction, retention, restart.

Real SQLite files under tmp_path. Energy is always checked against the pure functions
of gateway.metering.energy run over *every* stored sample.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import sqlite3
import tempfile
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.errors import StoreError
from gateway.metering.energy import IntervalEnergy, counter_intervals, power_intervals
from gateway.plugin import Channel, ChannelKind, Reading, Unit
from gateway.store.database import Database, open_database
from gateway.store.readings import ReadingsStore, Series, choose_series
from gateway.store.readings_compaction import CompactionState
from gateway.store.schema import MIGRATIONS

T0 = 1_700_000_040.0  # a whole minute
ADAPTER = "meter"
COUNTER = Channel("import", ChannelKind.ENERGY, Unit.WH)
WRAPPING = Channel("register", ChannelKind.ENERGY, Unit.WH, wrap=65536.0)
POWER = Channel("power", ChannelKind.POWER, Unit.W)
CHANNELS = [COUNTER, WRAPPING, POWER]
HOUR = 3600.0
DAY = 86400.0

Sample = tuple[float, float]


@contextlib.asynccontextmanager
async def running(db: Database, **options: float) -> AsyncIterator[ReadingsStore]:
    store = ReadingsStore(db, **options)  # type: ignore[arg-type]
    await store.register_channels(ADAPTER, CHANNELS)
    async with store.writer():
        yield store


def readings(channel: Channel, samples: Sequence[Sample]) -> list[Reading]:
    return [Reading(channel.name, at, value) for at, value in samples]


async def stored(db: Database, channel: Channel) -> list[tuple[float, float, int]]:
    rows = await db.fetchall(
        "SELECT at, value, dropped FROM readings JOIN channels ON channels.id = channel_id "
        "WHERE channel = ? ORDER BY at",
        (channel.name,),
    )
    return [(r[0], r[1], r[2]) for r in rows]


def full_energy(
    channel: Channel,
    samples: Sequence[Sample],
    intervals: Sequence[tuple[float, float]],
    gap: float,
) -> list[IntervalEnergy | None]:
    samples = sorted(samples)
    if channel.kind is ChannelKind.ENERGY:
        return counter_intervals(
            samples, intervals, to_kwh=channel.unit.to_kwh, wrap=channel.wrap, max_gap=gap
        )
    return power_intervals(samples, intervals, to_kw=channel.unit.to_kwh, max_gap=gap)


def assert_same_energy(
    got: Sequence[IntervalEnergy | None], want: Sequence[IntervalEnergy | None]
) -> None:
    assert len(got) == len(want)
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        assert (g is None) == (w is None), (i, g, w)
        if g is not None and w is not None:
            assert (g.start, g.end) == (w.start, w.end)
            assert math.isclose(g.kwh, w.kwh, rel_tol=1e-9, abs_tol=1e-12), (i, g, w)


def ten_second_day(resets: Sequence[int] = ()) -> list[Sample]:
    """24 h of a counter read every 10 s, ~1 kW, reset to 0 at the given sample indices."""
    samples, value = [], 5_000.0
    for k in range(8640):
        value = 0.0 if k in resets else value + 2.7 + (k % 7) * 0.1
        samples.append((T0 + 10.0 * k, value))
    return samples


def quarter_hours(start: float, count: int) -> list[tuple[float, float]]:
    return [(start + 900.0 * i, start + 900.0 * (i + 1)) for i in range(count)]


# --- schema and channels ------------------------------------------------------------------------


async def test_migration_creates_the_readings_tables(db: Database) -> None:
    assert (await db.fetchone("PRAGMA user_version"))[0] == len(MIGRATIONS) >= 2  # type: ignore[index]
    names = {r[0] for r in await db.fetchall("SELECT name FROM sqlite_master")}
    assert {"channels", "readings", "readings_minute", "compaction", "readings_dropped"} <= names


async def test_register_channels_is_idempotent_and_updates(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite3"
    async with open_database(path) as db:
        store = ReadingsStore(db)
        await store.register_channels(ADAPTER, CHANNELS)
        first = await store.channel((ADAPTER, COUNTER.name))
        await store.register_channels(
            ADAPTER, [Channel(COUNTER.name, ChannelKind.ENERGY, Unit.KWH)]
        )
        again = await store.channel((ADAPTER, COUNTER.name))
        assert again.id == first.id and again.unit is Unit.KWH
        await store.register_channels("other", [COUNTER])
        assert (await store.channel(("other", COUNTER.name))).id != first.id
    async with open_database(path) as db:  # a new store finds them without registering
        store = ReadingsStore(db)
        info = await store.channel(first.id)
        assert (info.adapter, info.channel, info.unit) == (ADAPTER, COUNTER.name, Unit.KWH)
        with pytest.raises(KeyError):
            await store.channel((ADAPTER, "nope"))


# --- the writer ---------------------------------------------------------------------------------


async def test_write_returns_only_after_commit(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite3"
    async with open_database(path) as db:
        store = ReadingsStore(db, linger=0.002)
        channels = [Channel(f"c{i}", ChannelKind.ENERGY, Unit.WH) for i in range(20)]
        await store.register_channels(ADAPTER, channels)
        other = sqlite3.connect(path)  # sees only committed data (WAL)
        try:

            async def writer(i: int) -> None:
                for round_ in range(5):
                    batch = [Reading(f"c{i}", T0 + 10 * round_ + k, float(k)) for k in range(10)]
                    await store.write(ADAPTER, batch)
                    (count,) = other.execute(
                        "SELECT COUNT(*) FROM readings JOIN channels ON id = channel_id "
                        "WHERE channel = ?",
                        (f"c{i}",),
                    ).fetchone()
                    assert count == 10 * (round_ + 1)

            async with store.writer():
                await asyncio.gather(*(writer(i) for i in range(20)))
        finally:
            other.close()


async def test_concurrent_writers_share_few_transactions(db: Database) -> None:
    commits: list[str] = []

    def trace(statement: str) -> None:
        if statement.strip().upper().startswith("COMMIT"):
            commits.append(statement)

    async with running(db, linger=0.05, max_batch=100_000) as store:
        await db.conn.set_trace_callback(trace)
        await asyncio.gather(
            *(
                store.write(
                    ADAPTER, [Reading(COUNTER.name, T0 + 100 * i + k, i + k) for k in range(10)]
                )
                for i in range(200)
            )
        )
        await db.conn.set_trace_callback(None)
    assert len(await stored(db, COUNTER)) == 2000
    assert 1 <= len(commits) <= 3, commits
    assert store.commits[0] == len(commits) and store.commits[1] == 2000


async def test_batches_are_capped_at_max_batch_rows(db: Database) -> None:
    async with running(db, linger=0.05, max_batch=250) as store:
        calls = [
            store.write(
                ADAPTER, [Reading(COUNTER.name, T0 + 100 * i + k, i + k) for k in range(100)]
            )
            for i in range(20)
        ]
        await asyncio.gather(*calls)
    transactions, rows = store.commits
    assert rows == 2000 and transactions >= 2000 // 250  # whole calls, at most 250 rows each


async def test_leaving_the_writer_block_writes_what_is_queued(db: Database) -> None:
    async with running(db, linger=10.0) as store:  # would linger for 10 s; leaving cuts it short
        tasks = [
            asyncio.create_task(store.write(ADAPTER, [Reading(COUNTER.name, T0 + i, i)]))
            for i in range(5)
        ]
        await asyncio.sleep(0)  # let the tasks queue their rows (a yield, not a timed wait)
    await asyncio.wait_for(asyncio.gather(*tasks), 5)
    assert len(await stored(db, COUNTER)) == 5


async def test_write_needs_the_writer_and_refuses_bad_readings(db: Database) -> None:
    store = ReadingsStore(db)
    await store.register_channels(ADAPTER, CHANNELS)
    with pytest.raises(RuntimeError, match="not running"):
        await store.write(ADAPTER, [Reading(COUNTER.name, T0, 1.0)])
    async with store.writer():
        with pytest.raises(ValueError, match="not registered"):
            await store.write(ADAPTER, [Reading("unknown", T0, 1.0)])
        for bad in (math.nan, math.inf, -math.inf):
            with pytest.raises(ValueError, match="not finite"):
                await store.write(
                    ADAPTER, [Reading(COUNTER.name, T0, 1.0), Reading(COUNTER.name, T0 + 1, bad)]
                )
        with pytest.raises(ValueError, match="not finite"):
            await store.write(ADAPTER, [Reading(COUNTER.name, math.nan, 1.0)])
        await store.write(ADAPTER, [])
    assert await stored(db, COUNTER) == []  # a refused call stores nothing, not even its good rows


async def test_a_failed_batch_fails_its_callers_and_stores_none_of_it(db: Database) -> None:
    await db.conn.execute(
        "CREATE TEMP TRIGGER fault BEFORE INSERT ON readings WHEN NEW.value = 666 "
        "BEGIN SELECT RAISE(ABORT, 'injected fault'); END"
    )
    async with running(db, linger=0.05) as store:
        calls = [store.write(ADAPTER, [Reading(COUNTER.name, T0 + i, 10.0 + i)]) for i in range(5)]
        calls.append(store.write(ADAPTER, [Reading(COUNTER.name, T0 + 99, 666.0)]))
        results = await asyncio.gather(*calls, return_exceptions=True)
        assert all(isinstance(r, StoreError) and "injected fault" in str(r) for r in results)
        assert await stored(db, COUNTER) == []
        await db.conn.execute("DROP TRIGGER fault")
        await store.write(ADAPTER, [Reading(COUNTER.name, T0 + 200, 5.0)])  # the writer lives on
    # the channel was forgotten with the failed batch; its next row is flagged again
    assert await stored(db, COUNTER) == [(T0 + 200, 5.0, 1)]


async def test_duplicates_keep_the_first_value(db: Database) -> None:
    async with running(db) as store:
        await store.write(ADAPTER, readings(COUNTER, [(T0, 1.0), (T0 + 10, 2.0), (T0 + 10, 9.0)]))
        await store.write(ADAPTER, readings(COUNTER, [(T0, 7.0), (T0 + 20, 3.0)]))
    assert [(at, v) for at, v, _ in await stored(db, COUNTER)] == [
        (T0, 1.0),
        (T0 + 10, 2.0),
        (T0 + 20, 3.0),
    ]


async def test_drop_flags(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite3"
    async with open_database(path) as db:
        async with running(db) as store:
            values = [10.0, 11.0, 9.0, 12.0, 12.0, 13.0]
            await store.write(
                ADAPTER, readings(COUNTER, [(T0 + k, v) for k, v in enumerate(values)])
            )
            assert [d for _, _, d in await stored(db, COUNTER)] == [1, 0, 1, 0, 0, 0]
            await store.write(ADAPTER, readings(COUNTER, [(T0 + 2.5, 20.0)]))  # out of order
            flags = {at: d for at, _, d in await stored(db, COUNTER)}
            assert flags[T0 + 2.5] == 1 and flags[T0 + 3] == 1  # it, and its new successor
            await store.write(ADAPTER, readings(COUNTER, [(T0 + 5, 0.0)]))  # duplicate: ignored
            await store.write(ADAPTER, readings(COUNTER, [(T0 + 6, 14.0)]))
            assert (await stored(db, COUNTER))[-1] == (T0 + 6, 14.0, 0)
        async with running(db) as store:  # restart: the first reading has no known predecessor
            await store.write(ADAPTER, readings(COUNTER, [(T0 + 7, 15.0), (T0 + 8, 16.0)]))
        assert (await stored(db, COUNTER))[-2:] == [(T0 + 7, 15.0, 1), (T0 + 8, 16.0, 0)]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.one_of(
            st.just("restart"),
            st.lists(st.tuples(st.integers(0, 40), st.integers(0, 30)), min_size=1, max_size=8),
        ),
        min_size=1,
        max_size=12,
    )
)
def test_every_stored_drop_is_flagged(script: list[object]) -> None:
    async def run(path: Path) -> list[tuple[float, float, int]]:
        async with open_database(path) as db:
            store = ReadingsStore(db)
            await store.register_channels(ADAPTER, CHANNELS)
            for step in script:
                if step == "restart":
                    store = ReadingsStore(db)
                    await store.register_channels(ADAPTER, CHANNELS)
                    continue
                async with store.writer():
                    batch = [Reading(COUNTER.name, T0 + at, float(v)) for at, v in step]  # type: ignore[attr-defined]
                    await store.write(ADAPTER, batch)
            return await stored(db, COUNTER)

    with tempfile.TemporaryDirectory() as tmp:
        rows = asyncio.run(run(Path(tmp) / "db.sqlite3"))
    assert not rows or rows[0][2] == 1
    for (_, before, _), (at, value, dropped) in itertools.pairwise(rows):
        if value < before:
            assert dropped == 1, (at, value, before)


# --- reading back -------------------------------------------------------------------------------


async def test_samples_for_fetches_brackets_and_drop_neighbourhoods_only(db: Database) -> None:
    day = ten_second_day(resets=(3000, 6001))
    glitch = {4500: 1.0}  # one bad reading
    day = [(at, glitch.get(k, v)) for k, (at, v) in enumerate(day)]
    async with running(db) as store:
        for i in range(0, len(day), 1000):
            await store.write(ADAPTER, readings(COUNTER, day[i : i + 1000]))
    intervals = quarter_hours(T0, 96)
    samples = await store.samples_for((ADAPTER, COUNTER.name), intervals, max_gap=60.0)
    assert samples == sorted(set(samples))
    assert len(samples) < 250, len(samples)  # of 8640 stored
    assert set(samples) <= set(day)
    energy = await store.interval_energy(ADAPTER, COUNTER.name, intervals, max_gap=60.0)
    assert_same_energy(energy, full_energy(COUNTER, day, intervals, 60.0))
    assert all(e is not None and e.kwh >= 0 for e in energy[:-1])
    assert energy[-1] is None  # its end is after the last reading: unknown, not 0
    # many non-contiguous intervals: more sub-selects than one compound SELECT may hold
    scattered = [(T0 + 300.0 * i + 7, T0 + 300.0 * i + 133) for i in range(280)]
    energy = await store.interval_energy(ADAPTER, COUNTER.name, scattered, max_gap=60.0)
    assert_same_energy(energy, full_energy(COUNTER, day, scattered, 60.0))


async def test_power_samples_cover_each_interval(db: Database) -> None:
    day = [(T0 + 10.0 * k, 1000.0 + (k % 13) * 50.0) for k in range(2000)]
    async with running(db) as store:
        await store.write(ADAPTER, readings(POWER, day))
    intervals = [(T0 + 600, T0 + 1500), (T0 + 9000, T0 + 9900)]
    samples = await store.samples_for((ADAPTER, POWER.name), intervals, max_gap=30.0)
    assert len(samples) == 2 * (90 + 1 + 6)  # every sample within max_gap of each interval
    energy = await store.interval_energy(ADAPTER, POWER.name, intervals, max_gap=30.0)
    assert_same_energy(energy, full_energy(POWER, day, intervals, 30.0))


@st.composite
def counter_series(draw: st.DrawFn, wrap: float | None = None) -> list[Sample]:
    """A counter with gaps, resets, wraps, glitches, spikes and stuck stretches."""
    t = T0 + draw(st.integers(0, 119))
    true = float(draw(st.integers(0, 60_000)))
    out: list[Sample] = []
    for _ in range(draw(st.integers(3, 120))):
        event = draw(st.sampled_from(["step"] * 6 + ["gap", "reset", "glitch", "spike", "stuck"]))
        t += draw(st.integers(60, 500)) if event == "gap" else draw(st.integers(1, 40)) / 2
        if event == "reset":
            true = float(draw(st.integers(0, 20)))
        elif event != "stuck":
            true += draw(st.integers(0, 4000)) / 4
        value = true % wrap if wrap else true
        if event == "glitch":
            value = float(draw(st.integers(0, 10)))
        elif event == "spike":
            value += 50_000.0
        out.append((t, value))
    return out


@st.composite
def whole_minute_intervals(draw: st.DrawFn, samples: Sequence[Sample]) -> list[tuple[float, float]]:
    first = math.floor(samples[0][0] / 60) - 2
    last = math.ceil(samples[-1][0] / 60) + 2
    minutes = draw(st.lists(st.integers(first, last), min_size=2, max_size=30, unique=True))
    minutes.sort()
    grid = [(60.0 * a, 60.0 * b) for a, b in itertools.pairwise(minutes)]
    spans = draw(st.lists(st.tuples(st.integers(first, last), st.integers(1, 90)), max_size=10))
    return grid + [(60.0 * a, 60.0 * (a + n)) for a, n in spans]


def shuffled_slightly(samples: list[Sample], swaps: list[int]) -> list[Sample]:
    order = list(samples)
    for i in swaps:
        if i + 1 < len(order):
            order[i], order[i + 1] = order[i + 1], order[i]
    return order


async def write_in_parts(db: Database, channel: Channel, samples: list[Sample], parts: int) -> None:
    """Concurrent callers; ``parts`` separate store lifetimes (restarts)."""
    size = max(1, len(samples) // parts + 1)
    for p in range(0, len(samples), size):
        async with running(db, linger=0.001) as store:
            chunk = samples[p : p + size]
            await asyncio.gather(
                *(
                    store.write(ADAPTER, readings(channel, chunk[i : i + 7]))
                    for i in range(0, len(chunk), 7)
                )
            )


SETTINGS = settings(max_examples=45, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(
    st.sampled_from([COUNTER, WRAPPING]).flatmap(
        lambda ch: st.tuples(st.just(ch), counter_series(ch.wrap))
    ),
    st.data(),
)
def test_counter_energy_from_sparse_reads_equals_full_series(
    channel_series: tuple[Channel, list[Sample]], data: st.DataObject
) -> None:
    channel, samples = channel_series
    swaps = data.draw(st.lists(st.integers(0, len(samples)), max_size=6))
    parts = data.draw(st.integers(1, 3))
    gap = float(data.draw(st.sampled_from([5, 20, 60, 150])))
    intervals = data.draw(whole_minute_intervals(samples))
    odd = data.draw(st.lists(st.tuples(st.floats(-50, 3000), st.floats(0.5, 900)), max_size=6))
    intervals += [(samples[0][0] + a, samples[0][0] + a + n) for a, n in odd]

    async def run(path: Path) -> list[IntervalEnergy | None]:
        async with open_database(path) as db:
            await write_in_parts(db, channel, shuffled_slightly(samples, swaps), parts)
            store = ReadingsStore(db)
            return await store.interval_energy(ADAPTER, channel.name, intervals, max_gap=gap)

    with tempfile.TemporaryDirectory() as tmp:
        got = asyncio.run(run(Path(tmp) / "db.sqlite3"))
    assert_same_energy(got, full_energy(channel, samples, intervals, gap))


@st.composite
def power_series(draw: st.DrawFn) -> list[Sample]:
    t = T0 + draw(st.integers(0, 119))
    out: list[Sample] = []
    for _ in range(draw(st.integers(3, 120))):
        t += (
            draw(st.integers(60, 300))
            if draw(st.integers(0, 9)) == 0
            else draw(st.integers(1, 40)) / 2
        )
        out.append((t, draw(st.integers(0, 40_000)) / 8))
    return out


# --- compaction and retention -------------------------------------------------------------------


@SETTINGS
@given(
    st.sampled_from([COUNTER, WRAPPING, POWER]).flatmap(
        lambda ch: st.tuples(
            st.just(ch), power_series() if ch.kind is ChannelKind.POWER else counter_series(ch.wrap)
        )
    ),
    st.data(),
)
def test_compaction_keeps_whole_minute_energy(
    channel_series: tuple[Channel, list[Sample]], data: st.DataObject
) -> None:
    channel, samples = channel_series
    gap = float(data.draw(st.sampled_from([5, 20, 60, 150])))
    intervals = data.draw(whole_minute_intervals(samples))
    chunk = data.draw(st.integers(2, 60))
    span = (samples[0][0] - 200, samples[-1][0] + 200)
    horizons = sorted(data.draw(st.lists(st.floats(*span), min_size=1, max_size=3)))
    raw_retention = HOUR

    async def run(path: Path) -> tuple[list[IntervalEnergy | None], list[IntervalEnergy | None]]:
        async with open_database(path) as db:
            await write_in_parts(db, channel, samples, 1)
            store = ReadingsStore(db, compaction_chunk=chunk)
            before = await store.interval_energy(ADAPTER, channel.name, intervals, max_gap=gap)
            for horizon in horizons:
                await store.compact(
                    now=horizon + raw_retention,
                    raw_retention=raw_retention,
                    retention=400 * DAY,
                    max_gap=gap,
                )
            after = await store.interval_energy(ADAPTER, channel.name, intervals, max_gap=gap)
            return before, after

    with tempfile.TemporaryDirectory() as tmp:
        before, after = asyncio.run(run(Path(tmp) / "db.sqlite3"))
    assert_same_energy(before, full_energy(channel, samples, intervals, gap))
    assert_same_energy(after, before)


async def test_compaction_then_retention(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite3"
    day = ten_second_day(resets=(5000,))
    intervals = quarter_hours(T0, 96)
    async with open_database(path) as db:
        async with running(db) as store:
            for i in range(0, len(day), 2000):
                await store.write(ADAPTER, readings(COUNTER, day[i : i + 2000]))
        want = await store.interval_energy(ADAPTER, COUNTER.name, intervals, max_gap=60.0)
        now = T0 + 18 * HOUR + 2 * HOUR  # horizon at 18 h of the day
        stats = await store.compact(
            now=now, raw_retention=2 * HOUR, retention=30 * DAY, max_gap=60.0
        )
        assert stats.points_written == 18 * 60 and stats.raw_deleted > 6000 and not stats.skipped
        assert len(await stored(db, COUNTER)) < 8640 - 6000
        state = await CompactionState.load(
            db.conn, (await store.channel((ADAPTER, COUNTER.name))).id
        )
        assert state.through == T0 + 18 * HOUR and state.raw_from == state.handover_at
        assert (
            state.handover_at is not None
            and state.through - 10 <= state.handover_at < state.through
        )
        plans = {choose_series(s, e, state) for s, e in intervals}
        assert plans == {Series.COMPACTED, Series.RAW, Series.SPLIT} or plans == {
            Series.COMPACTED,
            Series.RAW,
        }
        assert_same_energy(
            await store.interval_energy(ADAPTER, COUNTER.name, intervals, max_gap=60.0), want
        )
        again = await store.compact(
            now=now, raw_retention=2 * HOUR, retention=30 * DAY, max_gap=60.0
        )
        assert (again.points_written, again.raw_deleted, again.points_deleted) == (0, 0, 0)
        # 30 days on, everything compacted is past retention
        late = await store.compact(
            now=now + 31 * DAY, raw_retention=2 * HOUR, retention=30 * DAY, max_gap=60.0
        )
        assert late.points_deleted >= 18 * 60 and late.raw_deleted > 0
        assert (await db.fetchone("SELECT COUNT(*) FROM readings_minute"))[0] == 0  # type: ignore[index]
        gone = await store.interval_energy(ADAPTER, COUNTER.name, intervals, max_gap=60.0)
        assert gone == [None] * 96


async def test_an_interval_straddling_the_horizon_is_split(db: Database) -> None:
    day = ten_second_day()[:1000]
    async with running(db) as store:
        await store.write(ADAPTER, readings(COUNTER, day))
    interval = [(T0 + 600, T0 + 7200)]
    want = full_energy(COUNTER, day, interval, 60.0)
    await store.compact(now=T0 + 3600 + 30 + HOUR, raw_retention=HOUR, retention=DAY, max_gap=60.0)
    state = await CompactionState.load(db.conn, (await store.channel((ADAPTER, COUNTER.name))).id)
    assert choose_series(*interval[0], state) is Series.SPLIT
    assert_same_energy(
        await store.interval_energy(ADAPTER, COUNTER.name, interval, max_gap=60.0), want
    )
    # a start that is not a whole minute cannot be valued once its raw readings are gone
    assert await store.interval_energy(
        ADAPTER, COUNTER.name, [(T0 + 601, T0 + 7200)], max_gap=60.0
    ) == [None]


async def test_reads_during_compaction_never_see_it_half_done(db: Database) -> None:
    day = ten_second_day(resets=(900,))[:2000]
    async with running(db) as store:
        await store.write(ADAPTER, readings(COUNTER, day))
    store = ReadingsStore(db, compaction_chunk=40)  # ~80 chunks, each a chance to interleave
    intervals = [(T0 + 60.0 * i, T0 + 60.0 * (i + 5)) for i in range(0, 320, 3)]
    want = await store.interval_energy(ADAPTER, COUNTER.name, intervals, max_gap=60.0)
    assert sum(e is not None for e in want) > 100
    done = asyncio.Event()
    reads = 0

    async def reader() -> None:
        nonlocal reads
        while not done.is_set():
            got = await store.interval_energy(ADAPTER, COUNTER.name, intervals, max_gap=60.0)
            assert_same_energy(got, want)
            reads += 1

    async def compactor() -> None:
        try:
            await store.compact(now=T0 + 6 * HOUR, raw_retention=HOUR, retention=DAY, max_gap=60.0)
        finally:
            done.set()

    await asyncio.gather(compactor(), *(reader() for _ in range(3)))
    assert reads >= 3
    state = await CompactionState.load(db.conn, (await store.channel((ADAPTER, COUNTER.name))).id)
    assert state.through == T0 + 5 * HOUR  # everything before it was compacted meanwhile


async def test_negative_power_is_not_compacted_and_stays_raw(db: Database) -> None:
    samples = [(T0 + 10.0 * k, -100.0 if k == 50 else 500.0) for k in range(400)]
    async with running(db) as store:
        await store.write(ADAPTER, readings(POWER, samples))
    intervals = quarter_hours(T0, 4)
    want = await store.interval_energy(ADAPTER, POWER.name, intervals, max_gap=30.0)
    stats = await store.compact(
        now=T0 + 2 * HOUR, raw_retention=HOUR / 2, retention=DAY, max_gap=30.0
    )
    assert stats.skipped == (f"{ADAPTER}/{POWER.name}",)
    assert len(await stored(db, POWER)) == 400
    assert await store.interval_energy(ADAPTER, POWER.name, intervals, max_gap=30.0) == want


async def test_restart_keeps_working_and_stays_correct(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite3"
    day = ten_second_day(resets=(7000,))
    intervals = quarter_hours(T0, 96)
    for part in range(4):  # four gateway lifetimes, compaction in between
        async with open_database(path) as db:
            async with running(db, linger=0.001) as store:
                chunk = day[part * 2160 : (part + 1) * 2160]
                await store.write(ADAPTER, readings(COUNTER, chunk))
            await store.compact(
                now=chunk[-1][0], raw_retention=3 * HOUR, retention=30 * DAY, max_gap=60.0
            )
    async with open_database(path) as db:
        store = ReadingsStore(db)
        got = await store.interval_energy(ADAPTER, COUNTER.name, intervals, max_gap=60.0)
        stats = {s.channel: s for s in await store.channel_stats()}
    assert_same_energy(got, full_energy(COUNTER, day, intervals, 60.0))
    assert all(e is not None for e in got[:-1])
    counter = stats[COUNTER.name]
    assert (counter.last_at, counter.last_value) == day[-1]
    horizon = math.floor((day[-1][0] - 3 * HOUR) / 60) * 60  # of the last compaction
    assert counter.minutes == (horizon - T0) / 60  # one point per minute of the day before it
    assert counter.readings == sum(1 for at, _ in day if at >= horizon - 10)  # from the hand-over
    assert stats[POWER.name].readings == 0 and stats[POWER.name].last_at is None
