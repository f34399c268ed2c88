"""Attack: ``state_dir`` values that ``ecgw check`` passes or answers with a traceback.

* A path component longer than the file system allows (``NAME_MAX``, 255 bytes):
  ``ecgw check`` and ``ecgw run`` end in ``OSError: [Errno 36] File name too long`` with a
  traceback, exit 1 (``ecgw status`` says it in one line).
* A directory that cannot be created or holds no database (``/proc/ecgw``,
  ``/sys/kernel``): ``ecgw check`` says ``config OK``; ``ecgw run`` then exits 1 on every
  start, although the README says check tries "a state directory it can create or open".

Expected: both commands exit 2 with one line naming ``gateway.state_dir``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.kit.proc import ecgw, offline_config


def _config(tmp_path: Path, state_dir: str) -> Path:
    return offline_config(tmp_path, state_dir=state_dir)


def _refused(config: Path, command: str) -> None:
    result = ecgw(command, config=config, timeout=30)
    assert "Traceback" not in result.stderr, result.stderr[-600:]
    assert result.returncode == 2, (command, result.returncode, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "state_dir" in lines[0], result.stderr


@pytest.mark.parametrize("command", ["check", "run"])
def test_a_too_long_state_dir_name(tmp_path: Path, command: str) -> None:
    _refused(_config(tmp_path, str(tmp_path / ("x" * 300))), command)


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs /proc")
def test_check_refuses_a_state_dir_run_cannot_create(tmp_path: Path) -> None:
    config = _config(tmp_path, "/proc/ecgw-state")
    run = ecgw("run", config=config, timeout=30)
    assert run.returncode != 0  # run refuses it
    _refused(config, "check")
