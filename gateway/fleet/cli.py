"""``ecgw hub sites import|list``, ``ecgw hub acl`` and ``ecgw hub status``: the hub's sites,
the broker's access rules for them, and what the hub knows of each (docs/fleet.md).

The fleet's sites are those of ``[[hub.sites]]`` in the config plus those imported into the
hub's database (``ecgw hub sites import FILE`` replaces the imported set; the config's stay).
``list``, ``acl`` and ``status`` only read: without a database they show the config's sites
and create nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
import tomllib
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any

import msgspec

from gateway import render
from gateway.config import Config, HubConfig
from gateway.config_rules import hub_site_clash
from gateway.errors import ConfigError
from gateway.fleet.acl import acl_file, dynamic_security
from gateway.fleet.sites import Site, SiteTable, sites_from_mapping
from gateway.fleet.topics import Topics
from gateway.store.database import open_database
from gateway.store.fleet import FleetStore

__all__ = [
    "add_hub_commands",
    "cmd_hub_acl",
    "cmd_hub_sites_import",
    "cmd_hub_sites_list",
    "cmd_hub_status",
]

MAX_SITES_FILE = 16 * 1024 * 1024  # 10,000 sites with a hundred ids each fit
EXIT_OK = 0

Handler = Callable[[argparse.Namespace, Any], Coroutine[Any, Any, int]]


def _out(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def _hub(config: Config) -> HubConfig:
    if config.hub is None:
        raise ConfigError("the [hub] table is required for `ecgw hub` commands", key="hub")
    return config.hub


def config_sites(hub: HubConfig) -> list[Site]:
    """The sites of ``[[hub.sites]]`` (checked when the config loaded)."""
    return [
        Site(s.site_id, frozenset(s.resources), frozenset(s.locations), frozenset(s.meter_points))
        for s in hub.sites
    ]


@contextlib.asynccontextmanager
async def _existing_store(config: Config) -> AsyncIterator[FleetStore | None]:
    """The hub's database if it exists (None if not: nothing is created)."""
    if not config.db_path.exists():
        yield None
        return
    async with open_database(config.db_path) as db:
        yield FleetStore(db)


async def _imported(config: Config) -> list[Site]:
    async with _existing_store(config) as store:
        if store is None:
            return []
        return [row.site for row in await store.site_rows() if row.source == "import"]


def _table(sites: list[Site], hub: HubConfig) -> SiteTable:
    """Every site of the fleet, each id claimed once; ConfigError if not."""
    try:
        table = SiteTable(sites)
    except ValueError as exc:
        raise ConfigError(f"the config's and the imported sites: {exc}") from None
    try:
        for site in sites:
            hub_site_clash(hub, site.site_id)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    return table


# --- sites ---------------------------------------------------------------------------------------


def read_sites_file(path: Path) -> list[Site]:
    """Sites from a JSON or TOML file (``{"sites": [...]}`` / ``[[sites]]``): by its suffix,
    else JSON if it starts with ``{``. ConfigError naming the file and the problem."""
    shown = render.printable(str(path))
    try:
        with path.open("rb") as file:
            raw = file.read(MAX_SITES_FILE + 1)
    except OSError as exc:
        raise ConfigError(f"cannot read {shown}: {exc.strerror or type(exc).__name__}") from None
    if len(raw) > MAX_SITES_FILE:
        raise ConfigError(f"{shown} is larger than {MAX_SITES_FILE // 1024 // 1024} MiB")
    as_json = path.suffix.lower() == ".json" or (
        path.suffix.lower() != ".toml" and raw.lstrip().startswith(b"{")
    )
    try:
        data = msgspec.json.decode(raw) if as_json else tomllib.loads(raw.decode())
    except (msgspec.DecodeError, ValueError, RecursionError) as exc:
        what = "JSON" if as_json else "TOML"
        reason = " ".join(str(exc).split())[:300]
        raise ConfigError(f"{shown} is not valid {what}: {reason}") from None
    if not isinstance(data, dict):
        raise ConfigError(f'{shown}: expected {{"sites": [...]}}')
    try:
        return sites_from_mapping(data)
    except ValueError as exc:
        raise ConfigError(f"{shown}: {' '.join(str(exc).split())[:500]}") from None


