"""``/_sandbox/*``: steer and inspect a sandbox running in another process. No auth.

| method | path | body / answer |
|---|---|---|
| POST | ``/_sandbox/faults`` | a Fault object or a list of them -> 204 |
| DELETE | ``/_sandbox/faults`` | -> 204 |
| GET | ``/_sandbox/reports`` | -> accepted reports (id, eventId, idempotencyKey, duplicate, ...) |
| GET | ``/_sandbox/attempts`` | -> every ``POST /reports`` request |
| GET | ``/_sandbox/pushes`` | -> every webhook push attempt |
| POST | ``/_sandbox/tokens/revoke`` | -> 204 |
| POST | ``/_sandbox/events`` | ``{"payload": {...}, "push": true, "validate": true}`` -> event |
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgspec
from aiohttp import web

from gateway.errors import WireError
from gateway.sandbox.faults import faults_from_json
from gateway.sandbox.state import PushAttempt, ReceivedReport, ReportAttempt

if TYPE_CHECKING:
    from gateway.sandbox.server import Sandbox

__all__ = ["ADMIN_PATH", "admin_routes", "attempt_json", "push_json", "report_json"]

ADMIN_PATH = "/_sandbox"


def report_json(report: ReceivedReport) -> dict[str, Any]:
    return {
        "id": report.id,
        "eventId": report.event_id,
        "idempotencyKey": report.idempotency_key,
        "duplicate": report.duplicate,
        "knownEvent": report.known_event,
        "receivedAt": report.received_at,
        "body": report.body,
    }


def attempt_json(attempt: ReportAttempt) -> dict[str, Any]:
    return {
        "receivedAt": attempt.received_at,
        "monotonic": attempt.monotonic,
        "status": attempt.status,
        "idempotencyKey": attempt.idempotency_key,
        "authorized": attempt.authorized,
        "body": attempt.raw.decode("utf-8", errors="replace"),
    }


def push_json(push: PushAttempt) -> dict[str, Any]:
    return {
        "url": push.url,
        "webhookId": push.webhook_id,
        "notificationId": push.notification_id,
        "eventId": push.event_id,
        "attempt": push.attempt,
        "status": push.status,
        "error": push.error,
        "at": push.at,
    }


def admin_routes(sandbox: Sandbox) -> list[web.RouteDef]:
    """The admin routes, bound to ``sandbox``."""

    async def add_faults(request: web.Request) -> web.Response:
        try:
            faults = faults_from_json(msgspec.json.decode(await request.read()))
        except (msgspec.DecodeError, TypeError, ValueError) as exc:
            return _error(str(exc))
        sandbox.add_faults(*faults)
        return web.Response(status=204)

    async def clear_faults(request: web.Request) -> web.Response:
        sandbox.clear_faults()
        return web.Response(status=204)

    async def reports(request: web.Request) -> web.Response:
        return _json([report_json(r) for r in sandbox.reports])

    async def attempts(request: web.Request) -> web.Response:
        return _json([attempt_json(a) for a in sandbox.attempts])

    async def pushes(request: web.Request) -> web.Response:
        return _json([push_json(p) for p in sandbox.pushes])

    async def revoke(request: web.Request) -> web.Response:
        sandbox.revoke_tokens()
        return web.Response(status=204)

    async def create_event(request: web.Request) -> web.Response:
        try:
            body = msgspec.json.decode(await request.read())
        except msgspec.DecodeError as exc:
            return _error(f"body is not valid JSON: {exc}")
        if not isinstance(body, dict) or not isinstance(body.get("payload"), dict):
            return _error('expected {"payload": {...}, "push": true}')
        try:
            event = await sandbox.create_event(
                body["payload"],
                push=bool(body.get("push", True)),
                validate=bool(body.get("validate", True)),
            )
        except WireError as exc:
            return _error(str(exc))
        return _json(event)

    return [
        web.post(ADMIN_PATH + "/faults", add_faults),
        web.delete(ADMIN_PATH + "/faults", clear_faults),
        web.get(ADMIN_PATH + "/reports", reports),
        web.get(ADMIN_PATH + "/attempts", attempts),
        web.get(ADMIN_PATH + "/pushes", pushes),
        web.post(ADMIN_PATH + "/tokens/revoke", revoke),
        web.post(ADMIN_PATH + "/events", create_event),
    ]


def _json(body: Any, status: int = 200) -> web.Response:
    return web.Response(
        body=msgspec.json.encode(body), status=status, content_type="application/json"
    )


def _error(message: str) -> web.Response:
    return _json(message, 400)
