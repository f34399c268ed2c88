"""Attack on the render-then-search JSON log redaction (gateway/logs.py, _RedactedJSON).

The standard: a registered secret never appears in a log line in any spelling, every line
stays one valid JSON object, and the renderer never raises into the code that logs.
"""

from __future__ import annotations

import collections
import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
import structlog

from gateway import logs
from tests.kit.logs import json_logging_to_buffer


@pytest.fixture
def out(monkeypatch: pytest.MonkeyPatch) -> Iterator[io.StringIO]:
    yield from json_logging_to_buffer(monkeypatch)


def parsed(stream: io.StringIO) -> list[dict[str, Any]]:
    """Every line as JSON; a line that is not valid JSON fails the test here."""
    return [json.loads(line) for line in stream.getvalue().splitlines()]


# --- defects ------------------------------------------------------------------------------


def test_a_short_numeric_secret_inside_a_number_keeps_the_line_valid_json(
    out: io.StringIO,
) -> None:
    """A 4-digit broker password ("1234") is inside the number 12345: the fallback text
    replacement writes ``"size": ***5`` -- no longer JSON. (Before this change only string
    values were scrubbed, so the line stayed valid.)"""
    logs.register_secrets(["1234"])
    structlog.get_logger("t").info("webhook.rejected", reason="too_large", size=12345)
    (line,) = parsed(out)
    assert line["reason"] == "too_large"


@pytest.mark.parametrize(
    ("secret", "escaped"),
    [
        ("\u00f8nske-passord-9", "\\u00f8nske-passord-9"),  # non-ASCII first: \u00f8 in JSON
        ("\tkey-with-a-tab", "\\tkey-with-a-tab"),  # a control character first: \t in JSON
    ],
)
def test_a_value_quoting_the_secrets_json_escape_keeps_the_line_valid_json(
    out: io.StringIO, secret: str, escaped: str
) -> None:
    """An API error body echoing JSON holds the secret as its JSON escape (a backslash, then
    ``u00f8``...). Rendered, that backslash is doubled; the fallback replaces the escape from
    the second backslash on and leaves a lone ``\\`` before ``***``: an invalid JSON line."""
    logs.register_secrets([secret])
    body = '{"password": "' + escaped + '"}'
    assert json.loads(body)["password"] == secret  # the body does spell the secret
    structlog.get_logger("t").warning("api.error", status=400, body=body)
    (line,) = parsed(out)
    assert secret not in line["body"]
    assert escaped not in line["body"]


def test_a_namedtuple_in_a_line_to_scrub_does_not_crash_the_caller(out: io.StringIO) -> None:
    """_scrub rebuilds a tuple with ``type(value)(generator)``; a namedtuple's constructor
    takes fields, not an iterable: TypeError out of ``log.info`` into the gateway's code."""
    logs.register_secrets(["broker-pass-77"])
    peer = collections.namedtuple("peer", "host password")
    log = structlog.get_logger("t")
    log.info("mqtt.connect", peer=peer("broker.local", "broker-pass-77"))
    log.info("api.auth", scheme="Bearer", peer=peer("api.local", "x"))  # no secret at all
    lines = parsed(out)
    assert len(lines) == 2
    assert "broker-pass-77" not in out.getvalue()


@pytest.mark.parametrize("how", ["set", "exception"])
def test_a_secret_spelled_by_repr_is_redacted_too(out: io.StringIO, how: str) -> None:
    """The fallback is meant for "a secret inside an object's repr", but only replaces the
    secret's JSON escape; repr() doubles a backslash (and escapes quotes, non-printables),
    so a set holding it, or the ``KeyError: '...'`` line of a traceback, keeps the secret in
    its repr spelling. (Not new: the old walker left these too.)"""
    secret = "c:\\vault\\key-42"
    logs.register_secrets([secret])
    log = structlog.get_logger("t")
    if how == "set":
        log.info("config.loaded", names={secret})
    else:
        try:
            dict[str, str]()[secret]
        except KeyError:
            log.exception("lookup.failed")
    (line,) = parsed(out)
    for value in line.values():
        assert repr(secret)[1:-1] not in str(value)


# --- what held (coverage the existing tests lack) ----------------------------------------


def test_a_secret_in_a_traceback_and_a_token_registered_later_are_redacted(
    out: io.StringIO,
) -> None:
    log = structlog.get_logger("t")
    log.info("before")  # _suspects is built here, before the token exists
    logs.register_token("tok-abcdefghijklmnop")
    try:
        raise RuntimeError("upstream said tok-abcdefghijklmnop")
    except RuntimeError:
        log.exception("call.failed")
    log.info("bytes", raw=b"token=tok-abcdefghijklmnop")
    lines = parsed(out)
    assert len(lines) == 3
    assert "tok-abcdefghijklmnop" not in out.getvalue()
    assert lines[1]["exception"].endswith("RuntimeError: upstream said ***")
    (ours,) = [h for h in logging.getLogger().handlers if h.get_name() == "ecgw"]
    try:
        raise ConnectionError("Authorization: Bearer tok-abcdefghijklmnop")
    except ConnectionError as exc:
        record = logging.LogRecord(
            "aiohttp.client", logging.ERROR, __file__, 1, "echo %s", ("x",), (type(exc), exc, None)
        )
    text = ours.format(record)
    assert "tok-abcdefghijklmnop" not in text
    assert json.loads(text)["logger"] == "aiohttp.client"
