"""The adapter author's kit: its fixtures, the conformance suite on good and broken adapters,
and the template distribution installed on its own and tested with the kit."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar

import aiohttp
import aiomqtt
import pytest
from pymodbus.client import AsyncModbusTcpClient

from gateway import AdapterConfig, AdapterReadError, Channel, ChannelKind, Reading, Unit
from gateway.testing import ManualClock, Mosquitto, RegisterServer, conformance, u32_words
from gateway.testing.conformance import ConformanceError, run_check

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = ROOT / "examples" / "adapter-template"

# --- the fixtures -------------------------------------------------------------------------------


def test_clock_moves_only_when_told(ecgw_clock: ManualClock) -> None:
    start = ecgw_clock()
    assert ecgw_clock.advance(90) == start + 90 == ecgw_clock.now()
    with pytest.raises(ValueError, match="only moves forward"):
        ecgw_clock.advance(-1)
    ecgw_clock.set(start)  # a corrected wall clock may go back
    assert ecgw_clock() == start


async def test_sandbox_fixture_serves_tokens(ecgw_sandbox: Any) -> None:
    form = {
        "grant_type": "client_credentials",
        "client_id": "ecgw-sandbox",
        "client_secret": "sandbox-secret",
    }
    async with (
        aiohttp.ClientSession() as session,
        session.post(ecgw_sandbox.token_url, data=form) as response,
    ):
        assert response.status == 200, await response.text()
        assert "access_token" in await response.json()


async def test_mosquitto_fixture_is_a_private_broker(ecgw_mosquitto: Mosquitto) -> None:
    assert ecgw_mosquitto.port != 1883
    async with aiomqtt.Client(ecgw_mosquitto.host, ecgw_mosquitto.port) as client:
        await client.subscribe("kit/test")
        await client.publish("kit/test", b"42", retain=True)
        async with asyncio.timeout(5):
            message = await anext(aiter(client.messages))
    assert message.payload == b"42"


async def test_modbus_fixture_serves_a_register_map_and_goes_away(
    ecgw_modbus: Callable[..., Awaitable[RegisterServer]],
) -> None:
    server = await ecgw_modbus({0: 0, 1: 0}, input={5: 7})
    server.set_holding(0, u32_words(70_000))
    client = AsyncModbusTcpClient("127.0.0.1", port=server.port, retries=0, reconnect_delay=0)
    try:
        assert await client.connect()
        holding = await client.read_holding_registers(0, count=2, device_id=1)
        inputs = await client.read_input_registers(5, count=1, device_id=1)
        assert (holding.registers, inputs.registers) == ([1, 4464], [7])
    finally:
        client.close()
    port = server.port
    await server.stop()
    client = AsyncModbusTcpClient("127.0.0.1", port=port, retries=0, reconnect_delay=0)
    try:
        assert not await client.connect()  # the device is gone
    finally:
        client.close()
    await server.start()
    assert server.port == port
    with pytest.raises(KeyError, match="not in the map"):
        server.set_holding(9, [1])


# --- adapters to put through the suite ----------------------------------------------------------

ENERGY = Channel("energy", ChannelKind.ENERGY, Unit.WH, wrap=2.0**32)


class CounterConfig(AdapterConfig, frozen=True, kw_only=True, forbid_unknown_fields=True):
    port: int


class CounterMeter:
    """A small honest adapter: a fresh connection per read, under a deadline."""

    Config: ClassVar[type[AdapterConfig]] = CounterConfig
    block_for = 0.0  # seconds each read holds the event loop (time.sleep)
    deaf = False  # swallow every cancellation

    def __init__(self, name: str, config: AdapterConfig) -> None:
        assert isinstance(config, CounterConfig)
        self.name, self.config = name, config

    def channels(self) -> Sequence[Channel]:
        return (ENERGY,)

    async def __aenter__(self) -> CounterMeter:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        return None

    async def read(self) -> Sequence[Reading]:
        while True:
            try:
                return await self._read()
            except asyncio.CancelledError:
                if not self.deaf:
                    raise

    async def _read(self) -> Sequence[Reading]:
        time.sleep(self.block_for)  # noqa: ASYNC251 - the broken adapter does it on purpose
        writer: asyncio.StreamWriter | None = None
        try:
            async with asyncio.timeout(1):
                reader, writer = await asyncio.open_connection("127.0.0.1", self.config.port)
                writer.write(b"\x00\x01\x00\x00\x00\x06\x01\x03\x00\x00\x00\x02")
                answer = await reader.readexactly(13)
        except (OSError, asyncio.IncompleteReadError) as exc:  # TimeoutError included
            raise AdapterReadError(f"no answer: {exc!r}", adapter=self.name) from exc
        finally:
            if writer is not None:
                writer.close()
        value = int.from_bytes(answer[9:13], "big")
        return (Reading("energy", time.time(), float(value)),)


class BrokenMeter(CounterMeter):
    """Blocks the event loop on every read and ignores cancellation."""

    block_for = 0.12
    deaf = True


class Counter:
    """The device: a register map behind a real Modbus server."""

    def __init__(self, server: RegisterServer) -> None:
        self.server = server
        self.config = {"type": "counter", "port": server.port, "poll_interval": "1s"}

    async def stop(self) -> None:
        await self.server.stop()

    async def start(self) -> None:
        await self.server.start()

    async def set_counter(self, value: float) -> None:
        self.server.set_holding(0, u32_words(int(value)))


@contextlib.asynccontextmanager
async def counter_device() -> AsyncIterator[Counter]:
    async with RegisterServer.running({0: 0, 1: 1000}) as server:
        yield Counter(server)


TestCounterMeter = conformance.suite(CounterMeter, device=counter_device, bad_values={"port": "x"})


def test_a_blocking_adapter_fails_with_the_time_and_the_phase() -> None:
    with pytest.raises(ConformanceError) as caught:
        run_check("never_blocks_the_loop", BrokenMeter, device=counter_device)
    message = str(caught.value)
    assert message.startswith("BrokenMeter blocked the event loop for ")
    assert "while reading" in message and "(limit 50 ms)" in message


def test_an_adapter_that_ignores_cancellation_fails_saying_so() -> None:
    with pytest.raises(ConformanceError, match=r"^BrokenMeter ignores cancellation: cancelled "):
        run_check("survives_cancellation", BrokenMeter, device=counter_device)


def test_an_unknown_key_accepted_fails() -> None:
    class LaxConfig(AdapterConfig, frozen=True, kw_only=True, forbid_unknown_fields=False):
        port: int

    class LaxMeter(CounterMeter):
        Config: ClassVar[type[AdapterConfig]] = LaxConfig

        def __init__(self, name: str, config: AdapterConfig) -> None:
            self.name, self.config = name, config  # type: ignore[assignment]

    with pytest.raises(ConformanceError, match="accepted no_such_key_in_any_adapter = 1"):
        run_check("rejects_bad_config", LaxMeter, device=counter_device)


def test_a_stale_value_fails() -> None:
    class CachingMeter(CounterMeter):
        last: Sequence[Reading] = ()

        async def read(self) -> Sequence[Reading]:
            with contextlib.suppress(AdapterReadError):
                self.last = await self._read()
            return self.last

    with pytest.raises(ConformanceError, match=r"returned 1 reading.s. while its device was gone"):
        run_check("reports_staleness", CachingMeter, device=counter_device)


def test_a_counter_cleaned_by_the_adapter_fails() -> None:
    class SmoothingMeter(CounterMeter):
        high = 0.0

        async def read(self) -> Sequence[Reading]:
            (reading,) = await self._read()
            self.high = max(self.high, reading.value)  # "fixes" resets: the gateway's job
            return (Reading(reading.channel, reading.at, self.high),)

    with pytest.raises(ConformanceError, match=r"pass raw counter values through"):
        run_check("counter_wrap_reset_glitch", SmoothingMeter, device=counter_device)


@pytest.mark.slow
def test_the_broken_adapter_fails_the_suite_readably(tmp_path: Path) -> None:
    """As an adapter author sees it: pytest's summary names the check and says what to do."""
    module = tmp_path / "test_broken.py"
    module.write_text(
        textwrap.dedent(
            """
            from gateway.testing import conformance
            from tests.test_adapter_kit import BrokenMeter, counter_device

            TestBroken = conformance.suite(BrokenMeter, device=counter_device)
            """
        )
    )
    result = _pytest(tmp_path, module, "-k", "blocks or cancellation", extra_path=ROOT)
    out = result.stdout
    assert "2 failed" in out, out
    assert "FAILED test_broken.py::TestBroken::test_never_blocks_the_loop" in out
    assert "BrokenMeter ignores cancellation" in out
    assert "Traceback" not in out and "During handling" not in out, out


