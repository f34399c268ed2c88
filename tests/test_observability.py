"""Truthful status, /healthz and /metrics (issue 10 items 1 and 2).

Real parts: the sandbox API in-process, a gateway in the test's loop with a real
pymodbus meter, real SQLite, real HTTP to the admin listener; ``ecgw run`` and
``ecgw status`` as processes for the SIGTERM case.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.app import Gateway
from gateway.config import Config
from gateway.health import Health, HealthRules, problems, stale_limit
from gateway.reports import manual
from gateway.sandbox import Sandbox, run_sandbox
from gateway.status import process_state, status_record, status_text
from gateway.store.database import open_database
from gateway.store.outbox import Outbox
from tests.kit.gateway import make_config, queue_reports, report_body, sandbox_config, toml
from tests.kit.modbus import EastronMeter, modbus_tcp_server
from tests.kit.proc import ecgw, start_ecgw

POLL = 0.3  # the meter's poll interval
STALE_FLOOR = 1.0  # an adapter is stale after max(3 * POLL, this) without a reading


@pytest.fixture
async def sandbox() -> AsyncIterator[Sandbox]:
    async with run_sandbox() as sb:
        yield sb


def site_config(sandbox: Sandbox, tmp_path: Path, port: int, **api: str) -> Config:
    data = sandbox_config(
        sandbox,
        tmp_path / "state",
        extra={
            "admin": {"listen": "127.0.0.1:0"},
            "webhook": {"listen": "127.0.0.1:0", "path": "/notify", "secret": "hook-secret"},
            "poll": {"interval": "1s"},
            "adapters": {
                "meter": {
                    "type": "modbus",
                    "host": "127.0.0.1",
                    "port": port,
                    "unit": 1,
                    "profile": "eastron-sdm630",
                    "poll_interval": f"{POLL}s",
                }
            },
        },
    )
    data["api"].update(api)
    return make_config(data)


class Running:
    """A gateway in this loop, with its admin listener."""

    def __init__(self, config: Config) -> None:
        self.gateway = Gateway(config, stale_floor=STALE_FLOOR)
        self.config = config
        self.task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Running:
        self.task = asyncio.create_task(self.gateway.run())
        ready = asyncio.create_task(self.gateway.ready.wait())
        await asyncio.wait({self.task, ready}, return_when=asyncio.FIRST_COMPLETED)
        if self.task.done():
            ready.cancel()
            self.task.result()
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.task is not None
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)

    async def get(self, path: str) -> tuple[int, str]:
        assert self.gateway.admin_url is not None
        async with (
            aiohttp.ClientSession() as session,
            session.get(self.gateway.admin_url + path) as resp,
        ):
            return resp.status, await resp.text()

    async def healthz(self) -> tuple[int, dict[str, Any]]:
        status, text = await self.get("/healthz")
        return status, json.loads(text)

    async def status(self) -> dict[str, Any]:
        return await status_record(self.config, now=time.time())


async def eventually(check: Any, *, timeout: float = 10.0) -> Any:
    """Poll ``check`` (async, returns a truthy value when done) until a deadline."""
    async with asyncio.timeout(timeout):
        while not (result := await check()):  # noqa: ASYNC110 - state in a database/HTTP
            await asyncio.sleep(0.05)
    return result


# --- the pure rules -------------------------------------------------------------------------


def test_stale_limit_is_three_polls_and_at_least_the_floor() -> None:
    assert stale_limit(10.0) == 60.0
    assert stale_limit(30.0) == 90.0
    assert stale_limit(0.1, floor=1.0) == 1.0


def test_problems_name_refused_credentials_at_once_and_outages_after_the_budget() -> None:
    now = [1000.0]
    health = Health(lambda: now[0])
    rules = HealthRules(api_budget=60.0, stale_after={}, started_at=900.0)
    health.token_failed("token endpoint refused the client credentials (HTTP 401)", refused=True)
    assert problems(health, rules, now[0]) == [
        "API: token endpoint refused the client credentials (HTTP 401)"
    ]
    health.token_fetched()
    assert problems(health, rules, now[0]) == []
    health.delivered("retry", None, "POST /reports: connection refused")
    now[0] += 60.0
    assert problems(health, rules, now[0]) == []  # within the budget
    now[0] += 1.0
    (problem,) = problems(health, rules, now[0])
    assert problem.startswith("API: failing for 61 s") and "connection refused" in problem
    health.delivered("delivered", 201)
    assert problems(health, rules, now[0]) == []
    assert health.deliveries == {("retry", "none"): 1, ("delivered", "2xx"): 1}


def test_a_rejected_report_is_not_an_api_outage() -> None:
    health = Health(lambda: 0.0)
    health.delivered("dead", 422, "HTTP 422: bad report")
    assert health.api_failing_since is None and health.deliveries[("dead", "4xx")] == 1


def test_problems_name_a_stale_adapter_and_one_that_never_read() -> None:
    health = Health(lambda: 0.0)
    rules = HealthRules(api_budget=60.0, stale_after={"a": 30.0, "b": 30.0}, started_at=0.0)
    health.adapter_status({"name": "a", "last_reading_at": 95.0, "last_error": None})
    health.adapter_status({"name": "b", "last_error": "read failed: refused"})
    assert problems(health, rules, 100.0) == [
        "adapter b: no reading for 100 s (none since the start), limit 30 s: read failed: refused"
    ]


def test_process_state_believes_a_clean_stop_over_a_live_pid() -> None:
    started = {"gateway.pid": 4242, "gateway.started_at": 10.0}
    assert process_state({}, alive=True) == (False, "never started")
    assert process_state(started, alive=True) == (True, "running")
    assert process_state(started, alive=False)[0] is False
    stopped = {**started, "gateway.stopped_at": 20.0, "gateway.stop_reason": "signal"}
    running, why = process_state(stopped, alive=True)  # the PID was reused
    assert not running and why.startswith("stopped cleanly at") and "signal" in why
    restarted = {**stopped, "gateway.started_at": 30.0}
    assert process_state(restarted, alive=True) == (True, "running")


# --- the running gateway --------------------------------------------------------------------

METRICS = {  # every metric of the issue, with its labels
    "ecgw_outbox_reports": {"state"},
    "ecgw_outbox_oldest_pending_age_seconds": set(),
    "ecgw_outbox_oldest_pending_cutoff_seconds": set(),
    "ecgw_deliveries_total": {"result", "status_class"},
    "ecgw_last_delivery_success_timestamp_seconds": set(),
    "ecgw_webhook_requests_total": {"outcome"},
    "ecgw_events_total": {"payload_type"},
    "ecgw_reading_age_seconds": {"adapter", "channel"},
    "ecgw_readings_ingested_total": {"adapter"},
    "ecgw_adapter_restarts_total": {"adapter"},
    "ecgw_token_failures_total": set(),
}


def samples(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    found: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found.setdefault(sample.name, []).append((sample.labels, sample.value))
    return found


async def test_metrics_and_healthz_follow_a_meter_that_goes_away_and_comes_back(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    meter = EastronMeter("sdm630")
    meter.ramp(2.0, time.time, from_kwh=100.0)
    async with modbus_tcp_server({1: meter}) as server:
        config = site_config(sandbox, tmp_path, server.port)
        # one report is delivered; a second stays pending while the sandbox answers 503
        async with Running(config) as site:
            await eventually(lambda: _healthy(site))
            await queue_reports(config, {"evt-1": report_body("evt-1")})
            await eventually(lambda: _delivered(site))
            sandbox.add_faults(*_unavailable(1000))
            await submit(config, report_body("evt-2"))
            await sandbox.create_event(_price_curve())
            assert site.gateway.webhook_url is not None
            async with aiohttp.ClientSession() as session:  # unsigned: rejected, and counted
                await session.post(site.gateway.webhook_url, data=b"{}")
            text = await eventually(lambda: _metrics_with_pending(site))
            found = samples(text)
            for name, labels in METRICS.items():
                assert name in found, f"{name} missing from /metrics:\n{text}"
                assert all(set(s[0]) == labels for s in found[name]), (name, found[name])
            assert ({"adapter": "meter", "channel": "energy"}) in [
                s[0] for s in found["ecgw_reading_age_seconds"]
            ]
            assert ({"result": "delivered", "status_class": "2xx"}, 1.0) in found[
                "ecgw_deliveries_total"
            ]
            assert ({"payload_type": "PriceCurve"}, 1.0) in found["ecgw_events_total"]
            (cutoff,) = found["ecgw_outbox_oldest_pending_cutoff_seconds"]
            assert cutoff[1] == pytest.approx(_month_end_left(), abs=60)
            assert ({"outcome": "rejected"}, 1.0) in found["ecgw_webhook_requests_total"]
            assert found["ecgw_readings_ingested_total"][0][1] > 0

            # the meter goes away: the adapter's error shows and /healthz turns 503
            await server.stop()
            status, body = await eventually(lambda: _unhealthy(site), timeout=10)
            assert status == 503 and any("adapter meter" in p for p in body["problems"])
            shown = await eventually(lambda: _meter_error(site))
            assert shown

            # it comes back: within one poll of its first new reading the error is gone from
            # `ecgw status`, and /healthz is 200 again
            before = site.gateway.health.readings["meter"]
            await server.start()

            async def reads_again() -> bool:
                return site.gateway.health.readings["meter"] > before

            await eventually(reads_again, timeout=15)
            recovered_at = time.monotonic()
            await eventually(lambda: _meter_error_cleared(site), timeout=POLL)
            assert time.monotonic() - recovered_at <= POLL
            await eventually(lambda: _healthy(site))
            lines = status_text(await site.status())
            assert any(line.startswith("  energy: ") and " kWh" in line for line in lines), lines


async def test_wrong_client_secret_is_named_by_status_and_healthz_until_fixed(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    async with modbus_tcp_server({1: EastronMeter("sdm630")}) as server:
        config = site_config(sandbox, tmp_path, server.port, client_secret="not-the-secret")
        async with Running(config) as site:
            _, body = await eventually(lambda: _unhealthy(site))
            assert any("refused the client credentials" in p for p in body["problems"]), body

            async def token_failed() -> dict[str, Any] | None:
                token = (await site.status())["api"]["token"]
                return token if token and token["ok"] is False else None

            token = await eventually(token_failed)
            assert "refused the client credentials (HTTP 401)" in token["detail"]
            text = "\n".join(status_text(await site.status()))
            assert "api token: FAILED" in text and "refused the client credentials" in text
            assert "not-the-secret" not in text

            sandbox.client_secret = "not-the-secret"  # fixed on the API's side
            await eventually(lambda: _healthy(site))
            assert (await site.status())["api"]["token"]["ok"] is True


async def test_status_right_after_sigterm_says_stopped(sandbox: Sandbox, tmp_path: Path) -> None:
    path = tmp_path / "ecgw.toml"
    path.write_text(toml(sandbox_config(sandbox, tmp_path / "state")))
    proc = await start_ecgw("run", config=path, log=tmp_path / "run.log")
    try:

        async def running() -> bool:
            result = await asyncio.to_thread(ecgw, "status", "--json", config=path)
            return result.returncode == 0 and json.loads(result.stdout)["running"]

        await eventually(running, timeout=20)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), timeout=15) == 0
    result = await asyncio.to_thread(ecgw, "status", "--json", config=path)
    facts = json.loads(result.stdout)
    assert facts["running"] is False and facts["state"].startswith("stopped cleanly at")
    assert facts["stopped_at"].endswith("Z")
    text = await asyncio.to_thread(ecgw, "status", config=path)
    assert text.stdout.startswith("gateway:  not running - stopped cleanly")


def test_version_and_admin_listen_checked(tmp_path: Path) -> None:
    result = ecgw("--version")
    assert result.returncode == 0 and result.stdout.startswith("ecgw ")
    path = tmp_path / "ecgw.toml"
    path.write_text('[gateway]\nstate_dir = "state"\n[admin]\nlisten = "localhost"\n')
    checked = ecgw("check", config=path)
    assert checked.returncode == 2 and "admin.listen" in checked.stderr


# --- helpers --------------------------------------------------------------------------------


async def submit(config: Config, body: bytes) -> None:
    """Queue a report as ``ecgw report submit`` does (with its month-end cut-off)."""
    async with open_database(config.db_path) as db:
        await manual.submit(Outbox(db), body, now=time.time())


async def _healthy(site: Running) -> bool:
    status, _ = await site.healthz()
    return status == 200


async def _unhealthy(site: Running) -> tuple[int, dict[str, Any]] | None:
    status, body = await site.healthz()
    return (status, body) if status == 503 else None


async def _delivered(site: Running) -> bool:
    return (await site.status())["outbox"]["delivered"] >= 1


async def _metrics_with_pending(site: Running) -> str | None:
    status, text = await site.get("/metrics")
    assert status == 200, text
    found = samples(text)
    ready = (
        "ecgw_outbox_oldest_pending_cutoff_seconds" in found
        and "ecgw_events_total" in found
        and "ecgw_reading_age_seconds" in found
    )
    return text if ready else None


def _meter(record: dict[str, Any]) -> dict[str, Any]:
    meter: dict[str, Any] = record["adapters"].get("meter", {})
    return meter


async def _meter_error(site: Running) -> str | None:
    error: str | None = _meter(await site.status()).get("last_error")
    return error


async def _meter_error_cleared(site: Running) -> bool:
    return _meter(await site.status()).get("last_error") is None


def _unavailable(count: int) -> list[Any]:
    from gateway.sandbox.faults import Fault

    return [Fault(status=503, count=count)]


def _month_end_left() -> float:
    """Seconds from now to the cut-off of the kit's report (points of 2026-11-26)."""
    return dt.datetime(2026, 12, 1, tzinfo=dt.UTC).timestamp() - time.time()


def _price_curve() -> dict[str, Any]:
    start = (int(time.time()) // 3600 + 1) * 3600
    return {
        "payloadType": "PriceCurve",
        "priceArea": "NO1",
        "targets": [{"resourceId": "r", "locationId": "l"}],
        "priceCurveDelta": {
            "points": [
                {"timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(start)), "price": 1.0}
            ],
            "energyUnit": "kWh",
            "currency": "NOK",
            "resolution": "01:00:00",
        },
    }
