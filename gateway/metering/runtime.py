"""Run the adapters: start each one, poll or stream it, restart it when it crashes.

:class:`AdapterRuntime` is an async context manager holding one task per
adapter, named ``adapter:NAME``, each run under
:func:`gateway.supervise.supervised`. Each task supervises its adapter:

* **start**: enter the adapter's async context under ``start_timeout``.
* **poll** (an adapter with ``read()``): read at ``origin + k * poll_interval``
  (a fixed cadence that does not drift; missed ticks are skipped), each read
  under ``read_timeout`` (default: the poll interval, at most 30 s). A read
  that raises AdapterReadError or TimeoutError, or runs past its deadline, is
  logged and yields nothing; the adapter lives on. After three reads in a row
  run past their deadline the adapter is taken to be hung and is restarted.
* **push** (an adapter with ``stream()``): every batch the stream yields goes
  to the sink. A stream that ends counts as a crash.
* **crash**: anything else the adapter's code raises, from ``read()``,
  ``stream()``, ``channels()``, ``__aenter__`` or ``__aexit__`` (any
  Exception, and SystemExit, KeyboardInterrupt, GeneratorExit or a
  CancelledError that is not our cancellation), is that adapter's failure: it
  is logged, shown in its status, its context is exited and it is restarted
  after :class:`gateway.Backoff`. The backoff starts over once the adapter has
  run for ``backoff_max`` seconds. The other adapters run on.

A plain (non-async) ``read()`` runs in a daemon thread, at most one at a time
per adapter (ticks are skipped while it is still busy), so blocking partner
code neither stalls the event loop, nor starves the default executor, nor keeps
the process alive at exit (``asyncio.to_thread`` would do all three if the read
never returns). The thread also consumes what the read returns (a generator
``read()`` runs its register reads there, under the read deadline), and an async
read's result, or a batch a stream yields, that is not a list or tuple is
consumed in such a thread too.
Whatever it raises, SystemExit included, comes back to the adapter's task as
its crash. A thread cannot be cancelled: a timed-out plain
read keeps running until it returns and its result is dropped. An *async*
``read()`` that blocks the event loop cannot be interrupted by any deadline
either; the runtime can only log ``adapter.read_overran`` afterwards (and keeps
its readings).

Readings are checked before they reach the sink. Rejected, counted per adapter
(``AdapterStatus.rejected``) and logged as ``adapter.readings_rejected`` (the
first time per reason and channel, then at most every minute with the count),
while the rest of the batch is kept: a reading of a channel not in
``channels()``, a value or time that is not a finite number, a value beyond
±1e15 and a time outside 2000-01-01 .. 2200-01-01 UTC. Whatever checking a
reading raises (a number type whose ``__float__`` fails, MemoryError included)
is that adapter's crash, never the gateway's fatal error.

The sink and the channels sink belong to the gateway, not to the adapter. An
error they raise is logged as ``adapter.sink_failed`` and that batch is not
counted as stored; the adapter goes on. A fatal error
(:data:`gateway.supervise.FATAL`: a broken database) ends the runtime instead:
it is handed to ``on_fatal`` at once and raised again from ``__aexit__``. A
failing status sink is logged and ignored: status is for display.

Leaving the ``async with`` block cancels every adapter task; each runs its
adapter's ``__aexit__`` (under ``stop_timeout``). Shutdown waits for them at
most ``stop_timeout`` + 1 s: an adapter whose code swallows its cancellation
and never returns is logged as ``adapter.abandoned``, shown as failed, and left
behind, so that it cannot keep the gateway from stopping. An exception from the
block itself propagates as it is.

Status (:class:`AdapterStatus`) is pushed to ``status_sink`` on every state
change and, for the counters, at most every ``status_interval`` seconds.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import math
import numbers
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import MappingProxyType, TracebackType
from typing import Any, Literal, NoReturn, Self, cast

import structlog

from gateway.backoff import Backoff
from gateway.errors import (
    AdapterError,
    AdapterLoadError,
    AdapterReadError,
    GatewayError,
    describe,
)
from gateway.plugin import Adapter, AdapterConfig, Channel, ControllableAdapter, Reading
from gateway.supervise import closing, exit_code, is_cancellation, supervised

__all__ = [
    "AdapterRuntime",
    "AdapterStatus",
    "ChannelsSink",
    "FatalSink",
    "Sink",
    "State",
    "StatusSink",
    "adapter_channels",
    "check_reading",
    "next_tick",
]

log = structlog.get_logger(__name__)

State = Literal["starting", "running", "backoff", "failed", "stopped"]

MAX_READ_TIMEOUT = 30.0  # default read deadline: the poll interval, but at most this
HUNG_AFTER = 3  # reads in a row past their deadline before the adapter is restarted
STATUS_TIMEOUT = 5.0  # deadline for one status_sink call
STOP_MARGIN = 1.0  # shutdown waits stop_timeout + this for an adapter, then abandons it
MAX_ABS_VALUE = 1e15  # a reading beyond this (in its channel's unit) is not a measurement
EARLIEST = 946_684_800.0  # 2000-01-01T00:00:00Z: readings must be at or after
LATEST = 7_258_118_400.0  # 2200-01-01T00:00:00Z: ... and before
REJECTED_LOG_EVERY = 60.0  # seconds between adapter.readings_rejected lines for one cause


@dataclass
class AdapterStatus:
    """What ``ecgw status`` shows for one adapter. Times are clock() seconds."""

    name: str
    type: str  # the config's type; "" if the adapter failed before its type was known
    state: State
    last_error: str | None = None
    last_reading_at: float | None = None  # when readings were last committed by the sink
    readings: int = 0  # readings committed since the runtime started
    restarts: int = 0
    since: float = 0.0  # when the adapter entered ``state``
    rejected: int = 0  # readings rejected at ingest since the runtime started


Sink = Callable[[str, Sequence[Reading]], Awaitable[None]]
"""``(adapter name, readings)``; awaited: when it returns the readings are committed."""
ChannelsSink = Callable[[str, tuple[Channel, ...]], Awaitable[None]] | None
"""``(adapter name, channels)``: called when an adapter's channels are first seen or change."""
StatusSink = Callable[[AdapterStatus], Awaitable[None]] | None
FatalSink = Callable[[BaseException], None] | None

