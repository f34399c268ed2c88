"""The ecgw command: exit codes, JSON output fields, report submit, run and signals."""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.sandbox import Sandbox, run_sandbox
from tests.kit.gateway import (
    make_config,
    outbox_rows,
    report_body,
    sandbox_config,
    toml,
    wait_until,
)
from tests.kit.proc import ecgw, start_ecgw


@pytest.fixture
async def sandbox() -> AsyncIterator[Sandbox]:
    async with run_sandbox() as sb:
        yield sb


def write_config(tmp_path: Path, sandbox: Sandbox, **extra: object) -> Path:
    path = tmp_path / "ecgw.toml"
    path.write_text(toml(sandbox_config(sandbox, tmp_path / "state", extra=extra)))  # type: ignore[arg-type]
    return path


def offline_config(tmp_path: Path, text: str = "") -> Path:
    path = tmp_path / "ecgw.toml"
    path.write_text(f'[gateway]\nstate_dir = "state"\n{text}')
    return path


def test_config_errors_exit_2_with_one_line_naming_the_key(tmp_path: Path) -> None:
    path = offline_config(tmp_path, "[delivery]\ntimeout = 'soon'\n")
    result = ecgw("check", "-c", str(path))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "delivery.timeout" in lines[0]
    assert "Traceback" not in result.stderr


def test_missing_config_and_usage_errors_exit_2(tmp_path: Path) -> None:
    result = ecgw("status", env={"ECGW_CONFIG": ""})
    assert result.returncode == 2 and "ECGW_CONFIG" in result.stderr
    assert ecgw("outbox", "frobnicate").returncode == 2


def test_check_accepts_a_good_config(tmp_path: Path) -> None:
    path = offline_config(
        tmp_path,
        "[api]\nbase_url='http://127.0.0.1:1/x'\n"
        "token_url='http://127.0.0.1:1/t'\nclient_id='c'\nclient_secret='s'\n",
    )
    result = ecgw("check", config=path)
    assert result.returncode == 0, result.stderr
    assert "config OK" in result.stdout


def test_report_submit_validates_queues_once_and_lists(tmp_path: Path) -> None:
    path = offline_config(tmp_path)
    good = tmp_path / "good.json"
    good.write_text(
        json.dumps(
            {
                "eventId": "evt-1",
                "payloads": [
                    {
                        "payloadType": "EnergyUsage",
                        "resourceId": "r1",
                        "locationId": "l1",
                        "resolution": "01:00:00",
                        "points": [
                            {"timestamp": "2026-11-26T11:00:00+01:00", "kiloWattHours": 1.5}
                        ],
                    }
                ],
            }
        )
    )
    first = ecgw("report", "submit", str(good), config=path)
    assert first.returncode == 0, first.stderr
    again = ecgw("report", "submit", str(good), config=path)
    assert again.returncode == 0 and "not queued again" in again.stdout
    listed = ecgw("outbox", "list", "--json", config=path)
    assert listed.returncode == 0
    (item,) = json.loads(listed.stdout)
    assert {
        "event_id",
        "kind",
        "state",
        "attempts",
        "last_status",
        "last_error",
        "report_id",
    } <= set(item)
    assert (item["event_id"], item["kind"], item["state"]) == ("evt-1", "EnergyUsage", "pending")
    shown = json.loads(ecgw("outbox", "show", "evt-1", config=path).stdout)
    assert shown[0]["body"]["payloads"][0]["points"][0]["timestamp"] == "2026-11-26T10:00:00Z"
    assert shown[0]["deadline"] == "2026-12-01T00:00:00Z"


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"payloadType": "EnergyUsage", "resolution": "01:00:00"}, "resourceId"),
        (
            {
                "payloadType": "EnergyUsage",
                "resourceId": "r",
                "resolution": "01:00:00",
                "points": [{"timestamp": "2026-01-01T00:00:00Z", "kiloWattHours": "lots"}],
            },
            "kiloWattHours",
        ),
        (
            {"payloadType": "EnergyUsage", "resourceId": "r", "resolution": "01:00:00", "bogus": 1},
            "bogus",
        ),
        ({"payloadType": "Invoice"}, "payloadType"),
    ],
)
def test_invalid_report_is_refused_naming_the_field(
    tmp_path: Path, payload: dict[str, object], field: str
) -> None:
    path = offline_config(tmp_path)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"eventId": "e", "payloads": [payload]}))
    result = ecgw("report", "submit", str(bad), config=path)
    assert result.returncode == 2
    assert field in result.stderr and "Traceback" not in result.stderr
    assert json.loads(ecgw("outbox", "list", "--json", config=path).stdout) == []


def test_report_without_event_id_or_not_json(tmp_path: Path) -> None:
    path = offline_config(tmp_path)
    for text, needle in (('{"payloads": []}', "eventId"), ("{nope", "not JSON")):
        bad = tmp_path / "bad.json"
        bad.write_text(text)
        result = ecgw("report", "submit", str(bad), config=path)
        assert result.returncode == 2 and needle in result.stderr


def test_corrupt_database_is_a_clear_error_and_kept(tmp_path: Path) -> None:
    path = offline_config(tmp_path)
    db = tmp_path / "state" / "ecgw.sqlite3"
    db.parent.mkdir()
    db.write_bytes(b"garbage" * 1000)
    result = ecgw("status", config=path)
    assert result.returncode == 1
    assert "left untouched" in result.stderr and "Traceback" not in result.stderr
    assert db.read_bytes() == b"garbage" * 1000


