"""Supervised loops: the one place that decides what an unexpected exception does.

Every long-running loop of the gateway (delivery, scheduler, poller, heartbeat,
compaction; and each adapter's supervisor in the adapter runtime) runs under
:func:`supervised`:

* A loop that raises anything unexpected (any ``Exception``, and also
  ``SystemExit``, ``KeyboardInterrupt`` or a ``CancelledError`` that is not a
  cancellation of the loop's task) is logged once as ``loop.failed`` with the
  loop's name and :func:`gateway.errors.describe` of the error (with the
  traceback as ``exc_info`` unless it is one of our own GatewayErrors, whose
  message says it all), and is started again after :class:`gateway.Backoff`: a bug
  that fails every time cannot spin. The backoff starts over once the loop has
  run for ``maximum`` seconds. A loop that returns is restarted the same way.
* A **fatal** error stops the gateway instead, logged once as
  ``gateway.fatal``. Fatal, with the process exit code:

  ====================  ====  ==========================================================
  ``ConfigError``        2    the operator must fix the config; restarting cannot help
  ``StoreCorrupt``       1    the database is broken; writing on would make it worse
  ``MemoryError``        1    the process's state is unknown; let systemd start it afresh
  ====================  ====  ==========================================================

  Nothing else is fatal: a ``StoreError`` (disk full, database busy) is retried
  with backoff, since it clears by itself, and a ``RecursionError`` is one bad
  input, not a broken process.
* A real cancellation (shutdown) and ``GeneratorExit`` (a coroutine being
  closed) pass through untouched.

:class:`Supervisor` holds the loops in one ``asyncio.TaskGroup``. When a loop
hits a fatal error (or :meth:`Supervisor.stop` is called with one from outside
a loop, as the adapter runtime does), every loop is cancelled and the fatal
error leaves ``async with`` as itself, never wrapped in an ``ExceptionGroup``.

:func:`run_process` is ``asyncio.run`` for the CLI, except that after the main
coroutine returns it gives leftover tasks a bounded grace instead of waiting
for ever: a plugin that swallows its cancellation cannot keep the process alive.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Coroutine
from types import TracebackType
from typing import Any, NoReturn, Self, TypeVar

import structlog

from gateway.backoff import Backoff
from gateway.errors import ConfigError, GatewayError, StoreCorrupt, describe

__all__ = [
    "FATAL",
    "LEFTOVER_GRACE",
    "Supervisor",
    "closing",
    "exit_code",
    "is_cancellation",
    "run_process",
    "supervised",
]

log = structlog.get_logger("gateway.supervise")

FATAL: tuple[tuple[type[BaseException], int], ...] = (
    (ConfigError, 2),
    (StoreCorrupt, 1),
    (MemoryError, 1),
)
"""The errors that stop the gateway, with the exit code ``ecgw run`` ends with."""

LEFTOVER_GRACE = 1.0  # run_process: seconds for tasks still alive after main returned

T = TypeVar("T")
Loop = Callable[[], Awaitable[object]]


def exit_code(exc: BaseException) -> int | None:
    """The exit code if ``exc`` is fatal (stops the gateway), else None."""
    for kind, code in FATAL:
        if isinstance(exc, kind):
            return code
    return None


def is_cancellation(exc: BaseException) -> bool:
    """Whether ``exc`` must pass through: a cancellation of the running task, or a close.

    A ``CancelledError`` while the task is not being cancelled was raised by
    some code on its own (or came from a future someone else cancelled): it is
    that code's failure, not a shutdown. ``asyncio.timeout`` turns its own
    cancellations into TimeoutError, so outside its block a pending cancel
    request means a real cancellation. Likewise a ``GeneratorExit`` raised while
    a task is running us is some code's own doing; only with no task running
    (the coroutine is being closed as it is destroyed) is it real.
    """
    if isinstance(exc, GeneratorExit):
        return closing(exc)
    if not isinstance(exc, asyncio.CancelledError):
        return False
    task = _current_task()
    return task is None or task.cancelling() > 0


def closing(exc: BaseException) -> bool:
    """Whether ``exc`` is the coroutine being closed: nothing may be awaited any more."""
    return isinstance(exc, GeneratorExit) and _current_task() is None


def _current_task() -> asyncio.Task[Any] | None:
    try:
        return asyncio.current_task()
    except RuntimeError:  # no running loop: the coroutine is closed at exit
        return None


async def supervised(
    name: str,
    loop: Loop,
    *,
    backoff: Backoff | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> NoReturn:
    """Run ``loop()`` for ever: restart it after anything but a fatal error or cancellation."""
    backoff = backoff if backoff is not None else Backoff(1.0, 60.0)
    while True:
        began = clock()
        try:
            await loop()
        except BaseException as exc:
            if is_cancellation(exc):
                raise
            if (code := exit_code(exc)) is not None:
                log.critical("gateway.fatal", loop=name, error=describe(exc), exit_code=code)
                raise
            error: BaseException | None = exc
        else:
            error = None
        if clock() - began >= backoff.maximum:
            backoff.reset()
        delay = backoff.next()
        if error is None:
            log.error("loop.ended", loop=name, restart_in=round(delay, 3))
        else:
            log.error(
                "loop.failed",
                loop=name,
                error=describe(error),
                failures=backoff.failures,
                restart_in=round(delay, 3),
                exc_info=None if isinstance(error, GatewayError) else error,  # a bug: its traceback
            )
        del error  # no reference cycle through the traceback while sleeping
        await asyncio.sleep(delay)


class Supervisor:
    """Named supervised loops in one TaskGroup; a fatal error stops them all, unwrapped."""

    def __init__(self) -> None:
        self._group: asyncio.TaskGroup | None = None
        self._fatal: BaseException | None = None
        self._fatal_set = asyncio.Event()

    def start(self, name: str, loop: Loop, *, backoff: Backoff | None = None) -> None:
        """Run ``loop`` as the task ``name`` under :func:`supervised`."""
        if self._group is None:
            raise RuntimeError("start loops inside 'async with supervisor'")
        self._group.create_task(supervised(name, loop, backoff=backoff), name=name)

    def stop(self, exc: BaseException) -> None:
        """Stop every loop because of the fatal error ``exc``, found outside the loops.

        May be called before ``async with`` (then the block stops at once) and
        more than once (the first error wins).
        """
        if self._fatal is None:
            self._fatal = exc
            self._fatal_set.set()

    async def _watch(self) -> NoReturn:
        await self._fatal_set.wait()
        assert self._fatal is not None
        raise self._fatal

    async def __aenter__(self) -> Self:
        group = asyncio.TaskGroup()
        await group.__aenter__()
        self._group = group
        group.create_task(self._watch(), name="supervisor:fatal")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        group, self._group = self._group, None
        assert group is not None
        error: BaseException | None = None
        try:
            await group.__aexit__(exc_type, exc, tb)
        except BaseExceptionGroup as grouped:
            error = _pick(grouped)
        if error is not None:
            raise error


def _pick(grouped: BaseExceptionGroup[BaseException]) -> BaseException:
    """The error to stop with: the first fatal one, else the first one."""
    leaves = list(_leaves(grouped))
    return next((e for e in leaves if exit_code(e) is not None), leaves[0])


def _leaves(grouped: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    found: list[BaseException] = []
    for exc in grouped.exceptions:
        found += _leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc]
    return found


# --- the process's event loop -------------------------------------------------------------------


def run_process(main: Coroutine[Any, Any, T], *, grace: float = LEFTOVER_GRACE) -> T:
    """``asyncio.run(main)``, but tasks that outlive ``main`` get ``grace`` seconds, not for ever.

    ``asyncio.run`` cancels leftover tasks and then waits for all of them; a
    task whose code swallows every cancellation would keep the process alive.
    Here such a task is logged (``process.tasks_left``) and dropped with the loop.
    """
    loop = asyncio.new_event_loop()
    try:
        asyncio.set_event_loop(loop)
        return loop.run_until_complete(main)
    finally:
        try:
            _cancel_leftovers(loop, grace)
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.run_until_complete(loop.shutdown_default_executor())
        finally:
            asyncio.set_event_loop(None)
            loop.close()


def _cancel_leftovers(loop: asyncio.AbstractEventLoop, grace: float) -> None:
    leftovers = asyncio.all_tasks(loop)
    if not leftovers:
        return
    for task in leftovers:
        task.cancel()
    done, pending = loop.run_until_complete(asyncio.wait(leftovers, timeout=grace))
    for task in done:
        if not task.cancelled() and (error := task.exception()) is not None:
            log.error("process.task_failed", task=task.get_name(), error=describe(error))
    if pending:
        log.warning("process.tasks_left", tasks=sorted(t.get_name() for t in pending))
        for task in pending:
            task._log_destroy_pending = False  # type: ignore[attr-defined]  # logged above
