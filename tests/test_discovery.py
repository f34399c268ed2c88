"""Adapter discovery: find entry points, load plugins, convert config, build adapters.

Third-party plugins are real distributions: a ``*.dist-info`` folder with an
``entry_points.txt`` (and the plugin's module, if any) written under
``tmp_path`` and put on ``sys.path``, where importlib.metadata finds them.
"""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from adapters.simulated import SimulatedAdapter, SimulatedConfig
from gateway.errors import AdapterLoadError, ConfigError
from gateway.metering.discovery import (
    AdapterPlugin,
    build_adapters,
    convert_adapter_config,
    find_plugins,
    load_plugin,
)
from gateway.plugin import AdapterConfig
from gateway.timeutil import Duration

SIMULATED = AdapterPlugin("simulated", "adapters.simulated:SimulatedAdapter", "ecgw")

# A third-party plugin module, as a partner would ship it.
METER_MODULE = """
from gateway.plugin import AdapterConfig, Channel, ChannelKind, Unit


class MeterConfig(AdapterConfig, frozen=True, kw_only=True):
    address: str
    unit_id: int = 1


class Meter:
    Config = MeterConfig

    def __init__(self, name, config):
        if config.address == "explode":
            raise OSError("no such serial port\\n/dev/ttyX")
        self.name = name
        self.config = config

    def channels(self):
        return [Channel("import", ChannelKind.ENERGY, Unit.WH)]

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc_info):
        return None

    async def read(self):
        return []


class Forgetful(Meter):
    def __init__(self, name, config):
        self.name = name  # does not keep its config


class NoConfig:
    def channels(self):
        return []

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc_info):
        return None

    async def read(self):
        return []


class ReadAndStream(Meter):
    def stream(self):
        raise NotImplementedError


class Neither:
    Config = MeterConfig

    def channels(self):
        return []


not_a_class = 42
"""

Install = Callable[..., Path]


@pytest.fixture
def install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Install]:
    """Install a throwaway distribution into a folder on sys.path; undone after the test."""
    modules_before = set(sys.modules)

    def install(
        dist: str,
        entry_points: Mapping[str, str],
        modules: Mapping[str, str] | None = None,
        *,
        group: str = "gateway.adapters",
    ) -> Path:
        site = tmp_path / f"site-{dist}"
        info = site / f"{dist.replace('-', '_')}-1.0.dist-info"
        info.mkdir(parents=True)
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
        lines = "".join(f"{name} = {value}\n" for name, value in entry_points.items())
        (info / "entry_points.txt").write_text(f"[{group}]\n{lines}")
        for module, source in (modules or {}).items():
            (site / f"{module}.py").write_text(textwrap.dedent(source))
        monkeypatch.syspath_prepend(str(site))
        return site

    yield install
    for module in set(sys.modules) - modules_before:
        if module.startswith("ecgw_test_"):
            del sys.modules[module]


@pytest.fixture
def partner(install: Install) -> list[AdapterPlugin]:
    """A partner distribution with working, broken and odd plugins."""
    install(
        "ecgw-test-partner",
        {
            "meter": "ecgw_test_meter:Meter",
            "forgetful": "ecgw_test_meter:Forgetful",
            "no-config": "ecgw_test_meter:NoConfig",
            "read-and-stream": "ecgw_test_meter:ReadAndStream",
            "neither": "ecgw_test_meter:Neither",
            "number": "ecgw_test_meter:not_a_class",
            "missing-attr": "ecgw_test_meter:Nope",
            "missing-module": "ecgw_test_nowhere:Meter",
        },
        {"ecgw_test_meter": METER_MODULE},
    )
    return find_plugins()


def plugin(plugins: list[AdapterPlugin], name: str) -> AdapterPlugin:
    (found,) = [p for p in plugins if p.name == name]
    return found


# --- find ---------------------------------------------------------------------------------------


def test_find_sees_the_builtin_simulated_adapter() -> None:
    assert SIMULATED in find_plugins()


def test_find_returns_sorted_typed_records(partner: list[AdapterPlugin]) -> None:
    assert partner == sorted(partner)
    meter = plugin(partner, "meter")
    assert meter == AdapterPlugin("meter", "ecgw_test_meter:Meter", "ecgw-test-partner")
    assert SIMULATED in partner


