"""Run the adapters: start each one, poll or stream it, restart it when it crashes.

:class:`AdapterRuntime` is an async context manager holding one
``asyncio.TaskGroup`` with one task per adapter, named ``adapter:NAME``. Each
task supervises its adapter:

* **start**: enter the adapter's async context under ``start_timeout``.
* **poll** (an adapter with ``read()``): read at ``origin + k * poll_interval``
  (a fixed cadence that does not drift; missed ticks are skipped), each read
  under ``read_timeout`` (default: the poll interval, at most 30 s). A read
  that raises AdapterReadError or TimeoutError, or runs past its deadline, is
  logged and yields nothing; the adapter lives on. After three reads in a row
  run past their deadline the adapter is taken to be hung and is restarted.
* **push** (an adapter with ``stream()``): every batch the stream yields goes
  to the sink. A stream that ends counts as a crash.
* **crash**: any other exception from the adapter's code exits its context and
  restarts it after a capped exponential backoff with jitter. The backoff
  starts over once the adapter has run for ``backoff_max`` seconds.

A plain (non-async) ``read()`` runs in a daemon thread, at most one at a time
per adapter (ticks are skipped while it is still busy), so blocking partner
code neither stalls the event loop, nor starves the default executor, nor keeps
the process alive at exit (``asyncio.to_thread`` would do all three if the read
never returns). A thread cannot be cancelled: a timed-out plain read keeps
running until it returns and its result is dropped. An *async* ``read()`` that
blocks the event loop cannot be interrupted by any deadline either; the runtime
can only log ``adapter.read_overran`` afterwards (and keeps its readings).
Adapter code that catches CancelledError and carries on is caught out when it
next returns control; one that never returns cannot be stopped.

Readings are checked before they reach the sink: unknown channels (not in
``channels()``), non-numeric and non-finite values are dropped with one warning
per channel. The sink belongs to the gateway, not to the adapter: an exception
from it is not an adapter crash; it stops the runtime (the TaskGroup's
ExceptionGroup comes out of ``async with``). A failing status sink is logged
and ignored: status is for display.

Leaving the ``async with`` block cancels every adapter task; each runs its
adapter's ``__aexit__`` (under ``stop_timeout``) before the block is left. An
exception from the block itself propagates as it is.

Status (:class:`AdapterStatus`) is pushed to ``status_sink`` on every state
change and, for the counters, at most every ``status_interval`` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import inspect
import math
import numbers
import random
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import MappingProxyType, TracebackType
from typing import Any, Literal, NoReturn, Self

import structlog

from gateway.errors import AdapterError, AdapterLoadError, AdapterReadError
from gateway.plugin import Adapter, AdapterConfig, Reading

__all__ = [
    "AdapterRuntime",
    "AdapterStatus",
    "Sink",
    "State",
    "StatusSink",
    "backoff_delay",
    "next_tick",
]

log = structlog.get_logger(__name__)

State = Literal["starting", "running", "backoff", "failed", "stopped"]

MAX_READ_TIMEOUT = 30.0  # default read deadline: the poll interval, but at most this
HUNG_AFTER = 3  # reads in a row past their deadline before the adapter is restarted
STATUS_TIMEOUT = 5.0  # deadline for one status_sink call


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


Sink = Callable[[str, Sequence[Reading]], Awaitable[None]]
"""``(adapter name, readings)``; awaited: when it returns the readings are committed."""
StatusSink = Callable[[AdapterStatus], Awaitable[None]] | None

_NO_LOAD_ERRORS: Mapping[str, AdapterLoadError] = MappingProxyType({})


# --- pure schedule ------------------------------------------------------------------------------


def next_tick(origin: float, interval: float, now: float) -> float:
    """The first tick ``origin + k * interval`` (k >= 1) strictly after ``now``.

    Ticks that ``now`` has already passed are skipped, not made up.
    """
    k = max(1, math.floor((now - origin) / interval) + 1)
    return origin + k * interval


def backoff_delay(attempt: int, initial: float, maximum: float, jitter: float) -> float:
    """``initial * 2**attempt`` capped at ``maximum``, scaled by ``jitter`` (0.5 to 1)."""
    return min(maximum, initial * 2.0 ** min(attempt, 64)) * jitter


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


@dataclass(eq=False)
class _Supervised:
    adapter: Adapter
    config: AdapterConfig
    status: AdapterStatus
    read: Callable[[], Any] | None  # exactly one of read and stream is set
    stream: Callable[[], AsyncIterator[object]] | None
    channels: frozenset[str] = frozenset()
    warned: set[tuple[str, str]] = field(default_factory=set)
    thread: threading.Thread | None = None  # the thread of a plain read(), while it runs
    published_at: float = -math.inf


class AdapterRuntime:
    """Supervise adapters in one TaskGroup. ``async with`` starts them, leaving stops them."""

    def __init__(
        self,
        adapters: Mapping[str, Adapter],
        sink: Sink,
        *,
        status_sink: StatusSink = None,
        backoff_initial: float = 1.0,
        backoff_max: float = 60.0,
        clock: Callable[[], float] = time.time,
        load_errors: Mapping[str, AdapterLoadError] = _NO_LOAD_ERRORS,
        start_timeout: float = 30.0,
        stop_timeout: float = 10.0,
        status_interval: float = 5.0,
    ) -> None:
        self._sink = sink
        self._status_sink = status_sink
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._clock = clock
        self._start_timeout = start_timeout
        self._stop_timeout = stop_timeout
        self._status_interval = status_interval
        self._random = random.Random()  # noqa: S311  # jitter, not cryptography
        self._supervised: dict[str, _Supervised] = {}
        self._failed: dict[str, AdapterStatus] = {
            name: AdapterStatus(name, "", "failed", last_error=str(error), since=clock())
            for name, error in load_errors.items()
        }
        for name, adapter in adapters.items():
            self._add(name, adapter)
        self._group: asyncio.TaskGroup | None = None
        self._tasks: list[asyncio.Task[None]] = []

    def _add(self, name: str, adapter: Adapter) -> None:
        config = getattr(adapter, "config", None)
        read, stream = getattr(adapter, "read", None), getattr(adapter, "stream", None)
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
        )

    def _fail(self, name: str, kind: str, error: str) -> None:
        self._failed[name] = AdapterStatus(name, kind, "failed", error, since=self._clock())

    def status(self) -> list[AdapterStatus]:
        """A snapshot of every adapter's status, including those that failed to load."""
        statuses = [replace(s.status) for s in self._supervised.values()]
        statuses += [replace(s) for s in self._failed.values()]
        return sorted(statuses, key=lambda s: s.name)

    async def __aenter__(self) -> Self:
        if self._group is not None:
            raise RuntimeError("the adapter runtime is already running")
        for failed in self._failed.values():
            log.error("adapter.failed", adapter=failed.name, error=failed.last_error)
            await self._push(replace(failed))
        group = asyncio.TaskGroup()
        await group.__aenter__()
        self._group = group
        self._tasks = [
            group.create_task(self._supervise(sup), name=f"adapter:{name}")
            for name, sup in self._supervised.items()
        ]
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        group, self._group = self._group, None
        if group is None:
            return
        for task in self._tasks:
            task.cancel()
        if exc_type is None or issubclass(exc_type, asyncio.CancelledError):
            await group.__aexit__(exc_type, exc, tb)  # the group decides what a cancel means
        else:
            await group.__aexit__(None, None, None)  # the body's own error propagates unwrapped

    # --- one adapter ----------------------------------------------------------------------------

    async def _supervise(self, sup: _Supervised) -> None:
        loop = asyncio.get_running_loop()
        attempt = 0
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
                        attempt = 0
                    jitter = self._random.uniform(0.5, 1.0)
                    delay = backoff_delay(attempt, self._backoff_initial, self._backoff_max, jitter)
                    attempt += 1
                    sup.status.restarts += 1
                    sup.status.last_error = reason
                    log.warning("adapter.restarting", error=reason, delay=round(delay, 3))
                    await self._set_state(sup, "backoff")
                    await asyncio.sleep(delay)
            except Exception as exc:  # the sink failed, or a bug of ours: not the adapter's fault
                sup.status.last_error = f"runtime failed: {_describe(exc)}"
                raise
            finally:
                await self._set_state(sup, "stopped")
                log.info("adapter.stopped")

    async def _run_once(self, sup: _Supervised) -> NoReturn:
        """Start the adapter and drive it until it crashes; always exits its context."""
        deadline = asyncio.timeout(self._start_timeout)
        try:
            async with deadline:
                await sup.adapter.__aenter__()
        except Exception as exc:
            if deadline.expired():
                raise _Crash(f"start timed out after {self._start_timeout:g} s", exc) from exc
            raise _Crash(f"start failed: {_describe(exc)}", exc) from exc
        try:
            _raise_if_cancelling()
            sup.channels = self._channels(sup)
            await self._set_state(sup, "running")
            log.info("adapter.started", channels=sorted(sup.channels))
            if sup.stream is not None:
                await self._stream(sup, sup.stream)
            else:
                await self._poll(sup)
        except BaseException as exc:
            await self._exit(sup, exc.error if isinstance(exc, _Crash) else exc)
            raise

    def _channels(self, sup: _Supervised) -> frozenset[str]:
        try:
            return frozenset(channel.name for channel in sup.adapter.channels())
        except Exception as exc:
            raise _Crash(f"channels() failed: {_describe(exc)}", exc) from exc

    async def _exit(self, sup: _Supervised, exc: BaseException) -> None:
        try:
            async with asyncio.timeout(self._stop_timeout):
                await sup.adapter.__aexit__(type(exc), exc, exc.__traceback__)
        except Exception as error:
            log.warning("adapter.stop_failed", error=_describe(error))

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
                log.warning("adapter.read_failed", error=_describe(exc))
                sup.status.last_error = f"read failed: {_describe(exc)}"
            await self._publish(sup)
            return deadline.expired()
        except Exception as exc:
            raise _Crash(f"read crashed: {_describe(exc)}", exc) from exc
        _raise_if_cancelling()
        if (elapsed := loop.time() - started) > limit:
            log.warning("adapter.read_overran", seconds=round(elapsed, 3), timeout=limit)
        await self._deliver(sup, batch)
        return False

    async def _call_read(self, sup: _Supervised, read: Callable[[], Any]) -> object:
        if inspect.iscoroutinefunction(read):
            return await read()
        result = await self._in_thread(sup, read)
        if inspect.isawaitable(result):  # an async read behind a plain wrapper
            return await result
        return result

    async def _in_thread(self, sup: _Supervised, fn: Callable[[], object]) -> object:
        """``fn()`` in a daemon thread: it can neither block the loop nor the process exit."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[object] = loop.create_future()
        context = contextvars.copy_context()

        def work() -> None:
            try:
                outcome = functools.partial(_settle, future, context.run(fn), None)
            except Exception as exc:
                outcome = functools.partial(_settle, future, None, exc)
            except BaseException as exc:  # SystemExit in a thread must not stop the loop
                error = RuntimeError(f"read() raised {type(exc).__name__}")
                outcome = functools.partial(_settle, future, None, error)
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting
                loop.call_soon_threadsafe(outcome)

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
        except Exception as exc:
            raise _Crash(f"stream() failed: {_describe(exc)}", exc) from exc
        try:
            while True:
                try:
                    batch = await anext(iterator)
                except StopAsyncIteration:
                    ended = AdapterError("stream() ended", adapter=sup.status.name)
                    raise _Crash("stream ended", ended) from None
                except Exception as exc:
                    raise _Crash(f"stream failed: {_describe(exc)}", exc) from exc
                _raise_if_cancelling()
                await self._deliver(sup, batch)
        finally:
            await self._close_stream(iterator)

    async def _close_stream(self, iterator: AsyncIterator[object]) -> None:
        aclose = getattr(iterator, "aclose", None)
        if aclose is None:
            return
        try:
            async with asyncio.timeout(self._stop_timeout):
                await aclose()
        except Exception as exc:
            log.warning("adapter.stream_close_failed", error=_describe(exc))

    # --- readings and status --------------------------------------------------------------------

    async def _deliver(self, sup: _Supervised, batch: object) -> None:
        readings = self._clean(sup, batch)
        if not readings:
            return
        await self._sink(sup.status.name, readings)
        sup.status.readings += len(readings)
        sup.status.last_reading_at = self._clock()
        await self._publish(sup)

    def _clean(self, sup: _Supervised, batch: object) -> list[Reading]:
        if not isinstance(batch, Iterable) or isinstance(batch, str | bytes):
            reason = f"got {type(batch).__name__}, not a sequence of Reading"
            raise _Crash(reason, AdapterError(reason, adapter=sup.status.name))
        try:
            items = list(batch)
        except Exception as exc:
            raise _Crash(f"iterating the readings failed: {_describe(exc)}", exc) from exc
        kept = []
        for item in items:
            checked = _check_reading(item, sup.channels)
            if isinstance(checked, Reading):
                kept.append(checked)
            elif (problem := checked) not in sup.warned:
                sup.warned.add(problem)
                log.warning("adapter.reading_dropped", reason=problem[0], channel=problem[1])
        return kept

    async def _set_state(self, sup: _Supervised, state: State) -> None:
        sup.status.state = state
        sup.status.since = self._clock()
        await self._publish(sup, force=True)

    async def _publish(self, sup: _Supervised, *, force: bool = False) -> None:
        """Push the status on a state change (``force``), else at most every status_interval."""
        now = asyncio.get_running_loop().time()
        if force or now - sup.published_at >= self._status_interval:
            sup.published_at = now
            await self._push(replace(sup.status))

    async def _push(self, status: AdapterStatus) -> None:
        if self._status_sink is None:
            return
        try:
            async with asyncio.timeout(STATUS_TIMEOUT):
                await self._status_sink(status)
        except Exception as exc:
            log.warning("adapter.status_failed", error=_describe(exc))


def _check_reading(item: object, channels: frozenset[str]) -> Reading | tuple[str, str]:
    """The reading with float fields, or why it is dropped: ``(reason, channel)``."""
    if not isinstance(item, Reading):
        return "not a Reading", type(item).__name__
    channel: object = item.channel  # partners may put anything here
    if not isinstance(channel, str):
        return "channel is not a str", type(channel).__name__
    if channel not in channels:
        return "unknown channel", channel
    fields: tuple[object, object] = (item.at, item.value)
    if not all(isinstance(x, numbers.Real) and not isinstance(x, bool) for x in fields):
        return "value or time is not a number", channel
    at, value = float(item.at), float(item.value)
    if not (math.isfinite(at) and math.isfinite(value)):
        return "value or time is not finite", channel
    return Reading(channel, at, value)


def _settle(future: asyncio.Future[object], result: object, exc: BaseException | None) -> None:
    if future.done():  # the read was cancelled (deadline, shutdown): drop its late outcome
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result)


def _raise_if_cancelling() -> None:
    """Re-raise a cancellation that adapter code swallowed.

    Our tasks are cancelled only by the TaskGroup (shutdown) and by
    ``asyncio.timeout``, which uncancels what it cancelled; so a pending count
    here means a shutdown that the adapter's code caught and dropped.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


def _describe(exc: BaseException) -> str:
    """``ConnectionResetError: peer closed``, on one line."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
