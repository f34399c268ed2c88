"""The config's JSON Schema and its Markdown reference, both from the code that reads it.

The schema walks the msgspec types the loader converts to (:class:`gateway.config.Config`
and the ``Config`` class of every installed adapter plugin), so it cannot drift from what
``ecgw check`` accepts: each ``[adapters.NAME]`` table is one of the adapters' schemas,
chosen by its ``type``. Each numeric key's range comes from
:data:`gateway.config_rules.LIMITS`, each key's description from the attribute docstring
under it in the source. ``msgspec.json.schema`` itself is not used because it cannot write
the defaults of :class:`~gateway.timeutil.Duration` keys; :mod:`msgspec.inspect` gives the
same type tree.

``ecgw config schema`` prints the schema; ``python -m gateway.config_schema --markdown``
writes ``docs/configuration.md`` (a test fails when the committed file is stale).
"""

from __future__ import annotations

import argparse
import ast
import functools
import inspect
import json
import sys
import textwrap
from collections.abc import Iterator, Mapping
from typing import Any

import msgspec
import msgspec.inspect as mi

from gateway.config import LIMITS, Config
from gateway.timeutil import Duration, format_duration

__all__ = ["adapter_configs", "cmd_config_schema", "config_schema", "markdown", "schema_json"]

JsonSchema = dict[str, Any]
LOADER_ONLY = frozenset(
    {"client_secret", "webhook_secret", "hub_password", "upstream_password", "source"}
)
"""Config fields the loader fills in (typed Secret wrappers, the file name): not TOML keys."""
DURATION_PATTERN = r"^\s*[0-9]+(\.[0-9]+)?\s*(ms|s|m|h|d)?\s*$"
"""A duration as written: ``"500ms"``, ``"10s"``, ``"5m"``, ``"1h"``, ``"2d"`` (or seconds)."""


BUILTIN_DISTRIBUTION = "ecgw"


def adapter_configs(*, builtin_only: bool = False) -> dict[str, type[msgspec.Struct]]:
    """Each installed adapter type (the entry-point name) and its Config class; a plugin that
    cannot be loaded is left out (``ecgw check`` names it when a config uses it).
    ``builtin_only``: the adapters shipped with ECGW, as the docs describe them."""
    from gateway.errors import AdapterLoadError
    from gateway.metering.discovery import find_plugins, load_plugin

    found: dict[str, type[msgspec.Struct]] = {}
    for plugin in find_plugins():
        if builtin_only and plugin.distribution != BUILTIN_DISTRIBUTION:
            continue
        try:
            found[plugin.name] = load_plugin(plugin).Config
        except AdapterLoadError:
            continue
    return found


# --- the type tree to JSON Schema ---------------------------------------------------------------


@functools.cache
def _field_docs(cls: type) -> dict[str, str]:
    """The attribute docstrings of a class (a string literal right under a field)."""
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):
        return {}
    docs: dict[str, str] = {}
    body = ast.parse(source).body[0]
    assert isinstance(body, ast.ClassDef)
    for first, second in zip(body.body, body.body[1:], strict=False):
        if (
            isinstance(first, ast.AnnAssign)
            and isinstance(first.target, ast.Name)
            and isinstance(second, ast.Expr)
            and isinstance(second.value, ast.Constant)
            and isinstance(second.value.value, str)
        ):
            docs[first.target.id] = " ".join(second.value.value.split())
    return docs


def _numeric(kind: str, t: mi.IntType | mi.FloatType) -> JsonSchema:
    schema: JsonSchema = {"type": kind}
    for bound, key in (
        ("ge", "minimum"),
        ("gt", "exclusiveMinimum"),
        ("le", "maximum"),
        ("lt", "exclusiveMaximum"),
    ):
        value = getattr(t, bound)
        if value is not None and abs(value) < sys.float_info.max:
            schema[key] = value
    return schema


def _type(t: mi.Type) -> JsonSchema:
    match t:
        case mi.CustomType(cls=cls) if issubclass(cls, Duration):
            return {"type": ["string", "number"], "pattern": DURATION_PATTERN, "minimum": 0}
        case mi.StrType():
            schema: JsonSchema = {"type": "string"}
            if t.min_length is not None:
                schema["minLength"] = t.min_length
            if t.pattern is not None:
                schema["pattern"] = t.pattern
            return schema
        case mi.BoolType():
            return {"type": "boolean"}
        case mi.IntType():
            return _numeric("integer", t)
        case mi.FloatType():
            return _numeric("number", t)
        case mi.NoneType():
            return {"type": "null"}
        case mi.LiteralType(values=values) | mi.EnumType(cls=values):
            return {"enum": [getattr(v, "value", v) for v in values]}
        case mi.ListType(item_type=item):
            return {"type": "array", "items": _type(item)}
        case mi.DictType(value_type=value):
            return {"type": "object", "additionalProperties": _type(value)}
        case mi.UnionType(types=types):
            return {"anyOf": [_type(member) for member in types]}
        case mi.StructType():
            return _struct(t)
        case mi.AnyType():
            return {}
    raise TypeError(f"no JSON Schema for {t!r}")


