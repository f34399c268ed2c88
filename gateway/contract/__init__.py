"""Validate JSON against the Energy Coordination API's OpenAPI schemas.

The packaged ``ec-sandbox-openapi.json`` is Volue's sandbox document, byte for byte. It is
OpenAPI 3.0, so before :mod:`jsonschema` (Draft 2020-12) can check anything it is translated,
without editing the file:

* ``$ref`` to ``#/components/schemas/X`` is inlined (the graph has no cycles);
* ``nullable: true`` admits ``null``;
* ``allOf: [base]`` on a variant has the base's ``properties`` and ``required`` merged in, so the
  variant's ``additionalProperties: false`` does not reject the base's fields; a variant named in
  its base's discriminator mapping pins ``payloadType`` to its tag;
* a discriminated base (``SparkEventPayload``, ``SparkReportPayload``) and a ``oneOf`` over its
  variants become a dispatch on the tag: only the variant the tag names is checked, and an
  unknown or missing tag is reported at ``payloadType`` with the allowed values;
* ``format: date-time`` (RFC 3339 with an offset, up to 7 fractional digits as .NET writes),
  ``time-span`` (.NET ``[d.]hh:mm:ss[.fffffff]``), ``date`` and ``uuid`` are checked; ``int32``,
  ``double`` and ``uri`` are not.

Usage::

    violations("PostReportRequest", body)   # -> [Violation(path="payloads[0].resourceId", ...)]
    check("PostReportRequest", body, error=ReportInvalid)

Validators are built once per schema name and cached. A valid instance is recognised by compiled
closures (about ten times faster than jsonschema); only an invalid one is handed to jsonschema,
which finds and words the violations.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from importlib import resources
from typing import Any

from jsonschema import Draft202012Validator, ValidationError, validators

from gateway.errors import WireError

__all__ = [
    "Violation",
    "check",
    "json_schema",
    "openapi_document",
    "schema_names",
    "violations",
]

_DOCUMENT = "ec-sandbox-openapi.json"
_REF_PREFIX = "#/components/schemas/"
_OPENAPI_ONLY = frozenset({"nullable", "discriminator", "example", "examples", "xml"})

JsonSchema = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Violation:
    """One way an instance breaks a schema. ``path`` is ``""`` for the root."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


def violations(schema_name: str, instance: object) -> list[Violation]:
    """Every violation of component schema ``schema_name``, shallowest first (stable)."""
    if _fast_check(schema_name)(instance):
        return []
    errors = sorted(_validator(schema_name).iter_errors(instance), key=lambda e: len(e.path))
    return [Violation(_json_path(error.path), error.message) for error in errors]


def check(schema_name: str, instance: object, *, error: type[WireError] = WireError) -> None:
    """Raise ``error`` naming the field of the first violation, if there is one."""
    found = violations(schema_name, instance)
    if found:
        raise error(str(found[0]), field=found[0].path)


def json_schema(schema_name: str) -> JsonSchema:
    """The translated, self-contained JSON Schema for one component (shared; do not mutate)."""
    return _translator().component(schema_name)


def schema_names() -> list[str]:
    """The component schema names the document defines."""
    return sorted(_components())


@functools.cache
def openapi_document() -> Mapping[str, Any]:
    """The packaged OpenAPI document, parsed once."""
    text = resources.files(__package__).joinpath(_DOCUMENT).read_text(encoding="utf-8")
    document: dict[str, Any] = json.loads(text)
    return document


def _components() -> Mapping[str, JsonSchema]:
    schemas: Mapping[str, JsonSchema] = openapi_document()["components"]["schemas"]
    return schemas


# ---------------------------------------------------------------------------------------------
# Formats: pure predicates on strings.

_DATE_TIME = re.compile(
    r"^(\d{4}-\d{2}-\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(\.\d{1,7})?([Zz]|[+-]\d{2}:\d{2})$"
)
_TIME_SPAN = re.compile(r"^(?:\d+\.)?([01]\d|2[0-3]):([0-5]\d):([0-5]\d)(?:\.\d{1,7})?$")
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_UUID = re.compile(r"^[0-9a-fA-F]{8}-(?:[0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}$")


