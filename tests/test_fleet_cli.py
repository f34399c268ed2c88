"""`ecgw hub sites import|list`, `ecgw hub acl` and `ecgw hub status`, run as processes."""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path
from typing import Any

import pytest

from gateway.config import load_config
from gateway.errors import ConfigError
from gateway.fleet.cli import add_hub_commands, cmd_hub_status, read_sites_file
from gateway.store.database import open_database
from gateway.store.fleet import FleetStore
from gateway.store.outbox import Outbox
from gateway.store.outbox_states import Delivered
from tests.kit.proc import ecgw

pytestmark = pytest.mark.timeout(120)

HUB = """
[gateway]
state_dir = "{state}"

[hub]
url = "mqtts://127.0.0.1:8883"
username = "ecgw-hub"
password_file = "hub-password"
prefix = "fleet"

[[hub.sites]]
site_id = "site-a"
resources = ["r1", "r2"]
locations = ["loc-a"]
"""

IMPORT = {
    "sites": [
        {"site_id": "site-b", "resources": ["r3"], "meter_points": ["mp-b"]},
        {"site_id": "site-c", "locations": ["loc-c"]},
    ]
}


@pytest.fixture
def hub_config(tmp_path: Path) -> Path:
    (tmp_path / "hub-password").write_text("hub-secret-value\n")
    path = tmp_path / "hub.toml"
    path.write_text(HUB.format(state=tmp_path / "state"))
    return path


def ok(*args: str, config: Path) -> str:
    result = ecgw(*args, config=config)
    assert result.returncode == 0, result.stderr
    assert "hub-secret-value" not in result.stdout + result.stderr
    return result.stdout


def refused(*args: str, config: Path) -> str:
    result = ecgw(*args, config=config)
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ecgw: error: "), result.stderr
    return lines[0]


def test_import_then_list_the_config_and_the_imported_sites(
    tmp_path: Path, hub_config: Path
) -> None:
    first = tmp_path / "sites.json"
    first.write_text(json.dumps(IMPORT))
    out = ok("hub", "sites", "import", str(first), config=hub_config)
    assert out.strip() == f"imported 2 sites from {first} (1 from the config; 3 in all)"
    second = tmp_path / "sites.toml"  # TOML; replaces the imported set (site-b is gone)
    second.write_text('[[sites]]\nsite_id = "site-c"\nresources = ["r4"]\n')
    out = ok("hub", "sites", "import", str(second), config=hub_config)
    assert "imported 1 sites" in out and "no longer imported: site-b" in out
    listed = json.loads(ok("hub", "sites", "list", "--json", config=hub_config))
    assert listed == [
        {
            "site_id": "site-a",
            "source": "config",
            "resources": ["r1", "r2"],
            "locations": ["loc-a"],
            "meter_points": [],
        },
        {
            "site_id": "site-c",
            "source": "import",
            "resources": ["r4"],
            "locations": [],
            "meter_points": [],
        },
    ]
    text = ok("hub", "sites", "list", config=hub_config).splitlines()
    assert text[0].split() == ["SITE_ID", "SOURCE", "RESOURCES", "LOCATIONS", "METER_POINTS"]
    assert text[1].split() == ["site-a", "config", "r1", "r2", "loc-a", "-"]


def test_an_import_that_claims_a_config_sites_resource_is_refused(
    tmp_path: Path, hub_config: Path
) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"sites": [{"site_id": "site-x", "resources": ["r2"]}]}))
    line = refused("hub", "sites", "import", str(bad), config=hub_config)
    assert "resource 'r2' is claimed by two sites: site-a and site-x" in line
    assert not (tmp_path / "state").exists()  # refused before anything was opened


@pytest.mark.parametrize(
    ("name", "text", "says"),
    [
        ("s.json", '{"sites": [', "is not valid JSON"),
        ("s.toml", "sites = [", "is not valid TOML"),
        ("s.json", '{"sites": [{"site_id": "a/b"}]}', "sites[0]: site id 'a/b' must be"),
        ("s.json", '{"sites": [{"site_id": "a", "colour": 1}]}', "colour"),
        ("s.json", "[]", 'expected {"sites": [...]}'),
    ],
)
def test_a_bad_sites_file_is_one_line(tmp_path: Path, name: str, text: str, says: str) -> None:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ConfigError, match=None) as info:
        read_sites_file(path)
    assert says in str(info.value) and "\n" not in str(info.value)