def _default(value: Any) -> Any:
    if isinstance(value, Duration):
        return format_duration(value)
    return msgspec.to_builtins(value)


def _struct(t: mi.StructType, *, limits_prefix: str | None = None) -> JsonSchema:
    docs = _field_docs(t.cls)
    properties: dict[str, JsonSchema] = {}
    required: list[str] = []
    for field in t.fields:
        if t.cls is Config and field.name in LOADER_ONLY:
            continue
        schema = _type(field.type)
        if field.name in docs:
            schema["description"] = docs[field.name]
        if field.default is not msgspec.NODEFAULT:
            schema["default"] = _default(field.default)
        elif field.default_factory is not msgspec.NODEFAULT:
            schema["default"] = _default(field.default_factory())
        if field.required:
            required.append(field.encode_name)
        limit = LIMITS.get(f"{limits_prefix}.{field.name}") if limits_prefix else None
        if limit is not None:
            _add_limit(schema, limit)
        properties[field.encode_name] = schema
    out: JsonSchema = {"type": "object", "properties": properties}
    if required:
        out["required"] = required
    if t.forbid_unknown_fields:
        out["additionalProperties"] = False
    return out


def _add_limit(schema: JsonSchema, limit: Any) -> None:
    """A range from LIMITS: as minimum/maximum where the key is a plain number, in words."""
    text = f"Range: {limit.describe()} ({limit.why})."
    schema["description"] = f"{schema.get('description', '')} {text}".strip()
    if limit.kind != "duration":
        schema["minimum" if limit.low_inclusive else "exclusiveMinimum"] = limit.low
        schema["maximum"] = limit.high


def _section(t: mi.Type, prefix: str) -> mi.Type:
    """The struct inside ``T | None`` / ``list[T]`` of a top-level key, else ``t``."""
    match t:
        case mi.UnionType(types=types):
            structs = [m for m in types if isinstance(m, mi.StructType)]
            return structs[0] if len(structs) == 1 else t
        case mi.ListType(item_type=mi.StructType() as item):
            return item
    return t


def _top_level(name: str, field: mi.Field) -> JsonSchema:
    """One top-level key, with the ranges of LIMITS (``poll.interval``, ``resources[].max_kw``)."""
    inner = _section(field.type, name)
    if not isinstance(inner, mi.StructType):
        return _type(field.type)
    prefix = f"{name}[]" if isinstance(field.type, mi.ListType) else name
    section = _struct(inner, limits_prefix=prefix)
    if isinstance(field.type, mi.ListType):
        return {"type": "array", "items": section}
    return section


def _adapter(name: str, cls: type[msgspec.Struct]) -> JsonSchema:
    info = mi.type_info(cls)
    assert isinstance(info, mi.StructType)
    schema = _struct(info)
    schema["title"] = f"adapter type {name!r}"
    schema["properties"]["type"] = {"const": name}
    return schema


def config_schema(adapters: Mapping[str, type[msgspec.Struct]] | None = None) -> JsonSchema:
    """The JSON Schema of the whole TOML config; ``adapters`` default to the installed ones."""
    adapters = adapter_configs() if adapters is None else adapters
    info = mi.type_info(Config)
    assert isinstance(info, mi.StructType)
    properties: dict[str, JsonSchema] = {}
    for field in info.fields:
        if field.name in LOADER_ONLY:
            continue
        if field.name == "adapters":
            properties["adapters"] = {
                "type": "object",
                "description": "Device adapters by name: each table's `type` picks its keys.",
                "additionalProperties": {
                    "oneOf": [_adapter(name, cls) for name, cls in sorted(adapters.items())]
                },
            }
            continue
        properties[field.encode_name] = _top_level(field.name, field)
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "ECGW configuration (TOML)",
        "type": "object",
        "properties": properties,
        "additionalProperties": False,
    }


def schema_json(schema: JsonSchema | None = None) -> str:
    return json.dumps(config_schema() if schema is None else schema, indent=2) + "\n"