@functools.lru_cache(maxsize=4096)
def _is_date_time(text: str) -> bool:
    m = _DATE_TIME.match(text)
    if m is None:
        return False
    date, hour, minute, second, _, offset = m.groups()
    if int(second) > 60:  # RFC 3339 allows a leap second
        return False
    try:
        dt.date.fromisoformat(date)
        dt.time(int(hour), int(minute), min(int(second), 59))
    except ValueError:
        return False
    if offset in ("Z", "z"):
        return True
    return int(offset[1:3]) < 24 and int(offset[4:6]) < 60


def _is_date(text: str) -> bool:
    if _DATE.match(text) is None:
        return False
    try:
        dt.date.fromisoformat(text)
    except ValueError:
        return False
    return True


_FORMATS: dict[str, tuple[Callable[[str], bool], str]] = {
    "date-time": (_is_date_time, "an ISO-8601 date-time with offset, e.g. 2025-03-11T10:00:00Z"),
    "time-span": (lambda s: _TIME_SPAN.match(s) is not None, "a time-span like '01:00:00'"),
    "date": (_is_date, "a date like 2025-03-11"),
    "uuid": (lambda s: _UUID.match(s) is not None, "a UUID"),
}


# ---------------------------------------------------------------------------------------------
# Keywords whose errors point at the offending field rather than at its parent object.


def _required(
    validator: Any, required: list[str], instance: Any, schema: JsonSchema
) -> Iterator[ValidationError]:
    if not validator.is_type(instance, "object"):
        return
    for name in required:
        if name not in instance:
            yield ValidationError("required property is missing", path=[name])


def _additional_properties(
    validator: Any, additional: Any, instance: Any, schema: JsonSchema
) -> Iterator[ValidationError]:
    if not validator.is_type(instance, "object") or additional is True:
        return
    known = schema.get("properties", {})
    extras = [name for name in instance if name not in known]
    if additional is False:
        allowed = ", ".join(known) or "none"
        for name in extras:
            yield ValidationError(f"unexpected property (allowed: {allowed})", path=[name])
        return
    for name in extras:
        yield from validator.descend(instance[name], additional, path=name)


def _format(
    validator: Any, fmt: str, instance: Any, schema: JsonSchema
) -> Iterator[ValidationError]:
    known = _FORMATS.get(fmt)
    if known is None or not isinstance(instance, str):
        return
    predicate, expected = known
    if not predicate(instance):
        yield ValidationError(f"{instance!r} is not {expected}")


_Validator = validators.extend(
    Draft202012Validator,
    validators={
        "required": _required,
        "additionalProperties": _additional_properties,
        "format": _format,
    },
)


@functools.cache
def _validator(schema_name: str) -> Any:
    return _Validator(json_schema(schema_name))


@functools.cache
def _fast_check(schema_name: str) -> _Check:
    """A compiled accept-path; ``False`` means "ask jsonschema", which has the last word."""
    return _compile(json_schema(schema_name)) or _never


def _json_path(parts: Iterable[str | int]) -> str:
    text = ""
    for part in parts:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else part
    return text


# ---------------------------------------------------------------------------------------------
# Fast accept-path. jsonschema spends ~17 us per subschema it descends into, several ms for a
# day of points; the sandbox validates every report it receives. This compiles the keywords the
# translation produces into closures that only answer valid/invalid. Anything it does not know
# compiles to None and the slow path decides; a property test holds the two to the same answer.

_Check = Callable[[Any], bool]
_ANNOTATIONS = frozenset({"deprecated", "readOnly", "writeOnly", "description", "title"})


def _never(_: Any) -> bool:
    return False


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)  # a tuple is faster


def _is_integer(x: Any) -> bool:
    if isinstance(x, float):
        return x.is_integer()
    return isinstance(x, int) and not isinstance(x, bool)


_TYPES: dict[str, _Check] = {
    "object": lambda x: isinstance(x, dict),
    "array": lambda x: isinstance(x, list),
    "string": lambda x: isinstance(x, str),
    "number": _is_number,
    "integer": _is_integer,
    "boolean": lambda x: isinstance(x, bool),
    "null": lambda x: x is None,
}


