"""Attacks on the fleet's config tables: user mistakes that must be one line, not a surprise."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import parse_config
from gateway.errors import ConfigError


def test_a_broker_url_with_port_zero_is_refused_not_taken_as_the_default(tmp_path: Path) -> None:
    """``mqtts://broker:0`` loaded, and the site connected to 8883 (``port or default``)."""
    (tmp_path / "pw").write_text("broker-pass\n")
    table = {
        "mode": "hub",
        "url": "mqtts://broker.example:0",
        "site_id": "site-a",
        "password_file": "pw",
    }
    with pytest.raises(ConfigError) as info:
        parse_config(
            {"gateway": {"state_dir": str(tmp_path / "s")}, "upstream": table}, base=tmp_path
        )
    assert info.value.key == "upstream.url"
    assert "port 0" in str(info.value)


def _hub_table(tmp_path: Path, **over: object) -> dict[str, object]:
    (tmp_path / "pw").write_text("broker-pass\n")
    table: dict[str, object] = {
        "url": "mqtt://broker.example",
        "username": "hub-user",
        "password_file": "pw",
        "client_id": "hub-1",
        "sites": [{"site_id": "site-a", "resources": ["r1"]}],
    }
    table.update(over)
    return table


@pytest.mark.parametrize("taken", ["hub-1", "hub-user"])
def test_a_site_named_like_the_hubs_client_id_or_user_is_refused(
    tmp_path: Path, taken: str
) -> None:
    """A site's client id is its site id. A site named like the hub's ``client_id`` throws
    the hub off the broker each time it connects (and the hub it, each time it connects
    again): nothing routed, no report taken, for as long as both run. One named like the
    hub's broker user logs in as the hub. Both loaded, and ``ecgw hub run`` started."""
    table = _hub_table(tmp_path, sites=[{"site_id": taken, "resources": ["r1"]}])
    with pytest.raises(ConfigError) as info:
        parse_config({"gateway": {"state_dir": str(tmp_path / "s")}, "hub": table}, base=tmp_path)
    assert info.value.key == "hub.sites"
    assert repr(taken) in str(info.value)
