"""Hints for config errors: the nearest valid key, the valid values of a choice.

msgspec names the key it refused (``poll.intervall: unknown key``) but not what was
meant, and says ``Invalid enum value 'eastron-sdm360'`` without the choices. Given
the type the table was converted to, :func:`with_hint` follows the error's path
through the type (``msgspec.inspect``) and adds ``(did you mean 'interval'?)`` or
``expected one of: import, net``. Pure: types and strings in, a string out; a
path it cannot follow leaves the message as it was.
"""

from __future__ import annotations

import difflib
import re
from typing import Any

import msgspec.inspect as mi

__all__ = ["with_hint"]

_STEP = re.compile(r"\[(?:\d+|\.\.\.)\]|[^.\[\]]+")
_ENUM_VALUE = re.compile(r"^Invalid enum value (?P<value>.+)$")
MAX_LISTED = 24  # choices listed in full; a longer list is cut with "..."


def with_hint(type_: Any, path: str, message: str) -> str:
    """``message`` (from :func:`gateway.errors.validation_parts`) with a hint, if one fits.

    ``path`` is the dotted path into a value of ``type_`` (``resources[0].direction``);
    for ``unknown key`` it ends with the unknown key itself.
    """
    try:
        if message == "unknown key":
            parent, _, key = path.rpartition(".")
            names = _field_names(_at(mi.type_info(type_), parent))
            return _nearest(message, key.split("[")[0], names)
        if (match := _ENUM_VALUE.match(message)) is not None:
            values = _choices(_at(mi.type_info(type_), path))
            if values:
                return f"{message}; expected one of: {_listed(values)}" + _closest(
                    match["value"].strip("'\""), values
                )
    except (TypeError, ValueError, RecursionError):  # a type msgspec.inspect cannot take
        pass
    return message


def _at(info: mi.Type, path: str) -> mi.Type | None:
    """The type at ``path`` inside ``info``; None where the path leaves the types."""
    node: mi.Type | None = info
    for step in _STEP.findall(path):
        node = _step(node, step)
    return node


def _step(node: mi.Type | None, step: str) -> mi.Type | None:
    for option in _options(node):
        if step.startswith("[") and isinstance(option, mi.ListType | mi.SetType):
            return option.item_type
        if step == "[...]" and isinstance(option, mi.DictType):
            return option.value_type
        if isinstance(option, mi.StructType):
            for field in option.fields:
                if step in (field.encode_name, field.name):
                    return field.type
    return None


def _options(node: mi.Type | None) -> list[mi.Type]:
    """``node``, or each type of a union (``X | None``)."""
    if isinstance(node, mi.UnionType):
        return [t for t in node.types if not isinstance(t, mi.NoneType)]
    if isinstance(node, mi.Metadata):
        return _options(node.type)
    return [] if node is None else [node]


def _field_names(node: mi.Type | None) -> list[str]:
    return [f.encode_name for o in _options(node) if isinstance(o, mi.StructType) for f in o.fields]


def _choices(node: mi.Type | None) -> list[str]:
    values: list[str] = []
    for option in _options(node):
        if isinstance(option, mi.LiteralType):
            values += [str(v) for v in option.values]
        elif isinstance(option, mi.EnumType):
            values += [str(member.value) for member in option.cls]
    return values


def _nearest(message: str, key: str, names: list[str]) -> str:
    if not names:
        return message
    close = difflib.get_close_matches(key, names, n=1, cutoff=0.6)
    if close:
        return f"{message} (did you mean {close[0]!r}?)"
    return f"{message} (valid keys: {_listed(sorted(names))})"


def _closest(value: str, values: list[str]) -> str:
    close = difflib.get_close_matches(value, values, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _listed(values: list[str]) -> str:
    shown = ", ".join(values[:MAX_LISTED])
    return shown + (", ..." if len(values) > MAX_LISTED else "")