_NO_LOAD_ERRORS: Mapping[str, AdapterLoadError] = MappingProxyType({})
_abandoned: set[asyncio.Task[None]] = set()  # kept referenced until the loop closes


# --- pure checks and schedule -------------------------------------------------------------------


def next_tick(origin: float, interval: float, now: float) -> float:
    """The first tick ``origin + k * interval`` (k >= 1) strictly after ``now``.

    Ticks that ``now`` has already passed are skipped, not made up.
    """
    k = max(1, math.floor((now - origin) / interval) + 1)
    return origin + k * interval


def check_reading(item: object, channels: frozenset[str]) -> Reading | tuple[str, str]:
    """The reading with float fields, or why it is rejected: ``(reason, channel)``."""
    if not isinstance(item, Reading):
        return "not a Reading", type(item).__name__
    channel: object = item.channel  # partners may put anything here
    if not isinstance(channel, str):
        return "channel is not a str", type(channel).__name__
    channel = str.__str__(channel)  # a plain str: a subclass's __hash__/__eq__ is not run
    if channel not in channels:
        return "unknown channel", channel
    fields: tuple[object, object] = (item.at, item.value)
    if not all(isinstance(x, numbers.Real) and not isinstance(x, bool) for x in fields):
        return "value or time is not a number", channel
    try:
        at, value = float(item.at), float(item.value)
    except (OverflowError, ValueError):  # an int too large for a float
        return "value or time is not finite", channel
    if not (math.isfinite(at) and math.isfinite(value)):
        return "value or time is not finite", channel
    if abs(value) > MAX_ABS_VALUE:
        return "value is implausible", channel
    if not EARLIEST <= at < LATEST:
        return "time is outside 2000..2200", channel
    return Reading(channel, at, value)


def adapter_channels(name: str, adapter: Adapter) -> tuple[Channel, ...]:
    """``adapter.channels()`` as a tuple; AdapterError if the plugin's code fails or lies.

    Whatever ``channels()`` raises (SystemExit included: a plain function cannot
    be cancelled, so nothing it raises is a shutdown) becomes the adapter's error.
    """
    try:
        channels = tuple(adapter.channels())
    except BaseException as exc:  # plugin code: any failure is the adapter's
        raise AdapterError(f"channels() failed: {describe(exc)}", adapter=name) from exc
    wrong = [type(c).__name__ for c in channels if not isinstance(c, Channel)]
    if wrong:
        raise AdapterError(f"channels() returned {wrong[0]}, not Channel", adapter=name)
    return channels


