"""The adapter runtime: cadence, failed reads, crashes and backoff, hangs, threads, shutdown.

The adapters here are small real classes (no mocks) with poll intervals of
50-300 ms. Tests wait on conditions (the sink and status sink notify a
Condition) rather than sleeping.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from types import TracebackType
from typing import Any, ClassVar

import pytest
import structlog
from hypothesis import given
from hypothesis import strategies as st
from structlog.contextvars import merge_contextvars

from gateway.errors import AdapterLoadError, AdapterReadError, StoreCorrupt
from gateway.metering.discovery import build_adapters
from gateway.metering.runtime import (
    HUNG_AFTER,
    AdapterRuntime,
    AdapterStatus,
    check_reading,
    next_tick,
)
from gateway.plugin import AdapterConfig, Channel, ChannelKind, Reading, Unit
from gateway.timeutil import Duration

pytestmark = pytest.mark.timeout(10)

ENERGY = Channel("energy", ChannelKind.ENERGY, Unit.KWH)
POWER = Channel("power", ChannelKind.POWER, Unit.W)


def config(poll: float = 0.05, read_timeout: float | None = None) -> AdapterConfig:
    timeout = None if read_timeout is None else Duration(read_timeout)
    return AdapterConfig(type="test", poll_interval=Duration(poll), read_timeout=timeout)


class Waitable:
    def __init__(self) -> None:
        self.changed = asyncio.Condition()

    async def notify(self) -> None:
        async with self.changed:
            self.changed.notify_all()

    async def wait_for(self, predicate: Callable[[], bool], within: float = 5.0) -> None:
        async with asyncio.timeout(within), self.changed:
            await self.changed.wait_for(predicate)


# --- test adapters ------------------------------------------------------------------------------


class Base:
    """Lifetime bookkeeping shared by the test adapters."""

    Config: ClassVar[type[AdapterConfig]] = AdapterConfig

    def __init__(self, name: str, cfg: AdapterConfig | None = None) -> None:
        self.name = name
        self.config = cfg or config()
        self.entered = 0
        self.exits: list[type[BaseException] | None] = []
        self.reads = 0
        self.read_times: list[float] = []
        self.progress = Waitable()  # notified on every start and every async read

    def channels(self) -> Sequence[Channel]:
        return [ENERGY]

    async def __aenter__(self) -> Base:
        self.entered += 1
        await self.progress.notify()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.exits.append(exc_type)

    def reading(self) -> list[Reading]:
        return [Reading("energy", time.time(), float(self.reads))]

    async def tick(self) -> None:
        self.reads += 1
        self.read_times.append(asyncio.get_running_loop().time())
        await self.progress.notify()


class Counter(Base):
    """A healthy meter, optionally slow."""

    def __init__(self, name: str, cfg: AdapterConfig | None = None, delay: float = 0.0) -> None:
        super().__init__(name, cfg)
        self.delay = delay

    async def read(self) -> Sequence[Reading]:
        await self.tick()
        if self.delay:
            await asyncio.sleep(self.delay)
        return self.reading()


class Flaky(Counter):
    """Every other read fails with AdapterReadError; a TimeoutError of its own once."""

    async def read(self) -> Sequence[Reading]:
        await self.tick()
        if self.reads == 2:
            raise TimeoutError("socket timed out")
        if self.reads % 2:
            raise AdapterReadError("device busy", adapter=self.name)
        return self.reading()


class Crashy(Counter):
    """Crashes on read number ``crash_on`` after every start."""

    def __init__(self, name: str, cfg: AdapterConfig | None = None, crash_on: int = 2) -> None:
        super().__init__(name, cfg)
        self.crash_on = crash_on
        self.since_start = 0

    async def __aenter__(self) -> Crashy:
        self.since_start = 0
        await super().__aenter__()
        return self

    async def read(self) -> Sequence[Reading]:
        await self.tick()
        self.since_start += 1
        if self.since_start == self.crash_on:
            raise ConnectionResetError("peer closed\nthe connection")
        return self.reading()


class FailingStart(Counter):
    """Its start fails the first ``failures`` times."""

    def __init__(self, name: str, failures: int) -> None:
        super().__init__(name)
        self.failures = failures

    async def __aenter__(self) -> FailingStart:
        await super().__aenter__()
        if self.entered <= self.failures:
            raise OSError("no route to host")
        return self


class HungRead(Base):
    """Every read waits forever (until cancelled)."""

    def __init__(self, name: str, cfg: AdapterConfig | None = None) -> None:
        super().__init__(name, cfg)
        self.cancelled_reads = 0

    async def read(self) -> Sequence[Reading]:
        await self.tick()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled_reads += 1
            raise
        raise AssertionError("unreachable")


class HungStart(Counter):
    async def __aenter__(self) -> HungStart:
        await super().__aenter__()
        await asyncio.Event().wait()
        return self


class BlockingRead(Base):
    """A partner's synchronous read that blocks its thread."""

    def __init__(self, name: str, cfg: AdapterConfig, block: float) -> None:
        super().__init__(name, cfg)
        self.block = block
        self.inside = threading.Event()
        self.release = threading.Event()
        self.thread_ids: list[int] = []
        self.context_adapter: list[object] = []

    def read(self) -> Sequence[Reading]:
        self.reads += 1
        self.thread_ids.append(threading.get_ident())
        self.context_adapter.append(structlog.contextvars.get_contextvars().get("adapter"))
        self.inside.set()
        self.release.wait(self.block)
        self.inside.clear()
        return self.reading()


class SwallowsCancel(Counter):
    """Badly behaved: turns its cancellation into an empty read."""

    async def read(self) -> Sequence[Reading]:
        await self.tick()
        try:
            await asyncio.sleep(0.02)
        except asyncio.CancelledError:
            return []
        return self.reading()


