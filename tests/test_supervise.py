"""Supervised loops: restart with backoff, fatal errors stop everything unwrapped.

The loops here are small coroutines that fail on purpose; the backoff is made
fast with small ``initial``/``maximum`` values. Logs are captured with structlog.
"""

from __future__ import annotations

import asyncio
import random
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import structlog

from gateway.backoff import Backoff
from gateway.errors import ConfigError, StoreCorrupt, StoreError
from gateway.supervise import (
    Supervisor,
    exit_code,
    is_cancellation,
    run_process,
    supervised,
)

pytestmark = pytest.mark.timeout(10)


def fast() -> Backoff:
    return Backoff(0.01, 0.04, rng=random.Random(1))


class Failing:
    """A loop that raises ``error()`` on its first ``times`` runs, then waits for ever."""

    def __init__(self, error: Callable[[], BaseException], times: int = 1_000_000) -> None:
        self.error = error
        self.times = times
        self.runs = 0
        self.started_at: list[float] = []
        self.settled = asyncio.Event()

    async def __call__(self) -> None:
        self.runs += 1
        self.started_at.append(time.monotonic())
        if self.runs <= self.times:
            raise self.error()
        self.settled.set()
        await asyncio.Event().wait()


async def until(predicate: Callable[[], bool]) -> None:
    while not predicate():  # noqa: ASYNC110 - loops under test expose plain counters
        await asyncio.sleep(0.005)


# --- classification -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (ConfigError("nope", key="poll.interval"), 2),
        (StoreCorrupt("malformed"), 1),
        (MemoryError(), 1),
        (StoreError("disk full"), None),  # clears by itself: retried
        (RecursionError(), None),  # one bad input
        (SystemExit(0), None),
        (KeyboardInterrupt(), None),
        (ValueError("bug"), None),
    ],
)
def test_what_is_fatal(error: BaseException, code: int | None) -> None:
    assert exit_code(error) == code


async def test_a_cancelled_error_is_a_cancellation_only_while_the_task_is_cancelled() -> None:
    assert not is_cancellation(asyncio.CancelledError())  # raised by some code, not by cancel()
    assert not is_cancellation(ValueError())
    assert not is_cancellation(GeneratorExit())  # raised in a running task: not a close
    seen: list[bool] = []

    async def waits() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError as exc:
            seen.append(is_cancellation(exc))
            raise

    task = asyncio.create_task(waits())
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert seen == [True]


