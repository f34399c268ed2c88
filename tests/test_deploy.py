"""deploy/: the example configs pass `ecgw check`, the systemd unit passes `systemd-analyze
verify` and matches INSTALL.md, the Docker image builds (each tool where it exists)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests.kit.proc import ecgw

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
UNIT = DEPLOY / "ecgw.service"
INSTALL = DEPLOY / "INSTALL.md"
EXAMPLES = sorted((DEPLOY / "examples").glob("*.toml"))
SECRET_PATHS = ("/etc/ecgw/client-secret", "/etc/ecgw/webhook-secret")


def site_copy(source: Path, tmp_path: Path) -> Path:
    """``source`` as a site would install it, moved under ``tmp_path``: the state directory
    and the secret files (``/etc/ecgw/...``) point into ``tmp_path``, nothing else changes."""
    text = source.read_text()
    text, count = re.subn(r'(?m)^state_dir = "[^"]*"', f'state_dir = "{tmp_path / "state"}"', text)
    assert count == 1, f"{source.name}: no state_dir line"
    for secret in SECRET_PATHS:
        name = Path(secret).name
        (tmp_path / name).write_text(f"test-{name}\n")
        text = text.replace(secret, str(tmp_path / name))
    copy = tmp_path / source.name
    copy.write_text(text)
    return copy


def test_the_examples_are_the_ones_the_docs_name() -> None:
    names = ["sandbox-modbus.toml", "sandbox.toml", "sdm630.toml", "shelly.toml"]
    assert [p.name for p in EXAMPLES] == names


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.stem)
def test_example_config_passes_ecgw_check(example: Path, tmp_path: Path) -> None:
    config = site_copy(example, tmp_path)
    result = ecgw("check", config=config, env={"ECGW_CLIENT_SECRET": "", "ECGW_WEBHOOK_SECRET": ""})
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"config OK: {config}")
    assert "test-client-secret" not in result.stdout + result.stderr


def test_site_examples_keep_their_secrets_in_files() -> None:
    for example in EXAMPLES:
        data = tomllib.loads(example.read_text())
        if example.stem.startswith("sandbox"):  # the sandbox's well-known test values
            continue
        assert "client_secret" not in data["api"], example.name
        assert data["api"]["client_secret_file"] == SECRET_PATHS[0], example.name
        assert "secret" not in data["webhook"], example.name
        assert data["webhook"]["secret_file"] == SECRET_PATHS[1], example.name
        assert data["gateway"]["state_dir"] == "/var/lib/ecgw", example.name


def test_an_example_with_a_typo_fails_the_check(tmp_path: Path) -> None:
    """The check above can fail: the same copy with one key misspelt is refused."""
    config = site_copy(DEPLOY / "examples" / "sdm630.toml", tmp_path)
    config.write_text(config.read_text().replace("poll_interval", "poll_intervall", 1))
    result = ecgw("check", config=config)
    assert result.returncode == 2
    assert "poll_intervall" in result.stderr


def test_compose_config_passes_ecgw_check(tmp_path: Path) -> None:
    text = (DEPLOY / "compose.toml").read_text()
    text = text.replace('state_dir = "/var/lib/ecgw"', f'state_dir = "{tmp_path / "state"}"')
    text = text.replace('listen = "0.0.0.0:8080"', 'listen = "127.0.0.1:8080"')
    config = tmp_path / "compose.toml"
    config.write_text(text)
    env = {"ECGW_CLIENT_SECRET": "sandbox-secret", "ECGW_WEBHOOK_SECRET": "w"}
    result = ecgw("check", config=config, env=env)
    assert result.returncode == 0, result.stderr


def test_compose_file_names_what_exists() -> None:
    compose = (DEPLOY / "compose.yaml").read_text()
    assert "dockerfile: deploy/Dockerfile" in compose
    assert "./compose.toml:/etc/ecgw/ecgw.toml:ro" in compose
    assert '"sandbox", "--listen", "0.0.0.0:8900"' in compose
    assert "ecgw-state:/var/lib/ecgw" in compose


# --- the systemd unit --------------------------------------------------------------------------


def unit_settings() -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            settings.setdefault(key, []).append(value)
    return settings


def test_unit_is_type_notify_with_a_watchdog_and_hardened() -> None:
    s = unit_settings()
    assert s["Type"] == ["notify"]
    assert int(s["WatchdogSec"][0]) >= 30  # the heartbeat writes every 15 s at most
    for key, value in {
        "ProtectSystem": "strict",
        "ReadWritePaths": "/var/lib/ecgw",
        "NoNewPrivileges": "true",
        "PrivateTmp": "true",
        "ProtectHome": "true",
        "User": "ecgw",
        "Group": "ecgw",
        "KillSignal": "SIGTERM",
    }.items():
        assert s[key] == [value], key


def test_install_guide_sets_up_what_the_unit_expects() -> None:
    guide = INSTALL.read_text()
    s = unit_settings()
    executables = {v.split()[0] for k in ("ExecStart", "ExecStartPre") for v in s[k]}
    assert executables == {"/opt/ecgw/bin/ecgw"}
    assert "python3 -m venv /opt/ecgw" in guide
    config = s["Environment"][0].removeprefix("ECGW_CONFIG=")
    assert config == "/etc/ecgw/ecgw.toml" and config in guide
    assert "useradd --system" in guide and " ecgw\n" in guide
    assert "install -d -o ecgw -g ecgw -m 0750 /var/lib/ecgw" in guide
    for secret in SECRET_PATHS:
        assert secret in guide
    assert "sudo chown root:ecgw /etc/ecgw/client-secret /etc/ecgw/webhook-secret" in guide
    assert "sudo chmod 0640 /etc/ecgw/client-secret /etc/ecgw/webhook-secret" in guide
    assert "deploy/ecgw.service /etc/systemd/system/ecgw.service" in guide


SYSTEMD_ANALYZE = shutil.which("systemd-analyze")


def systemd_verify(unit: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SYSTEMD_ANALYZE), "verify", str(unit)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        cwd=unit.parent,
    )


def installed_unit(tmp_path: Path, text: str) -> Path:
    """The unit with /opt/ecgw/bin/ecgw pointing at this venv's ecgw: verify checks that
    ExecStart's program exists, and this machine has no /opt/ecgw."""
    venv_ecgw = Path(sys.executable).parent / "ecgw"
    unit = tmp_path / "ecgw.service"
    unit.write_text(text.replace("/opt/ecgw/bin/ecgw", str(venv_ecgw)))
    return unit


@pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed here")
def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    result = systemd_verify(installed_unit(tmp_path, UNIT.read_text()))
    assert result.returncode == 0, result.stderr
    assert (result.stdout + result.stderr).strip() == "", result.stderr


@pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed here")
def test_systemd_analyze_verify_sees_a_misspelt_key(tmp_path: Path) -> None:
    """The check above can fail: a typo in the unit is reported."""
    text = UNIT.read_text().replace("NoNewPrivileges=", "NoNewPrivilege=")
    result = systemd_verify(installed_unit(tmp_path, text))
    assert "NoNewPrivilege" in result.stderr


# --- Docker --------------------------------------------------------------------------------------


def docker_unavailable() -> str | None:
    """Why ``docker build`` cannot run here, or None."""
    docker = shutil.which("docker")
    if docker is None:
        return "docker is not installed here"
    info = subprocess.run(
        [docker, "info", "--format", "{{.ServerVersion}}"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if info.returncode != 0:
        reason = (info.stderr.strip().splitlines() or ["docker info failed"])[-1]
        return f"the Docker daemon is not reachable: {reason}"
    return None


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_docker_image_builds_and_runs_as_non_root() -> None:
    reason = docker_unavailable()
    if reason is not None:
        print(f"SKIP docker build: {reason}")
        pytest.skip(reason)
    tag = "ecgw-test:deploy"
    build = subprocess.run(
        ["docker", "build", "-f", str(DEPLOY / "Dockerfile"), "-t", tag, str(ROOT)],
        capture_output=True,
        text=True,
        timeout=880,
        check=False,
    )
    assert build.returncode == 0, build.stderr[-3000:]
    user = subprocess.run(
        ["docker", "image", "inspect", "--format", "{{.Config.User}}", tag],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert user.stdout.strip() == "ecgw"
    version = subprocess.run(
        ["docker", "run", "--rm", tag, "config", "schema"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert version.returncode == 0 and '"adapters"' in version.stdout, version.stderr


def test_dockerfile_runs_as_non_root_with_state_on_a_volume_and_a_health_check() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    assert re.search(r"(?m)^USER ecgw$", text)
    assert 'VOLUME ["/var/lib/ecgw"]' in text
    assert "http://127.0.0.1:9464/healthz" in re.search(r"(?ms)^HEALTHCHECK.*?$\n.*?$", text)[0]
    assert 'ENTRYPOINT ["ecgw"]' in text