class Pusher(Base):
    """A push adapter: yields ``batches`` batches, then its stream ends."""

    def __init__(self, name: str, batches: int | None) -> None:
        super().__init__(name)
        self.batches = batches
        self.streams_closed = 0

    async def stream(self) -> AsyncIterator[Sequence[Reading]]:
        try:
            n = 0
            while self.batches is None or n < self.batches:
                n += 1
                await asyncio.sleep(0.01)
                yield [Reading("energy", time.time(), float(n))]
        finally:
            self.streams_closed += 1


class Messy(Base):
    """Returns readings the runtime must reject, among good ones."""

    def channels(self) -> Sequence[Channel]:
        return [ENERGY, POWER]

    async def read(self) -> Sequence[Reading]:
        await self.tick()
        now = time.time()
        return [
            Reading("energy", now, 1),  # an int: kept, as a float
            Reading("voltage", now, 230.0),  # not a declared channel
            Reading("power", now, math.nan),
            Reading("power", now, math.inf),
            Reading("energy", math.nan, 2.0),
            Reading("energy", now, "3"),  # type: ignore[arg-type]
            Reading("power", now, True),
            ("energy", now, 4.0),  # type: ignore[list-item]
            Reading(["energy"], now, 5.0),  # type: ignore[arg-type]
            Reading("power", now, 1e308),
            Reading("power", now, -2.78e297),
            Reading("energy", 253_402_297_200.0, 6.0),  # 9999-12-31T23:00:00Z
            Reading("energy", 0.0, 7.0),  # 1970
            Reading("power", now, 1500.0),
        ]


class NotASequence(Base):
    async def read(self) -> Sequence[Reading]:
        await self.tick()
        return None  # type: ignore[return-value]


class SlowExit(Counter):
    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.exits.append(exc_type)
        await asyncio.Event().wait()


# --- sinks --------------------------------------------------------------------------------------


class Sink(Waitable):
    def __init__(self) -> None:
        super().__init__()
        self.batches: list[tuple[str, list[Reading], float]] = []

    async def __call__(self, name: str, readings: Sequence[Reading]) -> None:
        self.batches.append((name, list(readings), asyncio.get_running_loop().time()))
        await self.notify()

    def of(self, name: str) -> list[list[Reading]]:
        return [readings for n, readings, _ in self.batches if n == name]

    def count(self, name: str) -> int:
        return len(self.of(name))


class StatusLog(Waitable):
    def __init__(self) -> None:
        super().__init__()
        self.pushed: list[AdapterStatus] = []

    async def __call__(self, status: AdapterStatus) -> None:
        self.pushed.append(status)
        await self.notify()

    def states(self, name: str) -> list[str]:
        return [s.state for s in self.pushed if s.name == name]

    def latest(self, name: str) -> AdapterStatus:
        return [s for s in self.pushed if s.name == name][-1]

    def restarts(self, name: str) -> int:
        return max((s.restarts for s in self.pushed if s.name == name), default=0)


def make_runtime(adapters: dict[str, Any], sink: Sink, **options: Any) -> AdapterRuntime:
    options.setdefault("backoff_initial", 0.01)
    options.setdefault("backoff_max", 0.05)
    options.setdefault("start_timeout", 0.5)
    options.setdefault("stop_timeout", 0.5)
    return AdapterRuntime(adapters, sink, **options)


# --- pure schedule ------------------------------------------------------------------------------


def test_next_tick_keeps_the_grid_and_skips_missed_ticks() -> None:
    assert next_tick(100.0, 10.0, 100.0) == 110.0
    assert next_tick(100.0, 10.0, 103.0) == 110.0
    assert next_tick(100.0, 10.0, 110.0) == 120.0
    assert next_tick(100.0, 10.0, 137.5) == 140.0  # 110, 120 and 130 are skipped
    assert next_tick(100.0, 10.0, 99.0) == 110.0  # never before or at the origin


@given(
    origin=st.floats(min_value=0, max_value=1e6),
    interval=st.floats(min_value=0.01, max_value=3600),
    elapsed=st.floats(min_value=0, max_value=1e6),
)
def test_next_tick_properties(origin: float, interval: float, elapsed: float) -> None:
    now = origin + elapsed
    tick = next_tick(origin, interval, now)
    assert tick > now or math.isclose(tick, now, abs_tol=1e-6 * max(1.0, now))
    assert tick - now <= interval * (1 + 1e-9) + 1e-6
    k = (tick - origin) / interval
    assert math.isclose(k, round(k), abs_tol=1e-6 * max(1.0, k))


@pytest.mark.parametrize(
    ("at", "value", "verdict"),
    [
        (1_700_000_000.0, 1e15, None),  # the largest value taken
        (1_700_000_000.0, -1e15, None),
        (1_700_000_000.0, 1.0000001e15, "value is implausible"),
        (1_700_000_000.0, -2.78e297, "value is implausible"),
        (946_684_800.0, 1.0, None),  # 2000-01-01T00:00:00Z
        (946_684_799.9, 1.0, "time is outside 2000..2200"),
        (7_258_118_399.0, 1.0, None),  # the last second of 2199
        (7_258_118_400.0, 1.0, "time is outside 2000..2200"),  # 2200-01-01T00:00:00Z
        (0.0, 1.0, "time is outside 2000..2200"),
        (253_402_297_200.0, 1.0, "time is outside 2000..2200"),  # 9999-12-31T23:00:00Z
        (1_700_000_000.0, 10**400, "value or time is not finite"),  # an int beyond float
        (1_700_000_000.0, math.nan, "value or time is not finite"),
        (math.inf, 1.0, "value or time is not finite"),
    ],
)
def test_check_reading_bounds(at: float, value: float, verdict: str | None) -> None:
    checked = check_reading(Reading("energy", at, value), frozenset({"energy"}))
    if verdict is None:
        assert checked == Reading("energy", float(at), float(value))
    else:
        assert checked == (verdict, "energy")


# --- polling ------------------------------------------------------------------------------------


