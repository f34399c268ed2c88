"""Device-side figures, each next to a baseline measured in the same run.

    python bench/devices.py [--only mqtt,modbus,rss,outage] [--messages 20000] [--pairs 3]
        [--quick]

1. MQTT: Shelly status frames per second taken in by a bare aiomqtt subscriber, by the
   MqttAdapter, and by the adapter with every reading committed to the readings store.
2. Modbus: SDM630 polls per second over loopback for 50 devices, the ModbusAdapter next to a
   bare pymodbus client making the same two requests per poll.
3. Peak RSS of `ecgw run` with 100 simulated adapters, next to the same gateway with none.
4. A Modbus device gone for 30 s: CPU used meanwhile (next to 30 s of normal polling), zero
   or other readings while it was away, and how long until readings resume once it is back.

Each part runs its baseline and its subject in ``--pairs`` pairs, the order alternating
(baseline first, then the subject first, ...), and prints every run, every pair's ratio
and their median and spread. In part 1 the bare subscriber is the baseline of both
subjects: bare, adapter, adapter + store in even pairs, the reverse in odd ones.
``--quick``: 5,000 frames, 2 s of Modbus polling, 10 s for RSS and the outage, 2 pairs.
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
from pairs import interleave, load_line, order, ratio, ratio_line, ratios  # noqa: E402

structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))


def listing(values: list[float], fmt: str = ".0f") -> str:
    return "[" + ", ".join(f"{v:{fmt}}" for v in values) + "]"


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# --- 1. MQTT -------------------------------------------------------------------------------------


async def mqtt(messages: int, pairs: int) -> None:
    from adapters.mqtt import MqttAdapter, MqttConfig
    from gateway.store.database import open_database
    from gateway.store.readings import ReadingsStore
    from tests.kit.mosquitto import Mosquitto, _publisher, shelly_status_lines

    payload = ("\n".join(shelly_status_lines(messages)) + "\n").encode()

    def config(broker: Mosquitto, device: str) -> MqttConfig:
        # A fresh client id each run: no persistent session from an earlier run holds a backlog.
        table = {
            "type": "mqtt",
            "url": broker.url,
            "profile": "shelly-gen2",
            "device": device,
            "client_id": f"ecgw-bench-{secrets.token_hex(4)}",
        }
        return msgspec.convert(table, MqttConfig)

    async def bare(broker: Mosquitto, _: Path) -> float:
        import aiomqtt

        topic = "shellyplus1pm-bare/status/switch:0"
        async with aiomqtt.Client(broker.host, broker.port, identifier="bench-bare") as client:
            await client.subscribe(topic, qos=1)
            async with _publisher(broker, topic, payload) as started:
                seen = 0
                async for _ in client.messages:
                    seen += 1
                    if seen == messages:
                        break
                return messages / (time.perf_counter() - started)

    async def adapter(broker: Mosquitto, tmp: Path, *, store: bool = False) -> float:
        device = f"shellyplus1pm-{secrets.token_hex(3)}"
        async with contextlib.AsyncExitStack() as stack:
            readings = None
            if store:
                db = await stack.enter_async_context(open_database(tmp / f"{device}.sqlite3"))
                readings = ReadingsStore(db)
                await stack.enter_async_context(readings.writer())
            plug = await stack.enter_async_context(MqttAdapter("plug", config(broker, device)))
            if readings is not None:
                await readings.register_channels("plug", plug.channels())
            stream = plug.stream()
            async with _publisher(broker, f"{device}/status/switch:0", payload) as started:
                seen = 0
                async for batch in stream:
                    if readings is not None:
                        await readings.write("plug", batch)
                    seen += sum(1 for r in batch if r.channel == "energy")
                    if seen >= messages:
                        break
                elapsed = time.perf_counter() - started
            await stream.aclose()
        return messages / elapsed

    async def stored(broker: Mosquitto, tmp: Path) -> float:
        return await adapter(broker, tmp, store=True)

    runs: dict[str, list[float]] = {"bare": [], "adapter": [], "store": []}
    sides = (("bare", bare), ("adapter", adapter), ("store", stored))
    with tempfile.TemporaryDirectory() as tmp:
        async with Mosquitto.running(Path(tmp)) as broker:
            for index in range(pairs):
                for name, run in sides if index % 2 == 0 else reversed(sides):
                    runs[name].append(await run(broker, Path(tmp)))
    print(f"MQTT, {messages} Shelly status frames (QoS 1, mosquitto on loopback), {pairs} pairs")
    for name, label in (
        ("bare", "bare aiomqtt subscriber      "),
        ("adapter", "MqttAdapter                  "),
        ("store", "MqttAdapter + committed store"),
    ):
        print(f"  {label} msg/s per run [{', '.join(f'{x:.0f}' for x in runs[name])}]")
    for name in ("adapter", "store"):
        pair_ratios = [ratio(a, b) for a, b in zip(runs[name], runs["bare"], strict=True)]
        print("  " + ratio_line(f"ratio {name} / bare", pair_ratios))
    print("  target: adapter / bare >= 0.5")


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


async def bare_modbus_servers(devices: int, seconds: float) -> float:
    from tests.kit.modbus import EastronMeter, modbus_tcp_server

    async with contextlib.AsyncExitStack() as stack:
        servers = [
            await stack.enter_async_context(
                modbus_tcp_server({1: EastronMeter(energy_kwh=100.0 + i, power_w=1000.0)})
            )
            for i in range(devices)
        ]
        return await bare_modbus([s.port for s in servers], seconds)


def modbus(devices: int, seconds: float, pairs: int) -> None:
    from tests.kit.modbus import modbus_polls_per_second

    runs = interleave(
        pairs,
        lambda _: asyncio.run(bare_modbus_servers(devices, seconds)),
        lambda _: asyncio.run(modbus_polls_per_second(devices, seconds)),
    )
    print(
        f"Modbus TCP, {devices} SDM630 servers on loopback (servers in the same process), "
        f"{seconds:g} s per run, {pairs} pairs"
    )
    for label, side in (
        ("bare pymodbus client (2 reads/poll)", "baseline"),
        ("ModbusAdapter", "subject"),
    ):
        each = ", ".join(f"{getattr(p, side):.0f}" for p in runs)
        print(f"  {label:36s} polls/s per run [{each}]")
    print("  " + ratio_line("ratio adapter / bare", ratios(runs, float)))


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


def rss(seconds: float, pairs: int) -> None:
    sandbox = subprocess.Popen(
        [sys.executable, "-m", "gateway", "sandbox", "--listen", "127.0.0.1:0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert sandbox.stdout is not None
        root = re.search(r"(http://\S+)", sandbox.stdout.readline()).group(1)  # type: ignore[union-attr]
        runs = interleave(
            pairs,
            lambda _: gateway_rss(root, 0, seconds),
            lambda _: gateway_rss(root, 100, seconds),
        )
    finally:
        sandbox.terminate()
        sandbox.wait()
    print(f"Peak RSS of `ecgw run` after {seconds:.0f} s (VmHWM), {pairs} pairs")
    base = listing([p.baseline[0] for p in runs], ".1f")
    print(f"  no adapters                          MB per run {base}")
    print(
        f"  100 simulated adapters, 1 s polls    MB per run "
        f"[{', '.join(f'{p.subject[0]:.1f}' for p in runs)}] (target <= 80 MB; readings "
        f"committed per run: {', '.join(str(p.subject[1]) for p in runs)})"
    )
    print("  " + ratio_line("ratio 100 adapters / none", ratios(runs, lambda r: r[0])))


# --- 4. Modbus outage ----------------------------------------------------------------------------


async def outage(seconds: float, pairs: int) -> None:
    from adapters.modbus import ModbusAdapter
    from gateway.metering.runtime import AdapterRuntime
    from gateway.plugin import Reading
    from tests.kit.modbus import EastronMeter, modbus_config, modbus_tcp_server

    meter = EastronMeter("sdm630")
    meter.ramp(5.0, time.time, from_kwh=500.0)
    readings: list[tuple[float, Reading]] = []
    back = asyncio.Event()  # set by the first reading after the device came back
    back_at = 0.0
    away: list[tuple[float, float]] = []
    normal: list[float] = []
    away_cpu: list[float] = []
    resumed: list[float] = []

    async def sink(name: str, batch: list[Reading]) -> None:
        now = time.time()
        readings.extend((now, r) for r in batch)
        if back_at and now > back_at:
            back.set()

    async def cpu_over(window: float) -> float:
        cpu0, wall0 = cpu_seconds(), time.monotonic()
        await asyncio.sleep(window)
        return (cpu_seconds() - cpu0) / (time.monotonic() - wall0)

    async with modbus_tcp_server({1: meter}) as server:
        config = modbus_config(
            host="127.0.0.1", port=server.port, profile="eastron-sdm630", poll_interval=1.0
        )
        adapter = ModbusAdapter("meter", config)
        async with AdapterRuntime({"meter": adapter}, sink):  # type: ignore[arg-type]
            await asyncio.sleep(3)
            for index in range(pairs):
                for side in order(index):
                    if side == "baseline":
                        normal.append(await cpu_over(seconds))
                        continue
                    await server.stop()
                    gone_at = time.time()
                    away_cpu.append(await cpu_over(seconds))
                    await server.start()
                    back.clear()
                    back_at = time.time()
                    away.append((gone_at, back_at))
                    await back.wait()  # a signal from the sink, not a poll
                    resumed.append(min(t for t, _ in readings if t > back_at) - back_at)
    during = [r for t, r in readings if any(g + 0.5 < t < b for g, b in away)]
    zeros = [r for _, r in readings if r.channel == "energy" and r.value == 0]
    normal_pct, away_pct = [x * 100 for x in normal], [x * 100 for x in away_cpu]
    print(
        f"Modbus device gone for {seconds:.0f} s (poll every 1 s, backoff cap 30 s), "
        f"{pairs} pairs of {seconds:.0f} s polling normally and {seconds:.0f} s away"
    )
    print(f"  CPU while polling normally   % of a core per run {listing(normal_pct, '.2f')}")
    print(f"  CPU while the device is away % of a core per run {listing(away_pct, '.2f')}")
    pair_ratios = [ratio(a, b) for a, b in zip(away_cpu, normal, strict=True)]
    print("  " + ratio_line("ratio CPU away / normal", pair_ratios))
    print(f"  readings while away: {len(during)}; zero energy readings ever: {len(zeros)}")
    print(
        f"  readings resumed after the device came back: "
        f"{', '.join(f'{x:.1f}' for x in resumed)} s (at most the cap + 1 s = 31 s)"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", default="mqtt,modbus,rss,outage")
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="shorter runs, 2 pairs")
    args = parser.parse_args()
    modbus_s, rss_s, outage_s = 5.0, 20.0, 30.0
    if args.quick:
        args.messages, args.pairs = 5000, 2
        modbus_s, rss_s, outage_s = 2.0, 10.0, 10.0
    print(f"{load_line(os.getloadavg())} at the start")
    parts = set(args.only.split(","))
    if "mqtt" in parts:
        asyncio.run(mqtt(args.messages, args.pairs))
    if "modbus" in parts:
        modbus(50, modbus_s, args.pairs)
    if "rss" in parts:
        rss(rss_s, args.pairs)
    if "outage" in parts:
        asyncio.run(outage(outage_s, args.pairs))
    print(f"{load_line(os.getloadavg())} at the end")


if __name__ == "__main__":
    main()
