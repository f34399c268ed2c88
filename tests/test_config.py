"""Config: the fixed TOML interface, durations, secrets, and errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import load_config, parse_config
from gateway.errors import ConfigError
from gateway.timeutil import parse_duration

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
