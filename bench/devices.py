"""Device-side figures, each next to a baseline measured in the same run.

    python bench/devices.py [--only mqtt,modbus,rss,outage]

1. MQTT: Shelly status frames per second taken in by a bare aiomqtt subscriber, by the
   MqttAdapter, and by the adapter with every reading committed to the readings store.
2. Modbus: SDM630 polls per second over loopback for 50 devices, the ModbusAdapter next to a
   bare pymodbus client making the same two requests per poll.
3. Peak RSS of `ecgw run` with 100 simulated adapters, next to the same gateway with none.
4. A Modbus device gone for 30 s: CPU used meanwhile (next to 30 s of normal polling), zero
   or other readings while it was away, and how long until readings resume once it is back.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import resource
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import msgspec  # noqa: E402
import structlog  # noqa: E402

structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# --- 1. MQTT -------------------------------------------------------------------------------------


async def mqtt(messages: int) -> None:
    from adapters.mqtt import MqttAdapter, MqttConfig
    from gateway.store.database import open_database
    from gateway.store.readings import ReadingsStore
    from tests.kit.mosquitto import Mosquitto, _publisher, mqtt_ingest_rate, shelly_status_lines

    with tempfile.TemporaryDirectory() as tmp:
        async with Mosquitto.running(Path(tmp)) as broker:
            rate = await mqtt_ingest_rate(broker, messages=messages)
            device = "shellyplus1pm-store"
            topic = f"{device}/status/switch:0"
            payload = ("\n".join(shelly_status_lines(messages)) + "\n").encode()
            table = {
                "type": "mqtt",
                "url": broker.url,
                "profile": "shelly-gen2",
                "device": device,
                "client_id": f"ecgw-bench-{secrets.token_hex(4)}",
            }
            config = msgspec.convert(table, MqttConfig)
            async with open_database(Path(tmp) / "db.sqlite3") as db:
                store = ReadingsStore(db)
                async with store.writer(), MqttAdapter("plug", config) as adapter:
                    await store.register_channels("plug", adapter.channels())
                    stream = adapter.stream()
                    async with _publisher(broker, topic, payload) as started:
                        committed = 0
                        async for batch in stream:
                            await store.write("plug", batch)
                            committed += sum(1 for r in batch if r.channel == "energy")
                            if committed >= messages:
                                break
                        stored_s = time.perf_counter() - started
                    await stream.aclose()
    stored = messages / stored_s
    print(f"MQTT, {messages} Shelly status frames (QoS 1, mosquitto on loopback)")
    print(f"  bare aiomqtt subscriber        {rate.bare_per_s:9.0f} msg/s")
    print(
        f"  MqttAdapter                    {rate.adapter_per_s:9.0f} msg/s   "
        f"ratio {rate.ratio:.2f} (target >= 0.5)"
    )
    print(
        f"  MqttAdapter + committed store  {stored:9.0f} msg/s   "
        f"ratio {stored / rate.bare_per_s:.2f}"
    )


# --- 2. Modbus -----------------------------------------------------------------------------------


async def bare_modbus(ports: list[int], seconds: float) -> float:
    from pymodbus.client import AsyncModbusTcpClient

    clients = [AsyncModbusTcpClient("127.0.0.1", port=port) for port in ports]
    for client in clients:
        await client.connect()
    deadline = time.monotonic() + seconds
    count = 0

    async def poll(client: AsyncModbusTcpClient) -> None:
        nonlocal count
        while time.monotonic() < deadline:
            await client.read_input_registers(0x0034, count=2, device_id=1)
            await client.read_input_registers(0x0048, count=4, device_id=1)
            count += 1

    started = time.monotonic()
    await asyncio.gather(*(poll(c) for c in clients))
    elapsed = time.monotonic() - started
    for client in clients:
        client.close()
    return count / elapsed


async def modbus(devices: int, seconds: float) -> None:
    from tests.kit.modbus import EastronMeter, modbus_polls_per_second, modbus_tcp_server

    async with contextlib.AsyncExitStack() as stack:
        servers = [
            await stack.enter_async_context(
                modbus_tcp_server({1: EastronMeter(energy_kwh=100.0 + i, power_w=1000.0)})
            )
            for i in range(devices)
        ]
        bare = await bare_modbus([s.port for s in servers], seconds)
    adapter = await modbus_polls_per_second(devices, seconds)
    print(f"Modbus TCP, {devices} SDM630 servers on loopback (servers in the same process)")
    print(f"  bare pymodbus client (2 reads/poll)  {bare:7.0f} polls/s")
    print(
        f"  ModbusAdapter                        {adapter:7.0f} polls/s   "
        f"ratio {adapter / bare:.2f}"
    )


# --- 3. RSS --------------------------------------------------------------------------------------


def vm_hwm_mb(pid: int) -> float:
    text = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"VmHWM:\s+(\d+) kB", text)
    return int(match.group(1)) / 1024 if match else float("nan")


def gateway_rss(root: str, adapters: int, seconds: float) -> tuple[float, int]:
    with tempfile.TemporaryDirectory() as tmp:
        lines = [
            "[gateway]",
            f'state_dir = "{tmp}/state"',
            "[api]",
            f'base_url = "{root}/energy-coordination/v1"',
            f'token_url = "{root}/connect/token"',
            'client_id = "ecgw-sandbox"',
            'client_secret = "sandbox-secret"',
        ]
        for i in range(adapters):
            lines += [
                f"[adapters.sim{i:03d}]",
                'type = "simulated"',
                'poll_interval = "1s"',
                f"power_kw = {1.0 + i / 10}",
            ]
        for i in range(adapters):
            lines += [
                "[[resources]]",
                f'resource_id = "res-{i:03d}"',
                'location_id = "loc"',
                f'adapter = "sim{i:03d}"',
            ]
        config = Path(tmp) / "ecgw.toml"
        config.write_text("\n".join(lines) + "\n")
        proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "run", "-c", str(config)],
            stderr=subprocess.DEVNULL,
            env={**os.environ, "ECGW_LOG_LEVEL": "warning"},
        )
        time.sleep(seconds)
        peak = vm_hwm_mb(proc.pid)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        import sqlite3

        conn = sqlite3.connect(f"{tmp}/state/ecgw.sqlite3")
        readings = conn.execute("SELECT COUNT(*) FROM readings").fetchone()[0]
        conn.close()
    return peak, readings


def rss(seconds: float) -> None:
    sandbox = subprocess.Popen(
        [sys.executable, "-m", "gateway", "sandbox", "--listen", "127.0.0.1:0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert sandbox.stdout is not None
        root = re.search(r"(http://\S+)", sandbox.stdout.readline()).group(1)  # type: ignore[union-attr]
        base, _ = gateway_rss(root, 0, seconds)
        peak, readings = gateway_rss(root, 100, seconds)
    finally:
        sandbox.terminate()
        sandbox.wait()
    print(f"Peak RSS of `ecgw run` after {seconds:.0f} s (VmHWM)")
    print(f"  no adapters                          {base:6.1f} MB")
    print(
        f"  100 simulated adapters, 1 s polls    {peak:6.1f} MB   (target <= 80 MB; "
        f"{readings} readings committed)"
    )


# --- 4. Modbus outage ----------------------------------------------------------------------------


async def outage(seconds: float) -> None:
    from adapters.modbus import ModbusAdapter
    from gateway.metering.runtime import AdapterRuntime
    from gateway.plugin import Reading
    from tests.kit.modbus import EastronMeter, modbus_config, modbus_tcp_server

    meter = EastronMeter("sdm630")
    meter.ramp(5.0, time.time, from_kwh=500.0)
    readings: list[tuple[float, Reading]] = []

    async def sink(name: str, batch: list[Reading]) -> None:
        readings.extend((time.time(), r) for r in batch)

    async with modbus_tcp_server({1: meter}) as server:
        config = modbus_config(
            host="127.0.0.1", port=server.port, profile="eastron-sdm630", poll_interval=1.0
        )
        adapter = ModbusAdapter("meter", config)
        async with AdapterRuntime({"meter": adapter}, sink):  # type: ignore[arg-type]
            await asyncio.sleep(3)
            cpu0, wall0 = cpu_seconds(), time.monotonic()
            await asyncio.sleep(seconds)
            normal_cpu = (cpu_seconds() - cpu0) / (time.monotonic() - wall0)
            await server.stop()
            gone_at = time.time()
            cpu0, wall0 = cpu_seconds(), time.monotonic()
            await asyncio.sleep(seconds)
            away_cpu = (cpu_seconds() - cpu0) / (time.monotonic() - wall0)
            await server.start()
            back_at = time.time()
            while not any(t > back_at for t, _ in readings):
                await asyncio.sleep(0.05)
            resumed = min(t for t, _ in readings if t > back_at) - back_at
    during = [r for t, r in readings if gone_at + 0.5 < t < back_at]
    zeros = [r for _, r in readings if r.channel == "energy" and r.value == 0]
    print(f"Modbus device gone for {seconds:.0f} s (poll every 1 s, backoff cap 30 s)")
    print(f"  CPU while polling normally   {normal_cpu * 100:5.2f} % of a core")
    print(f"  CPU while the device is away {away_cpu * 100:5.2f} % of a core")
    print(f"  readings while away: {len(during)}; zero energy readings ever: {len(zeros)}")
    print(f"  readings resumed {resumed:.1f} s after the device came back (cap + 1 s = 31 s)")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", default="mqtt,modbus,rss,outage")
    parser.add_argument("--messages", type=int, default=20_000)
    args = parser.parse_args()
    parts = set(args.only.split(","))
    if "mqtt" in parts:
        asyncio.run(mqtt(args.messages))
    if "modbus" in parts:
        asyncio.run(modbus(50, 5.0))
    if "rss" in parts:
        rss(20.0)
    if "outage" in parts:
        asyncio.run(outage(30.0))


if __name__ == "__main__":
    main()
