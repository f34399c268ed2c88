"""`ecgw sandbox meter`: a simulated SDM630 the real Modbus adapter reads like the real one."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys

from adapters.modbus import ModbusAdapter
from gateway.sandbox.meter import SimulatedSdm630
from tests.kit.modbus import modbus_config


async def test_the_modbus_adapter_reads_it_with_the_sdm630_profile() -> None:
    clock = [100.0]
    meter = SimulatedSdm630(kw=3.0, start_kwh=1000.0, clock=lambda: clock[0])
    async with meter.serving("127.0.0.1", 0) as running:
        config = modbus_config(
            host="127.0.0.1", port=running.server.port, unit=1, profile="eastron-sdm630"
        )
        async with ModbusAdapter("site", config) as adapter:
            first = {r.channel: r.value for r in await adapter.read()}
            clock[0] += 3600.0
            await asyncio.sleep(0.5)  # the meter updates its registers every 0.2 s
            second = {r.channel: r.value for r in await adapter.read()}
    assert first["power"] == 3000.0 and first["energy"] == 1000.0
    assert abs(second["energy"] - 1003.0) < 1e-3  # float32: 1003.0 is exact enough
    assert second["export_energy"] == 0.0


async def test_the_command_prints_a_config_table_and_stops_on_sigterm() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway",
        "sandbox",
        "meter",
        "--listen",
        "127.0.0.1:0",
        "--kw",
        "2.5",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "ECGW_LOG_LEVEL": "warning"},
    )
    assert proc.stdout is not None
    text = ""
    async with asyncio.timeout(20):
        while "poll_interval" not in text:
            line = await proc.stdout.readline()
            assert line, "the command ended before printing its table"
            text += line.decode()
    port = int(re.search(r"port = (\d+)", text).group(1))  # type: ignore[union-attr]
    assert port > 0 and 'profile = "eastron-sdm630"' in text and "2.5 kW" in text
    proc.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(proc.wait(), 20) == 0
