"""OAuth 2.0 client credentials for the sandbox: issue, check and revoke bearer tokens.

Pure: the caller passes ``now`` (a monotonic reading) and the request's form and headers.
Tokens and secrets are never logged.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote_plus

__all__ = [
    "TokenBook",
    "TokenDecision",
    "basic_credentials",
    "bearer_token",
    "decide_token_request",
]


class TokenBook:
    """Tokens issued so far and when each expires (in the caller's monotonic seconds)."""

    def __init__(self, lifetime: float) -> None:
        if lifetime <= 0:
            raise ValueError(f"token_lifetime must be positive, got {lifetime}")
        self.lifetime = lifetime
        self._expiry: dict[str, float] = {}

    def issue(self, now: float) -> str:
        if len(self._expiry) > 10_000:
            self._expiry = {t: end for t, end in self._expiry.items() if end > now}
        token = secrets.token_urlsafe(32)
        self._expiry[token] = now + self.lifetime
        return token

    def valid(self, token: str | None, now: float) -> bool:
        if token is None:
            return False
        expiry = self._expiry.get(token)
        return expiry is not None and now < expiry

    def revoke_all(self) -> None:
        """Every token issued so far stops working."""
        self._expiry.clear()


def bearer_token(authorization: str | None) -> str | None:
    """The token in ``Authorization: Bearer <token>``, else ``None``."""
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def basic_credentials(authorization: str) -> tuple[str, str] | None:
    """``(client_id, client_secret)`` from ``Authorization: Basic ...``, else ``None``.

    RFC 6749 section 2.3.1: both parts are form-urlencoded before the Base64 step.
    """
    scheme, _, encoded = authorization.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    login, colon, password = decoded.partition(":")
    if not colon:
        return None
    return unquote_plus(login), unquote_plus(password)


@dataclass(frozen=True)
class TokenDecision:
    """What ``POST /connect/token`` answers: ``issue`` or an error status and body."""

    issue: bool
    status: int
    body: dict[str, Any]


def decide_token_request(
    form: Mapping[str, str],
    authorization: str | None,
    *,
    client_id: str,
    client_secret: str,
) -> TokenDecision:
    """Check grant type and client credentials (form fields or HTTP Basic)."""
    grant = form.get("grant_type")
    if not grant:
        return TokenDecision(False, 400, {"error": "invalid_request"})
    if grant != "client_credentials":
        return TokenDecision(False, 400, {"error": "unsupported_grant_type"})
    given_id, given_secret = form.get("client_id"), form.get("client_secret")
    if authorization and authorization.lower().startswith("basic "):
        basic = basic_credentials(authorization)
        if basic is None:
            return TokenDecision(False, 401, {"error": "invalid_client"})
        given_id, given_secret = basic
    if not (_same(given_id, client_id) and _same(given_secret, client_secret)):
        return TokenDecision(False, 401, {"error": "invalid_client"})
    return TokenDecision(True, 200, {})


def _same(given: str | None, expected: str) -> bool:
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())