async def test_readings_flow_to_the_sink_on_cadence() -> None:
    sink = Sink()
    # each read takes 40 ms of a 100 ms period: sleeping a period after each read would
    # drift to 140 ms; a fixed cadence stays at 100 ms (only a late loop can stretch it)
    meter = Counter("meter", config(poll=0.1), delay=0.04)
    async with make_runtime({"meter": meter}, sink):
        await sink.wait_for(lambda: sink.count("meter") >= 6)
    starts = meter.read_times[:6]
    mean_period = (starts[-1] - starts[0]) / 5
    assert 0.095 < mean_period < 0.125, starts
    assert [r[0].value for r in sink.of("meter")[:3]] == [1.0, 2.0, 3.0]


async def test_slow_reads_skip_missed_ticks_instead_of_bursting() -> None:
    sink = Sink()
    # a 120 ms read on a 50 ms cadence: the next read waits for the next tick (at 150 ms),
    # it does not start at once to make up for the two it missed
    meter = Counter("meter", config(poll=0.05, read_timeout=1.0), delay=0.12)
    async with make_runtime({"meter": meter}, sink):
        await sink.wait_for(lambda: sink.count("meter") >= 4)
    gaps = sorted(b - a for a, b in itertools.pairwise(meter.read_times[:4]))
    assert gaps[1] > 0.14, gaps  # the median gap: on the 50 ms grid, every 3rd tick


async def test_a_failed_read_keeps_the_adapter_running() -> None:
    sink, status = Sink(), StatusLog()
    flaky = Flaky("flaky")
    async with make_runtime({"flaky": flaky}, sink, status_sink=status, status_interval=0):
        await sink.wait_for(lambda: sink.count("flaky") >= 3)
    assert [batch[0].value for batch in sink.of("flaky")[:3]] == [4.0, 6.0, 8.0]
    assert flaky.entered == 1  # never restarted
    assert "backoff" not in status.states("flaky")
    errors = {s.last_error for s in status.pushed}
    assert "read failed: AdapterReadError: adapter 'flaky': device busy" in errors
    assert "read failed: TimeoutError: socket timed out" in errors


async def test_bad_readings_are_rejected_counted_and_the_rest_of_the_batch_kept() -> None:
    sink, status = Sink(), StatusLog()
    messy = Messy("messy")
    with structlog.testing.capture_logs(processors=[merge_contextvars]) as logs:
        async with make_runtime({"messy": messy}, sink, status_sink=status, status_interval=0):
            await sink.wait_for(lambda: sink.count("messy") >= 3)
    for readings in sink.of("messy"):
        assert [(r.channel, r.value) for r in readings] == [("energy", 1.0), ("power", 1500.0)]
        assert all(type(r.value) is float for r in readings)
    batches = sink.count("messy")
    assert status.latest("messy").rejected == 12 * batches  # shown in the adapter's status
    rejected = [e for e in logs if e["event"] == "adapter.readings_rejected"]
    assert {e["adapter"] for e in rejected} == {"messy"}
    assert all(e["count"] == 1 for e in rejected)  # the first time each; repeats wait a minute
    assert rejected[0]["total"] == 1
    assert sorted((e["reason"], e["channel"]) for e in rejected) == [
        ("channel is not a str", "list"),
        ("not a Reading", "tuple"),
        ("time is outside 2000..2200", "energy"),
        ("unknown channel", "voltage"),
        ("value is implausible", "power"),
        ("value or time is not a number", "energy"),
        ("value or time is not a number", "power"),
        ("value or time is not finite", "energy"),
        ("value or time is not finite", "power"),
    ]


# --- crashes and hangs --------------------------------------------------------------------------


async def test_a_crashing_adapter_restarts_with_backoff() -> None:
    sink, status = Sink(), StatusLog()
    crashy, steady = Crashy("crashy", crash_on=1), Counter("steady")
    adapters = {"crashy": crashy, "steady": steady}
    with structlog.testing.capture_logs(processors=[merge_contextvars]) as logs:
        async with make_runtime(adapters, sink, status_sink=status, backoff_max=0.04):
            await status.wait_for(lambda: status.restarts("crashy") >= 4)
            assert steady.entered == 1
    assert crashy.entered >= 4
    assert len(crashy.exits) == crashy.entered  # every start was matched by an exit
    assert crashy.exits[:4] == [ConnectionResetError] * 4
    latest = status.latest("crashy")
    assert latest.last_error == "read crashed: ConnectionResetError: peer closed the connection"
    restarts = [e for e in logs if e["event"] == "adapter.restarting"]
    assert all(e["adapter"] == "crashy" for e in restarts)
    delays = [e["delay"] for e in restarts]
    assert 0.005 <= delays[0] <= 0.01
    assert 0.01 <= delays[1] <= 0.02
    assert all(0.02 <= d <= 0.04 for d in delays[2:4])  # capped, with jitter


async def test_backoff_starts_over_after_a_healthy_run() -> None:
    sink, status = Sink(), StatusLog()
    crashy = Crashy("crashy", config(poll=0.05), crash_on=2)  # each run lasts 50 ms
    with structlog.testing.capture_logs() as logs:
        async with make_runtime({"crashy": crashy}, sink, status_sink=status, backoff_max=0.04):
            await status.wait_for(lambda: status.restarts("crashy") >= 3)
    delays = [e["delay"] for e in logs if e["event"] == "adapter.restarting"]
    assert all(0.005 <= d <= 0.01 for d in delays), delays  # never doubled


async def test_a_failing_start_is_retried() -> None:
    sink, status = Sink(), StatusLog()
    late = FailingStart("late", failures=2)
    async with make_runtime({"late": late}, sink, status_sink=status):
        await sink.wait_for(lambda: sink.count("late") >= 1)
    assert late.entered == 3
    assert late.exits[:1] == [asyncio.CancelledError]  # a failed start is not exited
    assert status.states("late")[:5] == ["starting", "backoff", "starting", "backoff", "starting"]
    assert status.latest("late").restarts == 2


