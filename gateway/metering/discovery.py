"""Find adapter plugins, load them, and build the configured adapters.

Two phases, after flake8's plugin finder:

1. **find** (:func:`find_plugins`): read the ``gateway.adapters`` entry points
   from installed distribution metadata into sorted, typed
   :class:`AdapterPlugin` records. No plugin code is imported.
2. **load** (:func:`load_plugin`): import one plugin and check that it looks
   like an adapter class. Any failure becomes an :class:`AdapterLoadError`
   naming the adapter type and the distribution that registered it.

:func:`build_adapters` then turns the ``[adapters.NAME]`` config tables into
adapter instances. Each adapter is built on its own: an unknown type, a plugin
that fails to import, a config table with a typo or a constructor that raises
is recorded against that adapter's name and the others are built anyway.
"""

from __future__ import annotations

import importlib.metadata
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import msgspec

from gateway.errors import AdapterLoadError, ConfigError
from gateway.plugin import Adapter, AdapterConfig
from gateway.timeutil import Duration

__all__ = [
    "GROUP",
    "AdapterPlugin",
    "build_adapters",
    "convert_adapter_config",
    "find_plugins",
    "load_plugin",
]

GROUP = "gateway.adapters"


@dataclass(frozen=True, order=True)
class AdapterPlugin:
    """One entry point of the adapter group: ``name`` is the config ``type``."""

    name: str
    value: str  # "module:attribute"
    distribution: str | None  # the distribution that registered it, if known

    def describe(self) -> str:
        """``adapter type 'x' from distribution 'y'``: how errors name this plugin."""
        dist = repr(self.distribution) if self.distribution else "unknown"
        return f"adapter type {self.name!r} from distribution {dist}"


# --- phase 1: find ------------------------------------------------------------------------------


def find_plugins(group: str = GROUP) -> list[AdapterPlugin]:
    """Every entry point in ``group``, sorted and deduplicated. Imports no plugin code."""
    found = {
        AdapterPlugin(
            name=ep.name,
            value=ep.value,
            distribution=ep.dist.name if ep.dist is not None else None,
        )
        for ep in importlib.metadata.entry_points(group=group)
    }
    return sorted(found)


# --- phase 2: load ------------------------------------------------------------------------------


def load_plugin(plugin: AdapterPlugin) -> type[Adapter]:
    """Import the plugin's class and check it looks like an adapter.

    Raises AdapterLoadError naming the type and the distribution; the import
    failure is chained as ``__cause__``.
    """
    entry_point = importlib.metadata.EntryPoint(plugin.name, plugin.value, GROUP)
    try:
        obj = entry_point.load()
    except BaseException as exc:  # plugin code: SystemExit at import is its failure too
        raise AdapterLoadError(f"{plugin.describe()} failed to import: {_one_line(exc)}") from exc
    problems = _adapter_class_problems(obj)
    if problems:
        raise AdapterLoadError(
            f"{plugin.describe()} is not an adapter ({plugin.value}): {'; '.join(problems)}"
        )
    return cast("type[Adapter]", obj)


def _adapter_class_problems(obj: object) -> list[str]:
    """What keeps ``obj`` from being an adapter class; empty if nothing does."""
    if not isinstance(obj, type):
        return [f"expected a class, got {type(obj).__name__}"]
    problems = []
    config = getattr(obj, "Config", None)
    if not (isinstance(config, type) and issubclass(config, AdapterConfig)):
        problems.append("no Config class subclassing gateway.plugin.AdapterConfig")
    methods = ("channels", "__aenter__", "__aexit__")
    problems.extend(f"no {m}() method" for m in methods if not callable(getattr(obj, m, None)))
    has_read = callable(getattr(obj, "read", None))
    has_stream = callable(getattr(obj, "stream", None))
    if has_read == has_stream:
        which = "both" if has_read else "neither"
        problems.append(f"it must define exactly one of read() or stream(), it defines {which}")
    return problems


# --- config -------------------------------------------------------------------------------------


def convert_adapter_config(
    name: str, cls: type[Adapter], table: Mapping[str, Any]
) -> AdapterConfig:
    """``table`` (one ``[adapters.NAME]`` section, ``type`` included) as ``cls.Config``.

    Durations may be written ``"10s"``, ``"500ms"`` or as a number of seconds.
    Raises ConfigError whose ``key`` is the offending ``adapters.NAME.KEY``.
    """
    base = f"adapters.{name}"
    try:
        config = msgspec.convert(dict(table), type=cls.Config, dec_hook=_dec_hook)
    except msgspec.ValidationError as exc:
        key, message = _config_error(base, str(exc))
        raise ConfigError(message, key=key) from exc
    if config.poll_interval <= 0:
        raise ConfigError("must be longer than 0 s", key=f"{base}.poll_interval")
    if config.read_timeout is not None and config.read_timeout <= 0:
        raise ConfigError("must be longer than 0 s", key=f"{base}.read_timeout")
    return config