async def cmd_hub_sites_import(args: argparse.Namespace, config: Config) -> int:
    hub = _hub(config)
    imported = read_sites_file(Path(args.file))
    from_config = config_sites(hub)
    _table([*from_config, *imported], hub)
    async with open_database(config.db_path) as db:
        store = FleetStore(db)
        before = [row for row in await store.site_rows() if row.source == "import"]
        try:
            await store.replace_sites(imported, "import", now=time.time())
        except ValueError as exc:  # a site the database lists from an older config
            raise ConfigError(str(exc)) from None
    gone = sorted({r.site.site_id for r in before} - {s.site_id for s in imported})
    _out(
        f"imported {len(imported)} sites from {render.printable(args.file)} "
        f"({len(from_config)} from the config; {len(from_config) + len(imported)} in all)"
        + (f"; no longer imported: {_some(gone)}" if gone else "")
    )
    return EXIT_OK


SHOWN_IDS = 10
"""Site ids a message names at most (the rest are counted)."""


def _some(ids: list[str]) -> str:
    """``a, b`` for a few ids; ``N sites (a, b, ... and M more)`` for many."""
    if len(ids) <= SHOWN_IDS:
        return ", ".join(ids)
    shown = ", ".join(ids[:SHOWN_IDS])
    return f"{len(ids)} sites ({shown} and {len(ids) - SHOWN_IDS} more)"


def _site_record(site: Site, source: str) -> dict[str, Any]:
    return {
        "site_id": site.site_id,
        "source": source,
        "resources": sorted(site.resources),
        "locations": sorted(site.locations),
        "meter_points": sorted(site.meter_points),
    }


async def _fleet(config: Config, *, check: bool) -> list[tuple[Site, str]]:
    """The config's sites and the imported, with their source; ``check``: ConfigError if
    an id is claimed twice (the config changed since the import)."""
    hub = _hub(config)
    listed = [(s, "config") for s in config_sites(hub)]
    listed += [(s, "import") for s in await _imported(config)]
    if check:
        _table([s for s, _ in listed], hub)
    return sorted(listed, key=lambda pair: (pair[0].site_id, pair[1]))


async def cmd_hub_sites_list(args: argparse.Namespace, config: Config) -> int:
    records = [_site_record(site, source) for site, source in await _fleet(config, check=False)]
    if args.json:
        _out(render.to_json(records))
        return EXIT_OK
    rows = [
        {**r, **{k: " ".join(r[k]) or None for k in ("resources", "locations", "meter_points")}}
        for r in records
    ]
    _out(render.table(rows, ("site_id", "source", "resources", "locations", "meter_points")))
    return EXIT_OK


# --- acl -----------------------------------------------------------------------------------------


async def cmd_hub_acl(args: argparse.Namespace, config: Config) -> int:
    hub = _hub(config)
    user = args.hub_user or hub.username
    if user is None:
        raise ConfigError(
            "no hub user: give --hub-user NAME (the hub has no username: it uses a certificate)",
            key="hub.username",
        )
    site_ids = [site.site_id for site, _ in await _fleet(config, check=True)]
    topics = Topics(prefix=hub.prefix, share_group=hub.share_group)
    try:
        if args.format == "dynsec":
            text = render.to_json(dynamic_security(topics, site_ids, hub_user=user))
        else:
            text = acl_file(topics, site_ids, hub_user=user).rstrip("\n")
    except ValueError as exc:
        raise ConfigError(f"--hub-user: {exc}") from None
    _out(text)
    return EXIT_OK


# --- status --------------------------------------------------------------------------------------


