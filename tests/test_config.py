"""Config: the fixed TOML interface, durations, secrets, and errors that name the key."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from gateway.config import load_config, parse_config, parse_listen
from gateway.config_probes import require_runnable
from gateway.errors import ConfigError
from gateway.timeutil import MAX_DURATION, format_duration, parse_duration

FULL = """
[gateway]
state_dir = "state"

[api]
base_url = "https://api.sandbox.voluespark.com/energy-coordination/v1"
token_url = "https://auth.identity.volue.com/connect/token"
client_id = "partner"
client_secret = "client-secret-value"

[webhook]
listen = "127.0.0.1:8080"
path = "/notify"
secret = "webhook-secret-value"

[poll]
interval = "5m"

[delivery]
timeout = "30s"
backoff_initial = "2s"
backoff_max = "10m"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "ecgw.toml"
    path.write_text(text)
    return path


def test_the_documented_config_loads(tmp_path: Path) -> None:
    cfg = load_config(str(write(tmp_path, FULL)))
    assert cfg.gateway.state_dir == str(tmp_path / "state")  # relative to the config file
    assert cfg.poll is not None and cfg.poll.interval == 300.0
    assert (cfg.delivery.timeout, cfg.delivery.backoff_initial, cfg.delivery.backoff_max) == (
        30.0,
        2.0,
        600.0,
    )
    assert cfg.client_secret is not None and cfg.client_secret.reveal() == "client-secret-value"
    assert cfg.webhook_secret is not None
    text = repr(cfg)
    assert "client-secret-value" not in text and "webhook-secret-value" not in text


def test_env_config_is_honoured(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ECGW_CONFIG", str(write(tmp_path, FULL)))
    assert load_config(None).api is not None


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("500ms", 0.5),
        ("10s", 10),
        ("5m", 300),
        ("1h", 3600),
        ("62d", 62 * 86400),
        (42, 42),
        (1.5, 1.5),
    ],
)
def test_durations(value: object, seconds: float) -> None:
    assert parse_duration(value) == seconds


@pytest.mark.parametrize(
    ("text", "key"),
    [
        (
            "[api]\nbase_url='x'\ntoken_url='t'\nclient_id='c'\nclient_secrte='s'\n",
            "api.client_secrte",
        ),
        ("[delivery]\ntimeout = '5 parsecs'\n", "delivery.timeout"),
        ("[delivery]\ntimeout = true\n", "delivery.timeout"),
        ("[poll]\ninterval = -3\n", "poll.interval"),
        ("[gatewy]\n", "gatewy"),
        ("[api]\nbase_url='x'\n", "api.token_url"),
        ("[webhook]\nlisten='127.0.0.1:1'\n", "webhook.secret"),
        ("[webhook]\nlisten='nowhere'\nsecret='s'\n", "webhook.listen"),
        ("[delivery]\nconcurrency = 0\n", "delivery.concurrency"),
        ("[[resources]]\nresource_id='r'\nlocation_id='l'\nadapter='a'\n", "resources[0].adapter"),
    ],
)
def test_errors_name_the_key(tmp_path: Path, text: str, key: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(str(write(tmp_path, text)))
    assert err.value.key == key
    assert str(err.value).startswith(key)
    assert "\n" not in str(err.value)


def test_secret_files_and_env_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "client.secret").write_text("from-file\n")
    text = FULL.replace(
        'client_secret = "client-secret-value"', 'client_secret_file = "client.secret"'
    )
    cfg = load_config(str(write(tmp_path, text)))
    assert cfg.client_secret is not None and cfg.client_secret.reveal() == "from-file"
    monkeypatch.setenv("ECGW_CLIENT_SECRET", "from-env")
    monkeypatch.setenv("ECGW_WEBHOOK_SECRET", "hook-from-env")
    cfg = load_config(str(write(tmp_path, text)))
    assert cfg.client_secret is not None and cfg.client_secret.reveal() == "from-env"
    assert cfg.webhook_secret is not None and cfg.webhook_secret.reveal() == "hook-from-env"


