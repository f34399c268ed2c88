"""Attack: user mistakes on the command line that end in a traceback instead of one line.

* A row id too large for SQLite (``ecgw outbox show 99999999999999999999999``): the ref is
  taken as an integer and bound as one, ``OverflowError: Python int too large to convert to
  SQLite INTEGER``, a traceback, exit 1. Same for ``outbox retry``, ``outbox purge`` and
  ``events show``.
* A ref that is not UTF-8 (a byte 0xff on the command line, as a shell or a script with the
  wrong locale may pass): ``UnicodeEncodeError ... surrogates not allowed``, a traceback.
  Every command that takes a ref or an event id.
* ``ecgw report submit /dev/zero`` (or any huge file): read whole into memory with no limit
  (3.4 GB RSS in 5 s; under a 1.5 GB address-space limit ``MemoryError`` with a traceback).
  A 122 MB report file is accepted and queued (1.9 GB RSS, 23 s), to be refused by the API.

Expected: exit 2 with one ``ecgw: ...`` line naming the argument, no traceback.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest

from tests.kit.proc import ECGW, ecgw, offline_config

HUGE = "99999999999999999999999"
NOT_UTF8 = os.fsdecode(b"\xff")


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = offline_config(tmp_path)
    assert ecgw("status", config=path).returncode in (0, 1)  # creates the database
    return path


def _one_line(result: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in result.stderr, result.stderr[-800:]
    assert result.returncode == 2, (result.returncode, result.stderr[-800:])
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


@pytest.mark.parametrize(
    "command",
    [
        ("outbox", "show"),
        ("outbox", "retry"),
        ("outbox", "purge"),
        ("events", "show"),
    ],
)
def test_a_row_id_too_large_for_sqlite(config: Path, command: tuple[str, str]) -> None:
    _one_line(ecgw(*command, HUGE, config=config))


@pytest.mark.parametrize(
    "command",
    [
        ("outbox", "show"),
        ("outbox", "retry"),
        ("outbox", "purge"),
        ("events", "show"),
        ("events", "replan"),
        ("report", "preview"),
    ],
)
def test_a_ref_that_is_not_utf8(config: Path, command: tuple[str, str]) -> None:
    _one_line(ecgw(*command, NOT_UTF8, config=config))


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (1_500_000_000, 1_500_000_000))


@pytest.mark.skipif(sys.platform != "linux", reason="/dev/zero and RLIMIT_AS")
def test_report_submit_of_an_endless_file(config: Path) -> None:
    result = subprocess.run(
        [*ECGW, "report", "submit", "/dev/zero"],
        capture_output=True,
        text=True,
        env={**os.environ, "ECGW_CONFIG": str(config)},
        timeout=60,
        check=False,
        preexec_fn=_limit_memory,
    )
    _one_line(result)
