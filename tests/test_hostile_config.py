"""Hostile configs: `ecgw check` refuses everything `ecgw run` would refuse or crash on.

Every config problem is exit 2 with one line that names the key; never a traceback.
The defect cases here each crashed `run` (or `check`) before config values had ranges.
"""

from __future__ import annotations

import json
import math
import signal
import socket
import string
import typing
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import msgspec
import pytest
import structlog
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.app import webhook_settings
from gateway.backoff import Backoff
from gateway.cli import check_config, main
from gateway.config import LIMITS, Config, LocationConfig, ResourceConfig, load_config
from gateway.errors import ConfigError
from gateway.timeutil import Duration
from tests.kit.proc import ecgw

API = {
    "base_url": "https://api.example.test/energy-coordination/v1",
    "token_url": "https://auth.example.test/connect/token",
    "client_id": "partner",
    "client_secret": "client-secret-value",
}
WEBHOOK = {"listen": "127.0.0.1:8080", "path": "/notify", "secret": "webhook-secret-value"}


def tomlify(value: Any) -> str:
    """A TOML value: floats keep nan and inf, strings are JSON-escaped (TOML-compatible)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return toml_string(value)
    if isinstance(value, list):
        return "[" + ", ".join(tomlify(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{toml_string(k)} = {tomlify(v)}" for k, v in value.items()) + "}"
    raise TypeError(type(value))


def toml_string(text: str) -> str:
    """A TOML basic string: JSON's escapes, but astral characters as themselves (TOML has no
    surrogate pairs) and DEL escaped (TOML forbids it raw)."""
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007F")


def document(data: Mapping[str, Any]) -> str:
    """Top-level tables as ``[name]`` and arrays of tables as ``[[name]]``."""
    lines: list[str] = []
    for name, table in data.items():
        if isinstance(table, list) and all(isinstance(t, dict) for t in table) and table:
            for item in table:
                lines.append(f"[[{toml_string(name)}]]")
                lines += [f"{toml_string(k)} = {tomlify(v)}" for k, v in item.items()]
        elif isinstance(table, dict):
            lines.append(f"[{toml_string(name)}]")
            lines += [f"{toml_string(k)} = {tomlify(v)}" for k, v in table.items()]
        else:
            lines.insert(0, f"{toml_string(name)} = {tomlify(table)}")
    return "\n".join(lines) + "\n"


def base(tmp_path: Path, **tables: Any) -> dict[str, Any]:
    data: dict[str, Any] = {"gateway": {"state_dir": str(tmp_path / "state")}, "api": dict(API)}
    for name, table in tables.items():
        if isinstance(table, dict) and isinstance(data.get(name), dict):
            data[name] = {**data[name], **table}
        else:
            data[name] = table
    return data


def write(tmp_path: Path, data: Mapping[str, Any] | str | bytes) -> Path:
    path = tmp_path / "ecgw.toml"
    if isinstance(data, bytes):
        path.write_bytes(data)
    else:
        path.write_text(data if isinstance(data, str) else document(data))
    return path


@pytest.fixture(autouse=True)
def _process_state() -> Iterator[None]:
    """``main`` sets signal handlers and configures logging: put both back afterwards."""
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    logging_config = structlog.get_config()
    yield
    for sig, handler in handlers.items():
        signal.signal(sig, handler)
    structlog.configure(**logging_config)


def run_check(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, list[str]]:
    """``ecgw check`` in this process: (exit code, stderr lines)."""
    code = main(["check", *argv])
    return code, capsys.readouterr().err.splitlines()


def assert_refused(capsys: pytest.CaptureFixture[str], path: Path | str, key: str) -> str:
    code, lines = run_check(capsys, "-c", str(path))
    assert code == 2, lines
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"ecgw: error: {key}"), lines[0]
    return lines[0]


def test_the_base_config_passes_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The cases below differ from this one only in the key they break."""
    full = base(
        tmp_path,
        webhook=dict(WEBHOOK),
        poll={"interval": "5m"},
        adapters={"site": {"type": "simulated"}},
        locations=[{"location_id": "loc", "meter_point_id": "mp", "adapter": "site"}],
    )
    code, lines = run_check(capsys, "-c", str(write(tmp_path, full)))
    assert (code, lines) == (0, [])


# --- the defects: check said OK, run crash-looped or did harm ----------------------------------