def test_missing_secret_file_is_named(tmp_path: Path) -> None:
    text = FULL.replace('client_secret = "client-secret-value"', 'client_secret_file = "nope"')
    with pytest.raises(ConfigError) as err:
        load_config(str(write(tmp_path, text)))
    assert err.value.key == "api.client_secret_file"


def test_tables_left_out_disable_features() -> None:
    cfg = parse_config({}, base=Path("/tmp"))
    assert cfg.webhook is None and cfg.poll is None and cfg.api is None
    with pytest.raises(ConfigError) as err:
        cfg.require_api()
    assert err.value.key == "api"


def test_bad_toml_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(str(write(tmp_path, "[api\n")))
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(str(tmp_path / "missing.toml"))
    with pytest.raises(ConfigError, match="ECGW_CONFIG"):
        load_config(None)


# --- ranges of single values --------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        math.nan,
        math.inf,
        -math.inf,
        "nan",
        "inf",
        "infs",
        "1e400s",
        "9" * 400 + "s",
        10**400,
        -(10**400),
        -1,
        "-1s",
        True,
        "\u0663s",  # an Arabic-Indic digit: float() would take it
        "1 parsec",
        None,
        [1],
        MAX_DURATION + 1,
    ],
)
def test_durations_refused(value: object) -> None:
    with pytest.raises(ValueError, match="duration") as err:
        parse_duration(value)
    assert len(str(err.value)) < 200 and "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0s"), (0.5, "500ms"), (10, "10s"), (90, "90s"), (300, "5m"), (7200, "2h"), (86400, "1d")],
)
def test_durations_are_shown_as_written(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    ("listen", "expected"),
    [
        ("127.0.0.1:8080", ("127.0.0.1", 8080)),
        ("[::1]:0", ("::1", 0)),
        ("localhost:65535", ("localhost", 65535)),
        ("gw-1.example.com.:443", ("gw-1.example.com.", 443)),
        ("0.0.0.0:1", ("0.0.0.0", 1)),
    ],
)
def test_listen_addresses(listen: str, expected: tuple[str, int]) -> None:
    assert parse_listen(listen) == expected


@pytest.mark.parametrize(
    "listen",
    [
        "127.0.0.1:65536",
        "127.0.0.1:99999",
        "127.0.0.1:-1",
        "127.0.0.1:+80",
        "127.0.0.1:\u0663",
        "127.0.0.1:",
        ":8080",
        "::1:8080",
        "[::1:8080",
        "[not-v6]:80",
        "host",
        "under_score:80",
        "-dash.example:80",
        "a..b:80",
        "two words:80",
        "x" * 64 + ":80",
    ],
)
def test_listen_addresses_refused(listen: str) -> None:
    with pytest.raises(ValueError) as err:
        parse_listen(listen)
    assert "\n" not in str(err.value)


def api(**overrides: str) -> dict[str, object]:
    table = {
        "base_url": "https://api.example.test/v1",
        "token_url": "https://auth.example.test/connect/token",
        "client_id": "partner",
        "client_secret": "s",
    }
    return {"api": {**table, **overrides}}


