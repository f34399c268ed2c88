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


OFFLINE = "http://127.0.0.1:9"
"""An API that reaches nothing (port 9, discard): for tests of everything but delivery."""


def offline_config(
    tmp_path: Path,
    extra: str = "",
    *,
    state_dir: str | Path | None = None,
    api: str = OFFLINE,
    client_secret: str = "s",
) -> Path:
    """``tmp_path/ecgw.toml``: the state under ``tmp_path/state`` (or ``state_dir``), an
    ``[api]`` table at ``api`` (``/v1`` and ``/connect/token``; offline by default), then
    ``extra`` TOML (a ``[webhook]`` table, adapters, ...)."""
    state = tmp_path / "state" if state_dir is None else state_dir
    path = tmp_path / "ecgw.toml"
    path.write_text(
        f'[gateway]\nstate_dir = "{state}"\n'
        f'[api]\nbase_url = "{api}/v1"\ntoken_url = "{api}/connect/token"\n'
        f'client_id = "c"\nclient_secret = "{client_secret}"\n{extra}'
    )
    return path


def webhook_table(port: int, secret: str) -> str:
    """A ``[webhook]`` table listening on 127.0.0.1:``port`` at ``/notify``."""
    return f'[webhook]\nlisten = "127.0.0.1:{port}"\npath = "/notify"\nsecret = "{secret}"\n'