@pytest.mark.parametrize(
    ("tables", "key"),
    [
        ({"metering": {"retention": "5s"}}, "metering.retention"),
        ({"metering": {"retention": 0}}, "metering.retention"),
        ({"metering": {"retention": math.nan}}, "metering.retention"),
        ({"metering": {"raw_retention": "70d"}}, "metering.raw_retention"),
        ({"webhook": {**WEBHOOK, "listen": "127.0.0.1:99999"}}, "webhook.listen"),
        ({"webhook": {**WEBHOOK, "listen": "127.0.0.1:-1"}}, "webhook.listen"),
        ({"webhook": {**WEBHOOK, "listen": "no such host!:8080"}}, "webhook.listen"),
        ({"webhook": {**WEBHOOK, "listen": "[::1:8080"}}, "webhook.listen"),
        ({"webhook": {**WEBHOOK, "max_body": -1}}, "webhook.max_body"),
        ({"webhook": {**WEBHOOK, "max_body": 0}}, "webhook.max_body"),
        ({"webhook": {**WEBHOOK, "path": "/{name}"}}, "webhook.path"),
        ({"webhook": {**WEBHOOK, "read_timeout": math.inf}}, "webhook.read_timeout"),
        ({"poll": {"interval": 0}}, "poll.interval"),
        ({"poll": {"interval": math.nan}}, "poll.interval"),
        ({"poll": {"interval": "nan"}}, "poll.interval"),
        ({"poll": {"interval": "infs"}}, "poll.interval"),
        ({"poll": {"interval": "1e400s"}}, "poll.interval"),
        ({"poll": {"interval": "9" * 400 + "s"}}, "poll.interval"),
        ({"poll": {"interval": 10**400}}, "poll.interval"),
        ({"poll": {"interval": -math.inf}}, "poll.interval"),
        ({"delivery": {"timeout": 0}}, "delivery.timeout"),
        ({"delivery": {"timeout": "0ms"}}, "delivery.timeout"),
        ({"delivery": {"concurrency": 1_000_000}}, "delivery.concurrency"),
        ({"delivery": {"backoff_initial": "1h", "backoff_max": "1m"}}, "delivery.backoff_initial"),
        ({"delivery": {"retry_after_max": math.inf}}, "delivery.retry_after_max"),
        ({"reporting": {"grace": "nan"}}, "reporting.grace"),
        ({"metering": {"max_gap": "-1s"}}, "metering.max_gap"),
        ({"api": {**API, "base_url": "api.example.test/v1"}}, "api.base_url"),
        ({"api": {**API, "base_url": "ftp://api.example.test/v1"}}, "api.base_url"),
        ({"api": {**API, "token_url": "https:///token"}}, "api.token_url"),
        ({"api": {**API, "token_url": "https://auth.example.test:99999/t"}}, "api.token_url"),
        ({"api": {**API, "client_id": ""}}, "api.client_id"),
        ({"api": {**API, "client_secret": ""}}, "api.client_secret"),
        (
            {
                "adapters": {"a": {"type": "simulated"}},
                "resources": [
                    {"resource_id": "r", "location_id": "l", "adapter": "a", "max_kw": math.nan}
                ],
            },
            "resources[0].max_kw",
        ),
        (
            {
                "adapters": {"a": {"type": "simulated"}},
                "resources": [{"resource_id": "", "location_id": "l", "adapter": "a"}],
            },
            "resources[0].resource_id",
        ),
        (
            {
                "adapters": {"a": {"type": "simulated"}},
                "locations": [
                    {"location_id": "l", "meter_point_id": "m", "adapter": "a"},
                    {"location_id": "l", "meter_point_id": "m", "adapter": "a"},
                ],
            },
            "locations[1]",
        ),
        ({"adapters": {"a": {"type": "simulated", "poll_interval": "nan"}}}, "adapters.a"),
        ({"adapters": {"a": {"type": "simulated", "read_timeout": math.inf}}}, "adapters.a"),
    ],
)
def test_check_refuses_what_run_cannot_run_with(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], tables: dict[str, Any], key: str
) -> None:
    assert_refused(capsys, write(tmp_path, base(tmp_path, **tables)), key)


def test_invalid_utf8_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, document(base(tmp_path)).encode() + b"\n# caf\xe9 \xff\n")
    code, lines = run_check(capsys, "-c", str(path))
    assert code == 2 and len(lines) == 1
    assert "UTF-8" in lines[0] and str(path) in lines[0]