def _compile(schema: Any) -> _Check | None:
    if schema is True:
        return _always
    if not isinstance(schema, dict):
        return None
    keys = [k for k in schema if k not in _ANNOTATIONS and k not in ("then", "else")]
    checks: list[_Check] = []
    if schema.get("type") == "object":  # the common shapes get one closure, not four
        whole = _compile_object(schema)
        if whole is None:
            return None
        checks.append(whole)
        keys = [k for k in keys if k not in _OBJECT_KEYWORDS]
    elif schema.get("type") == "string" and "format" in schema:
        predicate = _FORMATS.get(schema["format"], (_always, ""))[0]
        checks.append(lambda x: isinstance(x, str) and predicate(x))
        keys = [k for k in keys if k not in ("type", "format")]
    for key in keys:
        compiled = _compile_keyword(key, schema[key], schema)
        if compiled is None:
            return None
        checks.append(compiled)
    return _every(checks)


_OBJECT_KEYWORDS = frozenset({"type", "required", "properties", "additionalProperties"})


def _compile_object(schema: JsonSchema) -> _Check | None:
    required = tuple(schema.get("required", ()))
    additional = schema.get("additionalProperties", True)
    compiled = {name: _compile(sub) for name, sub in schema.get("properties", {}).items()}
    extra = None if additional is False else _compile(additional)
    if any(c is None for c in compiled.values()) or (extra is None and additional is not False):
        return None

    def check(x: Any) -> bool:
        if not isinstance(x, dict):
            return False
        for name in required:
            if name not in x:
                return False
        for name, value in x.items():
            sub = compiled.get(name, extra)
            if sub is None or not sub(value):
                return False
        return True

    return check


def _compile_keyword(key: str, value: Any, schema: JsonSchema) -> _Check | None:
    """One keyword beside the others; object keywords are handled by :func:`_compile_object`."""
    match key:
        case "type":
            return _some([_TYPES[t] for t in ([value] if isinstance(value, str) else value)])
        case "items":
            return _compile_items(value)
        case "enum" | "const":
            allowed = value if key == "enum" else [value]
            if not all(isinstance(a, str) or a is None for a in allowed):
                return None
            return lambda x: (x is None or isinstance(x, str)) and x in allowed
        case "format":
            known = _FORMATS.get(value)
            predicate = known[0] if known else _always
            return lambda x: not isinstance(x, str) or predicate(x)
        case "allOf" | "anyOf":
            parts = [_compile(sub) for sub in value]
            if any(p is None for p in parts):
                return None
            return (_every if key == "allOf" else _some)(parts)  # type: ignore[arg-type]
        case "if":
            cond, then = _compile(value), _compile(schema.get("then", True))
            otherwise = _compile(schema.get("else", True))
            if cond is None or then is None or otherwise is None:
                return None
            return lambda x: then(x) if cond(x) else otherwise(x)
    return None


def _always(_: Any) -> bool:
    return True


def _every(checks: list[_Check]) -> _Check:
    if len(checks) == 1:
        return checks[0]

    def check(x: Any) -> bool:
        for c in checks:  # noqa: SIM110 - a plain loop beats all(<genexpr>) on this hot path
            if not c(x):
                return False
        return True

    return check


def _some(checks: list[_Check]) -> _Check:
    if len(checks) == 1:
        return checks[0]

    def check(x: Any) -> bool:
        for c in checks:  # noqa: SIM110 - a plain loop beats any(<genexpr>) on this hot path
            if c(x):
                return True
        return False

    return check


def _compile_items(schema: Any) -> _Check | None:
    item = _compile(schema)
    if item is None:
        return None

    def check(x: Any) -> bool:
        if isinstance(x, list):
            for element in x:
                if not item(element):
                    return False
        return True

    return check


# ---------------------------------------------------------------------------------------------
# OpenAPI 3.0 -> JSON Schema 2020-12.


@functools.cache
def _translator() -> _Translator:
    return _Translator(_components())


