"""``ecgw db backup`` and ``ecgw db check`` on real SQLite files, beside a delivering gateway."""

from __future__ import annotations

import asyncio
import sqlite3
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.sandbox import Fault, Sandbox, run_sandbox
from gateway.store.database import open_database
from gateway.store.schema import MIGRATIONS
from tests.kit.gateway import (
    make_config,
    outbox_rows,
    queue_reports,
    report_body,
    running,
    sandbox_config,
    toml,
    wait_until,
)
from tests.kit.live import integrity, query
from tests.kit.proc import ecgw, offline_config

REPORTS = 120


@pytest.fixture
async def sandbox() -> AsyncIterator[Sandbox]:
    async with run_sandbox() as sb:
        yield sb


async def ecgw_async(config: Path, *args: str) -> tuple[int, str, str]:
    """``ecgw ARGS`` in a subprocess, without blocking the loop the gateway runs in."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway",
        "-c",
        str(config),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=30)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def delivered(db_path: Path) -> int:
    return int(query(db_path, "SELECT COUNT(*) FROM outbox WHERE state = 'delivered'")[0][0])


async def test_a_backup_taken_during_delivery_is_whole_and_holds_the_delivered_rows(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    data = sandbox_config(sandbox, tmp_path / "state", delivery={"concurrency": 2})
    config = make_config(data)
    config_file = tmp_path / "ecgw.toml"
    config_file.write_text(toml(data))
    sandbox.add_faults(Fault(delay=0.05, count=REPORTS))  # delivery lasts about 3 s
    copy = tmp_path / "backup" / "copy.sqlite3"
    copy.parent.mkdir()
    async with running(config):
        await queue_reports(config, {f"e-{i}": report_body(f"e-{i}") for i in range(REPORTS)})
        await wait_until(lambda: _some_delivered(config.db_path), timeout=10)
        before = delivered(config.db_path)
        code, out, err = await ecgw_async(config_file, "db", "backup", str(copy))
        after = delivered(config.db_path)
        assert code == 0, err
        assert "integrity_check of the copy: ok" in out
        assert before < REPORTS and after < REPORTS, "the backup was not taken during delivery"
        await wait_until(lambda: _all_delivered(config.db_path), timeout=20)
    assert integrity(copy) == "ok"
    in_copy = delivered(copy)
    assert before <= in_copy <= after  # one snapshot, taken while reports went out
    assert len(query(copy, "SELECT id FROM outbox")) == REPORTS
    assert not copy.with_name("copy.sqlite3-wal").exists()  # a single self-contained file
    assert not list(copy.parent.glob(".*partial*"))
    # the copy opens as the gateway's database (what a restore does)
    async with open_database(copy):
        pass
    assert len(await outbox_rows(config)) == REPORTS


async def _some_delivered(db_path: Path) -> bool:
    return delivered(db_path) > 0  # queue_reports created it


async def _all_delivered(db_path: Path) -> bool:
    return delivered(db_path) == REPORTS


async def _fresh_database(tmp_path: Path) -> Path:
    config = offline_config(tmp_path)
    async with open_database(tmp_path / "state" / "ecgw.sqlite3"):
        pass
    return config


async def test_backup_refuses_an_existing_file_unless_forced(tmp_path: Path) -> None:
    config = await _fresh_database(tmp_path)
    target = tmp_path / "taken.sqlite3"
    target.write_bytes(b"keep me")
    refused = ecgw("db", "backup", str(target), config=config)
    assert refused.returncode == 1
    assert "exists; pass --force" in refused.stderr
    assert target.read_bytes() == b"keep me"
    forced = ecgw("db", "backup", "--force", str(target), config=config)
    assert forced.returncode == 0, forced.stderr
    assert integrity(target) == "ok"


async def test_backup_of_a_missing_database_names_it(tmp_path: Path) -> None:
    result = ecgw("db", "backup", str(tmp_path / "b.sqlite3"), config=offline_config(tmp_path))
    assert result.returncode == 1
    assert "no database at" in result.stderr
    assert not (tmp_path / "b.sqlite3").exists()


async def test_check_says_ok_and_the_schema_version(tmp_path: Path) -> None:
    result = ecgw("db", "check", config=await _fresh_database(tmp_path))
    assert result.returncode == 0, result.stderr
    assert "integrity ok" in result.stdout
    assert f"schema version {len(MIGRATIONS)} (this ecgw knows {len(MIGRATIONS)})" in result.stdout


async def test_check_of_a_corrupt_file_exits_1_naming_the_problem(tmp_path: Path) -> None:
    config = await _fresh_database(tmp_path)
    db_path = tmp_path / "state" / "ecgw.sqlite3"
    with sqlite3.connect(db_path) as conn:
        conn.execute("PRAGMA journal_mode = DELETE")
        conn.execute("CREATE TABLE filler (x TEXT)")
        conn.executemany("INSERT INTO filler VALUES (?)", [("x" * 200,) for _ in range(500)])
        conn.execute("CREATE INDEX filler_x ON filler (x)")
    conn.close()
    raw = bytearray(db_path.read_bytes())
    page = 4096
    for offset in range(len(raw) - 3 * page, len(raw) - page, 7):  # scribble over index pages
        raw[offset] = 0xA5
    db_path.write_bytes(bytes(raw))
    result = ecgw("db", "check", config=config)
    assert result.returncode == 1, result.stdout
    assert "integrity_check failed" in result.stdout


async def test_check_of_a_newer_schema_says_upgrade(tmp_path: Path) -> None:
    config = await _fresh_database(tmp_path)
    db_path = tmp_path / "state" / "ecgw.sqlite3"
    with sqlite3.connect(db_path) as conn:
        conn.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    conn.close()
    result = ecgw("db", "check", config=config)
    assert result.returncode == 1
    assert "upgrade ecgw" in result.stdout