def test_deep_nesting_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for text in ("x = " + "[" * 5000 + "]" * 5000, "x = " + "{a = " * 3000 + "1" + "}" * 3000):
        code, lines = run_check(capsys, "-c", str(write(tmp_path, text + "\n")))
        assert code == 2 and len(lines) == 1
        assert "nested too deeply" in lines[0]


def test_huge_integer_literal_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = document(base(tmp_path)) + "[poll]\ninterval = " + "7" * 5000 + "\n"
    code, lines = run_check(capsys, "-c", str(write(tmp_path, text)))
    assert code == 2 and len(lines) == 1 and "not valid TOML" in lines[0]


@pytest.mark.parametrize(
    ("tables", "key"),
    [
        ({"gateway": {"state_dir": "state\x00dir"}}, "gateway.state_dir"),
        (
            {"api": {**API, "client_secret": None, "client_secret_file": "s\x00"}},
            "api.client_secret_file",
        ),
        ({"webhook": {**WEBHOOK, "secret": None, "secret_file": "w\x00"}}, "webhook.secret_file"),
    ],
)
def test_a_nul_in_a_path_is_one_line_naming_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], tables: dict[str, Any], key: str
) -> None:
    data = base(tmp_path, **tables)
    for table in data.values():
        for name in [k for k, v in table.items() if v is None]:
            del table[name]
    assert_refused(capsys, write(tmp_path, data), key)


def test_a_nul_in_the_config_path_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    code, lines = run_check(capsys, "-c", "ecgw\x00.toml")
    assert code == 2 and len(lines) == 1 and "cannot read config file" in lines[0]


def test_endless_files_are_read_only_so_far(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, lines = run_check(capsys, "-c", "/dev/zero")
    assert code == 2 and len(lines) == 1 and "larger than" in lines[0]
    api = {k: v for k, v in API.items() if k != "client_secret"}
    data = base(tmp_path, api={**api, "client_secret_file": "/dev/zero"})
    data["api"] = {**api, "client_secret_file": "/dev/zero"}
    line = assert_refused(capsys, write(tmp_path, data), "api.client_secret_file")
    assert "larger than" in line


def test_a_secret_file_that_is_not_utf8_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "secret").write_bytes(b"\xff\xfe secret")
    api = {k: v for k, v in API.items() if k != "client_secret"}
    data = base(tmp_path)
    data["api"] = {**api, "client_secret_file": "secret"}
    line = assert_refused(capsys, write(tmp_path, data), "api.client_secret_file")
    assert "UTF-8" in line


def test_a_symlink_loop_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    data = base(tmp_path, gateway={"state_dir": str(tmp_path / "a" / "state")})
    assert "cannot resolve" in assert_refused(capsys, write(tmp_path, data), "gateway.state_dir")


def test_a_state_dir_run_could_not_create_is_refused_by_check(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "a-file").write_text("not a directory")
    for state_dir in (tmp_path / "a-file", tmp_path / "a-file" / "state"):
        data = base(tmp_path, gateway={"state_dir": str(state_dir)})
        assert_refused(capsys, write(tmp_path, data), "gateway.state_dir")


@pytest.mark.parametrize(
    "listen",
    [
        "203.0.113.1:8080",  # TEST-NET-3: no interface here has it
        "no-such-host.invalid:8080",
    ],
)
def test_a_listen_host_run_could_not_bind_is_refused_by_check(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], listen: str
) -> None:
    data = base(tmp_path, webhook={**WEBHOOK, "listen": listen})
    assert_refused(capsys, write(tmp_path, data), "webhook.listen")


