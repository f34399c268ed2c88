"""The adapter conformance suite: what the gateway expects of every adapter, as tests.

One line in an adapter project's tests::

    from gateway.testing import conformance
    TestMyMeter = conformance.suite(MyMeter, device=my_device)

``device`` is a factory of async context managers, each yielding a :class:`Device`: a
real (or simulated) device the adapter talks to, with the ``[adapters.NAME]`` table that
points the adapter at it, and ``stop()``/``start()`` to make it disappear and come back.
Each check gets a fresh device, run in a thread of its own with its own event loop, so
that the adapter's loop holds only the adapter's work (lag and leaked tasks are the
adapter's) and a device cannot hide an adapter's blocking call.

The checks (one test each, a readable message when one fails):

* ``starts_and_stops``: enter, read well-formed readings, leave, twice (the gateway
  re-enters the same instance after a crash); no task left behind.
* ``survives_cancellation``: cancelled after 0, 1, 2, 3, 5, 8, 13 and 21 loop steps and
  after 1, 5, 20 and 50 ms, the adapter's task ends within :data:`STOP_LIMIT` with
  CancelledError (never swallowed) and leaves no task behind.
* ``reconnects``: stop the device, start it again: readings come back within
  ``reconnect_within`` seconds (the check restarts the adapter after a crash, as the
  gateway's runtime does; a read that fails with AdapterReadError is not a crash).
* ``reports_staleness``: while the device is gone, a read raises AdapterReadError (or
  times out) and a stream yields nothing: never the last value again.
* ``never_blocks_the_loop``: the event loop's lag stays under :data:`MAX_LAG` (50 ms)
  through start, reads, the device going away and coming back, and stop.
* ``counter_wrap_reset_glitch``: needs ``device.set_counter(value)`` (the first energy
  channel's value, in its unit): the adapter passes each raw value through, and the
  gateway's energy core makes the same of what it reported as of the truth.
* ``rejects_bad_config``: an unknown key, and each of ``bad_values``, fail with a
  ConfigError naming ``adapters.NAME.KEY``.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import inspect
import math
import threading
import time
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import pytest

from gateway.errors import AdapterReadError, ConfigError
from gateway.metering.discovery import convert_adapter_config
from gateway.metering.energy import counter_intervals
from gateway.metering.runtime import adapter_channels, check_reading
from gateway.plugin import Adapter, Channel, ChannelKind, Reading

__all__ = [
    "CHECKS",
    "MAX_LAG",
    "STOP_LIMIT",
    "ConformanceError",
    "Device",
    "DeviceFactory",
    "config_for",
    "run_check",
    "suite",
]

MAX_LAG = 0.050  # seconds the event loop may be held by the adapter at once
STOP_LIMIT = 2.0  # seconds a cancelled adapter may take to end
LEAK_GRACE = 1.0  # seconds tasks may take to end after the adapter's __aexit__
CHECK_TIMEOUT = 60.0  # a whole check, as a last resort
_LAG_TICK = 0.005

T = TypeVar("T")


class Device(Protocol):
    """A device under the adapter. ``config`` is the adapter's table, ``type`` included."""

    config: Mapping[str, Any]

    async def stop(self) -> None: ...

    async def start(self) -> None: ...


DeviceFactory = Callable[[], contextlib.AbstractAsyncContextManager[Device]]


class ConformanceError(AssertionError):
    """A check failed; the message says what the adapter did and what it should do."""


def config_for(adapter: type[Adapter], table: Mapping[str, Any], name: str = "dut") -> Any:
    """``table`` (an ``[adapters.NAME]`` table) as ``adapter.Config``, decoded as the gateway
    decodes it (durations as ``"10s"``); ConfigError naming ``adapters.NAME.KEY`` if bad."""
    return convert_adapter_config(name, adapter, table)


def _fail(message: str) -> ConformanceError:
    return ConformanceError(message)