@pytest.mark.parametrize(
    "url",
    [
        "https://api.example.test/v1",
        "http://127.0.0.1:8900/v1/",
        "https://[::1]:443/v1",
        "https://api.example.test",
    ],
)
def test_urls_accepted(url: str) -> None:
    cfg = parse_config(api(base_url=url, token_url=url), base=Path("/"))
    assert cfg.api is not None and cfg.api.base_url == url


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("api.example.test/v1", "https://"),
        ("ftp://api.example.test/v1", "https://"),
        ("https:///v1", "no host"),
        ("https://:443/v1", "no host"),
        ("https://api.example.test:99999/v1", "not a URL"),
        ("https://user:pw@api.example.test/v1", "credentials"),
        ("https://api.example.test/v1?x=1", "query"),
        ("https://api example.test/v1", "spaces"),
        ("https://api.example.test/v1\n", "spaces"),
        ("https://bad_host.test/v1", "not a host name"),
    ],
)
def test_urls_refused(url: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(api(base_url=url), base=Path("/"))
    assert err.value.key == "api.base_url"
    assert fragment in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("path", ["notify", "/{name}", "/a b", "/a?b", "/" + "x" * 256, ""])
def test_webhook_paths_refused(path: str) -> None:
    data = {"webhook": {"listen": "127.0.0.1:1", "path": path, "secret": "s"}}
    with pytest.raises(ConfigError) as err:
        parse_config(data, base=Path("/"))
    assert err.value.key == "webhook.path"


def test_ids_and_names_must_not_be_empty() -> None:
    adapters = {"adapters": {"a": {"type": "simulated"}}}
    for key, table in [
        ("resources[0].resource_id", {"resource_id": "", "location_id": "l", "adapter": "a"}),
        ("resources[0].location_id", {"resource_id": "r", "location_id": "", "adapter": "a"}),
        (
            "resources[0].channel",
            {"resource_id": "r", "location_id": "l", "adapter": "a", "channel": ""},
        ),
        (
            "resources[0].meter_point_id",
            {"resource_id": "r", "location_id": "l", "adapter": "a", "meter_point_id": ""},
        ),
    ]:
        with pytest.raises(ConfigError) as err:
            parse_config({**adapters, "resources": [table]}, base=Path("/"))
        assert err.value.key == key
    with pytest.raises(ConfigError) as err:
        parse_config(api(client_id=""), base=Path("/"))
    assert err.value.key == "api.client_id"
    with pytest.raises(ConfigError) as err:
        parse_config({"adapters": {"": {"type": "simulated"}}}, base=Path("/"))
    assert err.value.key == 'adapters.""'
    with pytest.raises(ConfigError) as err:
        parse_config({"gateway": {"state_dir": ""}}, base=Path("/"))
    assert err.value.key == "gateway.state_dir"


def test_duplicate_resources_and_locations_refused() -> None:
    adapters = {"adapters": {"a": {"type": "simulated"}}}
    res = {"resource_id": "r", "location_id": "l", "adapter": "a"}
    with pytest.raises(ConfigError) as err:
        parse_config({**adapters, "resources": [res, {**res, "location_id": "m"}]}, base=Path("/"))
    assert err.value.key == "resources[1]"
    loc = {"location_id": "l", "meter_point_id": "mp", "adapter": "a"}
    with pytest.raises(ConfigError) as err:
        parse_config({**adapters, "locations": [loc, dict(loc)]}, base=Path("/"))
    assert err.value.key == "locations[1]"
    ok = parse_config(
        {**adapters, "locations": [loc, {**loc, "meter_point_id": "mp2"}]}, base=Path("/")
    )
    assert len(ok.locations) == 2


def test_state_dir_must_be_usable(tmp_path: Path) -> None:
    def runnable(state_dir: Path) -> None:
        require_runnable(
            parse_config({**api(), "gateway": {"state_dir": str(state_dir)}}, base=tmp_path)
        )

    runnable(tmp_path / "new" / "deeper")  # created by run; check creates nothing
    assert not (tmp_path / "new").exists()
    (tmp_path / "file").write_text("x")
    (tmp_path / "db-is-dir" / "ecgw.sqlite3").mkdir(parents=True)
    for bad in (tmp_path / "file", tmp_path / "file" / "below", tmp_path / "db-is-dir"):
        with pytest.raises(ConfigError) as err:
            runnable(bad)
        assert err.value.key == "gateway.state_dir"


def test_state_dir_probe_leaves_nothing_and_names_what_the_file_system_refuses(
    tmp_path: Path,
) -> None:
    from gateway.config_probes import state_dir_problem

    (tmp_path / "state").mkdir()
    assert state_dir_problem(tmp_path / "state") is None
    assert state_dir_problem(tmp_path / "new" / "deeper") is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state"]
    assert list((tmp_path / "state").iterdir()) == []
    problem = state_dir_problem(tmp_path / ("x" * 300))
    assert problem is not None and "too long" in problem.lower()
    if Path("/proc/self").is_dir():
        problem = state_dir_problem(Path("/proc/ecgw-state"))
        assert problem is not None and "cannot create" in problem