async def test_run_delivers_cli_reads_meanwhile_and_sigterm_exits_0(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    path = write_config(
        tmp_path,
        sandbox,
        webhook={"listen": "127.0.0.1:0", "path": "/notify", "secret": "cli-webhook-secret"},
    )
    proc = await start_ecgw("run", config=path, log=tmp_path / "run.log")
    try:
        report = tmp_path / "r.json"
        report.write_bytes(report_body("evt-run"))
        submitted = await asyncio.to_thread(ecgw, "report", "submit", str(report), config=path)
        assert submitted.returncode == 0, submitted.stderr
        await sandbox.wait_for_reports(1, timeout=20)
        config = make_config(sandbox_config(sandbox, tmp_path / "state"))
        await wait_until(lambda: _delivered(config), timeout=10)
        status = await asyncio.to_thread(ecgw, "status", "--json", config=path)
        assert status.returncode == 0
        facts = json.loads(status.stdout)
        assert facts["running"] is True and facts["outbox"]["delivered"] == 1
        listed = await asyncio.to_thread(ecgw, "outbox", "list", "--json", config=path)
        (item,) = json.loads(listed.stdout)
        assert item["state"] == "delivered" and item["report_id"] == sandbox.reports[0].id
        events = await asyncio.to_thread(ecgw, "events", "list", "--json", config=path)
        assert events.returncode == 0 and json.loads(events.stdout) == []
    finally:
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(proc.wait(), timeout=15)
    assert code == 0, (tmp_path / "run.log").read_text()[-2000:]
    # the secrets were used (a token was fetched) but never logged or stored
    stored = b"".join(p.read_bytes() for p in (tmp_path / "state").iterdir() if p.is_file())
    logged = (tmp_path / "run.log").read_bytes()
    for secret in (sandbox.client_secret.encode(), b"cli-webhook-secret"):
        assert secret not in logged and secret not in stored


async def _delivered(config: object) -> bool:
    rows = await outbox_rows(config)  # type: ignore[arg-type]
    return bool(rows) and all(r.state == "delivered" for r in rows.values())


async def test_sigint_also_exits_0(sandbox: Sandbox, tmp_path: Path) -> None:
    path = write_config(tmp_path, sandbox)
    proc = await start_ecgw("run", config=path)
    config = make_config(sandbox_config(sandbox, tmp_path / "state"))
    await wait_until(lambda: _has_heartbeat(config), timeout=20)
    proc.send_signal(signal.SIGINT)
    assert await asyncio.wait_for(proc.wait(), timeout=15) == 0


async def _has_heartbeat(config: object) -> bool:
    from gateway.store.database import open_database
    from gateway.store.meta import Meta

    if not config.db_path.exists():  # type: ignore[attr-defined]
        return False
    async with open_database(config.db_path) as db:  # type: ignore[attr-defined]
        return "gateway.heartbeat" in await Meta(db).get_all()


def test_the_deploy_example_config_passes_check(tmp_path: Path) -> None:
    example = Path(__file__).resolve().parents[1] / "deploy" / "ecgw.example.toml"
    secret = tmp_path / "secret"
    secret.write_text("not-a-real-secret\n")
    text = example.read_text()
    for placeholder in ("/etc/ecgw/client-secret", "/etc/ecgw/webhook-secret"):
        text = text.replace(placeholder, str(secret))
    text = text.replace("/var/lib/ecgw", str(tmp_path / "state"))
    path = tmp_path / "ecgw.toml"
    path.write_text(text)
    result = ecgw("check", config=path)
    assert result.returncode == 0, result.stderr


async def test_a_broken_adapter_is_named_and_the_others_run(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    path = write_config(
        tmp_path,
        sandbox,
        adapters={
            "good": {"type": "simulated", "power_kw": 1.0, "poll_interval": "1s"},
            "gone": {"type": "not-installed-anywhere"},
        },
    )
    checked = await asyncio.to_thread(ecgw, "check", config=path)
    assert checked.returncode == 2
    assert "gone" in checked.stderr and "not-installed-anywhere" in checked.stderr
    proc = await start_ecgw("run", config=path, log=tmp_path / "run.log")
    try:

        async def both_reported() -> bool:
            result = await asyncio.to_thread(ecgw, "status", "--json", config=path)
            if result.returncode != 0:
                return False
            adapters = json.loads(result.stdout)["adapters"]
            return (
                adapters.get("good", {}).get("readings", 0) > 0
                and adapters.get("gone", {}).get("state") == "failed"
            )

        await wait_until(both_reported, timeout=30, interval=0.5)
        status = await asyncio.to_thread(ecgw, "status", config=path)
        assert "gone failed" in status.stdout and "not-installed-anywhere" in status.stdout
    finally:
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), timeout=15) == 0


def test_render_escapes_every_control_character() -> None:
    import json as json_module

    from gateway import render

    hostile = "a\x1b]0;x\x07b\x7fc\x9b2Jd\té"
    assert render.printable(hostile) == "a\\x1b]0;x\\x07b\\x7fc\\x9b2Jd\\x09é"
    table = render.table([{"id": hostile}], ["id"])
    assert not [c for c in table if (ord(c) < 32 and c != "\n") or 0x7F <= ord(c) < 0xA0]
    shown = render.to_json({"id": hostile})
    assert not [c for c in shown if (ord(c) < 32 and c != "\n") or 0x7F <= ord(c) < 0xA0]
    assert json_module.loads(shown) == {"id": hostile}