def test_check_does_not_need_the_port_a_running_gateway_holds(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        data = base(tmp_path, webhook={**WEBHOOK, "listen": f"127.0.0.1:{port}"})
        assert run_check(capsys, "-c", str(write(tmp_path, data))) == (0, [])


def test_an_unknown_log_level_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ECGW_LOG_LEVEL", "loud")
    assert_refused(capsys, write(tmp_path, base(tmp_path)), "ECGW_LOG_LEVEL")
    monkeypatch.setenv("ECGW_LOG_LEVEL", "WARNING")
    assert run_check(capsys, "-c", str(write(tmp_path, base(tmp_path)))) == (0, [])


def test_weird_names_stay_on_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = base(tmp_path, adapters={"two\nlines": {"type": "no\nsuch\ntype"}})
    line = assert_refused(capsys, write(tmp_path, data), "adapters.")
    assert "two\\nlines" in line


# --- ranges: every limit in the table holds, at both ends ---------------------------------------


# What each key's neighbours must be for its own ends to be reachable.
CONTEXT: dict[str, dict[str, Any]] = {
    "delivery.backoff_initial": {"delivery": {"backoff_max": "1d"}},
    "delivery.backoff_max": {"delivery": {"backoff_initial": "10ms"}},
}


def _config_with(tmp_path: Path, key: str, value: float) -> dict[str, Any]:
    data = base(tmp_path, webhook=dict(WEBHOOK), poll={}, **CONTEXT.get(key, {}))
    data["adapters"] = {"a": {"type": "simulated"}}
    data["resources"] = [{"resource_id": "r", "location_id": "l", "adapter": "a"}]
    data["locations"] = [{"location_id": "l", "meter_point_id": "m", "adapter": "a"}]
    if key == "resources[].rated_kw":  # its own range, not the rule that it is <= max_kw
        data["resources"][0]["max_kw"] = LIMITS["resources[].max_kw"].high
    section, _, name = key.replace("[]", "").partition(".")
    if section == "upstream":  # a site of a fleet: its hub holds [api], [webhook] and [poll]
        for other in ("api", "webhook", "poll"):
            data.pop(other, None)
        (tmp_path / "broker-password").write_text("p\n")
        data["upstream"] = {
            "mode": "hub",
            "url": "mqtts://127.0.0.1",
            "site_id": "site-a",
            "password_file": "broker-password",
        }
    table = (
        data[section][0] if section in ("resources", "locations") else data.setdefault(section, {})
    )
    table[name] = value
    return data


@pytest.mark.parametrize("key", sorted(LIMITS))
def test_each_limit_is_enforced_at_both_ends(tmp_path: Path, key: str) -> None:
    limit = LIMITS[key]
    whole = limit.kind in ("integer", "bytes")
    step = 1 if whole else 0.001
    cases = [
        (limit.low, limit.low_inclusive),
        (limit.high, True),
        (limit.low - step if limit.low_inclusive else limit.low - 1, False),
        (limit.high + step if whole else limit.high + 1, False),
    ]
    for value, ok in cases:
        path = write(tmp_path, _config_with(tmp_path, key, value))
        if ok:
            check_config(load_config(str(path)))
            continue
        with pytest.raises(ConfigError) as err:
            check_config(load_config(str(path)))
        assert err.value.key == key.replace("[]", "[0]"), (value, str(err.value))


def test_every_number_in_the_config_has_a_limit() -> None:
    numeric = {Duration, int, float}
    found = set()
    for section in msgspec.structs.fields(Config):
        struct = section.type if isinstance(section.type, type) else None
        if section.name in ("resources", "locations"):
            struct, prefix = (
                (ResourceConfig if section.name == "resources" else LocationConfig),
                f"{section.name}[]",
            )
        else:
            struct = next(
                (
                    t
                    for t in typing.get_args(section.type)
                    if isinstance(t, type) and issubclass(t, msgspec.Struct)
                ),
                struct,
            )
            prefix = section.name
        if struct is None or not issubclass(struct, msgspec.Struct):
            continue
        for field in msgspec.structs.fields(struct):
            types = set(typing.get_args(field.type)) - {type(None)} or {field.type}
            if types & numeric:  # optional numbers too (float | None)
                found.add(f"{prefix}.{field.name}")
    assert found == set(LIMITS)


@pytest.mark.parametrize(
    ("metering", "grace", "key"),
    [
        ({"raw_retention": "62d", "retention": "62d"}, "5m", "metering.raw_retention"),
        ({"max_gap": "2h", "raw_retention": "2h"}, "5m", "metering.raw_retention"),
        ({"max_gap": "15m", "raw_retention": "2h", "retention": "31d"}, "5m", "metering.retention"),
        ({"max_gap": "1d", "raw_retention": "2d", "retention": "32d"}, "1d", "metering.retention"),
    ],
)
def test_retention_covers_what_reports_need(
    tmp_path: Path, metering: dict[str, str], grace: str, key: str
) -> None:
    data = base(tmp_path, metering=metering, reporting={"grace": grace})
    with pytest.raises(ConfigError) as err:
        check_config(load_config(str(write(tmp_path, data))))
    assert err.value.key == key


def test_the_shortest_retention_that_covers_a_month_passes(tmp_path: Path) -> None:
    metering = {"max_gap": "15m", "raw_retention": "2h", "retention": "44670m"}  # 31d + 30m
    data = base(tmp_path, metering=metering, reporting={"grace": "15m"})
    config = check_config(load_config(str(write(tmp_path, data))))
    assert config.metering.retention == 31 * 86400 + 1800


# --- hypothesis: generated configs never give anything but OK or one ConfigError ----------------

SCALARS = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.text(max_size=30),
    st.sampled_from(
        [
            "0",
            "0s",
            "10s",
            "500ms",
            "5m",
            "1h",
            "62d",
            "nan",
            "inf",
            "infs",
            "-1s",
            "1e400s",
            "99999999999999999999d",
            "127.0.0.1:8080",
            "[::1]:0",
            "localhost:65536",
            "/notify",
            "notify",
            "https://x.test/v1",
            "http://",
            "\x00",
            "state\x00",
            "simulated",
            "/dev/zero",
            ".",
            "..",
        ]
    ),
)
VALUES = st.one_of(
    SCALARS,
    st.lists(SCALARS, max_size=3),
    st.dictionaries(st.text(max_size=6), SCALARS, max_size=2),
)
DURATIONS = st.sampled_from(["10s", "30s", "5m", "1h", "2d", 45, 120.5, "500ms"])
SECTIONS: dict[str, dict[str, st.SearchStrategy[Any]]] = {
    "gateway": {"state_dir": st.sampled_from(["state", "state/deeper", "."])},
    "api": {
        "base_url": st.sampled_from(["https://api.example.test/v1", "http://127.0.0.1:8900/v1"]),
        "token_url": st.sampled_from(["https://auth.example.test/token", "http://[::1]:1/t"]),
        "client_id": st.text(min_size=1, max_size=10),
        "client_secret": st.text(min_size=1, max_size=10),
        "client_secret_file": st.just("secret.txt"),
    },
    "webhook": {
        "listen": st.sampled_from(["127.0.0.1:0", "[::1]:8080", "localhost:65535"]),
        "path": st.sampled_from(["/notify", "/", "/a/b-c_d.e~f"]),
        "secret": st.text(min_size=1, max_size=10),
        "secret_file": st.just("secret.txt"),
        "max_body": st.integers(1024, 64 * 1024 * 1024),
        "read_timeout": DURATIONS,
    },
    "poll": {"interval": DURATIONS, "page_size": st.integers(1, 1000)},
    "delivery": {
        "timeout": DURATIONS,
        "backoff_initial": DURATIONS,
        "backoff_max": DURATIONS,
        "concurrency": st.integers(1, 64),
        "retry_after_max": DURATIONS,
    },
    "reporting": {"grace": DURATIONS},
    "metering": {
        "max_gap": DURATIONS,
        "raw_retention": st.sampled_from(["2h", "48h", "30d"]),
        "retention": st.sampled_from(["32d", "62d", "10000d"]),
    },
}
ENTRY_KEYS: dict[str, st.SearchStrategy[Any]] = {
    "resource_id": st.text(min_size=1, max_size=8),
    "location_id": st.text(min_size=1, max_size=8),
    "meter_point_id": st.text(min_size=1, max_size=8),
    "adapter": st.sampled_from(["a", "b"]),
    "channel": st.sampled_from(["energy", "power", "nope"]),
    "direction": st.sampled_from(["import", "net", "export"]),
    "max_kw": st.floats(0.001, 1e6),
}
ADAPTER_KEYS: dict[str, st.SearchStrategy[Any]] = {
    "type": st.sampled_from(["simulated", "simulated", "modbus", "mqtt", "nope"]),
    "poll_interval": DURATIONS,
    "read_timeout": DURATIONS,
    "power_kw": st.floats(-10, 10),
    "start_kwh": st.floats(0, 1e6),
}
KEYS = st.text(alphabet=string.ascii_lowercase + "_", min_size=1, max_size=12)


