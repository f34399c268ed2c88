"""structlog, configured once at the entry point.

JSON lines when stderr is not a terminal, a console renderer when it is.
Context (event id, adapter, outbox id) travels in contextvars. Redaction
replaces any registered secret that reaches a log line, wherever it hides, as a
last line of defence: secrets are never logged on purpose. A JSON line is
rendered first and searched once; only one that may hold something to redact is
rendered again with every value scrubbed.
Bearer tokens the gateway obtains are registered too (the last few, as each one
expires within the hour), and any ``Bearer <token68>`` is redacted whatever its
token: an API error body may echo the request's ``Authorization`` header.

The libraries log through the standard library (pymodbus, paho under aiomqtt,
aiohttp, asyncio, Python's warnings): a :class:`structlog.stdlib.ProcessorFormatter`
on the root logger runs their records through the same timestamp, redaction and
renderer, so the stream holds JSON lines only, each with the library's ``logger``
name. No library handler of its own stays in the way (pymodbus may add one).
"""

from __future__ import annotations

import json
import logging
import re
import sys
from collections import deque
from collections.abc import Iterable, MutableMapping
from typing import Any

import structlog

__all__ = ["configure_logging", "redact", "register_secrets", "register_token"]

_HANDLER_NAME = "ecgw"  # our root handler, replaced when logging is configured again

_secrets: set[str] = set()
_tokens: deque[str] = deque(maxlen=8)  # the bearer tokens obtained last; older ones expired
REDACTED = "***"
# "Bearer" and a token68 (RFC 6750), whatever the token; the scheme is case-insensitive.
# Twelve characters at least, so that prose ("bearer token", "Bearer realm") is left alone.
_BEARER = re.compile(r"(?i)(bearer)(\s+)[A-Za-z0-9\-._~+/]{12,}=*")


def register_secrets(values: Iterable[str | None]) -> None:
    """Secrets to scrub from every log line (empty and very short values are ignored)."""
    _secrets.update(v for v in values if v and len(v) >= 4)
    _suspects.clear()


def register_token(token: str) -> None:
    """A bearer token just obtained: scrubbed from log lines and kept reply texts."""
    if len(token) >= 4 and token not in _tokens:
        _tokens.append(token)
        _suspects.clear()


_suspects: list[str] = []
"""Every spelling of every secret and token, longest first (as written, as ``repr`` writes
it, and each of those as JSON escapes it): what :func:`_suspect` looks for and
:func:`redact` replaces; made again after a secret or token is registered."""


def _spellings() -> list[str]:
    if not _suspects:
        texts = {
            text
            for secret in (*_secrets, *_tokens)
            for spelling in (secret, repr(secret)[1:-1])
            for text in (spelling, json.dumps(spelling)[1:-1])
        }
        _suspects.extend(sorted(texts, key=len, reverse=True) or [REDACTED])
    return _suspects  # never empty, so never made again for nothing


def _suspect(line: str) -> bool:
    """Whether a rendered JSON line may hold a secret, a token or a bearer credential.

    Never wrong the safe way: a string holding a secret renders it escaped character by
    character, so the escaped spelling is in the line (every spelling is looked for), and
    "bearer" is letters, never escaped: any mention of it counts, whatever follows. Plain
    substring tests (one regex with every alternative cost ten times as much on a long line).
    """
    return any(text in line for text in _spellings()) or "bearer" in line.lower()


def redact(text: str) -> str:
    """``text`` with every registered secret and token (in every spelling :func:`_suspect`
    looks for), and any ``Bearer <token>``, as ***."""
    for spelling in _spellings():
        if spelling in text:
            text = text.replace(spelling, REDACTED)
    return _BEARER.sub(lambda m: f"{m[1]}{m[2]}{REDACTED}", text)


def _scrub(value: Any) -> Any:
    """``value`` as the JSON renderer would write it, every text in it redacted: containers
    become dicts and lists, a number whose digits hold a secret becomes text, and any other
    object becomes its ``repr`` (what the renderer would write), redacted."""
    if isinstance(value, str):
        return redact(value)
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        text = repr(value)
        return value if (scrubbed := redact(text)) == text else scrubbed
    if isinstance(value, dict):
        return {redact(k) if isinstance(k, str) else k: _scrub(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):  # a namedtuple too: a list
        return [_scrub(v) for v in value]
    structlog_form = getattr(value, "__structlog__", None)
    return _scrub(structlog_form() if callable(structlog_form) else repr(value))


def _redact(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    return {k: _scrub(v) for k, v in event_dict.items()}


def _text(value: object) -> str:
    try:
        return value if isinstance(value, str) else "" if value is None else str(value)
    except Exception:  # a __str__ that raises
        return type(value).__name__


class _Redacted:
    """A renderer that is given every value scrubbed (the console's: a person reads it)."""

    def __init__(self, render: structlog.typing.Processor) -> None:
        self._render = render

    def __call__(self, logger: Any, name: str, event_dict: MutableMapping[str, Any]) -> Any:
        return self._render(logger, name, _redact(logger, name, event_dict))


class _RedactedJSON:
    """Renders a JSON line, then looks for anything to redact in it (:func:`_suspect`): only
    a line that may hold some is rendered again from a scrubbed copy (its text is never
    edited: the line stays valid JSON). Walking every value of every line cost the webhook
    a tenth of its time at a burst. A line that cannot be rendered at all (a ``repr`` that
    raises) becomes a line that says so: logging never raises into the gateway."""

    def __init__(self) -> None:
        self._render = structlog.processors.JSONRenderer()

    def __call__(self, logger: Any, name: str, event_dict: MutableMapping[str, Any]) -> str:
        try:
            line = str(self._render(logger, name, event_dict))
            if _suspect(line):
                line = str(self._render(logger, name, _redact(logger, name, event_dict)))
        except Exception as exc:  # whatever a value's repr raises
            return json.dumps(
                {
                    "event": "log.unrenderable",
                    "logged": redact(_text(event_dict.get("event")))[:200],
                    "level": _text(event_dict.get("level")),
                    "timestamp": _text(event_dict.get("timestamp")),
                    "error": type(exc).__name__,
                }
            )
        return line


def configure_logging(*, level: str = "info", json: bool | None = None) -> None:
    if json is None:
        json = not sys.stderr.isatty()
    renderer: structlog.typing.Processor = (
        _RedactedJSON() if json else _Redacted(structlog.dev.ConsoleRenderer())
    )
    exceptions: structlog.typing.Processor = (
        structlog.processors.format_exc_info if json else structlog.processors.StackInfoRenderer()
    )
    shared: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    numeric = logging.getLevelNamesMapping()[level.upper()]
    structlog.configure(
        processors=[*shared, exceptions, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    _route_stdlib(shared, exceptions, renderer, numeric)


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to ``sys.stderr`` as it is when the record comes: a stream replaced since
    logging was configured (a test's capture) is followed, a closed one never written."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


def _route_stdlib(
    shared: list[structlog.typing.Processor],
    exceptions: structlog.typing.Processor,
    renderer: structlog.typing.Processor,
    level: int,
) -> None:
    """Every standard-library record, whichever library logs it, as one line of ours."""
    handler = _StderrHandler()
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                exceptions,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == _HANDLER_NAME]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    pymodbus = logging.getLogger("pymodbus.logging")  # its apply_logging_config adds plain text
    for old in [h for h in pymodbus.handlers if isinstance(h, logging.StreamHandler)]:
        pymodbus.removeHandler(old)
    logging.captureWarnings(True)
