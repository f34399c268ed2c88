"""A private Mosquitto broker for tests: a free port, a temp config, stop/restart/kill.

    async with Mosquitto.running(tmp_path) as broker:
        ... broker.url ...            # mqtt://127.0.0.1:<port>
        await broker.restart()        # same port; a new broker with no memory (persistence off)

``persistence=True`` keeps sessions, subscriptions and queued messages in the workdir
(``mosquitto.db``, written at a clean stop): a broker started again with ``start()`` on
the same port and config takes up where the last one stopped.

Readiness is Mosquitto's own "running" log line, not a sleep. The broker's
output is kept (``broker.log``) to explain a failing test.

Also here: :func:`make_tls_files` (a CA, a server and a client certificate,
made with the ``openssl`` CLI) and :func:`mqtt_ingest_rate`, the ingest
benchmark (the adapter next to a bare aiomqtt subscriber).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import aiomqtt
import msgspec

from adapters.mqtt import MqttAdapter, MqttConfig

__all__ = [
    "IngestRate",
    "Mosquitto",
    "TlsFiles",
    "free_port",
    "make_tls_files",
    "mqtt_ingest_rate",
    "shelly_status_lines",
]

MOSQUITTO = shutil.which("mosquitto", path="/usr/sbin:/usr/bin:/usr/local/sbin") or "mosquitto"
_START_TIMEOUT = 10.0
_STOP_TIMEOUT = 5.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class TlsFiles:
    ca_cert: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def make_tls_files(directory: Path) -> TlsFiles:
    """A throwaway CA, a server certificate for 127.0.0.1/localhost and a client certificate."""
    directory.mkdir(parents=True, exist_ok=True)
    files = TlsFiles(
        *(directory / n for n in ("ca.crt", "server.crt", "server.key", "client.crt", "client.key"))
    )
    ca_key = directory / "ca.key"
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl(
        "req",
        "-x509",
        *ec,
        "-keyout",
        ca_key,
        "-out",
        files.ca_cert,
        "-days",
        "2",
        "-subj",
        "/CN=ecgw-test-ca",
    )
    for cert, key, subject, ext in (
        (
            files.server_cert,
            files.server_key,
            "/CN=localhost",
            "subjectAltName=IP:127.0.0.1,DNS:localhost",
        ),
        (
            files.client_cert,
            files.client_key,
            "/CN=ecgw-test-client",
            "extendedKeyUsage=clientAuth",
        ),
    ):
        request = key.with_suffix(".csr")
        extfile = key.with_suffix(".ext")
        extfile.write_text(ext + "\n")
        _openssl("req", *ec, "-keyout", key, "-out", request, "-subj", subject)
        _openssl(
            "x509",
            "-req",
            "-in",
            request,
            "-CA",
            files.ca_cert,
            "-CAkey",
            ca_key,
            "-CAcreateserial",
            "-out",
            cert,
            "-days",
            "2",
            "-extfile",
            extfile,
        )
    return files


def _openssl(*args: object) -> None:
    subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True, timeout=30)


class Mosquitto:
    """One mosquitto process on 127.0.0.1; ``restart()`` keeps the port."""

    def __init__(
        self,
        workdir: Path,
        *,
        users: Mapping[str, str] | None = None,
        tls: TlsFiles | None = None,
        require_certificate: bool = False,
        acl: str | None = None,
        persistence: bool = False,
    ) -> None:
        self.workdir = workdir
        self.persistence = persistence
        """Sessions and queued messages survive a stop and start (saved in ``workdir``)."""
        self.acl = acl
        """The text of an ``acl_file`` (``ecgw hub acl``), or None: every topic for all."""
        self.users = dict(users or {})
        self.tls = tls
        self.require_certificate = require_certificate
        self.port = 0
        self.log: collections.deque[str] = collections.deque(maxlen=500)
        self._process: asyncio.subprocess.Process | None = None
        self._pump: asyncio.Task[None] | None = None

    @classmethod
    @contextlib.asynccontextmanager
    async def running(
        cls,
        workdir: Path,
        *,
        users: Mapping[str, str] | None = None,
        tls: TlsFiles | None = None,
        require_certificate: bool = False,
        acl: str | None = None,
        persistence: bool = False,
    ) -> AsyncIterator[Mosquitto]:
        broker = cls(
            workdir,
            users=users,
            tls=tls,
            require_certificate=require_certificate,
            acl=acl,
            persistence=persistence,
        )
        await broker.start()
        try:
            yield broker
        finally:
            await broker.stop()

    @property
    def host(self) -> str:
        return "127.0.0.1"

    @property
    def url(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"

    @property
    def is_running(self) -> bool:
        return self._process is not None and self._process.returncode is None

    async def start(self) -> None:
        """Start on ``self.port``, or on a free port the first time (retried if taken)."""
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
        """SIGTERM and wait (SIGKILL after a few seconds)."""
        await self._end(kill=False)

    async def kill(self) -> None:
        """SIGKILL: the broker vanishes without closing connections cleanly."""
        await self._end(kill=True)

    async def restart(self) -> None:
        await self.stop()
        await self.start()

    async def _spawn(self) -> bool:
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "mosquitto.conf"
        config.write_text(self._config())
        self._process = await asyncio.create_subprocess_exec(
            MOSQUITTO,
            "-c",
            str(config),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        assert self._process.stdout is not None
        ready = False
        try:
            async with asyncio.timeout(_START_TIMEOUT):
                while line := (await self._process.stdout.readline()).decode(errors="replace"):
                    self.log.append(line.rstrip())
                    if " running" in line:
                        ready = True
                        break
        except TimeoutError:
            pass
        self._pump = asyncio.create_task(self._keep_log(self._process.stdout))
        if not ready:
            await self._end(kill=True)
        return ready

    async def _keep_log(self, stdout: asyncio.StreamReader) -> None:
        while line := await stdout.readline():
            self.log.append(line.decode(errors="replace").rstrip())

    async def _end(self, *, kill: bool) -> None:
        process, pump = self._process, self._pump
        self._process = self._pump = None
        if process is None:
            return
        if process.returncode is None:
            process.kill() if kill else process.terminate()
            try:
                async with asyncio.timeout(_STOP_TIMEOUT):
                    await process.wait()
            except TimeoutError:
                process.kill()
        await process.wait()
        if pump is not None:
            await pump  # ends at EOF, now that the process is gone

    def _config(self) -> str:
        lines = [
            f"listener {self.port} {self.host}",
            "log_dest stderr",  # unbuffered, unlike stdout into a pipe
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "log_timestamp false",
            "max_queued_messages 0",  # unlimited: the benchmark queues a lot for one client
            "user root",  # stay the user we are, so files under tmp_path stay readable
        ]
        if self.persistence:
            lines += ["persistence true", f"persistence_location {self.workdir}/"]
        else:
            lines.append("persistence false")
        if self.users:
            passwords = self.workdir / "passwords"
            passwords.write_text("")
            for user, password in self.users.items():
                subprocess.run(
                    ["mosquitto_passwd", "-b", str(passwords), user, password],
                    check=True,
                    capture_output=True,
                    timeout=10,
                )
            lines += ["allow_anonymous false", f"password_file {passwords}"]
        else:
            lines.append("allow_anonymous true")
        if self.acl is not None:
            acl_file = self.workdir / "acl"
            acl_file.write_text(self.acl)
            lines.append(f"acl_file {acl_file}")
        if self.tls is not None:
            lines += [
                f"cafile {self.tls.ca_cert}",
                f"certfile {self.tls.server_cert}",
                f"keyfile {self.tls.server_key}",
                f"require_certificate {'true' if self.require_certificate else 'false'}",
            ]
        return "\n".join(lines) + "\n"


# -- benchmark ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class IngestRate:
    """Messages per second taken in, by the adapter and by a bare aiomqtt subscriber."""

    messages: int
    adapter_per_s: float
    bare_per_s: float

    @property
    def ratio(self) -> float:
        return self.adapter_per_s / self.bare_per_s


def shelly_status_lines(count: int, *, start: float = 1_700_000_040.0) -> Iterator[str]:
    """``count`` Shelly Plus 1PM ``status/switch:0`` frames, one minute apart, energy rising."""
    for i in range(count):
        minute = start + 60 * i
        yield json.dumps(
            {
                "id": 0,
                "source": "init",
                "output": True,
                "apower": 100.0 + i % 7,
                "voltage": 230.4,
                "freq": 50.0,
                "current": 0.45,
                "pf": 0.97,
                "aenergy": {
                    "total": 1000.0 + i * 1.667,
                    "by_minute": [1667.0, 1667.0, 1667.0],
                    "minute_ts": minute,
                },
                "temperature": {"tC": 41.2, "tF": 106.2},
            },
            separators=(",", ":"),
        )


async def mqtt_ingest_rate(
    broker: Mosquitto, *, messages: int = 20_000, device: str = "shellyplus1pm-bench"
) -> IngestRate:
    """Publish ``messages`` Shelly status frames (QoS 1) and time how fast each consumer takes them.

    Two rounds on the same broker and topic, one consumer at a time so they do
    not share the CPU: a bare aiomqtt subscriber counting messages, then the
    MqttAdapter (shelly-gen2 profile) counting ``energy`` readings. Each round
    is timed from the start of the publisher (``mosquitto_pub -l``, a separate
    process) to the last message consumed.
    """
    topic = f"{device}/status/switch:0"
    payload = ("\n".join(shelly_status_lines(messages)) + "\n").encode()

    async def bare() -> float:
        async with aiomqtt.Client(broker.host, broker.port, identifier="bench-bare") as client:
            await client.subscribe(topic, qos=1)
            async with _publisher(broker, topic, payload) as started:
                seen = 0
                async for _ in client.messages:
                    seen += 1
                    if seen == messages:
                        break
                return time.perf_counter() - started

    async def adapter() -> float:
        # A fresh client id: no persistent session from an earlier round holds a backlog.
        table = {"type": "mqtt", "url": broker.url, "profile": "shelly-gen2", "device": device}
        table["client_id"] = f"ecgw-bench-{secrets.token_hex(4)}"
        config = msgspec.convert(table, MqttConfig)
        async with MqttAdapter("bench", config) as mqtt:
            stream = mqtt.stream()
            async with _publisher(broker, topic, payload) as started:
                seen = 0
                async for batch in stream:
                    seen += sum(1 for reading in batch if reading.channel == "energy")
                    if seen >= messages:
                        break
                elapsed = time.perf_counter() - started
            await stream.aclose()
            return elapsed

    bare_s = await bare()
    adapter_s = await adapter()
    return IngestRate(messages, adapter_per_s=messages / adapter_s, bare_per_s=messages / bare_s)


@contextlib.asynccontextmanager
async def _publisher(broker: Mosquitto, topic: str, payload: bytes) -> AsyncIterator[float]:
    """``mosquitto_pub -l`` publishing ``payload`` (one message a line); yields its start time."""
    started = time.perf_counter()
    process = await asyncio.create_subprocess_exec(
        "mosquitto_pub",
        "-h",
        broker.host,
        "-p",
        str(broker.port),
        "-q",
        "1",
        "-t",
        topic,
        "-l",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    assert process.stdin is not None
    try:
        process.stdin.write(payload)
        await process.stdin.drain()
        process.stdin.close()
        yield started
    finally:
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.terminate()
        await process.wait()
