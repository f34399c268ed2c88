"""Config errors say what was meant: the nearest valid key, the valid values of a choice."""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Any, Literal

import msgspec
import pytest

from gateway.app import load_adapters
from gateway.config import Config, parse_config
from gateway.config_hints import with_hint
from gateway.errors import ConfigError


def error_of(data: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as caught:
        load_adapters(parse_config(data, base=Path("/")))
    return str(caught.value)


def test_an_unknown_key_names_the_nearest_valid_one() -> None:
    assert error_of({"poll": {"intervall": "5m"}}) == (
        "poll.intervall: unknown key (did you mean 'interval'?)"
    )


def test_an_unknown_key_with_nothing_near_lists_the_valid_keys() -> None:
    message = error_of({"lpc": {"zzz": 1}})
    assert message.startswith("lpc.zzz: unknown key (valid keys: ")
    assert "decline_unknown, failsafe, lead, margin_kw" in message


def test_an_unknown_top_level_table_is_matched_too() -> None:
    assert error_of({"delivry": {}}) == "delivry: unknown key (did you mean 'delivery'?)"


def test_a_literal_lists_its_values_in_a_list_of_tables() -> None:
    resource = {"resource_id": "r", "location_id": "l", "adapter": "a", "direction": "imports"}
    assert error_of({"resources": [resource]}) == (
        "resources[0].direction: Invalid enum value 'imports'; expected one of: import, net"
        " (did you mean 'import'?)"
    )


def test_a_value_far_from_every_choice_gets_the_list_only() -> None:
    resource = {"resource_id": "r", "location_id": "l", "adapter": "a", "participation": "xyz"}
    assert error_of({"resources": [resource]}).endswith("expected one of: off, report, shift")


def test_an_adapter_table_gets_the_same_hints() -> None:
    table = {"type": "modbus", "host": "127.0.0.1", "profile": "eastron-sdm360"}
    assert error_of({"adapters": {"m": table}}) == (
        "adapters.m.profile: Invalid enum value 'eastron-sdm360'; expected one of: "
        "eastron-sdm120, eastron-sdm630, sunspec (did you mean 'eastron-sdm630'?)"
    )
    table = {"type": "modbus", "host": "127.0.0.1", "profile": "sunspec", "poll_intervl": "1s"}
    assert error_of({"adapters": {"m": table}}) == (
        "adapters.m.poll_intervl: unknown key (did you mean 'poll_interval'?)"
    )


def test_an_enum_in_an_adapter_table_lists_its_values() -> None:
    table = {"type": "mqtt", "profile": "shelly-gen9", "topic": "t"}
    message = error_of({"adapters": {"q": table}})
    assert message.startswith("adapters.q.profile: Invalid enum value 'shelly-gen9'; expected")


class Colour(enum.Enum):
    RED = "red"
    GREEN = "green"


class Inner(msgspec.Struct, forbid_unknown_fields=True):
    level: Literal[1, 2] = 1


class Outer(msgspec.Struct, forbid_unknown_fields=True):
    colour: Colour | None = None
    tables: dict[str, list[Inner]] = {}


@pytest.mark.parametrize(
    ("path", "message", "expected"),
    [
        ("colour", "Invalid enum value 'gren'", "; expected one of: red, green (did you mean"),
        ("tables[...][0].level", "Invalid enum value 3", "; expected one of: 1, 2"),
        ("tables[...][0].levle", "unknown key", " (did you mean 'level'?)"),
    ],
)
def test_paths_are_followed_through_unions_dicts_and_lists(
    path: str, message: str, expected: str
) -> None:
    assert with_hint(Outer, path, message).startswith(message + expected)


@pytest.mark.parametrize(
    ("type_", "path", "message"),
    [
        (Outer, "nowhere.deep", "unknown key"),  # a path that leaves the types
        (Outer, "colour", "Expected `str`, got `int`"),  # not a message we add to
        (dict[str, Any], "x", "Invalid enum value 'x'"),  # Any: no choices known
        (Config, "adapters[...].x", "unknown key"),  # an adapter table is a free dict here
    ],
)
def test_no_hint_where_none_is_known(type_: Any, path: str, message: str) -> None:
    assert with_hint(type_, path, message) == message
