"""``docs/cli.md``: every ``ecgw`` command's help, generated from the parser itself.

    python -m gateway.cli_reference > docs/cli.md

``tests/test_cli_reference.py`` fails when the committed file no longer matches, so the
reference cannot drift from the code.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterator

__all__ = ["markdown"]

WIDTH = "100"  # argparse wraps help to $COLUMNS: fixed, so the output is the same everywhere


def _commands(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _commands(sub, (*path, name))


def markdown() -> str:
    from gateway.cli import _parser

    before = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = WIDTH
    try:
        parts = [
            "# `ecgw` command reference",
            "",
            "Generated from the command parser by `python -m gateway.cli_reference`; every",
            "command also takes `-c/--config FILE` (default: `$ECGW_CONFIG`). Exit codes: 0",
            "success, 2 a usage or config error (one line naming the key), 1 any other failure.",
        ]
        for path, parser in _commands(_parser()):
            title = " ".join(("ecgw", *path))
            parts += ["", f"## `{title}`", "", "```text", parser.format_help().rstrip(), "```"]
        return "\n".join(parts) + "\n"
    finally:
        if before is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = before


if __name__ == "__main__":
    print(markdown(), end="")
