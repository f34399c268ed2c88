"""`ecgw config schema` and docs/configuration.md: from the code, agreeing with `ecgw check`."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

import jsonschema
import msgspec
import pytest

from gateway.config import Config
from gateway.config_schema import LOADER_ONLY, adapter_configs, config_schema, markdown
from gateway.plugin import AdapterConfig
from gateway.timeutil import Duration
from tests.kit.proc import ecgw

pytestmark = pytest.mark.timeout(30)

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs" / "configuration.md"
CONFIGS = [
    *sorted((ROOT / "deploy" / "examples").glob("*.toml")),
    ROOT / "deploy" / "compose.toml",
    ROOT / "deploy" / "ecgw.example.toml",
]


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    return config_schema()


def validator(schema: dict[str, Any]) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(schema)


def test_docs_configuration_md_is_up_to_date() -> None:
    assert DOCS.read_text() == markdown(), (
        "docs/configuration.md is stale: run "
        "`python -m gateway.config_schema --markdown > docs/configuration.md`"
    )


def test_ecgw_config_schema_prints_a_valid_json_schema(tmp_path: Path) -> None:
    result = ecgw("config", "schema", env={"ECGW_CONFIG": str(tmp_path / "absent.toml")})
    assert result.returncode == 0, result.stderr
    printed = json.loads(result.stdout)
    jsonschema.Draft202012Validator.check_schema(printed)
    assert printed == json.loads(json.dumps(config_schema()))


def test_every_config_key_is_in_the_schema(schema: dict[str, Any]) -> None:
    top = schema["properties"]
    fields = {f.encode_name for f in msgspec.structs.fields(Config)} - LOADER_ONLY
    assert set(top) == fields
    for name in ("gateway", "api", "webhook", "poll", "delivery", "lpc", "control"):
        section = msgspec.structs.fields(Config)
        (field,) = [f for f in section if f.name == name]
        struct = field.type if isinstance(field.type, type) else field.type.__args__[0]
        assert set(top[name]["properties"]) == {
            f.encode_name for f in msgspec.structs.fields(struct)
        }


def test_every_installed_adapter_is_one_of_the_adapters_tables(schema: dict[str, Any]) -> None:
    options = schema["properties"]["adapters"]["additionalProperties"]["oneOf"]
    by_type = {o["properties"]["type"]["const"]: o for o in options}
    assert {"modbus", "mqtt", "simulated"} <= set(by_type)
    for name, cls in adapter_configs().items():
        keys = {f.encode_name for f in msgspec.structs.fields(cls)}
        assert set(by_type[name]["properties"]) == keys, name


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_configs_validate_against_the_schema(path: Path, schema: dict[str, Any]) -> None:
    validator(schema).validate(tomllib.loads(path.read_text()))


@pytest.mark.parametrize(
    ("change", "complaint"),
    [
        ({"gateway": {"state_dirr": "/x"}}, "state_dirr"),
        ({"poll": {"interval": "ten minutes"}}, "ten minutes"),
        ({"poll": {"page_size": 5000}}, "5000"),
        ({"adapters": {"m": {"type": "modbus", "host": "h", "profile": "eastron-sdm360"}}}, ""),
        ({"adapters": {"m": {"type": "nonesuch"}}}, ""),
        ({"resources": [{"resource_id": "r", "location_id": "l"}]}, "adapter"),
        ({"resources": [{"resource_id": "r", "location_id": "l", "adapter": "a", "x": 1}]}, "x"),
    ],
)
def test_the_schema_refuses_what_ecgw_check_refuses(
    change: dict[str, Any], complaint: str, schema: dict[str, Any]
) -> None:
    errors = list(validator(schema).iter_errors(change))
    assert errors
    assert any(complaint in str(e.message) for e in errors)


def test_durations_are_written_as_config_writes_them(schema: dict[str, Any]) -> None:
    interval = schema["properties"]["poll"]["properties"]["interval"]
    assert interval["default"] == "5m"
    check = validator(schema)
    for good in ("10s", "500ms", "1.5h", 30, 0.5):
        assert check.is_valid({"poll": {"interval": good}}), good
    for bad in ("10 parsecs", -1, True):
        assert not check.is_valid({"poll": {"interval": bad}}), bad


def test_ranges_and_descriptions_come_from_the_code(schema: dict[str, Any]) -> None:
    page_size = schema["properties"]["poll"]["properties"]["page_size"]
    assert (page_size["minimum"], page_size["maximum"]) == (1, 1000)
    rated = schema["properties"]["resources"]["items"]["properties"]["rated_kw"]
    assert "switched on" in rated["description"]
    assert "client_secret" not in schema["properties"]  # the loader's Secret, not a key


class PluginConfig(AdapterConfig, frozen=True, kw_only=True, forbid_unknown_fields=True):
    address: str
    """Where the device is."""
    timeout: Duration = Duration(2.5)


def test_a_third_party_adapter_gets_its_own_table() -> None:
    schema = config_schema({"my-meter": PluginConfig})
    (option,) = schema["properties"]["adapters"]["additionalProperties"]["oneOf"]
    assert option["properties"]["type"] == {"const": "my-meter"}
    assert option["properties"]["address"]["description"] == "Where the device is."
    assert option["properties"]["timeout"]["default"] == "2500ms"
    assert option["required"] == ["type", "address"]
    check = validator(schema)
    assert check.is_valid({"adapters": {"a": {"type": "my-meter", "address": "x"}}})
    assert not check.is_valid({"adapters": {"a": {"type": "my-meter"}}})
    assert "my-meter" in markdown(schema)
