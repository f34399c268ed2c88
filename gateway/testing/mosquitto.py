"""A private Mosquitto broker for adapter tests: a free port on 127.0.0.1, no persistence.

    async with Mosquitto.running(tmp_path) as broker:
        ... broker.host, broker.port, broker.url ...
        await broker.stop(); await broker.start()   # the device's broker goes away, comes back

Readiness is Mosquitto's own "running" log line, not a sleep; its output is kept in
``broker.log`` to explain a failing test. :data:`MOSQUITTO` is None when the binary is
not installed (the ``ecgw_mosquitto`` fixture then skips, saying so).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import shutil
import socket
from collections.abc import AsyncIterator
from pathlib import Path

__all__ = ["MOSQUITTO", "Mosquitto", "free_port"]

MOSQUITTO = shutil.which("mosquitto") or shutil.which(
    "mosquitto", path="/usr/sbin:/usr/local/sbin:/opt/homebrew/sbin"
)
_START_TIMEOUT = 10.0
_STOP_TIMEOUT = 5.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Mosquitto:
    """One mosquitto process; :meth:`start` after :meth:`stop` keeps the port."""

    host = "127.0.0.1"

    def __init__(self, workdir: Path) -> None:
        if MOSQUITTO is None:
            raise RuntimeError("the mosquitto binary is not installed (not on PATH or in sbin)")
        self.binary = MOSQUITTO
        self.workdir = workdir
        self.port = 0
        self.log: collections.deque[str] = collections.deque(maxlen=500)
        self._process: asyncio.subprocess.Process | None = None
        self._pump: asyncio.Task[None] | None = None

    @classmethod
    @contextlib.asynccontextmanager
    async def running(cls, workdir: Path) -> AsyncIterator[Mosquitto]:
        broker = cls(workdir)
        await broker.start()
        try:
            yield broker
        finally:
            await broker.stop()

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    @property
    def is_running(self) -> bool:
        return self._process is not None and self._process.returncode is None

    async def start(self) -> None:
        """Start on ``self.port``, or on a free port the first time (tried again if taken)."""
        if self.is_running:
            raise RuntimeError("mosquitto is already running")
        fixed = self.port != 0
        for _ in range(1 if fixed else 5):
            if not fixed:
                self.port = free_port()
            if await self._spawn():
                return
        raise RuntimeError(f"mosquitto did not start on port {self.port}:\n" + "\n".join(self.log))

    async def stop(self) -> None:
        """SIGTERM, then SIGKILL after a few seconds."""
        process, pump = self._process, self._pump
        self._process = self._pump = None
        if process is None:
            return
        if process.returncode is None:
            process.terminate()
            try:
                async with asyncio.timeout(_STOP_TIMEOUT):
                    await process.wait()
            except TimeoutError:
                process.kill()
        await process.wait()
        if pump is not None:
            await pump  # ends at EOF, now that the process is gone

    async def _spawn(self) -> bool:
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "mosquitto.conf"
        config.write_text(
            f"listener {self.port} {self.host}\nallow_anonymous true\npersistence false\n"
            "log_dest stderr\nlog_type all\nlog_timestamp false\n"
        )
        process = self._process = await asyncio.create_subprocess_exec(
            self.binary,
            "-c",
            str(config),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        assert process.stdout is not None
        ready = False
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(_START_TIMEOUT):
                while line := (await process.stdout.readline()).decode(errors="replace"):
                    self.log.append(line.rstrip())
                    if " running" in line:
                        ready = True
                        break
        self._pump = asyncio.create_task(self._keep_log(process.stdout), name="mosquitto-log")
        if not ready:
            await self.stop()
        return ready

    async def _keep_log(self, stdout: asyncio.StreamReader) -> None:
        while line := await stdout.readline():
            self.log.append(line.decode(errors="replace").rstrip())