class _Translator:
    """Turns component schemas into self-contained JSON Schema, memoised per component."""

    def __init__(self, components: Mapping[str, JsonSchema]) -> None:
        self._components = components
        self._done: dict[str, JsonSchema] = {}
        self._active: list[str] = []

    def component(self, name: str) -> JsonSchema:
        if name in self._done:
            return self._done[name]
        if name not in self._components:
            raise ValueError(f"unknown schema {name!r}; see gateway.contract.schema_names()")
        if name in self._active:
            raise ValueError(f"schema {name!r} refers to itself: {' -> '.join(self._active)}")
        self._active.append(name)
        try:
            translated: JsonSchema = self._translate(self._components[name], name)
        finally:
            self._active.pop()
        self._done[name] = translated
        return translated

    def _translate(self, node: Any, name: str | None = None) -> Any:
        if not isinstance(node, dict):
            return node
        if "$ref" in node:
            return self.component(_ref_name(node["$ref"]))
        if "discriminator" in node:
            return self._dispatch(node["discriminator"], None)
        if "oneOf" in node and (base := self._common_base(node["oneOf"])) is not None:
            variants = [_ref_name(item["$ref"]) for item in node["oneOf"]]
            return self._dispatch(self._components[base]["discriminator"], variants)
        if "allOf" in node:
            node = self._merge_bases(node, name)
        out: JsonSchema = {}
        for key, value in node.items():
            if key in _OPENAPI_ONLY:
                continue
            if key == "properties":
                out[key] = {prop: self._translate(sub) for prop, sub in value.items()}
            elif key in ("items", "additionalProperties", "not"):
                out[key] = self._translate(value)
            elif key in ("allOf", "anyOf", "oneOf"):
                out[key] = [self._translate(sub) for sub in value]
            else:
                out[key] = value
        return _nullable(out) if node.get("nullable") is True else out

    def _merge_bases(self, node: JsonSchema, name: str | None) -> JsonSchema:
        merged = dict(node)
        properties: dict[str, Any] = {}
        required: list[str] = []
        rest = []
        for part in node["allOf"]:
            base = self._components[_ref_name(part["$ref"])] if "$ref" in part else part
            if "properties" not in base:
                rest.append(part)
                continue
            properties.update(base["properties"])
            required += [r for r in base.get("required", []) if r not in required]
            tag = _tag_for(base.get("discriminator"), name)
            if tag is not None:
                properties[base["discriminator"]["propertyName"]] = {"const": tag}
        properties.update(node.get("properties", {}))
        required += [r for r in node.get("required", []) if r not in required]
        merged["properties"] = properties
        if required:
            merged["required"] = required
        if rest:
            merged["allOf"] = rest
        else:
            del merged["allOf"]
        return merged

    def _common_base(self, items: list[Any]) -> str | None:
        bases = set()
        for item in items:
            if not isinstance(item, dict) or "$ref" not in item:
                return None
            variant = self._components.get(_ref_name(item["$ref"]), {})
            refs = [p["$ref"] for p in variant.get("allOf", []) if "$ref" in p]
            found = [r for r in refs if "discriminator" in self._components[_ref_name(r)]]
            if len(found) != 1:
                return None
            bases.add(_ref_name(found[0]))
        return bases.pop() if len(bases) == 1 else None

    def _dispatch(self, discriminator: JsonSchema, variants: list[str] | None) -> JsonSchema:
        prop = discriminator["propertyName"]
        mapping = {
            tag: _ref_name(ref)
            for tag, ref in discriminator["mapping"].items()
            if variants is None or _ref_name(ref) in variants
        }
        branches = [
            {
                "if": {"type": "object", "required": [prop], "properties": {prop: {"const": tag}}},
                "then": self.component(variant),
            }
            for tag, variant in mapping.items()
        ]
        return {
            "type": "object",
            "required": [prop],
            "properties": {prop: {"enum": list(mapping)}},
            "allOf": branches,
        }


def _ref_name(ref: str) -> str:
    if not ref.startswith(_REF_PREFIX):
        raise ValueError(f"unsupported $ref {ref!r}")
    return ref[len(_REF_PREFIX) :]


def _tag_for(discriminator: JsonSchema | None, name: str | None) -> str | None:
    if discriminator is None or name is None:
        return None
    tags = [t for t, ref in discriminator.get("mapping", {}).items() if _ref_name(ref) == name]
    return tags[0] if len(tags) == 1 else None


def _nullable(schema: JsonSchema) -> JsonSchema:
    """OpenAPI 3.0 ``nullable: true`` -> JSON Schema that also admits ``null``."""
    out = dict(schema)
    kind = out.get("type")
    if isinstance(kind, str):
        out["type"] = [kind, "null"]
    elif isinstance(kind, list):
        out["type"] = [*kind, "null"] if "null" not in kind else kind
    else:
        return {"anyOf": [out, {"type": "null"}]}
    if "enum" in out and None not in out["enum"]:
        out["enum"] = [*out["enum"], None]
    return out