# --- supervision --------------------------------------------------------------------------------


class _Crash(Exception):
    """The adapter's own code failed; restart it.

    ``reason`` is one line for logs and status; ``error`` is what the adapter's
    ``__aexit__`` is given: its own exception, or one saying what it did wrong.
    """

    def __init__(self, reason: str, error: BaseException) -> None:
        self.reason = reason
        self.error = error
        super().__init__(reason)


class _Throttle:
    """Whether to log a recurring cause now: the first time, then at most every ``every`` s."""

    def __init__(self, every: float) -> None:
        self.every = every
        self._logged_at: dict[tuple[str, str], float] = {}
        self._held: dict[tuple[str, str], int] = {}

    def hit(self, key: tuple[str, str], now: float) -> int | None:
        """Count one occurrence; the count to log now (all since the last line), or None."""
        held = self._held.get(key, 0) + 1
        last = self._logged_at.get(key)
        if last is not None and now - last < self.every:
            self._held[key] = held
            return None
        self._logged_at[key], self._held[key] = now, 0
        return held


@dataclass(eq=False)
class _Supervised:
    adapter: Adapter
    config: AdapterConfig
    status: AdapterStatus
    read: Callable[[], Any] | None  # exactly one of read and stream is set
    stream: Callable[[], AsyncIterator[object]] | None
    backoff: Backoff
    channels: tuple[Channel, ...] = ()
    names: frozenset[str] = frozenset()
    registered: tuple[Channel, ...] | None = None  # what the channels sink has taken
    rejects: _Throttle = field(default_factory=lambda: _Throttle(REJECTED_LOG_EVERY))
    thread: threading.Thread | None = None  # the thread of a plain read(), while it runs
    published_at: float = -math.inf
    published_error: str | None = None


