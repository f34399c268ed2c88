"""``ecgw probe``: one read, each channel's value, unit and time, or the exact reason."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

from tests.kit.gateway import toml
from tests.kit.modbus import EastronMeter, modbus_tcp_server
from tests.kit.proc import ecgw


def config(tmp_path: Path, adapters: dict[str, object]) -> Path:
    path = tmp_path / "ecgw.toml"
    path.write_text(toml({"gateway": {"state_dir": "state"}, "adapters": adapters}))
    return path


def test_probe_a_simulated_adapter(tmp_path: Path) -> None:
    path = config(tmp_path, {"sim": {"type": "simulated", "power_kw": 2.0, "start_kwh": 5.0}})
    result = ecgw("probe", "-c", str(path), "sim")
    assert result.returncode == 0, result.stderr
    energy = next(line for line in result.stdout.splitlines() if line.strip().startswith("energy"))
    assert "kWh" in energy and " 5 " in energy.replace("5.0000", "5")
    assert any(line.strip().startswith("power") for line in result.stdout.splitlines())


async def test_probe_reads_an_sdm630(tmp_path: Path) -> None:
    meter = EastronMeter("sdm630", energy_kwh=1234.5, power_w=3210.0)
    async with modbus_tcp_server({7: meter}) as server:
        path = config(
            tmp_path,
            {
                "meter": {
                    "type": "modbus",
                    "host": "127.0.0.1",
                    "port": server.port,
                    "unit": 7,
                    "profile": "eastron-sdm630",
                }
            },
        )
        result = await asyncio.to_thread(ecgw, "probe", "-c", str(path), "meter")
    assert result.returncode == 0, result.stdout + result.stderr
    lines = {line.split()[0]: line for line in result.stdout.splitlines()[1:]}
    assert "1234.5" in lines["energy"] and "kWh" in lines["energy"]
    assert "3210" in lines["power"] and " W " in lines["power"]


def test_probe_names_why_a_device_cannot_be_read(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once the socket closes
    path = config(
        tmp_path,
        {
            "meter": {
                "type": "modbus",
                "host": "127.0.0.1",
                "port": port,
                "profile": "eastron-sdm120",
            }
        },
    )
    result = ecgw("probe", "-c", str(path), "meter", "--seconds", "5")
    assert result.returncode == 1
    assert "meter" in result.stdout and "Traceback" not in result.stdout + result.stderr
    assert "refused" in result.stdout.lower() or "connect" in result.stdout.lower()


def test_probe_unknown_adapter_and_bad_config(tmp_path: Path) -> None:
    path = config(tmp_path, {"sim": {"type": "simulated"}})
    result = ecgw("probe", "-c", str(path), "nope")
    assert result.returncode == 1 and "configured: sim" in result.stdout
    path = config(tmp_path, {"sim": {"type": "simulated", "power_kilowatts": 3}})
    result = ecgw("probe", "-c", str(path), "sim")
    assert result.returncode == 2 and "adapters.sim.power_kilowatts" in result.stderr
