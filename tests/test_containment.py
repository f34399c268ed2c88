"""``ecgw run`` as a real process stays up through hostile plugins and failing loops.

A test plugin distribution (a ``*.dist-info`` with an entry point, on
``PYTHONPATH``) provides adapters that raise SystemExit or KeyboardInterrupt
from ``read()``, whose ``channels()`` raises, or that swallow cancellation. The
API is the sandbox, or a small aiohttp server that answers ``GET /events`` with
an HTML page.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import textwrap
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from gateway.sandbox import Sandbox, run_sandbox
from tests.kit.gateway import sandbox_config, toml, wait_until
from tests.kit.proc import ecgw, start_ecgw

pytestmark = [pytest.mark.slow, pytest.mark.timeout(60)]

PLUGIN = """
    import asyncio
    import time

    from gateway import AdapterConfig, Channel, ChannelKind, Reading, Unit

    ENERGY = Channel("energy", ChannelKind.ENERGY, Unit.KWH)


    class HostileConfig(AdapterConfig, frozen=True, kw_only=True):
        mode: str = "good"


    class Hostile:
        Config = HostileConfig

        def __init__(self, name, config):
            self.name = name
            self.config = config
            self.reads = 0

        def channels(self):
            if self.config.mode == "channels":
                raise RuntimeError("no channels today")
            return [ENERGY]

        async def __aenter__(self):
            return self

        async def __aexit__(self, *exc_info):
            return None

        async def read(self):
            self.reads += 1
            mode = self.config.mode
            if mode == "exit":
                raise SystemExit(3)
            if mode == "interrupt":
                raise KeyboardInterrupt
            if mode == "garbage":  # one good reading among readings no meter can give
                now = time.time()
                return [
                    Reading("energy", now, float("nan")),
                    Reading("energy", now, 2.78e297),
                    Reading("energy", 253402297200.0, 1.0),  # 9999-12-31T23:00:00Z
                    Reading("energy", now, float(self.reads)),
                ]
            if mode == "swallow":  # never returns, whatever is cancelled
                while True:
                    try:
                        await asyncio.sleep(0.05)
                    except asyncio.CancelledError:
                        pass
            return [Reading("energy", time.time(), float(self.reads))]


    class SyncExit(Hostile):
        def read(self):
            raise SystemExit(4)


    class Unbuildable(Hostile):
        def __init__(self, name, config):
            raise KeyboardInterrupt
"""

UNIMPORTABLE = "raise SystemExit('no import today')\n"


@pytest.fixture
async def sandbox() -> AsyncIterator[Sandbox]:
    async with run_sandbox() as sb:
        yield sb


def install_plugin(tmp_path: Path) -> dict[str, str]:
    """The hostile plugin as an installed distribution; returns the env that finds it."""
    site = tmp_path / "site"
    info = site / "ecgw_test_hostile-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: ecgw-test-hostile\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(
        "[gateway.adapters]\n"
        "hostile = ecgw_test_hostile:Hostile\n"
        "sync-exit = ecgw_test_hostile:SyncExit\n"
        "unbuildable = ecgw_test_hostile:Unbuildable\n"
        "unimportable = ecgw_test_unimportable:Nothing\n"
    )
    (site / "ecgw_test_hostile.py").write_text(textwrap.dedent(PLUGIN))
    (site / "ecgw_test_unimportable.py").write_text(UNIMPORTABLE)
    path = os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))
    return {"PYTHONPATH": path}


def write_config(tmp_path: Path, sandbox: Sandbox, adapters: dict[str, Any]) -> Path:
    data = sandbox_config(sandbox, tmp_path / "state", extra={"adapters": adapters})
    path = tmp_path / "ecgw.toml"
    path.write_text(toml(data))
    return path


async def adapters_status(path: Path, env: dict[str, str]) -> dict[str, Any]:
    result = await asyncio.to_thread(ecgw, "status", "--json", config=path, env=env)
    if result.returncode != 0:
        return {}
    adapters: dict[str, Any] = json.loads(result.stdout)["adapters"]
    return adapters


def raw_lines(log: Path) -> list[str]:
    """What reached stderr other than JSON log lines (a traceback, a warning)."""
    return [line for line in log.read_text().splitlines() if not line.startswith("{")]


def log_events(log: Path) -> list[dict[str, Any]]:
    events = []
    for line in log.read_text().splitlines():
        if line.startswith("{") and line.endswith("}"):  # a line being written is skipped
            events.append(json.loads(line))
    return events


async def stop(proc: asyncio.subprocess.Process, *, within: float) -> tuple[int, float]:
    """SIGTERM (unless it has already exited); its exit code and how long it took."""
    started = time.monotonic()
    if proc.returncode is None:
        proc.send_signal(signal.SIGTERM)
    code = await asyncio.wait_for(proc.wait(), timeout=within)
    return code, time.monotonic() - started


async def running_until(proc: asyncio.subprocess.Process, predicate: Any, log: Path) -> None:
    """Wait for ``predicate``; fail at once, with the log's tail, if the gateway exits."""

    async def done() -> bool:
        return proc.returncode is not None or bool(await predicate())

    await wait_until(done, timeout=30, interval=0.3)
    if proc.returncode is not None:
        tail = await asyncio.to_thread(log.read_text)
        raise AssertionError(f"the gateway exited with {proc.returncode}:\n{tail[-3000:]}")