def test_find_never_imports_plugin_code(install: Install) -> None:
    install(
        "ecgw-test-loud",
        {"loud": "ecgw_test_loud:Adapter"},
        {"ecgw_test_loud": "raise RuntimeError('imported at find time')\n"},
    )
    assert "loud" in {p.name for p in find_plugins()}
    assert "ecgw_test_loud" not in sys.modules


def test_find_deduplicates_a_distribution_seen_twice(
    install: Install, monkeypatch: pytest.MonkeyPatch
) -> None:
    site = install("ecgw-test-twice", {"twice": "ecgw_test_twice:Adapter"})
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.syspath_prepend(str(site))
    assert [p.name for p in find_plugins()].count("twice") == 1


def test_find_reads_only_the_given_group(install: Install) -> None:
    install("ecgw-test-other", {"x": "ecgw_test_other:X"}, group="someone.else")
    assert "x" not in {p.name for p in find_plugins()}
    assert find_plugins("someone.else") == [
        AdapterPlugin("x", "ecgw_test_other:X", "ecgw-test-other")
    ]


# --- load ---------------------------------------------------------------------------------------


def test_load_the_builtin_adapter() -> None:
    assert load_plugin(SIMULATED) is SimulatedAdapter


def test_load_a_partner_adapter(partner: list[AdapterPlugin]) -> None:
    cls = load_plugin(plugin(partner, "meter"))
    assert cls.__name__ == "Meter"
    assert issubclass(cls.Config, AdapterConfig)


def test_load_failure_names_type_and_distribution(partner: list[AdapterPlugin]) -> None:
    with pytest.raises(AdapterLoadError) as info:
        load_plugin(plugin(partner, "missing-module"))
    assert str(info.value) == (
        "adapter type 'missing-module' from distribution 'ecgw-test-partner' failed to import: "
        "ModuleNotFoundError: No module named 'ecgw_test_nowhere'"
    )
    assert isinstance(info.value.__cause__, ModuleNotFoundError)


def test_load_failure_of_a_missing_attribute(partner: list[AdapterPlugin]) -> None:
    with pytest.raises(AdapterLoadError, match=r"'missing-attr' from .* AttributeError") as info:
        load_plugin(plugin(partner, "missing-attr"))
    assert "\n" not in str(info.value)


def test_load_failure_of_a_module_that_raises(install: Install) -> None:
    install(
        "ecgw-test-crashy",
        {"crashy": "ecgw_test_crashy:Adapter"},
        {"ecgw_test_crashy": "import json\njson.loads('{')\n"},
    )
    with pytest.raises(
        AdapterLoadError, match="'ecgw-test-crashy' failed to import: JSONDecodeError"
    ):
        load_plugin(plugin(find_plugins(), "crashy"))


def test_load_failure_without_a_known_distribution() -> None:
    orphan = AdapterPlugin("orphan", "ecgw_test_orphan:Adapter", None)
    with pytest.raises(AdapterLoadError, match="'orphan' from distribution unknown failed"):
        load_plugin(orphan)


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("no-config", "no Config class subclassing gateway.plugin.AdapterConfig"),
        ("read-and-stream", "exactly one of read() or stream(), it defines both"),
        ("neither", "no __aenter__() method; no __aexit__() method; it must define exactly one"),
        ("number", "expected a class, got int"),
    ],
)
def test_load_checks_the_class_looks_like_an_adapter(
    partner: list[AdapterPlugin], name: str, problem: str
) -> None:
    with pytest.raises(AdapterLoadError) as info:
        load_plugin(plugin(partner, name))
    message = str(info.value)
    assert message.startswith(f"adapter type {name!r} from distribution 'ecgw-test-partner'")
    assert "is not an adapter" in message
    assert problem in message


# --- config -------------------------------------------------------------------------------------


def convert(table: Mapping[str, Any]) -> AdapterConfig:
    return convert_adapter_config("heater", SimulatedAdapter, table)


@pytest.mark.parametrize(
    ("written", "seconds"),
    [("10s", 10.0), ("500ms", 0.5), ("5m", 300.0), (15, 15.0), (2.5, 2.5), (" 1h ", 3600.0)],
)
def test_config_durations_from_text_or_number(written: object, seconds: float) -> None:
    config = convert({"type": "simulated", "poll_interval": written, "read_timeout": written})
    assert isinstance(config.poll_interval, Duration)
    assert isinstance(config.read_timeout, Duration)
    assert config.poll_interval == config.read_timeout == seconds