async def test_a_hung_read_is_cut_off_and_the_others_keep_producing() -> None:
    sink = Sink()
    hung = HungRead("hung", config(poll=0.05))
    steady = Counter("steady", config(poll=0.05))
    runtime = make_runtime({"hung": hung, "steady": steady}, sink)
    with structlog.testing.capture_logs(processors=[merge_contextvars]) as logs:
        async with runtime:
            # each read is cut off at its deadline; after HUNG_AFTER in a row, a restart
            await hung.progress.wait_for(lambda: hung.entered >= 2)
            before = sink.count("steady")
            await sink.wait_for(lambda: sink.count("steady") >= before + 3)
    assert hung.cancelled_reads >= HUNG_AFTER
    assert hung.exits[0] is TimeoutError  # exited with the "hung" crash
    assert sink.count("hung") == 0
    timeouts = [e for e in logs if e["event"] == "adapter.read_timed_out"]
    assert len(timeouts) >= HUNG_AFTER
    restart = next(e for e in logs if e["event"] == "adapter.restarting")
    assert restart["error"] == "hung: 3 reads in a row ran past their 0.05 s deadline"
    statuses = {s.name: s for s in runtime.status()}
    assert statuses["hung"].restarts >= 1
    assert statuses["steady"].restarts == 0
    assert statuses["steady"].last_error is None


async def test_a_hung_start_is_cut_off() -> None:
    sink, status = Sink(), StatusLog()
    stuck, steady = HungStart("stuck"), Counter("steady")
    async with make_runtime(
        {"stuck": stuck, "steady": steady}, sink, status_sink=status, start_timeout=0.05
    ):
        await status.wait_for(lambda: status.restarts("stuck") >= 2)
        await sink.wait_for(lambda: sink.count("steady") >= 3)
    assert status.latest("stuck").last_error == "start timed out after 0.05 s"
    assert stuck.exits == []  # never started, never exited


async def test_a_read_that_returns_garbage_is_a_crash() -> None:
    sink, status = Sink(), StatusLog()
    async with make_runtime({"odd": NotASequence("odd")}, sink, status_sink=status):
        await status.wait_for(lambda: status.restarts("odd") >= 1)
    assert status.latest("odd").last_error == "got NoneType, not a sequence of Reading"


# --- any exception from plugin code is that adapter's crash -------------------------------------


class Fabricated(BaseException):
    """Not an Exception: a plugin's own BaseException subclass."""


def _fabricated_cancel() -> BaseException:
    return asyncio.CancelledError("raised by the plugin, not a cancellation")


RAISED: dict[str, Callable[[], BaseException]] = {
    "SystemExit": lambda: SystemExit(3),
    "KeyboardInterrupt": KeyboardInterrupt,
    "GeneratorExit": GeneratorExit,
    "CancelledError": _fabricated_cancel,
    "Fabricated": lambda: Fabricated("odd"),
    "MemoryError": MemoryError,  # fatal for the gateway's own loops, not for a plugin
}


class Raiser(Counter):
    """Raises ``error()`` from ``where`` on every start (``where``: a method name)."""

    def __init__(self, name: str, where: str, error: Callable[[], BaseException]) -> None:
        super().__init__(name)
        self.where = where
        self.error = error

    def _maybe(self, where: str) -> None:
        if self.where == where:
            raise self.error()

    def channels(self) -> Sequence[Channel]:
        if self.entered:  # discovery and the gateway also call it before the start
            self._maybe("channels")
        return [ENERGY]

    async def __aenter__(self) -> Raiser:
        await super().__aenter__()
        self._maybe("__aenter__")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.exits.append(exc_type)
        self._maybe("__aexit__")

    async def read(self) -> Sequence[Reading]:
        await self.tick()
        self._maybe("read")
        if self.where == "__aexit__" and self.reads % 2 == 0:
            raise ConnectionResetError("so that __aexit__ is called")
        return self.reading()


class StreamRaiser(Base):
    def __init__(self, name: str, error: Callable[[], BaseException]) -> None:
        super().__init__(name)
        self.error = error

    async def stream(self) -> AsyncIterator[Sequence[Reading]]:
        await self.tick()
        yield [Reading("energy", time.time(), 1.0)]
        raise self.error()


@pytest.mark.parametrize("raised", sorted(RAISED))
@pytest.mark.parametrize("where", ["read", "channels", "__aenter__"])
async def test_anything_plugin_code_raises_restarts_only_that_adapter(
    where: str, raised: str
) -> None:
    sink, status = Sink(), StatusLog()
    rude, steady = Raiser("rude", where, RAISED[raised]), Counter("steady")
    async with make_runtime({"rude": rude, "steady": steady}, sink, status_sink=status):
        await status.wait_for(lambda: status.restarts("rude") >= 2)
        before = sink.count("steady")
        await sink.wait_for(lambda: sink.count("steady") >= before + 2)
    assert steady.entered == 1 and steady.exits == [asyncio.CancelledError]
    error = status.latest("rude").last_error or ""
    assert raised in error, error
    if where != "__aenter__":  # a failed start is not exited; a failed run is
        assert rude.exits[0] is type(RAISED[raised]())


@pytest.mark.parametrize("raised", sorted(RAISED))
async def test_anything_a_stream_raises_restarts_only_that_adapter(raised: str) -> None:
    sink, status = Sink(), StatusLog()
    rude, steady = StreamRaiser("rude", RAISED[raised]), Counter("steady")
    async with make_runtime({"rude": rude, "steady": steady}, sink, status_sink=status):
        await status.wait_for(lambda: status.restarts("rude") >= 2)
        await sink.wait_for(lambda: sink.count("steady") >= 3)
    assert sink.count("rude") >= 2  # its batches before each failure were kept
    assert raised in (status.latest("rude").last_error or "")
    assert steady.entered == 1


