"""Issue 10's operator commands fed odd values: each gives one clear line, never a traceback,
and never harms a file it was not asked to write."""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import stat
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import aiohttp
import pytest
from aiohttp import web

from gateway.config import Secret, load_config
from gateway.delivery.api import TokenSource
from gateway.errors import StoreError, UpstreamError
from gateway.onboarding.commands import cmd_api_webhooks_list
from gateway.onboarding.events import EventFlags, simulation_request
from gateway.onboarding.spark import SparkAdmin
from gateway.status import status_record, status_text
from gateway.store.backup import backup_database
from gateway.store.database import open_database
from gateway.store.meta import Meta
from tests.kit.gateway import make_config
from tests.kit.live import integrity
from tests.kit.proc import ecgw


@pytest.fixture
async def db_path(tmp_path: Path) -> Path:
    path = tmp_path / "state" / "ecgw.sqlite3"
    async with open_database(path) as db:
        await Meta(db).put(**{"gateway.pid": os.getpid(), "gateway.started_at": time.time()})
    return path


def test_backup_refuses_to_replace_something_that_is_not_a_file(
    db_path: Path, tmp_path: Path
) -> None:
    """``--force`` onto a device or a FIFO (``/dev/null``!) must not swap it for a file."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(StoreError, match="not a regular file"):
        backup_database(db_path, fifo, force=True)
    assert stat.S_ISFIFO(fifo.lstat().st_mode)


def test_backup_refuses_the_database_itself(db_path: Path) -> None:
    """Renaming a copy over the live file would cut a running gateway off from its WAL."""
    inode = db_path.stat().st_ino
    for target in (db_path, db_path.parent / ".." / "state" / db_path.name):
        with pytest.raises(StoreError, match="is the database itself"):
            backup_database(db_path, target, force=True)
    assert db_path.stat().st_ino == inode
    assert integrity(db_path) == "ok"


def test_backup_into_a_missing_directory_names_the_target(db_path: Path, tmp_path: Path) -> None:
    target = tmp_path / "nodir" / "copy.sqlite3"
    with pytest.raises(StoreError, match=f"{target.parent}.*no such directory"):
        backup_database(db_path, target)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), 1e20, -1e20])
async def test_status_survives_odd_times_in_meta(db_path: Path, value: float) -> None:
    async with open_database(db_path) as db:
        await Meta(db).put(
            **{"gateway.heartbeat": value, "gateway.started_at": value, "gateway.stopped_at": value}
        )
    config = make_config({"gateway": {"state_dir": str(db_path.parent)}})
    record = await status_record(config, now=time.time())
    assert record["heartbeat"] is None
    assert status_text(record)[0].startswith("gateway:  not running")


@pytest.mark.parametrize("pid", [2**70, -(2**70), True, "abc", 0])
async def test_status_survives_odd_pids(db_path: Path, pid: object) -> None:
    async with open_database(db_path) as db:
        await Meta(db).put(**{"gateway.pid": pid})
    config = make_config({"gateway": {"state_dir": str(db_path.parent)}})
    record = await status_record(config, now=time.time())
    assert record["running"] is False


# --- a lying API under ecgw api reconcile ------------------------------------------------------


@contextlib.asynccontextmanager
async def lying_api(pages: dict[str, Any]) -> AsyncIterator[tuple[SparkAdmin, list[str], str]]:
    """A real aiohttp server that answers each path with ``pages[path]`` (JSON) and records
    the raw paths it was asked for; a SparkAdmin pointed at it and its root URL."""
    seen: list[str] = []

    async def token(_: web.Request) -> web.Response:
        return web.json_response({"access_token": "t", "expires_in": 3600})

    async def any_path(request: web.Request) -> web.Response:
        seen.append(request.raw_path)
        return web.json_response(pages.get(request.path, {}))

    app = web.Application()
    app.router.add_post("/connect/token", token)
    app.router.add_get("/{tail:.*}", any_path)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    root = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as session:
            tokens = TokenSource(
                session,
                token_url=f"http://127.0.0.1:{port}/connect/token",
                client_id="c",
                client_secret=Secret("s"),
                timeout=5,
            )
            spark = SparkAdmin(session, base_url=f"{root}/v1", tokens=tokens, timeout=5)
            yield spark, seen, root
    finally:
        await runner.cleanup()


@pytest.mark.parametrize("items", [5, "abc", {"id": "x"}, True])
async def test_a_page_whose_list_is_not_a_list_is_an_upstream_error(items: object) -> None:
    async with lying_api({"/v1/events": {"events": items}}) as (spark, _, _):
        with pytest.raises(UpstreamError, match="GET /events"):
            _ = [e async for e in spark.events()]


@pytest.mark.parametrize("event_id", ["../webhooks", "a?page=2", "a#b", "%2e%2e"])
async def test_an_event_id_from_the_api_stays_one_path_segment(event_id: str) -> None:
    async with lying_api({}) as (spark, seen, _):
        await spark.event(event_id)
    [raw] = seen
    segment = raw.removeprefix("/v1/events/")
    assert not set("/?#") & set(segment)
    assert unquote(segment) == event_id


# --- ecgw sandbox event ------------------------------------------------------------------------


def _flags(**given: Any) -> EventFlags:
    values: dict[str, Any] = {
        "targets": (),
        "intervals": 4,
        "length": dt.timedelta(hours=1),
        "start": None,
        "cap_kw": 5.0,
        "prices": (),
    }
    return EventFlags(**{**values, **given})


@pytest.mark.parametrize(
    "flags",
    [
        _flags(start=dt.datetime(9999, 12, 31, 23, tzinfo=dt.UTC)),
        _flags(length=dt.timedelta(days=36500), intervals=1440),
    ],
)
def test_an_event_past_year_9999_is_a_usage_error(flags: EventFlags) -> None:
    with pytest.raises(ValueError, match="year 9999"):
        simulation_request("pricecurve", flags, dt.datetime.now(dt.UTC))


@pytest.mark.parametrize("price", [float("nan"), float("inf"), float("-inf")])
def test_a_price_that_json_cannot_carry_is_a_usage_error(price: float) -> None:
    with pytest.raises(ValueError, match="--prices"):
        simulation_request("pricecurve", _flags(prices=(1.0, price)), dt.datetime.now(dt.UTC))


# --- what ecgw prints about a config -----------------------------------------------------------


def test_a_config_error_never_writes_control_characters_to_the_terminal(tmp_path: Path) -> None:
    """A key with an escape sequence (``"inter\\u001b[31mval"``) is named, escaped."""
    config = tmp_path / "ecgw.toml"
    config.write_text('[gateway]\nstate_dir = "state"\n[poll]\n"inter\\u001b[31mval" = 1\n')
    done = ecgw("-c", str(config), "check")
    assert done.returncode == 2
    err = done.stderr
    assert "\x1b" not in err
    assert "poll.inter\\x1b[31mval: unknown key (did you mean 'interval'?)" in err


def _api_config(tmp_path: Path, root: str) -> Path:
    config = tmp_path / "ecgw.toml"
    config.write_text(
        f'[gateway]\nstate_dir = "{tmp_path / "state"}"\n'
        f'[api]\nbase_url = "{root}/v1"\ntoken_url = "{root}/connect/token"\n'
        'client_id = "c"\nclient_secret = "s"\n'
        '[webhook]\nlisten = "127.0.0.1:0"\nsecret = "a-webhook-secret"\n'
    )
    return config


@pytest.mark.parametrize("url", ["http://[::1", "http://a b/", "https://h/\x1b[2J"])
def test_register_refuses_a_url_that_is_not_one(tmp_path: Path, url: str) -> None:
    config = _api_config(tmp_path, "http://127.0.0.1:9")
    done = ecgw("-c", str(config), "api", "webhooks", "register", url)
    assert done.returncode == 2
    err = done.stderr
    assert err.startswith("ecgw: error: url: ") and err.count("\n") == 1
    assert "Traceback" not in err and "\x1b" not in err


def test_register_refuses_a_url_with_credentials_and_does_not_print_them(tmp_path: Path) -> None:
    config = _api_config(tmp_path, "http://127.0.0.1:9")
    done = ecgw("-c", str(config), "api", "webhooks", "register", "https://user:pa55@host/notify")
    assert done.returncode == 2 and "must not carry credentials" in done.stderr
    assert "pa55" not in done.stderr + done.stdout


async def test_webhooks_list_shows_a_webhook_with_odd_fields(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    odd = {"webhookId": 7, "status": None, "notificationTypes": [1, None], "webhookUrl": None}
    async with lying_api({"/v1/webhooks": {"webhooks": [odd]}}) as (_, _, root):
        config = load_config(str(_api_config(tmp_path, root)))
        assert await cmd_api_webhooks_list(argparse.Namespace(json=False), config) == 0
    assert "7  enabled  None      None  -  1,None\n" in capsys.readouterr().out


def test_db_check_says_an_empty_file_is_not_an_ecgw_database(tmp_path: Path) -> None:
    from gateway.store.backup import check_database

    empty = tmp_path / "ecgw.sqlite3"
    empty.write_bytes(b"")
    result = check_database(empty)
    assert not result.ok and "not an ECGW database" in result.summary()


def test_status_without_a_database_says_so_and_creates_none(tmp_path: Path) -> None:
    import subprocess
    import sys

    config = tmp_path / "ecgw.toml"
    config.write_text(f'[gateway]\nstate_dir = "{tmp_path / "state"}"\n')
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "-c", str(config), "status"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1 and "no database at" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "state" / "ecgw.sqlite3").exists()
