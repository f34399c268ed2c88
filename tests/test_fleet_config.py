"""[hub] and [upstream]: the fleet's config tables, their rules, and `ecgw check` on them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gateway.config import Config, parse_config
from gateway.config_probes import require_runnable
from gateway.config_rules import parse_broker_url
from gateway.errors import ConfigError
from tests.kit.mosquitto import make_tls_files
from tests.kit.proc import ecgw

PASSWORD = "broker-pass-0123456789"


@pytest.fixture
def files(tmp_path: Path) -> Path:
    (tmp_path / "pw").write_text(PASSWORD + "\n")
    for name in ("ca.pem", "client.pem", "client.key"):
        (tmp_path / name).write_text(f"-----BEGIN {name}-----\n")
    return tmp_path


def hub(**over: Any) -> dict[str, Any]:
    table: dict[str, Any] = {
        "url": "mqtts://broker.example:8883",
        "username": "ecgw-hub",
        "password_file": "pw",
        "ca_file": "ca.pem",
        "sites": [
            {"site_id": "site-a", "resources": ["r1", "r2"], "locations": ["loc-a"]},
            {"site_id": "site-b", "resources": ["r3"], "meter_points": ["mp-b"]},
        ],
    }
    table.update(over)
    return {k: v for k, v in table.items() if v is not None}


def upstream(**over: Any) -> dict[str, Any]:
    table: dict[str, Any] = {
        "mode": "hub",
        "url": "mqtts://broker.example",
        "site_id": "site-a",
        "password_file": "pw",
    }
    table.update(over)
    return {k: v for k, v in table.items() if v is not None}


def load(base: Path, **tables: Any) -> Config:
    return parse_config({"gateway": {"state_dir": str(base / "state")}, **tables}, base=base)


def refused(base: Path, **tables: Any) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load(base, **tables)
    return info.value


# --- what loads ------------------------------------------------------------------------------


def test_a_hub_table_loads_with_its_password_wrapped_and_paths_made_absolute(files: Path) -> None:
    cfg = load(files, hub=hub())
    assert cfg.hub is not None and cfg.hub_password is not None
    assert cfg.hub_password.reveal() == PASSWORD
    assert cfg.hub.password_file == str(files / "pw")
    assert cfg.hub.ca_file == str(files / "ca.pem")
    assert [s.site_id for s in cfg.hub.sites] == ["site-a", "site-b"]
    assert (cfg.hub.client_id, cfg.hub.prefix, cfg.hub.share_group) == (
        "ecgw-hub",
        "ecgw",
        "ecgw-hubs",
    )
    assert PASSWORD not in repr(cfg) and PASSWORD not in str(cfg)


def test_a_site_loads_without_api_and_with_a_client_certificate(files: Path) -> None:
    table = upstream(
        password_file=None, client_cert_file="client.pem", client_key_file="client.key"
    )
    cfg = load(files, upstream=table)
    assert cfg.upstream is not None and cfg.upstream_password is None
    assert cfg.upstream.client_key_file == str(files / "client.key")
    assert cfg.upstream.answer_timeout == 30.0
    assert require_runnable(cfg) is None  # no [api] needed: the hub holds it


def test_a_standalone_gateway_still_needs_its_api_table(files: Path) -> None:
    with pytest.raises(ConfigError, match="api"):
        require_runnable(load(files))


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("mqtt://broker", ("broker", 1883, False)),
        ("mqtts://broker.example", ("broker.example", 8883, True)),
        ("mqtts://127.0.0.1:18883/", ("127.0.0.1", 18883, True)),
        ("mqtt://[::1]:1884", ("::1", 1884, False)),
    ],
)
def test_broker_urls(url: str, expected: tuple[str, int, bool]) -> None:
    assert parse_broker_url(url) == expected


# --- what is refused, naming the key ------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("https://broker", "must start with mqtts://"),
        ("mqtts://", "has no host"),
        ("mqtts://user:pw@broker", "must not carry credentials"),
        ("mqtts://broker/ecgw", "the topic prefix is `prefix`"),
        ("mqtts://broker:99999", "is not a URL"),
        ("mqtts://bro ker", "spaces"),
    ],
)
def test_a_bad_url_names_the_key(files: Path, url: str, says: str) -> None:
    error = refused(files, upstream=upstream(url=url))
    assert error.key == "upstream.url" and says in str(error)
    error = refused(files, hub=hub(url=url))
    assert error.key == "hub.url"


@pytest.mark.parametrize(
    ("over", "key", "says"),
    [
        (
            {"client_cert_file": "client.pem", "client_key_file": "client.key"},
            "password_file",
            "not both",
        ),
        ({"password_file": None}, "password_file", "no credential"),
        ({"password_file": None, "client_cert_file": "client.pem"}, "client_key_file", "needs"),
        ({"password_file": None, "client_key_file": "client.key"}, "client_cert_file", "needs"),
        ({"password_file": "absent"}, "password_file", "No such file"),
        ({"password_file": "empty"}, "password_file", "empty"),
        ({"ca_file": "absent.pem"}, "ca_file", "No such file"),
        ({"ca_file": "ca.pem", "url": "mqtt://broker"}, "ca_file", "needs an mqtts://"),
    ],
)
def test_exactly_one_readable_credential(
    files: Path, over: dict[str, Any], key: str, says: str
) -> None:
    (files / "empty").write_text("\n")
    for section, table in (("upstream", upstream(**over)), ("hub", hub(**over))):
        error = refused(files, **{section: table})
        assert error.key == f"{section}.{key}", error
        assert says in str(error)


def test_a_hub_password_needs_a_username(files: Path) -> None:
    assert refused(files, hub=hub(username=None)).key == "hub.username"


@pytest.mark.parametrize("table", ["api", "webhook", "poll", "hub"])
def test_a_site_holds_no_spark_credentials(files: Path, table: str) -> None:
    others: dict[str, Any] = {
        "api": {"base_url": "https://x/v1", "token_url": "https://x/t", "client_id": "c"},
        "webhook": {"secret": "s"},
        "poll": {},
        "hub": hub(),
    }
    error = refused(files, upstream=upstream(), **{table: others[table]})
    assert error.key == table
    assert "no site holds Spark credentials" in str(error)


def test_site_ids_are_checked(files: Path) -> None:
    assert refused(files, upstream=upstream(site_id="a/b")).key == "upstream.site_id"
    sites = [{"site_id": "ok"}, {"site_id": "+"}]
    assert refused(files, hub=hub(sites=sites)).key == "hub.sites[1]"


def test_an_id_claimed_by_two_sites_names_both(files: Path) -> None:
    sites = [{"site_id": "site-a", "resources": ["r1"]}, {"site_id": "site-b", "resources": ["r1"]}]
    error = refused(files, hub=hub(sites=sites))
    assert error.key == "hub.sites"
    assert "site-a" in str(error) and "site-b" in str(error) and "'r1'" in str(error)


@pytest.mark.parametrize(
    ("over", "key"),
    [
        ({"prefix": "ecgw/#"}, "hub.prefix"),
        ({"share_group": "a/b"}, "hub.share_group"),
        ({"client_id": "has space"}, "hub.client_id"),
    ],
)
def test_hub_names(files: Path, over: dict[str, Any], key: str) -> None:
    assert refused(files, hub=hub(**over)).key == key


def test_upstream_prefix_and_timeout(files: Path) -> None:
    assert refused(files, upstream=upstream(prefix="")).key == "upstream.prefix"
    assert refused(files, upstream=upstream(mode="spark")).key == "upstream.mode"
    error = refused(files, upstream=upstream(answer_timeout="0s"))
    assert error.key == "upstream.answer_timeout" and "at least 1s" in str(error)


# --- through `ecgw check` ----------------------------------------------------------------------


def check_refuses(config: Path) -> str:
    result = ecgw("check", config=config)
    assert result.returncode == 2, result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and PASSWORD not in result.stderr, result.stderr
    return lines[0]


def test_ecgw_check_passes_a_site_and_refuses_one_with_api_in_one_line(files: Path) -> None:
    tls = make_tls_files(files / "tls")
    site = files / "site.toml"
    head = (
        f'[gateway]\nstate_dir = "{files / "state"}"\n'
        '[upstream]\nmode = "hub"\nurl = "mqtts://127.0.0.1:8883"\nsite_id = "site-a"\n'
        'password_file = "pw"\n'
    )
    site.write_text(head + f'ca_file = "{tls.ca_cert}"\n')
    result = ecgw("check", config=site)
    assert result.returncode == 0, result.stderr
    assert "upstream=mqtts://127.0.0.1:8883 site=site-a" in result.stdout
    assert PASSWORD not in result.stdout + result.stderr
    site.write_text(
        site.read_text()
        + '[api]\nbase_url = "https://x/v1"\ntoken_url = "https://x/t"\nclient_id = "c"\n'
    )
    line = check_refuses(site)
    assert line.startswith("ecgw: error: api: a site with [upstream] must not have [api]")
    site.write_text(head + 'ca_file = "ca.pem"\n')  # readable, but no certificate
    assert check_refuses(site).startswith("ecgw: error: upstream.ca_file: cannot load")