async def test_hostile_plugins_do_not_stop_the_gateway(sandbox: Sandbox, tmp_path: Path) -> None:
    env = install_plugin(tmp_path)
    fast = {"poll_interval": "100ms"}
    path = write_config(
        tmp_path,
        sandbox,
        {
            "good": {"type": "hostile", **fast},
            "exits": {"type": "hostile", "mode": "exit", **fast},
            "interrupts": {"type": "hostile", "mode": "interrupt", **fast},
            "nameless": {"type": "hostile", "mode": "channels", **fast},
            "threaded": {"type": "sync-exit", **fast},
            "noisy": {"type": "hostile", "mode": "garbage", **fast},
            "unbuildable": {"type": "unbuildable"},
            "unimportable": {"type": "unimportable"},
        },
    )
    log = tmp_path / "run.log"
    proc = await start_ecgw("run", config=path, env=env, log=log)
    try:

        async def each_failed_and_good_reads() -> bool:
            status = await adapters_status(path, env)
            failing = ("exits", "interrupts", "nameless", "threaded")
            return (
                status.get("good", {}).get("readings", 0) >= 5
                and status.get("noisy", {}).get("readings", 0) >= 2
                and all(status.get(name, {}).get("restarts", 0) >= 1 for name in failing)
            )

        await running_until(proc, each_failed_and_good_reads, log)
        status = await adapters_status(path, env)
        assert "SystemExit" in status["exits"]["last_error"]
        assert "KeyboardInterrupt" in status["interrupts"]["last_error"]
        assert "SystemExit" in status["threaded"]["last_error"]
        assert status["nameless"]["last_error"] == (
            "channels() failed: RuntimeError: no channels today"
        )
        noisy = status["noisy"]
        assert noisy["rejected"] == 3 * noisy["readings"]  # 3 of each 4, the rest kept
        assert noisy["restarts"] == 0  # bad readings are not a crash
        text = await asyncio.to_thread(ecgw, "status", config=path, env=env)
        assert "rejected)" in text.stdout
        assert status["unbuildable"]["state"] == status["unimportable"]["state"] == "failed"
        assert "failed to initialise: KeyboardInterrupt" in status["unbuildable"]["last_error"]
        assert (
            "failed to import: SystemExit: no import today"
            in (status["unimportable"]["last_error"])
        )
    finally:
        code, _ = await stop(proc, within=15)
    assert code == 0, log.read_text()[-3000:]
    assert raw_lines(log) == []
    rejected = [e for e in log_events(log) if e["event"] == "adapter.readings_rejected"]
    assert {(e["adapter"], e["reason"]) for e in rejected} == {
        ("noisy", "value or time is not finite"),
        ("noisy", "value is implausible"),
        ("noisy", "time is outside 2000..2200"),
    }