def _dec_hook(tp: Any, obj: object) -> object:
    if tp is Duration:
        return Duration.parse(obj)  # its ValueError becomes a ValidationError with the path
    raise NotImplementedError(f"config values of type {tp!r} are not supported")


_VALIDATION = re.compile(r"^(?P<message>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.DOTALL)
_FIELD = re.compile(
    r"^Object (?P<what>contains unknown|missing required) field `(?P<field>[^`]*)`$"
)


def _config_error(base: str, text: str) -> tuple[str, str]:
    """A msgspec validation message as (dotted config key, one-line message)."""
    m = _VALIDATION.match(text)
    assert m is not None  # the pattern matches any text
    message, path = " ".join(m["message"].split()), m["path"] or ""
    key = base + path
    if field := _FIELD.match(message):
        key = f"{key}.{field['field']}"
        message = "unknown key" if field["what"] == "contains unknown" else "required key missing"
    return key, message


# --- build --------------------------------------------------------------------------------------


def build_adapters(
    tables: Mapping[str, Mapping[str, Any]],
    plugins: Sequence[AdapterPlugin] | None = None,
) -> tuple[dict[str, Adapter], dict[str, AdapterLoadError]]:
    """Build every configured adapter that can be built.

    Returns ``(adapters, errors)``, both keyed by adapter name; each name is in
    exactly one of them. Plugins are found (if not given) and loaded once each.
    """
    plugins = find_plugins() if plugins is None else plugins
    by_type: dict[str, list[AdapterPlugin]] = {}
    for plugin in sorted(set(plugins)):
        by_type.setdefault(plugin.name, []).append(plugin)
    loaded: dict[AdapterPlugin, type[Adapter] | AdapterLoadError] = {}
    adapters: dict[str, Adapter] = {}
    errors: dict[str, AdapterLoadError] = {}
    for name, table in tables.items():
        try:
            adapters[name] = _build_one(name, table, by_type, loaded)
        except AdapterLoadError as exc:
            errors[name] = exc
    return adapters, errors


def _build_one(
    name: str,
    table: Mapping[str, Any],
    by_type: Mapping[str, list[AdapterPlugin]],
    loaded: dict[AdapterPlugin, type[Adapter] | AdapterLoadError],
) -> Adapter:
    plugin = _plugin_for(name, table, by_type)
    if plugin not in loaded:
        try:
            loaded[plugin] = load_plugin(plugin)
        except AdapterLoadError as exc:
            loaded[plugin] = exc
    cls = loaded[plugin]
    if isinstance(cls, AdapterLoadError):
        raise AdapterLoadError(str(cls), adapter=name) from cls
    try:
        config = convert_adapter_config(name, cls, table)
    except ConfigError as exc:
        raise AdapterLoadError(str(exc), adapter=name) from exc
    try:
        adapter = cls(name, config)  # type: ignore[call-arg]  # the protocol cannot declare __init__
    except BaseException as exc:  # plugin code: whatever it raises is its failure
        raise AdapterLoadError(
            f"{plugin.describe()} failed to initialise: {_one_line(exc)}", adapter=name
        ) from exc
    if getattr(adapter, "config", None) is not config:
        # The runtime reads poll_interval and read_timeout from adapter.config.
        raise AdapterLoadError(
            f"{plugin.describe()} does not keep its config as the attribute 'config'",
            adapter=name,
        )
    return adapter


def _plugin_for(
    name: str, table: object, by_type: Mapping[str, list[AdapterPlugin]]
) -> AdapterPlugin:
    if not isinstance(table, Mapping):
        error = ConfigError("expected a table", key=f"adapters.{name}")
        raise AdapterLoadError(str(error), adapter=name) from error
    kind = table.get("type")
    if not isinstance(kind, str):
        error = ConfigError("required key missing (the adapter type)", key=f"adapters.{name}.type")
        raise AdapterLoadError(str(error), adapter=name) from error
    candidates = by_type.get(kind, [])
    if not candidates:
        known = ", ".join(sorted(by_type)) or "none installed"
        raise AdapterLoadError(f"unknown adapter type {kind!r} (known: {known})", adapter=name)
    if len(candidates) > 1:
        sources = "; ".join(f"{p.distribution or '?'} ({p.value})" for p in candidates)
        raise AdapterLoadError(
            f"adapter type {kind!r} is registered more than once: {sources}", adapter=name
        )
    return candidates[0]


def _one_line(exc: BaseException) -> str:
    """``ImportError: No module named 'x'``, on one line."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