# --- Markdown -----------------------------------------------------------------------------------


def _type_text(schema: JsonSchema) -> str:
    if "const" in schema:
        return f"`{json.dumps(schema['const'])}`"
    if "enum" in schema:
        return " or ".join(f"`{json.dumps(v)}`" for v in schema["enum"])
    if "anyOf" in schema:
        return " or ".join(_type_text(s) for s in schema["anyOf"] if s.get("type") != "null")
    kind = schema.get("type")
    if schema.get("pattern") == DURATION_PATTERN:
        return "duration"
    if kind == "array":
        return f"list of {_type_text(schema.get('items', {}))}"
    if kind == "object":
        return "table"
    return str(kind) if kind else "any"


def _cell(text: str) -> str:
    """A table cell: reST ````code```` as Markdown, pipes escaped, one line."""
    return text.replace("``", "`").replace("|", "\\|").replace("\n", " ")


def _table(heading: str, path: str, schema: JsonSchema) -> Iterator[str]:
    """One Markdown section per table (``path``: its dotted name), then its nested tables."""
    yield f"## `{heading}`\n"
    yield "| Key | Type | Default | Description |"
    yield "|---|---|---|---|"
    required = set(schema.get("required", []))
    nested: list[tuple[str, JsonSchema]] = []
    for key, prop in schema.get("properties", {}).items():
        default = "required" if key in required else ""
        if prop.get("default") is not None:
            default = f"`{json.dumps(prop['default'])}`"
        described = prop.get("description", "")
        yield f"| `{key}` | {_cell(_type_text(prop))} | {_cell(default)} | {_cell(described)} |"
        for sub, item in _struct_children(prop):
            nested.append((f"{path}.{key}{sub}", item))
    yield ""
    for name, sub_schema in nested:
        yield from _table(f"[{name}]", name, sub_schema)


def _struct_children(prop: JsonSchema) -> Iterator[tuple[str, JsonSchema]]:
    """Struct schemas held by a key: directly, in a list, in a table of tables, or optional."""
    for option in prop.get("anyOf", [prop]):
        if "properties" in option:
            yield "", option
        elif "properties" in option.get("items", {}):
            yield "[]", option["items"]
        elif "properties" in (option.get("additionalProperties") or {}):
            yield ".NAME", option["additionalProperties"]


INTRO = """\
# Configuration reference

<!-- Generated by `python -m gateway.config_schema --markdown > docs/configuration.md`;
     do not edit (tests/test_config_schema.py fails when this file is stale). -->

The gateway reads one TOML file (`ecgw -c FILE` or `$ECGW_CONFIG`); `ecgw check` validates
it and `ecgw config schema` prints its JSON Schema. Unknown keys are errors naming the key.
Durations are written `"500ms"`, `"10s"`, `"5m"`, `"1h"`, `"2d"` or as seconds. Relative
paths are taken from the config file's folder. The secrets (`api.client_secret`,
`webhook.secret`) can also come from a file (`*_file`) or the environment
(`ECGW_CLIENT_SECRET`, `ECGW_WEBHOOK_SECRET`, which win over the file).
"""


def markdown(schema: JsonSchema | None = None) -> str:
    """``docs/configuration.md``: one section per table, the adapters' tables by type (by
    default the built-in adapters, so the file does not depend on what else is installed)."""
    schema = config_schema(adapter_configs(builtin_only=True)) if schema is None else schema
    lines = [INTRO]
    for key, prop in schema["properties"].items():
        if key == "adapters":
            lines.append("## `[adapters.NAME]`\n")
            lines.append(prop["description"] + " The installed adapter types:\n")
            for option in prop["additionalProperties"]["oneOf"]:
                name = option["properties"]["type"]["const"]
                heading = f"[adapters.NAME] type = {json.dumps(name)}"
                lines.extend(_table(heading, "adapters.NAME", option))
            continue
        for suffix, section in _struct_children(prop):
            brackets = "[[{}]]" if suffix == "[]" else "[{}]"
            lines.extend(_table(brackets.format(key), key, section))
    return "\n".join(lines).rstrip() + "\n"


async def cmd_config_schema(args: argparse.Namespace, config: object) -> int:
    """``ecgw config schema``: the JSON Schema on stdout (no config file needed)."""
    sys.stdout.write(markdown() if args.markdown else schema_json())
    sys.stdout.flush()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    sys.stdout.write(markdown() if args == ["--markdown"] else schema_json())
    return 0


if __name__ == "__main__":
    sys.exit(main())
