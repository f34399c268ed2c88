"""Redaction of JSON log lines: the line is rendered, then searched once; a secret is never
let through, however a value spells it, and every line stays one valid JSON object."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
import structlog

from gateway import logs
from tests.kit.logs import json_logging_to_buffer

SECRETS = [
    "plain-secret-1234",
    'quo"te\\back',  # escaped by JSON: \" and \\
    "nøkkel-ålesund",  # escaped by JSON as \u00f8 ... (ensure_ascii)
    "tab\there-and\nnewline",
]


@pytest.fixture
def lines(monkeypatch: pytest.MonkeyPatch) -> Iterator[io.StringIO]:
    for out in json_logging_to_buffer(monkeypatch):
        logs.register_secrets(SECRETS)
        yield out


def logged(out: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.getvalue().splitlines()]


@pytest.mark.parametrize("secret", SECRETS)
def test_a_secret_anywhere_in_the_values_is_redacted(lines: io.StringIO, secret: str) -> None:
    log = structlog.get_logger("t")
    log.info(
        "x",
        top=f"before {secret} after",
        nested={"list": [1, {"deep": f"<{secret}>"}], "tuple": ("a", secret)},
    )
    text = lines.getvalue()
    assert json.dumps(secret)[1:-1] not in text and secret not in text
    (line,) = logged(lines)
    assert line["top"] == "before *** after"
    assert line["nested"]["list"][1]["deep"] == "<***>"
    assert line["nested"]["tuple"] == ["a", "***"]


def test_a_secret_inside_an_objects_text_goes_too(lines: io.StringIO) -> None:
    class Holder:
        def __repr__(self) -> str:
            return "Holder(plain-secret-1234)"

    structlog.get_logger("t").info("x", obj=Holder(), error=ValueError("plain-secret-1234"))
    assert "plain-secret-1234" not in lines.getvalue()
    (line,) = logged(lines)
    assert line["obj"] == "Holder(***)"


def test_a_bearer_credential_is_redacted_whatever_the_space(lines: io.StringIO) -> None:
    token = "eyJhbGciOiJIUzI1NiJ9abcdef"
    log = structlog.get_logger("t")
    for space in (" ", "\t", "\n  ", "\u2003"):
        log.warning("x", reply=f"echo Authorization: Bearer{space}{token}")
    assert token not in lines.getvalue()
    assert len(logged(lines)) == 4


def test_a_token_registered_later_is_looked_for(lines: io.StringIO) -> None:
    log = structlog.get_logger("t")
    log.info("x", value="tok-registered-later-0001")  # not yet a token: kept as is
    logs.register_token("tok-registered-later-0001")
    log.info("x", value="tok-registered-later-0001")
    first, second = logged(lines)
    assert first["value"] == "tok-registered-later-0001"
    assert second["value"] == "***"


def test_lines_without_anything_to_redact_are_left_as_rendered(lines: io.StringIO) -> None:
    events = [{"event_id": f"e-{i}", "payload_type": "PriceCurve"} for i in range(30)]
    structlog.get_logger("t").info("webhook.received", count=30, events=events)
    (line,) = logged(lines)
    assert line["events"] == events and line["count"] == 30


def test_library_records_are_redacted_the_same_way(lines: io.StringIO) -> None:
    (ours,) = [h for h in logging.getLogger().handlers if h.get_name() == "ecgw"]
    record = logging.LogRecord(
        "some.library", logging.WARNING, __file__, 1, "failed with %s", ('quo"te\\back',), None
    )
    line = json.loads(ours.format(record))
    assert line["event"] == "failed with ***" and line["logger"] == "some.library"


def test_a_value_that_cannot_be_written_never_raises_into_the_caller(lines: io.StringIO) -> None:
    class Broken:
        def __repr__(self) -> str:
            raise RuntimeError("no repr")

        __str__ = __repr__

    structlog.get_logger("t").info("device.read", value=Broken(), secret="plain-secret-1234")
    structlog.get_logger("t").info("bearer word", value=Broken())  # the scrubbed path too
    first, second = logged(lines)
    assert first["event"] == "log.unrenderable" and first["logged"] == "device.read"
    assert first["error"] == "RuntimeError" and first["level"] == "info"
    assert second["event"] == "log.unrenderable"
