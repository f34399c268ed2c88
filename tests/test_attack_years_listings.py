"""Attack on issue 12's listings: ``--limit`` beyond what SQLite can hold.

``ecgw outbox list --limit 99999999999999999999999`` (and ``events list``) printed a Python
traceback (OverflowError: Python int too large to convert to SQLite INTEGER) instead of a
listing or a one-line error.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.listing import parse_limit
from tests.kit.proc import ecgw, offline_config

HUGE = "99999999999999999999999"


def test_a_limit_beyond_sqlites_integers_means_every_row() -> None:
    assert parse_limit(HUGE) == 2**63 - 1
    assert parse_limit(str(2**63 - 1)) == 2**63 - 1


@pytest.mark.parametrize("what", ["outbox", "events"])
def test_a_huge_limit_lists_without_a_traceback(tmp_path: Path, what: str) -> None:
    config = offline_config(tmp_path)
    done = ecgw(what, "list", "--limit", HUGE, config=config)
    assert "Traceback" not in done.stderr, done.stderr
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "(none)"
