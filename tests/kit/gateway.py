"""Test kit: configs pointing at a sandbox, and a gateway running in the test's loop."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from gateway.app import Gateway
from gateway.config import Config, parse_config
from gateway.sandbox import Sandbox
from gateway.store.database import open_database
from gateway.store.outbox import Outbox


def sandbox_config(
    sandbox: Sandbox,
    state_dir: Path,
    *,
    delivery: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A config table (as parsed TOML) whose [api] is the sandbox's."""
    data: dict[str, Any] = {
        "gateway": {"state_dir": str(state_dir)},
        "api": {
            "base_url": sandbox.base_url,
            "token_url": sandbox.token_url,
            "client_id": sandbox.client_id,
            "client_secret": sandbox.client_secret,
        },
        "delivery": {
            "timeout": "1s",
            "backoff_initial": "50ms",
            "backoff_max": "500ms",
            **(delivery or {}),
        },
    }
    data.update(extra or {})
    return data


def make_config(data: dict[str, Any]) -> Config:
    return parse_config(data, base=Path("/"))


def toml(data: dict[str, Any]) -> str:
    """A small TOML writer for test configs (tables of scalars, arrays of tables)."""
    lines: list[str] = []

    def scalar(value: Any) -> str:
        return json.dumps(value)

    for name, table in data.items():
        if isinstance(table, list):
            for item in table:
                lines.append(f"[[{name}]]")
                lines += [f"{k} = {scalar(v)}" for k, v in item.items()]
            continue
        nested = {k: v for k, v in table.items() if isinstance(v, dict)}
        lines.append(f"[{name}]")
        lines += [f"{k} = {scalar(v)}" for k, v in table.items() if not isinstance(v, dict)]
        for sub, subtable in nested.items():
            lines.append(f"[{name}.{sub}]")
            lines += [f"{k} = {scalar(v)}" for k, v in subtable.items()]
    return "\n".join(lines) + "\n"


@contextlib.asynccontextmanager
async def running(config: Config) -> AsyncIterator[Gateway]:
    gateway = Gateway(config)
    task = asyncio.create_task(gateway.run(), name="gateway-under-test")
    ready = asyncio.create_task(gateway.ready.wait())
    await asyncio.wait({task, ready}, return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        ready.cancel()
        task.result()  # raises what stopped it
    try:
        yield gateway
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def report_body(event_id: str, resource: str = "res-1", kwh: float = 1.25) -> bytes:
    return json.dumps(
        {
            "eventId": event_id,
            "payloads": [
                {
                    "payloadType": "EnergyUsage",
                    "resourceId": resource,
                    "locationId": "loc-1",
                    "resolution": "01:00:00",
                    "points": [{"timestamp": "2026-11-26T10:00:00Z", "kiloWattHours": kwh}],
                }
            ],
        },
        separators=(",", ":"),
    ).encode()


async def queue_reports(
    config: Config, bodies: dict[str, bytes], *, kind: str = "EnergyUsage", now: float | None = None
) -> None:
    """Queue report bodies from a second connection, as ``ecgw report submit`` would."""
    stamp = now if now is not None else dt.datetime.now(dt.UTC).timestamp()
    async with open_database(config.db_path) as db:
        outbox = Outbox(db)
        for event_id, body in bodies.items():
            await outbox.enqueue(event_id=event_id, kind=kind, body=body, source="test", now=stamp)


async def outbox_rows(config: Config) -> dict[str, Any]:
    async with open_database(config.db_path) as db:
        return {row.event_id: row for row in await Outbox(db).items()}


async def wait_until(predicate: Any, *, timeout: float, interval: float = 0.05) -> None:
    """Poll an async predicate (state in another process or database) until true."""
    async with asyncio.timeout(timeout):
        while not await predicate():  # noqa: ASYNC110 - no event crosses processes
            await asyncio.sleep(interval)


def readings_span(db_path: Path) -> tuple[float | None, float | None]:
    """The first and last reading time in a gateway's database (read-only, any process)."""
    if not db_path.exists():
        return None, None
    conn = sqlite3.connect(db_path)
    try:
        row = conn.execute("SELECT MIN(at), MAX(at) FROM readings").fetchone()
    except sqlite3.OperationalError:  # not migrated yet
        return None, None
    finally:
        conn.close()
    return row[0], row[1]
