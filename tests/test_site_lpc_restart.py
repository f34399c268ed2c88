"""kill -9 in the middle of an acknowledged cap: the restarted gateway holds it to the end.

The same site as tests/test_site_lpc.py (SDM630 on Modbus whose power is 3 kW plus two
4 kW Shelly plugs on MQTT), but ``ecgw run`` is its own process, killed with SIGKILL
five seconds into a 30 s window. While it is down, one plug's own thermostat switches it
back on. The restarted gateway must find the cap it acknowledged and the loads it holds
in its database alone, switch the plug off again, keep the location under the cap for the
rest of the window and switch both plugs back on after it. The acknowledgement is sent
once.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.kit.gateway import toml
from tests.kit.live import GatewayProcess, SandboxProcess
from tests.kit.mosquitto import Mosquitto
from tests.test_e2e_reports import SECRET
from tests.test_site_lpc import (
    LOCATION,
    METER_POINT,
    Site,
    location_lpc,
    sample_until,
    site,
    site_config,
    until,
)

pytestmark = pytest.mark.slow


def config_table(
    sandbox: SandboxProcess, tmp_path: Path, the_site: Site, broker: Mosquitto
) -> tuple[str, str]:
    """The site's config for ``ecgw run`` (TOML) and its webhook URL."""
    api = sandbox.api_table
    stand_in = SimpleNamespace(  # what site_config reads of an in-process sandbox
        base_url=api["base_url"],
        token_url=api["token_url"],
        client_id=api["client_id"],
        client_secret=api["client_secret"],
    )
    table = site_config(stand_in, tmp_path, the_site, broker)  # type: ignore[arg-type]
    return toml(table), f"http://{table['webhook']['listen']}{table['webhook']['path']}"


async def test_the_restarted_gateway_holds_the_rest_of_the_window(tmp_path: Path) -> None:
    async with (
        SandboxProcess.running(tmp_path / "sandbox.log") as sandbox,
        site(tmp_path) as (the_site, broker),
    ):
        config = tmp_path / "ecgw.toml"
        text, url = config_table(sandbox, tmp_path, the_site, broker)
        config.write_text(text)
        log = tmp_path / "gateway.log"
        gateway = await GatewayProcess.spawn(config, log)
        try:
            await gateway.wait_ready(30)
            await sandbox.register_webhook(url, SECRET)
            await asyncio.sleep(2.0)
            start = time.time() + 12
            await sandbox.create_event(location_lpc(start, 5.0))
            acks = await _acks(sandbox, 1, timeout=10)
            assert acks[0]["acknowledgedTargets"] == [
                {"locationId": LOCATION, "meterPointId": METER_POINT}
            ]
            await until(lambda: time.time() >= start + 5, 30, "five seconds into the window")
            assert the_site.power_kw() <= 5.0
            await gateway.kill9()
            the_site.plugs[0].on = True  # its own thermostat, while nobody holds the cap
            assert the_site.power_kw() > 5.0
            gateway = await GatewayProcess.spawn(config, log)
            await gateway.wait_ready(30)
            await until(lambda: the_site.power_kw() <= 5.0, 8, "the cap held again")
            held = await sample_until(the_site, start + 30)
            assert held and max(kw for _, kw in held) <= 5.0, held
            await until(lambda: all(p.on for p in the_site.plugs), 5, "both plugs back on")
        finally:
            await gateway.terminate()
        assert len(await _acks(sandbox, 1, timeout=1)) == 1
        reports = await sandbox.reports()
        assert not [r for r in reports if r["duplicate"]]


async def _acks(sandbox: SandboxProcess, n: int, *, timeout: float) -> list[dict[str, object]]:
    deadline = time.monotonic() + timeout
    while True:
        found = [
            p
            for r in await sandbox.reports()
            for p in r["body"]["payloads"]
            if p["payloadType"] == "LocationLPCAcknowledgement"
        ]
        if len(found) >= n or time.monotonic() > deadline:
            return found
        await asyncio.sleep(0.2)
