"""HTTP handlers for the Energy Coordination API endpoints the sandbox serves.

Thin: read the request, ask :class:`~gateway.sandbox.server.Sandbox` or a pure helper, answer.
Bodies follow the OpenAPI document: 400 on ``/reports`` and ``/simulation`` is a JSON string
naming the field, 400 on ``/events`` and ``/webhooks`` is ``application/problem+json``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Literal

import msgspec
import structlog
from aiohttp import web
from aiohttp.typedefs import Handler

from gateway import contract
from gateway.sandbox.auth import decide_token_request
from gateway.sandbox.faults import Fault
from gateway.sandbox.simulation import (
    location_lpc_payload,
    price_curve_payload,
    resource_lpc_payload,
    user_eligibility_payload,
)
from gateway.sandbox.state import ReportAttempt, paginate, parse_paging, validation_problem

if TYPE_CHECKING:
    from gateway.sandbox.server import Sandbox

__all__ = ["BASE_PATH", "TOKEN_PATH", "Api", "drop_connection", "json_response"]

log = structlog.get_logger(__name__)

BASE_PATH = "/energy-coordination/v1"
TOKEN_PATH = "/connect/token"  # noqa: S105 - a URL path, not a password
REPORTS = BASE_PATH + "/reports"

Builder = Callable[[dict[str, Any], dt.datetime], dict[str, Any]]


def json_response(
    body: Any, status: int = 200, headers: Mapping[str, str] | None = None
) -> web.Response:
    return web.Response(
        body=msgspec.json.encode(body),
        status=status,
        content_type="application/json",
        headers=headers,
    )


def drop_connection(request: web.Request) -> web.Response:
    """Close the connection without answering; the returned response is never written."""
    if request.transport is not None:
        request.transport.abort()
    return web.Response(status=500)


def _problem(errors: dict[str, list[str]]) -> web.Response:
    return web.Response(
        body=msgspec.json.encode(validation_problem(errors)),
        status=400,
        content_type="application/problem+json",
    )


def _unauthorized() -> web.Response:
    return web.Response(status=401, headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})


def _decode(raw: bytes, *, empty: Any = None) -> Any:
    """Decoded JSON; ``empty`` for an empty body. Raises ValueError with the parser's message."""
    if not raw.strip() and empty is not None:
        return empty
    try:
        return msgspec.json.decode(raw)
    except msgspec.DecodeError as exc:
        raise ValueError(f"body is not valid JSON: {exc}") from None