def table_of(
    draw: st.DrawFn, keys: Mapping[str, st.SearchStrategy[Any]], required: tuple[str, ...] = ()
) -> dict[str, Any]:
    """Some of ``keys``, each with a good value (two times in three) or a hostile one."""
    chosen = list(required) + draw(st.lists(st.sampled_from(sorted(keys)), max_size=4))
    table = {key: draw(st.one_of(keys[key], keys[key], VALUES)) for key in chosen}
    if draw(st.integers(0, 9)) == 5:
        table[draw(KEYS)] = draw(VALUES)  # an unknown key
    return table


@st.composite
def hostile_configs(draw: st.DrawFn) -> str | bytes:
    """A config document: the real structure with good and hostile values, or bytes."""
    if draw(st.integers(0, 9)) == 5:
        return draw(st.binary(max_size=200))
    data: dict[str, Any] = {"api": dict(API)}
    for section, keys in SECTIONS.items():
        if draw(st.booleans()):
            data[section] = {**data.get(section, {}), **table_of(draw, keys)}
    names = draw(st.lists(st.sampled_from(["a", "b", "", "x y"]), max_size=2, unique=True))
    if names:
        data["adapters"] = {name: table_of(draw, ADAPTER_KEYS, ("type",)) for name in names}
    required = {
        "resources": ("resource_id", "location_id", "adapter"),
        "locations": ("location_id", "meter_point_id", "adapter"),
    }
    for name, keys in required.items():
        if draw(st.booleans()):
            count = draw(st.integers(1, 2))
            data[name] = [table_of(draw, ENTRY_KEYS, keys) for _ in range(count)]
    if draw(st.integers(0, 9)) == 5:
        data[draw(KEYS)] = draw(VALUES)
    text = document(data)
    if draw(st.integers(0, 9)) == 5:  # a cut or a stray byte in otherwise valid TOML
        cut = draw(st.integers(0, len(text)))
        return text[:cut].encode() + draw(st.binary(max_size=4)) + text[cut:].encode()
    return text


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_generated_configs_are_ok_or_one_config_error(tmp_path: Path, data: st.DataObject) -> None:
    (tmp_path / "secret.txt").write_text("from-a-file\n")
    path = write(tmp_path, data.draw(hostile_configs()))
    error = refusal(path)  # anything but a ConfigError fails the test
    if error is None:
        assert_runnable(load_config(str(path)))
    else:
        text = str(error)
        assert "\n" not in text and "\r" not in text
        assert len(text) < 2000
        if error.key is not None:
            assert text.startswith(f"{error.key}: ")


