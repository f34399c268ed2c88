"""Logging as ``ecgw run`` configures it (JSON lines), into a buffer, with no secret known."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import pytest
import structlog

from gateway import logs


def json_logging_to_buffer(monkeypatch: pytest.MonkeyPatch) -> Iterator[io.StringIO]:
    """For a fixture: JSON logging into the buffer it yields; no secret or token registered
    (the module's own state is restored after), structlog and the root handler reset after."""
    stream = io.StringIO()
    monkeypatch.setattr("sys.stderr", stream)
    monkeypatch.setattr(logs, "_secrets", set())
    monkeypatch.setattr(logs, "_tokens", type(logs._tokens)(maxlen=8))
    monkeypatch.setattr(logs, "_suspects", [])
    logs.configure_logging(level="info", json=True)
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(file=stream))
    yield stream
    structlog.reset_defaults()
    logging.getLogger().handlers.clear()