@pytest.mark.parametrize("raised", sorted(RAISED))
async def test_anything_aexit_raises_is_logged_and_the_adapter_restarts(raised: str) -> None:
    sink, status = Sink(), StatusLog()
    rude = Raiser("rude", "__aexit__", RAISED[raised])
    with structlog.testing.capture_logs(processors=[merge_contextvars]) as logs:
        async with make_runtime({"rude": rude}, sink, status_sink=status):
            await rude.progress.wait_for(lambda: rude.entered >= 3)
    failures = [e for e in logs if e["event"] == "adapter.stop_failed"]
    # every exit after a crash (at shutdown a CancelledError is taken for the shutdown's own)
    assert len(failures) >= rude.exits.count(ConnectionResetError) >= 2
    assert all(raised in e["error"] for e in failures)


@pytest.mark.parametrize("raised", ["SystemExit", "KeyboardInterrupt", "Fabricated"])
async def test_a_sync_read_raising_in_its_thread_is_that_adapters_crash(raised: str) -> None:
    class SyncRaiser(Base):
        def read(self) -> Sequence[Reading]:
            self.reads += 1
            raise RAISED[raised]()

    sink, status = Sink(), StatusLog()
    rude, steady = SyncRaiser("rude"), Counter("steady")
    async with make_runtime({"rude": rude, "steady": steady}, sink, status_sink=status):
        await status.wait_for(lambda: status.restarts("rude") >= 2)
        await sink.wait_for(lambda: sink.count("steady") >= 3)
    assert (status.latest("rude").last_error or "").startswith(f"read crashed: {raised}")
    assert rude.exits[0] is type(RAISED[raised]())


class Swallower(Counter):
    """Worst behaved: catches every cancellation inside read() and never returns (until
    ``released``, so that the test can end its task)."""

    released = False

    async def read(self) -> Sequence[Reading]:
        await self.tick()
        while not self.released:
            with contextlib.suppress(asyncio.CancelledError):  # the misbehaviour under test
                await asyncio.sleep(0.01)
        raise asyncio.CancelledError


async def test_shutdown_abandons_an_adapter_that_never_gives_up_after_a_grace() -> None:
    sink, status = Sink(), StatusLog()
    rude = Swallower("rude", config(poll=0.05, read_timeout=5.0))
    steady = Counter("steady")
    loop = asyncio.get_running_loop()
    runtime = make_runtime(
        {"rude": rude, "steady": steady}, sink, status_sink=status, stop_timeout=0.2
    )
    with structlog.testing.capture_logs() as logs:
        async with runtime:
            await rude.progress.wait_for(lambda: rude.reads >= 1)
            await sink.wait_for(lambda: sink.count("steady") >= 2)
            stopping = loop.time()
    took = loop.time() - stopping
    assert 1.2 <= took < 2.0, took  # stop_timeout + 1 s, then it is left behind
    assert steady.exits == [asyncio.CancelledError]
    abandoned = [e for e in logs if e["event"] == "adapter.abandoned"]
    assert [e["adapter"] for e in abandoned] == ["rude"]
    final = status.latest("rude")
    assert final.state == "failed" and "did not stop" in (final.last_error or "")
    (leftover,) = [t for t in asyncio.all_tasks() if t.get_name() == "adapter:rude"]
    assert not leftover.done()  # still alive: supervise.run_process gives it its last second
    rude.released = True
    leftover.cancel()
    with pytest.raises(asyncio.CancelledError):
        await leftover


# --- channels -----------------------------------------------------------------------------------


class Learner(Counter):
    """Learns its counter's wrap modulus from its first read."""

    def channels(self) -> Sequence[Channel]:
        wrap = 1000.0 if self.reads else None
        return [Channel("energy", ChannelKind.ENERGY, Unit.KWH, wrap=wrap)]


async def test_channels_are_handed_over_at_start_and_when_they_change() -> None:
    sink = Sink()
    seen: list[tuple[str, tuple[Channel, ...]]] = []
    failures = 1

    async def channels_sink(name: str, channels: tuple[Channel, ...]) -> None:
        nonlocal failures
        if channels[0].wrap is not None and failures:  # the change fails once: retried
            failures -= 1
            raise OSError("database is locked")
        seen.append((name, channels))

    learner = Learner("learner")
    runtime = make_runtime({"learner": learner}, sink, channels_sink=channels_sink)
    async with runtime:
        await sink.wait_for(lambda: sink.count("learner") >= 3)
    assert [channels[0].wrap for _, channels in seen] == [None, 1000.0]
    assert {name for name, _ in seen} == {"learner"}
    assert sink.count("learner") == learner.reads - 1  # the batch of the failed hand-over


# --- threads and the event loop -----------------------------------------------------------------


async def test_a_blocking_sync_read_runs_in_a_thread() -> None:
    sink = Sink()
    blocking = BlockingRead("blocking", config(poll=0.3, read_timeout=1.0), block=0.2)
    loop = asyncio.get_running_loop()
    lags: list[float] = []

    async def measure_lag() -> None:
        while True:
            before = loop.time()
            await asyncio.sleep(0.005)
            lags.append(loop.time() - before - 0.005)

    async with make_runtime({"blocking": blocking}, sink), asyncio.TaskGroup() as group:
        ticker = group.create_task(measure_lag())
        await sink.wait_for(lambda: sink.count("blocking") >= 2)
        ticker.cancel()
    assert blocking.reads >= 2
    assert threading.get_ident() not in blocking.thread_ids
    assert blocking.context_adapter[0] == "blocking"  # logging context follows into the thread
    assert len(lags) > 20  # the loop kept turning while the reads blocked for 2 x 200 ms
    assert max(lags) < 0.1, max(lags)