# --- the device's own thread --------------------------------------------------------------------


class _DeviceThread:
    """Runs the device factory's context in a thread with its own loop; calls go across."""

    def __init__(self, factory: DeviceFactory) -> None:
        self._factory = factory
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="ecgw-kit-device")
        self._exit: asyncio.Event | None = None
        self._task: Future[None] | None = None
        self.device: Device | None = None

    def __enter__(self) -> _DeviceThread:
        self._thread.start()
        ready: Future[Device] = Future()
        self._task = asyncio.run_coroutine_threadsafe(self._hold(ready), self._loop)
        try:
            self.device = ready.result(timeout=30)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    async def _hold(self, ready: Future[Device]) -> None:
        self._exit = asyncio.Event()
        try:
            async with self._factory() as device:
                ready.set_result(device)
                await self._exit.wait()
        except BaseException as exc:
            if not ready.done():
                ready.set_exception(exc)
            raise

    def __exit__(self, *exc: object) -> None:
        if self._exit is not None:
            self._loop.call_soon_threadsafe(self._exit.set)
        if self._task is not None:
            with contextlib.suppress(BaseException):
                self._task.result(timeout=30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=30)
        if not self._thread.is_alive():  # stopped: finish what the device left, here
            _close(self._loop)

    async def call(self, what: Callable[[], Coroutine[Any, Any, T]]) -> T:
        """Await ``what()`` in the device's loop, from the adapter's loop."""
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(what(), self._loop))


# --- one check's context ------------------------------------------------------------------------


@dataclass
class _Options:
    adapter: type[Adapter]
    device: DeviceFactory
    name: str
    bad_values: Mapping[str, Any]
    reconnect_within: float


@dataclass
class _Context:
    options: _Options
    devices: _DeviceThread
    phase: str = "starting"

    @property
    def device(self) -> Device:
        assert self.devices.device is not None
        return self.devices.device

    @property
    def who(self) -> str:
        return self.options.adapter.__name__

    def adapter(self) -> Adapter:
        options = self.options
        config = config_for(options.adapter, self.device.config, options.name)
        return options.adapter(options.name, config)  # type: ignore[call-arg]

    async def stop_device(self) -> None:
        await self.devices.call(self.device.stop)

    async def start_device(self) -> None:
        await self.devices.call(self.device.start)


