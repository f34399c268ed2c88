"""The sandbox and the gateway as real processes, for fault campaigns and end-to-end tests.

* :class:`SandboxProcess` runs ``ecgw sandbox`` in its own process on a free loopback port
  and talks to it as another process would: the API (token, ``POST /webhooks``) and the
  admin API (``/_sandbox/*``: create events, faults, what it received).
* :class:`GatewayProcess` runs ``ecgw run``, copies its log lines to a file and knows when
  it is ready: the ``gateway.started`` line, written once the database is open, the webhook
  is listening and the adapters run. ``ready_after`` is the time from spawn to that line.
* :func:`integrity` runs ``PRAGMA integrity_check`` on a read-only connection, which
  neither checkpoints nor removes the WAL a killed gateway left behind: the next start
  still has to recover it itself.
* :func:`crash_points` lists every named crash point in the source (``crashpoint("...")``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sqlite3
import sys
import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any, Self

import aiohttp

__all__ = [
    "GatewayProcess",
    "SandboxProcess",
    "crash_points",
    "integrity",
    "query",
]

ECGW = [sys.executable, "-m", "gateway"]
READY_LINE = '"gateway.started"'
GATEWAY_SOURCE = Path(__file__).resolve().parents[2] / "gateway"


def crash_points(source: Path = GATEWAY_SOURCE) -> list[str]:
    """Every ``crashpoint("name")`` call in the gateway's source, sorted."""
    found = set()
    for path in source.rglob("*.py"):
        found.update(re.findall(r"""crashpoint\(\s*["']([^"']+)["']\s*\)""", path.read_text()))
    return sorted(found)


def _readonly(db_path: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=10)


def integrity(db_path: Path) -> str:
    """``PRAGMA integrity_check`` ("ok" or the problems), read-only: the WAL stays as it is."""
    conn = _readonly(db_path)
    try:
        return "\n".join(str(row[0]) for row in conn.execute("PRAGMA integrity_check"))
    finally:
        conn.close()


def query(db_path: Path, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Rows of one read-only query on a gateway's database (running or not)."""
    conn = _readonly(db_path)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


class SandboxProcess:
    """``ecgw sandbox`` in its own process; its API and admin API over HTTP."""

    def __init__(self, log: Path) -> None:
        self.log = log
        self.root_url = ""
        self.client_id = ""
        self.client_secret = ""
        self._process: asyncio.subprocess.Process | None = None
        self._session: aiohttp.ClientSession | None = None

    @property
    def base_url(self) -> str:
        return self.root_url + "/energy-coordination/v1"

    @property
    def token_url(self) -> str:
        return self.root_url + "/connect/token"

    @property
    def api_table(self) -> dict[str, str]:
        """The ``[api]`` table of a gateway config pointing here."""
        return {
            "base_url": self.base_url,
            "token_url": self.token_url,
            "client_id": self.client_id,
            "client_secret": self.client_secret,
        }

    @classmethod
    @contextlib.asynccontextmanager
    async def running(cls, log: Path) -> AsyncIterator[Self]:
        sandbox = cls(log)
        await sandbox._start()
        try:
            yield sandbox
        finally:
            await sandbox._stop()

    async def _start(self) -> None:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as stderr:
            self._process = await asyncio.create_subprocess_exec(
                *ECGW,
                "sandbox",
                "--listen",
                "127.0.0.1:0",
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=stderr,
            )
        assert self._process.stdout is not None
        async with asyncio.timeout(30):
            head = (await self._process.stdout.readuntil(b'client_secret = "')).decode()
            secret = (await self._process.stdout.readuntil(b'"')).decode()[:-1]
        root = re.search(r"listening on (http://\S+)", head)
        client = re.search(r'client_id = "([^"]*)"', head)
        if root is None or client is None:
            raise RuntimeError(f"ecgw sandbox printed no [api] table: {head!r}")
        self.root_url, self.client_id, self.client_secret = root[1], client[1], secret
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))

    async def _stop(self) -> None:
        if self._session is not None:
            await self._session.close()
        process = self._process
        if process is None or process.returncode is not None:
            return
        process.terminate()
        try:
            async with asyncio.timeout(10):
                await process.wait()
        except TimeoutError:
            process.kill()
            await process.wait()

    @property
    def session(self) -> aiohttp.ClientSession:
        assert self._session is not None, "the sandbox is not running"
        return self._session

    async def _admin(self, method: str, path: str, body: Any = None) -> Any:
        url = f"{self.root_url}/_sandbox/{path}"
        async with self.session.request(method, url, json=body) as resp:
            if resp.status >= 300:
                raise RuntimeError(f"sandbox {method} {path}: {resp.status} {await resp.text()}")
            return None if resp.status == 204 else await resp.json()

    async def create_event(self, payload: Mapping[str, Any], *, push: bool = True) -> Any:
        """Store an event (contract-checked) and push it to the webhooks; returns it."""
        return await self._admin("POST", "events", {"payload": payload, "push": push})

    async def add_faults(self, *faults: Mapping[str, Any]) -> None:
        """Queue ``POST /reports`` faults (dicts of ``gateway.sandbox.Fault`` fields)."""
        await self._admin("POST", "faults", list(faults))

    async def clear_faults(self) -> None:
        await self._admin("DELETE", "faults")

    async def reports(self) -> list[dict[str, Any]]:
        """Every accepted ``POST /reports`` (``duplicate``: its key was accepted before)."""
        return list(await self._admin("GET", "reports"))

    async def attempts(self) -> list[dict[str, Any]]:
        """Every ``POST /reports`` request, whatever its answer."""
        return list(await self._admin("GET", "attempts"))

    async def pushes(self) -> list[dict[str, Any]]:
        """Every webhook push attempt (``status`` 200: the gateway acknowledged it)."""
        return list(await self._admin("GET", "pushes"))

    async def register_webhook(self, url: str, secret: str) -> None:
        """``POST /webhooks`` with a client-credentials token, as a partner would."""
        form = {
            "grant_type": "client_credentials",
            "client_id": self.client_id,
            "client_secret": self.client_secret,
        }
        async with self.session.post(self.token_url, data=form) as resp:
            token = (await resp.json())["access_token"]
        body = {"webhookUrl": url, "webhookSecret": secret, "name": "ecgw-under-test"}
        headers = {"Authorization": f"Bearer {token}"}
        async with self.session.post(
            self.base_url + "/webhooks", json=body, headers=headers
        ) as resp:
            if resp.status != 201:
                raise RuntimeError(f"POST /webhooks: {resp.status} {await resp.text()}")