async def test_sigterm_does_not_wait_for_ever_for_a_plugin_that_swallows_cancellation(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    env = install_plugin(tmp_path)
    path = write_config(
        tmp_path,
        sandbox,
        {
            "good": {"type": "hostile", "poll_interval": "100ms"},
            "rude": {"type": "hostile", "mode": "swallow", "poll_interval": "100ms"},
        },
    )
    log = tmp_path / "run.log"
    proc = await start_ecgw("run", config=path, env=env, log=log)
    try:

        async def reading() -> bool:
            status = await adapters_status(path, env)
            return status.get("good", {}).get("readings", 0) >= 2

        await running_until(proc, reading, log)
    finally:
        code, took = await stop(proc, within=20)
    assert code == 0, log.read_text()[-3000:]
    assert took < 12, took
    abandoned = [e for e in log_events(log) if e["event"] == "adapter.abandoned"]
    assert [e["adapter"] for e in abandoned] == ["rude"]
    assert raw_lines(log) == []


# --- a loop that meets an unexpected error ------------------------------------------------------


@pytest.fixture
async def html_api(sandbox: Sandbox) -> AsyncIterator[str]:
    """An API whose ``GET /events`` answers 200 with an HTML page; returns its base URL."""
    pages = 0

    async def events(request: web.Request) -> web.Response:
        nonlocal pages
        pages += 1
        return web.Response(text="<html><body>maintenance</body></html>", content_type="text/html")

    app = web.Application()
    app.router.add_get("/api/events", events)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        yield f"http://{host}:{port}/api"
    finally:
        await runner.cleanup()


async def test_an_api_that_answers_html_fails_each_poll_alone_not_the_process(
    sandbox: Sandbox, html_api: str, tmp_path: Path
) -> None:
    """Before the boundary checks this page stopped the poller loop (an ExceptionGroup
    traceback and exit 1); now each poll fails alone, logged with its status, and the
    gateway and its adapters run on. (A loop that does fail is restarted with backoff:
    tests/test_supervise.py.)"""
    data = sandbox_config(
        sandbox,
        tmp_path / "state",
        extra={
            "poll": {"interval": "1s"},
            "adapters": {"meter": {"type": "simulated", "poll_interval": "100ms"}},
        },
    )
    data["api"]["base_url"] = html_api
    path = tmp_path / "ecgw.toml"
    path.write_text(toml(data))
    log = tmp_path / "run.log"
    proc = await start_ecgw("run", config=path, log=log)
    try:

        async def failed_twice_and_still_reading() -> bool:
            failures = [e for e in log_events(log) if e.get("event") == "poll.failed"]
            status = await adapters_status(path, {})
            return len(failures) >= 2 and status.get("meter", {}).get("readings", 0) > 0

        await running_until(proc, failed_twice_and_still_reading, log)
    finally:
        code, _ = await stop(proc, within=15)
    assert code == 0, log.read_text()[-3000:]
    assert raw_lines(log) == []
    failures = [e for e in log_events(log) if e.get("event") == "poll.failed"]
    assert all(e["status"] == 200 for e in failures), failures
    assert failures[0]["error"].startswith("WireError: GET /events reply"), failures[0]
    assert not [e for e in log_events(log) if e.get("event") in {"loop.failed", "gateway.fatal"}]


def test_run_on_a_corrupt_database_is_one_line_exit_1(tmp_path: Path) -> None:
    db = tmp_path / "state" / "ecgw.sqlite3"
    db.parent.mkdir()
    db.write_bytes(b"garbage" * 1000)
    path = tmp_path / "ecgw.toml"
    path.write_text(
        '[gateway]\nstate_dir = "state"\n'
        "[api]\nbase_url='http://127.0.0.1:1/x'\n"
        "token_url='http://127.0.0.1:1/t'\nclient_id='c'\nclient_secret='s'\n"
    )
    result = ecgw("run", config=path)
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if not line.startswith("{")]
    assert len(lines) == 1 and lines[0].startswith("ecgw: "), result.stderr
    assert "left untouched" in lines[0]
    assert "Traceback" not in result.stderr


# --- ecgw run's exception path ------------------------------------------------------------------


class _Stops:
    """Stands in for Gateway in cmd_run: its run() raises what the test gives it."""

    error: BaseException = RuntimeError("unset")

    def __init__(self, config: object) -> None:
        self.config = config

    async def run(self) -> None:
        raise self.error


@pytest.mark.parametrize(
    ("error", "code", "crash_logged"),
    [
        (MemoryError(), 1, False),  # fatal: the supervisor has logged it
        (RuntimeError("a bug\nof ours"), 1, True),  # not ours to expect: traceback to the log
    ],
)
async def test_run_ends_an_error_that_is_not_ours_with_one_line(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    error: BaseException,
    code: int,
    crash_logged: bool,
) -> None:
    import structlog

    from gateway import app, cli
    from gateway.config import parse_config

    config = parse_config(
        {
            "gateway": {"state_dir": str(tmp_path)},
            "api": {
                "base_url": "http://127.0.0.1:1/x",
                "token_url": "http://127.0.0.1:1/t",
                "client_id": "c",
                "client_secret": "s",
            },
        },
        base=tmp_path,
    )
    monkeypatch.setattr(_Stops, "error", error)
    monkeypatch.setattr(app, "Gateway", _Stops)  # cmd_run imports it when it runs
    with structlog.testing.capture_logs() as logs:
        assert await cli.cmd_run(None, config) == code  # type: ignore[arg-type]
    lines = capsys.readouterr().err.splitlines()
    assert lines == [f"ecgw: {type(error).__name__}" + (": a bug of ours" if crash_logged else "")]
    crashed = [e for e in logs if e["event"] == "gateway.crashed"]
    assert len(crashed) == crash_logged
    if crash_logged:
        assert crashed[0]["exc_info"] is error