class Api:
    """The API routes, bound to one sandbox."""

    def __init__(self, sandbox: Sandbox) -> None:
        self._sb = sandbox

    def routes(self) -> list[web.RouteDef]:
        sim = BASE_PATH + "/simulation/events"
        return [
            web.post(TOKEN_PATH, self.token),
            web.get(BASE_PATH + "/events", self.list_events),
            web.get(BASE_PATH + "/events/{event_id}", self.get_event),
            web.post(REPORTS, self.post_report),
            web.get(BASE_PATH + "/webhooks", self.list_webhooks),
            web.post(BASE_PATH + "/webhooks", self.post_webhook),
            web.get(BASE_PATH + "/webhooks/logs", self.list_webhook_logs),
            web.get(BASE_PATH + "/webhooks/logs/{notification_id}", self.get_webhook_log),
            web.get(BASE_PATH + "/webhooks/{webhook_id}", self.get_webhook),
            web.put(BASE_PATH + "/webhooks/{webhook_id}/enabled", self.put_webhook_enabled),
            web.delete(BASE_PATH + "/webhooks/{webhook_id}", self.delete_webhook),
            web.post(sim + "/pricecurve", self.simulate_price_curve),
            web.post(sim + "/usereligibility", self.simulate_user_eligibility),
            web.post(sim + "/lpc/locations", self.simulate_location_lpc),
            web.post(sim + "/lpc/resources", self.simulate_resource_lpc),
        ]

    @web.middleware
    async def require_token(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """401 for API calls without a valid bearer token (``POST /reports`` checks itself)."""
        own_check = request.path == REPORTS and request.method == "POST"
        needs_token = request.path.startswith(BASE_PATH + "/") and not own_check
        if needs_token and not self._sb.authorized(request.headers.get("Authorization")):
            return _unauthorized()
        return await handler(request)

    async def token(self, request: web.Request) -> web.Response:
        form = await request.post()
        fields = {k: v for k, v in form.items() if isinstance(v, str)}
        decision = decide_token_request(
            fields,
            request.headers.get("Authorization"),
            client_id=self._sb.client_id,
            client_secret=self._sb.client_secret,
        )
        if not decision.issue:
            log.info("sandbox.token_refused", error=decision.body.get("error"))
            return json_response(decision.body, decision.status)
        lifetime = self._sb.tokens.lifetime
        body = {
            "access_token": self._sb.issue_token(),
            "token_type": "Bearer",
            "expires_in": int(lifetime) if lifetime.is_integer() else lifetime,
        }
        return json_response(body, headers={"Cache-Control": "no-store"})

    async def list_events(self, request: web.Request) -> web.Response:
        paging = parse_paging(request.query)
        if isinstance(paging, dict):
            return _problem(paging)
        return json_response(self._sb.event_page(*paging))

    async def get_event(self, request: web.Request) -> web.Response:
        event = self._sb.event(request.match_info["event_id"])
        return web.Response(status=404) if event is None else json_response(event)

    async def post_report(self, request: web.Request) -> web.Response:
        received_at, monotonic = time.time(), time.monotonic()
        raw = await request.read()
        key = request.headers.get("Idempotency-Key") or None
        authorized = self._sb.authorized(request.headers.get("Authorization"))

        def attempt(status: int | Literal["dropped"]) -> None:
            self._sb.record_attempt(
                ReportAttempt(received_at, monotonic, status, key, authorized, raw)
            )

        if not authorized:
            attempt(401)
            return _unauthorized()
        fault = self._sb.faults.take()
        if fault is not None:
            log.info("sandbox.fault_applied", fault=repr(fault))
            if fault.delay:
                await asyncio.sleep(fault.delay)
            if fault.drop:
                attempt("dropped")
                return drop_connection(request)
            if fault.status is not None:
                attempt(fault.status)
                return _fault_response(fault.status, fault)
        answer = await self._sb.submit_report(raw, key, received_at)
        if fault is not None and fault.drop_after_accept:
            attempt("dropped")
            return drop_connection(request)
        attempt(answer.status)
        return json_response(answer.body, answer.status)

    async def list_webhooks(self, request: web.Request) -> web.Response:
        return json_response({"webhooks": [w.to_json() for w in self._sb.webhooks.values()]})

    async def post_webhook(self, request: web.Request) -> web.Response:
        try:
            body = _decode(await request.read())
        except ValueError as exc:
            return _problem({"body": [str(exc)]})
        found = contract.violations("PostWebhookRequest", body)
        if found:
            return _problem({found[0].path or "body": [found[0].message]})
        return json_response(self._sb.add_webhook(body).to_json(), 201)

    async def get_webhook(self, request: web.Request) -> web.Response:
        webhook = self._sb.webhooks.get(request.match_info["webhook_id"])
        return web.Response(status=404) if webhook is None else json_response(webhook.to_json())

    async def list_webhook_logs(self, request: web.Request) -> web.Response:
        """``GetWebhookNotificationLogsResponse``: every push attempt, newest first, paged."""
        paging = parse_paging(request.query)
        if isinstance(paging, dict):
            return _problem(paging)
        logs = self._sb.notification_logs(request.query.get("webhookId") or None)
        pagination, start, stop = paginate(len(logs), *paging)
        body = {"webhookNotificationLogs": logs[start:stop], "pagination": pagination}
        return json_response(body)

    async def get_webhook_log(self, request: web.Request) -> web.Response:
        found = self._sb.notification_log(request.match_info["notification_id"])
        return web.Response(status=404) if found is None else json_response(found)

    async def put_webhook_enabled(self, request: web.Request) -> web.Response:
        text = request.query.get("enabled", "").lower()
        if text not in ("true", "false"):
            return _problem({"enabled": [f"The value '{text}' is not valid for enabled."]})
        if not self._sb.set_webhook_enabled(request.match_info["webhook_id"], text == "true"):
            return web.Response(status=404)
        return web.Response(status=204)

    async def delete_webhook(self, request: web.Request) -> web.Response:
        webhook_id = request.match_info["webhook_id"]
        if self._sb.webhooks.pop(webhook_id, None) is None:
            return json_response(f"webhook {webhook_id} not found", 404)
        log.info("sandbox.webhook_deleted", webhook_id=webhook_id)
        return web.Response(status=204)

    async def simulate_price_curve(self, request: web.Request) -> web.Response:
        return await self._simulate(request, "SimulatePriceCurveEventRequest", price_curve_payload)

    async def simulate_user_eligibility(self, request: web.Request) -> web.Response:
        return await self._simulate(request, None, lambda _, now: user_eligibility_payload(now))

    async def simulate_location_lpc(self, request: web.Request) -> web.Response:
        return await self._simulate(
            request, "SimulateLocationLPCEventRequest", location_lpc_payload
        )

    async def simulate_resource_lpc(self, request: web.Request) -> web.Response:
        return await self._simulate(
            request, "SimulateResourceLPCEventRequest", resource_lpc_payload
        )

    async def _simulate(
        self, request: web.Request, schema: str | None, build: Builder
    ) -> web.Response:
        body: dict[str, Any] = {}
        if schema is not None:
            try:
                body = _decode(await request.read(), empty={})
            except ValueError as exc:
                return json_response(str(exc), 400)
            found = contract.violations(schema, body)
            if found:
                return json_response(str(found[0]), 400)
        payload = build(body, dt.datetime.now(dt.UTC))
        event = await self._sb.create_event(payload)
        return json_response({"simulatedEvent": event})


def _fault_response(status: int, fault: Fault) -> web.Response:
    headers = {"Retry-After": fault.retry_after} if fault.retry_after is not None else None
    body = fault.body or ""
    try:
        msgspec.json.decode(body)
        content_type = "application/json"
    except msgspec.DecodeError:
        content_type = "text/plain"
    return web.Response(text=body, status=status, headers=headers, content_type=content_type)