async def status_record(config: Config, *, now: float) -> dict[str, Any]:
    """Per site: online, last seen, events routed, reports pending, oldest pending; and the
    events no site owns. Sites the database knows of but the fleet no longer lists are
    shown too (``registered: false``)."""
    registered = {site.site_id for site, _ in await _fleet(config, check=False)}
    async with _existing_store(config) as store:
        if store is None:
            seen, routed, pending, unrouted = {}, {}, {}, 0
        else:
            seen, routed = await store.seen(), await store.routed_by_site()
            pending, unrouted = await store.pending_by_site(), await store.unrouted_count()
    sites = []
    for site_id in sorted(registered | set(seen) | set(routed) | set(pending)):
        heard, waiting = seen.get(site_id), pending.get(site_id)
        sites.append(
            {
                "site_id": site_id,
                "registered": site_id in registered,
                "online": heard.online if heard else None,
                "last_seen": render.iso(heard.last_seen) if heard else None,
                "events_routed": routed.get(site_id, 0),
                "reports_pending": waiting.count if waiting else 0,
                "oldest_pending": render.iso(waiting.oldest) if waiting else None,
                "oldest_pending_age_s": round(now - waiting.oldest, 1) if waiting else None,
            }
        )
    return {"sites": sites, "unrouted_events": unrouted}


def _online(value: bool | None) -> str:
    return "-" if value is None else "yes" if value else "no"


async def cmd_hub_status(args: argparse.Namespace, config: Config) -> int:
    record = await status_record(config, now=time.time())
    if args.json:
        _out(render.to_json(record))
        return EXIT_OK
    rows = [
        {
            **s,
            "site_id": s["site_id"] + ("" if s["registered"] else " (unregistered)"),
            "online": _online(s["online"]),
            "routed": s["events_routed"],
            "pending": s["reports_pending"],
        }
        for s in record["sites"]
    ]
    columns = ("site_id", "online", "last_seen", "routed", "pending", "oldest_pending")
    _out(render.table(rows, columns))
    _out(f"unrouted events (no site owns a target): {record['unrouted_events']}")
    return EXIT_OK


# --- the parser ----------------------------------------------------------------------------------


def add_hub_commands(
    sub: Any, add: Callable[..., argparse.ArgumentParser], *, run: Handler | None = None
) -> Any:
    """``ecgw hub ...`` into the ``ecgw`` parser's subcommands; returns the ``hub`` parser's
    own subcommands. ``run``: the handler of a bare ``ecgw hub`` (running the hub, from
    ``gateway/hub_app.py``); without it an action is required."""
    help_ = "the fleet's hub: its sites, the broker's rules, status"
    if run is None:
        hub = sub.add_parser("hub", help=help_)
    else:
        hub = add("hub", run, "run the fleet's hub until SIGTERM/SIGINT; or: " + help_)
    hsub = hub.add_subparsers(dest="hub_action", required=run is None, metavar="ACTION")
    sites = hsub.add_parser("sites", help="the sites the hub serves")
    ssub = sites.add_subparsers(dest="sites_action", required=True, metavar="ACTION")
    add(
        "import",
        cmd_hub_sites_import,
        "replace the imported sites with those of FILE (JSON or TOML)",
        into=ssub,
    ).add_argument("file", metavar="FILE", help='{"sites": [{"site_id": ..., ...}]} or [[sites]]')
    add(
        "list", cmd_hub_sites_list, "list the sites: the config's and the imported", into=ssub
    ).add_argument("--json", action="store_true", help="print JSON")
    acl = add("acl", cmd_hub_acl, "print the broker's access rules for every site", into=hsub)
    acl.add_argument(
        "--format",
        choices=("acl-file", "dynsec"),
        default="acl-file",
        help="a Mosquitto acl_file (default) or dynamic-security JSON",
    )
    acl.add_argument("--hub-user", help="the hub's broker user (default: hub.username)")
    add(
        "status",
        cmd_hub_status,
        "per site: online, last seen, events routed, reports pending",
        into=hsub,
    ).add_argument("--json", action="store_true", help="print JSON")
    return hsub