class _Reader:
    """Gets one batch from a polling or a push adapter, as the runtime would."""

    def __init__(self, adapter: Adapter) -> None:
        self.adapter = adapter
        config = getattr(adapter, "config", None)
        poll = float(getattr(config, "poll_interval", 10.0))
        read_timeout = getattr(config, "read_timeout", None)
        self.timeout = max(float(read_timeout) if read_timeout else min(poll, 30.0), 0.5)
        self._read = getattr(adapter, "read", None)
        self._stream: AsyncIterator[Sequence[Reading]] | None = None

    async def next(self) -> Sequence[Reading]:
        """One batch; AdapterReadError or TimeoutError when none came in time."""
        if callable(self._read):
            async with asyncio.timeout(self.timeout):
                result: Any = self._read()
                if inspect.isawaitable(result):
                    result = await result
                return tuple(result)
        if self._stream is None:
            self._stream = self.adapter.stream()  # type: ignore[attr-defined]
        try:
            async with asyncio.timeout(self.timeout):
                return tuple(await anext(self._stream))
        except TimeoutError:
            self._stream = None  # the cancelled generator is finished
            raise
        except StopAsyncIteration:
            self._stream = None
            raise AdapterReadError("the stream ended", adapter=self.adapter.name) from None

    async def close(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None and hasattr(stream, "aclose"):
            await stream.aclose()


def _well_formed(who: str, adapter: Adapter, batch: Sequence[Reading], when: str) -> None:
    names = frozenset(c.name for c in adapter_channels(adapter.name, adapter))
    for item in batch:
        checked = check_reading(item, names)
        if not isinstance(checked, Reading):
            reason, channel = checked
            raise _fail(
                f"{who} emitted a reading the gateway rejects {when}: {reason} ({channel}); "
                "each Reading needs a channel from channels(), a finite value and a "
                "UTC time in seconds since the epoch"
            )


async def _readings(ctx: _Context, reader: _Reader, when: str) -> Sequence[Reading]:
    try:
        batch = await reader.next()
    except (AdapterReadError, TimeoutError) as exc:
        raise _fail(f"{ctx.who} could not read {when}: {exc!r}") from exc
    if not batch:
        raise _fail(f"{ctx.who} returned no readings {when}")
    _well_formed(ctx.who, reader.adapter, batch, when)
    return batch


async def _no_leaks(ctx: _Context, before: set[asyncio.Task[Any]], when: str) -> None:
    deadline = time.monotonic() + LEAK_GRACE
    while True:
        current = asyncio.current_task()
        extra = [t for t in asyncio.all_tasks() if t not in before and t is not current]
        if not extra:
            return
        if time.monotonic() > deadline:
            shown = ", ".join(f"{t.get_name()} ({t.get_coro()!r})" for t in extra[:3])
            raise _fail(
                f"{ctx.who} left {len(extra)} task(s) running {when}: {shown}; every task "
                "an adapter starts must be cancelled and awaited in __aexit__"
            )
        await asyncio.sleep(0.01)


# --- the checks ---------------------------------------------------------------------------------


async def starts_and_stops(ctx: _Context) -> None:
    """Enter, read, leave, twice on one instance; nothing left running."""
    before = asyncio.all_tasks()
    adapter = ctx.adapter()
    for round_ in ("first", "second"):
        async with adapter:
            reader = _Reader(adapter)
            await _readings(ctx, reader, f"after its {round_} start")
            await reader.close()
        await _no_leaks(ctx, before, f"after its {round_} stop")


async def survives_cancellation(ctx: _Context) -> None:
    """Cancelled at many points between start and steady reading, it ends promptly."""
    before = asyncio.all_tasks()
    adapter = ctx.adapter()

    async def run() -> None:
        async with adapter:
            reader = _Reader(adapter)
            while True:
                with contextlib.suppress(AdapterReadError, TimeoutError):
                    await reader.next()
                await asyncio.sleep(0)

    points: list[tuple[str, Callable[[], Awaitable[None]]]] = [
        (f"{n} loop steps after start", _after_steps(n)) for n in (0, 1, 2, 3, 5, 8, 13, 21)
    ] + [(f"{ms} ms after start", _after_sleep(ms / 1000)) for ms in (1, 5, 20, 50)]
    for point, wait in points:
        task = asyncio.create_task(run(), name=f"conformance-{ctx.options.name}")
        await wait()
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=STOP_LIMIT)
        if not done:
            raise _fail(
                f"{ctx.who} ignores cancellation: cancelled {point}, its task was still "
                f"running {STOP_LIMIT:g} s later; never catch CancelledError without "
                "raising it again, and await in every loop"
            )
        if not task.cancelled():
            exc = task.exception()
            if exc is None:
                raise _fail(
                    f"{ctx.who} swallowed its cancellation: cancelled {point}, its task "
                    "ended normally; let CancelledError propagate"
                )
            raise _fail(f"{ctx.who} raised {exc!r} when cancelled {point}, not CancelledError")
        await _no_leaks(ctx, before, f"after it was cancelled {point}")


def _after_steps(n: int) -> Callable[[], Awaitable[None]]:
    async def steps() -> None:
        for _ in range(n):
            await asyncio.sleep(0)

    return steps


def _after_sleep(seconds: float) -> Callable[[], Awaitable[None]]:
    async def sleep() -> None:
        await asyncio.sleep(seconds)

    return sleep


