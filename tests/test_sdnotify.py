"""sd_notify: a real unix datagram socket set as NOTIFY_SOCKET, a real gateway against the sandbox.

The gateway must say READY=1 once started, WATCHDOG=1 at half of WATCHDOG_USEC from its
heartbeat loop, STOPPING=1 when it is cancelled; and nothing breaks without the socket.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.sandbox import run_sandbox
from gateway.sdnotify import Notifier
from tests.kit.gateway import make_config, running, sandbox_config
from tests.kit.proc import offline_config, start_ecgw

pytestmark = pytest.mark.timeout(20)


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "n.sock"))
    sock.setblocking(False)
    try:
        yield sock
    finally:
        sock.close()


async def receive(sock: socket.socket, timeout: float = 5.0) -> str:
    async with asyncio.timeout(timeout):
        data = await asyncio.get_running_loop().sock_recv(sock, 4096)
    return data.decode()


async def test_gateway_says_ready_watchdog_and_stopping(
    tmp_path: Path, notify_socket: socket.socket, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", notify_socket.getsockname())
    monkeypatch.setenv("WATCHDOG_USEC", "200000")  # WatchdogSec=200ms: WATCHDOG=1 every 100 ms
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    async with run_sandbox() as sandbox:
        config = make_config(sandbox_config(sandbox, tmp_path / "state"))
        async with running(config) as gateway:
            assert gateway.notifier.watchdog_interval == pytest.approx(0.1)
            seen = [await receive(notify_socket)]
            while seen.count("WATCHDOG=1") < 3:
                seen.append(await receive(notify_socket, timeout=2.0))
            assert seen[0] == "READY=1"  # the heartbeat loop starts after the readiness
            assert set(seen[1:]) == {"WATCHDOG=1"}
        after = []
        while not after or after[-1] != "STOPPING=1":
            after.append(await receive(notify_socket))
        assert set(after) <= {"WATCHDOG=1", "STOPPING=1"}


async def test_ready_is_sent_once_the_gateway_has_started(
    tmp_path: Path, notify_socket: socket.socket, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", notify_socket.getsockname())
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    async with run_sandbox() as sandbox:
        config = make_config(sandbox_config(sandbox, tmp_path / "state"))
        async with running(config) as gateway:
            assert gateway.notifier.watchdog_interval is None
            first = await receive(notify_socket)
            assert first == "READY=1"  # the heartbeat sends no WATCHDOG=1 without WATCHDOG_USEC
            assert gateway.ready.is_set()
            assert (tmp_path / "state" / "ecgw.sqlite3").exists()


async def test_a_missing_socket_does_not_stop_the_gateway(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "nobody-listens.sock"))
    monkeypatch.setenv("WATCHDOG_USEC", "100000")
    async with run_sandbox() as sandbox:
        config = make_config(sandbox_config(sandbox, tmp_path / "state"))
        async with running(config) as gateway:
            assert not gateway.notifier.ready()
            await asyncio.sleep(0.2)  # a few heartbeats, each failing to notify
            assert gateway.ready.is_set()


def test_without_notify_socket_nothing_is_sent() -> None:
    notifier = Notifier.from_env({})
    assert notifier.address is None
    assert notifier.watchdog_interval is None
    assert not notifier.ready()
    assert not notifier.watchdog()
    assert not notifier.stopping()


def test_abstract_namespace_address() -> None:
    name = f"ecgw-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        notifier = Notifier.from_env({"NOTIFY_SOCKET": "@" + name})
        assert notifier.send("READY=1\nSTATUS=up")
        sock.settimeout(2)
        assert sock.recv(4096) == b"READY=1\nSTATUS=up"


@pytest.mark.parametrize(
    ("env", "interval"),
    [
        ({"WATCHDOG_USEC": "30000000"}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}, None),  # another process's
        ({"WATCHDOG_USEC": "soon"}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "-5"}, None),
        ({"WATCHDOG_USEC": "1000"}, 0.05),  # 1 ms: at most 20 heartbeats a second
        ({}, None),
    ],
)
def test_watchdog_interval_is_half_of_watchdog_usec(
    env: dict[str, str], interval: float | None
) -> None:
    assert Notifier.from_env({"NOTIFY_SOCKET": "/run/x", **env}).watchdog_interval == interval


async def test_ecgw_run_process_says_ready_then_stopping_on_sigterm(
    tmp_path: Path, notify_socket: socket.socket
) -> None:
    """As under systemd: ``ecgw run`` as its own process (its API offline), stopped with
    SIGTERM."""
    env = {"NOTIFY_SOCKET": notify_socket.getsockname(), "WATCHDOG_USEC": "400000"}
    process = await start_ecgw("run", config=offline_config(tmp_path), env=env)
    try:
        assert await receive(notify_socket, timeout=15) == "READY=1"
        assert await receive(notify_socket, timeout=2) == "WATCHDOG=1"
        process.send_signal(signal.SIGTERM)
        seen = [await receive(notify_socket)]
        while seen[-1] == "WATCHDOG=1":
            seen.append(await receive(notify_socket))
        assert seen[-1] == "STOPPING=1"
        async with asyncio.timeout(15):
            assert await process.wait() == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
