"""Run ``ecgw`` as a real subprocess."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

ECGW = [sys.executable, "-m", "gateway"]


def ecgw(
    *args: str, config: Path | None = None, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, **(env or {})}
    if config is not None:
        full_env["ECGW_CONFIG"] = str(config)
    return subprocess.run(
        [*ECGW, *args], capture_output=True, text=True, env=full_env, timeout=timeout, check=False
    )


async def start_ecgw(
    *args: str, config: Path, env: dict[str, str] | None = None, log: Path | None = None
) -> asyncio.subprocess.Process:
    full_env = {**os.environ, "ECGW_CONFIG": str(config), **(env or {})}
    stderr = log.open("ab") if log is not None else asyncio.subprocess.DEVNULL
    try:
        return await asyncio.create_subprocess_exec(
            *ECGW, *args, env=full_env, stdout=asyncio.subprocess.DEVNULL, stderr=stderr
        )
    finally:
        if log is not None:
            stderr.close()  # type: ignore[union-attr]