def test_acl_in_both_forms_for_the_config_and_the_imported_sites(
    tmp_path: Path, hub_config: Path
) -> None:
    sites = tmp_path / "sites.json"
    sites.write_text(json.dumps(IMPORT))
    ok("hub", "sites", "import", str(sites), config=hub_config)
    text = ok("hub", "acl", config=hub_config)
    assert "user ecgw-hub\ntopic readwrite fleet/sites/#\n" in text
    for site in ("site-a", "site-b", "site-c"):
        assert (
            f"user {site}\ntopic read fleet/sites/{site}/events\n"
            f"topic read fleet/sites/{site}/acks\ntopic write fleet/sites/{site}/reports\n"
        ) in text
    doc = json.loads(
        ok("hub", "acl", "--format", "dynsec", "--hub-user", "hub2", config=hub_config)
    )
    assert [c["username"] for c in doc["clients"]] == ["hub2", "site-a", "site-b", "site-c"]
    line = refused("hub", "acl", "--hub-user", "site-b", config=hub_config)
    assert "site id 'site-b' is the hub's own broker user" in line


async def test_status_shows_each_site_and_never_writes(tmp_path: Path, hub_config: Path) -> None:
    state = tmp_path / "state"
    record = json.loads(ok("hub", "status", "--json", config=hub_config))
    assert record == {
        "sites": [
            {
                "site_id": "site-a",
                "registered": True,
                "online": None,
                "last_seen": None,
                "events_routed": 0,
                "reports_pending": 0,
                "oldest_pending": None,
                "oldest_pending_age_s": None,
            }
        ],
        "unrouted_events": 0,
    }
    assert not state.exists()  # no database: nothing created
    config = load_config(str(hub_config))
    now = time.time()
    async with open_database(config.db_path) as db:
        store = FleetStore(db)
        await store.saw("site-a", True, now - 60)
        await store.saw("site-gone", False, now - 3600)
        await store.record_routes("ev-1", ["site-a"], now - 50)
        await store.record_routes("ev-2", ["site-a", "site-gone"], now - 40)
        first = await store.accept_report("site-a", "ev-1", "EnergyUsage", b"{}", now - 30)
        await store.accept_report("site-a", "ev-2", "EnergyUsage", b"{}", now - 20)
        await Outbox(db).claim(now=now, limit=1)
        await Outbox(db).record([(first.outbox_id, Delivered(201, "rep-1"))], now=now)
        async with db.write() as conn:
            await conn.execute(
                "INSERT INTO events (event_id, payload_type, received_via, received_at, payload, "
                "plan_state) VALUES ('ev-9', 'PriceCurve', 'webhook', 0, x'7b7d', 'unrouted')"
            )
    before = hashlib.sha256((state / "ecgw.sqlite3").read_bytes()).hexdigest()
    record = json.loads(ok("hub", "status", "--json", config=hub_config))
    a, gone = record["sites"]
    assert (a["site_id"], a["registered"], a["online"]) == ("site-a", True, True)
    assert (a["events_routed"], a["reports_pending"]) == (2, 1)
    assert 15 <= a["oldest_pending_age_s"] < 600
    assert (gone["site_id"], gone["registered"], gone["online"]) == ("site-gone", False, False)
    assert (gone["events_routed"], gone["reports_pending"]) == (1, 0)
    assert record["unrouted_events"] == 1
    text = ok("hub", "status", config=hub_config).splitlines()
    assert text[0].split() == [
        "SITE_ID",
        "ONLINE",
        "LAST_SEEN",
        "ROUTED",
        "PENDING",
        "OLDEST_PENDING",
    ]
    assert text[1].split()[:2] == ["site-a", "yes"]
    assert text[-1] == "unrouted events (no site owns a target): 1"
    ok("hub", "sites", "list", config=hub_config)
    ok("hub", "acl", config=hub_config)
    after = hashlib.sha256((state / "ecgw.sqlite3").read_bytes()).hexdigest()
    assert after == before


@pytest.mark.parametrize("command", [("hub", "status"), ("hub", "sites", "list", "--json")])
def test_hub_commands_need_the_hub_table(tmp_path: Path, command: tuple[str, ...]) -> None:
    path = tmp_path / "plain.toml"
    path.write_text(f'[gateway]\nstate_dir = "{tmp_path / "state"}"\n')
    line = refused(*command, config=path)
    assert line == "ecgw: error: hub: the [hub] table is required for `ecgw hub` commands"


def test_a_bare_ecgw_hub_is_the_run_handler_when_one_is_given() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, handler: Any, help_: str, *_: Any, into: Any = sub) -> Any:
        added = into.add_parser(name, help=help_)
        added.set_defaults(handler=handler)
        return added

    async def run(args: argparse.Namespace, config: object) -> int:
        return 0

    add_hub_commands(sub, add, run=run)
    assert parser.parse_args(["hub"]).handler is run
    assert parser.parse_args(["hub", "status", "--json"]).handler is cmd_hub_status