def test_config_is_the_adapters_own_struct() -> None:
    config = convert({"type": "simulated", "power_kw": 3})
    assert config == SimulatedConfig(type="simulated", power_kw=3.0)
    assert config.read_timeout is None


@pytest.mark.parametrize(
    ("table", "key", "message"),
    [
        ({"type": "simulated", "power_kW": 3}, "adapters.heater.power_kW", "unknown key"),
        ({"power_kw": 3}, "adapters.heater.type", "required key missing"),
        ({"type": "simulated", "power_kw": "3"}, "adapters.heater.power_kw", "Expected `float`"),
        (
            {"type": "simulated", "poll_interval": "often"},
            "adapters.heater.poll_interval",
            "'often'",
        ),
        ({"type": "simulated", "poll_interval": True}, "adapters.heater.poll_interval", "True"),
        ({"type": "simulated", "read_timeout": "-1s"}, "adapters.heater.read_timeout", "duration"),
        ({"type": "simulated", "poll_interval": 0}, "adapters.heater.poll_interval", "10ms"),
        ({"type": "simulated", "read_timeout": "0s"}, "adapters.heater.read_timeout", "10ms"),
        ({"type": "simulated", "poll_interval": "1ms"}, "adapters.heater.poll_interval", "10ms"),
        (
            {"type": "simulated", "poll_interval": float("nan")},
            "adapters.heater.poll_interval",
            "finite",
        ),
        ({"type": "simulated", "poll_interval": "nan"}, "adapters.heater.poll_interval", "'nan'"),
        (
            {"type": "simulated", "read_timeout": float("inf")},
            "adapters.heater.read_timeout",
            "100 years",
        ),
        ({"type": "simulated", "read_timeout": "1e400s"}, "adapters.heater.read_timeout", "1e400"),
        ({"type": "simulated", "read_timeout": 10**400}, "adapters.heater.read_timeout", "years"),
        ({"type": "simulated", "poll_interval": -1e308}, "adapters.heater.poll_interval", "neg"),
    ],
)
def test_config_errors_name_the_key(table: Mapping[str, Any], key: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        convert(table)
    assert info.value.key == key
    text = str(info.value)
    assert text.startswith(f"{key}: ")
    assert message in text
    assert "\n" not in text


def test_config_error_path_into_nested_values(install: Install) -> None:
    install(
        "ecgw-test-nested",
        {"nested": "ecgw_test_nested:Nested"},
        {
            "ecgw_test_nested": """
                from gateway.plugin import AdapterConfig

                class Register(AdapterConfig, frozen=True, kw_only=True):
                    type: str = "register"
                    address: int

                class NestedConfig(AdapterConfig, frozen=True, kw_only=True):
                    registers: list[Register] = []

                class Nested:
                    Config = NestedConfig
                    def channels(self): return []
                    async def __aenter__(self): return self
                    async def __aexit__(self, *exc_info): return None
                    async def read(self): return []
            """
        },
    )
    cls = load_plugin(plugin(find_plugins(), "nested"))
    table = {"type": "nested", "registers": [{"address": 1}, {"adress": 2}]}
    with pytest.raises(ConfigError) as info:
        convert_adapter_config("boiler", cls, table)
    assert info.value.key == "adapters.boiler.registers[1].adress"
    table = {"type": "nested", "registers": [{"address": "x"}]}
    with pytest.raises(ConfigError) as info:
        convert_adapter_config("boiler", cls, table)
    assert info.value.key == "adapters.boiler.registers[0].address"


def test_a_plugins_own_default_interval_is_checked_too(install: Install) -> None:
    """A default never passes through the duration parser: a zero default is still refused."""
    install(
        "ecgw-test-eager",
        {"eager": "ecgw_test_eager:Eager"},
        {
            "ecgw_test_eager": """
                from gateway.plugin import AdapterConfig
                from gateway.timeutil import Duration

                class EagerConfig(AdapterConfig, frozen=True, kw_only=True):
                    poll_interval: Duration = Duration(0.0)

                class Eager:
                    Config = EagerConfig
                    def channels(self): return []
                    async def __aenter__(self): return self
                    async def __aexit__(self, *exc_info): return None
                    async def read(self): return []
            """
        },
    )
    cls = load_plugin(plugin(find_plugins(), "eager"))
    with pytest.raises(ConfigError) as info:
        convert_adapter_config("busy", cls, {"type": "eager"})
    assert info.value.key == "adapters.busy.poll_interval"
    assert convert_adapter_config("busy", cls, {"type": "eager", "poll_interval": "1s"})


def test_names_that_are_not_bare_keys_are_quoted_on_one_line() -> None:
    with pytest.raises(ConfigError) as info:
        convert_adapter_config("two\nlines", SimulatedAdapter, {"type": "simulated", "x": 1})
    assert info.value.key == 'adapters."two\\nlines".x'
    assert "\n" not in str(info.value)


# --- build --------------------------------------------------------------------------------------


def test_build_with_installed_plugins() -> None:
    adapters, errors = build_adapters({"heater": {"type": "simulated", "power_kw": 2}})
    assert errors == {}
    heater = adapters["heater"]
    assert isinstance(heater, SimulatedAdapter)
    assert heater.name == "heater"
    assert heater.config.power_kw == 2.0


def test_build_unknown_type_is_named() -> None:
    adapters, errors = build_adapters({"pump": {"type": "modbuss"}}, plugins=[SIMULATED])
    assert adapters == {}
    assert (
        str(errors["pump"]) == "adapter 'pump': unknown adapter type 'modbuss' (known: simulated)"
    )
    assert errors["pump"].adapter == "pump"


def test_build_bad_config_key_is_named() -> None:
    _, errors = build_adapters({"heater": {"type": "simulated", "powr_kw": 2}}, [SIMULATED])
    assert (
        str(errors["heater"])
        == "adapter 'heater': adapters.heater.powr_kw: unknown key (did you mean 'power_kw'?)"
    )
    assert isinstance(errors["heater"].__cause__, ConfigError)


def test_one_broken_adapter_does_not_stop_the_others(partner: list[AdapterPlugin]) -> None:
    tables: dict[str, Mapping[str, Any]] = {
        "heater": {"type": "simulated"},
        "meter-1": {"type": "meter", "address": "/dev/ttyUSB0"},
        "meter-2": {"type": "meter", "address": "/dev/ttyUSB1", "unit_id": 2},
        "typo": {"type": "meter", "adress": "/dev/ttyUSB2"},
        "unknown": {"type": "teleporter"},
        "unimportable": {"type": "missing-module"},
        "exploding": {"type": "meter", "address": "explode"},
        "forgetful": {"type": "forgetful", "address": "x"},
        "not-a-class": {"type": "number"},
        "untyped": {"address": "x"},
        "not-a-table": 7,  # type: ignore[dict-item]
    }
    adapters, errors = build_adapters(tables, partner)
    assert sorted(adapters) == ["heater", "meter-1", "meter-2"]
    assert sorted(errors) == sorted(set(tables) - set(adapters))
    assert all(error.adapter == name for name, error in errors.items())
    expected = {
        "typo": "adapters.typo.adress: unknown key",
        "unknown": "unknown adapter type 'teleporter'",
        "unimportable": "from distribution 'ecgw-test-partner' failed to import",
        "exploding": "failed to initialise: OSError: no such serial port /dev/ttyX",
        "forgetful": "does not keep its config as the attribute 'config'",
        "not-a-class": "is not an adapter",
        "untyped": "adapters.untyped.type: required key missing",
        "not-a-table": "adapters.not-a-table: expected a table",
    }
    for name, fragment in expected.items():
        assert fragment in str(errors[name]), name
        assert "\n" not in str(errors[name])
    assert adapters["meter-2"].config.unit_id == 2  # type: ignore[attr-defined]


def test_build_loads_each_plugin_once(partner: list[AdapterPlugin]) -> None:
    tables = {f"m{i}": {"type": "missing-module"} for i in range(3)}
    _, errors = build_adapters(tables, partner)
    causes = {id(error.__cause__) for error in errors.values()}
    assert len(causes) == 1  # one import attempt, one recorded failure shared by all three


def test_build_refuses_a_type_registered_twice(install: Install) -> None:
    install("ecgw-test-copycat", {"simulated": "ecgw_test_copycat:Simulated"})
    _, errors = build_adapters({"heater": {"type": "simulated"}})
    message = str(errors["heater"])
    assert "registered more than once" in message
    assert "ecgw (adapters.simulated:SimulatedAdapter)" in message
    assert "ecgw-test-copycat (ecgw_test_copycat:Simulated)" in message


def test_build_nothing() -> None:
    assert build_adapters({}, []) == ({}, {})
