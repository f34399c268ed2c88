"""``ecgw db backup PATH``, ``check``, ``stats`` and ``vacuum``: the operator's hands on the
database file.

All but ``vacuum`` work beside a running ``ecgw run`` (read-only connections; WAL);
``vacuum`` rewrites the file and refuses while a gateway holds the state directory. The file work is
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
from gateway.store.database import hold_state_dir
from gateway.store.space import DbStats, database_stats, vacuum_database

__all__ = ["cmd_db_backup", "cmd_db_check", "cmd_db_stats", "cmd_db_vacuum", "stats_text"]


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


def _mib(size: int) -> str:
    return f"{size / 1048576:.1f} MiB"


def stats_text(stats: DbStats) -> list[str]:
    """``ecgw db stats`` as lines."""
    how = "dbstat: exact" if stats.exact else "estimated from row counts: no dbstat here"
    lines = [
        f"{stats.path}: {_mib(stats.file_bytes)} (WAL {_mib(stats.wal_bytes)}), "
        f"{stats.pages} pages of {stats.page_size} B, {stats.free_pages} free "
        f"({_mib(stats.free_pages * stats.page_size)}), auto_vacuum {stats.auto_vacuum}",
        f"{'table':<16} {'rows':>10} {'bytes':>12}   ({how}; indexes included)",
    ]
    lines += [f"{t.name:<16} {t.rows:>10} {t.bytes:>12}" for t in stats.tables]
    lines.append("retention would drop now:")
    lines += [
        f"  {name:<16} {rows:>8} rows {size:>12} bytes" for name, rows, size in stats.retention
    ]
    if stats.auto_vacuum != "incremental":
        lines.append(
            "freed pages stay in the file (reused, not given back) until `ecgw db vacuum`, "
            "run once with the gateway stopped"
        )
    return lines


async def cmd_db_stats(args: argparse.Namespace, config: Config) -> int:
    """Rows and bytes per table, free pages, the file's size, what retention would drop."""
    del args
    stats = await asyncio.to_thread(database_stats, config.db_path)
    for line in stats_text(stats):
        _say(line)
    return 0


async def cmd_db_vacuum(args: argparse.Namespace, config: Config) -> int:
    """Rewrite the file once with incremental auto_vacuum (the gateway must be stopped)."""
    del args
    async with hold_state_dir(config.state_path):
        before, after = await asyncio.to_thread(vacuum_database, config.db_path)
    _say(
        f"vacuumed {config.db_path}: {_mib(before)} -> {_mib(after)}; "
        "auto_vacuum incremental: retention now gives freed pages back"
    )
    return 0