async def _attempt(ctx: _Context, holder: list[Any]) -> Sequence[Reading] | str:
    """One read as the runtime does it: a crash exits and re-enters the adapter."""
    stack: contextlib.AsyncExitStack = holder[0]
    reader: _Reader = holder[1]
    try:
        return await reader.next()
    except (AdapterReadError, TimeoutError) as exc:
        return repr(exc)
    except Exception as exc:  # the adapter crashed: the runtime restarts it
        await stack.aclose()
        stack = contextlib.AsyncExitStack()
        holder[0] = stack
        with contextlib.suppress(Exception):
            await stack.enter_async_context(reader.adapter)
        holder[1] = _Reader(reader.adapter)
        return f"crashed: {exc!r}"


async def _through_outage(ctx: _Context, *, stale_check: bool) -> None:
    """Read, stop the device, read, start it, read until readings come back."""
    adapter = ctx.adapter()
    async with contextlib.AsyncExitStack() as outer:
        stack = contextlib.AsyncExitStack()
        outer.push_async_callback(lambda: holder[0].aclose())
        holder: list[Any] = [stack, None]
        ctx.phase = "entering the adapter"
        await stack.enter_async_context(adapter)
        holder[1] = _Reader(adapter)
        ctx.phase = "reading"
        for _ in range(3):
            await _readings(ctx, holder[1], "before the device went away")
        ctx.phase = "stopping the device"
        await ctx.stop_device()
        ctx.phase = "reading while the device is gone"
        for _ in range(3):
            result = await _attempt(ctx, holder)
            if stale_check and not isinstance(result, str) and result:
                raise _fail(
                    f"{ctx.who} returned {len(result)} reading(s) while its device was gone: "
                    "report staleness by raising AdapterReadError (or yielding nothing), "
                    "never by repeating the last values"
                )
        ctx.phase = "starting the device again"
        await ctx.start_device()
        ctx.phase = "reading after the device came back"
        deadline = time.monotonic() + ctx.options.reconnect_within
        last = "no attempt"
        while time.monotonic() < deadline:
            result = await _attempt(ctx, holder)
            if not isinstance(result, str) and result:
                _well_formed(ctx.who, adapter, result, "after the device came back")
                break
            last = result if isinstance(result, str) else "no readings"
            await asyncio.sleep(0.05)
        else:
            raise _fail(
                f"{ctx.who} did not reconnect: no readings within "
                f"{ctx.options.reconnect_within:g} s after its device came back (last: {last}); "
                "after a failed read, connect again on the next read()"
            )
        ctx.phase = "leaving the adapter"
        await holder[1].close()


async def reconnects(ctx: _Context) -> None:
    """Readings come back after the device goes away and returns."""
    await _through_outage(ctx, stale_check=False)


async def reports_staleness(ctx: _Context) -> None:
    """No readings while the device is gone."""
    await _through_outage(ctx, stale_check=True)


async def never_blocks_the_loop(ctx: _Context) -> None:
    """The loop's lag stays under MAX_LAG through start, reads, an outage and stop.

    A machine under load can delay one tick past the limit too, so a lag is only blamed
    on the adapter when a second run shows one as well: a blocking call blocks every time.
    """
    worst, phase = await _worst_lag(ctx)
    if worst > MAX_LAG:
        again, phase_again = await _worst_lag(ctx)
        if again <= MAX_LAG:
            return
        worst, phase = max((worst, phase), (again, phase_again))
        raise _fail(
            f"{ctx.who} blocked the event loop for {worst * 1000:.0f} ms while {phase} "
            f"(limit {MAX_LAG * 1000:.0f} ms): use async I/O, or run blocking calls in a "
            "thread (asyncio.to_thread)"
        )


