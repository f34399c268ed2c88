"""Shared fixtures: real SQLite files under tmp_path, the reference data, config files."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.store.database import Database, open_database

FIXTURES = Path(__file__).resolve().parent / "fixtures"
VECTORS = FIXTURES / "volue"  # Volue's signed test vectors, copied unchanged


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    async with open_database(tmp_path / "state" / "ecgw.sqlite3") as database:
        yield database


def vector(name: str) -> tuple[bytes, str, str]:
    """(body, signature, secret) of one of Volue's signed webhook test vectors."""
    body = (VECTORS / name).read_bytes()
    signature = (VECTORS / f"{name}.hmacsha256b64").read_text().strip()
    secret = (VECTORS / "signing-key.txt").read_text()
    return body, signature, secret