class AdapterRuntime:
    """Supervise adapters, one task each. ``async with`` starts them, leaving stops them."""

    def __init__(
        self,
        adapters: Mapping[str, Adapter],
        sink: Sink,
        *,
        channels_sink: ChannelsSink = None,
        status_sink: StatusSink = None,
        on_fatal: FatalSink = None,
        backoff_initial: float = 1.0,
        backoff_max: float = 60.0,
        clock: Callable[[], float] = time.time,
        load_errors: Mapping[str, AdapterLoadError] = _NO_LOAD_ERRORS,
        start_timeout: float = 30.0,
        stop_timeout: float = 5.0,
        status_interval: float = 5.0,
    ) -> None:
        self._sink = sink
        self._channels_sink = channels_sink
        self._status_sink = status_sink
        self._on_fatal = on_fatal
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._clock = clock
        self._start_timeout = start_timeout
        self._stop_timeout = stop_timeout
        self._status_interval = status_interval
        self._supervised: dict[str, _Supervised] = {}
        self._failed: dict[str, AdapterStatus] = {
            name: AdapterStatus(name, "", "failed", last_error=str(error), since=clock())
            for name, error in load_errors.items()
        }
        for name, adapter in adapters.items():
            self._add(name, adapter)
        self._running = False
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._fatal: BaseException | None = None

    def _add(self, name: str, adapter: Adapter) -> None:
        try:  # attribute access runs plugin code too (properties, __getattr__)
            config = getattr(adapter, "config", None)
            read, stream = getattr(adapter, "read", None), getattr(adapter, "stream", None)
        except BaseException as exc:  # plugin code: any failure is the adapter's
            self._fail(name, "", f"cannot be inspected: {describe(exc)}")
            return
        if not isinstance(config, AdapterConfig):
            self._fail(name, "", "the adapter does not keep its config as the attribute 'config'")
            return
        if callable(read) == callable(stream):
            self._fail(
                name, config.type, "the adapter must define exactly one of read() or stream()"
            )
            return
        self._supervised[name] = _Supervised(
            adapter=adapter,
            config=config,
            status=AdapterStatus(name, config.type, "stopped", since=self._clock()),
            read=read if callable(read) else None,
            stream=stream if callable(stream) else None,
            backoff=Backoff(self._backoff_initial, self._backoff_max),
        )

    def _fail(self, name: str, kind: str, error: str) -> None:
        self._failed[name] = AdapterStatus(name, kind, "failed", error, since=self._clock())

    def controllable(self, name: str) -> ControllableAdapter:
        """The adapter ``name`` if it is running and can take commands; AdapterError why not.

        Commands go only to a running adapter (entered, not restarting): the caller
        confirms each one by what the device reports back, so a command refused here
        is simply tried again later."""
        sup = self._supervised.get(name)
        if sup is None:
            failed = self._failed.get(name)
            why = f"failed: {failed.last_error}" if failed else "is not configured"
            raise AdapterError(f"adapter {name!r} {why}", adapter=name)
        if sup.status.state != "running":
            raise AdapterError(f"adapter {name!r} is {sup.status.state}", adapter=name)
        adapter = sup.adapter
        try:
            ok = callable(getattr(adapter, "apply", None)) and callable(
                getattr(adapter, "state", None)
            )
        except BaseException as exc:  # plugin code (a property): its failure, not ours
            if is_cancellation(exc):
                raise
            ok = False
        if not ok:
            raise AdapterError(f"adapter {name!r} takes no commands", adapter=name)
        return cast(ControllableAdapter, adapter)

    def status(self) -> list[AdapterStatus]:
        """A snapshot of every adapter's status, including those that failed to load."""
        statuses = [replace(s.status) for s in self._supervised.values()]
        statuses += [replace(s) for s in self._failed.values()]
        return sorted(statuses, key=lambda s: s.name)

    async def __aenter__(self) -> Self:
        if self._running:
            raise RuntimeError("the adapter runtime is already running")
        self._running = True
        for failed in self._failed.values():
            log.error("adapter.failed", adapter=failed.name, error=failed.last_error)
            await self._push(replace(failed))
        for name, sup in self._supervised.items():
            task = asyncio.create_task(
                supervised(f"adapter:{name}", functools.partial(self._supervise, sup)),
                name=f"adapter:{name}",
            )
            task.add_done_callback(self._task_done)
            self._tasks[name] = task
        return self

    def _task_done(self, task: asyncio.Task[None]) -> None:
        """An adapter task ended: only a fatal error (or our cancellation) can end one."""
        if task.cancelled() or (error := task.exception()) is None:
            return
        if self._fatal is None:
            self._fatal = error
            if self._on_fatal is not None:
                self._on_fatal(error)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if not self._running:
            return
        self._running = False
        tasks, self._tasks = self._tasks, {}
        for task in tasks.values():
            task.cancel()
        grace = self._stop_timeout + STOP_MARGIN
        if tasks:
            _, pending = await asyncio.wait(tasks.values(), timeout=grace)
            for name, task in tasks.items():
                if task in pending:
                    await self._abandon(self._supervised[name], task, grace)
        fatal, self._fatal = self._fatal, None
        if fatal is not None and (exc_type is None or issubclass(exc_type, asyncio.CancelledError)):
            raise fatal

    async def _abandon(self, sup: _Supervised, task: asyncio.Task[None], grace: float) -> None:
        """The adapter swallowed its cancellation: leave its task behind, say so."""
        _abandoned.add(task)
        task.add_done_callback(_abandoned.discard)
        reason = f"did not stop within {grace:g} s of being cancelled; left behind"
        log.error("adapter.abandoned", adapter=sup.status.name, waited=grace)
        sup.status.last_error = reason
        sup.status.state, sup.status.since = "failed", self._clock()
        await self._push(replace(sup.status))

    # --- one adapter ----------------------------------------------------------------------------

    async def _supervise(self, sup: _Supervised) -> NoReturn:
        loop = asyncio.get_running_loop()
        with structlog.contextvars.bound_contextvars(adapter=sup.status.name):
            try:
                while True:
                    await self._set_state(sup, "starting")
                    began = loop.time()
                    try:
                        await self._run_once(sup)
                    except _Crash as crash:
                        reason = crash.reason
                    _raise_if_cancelling()  # the adapter may have swallowed our cancellation
                    if loop.time() - began >= self._backoff_max:
                        sup.backoff.reset()
                    delay = sup.backoff.next()
                    sup.status.restarts += 1
                    sup.status.last_error = reason
                    log.warning("adapter.restarting", error=reason, delay=round(delay, 3))
                    await self._set_state(sup, "backoff")
                    await asyncio.sleep(delay)
            except BaseException as exc:  # shutdown, a fatal sink error or a bug of ours
                if closing(exc):  # the task is being destroyed: nothing may be awaited
                    raise
                if isinstance(exc, Exception):  # not the adapter's fault
                    sup.status.last_error = f"runtime failed: {describe(exc)}"
                await self._set_state(sup, "stopped")
                log.info("adapter.stopped")
                raise

    async def _run_once(self, sup: _Supervised) -> NoReturn:
        """Start the adapter and drive it until it crashes; always exits its context."""
        await self._start(sup)
        try:
            _raise_if_cancelling()
            sup.channels = self._channels(sup)
            sup.names = frozenset(c.name for c in sup.channels)
            await self._register(sup, sup.channels)
            await self._set_state(sup, "running")
            log.info("adapter.started", channels=sorted(sup.names))
            if sup.stream is not None:
                await self._stream(sup, sup.stream)
            else:
                await self._poll(sup)
        except BaseException as exc:
            if not closing(exc):
                await self._exit(sup, exc.error if isinstance(exc, _Crash) else exc)
            raise

    async def _start(self, sup: _Supervised) -> None:
        deadline = asyncio.timeout(self._start_timeout)
        try:
            async with deadline:
                await sup.adapter.__aenter__()
        except BaseException as exc:
            if is_cancellation(exc):
                raise
            if deadline.expired():
                raise _Crash(f"start timed out after {self._start_timeout:g} s", exc) from exc
            raise _Crash(f"start failed: {describe(exc)}", exc) from exc

    def _channels(self, sup: _Supervised) -> tuple[Channel, ...]:
        try:
            return adapter_channels(sup.status.name, sup.adapter)
        except AdapterError as exc:
            reason = str(exc).removeprefix(f"adapter {sup.status.name!r}: ")
            raise _Crash(reason, exc.__cause__ or exc) from exc

    async def _exit(self, sup: _Supervised, exc: BaseException) -> None:
        try:
            async with asyncio.timeout(self._stop_timeout):
                await sup.adapter.__aexit__(type(exc), exc, exc.__traceback__)
        except BaseException as error:
            if is_cancellation(error):
                raise
            log.warning("adapter.stop_failed", error=describe(error))

    async def _poll(self, sup: _Supervised) -> NoReturn:
        loop = asyncio.get_running_loop()
        interval = float(sup.config.poll_interval)
        limit = sup.config.read_timeout or min(interval, MAX_READ_TIMEOUT)
        origin, overdue = loop.time(), 0
        while True:
            overdue = overdue + 1 if await self._read_once(sup, float(limit)) else 0
            if overdue >= HUNG_AFTER:
                reason = f"hung: {overdue} reads in a row ran past their {limit:g} s deadline"
                raise _Crash(reason, TimeoutError(reason))
            now = loop.time()
            await asyncio.sleep(next_tick(origin, interval, now) - now)

    async def _read_once(self, sup: _Supervised, limit: float) -> bool:
        """One read, delivered to the sink. True if it ran past its deadline."""
        assert sup.read is not None
        if sup.thread is not None and sup.thread.is_alive():
            log.warning("adapter.read_skipped", reason="the previous read() is still running")
            return True
        loop = asyncio.get_running_loop()
        started = loop.time()
        deadline = asyncio.timeout(limit)
        try:
            async with deadline:
                batch = await self._call_read(sup, sup.read)
        except (AdapterReadError, TimeoutError) as exc:
            if deadline.expired():
                log.warning("adapter.read_timed_out", timeout=limit)
                sup.status.last_error = f"read timed out after {limit:g} s"
            else:
                log.warning("adapter.read_failed", error=describe(exc))
                sup.status.last_error = f"read failed: {describe(exc)}"
            await self._publish(sup)
            return deadline.expired()
        except BaseException as exc:
            if is_cancellation(exc):
                raise
            raise _Crash(f"read crashed: {describe(exc)}", exc) from exc
        _raise_if_cancelling()
        if (elapsed := loop.time() - started) > limit:
            log.warning("adapter.read_overran", seconds=round(elapsed, 3), timeout=limit)
        await self._deliver(sup, batch)
        return False

    async def _call_read(self, sup: _Supervised, read: Callable[[], Any]) -> object:
        """The read's batch, fully consumed: a list (or what ``_clean`` refuses).

        A plain read is called *and its result iterated* in the thread, so a generator
        ``read()`` (one slow register per ``yield``) runs there, under the read deadline.
        An async read's result that is not a plain list or tuple (a generator, a lazy
        iterable) is consumed in the thread too, never on the event loop.
        """
        if inspect.iscoroutinefunction(read):
            result = await read()
        else:
            result = await self._in_thread(sup, functools.partial(_consume_call, read))
            if not inspect.isawaitable(result):
                return result
            result = await result  # an async read behind a plain wrapper
        if type(result) in (list, tuple):
            return result
        return await self._in_thread(sup, functools.partial(_consume, result))

    async def _in_thread(self, sup: _Supervised, fn: Callable[[], object]) -> object:
        """``fn()`` in a daemon thread: it can neither block the loop nor the process exit.

        Whatever ``fn`` raises, SystemExit and KeyboardInterrupt included, is raised
        here, in the adapter's task, where it is the adapter's crash: a thread's
        BaseException never reaches the event loop.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[object] = loop.create_future()
        context = contextvars.copy_context()

        def work() -> None:
            try:
                outcome = functools.partial(_settle, future, context.run(fn), None)
            except BaseException as exc:  # handed to the adapter's task
                outcome = functools.partial(_settle, future, None, exc)
            try:
                loop.call_soon_threadsafe(outcome)
            except RuntimeError:  # the loop is closed: nobody is waiting
                return

        sup.thread = threading.Thread(
            target=work, name=f"adapter:{sup.status.name}:read", daemon=True
        )
        sup.thread.start()
        return await future

    async def _stream(
        self, sup: _Supervised, stream: Callable[[], AsyncIterator[object]]
    ) -> NoReturn:
        try:
            iterator = aiter(stream())
        except BaseException as exc:  # plain calls cannot be cancelled
            raise _Crash(f"stream() failed: {describe(exc)}", exc) from exc
        try:
            while True:
                try:
                    batch = await anext(iterator)
                    if type(batch) not in (list, tuple):  # a lazy batch: not on the loop
                        batch = await self._in_thread(sup, functools.partial(_consume, batch))
                except StopAsyncIteration:
                    ended = AdapterError("stream() ended", adapter=sup.status.name)
                    raise _Crash("stream ended", ended) from None
                except BaseException as exc:
                    if is_cancellation(exc):
                        raise
                    raise _Crash(f"stream failed: {describe(exc)}", exc) from exc
                _raise_if_cancelling()
                await self._deliver(sup, batch)
        except BaseException as exc:
            if not closing(exc):
                await self._close_stream(iterator)
            raise

    async def _close_stream(self, iterator: AsyncIterator[object]) -> None:
        aclose = getattr(iterator, "aclose", None)
        if aclose is None:
            return
        try:
            async with asyncio.timeout(self._stop_timeout):
                await aclose()
        except BaseException as exc:
            if is_cancellation(exc):
                raise
            log.warning("adapter.stream_close_failed", error=describe(exc))

    # --- readings and status --------------------------------------------------------------------

    async def _deliver(self, sup: _Supervised, batch: object) -> None:
        channels = self._channels(sup)  # an adapter may learn a channel only once it has read
        if channels != sup.channels:
            sup.channels, sup.names = channels, frozenset(c.name for c in channels)
        readings = self._clean(sup, batch)
        if (
            readings
            and await self._register(sup, channels)
            and await self._to_gateway(sup, len(readings), self._sink, sup.status.name, readings)
        ):
            sup.status.readings += len(readings)
            sup.status.last_reading_at = self._clock()
            sup.status.last_error = None  # it reads again: an error is shown only while it lasts
        await self._publish(sup)

    async def _register(self, sup: _Supervised, channels: tuple[Channel, ...]) -> bool:
        """Hand new or changed channels to the channels sink; False if it failed."""
        if self._channels_sink is None or sup.registered == channels:
            return True
        if await self._to_gateway(sup, 0, self._channels_sink, sup.status.name, channels):
            sup.registered = channels
            return True
        return False

    async def _to_gateway(
        self, sup: _Supervised, count: int, call: Callable[..., Awaitable[None]], *args: Any
    ) -> bool:
        """Await a sink of the gateway's; False (logged) if it failed but not fatally."""
        try:
            await call(*args)
        except BaseException as exc:
            if is_cancellation(exc) or exit_code(exc) is not None:
                raise
            trace = None if isinstance(exc, GatewayError) else exc  # a bug: keep its traceback
            log.error("adapter.sink_failed", error=describe(exc), count=count, exc_info=trace)
            sup.status.last_error = f"readings not stored: {describe(exc)}"
            return False
        return True

    def _clean(self, sup: _Supervised, batch: object) -> list[Reading]:
        """The batch's valid readings; the others counted and logged.

        Everything done with the plugin's objects (iteration, ``float()``, attribute
        access, hashing a channel name) runs here under one guard: whatever it raises,
        MemoryError included, is the adapter's crash, never the gateway's fatal error.
        """
        try:
            iterable = _check_batch(sup, batch)
            try:
                items = list(iterable)
            except BaseException as exc:
                if is_cancellation(exc):
                    raise
                raise _Crash(f"iterating the readings failed: {describe(exc)}", exc) from exc
            return self._check_all(sup, items)
        except _Crash:
            raise
        except BaseException as exc:
            if is_cancellation(exc):
                raise
            raise _Crash(f"checking the readings failed: {describe(exc)}", exc) from exc

    def _check_all(self, sup: _Supervised, items: list[object]) -> list[Reading]:
        kept = []
        now = asyncio.get_running_loop().time()
        for item in items:
            checked = check_reading(item, sup.names)
            if isinstance(checked, Reading):
                kept.append(checked)
                continue
            sup.status.rejected += 1
            if (count := sup.rejects.hit(checked, now)) is not None:
                log.warning(
                    "adapter.readings_rejected",
                    reason=checked[0],
                    channel=checked[1],
                    count=count,
                    total=sup.status.rejected,
                )
        return kept

    async def _set_state(self, sup: _Supervised, state: State) -> None:
        sup.status.state = state
        sup.status.since = self._clock()
        await self._publish(sup, force=True)

    async def _publish(self, sup: _Supervised, *, force: bool = False) -> None:
        """Push the status on a state change (``force``), else at most every status_interval."""
        now = asyncio.get_running_loop().time()
        error_moved = sup.status.last_error != sup.published_error  # shown at once, both ways
        if force or error_moved or now - sup.published_at >= self._status_interval:
            sup.published_at, sup.published_error = now, sup.status.last_error
            await self._push(replace(sup.status))

    async def _push(self, status: AdapterStatus) -> None:
        if self._status_sink is None:
            return
        try:
            async with asyncio.timeout(STATUS_TIMEOUT):
                await self._status_sink(status)
        except Exception as exc:
            if exit_code(exc) is not None:
                raise
            log.warning("adapter.status_failed", error=describe(exc))


