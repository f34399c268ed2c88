"""JSON paths as written in config: where in a decoded payload a value is.

The small, unambiguous subset every device needs, nothing that can match
more than one value::

    ENERGY.Total            aenergy.total           $.a.b[0]
    ENERGY.Total[1]         $['switch:0'].apower    $   (the whole payload)

A leading ``$`` is optional. Names are separated by ``.``; ``[n]`` indexes an
array; ``['name']`` or ``["name"]`` quotes a name holding ``.`` or ``[``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["MISSING", "JsonPath"]

_NAME = re.compile(r"[^.\[\]]+")
_BRACKET = re.compile(r"""\[(?:(\d+)|'([^']*)'|"([^"]*)")\]""")


class _Missing:
    __slots__ = ()

    def __repr__(self) -> str:
        return "MISSING"


MISSING = _Missing()
"""What :meth:`JsonPath.find` returns when the payload has nothing at the path."""


@dataclass(frozen=True, slots=True)
class JsonPath:
    text: str
    steps: tuple[str | int, ...]

    @classmethod
    def parse(cls, text: str) -> JsonPath:
        """Raises ValueError naming the position that does not parse."""
        source = text.strip()
        if not source:
            raise ValueError("a JSON path cannot be empty")
        steps: list[str | int] = []
        need_dot = source.startswith("$")
        pos = 1 if need_dot else 0
        while pos < len(source):
            if source[pos] == "[":
                bracket = _BRACKET.match(source, pos)
                if bracket is None:
                    raise ValueError(f"expected [n], ['name'] or [\"name\"] at {source[pos:]!r}")
                index, single, double = bracket.groups()
                steps.append(int(index) if index is not None else (single or double or ""))
                pos = bracket.end()
            else:
                if need_dot:
                    if source[pos] != ".":
                        raise ValueError(f"expected '.' or '[' at {source[pos:]!r}")
                    pos += 1
                name = _NAME.match(source, pos)
                if name is None:
                    raise ValueError(f"expected a name at {source[pos:]!r} in {text!r}")
                steps.append(name.group())
                pos = name.end()
            need_dot = True
        return cls(text, tuple(steps))

    def find(self, document: object) -> object:
        """The value at this path, or :data:`MISSING`."""
        node = document
        for step in self.steps:
            if isinstance(step, int):
                if not isinstance(node, list) or step >= len(node):
                    return MISSING
                node = node[step]
            else:
                if not isinstance(node, dict) or step not in node:
                    return MISSING
                node = node[step]
        return node

    def __str__(self) -> str:
        return self.text
