"""The gateway's one error tree.

Every error the gateway raises on purpose derives from :class:`GatewayError`.
Third-party exceptions (aiohttp, sqlite3, pymodbus, aiomqtt) are translated at
the module that talks to them, ``raise ... from exc``, and never leak upward.

    GatewayError
    ├── ConfigError            the operator wrote something we cannot run with (names the key)
    ├── WireError              a message does not match the contract (names the field)
    │   ├── SignatureError     webhook body not signed with our secret
    │   └── ReportInvalid      a report we were asked to send breaks the contract
    ├── UpstreamError          the Energy Coordination API did not do what we asked
    │   ├── UpstreamUnavailable  timeout, connection error, 408/425/429/5xx: try again later
    │   ├── UpstreamRejected     any other 4xx: the API will never accept this request
    │   ├── AuthError            the token endpoint refused our credentials
    │   └── BrokerError          the fleet's MQTT broker refused us, failed TLS or is unreachable
    ├── StoreError             the local SQLite database cannot be used
    │   └── StoreCorrupt         the file is damaged or not a database
    └── AdapterError           a device adapter plugin misbehaved (names the adapter)
        ├── AdapterLoadError     the plugin could not be found, imported or configured
        └── AdapterReadError     one read failed; the adapter lives on

"We did wrong" (ConfigError, ReportInvalid) is kept apart from "the peer did
wrong" (WireError on inbound data, UpstreamError).
"""

from __future__ import annotations

import re

import msgspec

__all__ = [
    "AdapterError",
    "AdapterLoadError",
    "AdapterReadError",
    "AuthError",
    "BrokerError",
    "ConfigError",
    "GatewayError",
    "ReportInvalid",
    "SignatureError",
    "StoreCorrupt",
    "StoreError",
    "UpstreamError",
    "UpstreamRejected",
    "UpstreamUnavailable",
    "WireError",
    "describe",
    "validation_parts",
]


class GatewayError(Exception):
    """Root of every error the gateway raises on purpose."""


class ConfigError(GatewayError):
    """The configuration cannot be used. ``key`` is the dotted config key, if known."""

    def __init__(self, message: str, *, key: str | None = None) -> None:
        self.key = key
        super().__init__(f"{key}: {message}" if key else message)


class WireError(GatewayError):
    """A message does not match the API contract. ``field`` is a JSON path, if known."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        self.field = field
        super().__init__(message)


class SignatureError(WireError):
    """The webhook signature is missing or does not match the body."""


class ReportInvalid(WireError):
    """A report request breaks the OpenAPI contract; it would be answered 400."""


class UpstreamError(GatewayError):
    """The Energy Coordination API did not do what we asked."""

    def __init__(self, message: str, *, status: int | None = None, body: str = "") -> None:
        self.status = status
        self.body = body
        super().__init__(message)


class UpstreamUnavailable(UpstreamError):
    """Temporary failure: try again later, no earlier than ``retry_after`` seconds."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        body: str = "",
        retry_after: float | None = None,
    ) -> None:
        self.retry_after = retry_after
        super().__init__(message, status=status, body=body)


class UpstreamRejected(UpstreamError):
    """Permanent failure: the API refused the request and will refuse it again."""


class AuthError(UpstreamError):
    """The token endpoint refused our client credentials."""


class BrokerError(UpstreamError):
    """The fleet's MQTT broker (``[hub]`` or ``[upstream]``) cannot be used: one line
    naming ``host:port`` and why. ``reason``: ``credentials`` (refused), ``tls`` (the
    handshake failed), ``unreachable``, ``timeout`` or ``lost`` (the connection dropped)."""

    def __init__(self, message: str, *, host: str, port: int, reason: str) -> None:
        self.host = host
        self.port = port
        self.reason = reason
        super().__init__(message)


class StoreError(GatewayError):
    """The local database cannot be opened, migrated or written."""


class StoreCorrupt(StoreError):
    """The database file is damaged or not a database (a check at open, or SQLite's
    SQLITE_CORRUPT/NOTADB on a read); it is left untouched."""


class AdapterError(GatewayError):
    """A device adapter failed. ``adapter`` is the adapter's configured name."""

    def __init__(self, message: str, *, adapter: str | None = None) -> None:
        self.adapter = adapter
        super().__init__(f"adapter {adapter!r}: {message}" if adapter else message)


class AdapterLoadError(AdapterError):
    """The adapter plugin could not be found, imported, configured or started."""


class AdapterReadError(AdapterError):
    """One read from a device failed; it produced no reading."""


def describe(exc: BaseException) -> str:
    """One line for a log or a stored reason: ``ConnectionResetError: peer closed``.

    Timeouts read ``timed out``; a message is folded onto one line and cut at 500
    characters, so a device or peer cannot flood a log line or a database row.
    """
    if isinstance(exc, TimeoutError) and not str(exc):
        return "timed out"
    try:
        text = " ".join(str(exc).split())
    except Exception:  # a hostile __str__ must not hide the error itself
        text = "<unprintable>"
    if len(text) > 500:
        text = text[:497] + "..."
    name = type(exc).__name__
    return f"{name}: {text}" if text else name


_AT_PATH = re.compile(r"^(?P<message>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.DOTALL)
_FIELD = re.compile(
    r"^Object (?P<what>contains unknown|missing required) field `(?P<field>[^`]*)`$"
)


def validation_parts(exc: msgspec.MsgspecError) -> tuple[str, str]:
    """A msgspec decode/validation error as ``(path, message)``: the one translator.

    ``path`` is dotted from the document's root (``payload.curvePoints[3].value``;
    ``""`` for the root), ``message`` one line without the location. An unknown or
    missing field is moved into the path: ``("api.client_idd", "unknown key")``.
    """
    match = _AT_PATH.match(str(exc))
    assert match is not None  # the pattern matches any text
    message, path = " ".join(match["message"].split()), (match["path"] or "").lstrip(".")
    if field := _FIELD.match(message):
        path = f"{path}.{field['field']}".lstrip(".")
        message = "unknown key" if field["what"] == "contains unknown" else "required key missing"
    return path, message.rstrip(".")