class GeneratorRead(Base):
    """A plain read written as a generator: one blocking register read per ``yield``."""

    def __init__(self, name: str, cfg: AdapterConfig | None = None) -> None:
        super().__init__(name, cfg)
        self.thread_ids: set[int] = set()

    def read(self) -> Iterator[Reading]:
        for _ in range(2):
            time.sleep(0.1)
            self.thread_ids.add(threading.get_ident())
            self.reads += 1
            yield Reading("energy", time.time(), float(self.reads))


class AsyncGeneratorResult(GeneratorRead):
    """An async read that hands back a lazy generator of blocking register reads."""

    async def read(self) -> Iterator[Reading]:  # type: ignore[override]
        return super().read()


async def _loop_lag(run: Callable[[], Awaitable[None]]) -> float:
    """The worst delay of a 5 ms sleep on the loop while ``run()`` is awaited."""
    loop = asyncio.get_running_loop()
    lags: list[float] = []

    async def measure() -> None:
        while True:
            before = loop.time()
            await asyncio.sleep(0.005)
            lags.append(loop.time() - before - 0.005)

    async with asyncio.TaskGroup() as group:
        ticker = group.create_task(measure())
        await run()
        ticker.cancel()
    assert len(lags) > 10
    return max(lags)


@pytest.mark.parametrize("kind", [GeneratorRead, AsyncGeneratorResult])
async def test_a_lazy_batch_is_consumed_in_the_thread_not_on_the_loop(
    kind: type[GeneratorRead],
) -> None:
    sink = Sink()
    adapter = kind("lazy", config(poll=0.3, read_timeout=1.0))

    async def run() -> None:
        async with make_runtime({"lazy": adapter}, sink):
            await sink.wait_for(lambda: sink.count("lazy") >= 2)

    assert await _loop_lag(run) < 0.08
    assert threading.get_ident() not in adapter.thread_ids
    assert [len(b) for b in sink.of("lazy")[:2]] == [2, 2]


class LazyStream(GeneratorRead):
    """A stream whose batches are lazy generators of blocking register reads."""

    read = None  # type: ignore[assignment]

    async def stream(self) -> AsyncIterator[Iterator[Reading]]:
        while True:
            yield GeneratorRead.read(self)
            await asyncio.sleep(0.2)


async def test_a_lazy_stream_batch_is_consumed_in_a_thread() -> None:
    sink = Sink()
    adapter = LazyStream("lazy")

    async def run() -> None:
        async with make_runtime({"lazy": adapter}, sink):
            await sink.wait_for(lambda: sink.count("lazy") >= 2)

    assert await _loop_lag(run) < 0.08
    assert threading.get_ident() not in adapter.thread_ids
    assert [len(b) for b in sink.of("lazy")[:2]] == [2, 2]


async def test_a_lazy_batch_past_its_deadline_is_a_timed_out_read() -> None:
    sink, status = Sink(), StatusLog()
    adapter = GeneratorRead("lazy", config(poll=0.5, read_timeout=0.15))
    timed_out = lambda: any(  # noqa: E731
        (s.last_error or "").startswith("read timed out") for s in status.pushed
    )
    async with make_runtime({"lazy": adapter}, sink, status_sink=status, status_interval=0):
        await status.wait_for(timed_out)
    assert sink.count("lazy") == 0


class Unconvertible(float):
    def __float__(self) -> float:
        raise MemoryError("the device SDK ran out of buffers")


class OddChannel(str):
    def __hash__(self) -> int:
        raise MemoryError("no hash today")


@pytest.mark.parametrize(
    "reading",
    [
        Reading("energy", 1.8e9, Unconvertible(1.0)),
        Reading("energy", Unconvertible(1.8e9), 1.0),
    ],
    ids=["value", "time"],
)
async def test_what_converting_a_reading_raises_fails_only_its_adapter(reading: Reading) -> None:
    class Odd(Counter):
        async def read(self) -> Sequence[Reading]:
            await self.tick()
            return [reading]

    sink, status = Sink(), StatusLog()
    healthy = Counter("healthy")
    async with make_runtime({"odd": Odd("odd"), "healthy": healthy}, sink, status_sink=status):
        await status.wait_for(lambda: status.restarts("odd") >= 2)
        await sink.wait_for(lambda: sink.count("healthy") >= 2)
    error = status.latest("odd").last_error or ""
    assert error.startswith("checking the readings failed: MemoryError"), error


async def test_a_str_subclass_channel_is_checked_as_a_plain_str() -> None:
    checked = check_reading(Reading(OddChannel("energy"), 1.8e9, 2.0), frozenset({"energy"}))
    assert checked == Reading("energy", 1.8e9, 2.0)
    assert isinstance(checked, Reading) and type(checked.channel) is str


async def test_an_async_read_that_blocks_the_loop_cannot_be_cut_off_only_reported() -> None:
    class Blocker(Counter):
        async def read(self) -> Sequence[Reading]:
            await self.tick()
            time.sleep(0.08)  # noqa: ASYNC251  # the partner bug this test is about
            return self.reading()

    sink = Sink()
    blocker = Blocker("blocker", config(poll=0.1, read_timeout=0.02))
    with structlog.testing.capture_logs() as logs:
        async with make_runtime({"blocker": blocker}, sink):
            await sink.wait_for(lambda: sink.count("blocker") >= 1)
    overran = [e for e in logs if e["event"] == "adapter.read_overran"]
    assert overran[0]["timeout"] == 0.02
    assert overran[0]["seconds"] >= 0.08


async def test_a_hung_sync_read_holds_one_thread_and_does_not_block_shutdown() -> None:
    sink, status = Sink(), StatusLog()
    stuck = BlockingRead("stuck", config(poll=0.05), block=30.0)
    steady = Counter("steady")
    try:
        async with make_runtime({"stuck": stuck, "steady": steady}, sink, status_sink=status):
            await status.wait_for(lambda: status.restarts("stuck") >= 1)
            await stuck.progress.wait_for(lambda: stuck.entered >= 2)
            await sink.wait_for(lambda: sink.count("steady") >= 3)
        assert stuck.reads == 1  # later ticks were skipped while its thread was busy
        assert stuck.entered >= 2
        assert len(stuck.exits) == stuck.entered  # exited, though its thread is still stuck
    finally:
        stuck.release.set()