class GatewayProcess:
    """One ``ecgw run`` process. Its log lines go to ``log``; ``ready`` is set by the
    ``gateway.started`` line and ``ready_after`` says how long after spawn it came."""

    def __init__(self, process: asyncio.subprocess.Process, log: Path, spawned: float) -> None:
        self.process = process
        self.log = log
        self.spawned = spawned
        self.ready = asyncio.Event()
        self.ready_after: float | None = None
        self._pump = asyncio.create_task(self._copy_log(), name=f"ecgw-log-{process.pid}")

    @classmethod
    async def spawn(
        cls, config: Path, log: Path, *, env: Mapping[str, str] | None = None
    ) -> GatewayProcess:
        full_env = {**os.environ, "ECGW_CONFIG": str(config), **(env or {})}
        spawned = time.monotonic()
        process = await asyncio.create_subprocess_exec(
            *ECGW,
            "run",
            env=full_env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        return cls(process, log, spawned)

    async def _copy_log(self) -> None:
        stream = self.process.stderr
        assert stream is not None
        with self.log.open("ab") as out:
            while line := await stream.readline():
                out.write(line)
                if not self.ready.is_set() and READY_LINE in line.decode(errors="replace"):
                    self.ready_after = time.monotonic() - self.spawned
                    self.ready.set()

    @property
    def alive(self) -> bool:
        return self.process.returncode is None

    @property
    def pid(self) -> int:
        return self.process.pid

    async def wait_ready(self, timeout: float) -> float:
        """Seconds from spawn to ready; RuntimeError if it exits first, TimeoutError if slow."""
        exited = asyncio.create_task(self.process.wait())
        ready = asyncio.create_task(self.ready.wait())
        try:
            async with asyncio.timeout(timeout):
                await asyncio.wait({exited, ready}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            exited.cancel()
            ready.cancel()
        if self.ready_after is None:
            await self._pump
            raise RuntimeError(
                f"ecgw run exited with {self.process.returncode} before it was ready; "
                f"log: {self.log}\n{self.tail()}"
            )
        return self.ready_after

    async def wait(self, timeout: float) -> int:
        async with asyncio.timeout(timeout):
            code = await self.process.wait()
            await self._pump
        return code

    async def kill9(self) -> int:
        """``kill -9`` (unless it already died) and reap it; returns its exit status."""
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGKILL)
        return await self.wait(timeout=30)

    async def terminate(self, timeout: float = 20) -> int:
        """SIGTERM and wait for a clean exit; SIGKILL if it takes longer than ``timeout``."""
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return await self.wait(timeout)
        except TimeoutError:
            return await self.kill9()

    def tail(self, lines: int = 20) -> str:
        if not self.log.exists():
            return ""
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
