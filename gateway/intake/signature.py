"""Webhook signatures: HMAC-SHA256 of the raw body, secret as UTF-8 key, standard Base64.

Pure. Verification happens before the body is parsed, with a constant-time,
case-sensitive comparison (Spark's old C# sample compared case-insensitively;
that weakens the check and is not copied).
"""

from __future__ import annotations

import base64
import hashlib
import hmac

from gateway.errors import SignatureError

__all__ = ["sign", "verify"]


def sign(body: bytes, secret: str) -> str:
    return _signature(body, secret).decode("ascii")


def _signature(body: bytes, secret: str) -> bytes:
    return base64.b64encode(hmac.digest(secret.encode("utf-8"), body, hashlib.sha256))


def verify(body: bytes, signature: str | None, secret: str) -> None:
    """Raise SignatureError unless ``signature`` is this body's signature under ``secret``."""
    if not signature:
        raise SignatureError("missing X-Payload-Signature header")
    expected = _signature(body, secret)
    given = signature.strip().encode("ascii", "replace")
    if not hmac.compare_digest(expected, given):
        raise SignatureError("X-Payload-Signature does not match the body")