# --- push adapters ------------------------------------------------------------------------------


async def test_push_batches_flow_and_an_ended_stream_restarts() -> None:
    sink, status = Sink(), StatusLog()
    pusher = Pusher("pusher", batches=2)
    async with make_runtime({"pusher": pusher}, sink, status_sink=status):
        await sink.wait_for(lambda: sink.count("pusher") >= 5)
    values = [batch[0].value for batch in sink.of("pusher")[:5]]
    assert values == [1.0, 2.0, 1.0, 2.0, 1.0]
    assert "stream ended" in {s.last_error for s in status.pushed}  # shown while it lasted
    assert pusher.streams_closed == pusher.entered  # every stream was closed


async def test_push_stream_is_closed_at_shutdown() -> None:
    sink = Sink()
    pusher = Pusher("pusher", batches=None)
    async with make_runtime({"pusher": pusher}, sink):
        await sink.wait_for(lambda: sink.count("pusher") >= 2)
    assert pusher.streams_closed == 1
    assert pusher.exits == [asyncio.CancelledError]


# --- shutdown -----------------------------------------------------------------------------------


async def test_shutdown_exits_every_started_adapter() -> None:
    sink = Sink()
    adapters: dict[str, Base] = {
        "steady": Counter("steady"),
        "slow": Counter("slow", config(poll=0.05, read_timeout=10.0), delay=5.0),  # mid-read
        "push": Pusher("push", batches=None),
        "hung": HungRead("hung", config(poll=0.05, read_timeout=10.0)),
        "crashy": Crashy("crashy"),
        "sync": BlockingRead("sync", config(poll=0.05, read_timeout=1.0), block=0.01),
    }
    async with make_runtime(adapters, sink, backoff_initial=0.02):
        await sink.wait_for(lambda: sink.count("steady") >= 3 and sink.count("push") >= 1)
        slow, hung = adapters["slow"], adapters["hung"]  # wait until both are inside a read
        await slow.progress.wait_for(lambda: slow.reads >= 1)
        await hung.progress.wait_for(lambda: hung.reads >= 1)
    for name, adapter in adapters.items():
        assert adapter.entered >= 1, name
        assert len(adapter.exits) == adapter.entered, name
    assert adapters["slow"].exits == [asyncio.CancelledError]
    assert adapters["hung"].exits == [asyncio.CancelledError]


async def test_shutdown_completes_when_an_adapter_swallows_cancellation() -> None:
    sink = Sink()
    rude = SwallowsCancel("rude", config(poll=0.05, read_timeout=1.0))
    async with make_runtime({"rude": rude}, sink):
        await sink.wait_for(lambda: sink.count("rude") >= 2)
        await rude.progress.wait_for(lambda: rude.reads >= 3)  # likely mid-read when cancelled
    assert rude.exits == [asyncio.CancelledError]


async def test_shutdown_does_not_wait_forever_for_a_hung_exit() -> None:
    sink = Sink()
    slow_exit = SlowExit("slow_exit")
    loop = asyncio.get_running_loop()
    async with make_runtime({"slow_exit": slow_exit}, sink, stop_timeout=0.05):
        await sink.wait_for(lambda: sink.count("slow_exit") >= 1)
        stopping = loop.time()
    assert loop.time() - stopping < 1.0
    assert slow_exit.exits == [asyncio.CancelledError]


async def test_outer_cancellation_stops_everything() -> None:
    sink = Sink()
    meters = [Counter(f"m{i}") for i in range(3)]
    started = asyncio.Event()

    async def app() -> None:
        async with make_runtime({m.name: m for m in meters}, sink):
            started.set()
            await asyncio.Event().wait()

    task = asyncio.create_task(app())
    await started.wait()
    await sink.wait_for(lambda: all(sink.count(m.name) >= 1 for m in meters))
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert all(m.exits == [asyncio.CancelledError] for m in meters)


async def test_a_failing_sink_loses_that_batch_and_the_adapters_run_on() -> None:
    meters = [Counter("a"), Counter("b")]
    stored = Sink()
    calls = 0

    async def flaky_sink(name: str, readings: Sequence[Reading]) -> None:
        nonlocal calls
        calls += 1
        if calls <= 4:
            raise OSError("disk full")
        await stored(name, readings)

    status = StatusLog()
    with structlog.testing.capture_logs(processors=[merge_contextvars]) as logs:
        async with make_runtime({m.name: m for m in meters}, flaky_sink, status_sink=status):
            await stored.wait_for(lambda: stored.count("a") >= 2 and stored.count("b") >= 2)
    assert all(m.entered == 1 for m in meters)  # not the adapters' fault: no restart
    failed = [e for e in logs if e["event"] == "adapter.sink_failed"]
    assert len(failed) == 4
    assert failed[0]["error"] == "OSError: disk full"
    assert failed[0]["exc_info"].args == ("disk full",)  # not ours: the traceback is logged
    final = {s.name: s for s in status.pushed}
    assert final["a"].readings + final["b"].readings == stored.count("a") + stored.count("b")


async def test_a_fatal_sink_error_ends_the_runtime_unwrapped() -> None:
    meters = [Counter("a"), Counter("b")]
    fatal: list[BaseException] = []

    async def corrupt_sink(name: str, readings: Sequence[Reading]) -> None:
        raise StoreCorrupt("database disk image is malformed")

    async def until_fatal() -> None:
        async with make_runtime({m.name: m for m in meters}, corrupt_sink, on_fatal=fatal.append):
            async with asyncio.timeout(5):
                while not fatal:  # noqa: ASYNC110 - on_fatal is a plain callback
                    await asyncio.sleep(0.01)

    with pytest.raises(StoreCorrupt, match="malformed"):
        await until_fatal()
    assert isinstance(fatal[0], StoreCorrupt)
    assert all(len(m.exits) == m.entered for m in meters)


