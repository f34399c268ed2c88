"""The readings store: device readings in, energy per interval out.

Writing. :meth:`ReadingsStore.write` returns only once its readings are
committed; concurrent callers share transactions (group commit, see
:mod:`gateway.store.readings_writer`), run by ``async with store.writer():``.

Reading. :meth:`ReadingsStore.interval_energy` is what the report builder
calls. It fetches just the samples that decide each interval
(:mod:`gateway.store.readings_query`) and hands them to the pure energy
functions of :mod:`gateway.metering.energy`.

Keeping. :meth:`ReadingsStore.compact` turns raw readings older than the raw
retention into the compacted per-minute series and deletes both kinds of data
once past the retention (:mod:`gateway.store.readings_compaction`).

**Which series values an interval** ``(start, end)`` (:func:`choose_series`).
Per channel, the compacted series is final for every time before ``through``;
the raw rows start at ``raw_from``, which is normally the *hand-over sample*,
the newest settled raw sample before ``through``, whose value in the compacted
series' reference compaction saved.

1. ``start >= raw_from``: the raw readings. This includes every channel that
   was never compacted, and gives exactly the energy the full raw series would.
2. Otherwise only a whole-minute ``start`` before ``through`` can be valued (the
   compacted series holds whole minutes). If ``end`` is a whole minute before
   ``through``: the compacted series alone.
3. Otherwise, if ``end`` is after the hand-over sample and its raw row is kept:
   split there. The compacted series from ``start`` to the hand-over sample
   (its saved value), plus the raw readings from that sample to ``end``. Each
   part is a difference within one series, so the references never mix.
4. Anything else is unknown (None).

Compaction keeps the energy of whole-minute intervals (up to float rounding)
and whether it is known, so the answer does not depend on when compaction ran.
An energy from the compacted series is marked ``INTERPOLATED``: that series
does not record whether a minute fell exactly on a reading.
"""

from __future__ import annotations

import bisect
import contextlib
import dataclasses
import enum
import math
from collections.abc import Sequence
from dataclasses import dataclass

import structlog

from gateway.errors import StoreError
from gateway.metering.compaction import COMPACTED_MAX_GAP
from gateway.metering.energy import (
    Energies,
    IntervalEnergy,
    Limits,
    Quality,
    counter_intervals,
    power_intervals,
)
from gateway.plugin import Channel, ChannelKind, Reading, Unit
from gateway.store.database import Database
from gateway.store.maintenance import SliceBudget
from gateway.store.readings_compaction import (
    ChannelInfo,
    CompactionState,
    Gate,
    compact_channel,
    expire_channel,
)
from gateway.store.readings_query import counter_samples, fetch, minute_samples, power_samples
from gateway.store.readings_writer import GroupCommit, Row

__all__ = [
    "ChannelInfo",
    "ChannelStats",
    "CompactionStats",
    "ReadingsStore",
    "Series",
    "choose_series",
]

log = structlog.get_logger(__name__)

Interval = tuple[float, float]
ChannelRef = int | tuple[str, str]
"""A channel id, or ``(adapter, channel)``."""


class Series(enum.Enum):
    RAW = "raw"
    COMPACTED = "compacted"
    SPLIT = "split"
    UNKNOWN = "unknown"


def _whole_minute(t: float) -> bool:
    return t % 60 == 0


def choose_series(start: float, end: float, state: CompactionState) -> Series:
    """Which series values ``(start, end)``: the rule in the module docstring. Pure."""
    if start >= state.raw_from:
        return Series.RAW
    if not _whole_minute(start) or start >= state.through:
        return Series.UNKNOWN
    if _whole_minute(end) and end < state.through:
        return Series.COMPACTED
    handover = state.handover_at
    if handover is not None and handover >= state.raw_from and start < handover < end:
        return Series.SPLIT
    return Series.UNKNOWN


@dataclass(frozen=True, slots=True)
class ChannelStats:
    """For ``ecgw status``: what is stored for one channel."""

    adapter: str
    channel: str
    kind: ChannelKind
    unit: Unit
    readings: int
    """Raw readings stored."""
    minutes: int
    """Compacted points stored."""
    last_at: float | None
    last_value: float | None


@dataclass(frozen=True, slots=True)
class CompactionStats:
    channels: int = 0
    chunks: int = 0
    points_written: int = 0
    raw_deleted: int = 0
    points_deleted: int = 0
    skipped: tuple[str, ...] = ()
    """Channels that could not be compacted (``adapter/channel``); their raw rows stay."""