# --- supervised ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "error",
    [
        lambda: ValueError("bug\nacross lines"),
        lambda: SystemExit(3),
        lambda: KeyboardInterrupt(),
        lambda: asyncio.CancelledError("a stray one, not a cancellation"),
        lambda: StoreError("database is locked"),
    ],
)
async def test_an_unexpected_error_is_logged_once_and_the_loop_restarted(
    error: Callable[[], BaseException],
) -> None:
    loop = Failing(error, times=3)
    with structlog.testing.capture_logs() as logs:
        task = asyncio.create_task(supervised("scheduler", loop, backoff=fast()))
        await asyncio.wait_for(loop.settled.wait(), 5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    failures = [e for e in logs if e["event"] == "loop.failed"]
    assert len(failures) == 3  # once per failure
    assert {e["loop"] for e in failures} == {"scheduler"}
    assert [e["failures"] for e in failures] == [1, 2, 3]
    name = type(error()).__name__
    assert all(e["error"].startswith(name) for e in failures)
    assert "\n" not in failures[0]["error"]
    if isinstance(error(), StoreError):
        assert failures[0]["exc_info"] is None  # our own error: its message says it all
    else:
        assert isinstance(failures[0]["exc_info"], type(error()))  # a bug: keep the traceback


async def test_a_loop_that_always_fails_backs_off_instead_of_spinning() -> None:
    loop = Failing(lambda: RuntimeError("always"))
    task = asyncio.create_task(supervised("poller", loop, backoff=Backoff(0.02, 0.08)))
    await until(lambda: loop.runs >= 6)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    gaps = [b - a for a, b in zip(loop.started_at, loop.started_at[1:], strict=False)]
    ceilings = [0.02, 0.04, 0.08, 0.08, 0.08]
    for gap, ceiling in zip(gaps, ceilings, strict=False):
        assert gap >= ceiling / 2 - 0.002, gaps  # equal jitter: never below half the step


async def test_a_loop_that_returns_is_restarted() -> None:
    runs = 0

    async def once() -> None:
        nonlocal runs
        runs += 1
        if runs > 2:
            await asyncio.Event().wait()

    with structlog.testing.capture_logs() as logs:
        task = asyncio.create_task(supervised("heartbeat", once, backoff=fast()))
        await until(lambda: runs >= 3)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert [e["event"] for e in logs] == ["loop.ended", "loop.ended"]


async def test_backoff_starts_over_after_a_healthy_run() -> None:
    clock = [0.0]
    backoff = Backoff(0.01, 0.04)
    loop = Failing(lambda: OSError("flaky"))

    async def runs_long_then_fails() -> None:
        clock[0] += 0.05 if loop.runs % 2 else 0.0  # every other run counts as healthy
        await loop()

    task = asyncio.create_task(
        supervised("delivery", runs_long_then_fails, backoff=backoff, clock=lambda: clock[0])
    )
    await until(lambda: loop.runs >= 6)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert backoff.failures <= 2


@pytest.mark.parametrize("error", [StoreCorrupt("malformed"), ConfigError("bad", key="x")])
async def test_a_fatal_error_is_logged_once_and_raised(error: BaseException) -> None:
    async def broken() -> None:
        raise error

    with structlog.testing.capture_logs() as logs, pytest.raises(type(error)):
        await supervised("compaction", broken, backoff=fast())
    assert [(e["event"], e["loop"], e["exit_code"]) for e in logs] == [
        ("gateway.fatal", "compaction", exit_code(error))
    ]


async def test_cancellation_passes_through_at_once() -> None:
    started = asyncio.Event()

    async def waits() -> None:
        started.set()
        await asyncio.Event().wait()

    with structlog.testing.capture_logs() as logs:
        task = asyncio.create_task(supervised("delivery", waits))
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert logs == []


# --- Supervisor ---------------------------------------------------------------------------------


async def test_a_fatal_error_stops_every_loop_and_leaves_unwrapped() -> None:
    cancelled: list[str] = []

    def steady(name: str) -> Callable[[], object]:
        async def loop() -> None:
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                cancelled.append(name)
                raise

        return loop

    flaky = Failing(lambda: ValueError("bug"), times=2)
    corrupt = Failing(lambda: StoreCorrupt("database disk image is malformed"))

    async def gateway() -> None:
        async with Supervisor() as loops:
            loops.start("delivery", steady("delivery"))
            loops.start("scheduler", steady("scheduler"))
            loops.start("poller", flaky, backoff=fast())
            await flaky.settled.wait()
            loops.start("compaction", corrupt)

    with structlog.testing.capture_logs() as logs, pytest.raises(StoreCorrupt, match="malformed"):
        await gateway()
    assert sorted(cancelled) == ["delivery", "scheduler"]
    fatal = [e for e in logs if e["event"] == "gateway.fatal"]
    assert [(e["loop"], e["exit_code"]) for e in fatal] == [("compaction", 1)]
    assert [e["loop"] for e in logs if e["event"] == "loop.failed"] == ["poller", "poller"]


async def test_stop_from_outside_the_loops_ends_the_block_with_that_error() -> None:
    loops = Supervisor()

    async def gateway() -> None:
        async with loops:
            loops.start("delivery", asyncio.Event().wait)
            asyncio.get_running_loop().call_later(0.01, loops.stop, StoreCorrupt("from readings"))
            await asyncio.sleep(5)

    with pytest.raises(StoreCorrupt, match="from readings"):
        await gateway()


async def test_stop_before_the_block_stops_it_at_once() -> None:
    loops = Supervisor()
    loops.stop(ConfigError("bad", key="adapters.x"))
    loops.stop(StoreCorrupt("second"))  # the first error wins
    with pytest.raises(ConfigError, match=r"adapters\.x"):
        async with loops:
            await asyncio.sleep(5)


async def test_an_error_in_the_block_leaves_unwrapped() -> None:
    async def gateway() -> None:
        async with Supervisor() as loops:
            loops.start("delivery", asyncio.Event().wait)
            raise LookupError("setup")

    with pytest.raises(LookupError, match="setup"):
        await gateway()


async def test_cancelling_the_block_cancels_the_loops() -> None:
    stopped = asyncio.Event()

    async def loop() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            stopped.set()

    async def gateway() -> None:
        async with Supervisor() as loops:
            loops.start("delivery", loop)

    task = asyncio.create_task(gateway())
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert stopped.is_set()


def test_loops_start_only_inside_the_block() -> None:
    with pytest.raises(RuntimeError, match="inside"):
        Supervisor().start("delivery", asyncio.Event().wait)


# --- run_process --------------------------------------------------------------------------------


def test_run_process_returns_mains_result_and_cancels_leftovers() -> None:
    cancelled = []

    async def main() -> int:
        async def leftover() -> None:
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                cancelled.append(True)
                raise

        asyncio.get_running_loop().create_task(leftover())
        await asyncio.sleep(0)
        return 7

    assert run_process(main()) == 7
    assert cancelled == [True]


def test_run_process_does_not_wait_for_ever_for_a_task_that_swallows_cancellation(
    tmp_path: Path,
) -> None:
    script = tmp_path / "stubborn.py"
    script.write_text(
        textwrap.dedent(
            """
            import asyncio, contextlib
            from gateway.supervise import run_process

            async def stubborn():
                while True:
                    with contextlib.suppress(asyncio.CancelledError):
                        await asyncio.sleep(0.01)

            async def main():
                asyncio.get_running_loop().create_task(stubborn(), name="stubborn")
                await asyncio.sleep(0.05)
                return 0

            raise SystemExit(run_process(main(), grace=0.2))
            """
        )
    )
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=8, check=False
    )
    assert result.returncode == 0, result.stderr
    assert time.monotonic() - started < 5
    output = result.stdout + result.stderr  # structlog, unconfigured, prints to stdout
    assert "process.tasks_left" in output and "stubborn" in output
    assert "Task was destroyed" not in output
    assert "Traceback" not in output
