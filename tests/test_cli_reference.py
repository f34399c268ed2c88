"""docs/cli.md is the parser's own help: a new or changed command without it fails here."""

from __future__ import annotations

from pathlib import Path

from gateway.cli_reference import markdown

DOCS = Path(__file__).resolve().parents[1] / "docs" / "cli.md"


def test_docs_cli_md_is_up_to_date() -> None:
    assert DOCS.read_text() == markdown(), (
        "docs/cli.md is stale: run `python -m gateway.cli_reference > docs/cli.md`"
    )


def test_every_command_is_in_it() -> None:
    text = DOCS.read_text()
    for command in (
        "ecgw run",
        "ecgw status",
        "ecgw plan show",
        "ecgw api reconcile",
        "ecgw db backup",
        "ecgw config schema",
        "ecgw sandbox event",
    ):
        assert f"## `{command}`" in text, command