class ReadingsStore:
    """Readings of every adapter's channels, in the gateway's one database."""

    def __init__(
        self,
        db: Database,
        *,
        max_batch: int = 10_000,
        linger: float = 0.005,
        compaction_chunk: int = 20_000,
    ) -> None:
        self._db = db
        self._writer = GroupCommit(db, max_rows=max_batch, linger=linger)
        self.budget = SliceBudget(max_rows=compaction_chunk)
        """Sizes compaction's and expiry's maintenance slices; learns what one costs here."""
        self._gate = Gate()
        self._states: dict[int, CompactionState] = {}  # by channel id, for one generation
        self._states_generation = -1
        self._by_name: dict[tuple[str, str], ChannelInfo] = {}
        self._by_id: dict[int, ChannelInfo] = {}

    # --- channels -------------------------------------------------------------------------------

    async def register_channels(self, adapter: str, channels: Sequence[Channel]) -> None:
        """Record an adapter's channels (new ones get an id; kind, unit, wrap are updated)."""
        if not channels:
            return
        async with self._db.write() as conn:
            for ch in channels:
                async with conn.execute(
                    "INSERT INTO channels (adapter, channel, kind, unit, wrap) "
                    "VALUES (?, ?, ?, ?, ?) ON CONFLICT (adapter, channel) DO UPDATE SET "
                    "kind = excluded.kind, unit = excluded.unit, wrap = excluded.wrap "
                    "RETURNING id",
                    (adapter, ch.name, str(ch.kind), str(ch.unit), ch.wrap),
                ) as cur:
                    row = await cur.fetchone()
                if row is None:  # RETURNING of an upsert always yields a row
                    raise StoreError(f"channel {adapter}/{ch.name} was not registered")
                info = ChannelInfo(row[0], adapter, ch.name, ch.kind, ch.unit, ch.wrap)
                old = self._by_id.get(info.id)
                if old is not None and old != info:
                    log.warning("readings.channel_changed", channel=info.label)
                self._remember(info)

    def _remember(self, info: ChannelInfo) -> None:
        self._by_name[(info.adapter, info.channel)] = info
        self._by_id[info.id] = info

    async def _load_channels(self) -> list[ChannelInfo]:
        rows = await self._db.fetchall(
            "SELECT id, adapter, channel, kind, unit, wrap FROM channels ORDER BY id"
        )
        infos = [ChannelInfo(r[0], r[1], r[2], ChannelKind(r[3]), Unit(r[4]), r[5]) for r in rows]
        for info in infos:
            self._remember(info)
        return infos

    async def channel(self, ref: ChannelRef) -> ChannelInfo:
        """The channel by id or ``(adapter, channel)``; KeyError if it was never registered."""
        info = self._by_id.get(ref) if isinstance(ref, int) else self._by_name.get(ref)
        if info is None:
            await self._load_channels()
            info = self._by_id.get(ref) if isinstance(ref, int) else self._by_name.get(ref)
        if info is None:
            raise KeyError(f"no channel {ref!r} is registered")
        return info

    async def latest_at(self, ref: ChannelRef) -> float | None:
        """When the channel was last read (its newest raw reading), or None if never."""
        try:
            info = await self.channel(ref)
        except KeyError:
            return None
        row = await self._db.fetchone(
            "SELECT MAX(at) AS at FROM readings WHERE channel_id = ?", (info.id,)
        )
        return None if row is None or row["at"] is None else float(row["at"])

    # --- writing --------------------------------------------------------------------------------

    def writer(self) -> contextlib.AbstractAsyncContextManager[None]:
        """Run the batching writer; :meth:`write` works only inside this block."""
        return self._writer.running()

    async def write(self, adapter: str, readings: Sequence[Reading]) -> None:
        """Store readings; returns once they are committed. StoreError if they were not.

        Refused (ValueError, nothing stored) if a reading's channel is not registered or
        its time or value is not a finite number. Fits ``AdapterRuntime``'s sink.
        """
        rows: list[Row] = []
        for reading in readings:
            info = self._by_name.get((adapter, reading.channel))
            if info is None:
                raise ValueError(f"channel {adapter}/{reading.channel} is not registered")
            at, value = float(reading.at), float(reading.value)
            if not (math.isfinite(at) and math.isfinite(value)):
                raise ValueError(
                    f"reading of {info.label} at {reading.at!r} is not finite: {reading.value!r}"
                )
            rows.append((info.id, at, value))
        await self._writer.write(rows)

    @property
    def commits(self) -> tuple[int, int]:
        """(transactions, rows) the writer committed since start."""
        return self._writer.batches, self._writer.rows

    # --- reading --------------------------------------------------------------------------------

    async def _state(self, channel_id: int) -> CompactionState:
        """The channel's compaction bookkeeping. Cached: only this store compacts, and every
        compaction chunk moves the gate's generation on, which retires the cache."""
        generation = self._gate.generation
        if self._states_generation != generation:
            rows = await fetch(
                self._db,
                "SELECT channel_id, through, handover_at, handover_state, handover_value, "
                "raw_from FROM compaction",
                (),
            )
            self._states = {r[0]: CompactionState.from_row(r[1:]) for r in rows}
            self._states_generation = generation
        return self._states.get(channel_id) or CompactionState.from_row(None)

    async def samples_for(
        self, channel: ChannelRef, intervals: Sequence[Interval], *, max_gap: float
    ) -> list[tuple[float, float]]:
        """The raw samples that decide ``intervals``, sorted (see ``readings_query``).

        For a counter: edge brackets and the neighbourhoods of flagged drops. For power:
        every sample within ``max_gap`` of an interval.
        """
        info = await self.channel(channel)
        fetch = counter_samples if info.kind is ChannelKind.ENERGY else power_samples
        async with self._gate.reading():
            floor = (await self._state(info.id)).raw_from
            return await fetch(self._db, info.id, intervals, max_gap=max_gap, floor=floor)

    async def minute_samples(
        self, channel: ChannelRef, intervals: Sequence[Interval]
    ) -> list[tuple[float, float]]:
        """Compacted points at the edges of ``intervals`` and break markers (NaN) among them."""
        info = await self.channel(channel)
        async with self._gate.reading():
            return await minute_samples(self._db, info.id, intervals)

    async def interval_energy(
        self,
        adapter: str,
        channel: str,
        intervals: Sequence[Interval],
        *,
        max_gap: float,
        limits: Limits | None = None,
    ) -> Energies:
        """kWh per interval, aligned with ``intervals``; None where it is not known.

        Each interval is valued by the raw or the compacted series, or split between
        them, by the rule in the module docstring (:func:`choose_series`). With
        ``limits``, implausible readings are rejected and counted in ``glitches``
        (:mod:`gateway.metering.energy`).
        """
        info = await self.channel((adapter, channel))
        async with self._gate.reading():  # no compaction chunk half done in between
            return await self._energy(info, intervals, max_gap, limits)

    async def _energy(
        self,
        info: ChannelInfo,
        intervals: Sequence[Interval],
        max_gap: float,
        limits: Limits | None,
    ) -> Energies:
        state = await self._state(info.id)
        if all(start >= state.raw_from for start, _ in intervals):
            return await self._raw_energy(info, state, intervals, max_gap, limits)  # usual
        plans = [choose_series(s, e, state) for s, e in intervals]
        h = state.handover_at  # not None for a SPLIT plan
        raw_parts = {
            i: (h if plan is Series.SPLIT and h is not None else interval[0], interval[1])
            for i, (plan, interval) in enumerate(zip(plans, intervals, strict=True))
            if plan in (Series.RAW, Series.SPLIT)
        }
        minute_parts = {
            i: (interval[0], h if plan is Series.SPLIT and h is not None else interval[1])
            for i, (plan, interval) in enumerate(zip(plans, intervals, strict=True))
            if plan in (Series.COMPACTED, Series.SPLIT)
        }
        raw_values = await self._raw_energy(info, state, list(raw_parts.values()), max_gap, limits)
        minute_values = await self._minute_energy(info, state, list(minute_parts.values()), limits)
        raw = dict(zip(raw_parts, raw_values, strict=True))
        minute = dict(zip(minute_parts, minute_values, strict=True))
        return Energies(
            (
                _combine(intervals[i], plan, raw.get(i), minute.get(i))
                for i, plan in enumerate(plans)
            ),
            glitches=raw_values.glitches + minute_values.glitches,
        )

    async def _raw_energy(
        self,
        info: ChannelInfo,
        state: CompactionState,
        intervals: Sequence[Interval],
        max_gap: float,
        limits: Limits | None = None,
    ) -> Energies:
        if not intervals:
            return Energies()
        if info.kind is ChannelKind.ENERGY:
            samples = await counter_samples(
                self._db, info.id, intervals, max_gap=max_gap, floor=state.raw_from
            )
            return counter_intervals(
                samples,
                intervals,
                to_kwh=info.unit.to_kwh,
                wrap=info.wrap,
                max_gap=max_gap,
                limits=limits,
            )
        samples = await power_samples(
            self._db, info.id, intervals, max_gap=max_gap, floor=state.raw_from
        )
        return power_intervals(
            samples, intervals, to_kw=info.unit.to_kwh, max_gap=max_gap, limits=limits
        )

    async def _minute_energy(
        self,
        info: ChannelInfo,
        state: CompactionState,
        intervals: Sequence[Interval],
        limits: Limits | None = None,
    ) -> Energies:
        if not intervals:
            return Energies()
        points = await minute_samples(self._db, info.id, intervals)
        if state.handover_at is not None and state.handover_value is not None:
            # the split point: a sample, not a minute, with its value in this series
            bisect.insort(points, (state.handover_at, state.handover_value))
        to_kwh = info.unit.to_kwh if info.kind is ChannelKind.ENERGY else 1.0
        return counter_intervals(
            points, intervals, to_kwh=to_kwh, wrap=None, max_gap=COMPACTED_MAX_GAP, limits=limits
        )

    # --- keeping --------------------------------------------------------------------------------

    async def compact(
        self,
        *,
        now: float,
        raw_retention: float,
        retention: float,
        max_gap: float,
        expire: bool = True,
    ) -> CompactionStats:
        """Compact raw readings older than ``raw_retention``; drop all data past ``retention``.

        One channel at a time, in maintenance slices (``db.maintenance``) of at most
        ``compaction_chunk`` raw rows, sized to last about ``SLICE_SECONDS`` each: a
        writer that waits goes before the next slice.
        Use the same ``max_gap`` as :meth:`interval_energy`. ``expire=False``: compact only,
        delete nothing past ``retention`` (the caller does not trust ``now`` for that).
        """
        if not 0 < raw_retention < retention:
            raise ValueError("need 0 < raw_retention < retention")
        horizon = math.floor((now - raw_retention) / 60.0) * 60.0
        totals = dict.fromkeys(("chunks", "points", "raw", "expired"), 0)
        skipped: list[str] = []
        channels = await self._load_channels()
        for info in channels:
            done = await compact_channel(
                self._db,
                self._gate,
                info,
                horizon=horizon,
                max_gap=max_gap,
                budget=self.budget,
            )
            if done is None:
                skipped.append(info.label)
            else:
                totals["points"] += done.points
                totals["raw"] += done.raw_deleted
                totals["chunks"] += done.chunks
            if not expire:
                continue
            cutoff = now - retention
            expired, raw_expired = await expire_channel(
                self._db, self._gate, info, cutoff=cutoff, budget=self.budget
            )
            totals["expired"] += expired
            totals["raw"] += raw_expired
        return CompactionStats(
            channels=len(channels),
            chunks=totals["chunks"],
            points_written=totals["points"],
            raw_deleted=totals["raw"],
            points_deleted=totals["expired"],
            skipped=tuple(skipped),
        )

    async def channel_stats(self) -> list[ChannelStats]:
        """Per channel: rows stored and the newest reading. Counts cost a pass over the rows."""
        channels = await self._load_channels()
        counts = {
            r[0]: r[1]
            for r in await self._db.fetchall(
                "SELECT channel_id, COUNT(*) FROM readings GROUP BY channel_id"
            )
        }
        minutes = {
            r[0]: r[1]
            for r in await self._db.fetchall(
                "SELECT channel_id, COUNT(*) FROM readings_minute GROUP BY channel_id"
            )
        }
        stats = []
        for info in channels:
            last = await self._db.fetchone(
                "SELECT at, value FROM readings WHERE channel_id = ? ORDER BY at DESC LIMIT 1",
                (info.id,),
            )
            stats.append(
                ChannelStats(
                    adapter=info.adapter,
                    channel=info.channel,
                    kind=info.kind,
                    unit=info.unit,
                    readings=counts.get(info.id, 0),
                    minutes=minutes.get(info.id, 0),
                    last_at=last[0] if last else None,
                    last_value=last[1] if last else None,
                )
            )
        return stats


def _combine(
    interval: Interval,
    plan: Series,
    raw: IntervalEnergy | None,
    minute: IntervalEnergy | None,
) -> IntervalEnergy | None:
    if plan is Series.RAW:
        return raw
    if plan is Series.COMPACTED:
        return None if minute is None else dataclasses.replace(minute, quality=_COMPACTED)
    if raw is None or minute is None:
        return None
    return IntervalEnergy(interval[0], interval[1], minute.kwh + raw.kwh, _COMPACTED)


_COMPACTED = Quality.INTERPOLATED