async def test_an_error_in_the_body_propagates_unwrapped() -> None:
    sink = Sink()
    meter = Counter("m")

    async def app() -> None:
        async with make_runtime({"m": meter}, sink):
            await sink.wait_for(lambda: sink.count("m") >= 1)
            raise LookupError("from the body")

    with pytest.raises(LookupError, match="from the body"):
        await app()
    assert meter.exits == [asyncio.CancelledError]


async def test_the_runtime_cannot_be_entered_twice() -> None:
    runtime = make_runtime({}, Sink())
    async with runtime:
        with pytest.raises(RuntimeError, match="already running"):
            await runtime.__aenter__()


# --- status -------------------------------------------------------------------------------------


def _transitions(states: list[str]) -> list[str]:
    return [s for i, s in enumerate(states) if i == 0 or states[i - 1] != s]


async def test_status_transitions_are_reported() -> None:
    sink, status = Sink(), StatusLog()
    crashy = Crashy("crashy")
    async with make_runtime({"crashy": crashy}, sink, status_sink=status):
        await status.wait_for(lambda: len(_transitions(status.states("crashy"))) >= 7)
    states = _transitions(status.states("crashy"))  # an error cleared is pushed too, same state
    assert states[:7] == [
        "starting",
        "running",
        "backoff",
        "starting",
        "running",
        "backoff",
        "starting",
    ]
    assert states[-1] == "stopped"
    final = status.latest("crashy")
    assert final.type == "test"
    assert final.readings == sink.count("crashy")
    assert final.last_reading_at is not None


async def test_counters_are_pushed_at_most_every_status_interval() -> None:
    sink, status = Sink(), StatusLog()
    async with make_runtime({"m": Counter("m")}, sink, status_sink=status, status_interval=60):
        await sink.wait_for(lambda: sink.count("m") >= 5)
    assert status.states("m") == ["starting", "running", "stopped"]
    assert status.latest("m").readings == sink.count("m")


async def test_status_snapshot_with_load_errors_and_an_injected_clock() -> None:
    sink, status = Sink(), StatusLog()
    ticks = iter(range(1000, 100_000))
    errors = {"pump": AdapterLoadError("unknown adapter type 'modbuss'", adapter="pump")}
    runtime = make_runtime(
        {"m": Counter("m")},
        sink,
        status_sink=status,
        load_errors=errors,
        clock=lambda: float(next(ticks)),
    )
    assert [(s.name, s.state) for s in runtime.status()] == [("m", "stopped"), ("pump", "failed")]
    async with runtime:
        await sink.wait_for(lambda: sink.count("m") >= 2)
        m, pump = runtime.status()
        assert m.state == "running"
        assert m.readings >= 2
        assert m.restarts == 0
        assert m.last_reading_at is not None
        assert 1000 < m.since < m.last_reading_at
        assert pump == AdapterStatus(
            "pump", "", "failed", "adapter 'pump': unknown adapter type 'modbuss'", since=1000.0
        )
    assert status.pushed[0] == pump  # pushed before any adapter started
    assert [s.state for s in runtime.status()] == ["stopped", "failed"]


async def test_a_failing_status_sink_is_logged_and_ignored() -> None:
    sink = Sink()

    async def broken_status(status: AdapterStatus) -> None:
        raise OSError("database is locked")

    with structlog.testing.capture_logs(processors=[merge_contextvars]) as logs:
        async with make_runtime({"m": Counter("m")}, sink, status_sink=broken_status):
            await sink.wait_for(lambda: sink.count("m") >= 3)
    failures = [e for e in logs if e["event"] == "adapter.status_failed"]
    assert failures
    assert failures[0]["error"] == "OSError: database is locked"


async def test_adapters_the_runtime_cannot_drive_are_failed() -> None:
    class NoConfig(Counter):
        pass

    bare = NoConfig("bare")
    del bare.config
    both = Pusher("both", batches=1)
    both.read = Counter("x").read  # type: ignore[attr-defined]
    runtime = make_runtime({"bare": bare, "both": both}, Sink())
    async with runtime:
        pass
    statuses = {s.name: s for s in runtime.status()}
    assert statuses["bare"].state == statuses["both"].state == "failed"
    assert statuses["bare"].last_error is not None
    assert "config" in statuses["bare"].last_error
    assert statuses["both"].type == "test"
    assert bare.entered == both.entered == 0


async def test_tasks_are_named_after_their_adapter() -> None:
    sink = Sink()
    async with make_runtime({"m": Counter("m"), "n": Counter("n")}, sink):
        names = {task.get_name() for task in asyncio.all_tasks()}
    assert {"adapter:m", "adapter:n"} <= names


async def test_adapters_built_from_config_run_end_to_end() -> None:
    tables = {
        "heater": {"type": "simulated", "power_kw": 3600.0, "poll_interval": "50ms"},
        "broken": {"type": "simulated", "power": 1},
    }
    adapters, errors = build_adapters(tables)
    sink, status = Sink(), StatusLog()
    runtime = make_runtime(adapters, sink, status_sink=status, load_errors=errors)
    async with runtime:
        await sink.wait_for(lambda: sink.count("heater") >= 3)
    first, *_, last = sink.of("heater")
    energy = {r.channel: r for r in first}["energy"], {r.channel: r for r in last}["energy"]
    # 3600 kW is 1 kWh per second: the counter grew by the time between the readings
    assert energy[1].value - energy[0].value == pytest.approx(energy[1].at - energy[0].at)
    assert status.latest("broken").state == "failed"
    assert "adapters.broken.power: unknown key" in (status.latest("broken").last_error or "")
