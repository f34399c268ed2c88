"""The layers of docs/architecture.md, as import-linter contracts (the repository's .importlinter).

The contracts run on the real tree and must hold; then on a copy of the tree with one
forbidden import added per contract, where each must break (so the check can fail).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / ".importlinter"
LINT = "from importlinter.cli import lint_imports_command; lint_imports_command()"

# (file, the forbidden import added to it, the importer and imported module in the report)
BREAKS = [
    ("gateway/store/inbox.py", "from gateway.reports import planner", "gateway.store.inbox"),
    ("gateway/reports/builder.py", "from gateway.delivery import api", "gateway.reports.builder"),
    ("gateway/metering/energy.py", "import asyncio", "gateway.metering.energy"),
    ("gateway/delivery/policy.py", "import aiohttp", "gateway.delivery.policy"),
    ("adapters/simulated.py", "from gateway.store import database", "adapters.simulated"),
]


def lint(root: Path) -> subprocess.CompletedProcess[str]:
    """``lint-imports`` over the packages under ``root`` (found first on its path)."""
    return subprocess.run(
        [sys.executable, "-c", LINT, "--no-cache", "--no-logo", str(CONFIG)],
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_layers_hold() -> None:
    result = lint(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert " 0 broken" in result.stdout
    assert "KEPT" in result.stdout and "BROKEN" not in result.stdout


def test_a_forbidden_import_breaks_its_contract(tmp_path: Path) -> None:
    ignore = shutil.ignore_patterns("__pycache__")
    for package in ("gateway", "adapters"):
        shutil.copytree(ROOT / package, tmp_path / package, ignore=ignore)
    for file, line, _ in BREAKS:
        path = tmp_path / file
        path.write_text(path.read_text() + f"\n{line}  # deliberately forbidden\n")
    result = lint(tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "4 broken" in result.stdout, result.stdout
    for _, _, importer in BREAKS:
        assert f"-   {importer} -> " in result.stdout, importer