# --- the template distribution ------------------------------------------------------------------


@pytest.mark.slow
def test_the_template_installs_on_its_own_and_passes_the_suite(tmp_path: Path) -> None:
    """Built and installed (no dependencies: they are ecgw's) into a directory of its own,
    then its tests run from a copy that holds no source, so the installed one is used."""
    source, site, run = tmp_path / "src", tmp_path / "site", tmp_path / "run"
    shutil.copytree(TEMPLATE, source, ignore=shutil.ignore_patterns("build", "*.egg-info"))
    pip = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site)]
    subprocess.run([*pip, str(source)], check=True, capture_output=True, timeout=120)
    run.mkdir()
    shutil.copy(source / "pyproject.toml", run)
    shutil.copytree(source / "tests", run / "tests")
    found = _python(
        "from gateway.metering.discovery import find_plugins, load_plugin;"
        "[p] = [p for p in find_plugins() if p.name == 'template-meter'];"
        "import sys; print(p.distribution, sys.modules[load_plugin(p).__module__].__file__)",
        site,
    )
    assert found.startswith(f"ecgw-adapter-template {site}"), found
    result = _pytest(run, run / "tests", extra_path=site)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "9 passed" in result.stdout


def _env(extra_path: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(extra_path)}


def _python(code: str, extra_path: Path) -> str:
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        env=_env(extra_path),
        check=True,
    )
    return result.stdout.strip()


def _pytest(cwd: Path, *args: object, extra_path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        env=_env(extra_path),
        check=False,
    )