def _check_batch(sup: _Supervised, batch: object) -> Iterable[object]:
    """``batch`` if it is an iterable of items, else the adapter's crash."""
    if not isinstance(batch, Iterable) or isinstance(batch, str | bytes):
        reason = f"got {type(batch).__name__}, not a sequence of Reading"
        raise _Crash(reason, AdapterError(reason, adapter=sup.status.name))
    return batch


def _consume(batch: object) -> object:
    """``batch`` as a list if it is an iterable of items; else itself (``_clean`` refuses it)."""
    if isinstance(batch, Iterable) and not isinstance(batch, str | bytes):
        return list(batch)
    return batch


def _consume_call(read: Callable[[], object]) -> object:
    """A plain read's result, consumed in its thread (an awaitable is returned as it is)."""
    result = read()
    if inspect.isawaitable(result):
        return result
    return _consume(result)


def _settle(future: asyncio.Future[object], result: object, exc: BaseException | None) -> None:
    if future.done():  # the read was cancelled (deadline, shutdown): drop its late outcome
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result)


def _raise_if_cancelling() -> None:
    """Re-raise a cancellation that adapter code swallowed.

    Our tasks are cancelled only at shutdown and by ``asyncio.timeout``, which
    uncancels what it cancelled; so a pending count here means a shutdown that
    the adapter's code caught and dropped.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
