"""Attacks on ``ecgw hub sites import``: what the running hub reads must stay one table."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from gateway.config import load_config
from gateway.fleet.sites import SiteTable
from gateway.store.database import open_database
from gateway.store.fleet import FleetStore
from tests.test_fleet_cli import HUB, ok, refused
from tests.test_fleet_cli import hub_config as hub_config

pytestmark = pytest.mark.timeout(120)


async def _hub_started(config: Path) -> None:
    """What ``ecgw hub run`` writes at its start: the config's sites, source 'config'."""
    from gateway.fleet.cli import config_sites

    loaded = load_config(config)
    assert loaded.hub is not None
    async with open_database(loaded.db_path) as db:
        await FleetStore(db).replace_sites(config_sites(loaded.hub), "config", now=1.0)


async def _table(config: Path) -> SiteTable:
    async with open_database(load_config(config).db_path) as db:
        return SiteTable(await FleetStore(db).sites())


def test_an_import_against_an_edited_config_cannot_claim_what_the_running_hub_lists(
    tmp_path: Path,
    hub_config: Path,
) -> None:
    """The hub runs with site-a owning r2 (its config's rows in the database). The operator
    edits the config (r2 leaves site-a) and imports site-x owning r2 before restarting the
    hub. The import checked only the edited file, so the database held r2 twice; the
    running hub's next read of its sites raised ValueError in the router and the report
    intake, and its broker loop failed and reconnected until the restart (nothing routed,
    no report taken, no answer sent). The import must be refused instead."""
    asyncio.run(_hub_started(hub_config))
    hub_config.write_text(HUB.format(state=tmp_path / "state").replace('["r1", "r2"]', '["r1"]'))
    claim = tmp_path / "claim.json"
    claim.write_text(json.dumps({"sites": [{"site_id": "site-x", "resources": ["r2"]}]}))
    line = refused("hub", "sites", "import", str(claim), config=hub_config)
    assert "resource 'r2' is claimed by two sites" in line
    asyncio.run(_table(hub_config))  # what the running hub reads is still one table


def test_an_import_that_drops_thousands_of_sites_says_how_many_in_a_short_line(
    tmp_path: Path,
    hub_config: Path,
) -> None:
    """Importing the wrong file after a big one printed every dropped site id on one line
    (60,000 sites: half a megabyte); it must say how many, with a few of them."""
    many = tmp_path / "many.json"
    many.write_text(json.dumps({"sites": [{"site_id": f"s{i:04}"} for i in range(2000)]}))
    ok("hub", "sites", "import", str(many), config=hub_config)
    one = tmp_path / "one.json"
    one.write_text(json.dumps({"sites": [{"site_id": "s-new"}]}))
    out = ok("hub", "sites", "import", str(one), config=hub_config).strip()
    assert len(out) < 400, out[:400]
    assert "no longer imported: 2000 sites (s0000, s0001, s0002" in out