async def _worst_lag(ctx: _Context) -> tuple[float, str]:
    lags: list[tuple[float, str]] = []

    async def measure() -> None:
        while True:
            started = time.perf_counter()
            await asyncio.sleep(_LAG_TICK)
            lags.append((time.perf_counter() - started - _LAG_TICK, ctx.phase))

    monitor = asyncio.create_task(measure(), name="conformance-lag")
    await asyncio.sleep(_LAG_TICK * 2)
    try:
        await _through_outage(ctx, stale_check=False)
        await asyncio.sleep(_LAG_TICK * 2)
    finally:
        monitor.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await monitor
    return max(lags, default=(0.0, ""))


def _counter_plan(channel: Channel) -> list[tuple[str, float]]:
    wrap = channel.wrap
    plan = [("a start", 1000.0), ("a rise", 1500.0), ("no change", 1500.0)]
    if wrap is not None:
        plan += [("near the wrap", wrap - 300.0), ("a wrap", 200.0)]
    spike = (wrap * 0.999) if wrap is not None else 1e12
    plan += [
        ("a reset", 0.0),
        ("a rise after the reset", 40.0),
        ("a glitch", min(spike, 9e11)),
        ("the value after the glitch", 60.0),
        ("a rise", 80.0),
    ]
    return plan


async def counter_wrap_reset_glitch(ctx: _Context) -> None:
    """Raw counter values pass through; the energy core makes the same of them as of the truth."""
    device = ctx.device
    set_counter = getattr(device, "set_counter", None)
    if not callable(set_counter):
        pytest.skip(
            "the device has no set_counter(value): counter wrap, reset and glitch not checked"
        )
    adapter = ctx.adapter()
    async with adapter:
        channels = adapter_channels(adapter.name, adapter)
        energy = [c for c in channels if c.kind is ChannelKind.ENERGY]
        if not energy:
            pytest.skip(f"{ctx.who} has no energy channel: no counter to check")
        channel = energy[0]
        reader = _Reader(adapter)
        truth: list[tuple[float, float]] = []
        seen: list[tuple[float, float]] = []
        for what, value in _counter_plan(channel):
            await ctx.devices.call(lambda v=value: set_counter(v))  # type: ignore[misc]
            batch = await _readings(ctx, reader, f"after {what}")
            got = [r for r in batch if r.channel == channel.name]
            if not got:
                raise _fail(f"{ctx.who} read no {channel.name!r} after {what}")
            reading = got[-1]
            if not math.isclose(reading.value, value, rel_tol=1e-6, abs_tol=1e-6):
                raise _fail(
                    f"the device's counter was set to {value:g} ({what}) and {ctx.who} "
                    f"reported {reading.value:g} on {channel.name!r}: pass raw counter "
                    "values through; the gateway takes out wraps, resets and glitches"
                )
            truth.append((reading.at, value))
            seen.append((reading.at, reading.value))
        await reader.close()
    span = [(seen[0][0], seen[-1][0])]

    def kwh_of(samples: list[tuple[float, float]]) -> float | None:
        (result,) = counter_intervals(
            samples, span, to_kwh=channel.unit.to_kwh, wrap=channel.wrap, max_gap=3600.0
        )
        return None if result is None else result.kwh

    want, made = kwh_of(truth), kwh_of(seen)
    if made is None or want is None or not math.isclose(made, want) or made < 0:
        raise _fail(
            f"the gateway's energy core made {made} kWh of {ctx.who}'s readings through a wrap, "
            f"a reset and a glitch, and {want} kWh of the device's true counter values"
        )


async def rejects_bad_config(ctx: _Context) -> None:
    """An unknown key and each bad value: ConfigError naming adapters.NAME.KEY."""
    options = ctx.options
    cases = {"no_such_key_in_any_adapter": 1, **options.bad_values}
    for key, value in cases.items():
        table = {**ctx.device.config, key: value}
        want = f"adapters.{options.name}.{key}"
        try:
            convert_adapter_config(options.name, options.adapter, table)
        except ConfigError as exc:
            if exc.key != want and not str(exc.key or "").startswith(want + "."):
                raise _fail(
                    f"{ctx.who}'s config with {key} = {value!r} failed naming {exc.key!r}, "
                    f"not {want!r}: {exc}"
                ) from exc
            continue
        raise _fail(
            f"{ctx.who}'s config accepted {key} = {value!r}: declare every key on its "
            "Config (an AdapterConfig subclass) with a type and bounds (msgspec.Meta)"
        )


