"""ecgw api check / webhooks / reconcile and ecgw sandbox event, against a real sandbox."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from gateway import contract
from gateway.config import Config
from gateway.intake.poller import to_new_event
from gateway.onboarding.commands import (
    cmd_api_check,
    cmd_api_reconcile,
    cmd_api_webhooks_disable,
    cmd_api_webhooks_enable,
    cmd_api_webhooks_list,
    cmd_api_webhooks_register,
)
from gateway.onboarding.events import EventFlags, simulation_request
from gateway.onboarding.reconcile import compare
from gateway.sandbox import Sandbox, run_sandbox
from gateway.sandbox.simulation import price_curve_payload
from gateway.store.database import open_database
from gateway.store.inbox import Inbox
from tests.kit.gateway import make_config, sandbox_config, toml
from tests.kit.proc import ecgw

pytestmark = pytest.mark.timeout(30)

WEBHOOK_SECRET = "onboarding-webhook-secret-42"
LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \[")
DEAD_URL = "http://127.0.0.1:9/notify"  # port 9 (discard): nothing answers


@pytest.fixture
async def sandbox() -> AsyncIterator[Sandbox]:
    async with run_sandbox(push_retry_delays=(0.01, 0.01)) as sb:
        yield sb


def config_for(sandbox: Sandbox, tmp_path: Path, **api: str) -> dict[str, Any]:
    data = sandbox_config(
        sandbox,
        tmp_path / "state",
        extra={"webhook": {"listen": "127.0.0.1:0", "secret": WEBHOOK_SECRET}},
    )
    data["api"].update(api)
    return data


def printed(capsys: pytest.CaptureFixture[str]) -> str:
    """What the command printed, without the log lines structlog writes to stdout in tests."""
    text = capsys.readouterr().out
    return "\n".join(line for line in text.splitlines() if not LOG_LINE.match(line))


def args(**values: Any) -> argparse.Namespace:
    return argparse.Namespace(**values)


@pytest.fixture
async def receiver() -> AsyncIterator[str]:
    """A webhook URL that answers 200 to anything."""

    async def ok(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/notify", ok)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}/notify"
    finally:
        await runner.cleanup()


async def register(config: Config, url: str) -> None:
    assert await cmd_api_webhooks_register(args(url=url, name="ecgw", type=None), config) == 0


# --- webhooks ---------------------------------------------------------------------------------


async def test_register_then_list_shows_it_and_the_secret_is_sent_never_printed(
    sandbox: Sandbox, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = make_config(config_for(sandbox, tmp_path))
    await register(config, "https://gw.example.net/notify")
    assert await cmd_api_webhooks_list(args(json=False), config) == 0
    out = printed(capsys)
    assert "registered:" in out and "https://gw.example.net/notify" in out.splitlines()[-1]
    (hook,) = sandbox.webhooks.values()
    assert hook.secret == WEBHOOK_SECRET and WEBHOOK_SECRET not in out
    await register(config, "https://gw.example.net/notify")  # once is enough
    assert "already registered" in printed(capsys) and len(sandbox.webhooks) == 1

    assert await cmd_api_webhooks_disable(args(webhook=None), config) == 0
    assert hook.enabled is False
    assert await cmd_api_webhooks_list(args(json=True), config) == 0
    capsys.readouterr()
    assert await cmd_api_webhooks_enable(args(webhook=hook.id), config) == 0
    assert hook.enabled is True
    assert await cmd_api_webhooks_list(args(json=True), config) == 0
    (listed,) = json.loads(printed(capsys).splitlines()[-1])
    assert listed["enabled"] is True and not contract.violations("GetWebhookResponse", listed)


async def test_register_refuses_a_url_that_is_not_http(sandbox: Sandbox, tmp_path: Path) -> None:
    config = make_config(config_for(sandbox, tmp_path))
    with pytest.raises(Exception, match="url: expected an http"):
        await cmd_api_webhooks_register(args(url="gw.example.net", name="x", type=None), config)


# --- check ------------------------------------------------------------------------------------


async def test_check_passes_with_a_reachable_webhook(
    sandbox: Sandbox, tmp_path: Path, receiver: str, capsys: pytest.CaptureFixture[str]
) -> None:
    config = make_config(config_for(sandbox, tmp_path))
    await register(config, receiver)
    capsys.readouterr()
    assert await cmd_api_check(args(webhook_url=None), config) == 0
    out = printed(capsys).splitlines()
    assert [line.split()[:2] for line in out] == [
        ["ok", "token"],
        ["ok", "events"],
        ["ok", "webhook"],
    ]
    assert "nothing sent to it yet" in out[2]

    await sandbox.create_event(price_curve_payload({}, dt.datetime.now(dt.UTC)))
    await sandbox.wait_for_pushes(1, timeout=5)
    assert await cmd_api_check(args(webhook_url=None), config) == 0
    assert "answered 200" in printed(capsys)


async def test_check_fails_naming_the_webhook_that_cannot_be_reached(
    sandbox: Sandbox, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = make_config(config_for(sandbox, tmp_path))
    assert await cmd_api_check(args(webhook_url=None), config) == 1
    assert printed(capsys).splitlines()[-1].startswith("FAIL webhook  none registered")
    await register(config, DEAD_URL)
    await sandbox.create_event(price_curve_payload({}, dt.datetime.now(dt.UTC)))
    await sandbox.wait_for_pushes(3, timeout=5)
    capsys.readouterr()
    assert await cmd_api_check(args(webhook_url=None), config) == 1
    last = printed(capsys).splitlines()[-1]
    assert last.startswith("FAIL webhook") and "got no answer" in last and "Unhealthy" in last


async def test_check_as_a_command_ok_then_fail_with_a_wrong_client_secret(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    good = tmp_path / "good.toml"
    data = sandbox_config(sandbox, tmp_path / "state")
    good.write_text(toml(data))
    result = await asyncio.to_thread(ecgw, "api", "check", "-c", str(good))
    assert result.returncode == 0, result
    assert result.stdout.splitlines()[0].startswith("ok   token")
    assert result.stdout.splitlines()[2].startswith("skip webhook")

    bad = tmp_path / "bad.toml"
    data["api"]["client_secret"] = "not-the-secret"
    bad.write_text(toml(data))
    result = await asyncio.to_thread(ecgw, "api", "check", "-c", str(bad))
    assert result.returncode == 1
    (line,) = result.stdout.splitlines()
    assert line.startswith("FAIL token") and "refused the client credentials" in line
    assert "not-the-secret" not in result.stdout + result.stderr


# --- reconcile --------------------------------------------------------------------------------


async def test_reconcile_finds_the_event_whose_notification_failed_and_fetches_it(
    sandbox: Sandbox, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = make_config(config_for(sandbox, tmp_path))
    now = dt.datetime.now(dt.UTC)
    received = await sandbox.create_event(price_curve_payload({}, now), push=False)
    async with open_database(config.db_path) as db:  # the gateway has this one already
        await Inbox(db).add(to_new_event(json.dumps(received).encode()), via="poll", at=0.0)
    await register(config, DEAD_URL)
    lost = await sandbox.create_event(price_curve_payload({"priceArea": "NO1"}, now))
    await sandbox.wait_for_pushes(3, timeout=5)
    capsys.readouterr()

    assert await cmd_api_reconcile(args(since="1d", dry_run=False), config) == 0
    out = printed(capsys)
    assert f"event {lost['id']}: 3 attempt(s) to {DEAD_URL}, last no answer; NOT received" in out
    assert "1 failed notification(s), 1 event(s) never received" in out
    assert f"fetched  {lost['id']} PriceCurve: stored" in out
    assert received["id"] not in out.split("never received")[1]
    async with open_database(config.db_path) as db:
        stored = await Inbox(db).get(lost["id"])
    assert stored is not None and stored.received_via == "poll" and stored.plan_state == "new"
    assert json.loads(stored.payload) == lost["payload"]

    assert await cmd_api_reconcile(args(since="1d", dry_run=False), config) == 0
    again = printed(capsys)
    assert "received anyway" in again and "0 event(s) never received" in again


async def test_reconcile_dry_run_fetches_nothing_and_bad_since_is_named(
    sandbox: Sandbox, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = make_config(config_for(sandbox, tmp_path))
    event = await sandbox.create_event(price_curve_payload({}, dt.datetime.now(dt.UTC)))
    assert await cmd_api_reconcile(args(since="7d", dry_run=True), config) == 0
    assert f"missing  {event['id']} (not fetched: --dry-run)" in printed(capsys)
    async with open_database(config.db_path) as db:
        assert await Inbox(db).get(event["id"]) is None
    with pytest.raises(Exception, match="--since: expected a duration"):
        await cmd_api_reconcile(args(since="a week", dry_run=False), config)


async def test_webhook_logs_follow_the_contract(sandbox: Sandbox, tmp_path: Path) -> None:
    config = make_config(config_for(sandbox, tmp_path))
    await register(config, DEAD_URL)
    await sandbox.create_event(price_curve_payload({}, dt.datetime.now(dt.UTC)))
    await sandbox.wait_for_pushes(3, timeout=5)
    async with aiohttp.ClientSession() as session:
        form = {
            "grant_type": "client_credentials",
            "client_id": sandbox.client_id,
            "client_secret": sandbox.client_secret,
        }
        async with session.post(sandbox.token_url, data=form) as resp:
            token = (await resp.json())["access_token"]
        auth = {"Authorization": f"Bearer {token}"}
        async with session.get(
            f"{sandbox.base_url}/webhooks/logs?pageSize=2", headers=auth
        ) as resp:
            page = await resp.json()
        notification_id = page["webhookNotificationLogs"][0]["notificationId"]
        async with session.get(
            f"{sandbox.base_url}/webhooks/logs/{notification_id}", headers=auth
        ) as resp:
            one = await resp.json()
    assert not contract.violations("GetWebhookNotificationLogsResponse", page)
    assert page["pagination"]["totalRecords"] == 3 and len(page["webhookNotificationLogs"]) == 2
    assert not contract.violations("GetWebhookNotificationLogByIdResponse", one)
    assert json.loads(one["notificationContent"])["notificationId"] == notification_id


def test_compare_counts_a_notification_failed_only_if_no_attempt_got_200() -> None:
    def entry(nid: str, eid: str, status: int | None) -> dict[str, Any]:
        return {"notificationId": nid, "partnerEventId": eid, "responseStatusCode": status}

    logs = [entry("n1", "e1", 200), entry("n1", "e1", 500), entry("n2", "e2", 401)]
    events = [{"id": "e3"}, {"id": "e2"}, {"id": "e1"}]
    found = compare(logs, events, {"e1"})
    assert [f.notification_id for f in found.failed] == ["n2"]
    assert found.failed[0].last_result == "HTTP 401" and not found.failed[0].received
    assert found.missing == ["e2", "e3"]


# --- sandbox event ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "schema"),
    [
        ("pricecurve", "SimulatePriceCurveEventRequest"),
        ("location-lpc", "SimulateLocationLPCEventRequest"),
        ("resource-lpc", "SimulateResourceLPCEventRequest"),
    ],
)
def test_simulation_requests_follow_the_contract(kind: str, schema: str) -> None:
    flags = EventFlags(
        targets=("a/b", "c"),
        intervals=3,
        length=dt.timedelta(minutes=15),
        start=None,
        cap_kw=1.5,
        prices=(),
    )
    body = simulation_request(kind, flags, dt.datetime(2026, 3, 3, 12, 20, tzinfo=dt.UTC))
    assert not contract.violations(schema, body)
    with pytest.raises(ValueError, match="--intervals"):
        simulation_request(
            kind, EventFlags((), 0, dt.timedelta(hours=1), None, 0, ()), dt.datetime.now(dt.UTC)
        )


async def test_sandbox_event_command_creates_a_contract_valid_event(sandbox: Sandbox) -> None:
    result = await asyncio.to_thread(
        ecgw,
        "sandbox",
        "event",
        "location-lpc",
        "--url",
        sandbox.root_url,
        "--target",
        "loc-7/707057500000000077",
        "--intervals",
        "3",
        "--length",
        "15m",
        "--start",
        "2026-03-03T12:00:00Z",
        "--cap",
        "4.2",
    )
    assert result.returncode == 0, result.stderr
    (event,) = sandbox.events
    contract.check("GetEventResponse", event)
    assert json.loads(result.stdout)["simulatedEvent"]["id"] == event["id"]
    (target,) = event["payload"]["targets"]
    assert target["locationId"] == "loc-7" and target["resolution"] == "00:15:00"
    assert [p["maxPowerInKiloWatts"] for p in target["points"]] == [4.2] * 3
    assert target["points"][2]["timestamp"].startswith("2026-03-03T12:30:00")

    bad = await asyncio.to_thread(
        ecgw, "sandbox", "event", "pricecurve", "--url", sandbox.root_url, "--length", "soon"
    )
    assert bad.returncode == 2 and "expected a duration" in bad.stderr and len(sandbox.events) == 1