def assert_runnable(config: Config) -> None:
    """What the running gateway takes for granted of a config that passed ``check``."""
    durations = [
        value
        for table in (config.webhook, config.poll, config.delivery, config.metering)
        if table is not None
        for value in msgspec.structs.astuple(table)
        if isinstance(value, Duration)
    ]
    assert all(0 < d < math.inf for d in durations)
    assert 0 <= config.reporting.grace < math.inf
    metering = config.metering
    assert 0 < metering.max_gap < metering.raw_retention < metering.retention  # compaction's
    Backoff(config.delivery.backoff_initial, config.delivery.backoff_max)  # raises if unusable
    assert 1 <= config.delivery.concurrency <= 64
    assert config.poll is None or 1 <= config.poll.page_size <= 1000
    settings = webhook_settings(config)
    assert settings is None or (0 <= settings.port <= 65535 and settings.max_body > 0)
    assert all(0 < r.max_kw < math.inf for r in [*config.resources, *config.locations])


def refusal(path: Path) -> ConfigError | None:
    """What ``ecgw check`` does short of printing: None for OK, else the ConfigError."""
    try:
        check_config(load_config(str(path)))
    except ConfigError as exc:
        return exc
    return None


# --- the real command ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (b'[metering]\nretention = "5s"\n', "metering.retention"),
        (b"x = " + b"[" * 5000 + b"]" * 5000 + b"\n", "nested too deeply"),
        (b'[gateway]\nstate_dir = "\xff"\n', "UTF-8"),
    ],
)
def test_ecgw_check_exits_2_with_one_stderr_line(
    tmp_path: Path, content: bytes, needle: str
) -> None:
    path = tmp_path / "ecgw.toml"
    path.write_bytes(document(base(tmp_path)).encode() + content)
    result = ecgw("check", "-c", str(path))
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and needle in lines[0], result.stderr
    assert result.stdout == ""
