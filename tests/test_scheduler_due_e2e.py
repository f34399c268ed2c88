"""A running gateway sees what changes an open event from outside (issue 12, item 3).

``ecgw run`` (in process, with the sandbox and its webhook) plans a PriceCurve whose
window starts in a minute, then leaves it alone until it is due; the operator overrides
the resource from another connection, as ``ecgw plan override`` does, and the running
gateway makes the schedule again within a pass (``PASS_EVERY``), without a restart.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.reports.scheduler import PASS_EVERY
from gateway.sandbox import Sandbox, run_sandbox
from gateway.store.control import ControlStore
from gateway.store.database import open_database
from tests.kit.gateway import make_config, running
from tests.test_e2e_reports import register_webhook
from tests.test_site_shift import config_table, price_curve

pytestmark = pytest.mark.slow


@pytest.fixture
async def sandbox() -> AsyncIterator[Sandbox]:
    async with run_sandbox(push_retry_delays=(0.2, 0.4, 0.8)) as sb:
        yield sb


async def schedules(db_path: Path, event_id: str) -> dict[str, str]:
    async with open_database(db_path) as db:
        return {s.resource_id: s.participation for s in await ControlStore(db).schedules(event_id)}


async def test_an_override_reaches_the_running_gateway_within_a_pass(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    config = make_config(config_table(sandbox, tmp_path))
    async with running(config) as gateway:
        assert gateway.webhook_url is not None
        await register_webhook(sandbox, gateway.webhook_url)
        event = await sandbox.create_event(price_curve(time.time() + 60))
        deadline = time.monotonic() + 20
        while await schedules(config.db_path, event["id"]) != {"boiler": "shift"}:
            assert time.monotonic() < deadline, "the event was not planned"
            await asyncio.sleep(0.1)
        async with open_database(config.db_path) as cli:  # what `ecgw plan override` does
            await ControlStore(cli).override(event["id"], "boiler", "off", now=time.time())
        overridden = time.monotonic()
        while await schedules(config.db_path, event["id"]) != {"boiler": "off"}:
            assert time.monotonic() < overridden + PASS_EVERY + 5, "the override was not seen"
            await asyncio.sleep(0.1)
