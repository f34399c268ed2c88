"""One gateway per state directory: ``ecgw run`` holds ``state_dir/ecgw.lock`` for its life.

Real files, real processes: a second holder is refused (naming the directory and the
holder's PID), the lock is released when its block ends, and a process killed with
SIGKILL leaves no stale lock (the kernel drops a flock with its holder).
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from pathlib import Path

import pytest

from gateway.errors import ConfigError
from gateway.store.database import LOCK_FILE, hold_state_dir
from tests.kit.proc import ecgw, offline_config, start_ecgw

pytestmark = pytest.mark.timeout(60)

HOLDER = """
import asyncio, sys
from pathlib import Path
from gateway.store.database import hold_state_dir

async def main():
    async with hold_state_dir(Path(sys.argv[1])):
        print("held", flush=True)
        await asyncio.sleep(3600)

asyncio.run(main())
"""


async def test_a_second_holder_is_refused_naming_the_directory_and_the_pid(
    tmp_path: Path,
) -> None:
    state = tmp_path / "state"
    async with hold_state_dir(state):
        assert (state / LOCK_FILE).read_text() == f"{os.getpid()}\n"
        with pytest.raises(ConfigError) as refused:
            async with hold_state_dir(state):
                pytest.fail("two holders of one state directory")
    assert refused.value.key == "gateway.state_dir"
    assert str(state) in str(refused.value)
    assert f"PID {os.getpid()}" in str(refused.value)
    async with hold_state_dir(state):  # released when the first block ended
        pass
    assert (state / LOCK_FILE).read_text() == ""  # a stopped gateway's PID is nobody's


async def test_a_holder_killed_with_sigkill_leaves_no_stale_lock(tmp_path: Path) -> None:
    state = tmp_path / "state"
    holder = await asyncio.create_subprocess_exec(
        sys.executable, "-c", HOLDER, str(state), stdout=asyncio.subprocess.PIPE
    )
    try:
        assert holder.stdout is not None
        assert await holder.stdout.readline() == b"held\n"
        with pytest.raises(ConfigError, match=f"PID {holder.pid}"):
            async with hold_state_dir(state):
                pass
    finally:
        holder.send_signal(signal.SIGKILL)
        await holder.wait()
    assert (state / LOCK_FILE).read_text() == f"{holder.pid}\n"  # left behind, not a lock
    async with hold_state_dir(state):
        assert (state / LOCK_FILE).read_text() == f"{os.getpid()}\n"


def write_config(tmp_path: Path) -> Path:
    return offline_config(tmp_path)


def read_or_empty(path: Path) -> str:
    try:
        return path.read_text()
    except FileNotFoundError:
        return ""


async def wait_held(lock: Path, proc: asyncio.subprocess.Process) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        assert proc.returncode is None, f"ecgw run exited {proc.returncode}"
        if await asyncio.to_thread(read_or_empty, lock) == f"{proc.pid}\n":
            return
        await asyncio.sleep(0.1)
    raise AssertionError("ecgw run never took its lock")


@pytest.mark.slow
async def test_a_second_ecgw_run_on_one_state_dir_stops_at_once(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    lock = tmp_path / "state" / LOCK_FILE
    first = await start_ecgw("run", config=config, log=tmp_path / "first.log")
    try:
        await wait_held(lock, first)
        second = await asyncio.to_thread(ecgw, "run", config=config, timeout=20)
        assert second.returncode == 2, second.stderr
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1, second.stderr
        assert "gateway.state_dir" in lines[0]
        assert str(tmp_path / "state") in lines[0]
        assert f"PID {first.pid}" in lines[0]
        status = await asyncio.to_thread(ecgw, "status", config=config)
        assert status.returncode == 0, status.stderr  # read-only commands run beside it
        assert first.returncode is None
    finally:
        if first.returncode is None:
            first.send_signal(signal.SIGKILL)
        await first.wait()
    again = await start_ecgw("run", config=config, log=tmp_path / "again.log")
    try:
        await wait_held(lock, again)  # kill -9 left no stale lock
    finally:
        again.terminate()
        assert await again.wait() == 0