CHECKS: Mapping[str, Callable[[_Context], Awaitable[None]]] = {
    f.__name__: f
    for f in (
        starts_and_stops,
        survives_cancellation,
        reconnects,
        reports_staleness,
        never_blocks_the_loop,
        counter_wrap_reset_glitch,
        rejects_bad_config,
    )
}


# --- running ------------------------------------------------------------------------------------


def run_check(
    check: str,
    adapter: type[Adapter],
    *,
    device: DeviceFactory,
    name: str = "dut",
    bad_values: Mapping[str, Any] | None = None,
    reconnect_within: float = 15.0,
) -> None:
    """Run one check (a name in :data:`CHECKS`); ConformanceError says what is wrong."""
    options = _Options(adapter, device, name, dict(bad_values or {}), reconnect_within)
    _collect()  # what earlier tests left is not this check's
    with _DeviceThread(device) as devices:
        ctx = _Context(options, devices)
        loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(asyncio.wait_for(CHECKS[check](ctx), CHECK_TIMEOUT))
        finally:
            _close(loop)
    _collect()  # ... and what this check left is not the next test's


def _collect() -> None:
    """Collect garbage now, not during some unrelated test.

    Sockets left to the collector (pymodbus's server drops one now and then under load)
    are not judged: their ResourceWarning would fail whichever test the collector happened
    to run in. Leaked *tasks* are what the checks judge.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()


_abandoned: list[asyncio.AbstractEventLoop] = []  # loops of tasks that would not end


def _close(loop: asyncio.AbstractEventLoop) -> None:
    """Cancel what is left and close the loop, without waiting for tasks that never end.

    A task that ignores its cancellation cannot be finished: its loop is kept, unclosed
    and referenced, so that the task is never collected half-way (which would raise
    into whatever test runs next, as the gateway's runtime keeps an abandoned adapter).
    """
    tasks = asyncio.all_tasks(loop)
    for task in tasks:
        task.cancel()
    if tasks:
        loop.run_until_complete(asyncio.wait(tasks, timeout=STOP_LIMIT))
    if any(not task.done() for task in tasks):
        _abandoned.append(loop)
        return
    with contextlib.suppress(Exception):
        loop.run_until_complete(asyncio.wait_for(loop.shutdown_asyncgens(), STOP_LIMIT))
    loop.close()


def suite(
    adapter: type[Adapter],
    *,
    device: DeviceFactory,
    name: str = "dut",
    bad_values: Mapping[str, Any] | None = None,
    reconnect_within: float = 15.0,
) -> type:
    """A test class with one test per check; assign it to a ``Test...`` name in a test module.

    ``bad_values`` maps config keys to values the adapter must refuse (each must fail
    naming that key); ``reconnect_within`` is how long readings may take to come back.
    """

    def test(check: str) -> Callable[[object], None]:
        def method(self: object) -> None:
            failure: str | None = None
            try:
                run_check(
                    check,
                    adapter,
                    device=device,
                    name=name,
                    bad_values=bad_values,
                    reconnect_within=reconnect_within,
                )
            except ConformanceError as exc:
                failure = str(exc)
            if failure is not None:  # outside the except: no chained traceback
                pytest.fail(failure, pytrace=False)

        method.__name__ = f"test_{check}"
        method.__doc__ = CHECKS[check].__doc__
        return method

    namespace: dict[str, Any] = {f"test_{check}": test(check) for check in CHECKS}
    namespace["__doc__"] = f"The gateway's conformance checks for {adapter.__name__}."
    return type(f"Test{adapter.__name__}Conformance", (), namespace)
