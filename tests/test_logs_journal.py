"""Logs fit for a journal: every library's records as JSON lines, start and stop lines."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.kit.live import GatewayProcess
from tests.kit.proc import offline_config

# A real pymodbus client failing to connect, a real aiohttp server whose handler raises,
# asyncio's and Python's own warnings: all in one process whose stderr is the journal.
LIBRARIES = r"""
import asyncio, logging, warnings
import aiohttp
from aiohttp import web
from pymodbus.client import AsyncModbusTcpClient
from gateway.logs import configure_logging, register_secrets

configure_logging(level="info", json=True)
register_secrets(["hunter2-secret"])

async def broken(request):
    raise RuntimeError("handler failed with hunter2-secret")

async def main():
    client = AsyncModbusTcpClient("127.0.0.1", port=PORT, timeout=0.5, retries=0)
    await client.connect()
    client.close()
    app = web.Application()
    app.router.add_get("/", broken)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{port}/") as resp:
            assert resp.status == 500
    await runner.cleanup()
    logging.getLogger("asyncio").warning("loop is slow: %s", "example")
    warnings.warn("a library warning", DeprecationWarning, stacklevel=1)

warnings.simplefilter("always")
asyncio.run(main())
"""


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def json_lines(text: str) -> list[dict[str, Any]]:
    """Every line of ``text`` as JSON; fails naming the first line that is not."""
    records = []
    for line in text.splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            raise AssertionError(f"a plain-text line in the log stream: {line!r}") from None
    return records


def test_library_records_come_out_as_one_json_line_each() -> None:
    script = LIBRARIES.replace("PORT", str(free_port()))
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=30, check=False
    )
    assert done.returncode == 0, done.stderr
    records = json_lines(done.stderr)
    loggers = {r.get("logger") for r in records}
    assert any(str(name).startswith("pymodbus") for name in loggers), records
    [handler_error] = [r for r in records if r.get("logger") == "aiohttp.server"]
    assert handler_error["level"] == "error"
    assert "RuntimeError: handler failed with ***" in handler_error["exception"]
    assert "hunter2-secret" not in done.stderr  # redacted in library records too
    [slow] = [r for r in records if r.get("logger") == "asyncio"]
    assert slow["event"] == "loop is slow: example"
    assert slow["level"] == "warning"
    assert "timestamp" in slow
    assert any(r.get("logger") == "py.warnings" for r in records)


async def test_sigterm_leaves_a_stopped_line_with_version_and_reason(tmp_path: Path) -> None:
    log = tmp_path / "gateway.log"
    gateway = await GatewayProcess.spawn(offline_config(tmp_path), log)
    await gateway.wait_ready(timeout=20)
    assert await gateway.terminate() == 0
    records = json_lines(log.read_text())
    [started] = [r for r in records if r["event"] == "gateway.started"]
    [stopped] = [r for r in records if r["event"] == "gateway.stopped"]
    assert stopped["reason"] == "SIGTERM"
    assert stopped["version"] == started["version"] != "unknown"
    assert records[-1] is stopped  # the last line: everything was closed before it


async def test_a_fatal_error_names_itself_in_the_stopped_line(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / "ecgw.sqlite3").write_bytes(b"this is not a database" * 100)
    log = tmp_path / "gateway.log"
    gateway = await GatewayProcess.spawn(offline_config(tmp_path), log)
    assert await gateway.wait(timeout=20) == 1
    lines = log.read_text().splitlines()
    assert lines[-1].startswith("ecgw: ")  # the one line for the operator's terminal
    records = json_lines("\n".join(lines[:-1]))
    [stopped] = [r for r in records if r["event"] == "gateway.stopped"]
    assert stopped["reason"] == "StoreCorrupt"
    assert stopped["level"] == "error"
