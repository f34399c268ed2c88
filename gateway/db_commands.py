"""``ecgw db backup PATH`` and ``ecgw db check``: the operator's hands on the database file.

Both work beside a running ``ecgw run`` (read-only connections; WAL). The file work is
in :mod:`gateway.store.backup`; this module only runs it off the event loop and says
what happened. Exit codes follow :mod:`gateway.cli`: 0 ok, 1 a problem (one line).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from gateway import render
from gateway.config import Config
from gateway.store.backup import backup_database, check_database

__all__ = ["cmd_db_backup", "cmd_db_check"]


def _say(text: str) -> None:
    sys.stdout.write(render.printable(text) + "\n")
    sys.stdout.flush()


async def cmd_db_backup(args: argparse.Namespace, config: Config) -> int:
    """Copy the database to ``args.file`` (PATH) (online backup API) and check the copy."""
    target = Path(args.file)
    result = await asyncio.to_thread(backup_database, config.db_path, target, force=args.force)
    _say(f"backed up {config.db_path} to {target}; integrity_check of the copy: ok")
    _say(f"  schema version {result.schema_version}")
    return 0


async def cmd_db_check(args: argparse.Namespace, config: Config) -> int:
    """A full ``integrity_check`` and the schema version; exit 1 naming the problem."""
    result = await asyncio.to_thread(check_database, config.db_path)
    _say(result.summary())
    for problem in result.problems[1:]:
        _say(f"  {problem}")
    return 0 if result.ok else 1
