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
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import msgspec

from gateway.config_hints import with_hint
from gateway.config_rules import key_name
from gateway.errors import AdapterLoadError, ConfigError, describe, validation_parts
from gateway.plugin import Adapter, AdapterConfig
from gateway.timeutil import Duration, format_duration

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
        raise AdapterLoadError(f"{plugin.describe()} failed to import: {describe(exc)}") from exc
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


MIN_POLL_INTERVAL = 0.01
"""An adapter's poll_interval and read_timeout are at least 10 ms: shorter is a busy loop."""


def convert_adapter_config(
    name: str, cls: type[Adapter], table: Mapping[str, Any]
) -> AdapterConfig:
    """``table`` (one ``[adapters.NAME]`` section, ``type`` included) as ``cls.Config``.

    Durations may be written ``"10s"``, ``"500ms"`` or as a number of seconds; each is
    finite and at most 100 years (:func:`gateway.timeutil.parse_duration`), and
    ``poll_interval`` and ``read_timeout`` at least 10 ms, even as a plugin's default.
    Raises ConfigError whose ``key`` is the offending ``adapters.NAME.KEY``.
    """
    base = f"adapters.{key_name(name)}"
    try:
        config = msgspec.convert(dict(table), type=cls.Config, dec_hook=_dec_hook)
    except msgspec.ValidationError as exc:
        path, message = validation_parts(exc)
        path = path or _named_key(cls.Config, message)
        message = with_hint(cls.Config, path, message)
        raise ConfigError(message, key=f"{base}.{path}" if path else base) from exc
    for field in ("poll_interval", "read_timeout"):
        value = getattr(config, field)
        if value is not None and not (MIN_POLL_INTERVAL <= value < math.inf):
            shown = format_duration(value) if 0 <= value < math.inf else repr(value)
            raise ConfigError(
                f"must be at least 10ms and finite, got {shown}", key=f"{base}.{field}"
            )
    return config


_NAMED_KEY = re.compile(r"`([a-z_][a-z0-9_]*)`")


def _named_key(config: type[Any], message: str) -> str:
    """The key a plugin's ``__post_init__`` names first in backticks (`` `timeout` must be
    longer than 0 s``), when it is one problem about one of its fields; else ``""``."""
    match = _NAMED_KEY.match(message)
    if match is None or "; " in message:
        return ""
    name = match.group(1)
    return name if name in getattr(config, "__struct_fields__", ()) else ""


def _dec_hook(tp: Any, obj: object) -> object:
    if tp is Duration:
        return Duration.parse(obj)  # its ValueError becomes a ValidationError with the path
    raise NotImplementedError(f"config values of type {tp!r} are not supported")


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
            f"{plugin.describe()} failed to initialise: {describe(exc)}", adapter=name
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
        error = ConfigError("expected a table", key=f"adapters.{key_name(name)}")
        raise AdapterLoadError(str(error), adapter=name) from error
    kind = table.get("type")
    if not isinstance(kind, str):
        error = ConfigError(
            "required key missing (the adapter type)", key=f"adapters.{key_name(name)}.type"
        )
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
