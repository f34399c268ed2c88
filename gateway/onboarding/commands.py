"""``ecgw api ...`` and ``ecgw sandbox event``: the handlers ``gateway.cli`` registers.

Each prints lines for a person and returns the exit code: 0 done, 1 a step failed. Secrets
(the client secret, the webhook secret) are sent, never printed.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import sys
import time
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import msgspec

from gateway.config import Config
from gateway.delivery.api import TokenSource
from gateway.errors import ConfigError, GatewayError, UpstreamError
from gateway.intake.poller import to_new_event
from gateway.onboarding.events import KINDS, EventFlags, simulation_request
from gateway.onboarding.reconcile import Findings, compare, in_window
from gateway.onboarding.spark import SparkAdmin
from gateway.render import printable as safe
from gateway.store.database import open_database
from gateway.store.inbox import Inbox
from gateway.store.outbox import Outbox
from gateway.timeutil import parse_duration, parse_timespan, parse_timestamp

__all__ = [
    "cmd_api_check",
    "cmd_api_reconcile",
    "cmd_api_webhooks_disable",
    "cmd_api_webhooks_enable",
    "cmd_api_webhooks_list",
    "cmd_api_webhooks_register",
    "cmd_sandbox_event",
]

EXIT_OK, EXIT_FAILURE = 0, 1
WEBHOOK_NAME = "ecgw"


def _out(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def _step(ok: bool | None, name: str, detail: str) -> None:
    """One line per step, Telegraf ``--test`` style: ``ok``, ``FAIL`` or ``skip`` first."""
    mark = "skip" if ok is None else "ok" if ok else "FAIL"
    _out(f"{mark:<4} {name:<8} {safe(detail)}")


@contextlib.asynccontextmanager
async def _spark(
    config: Config, *, session: aiohttp.ClientSession | None = None
) -> AsyncIterator[SparkAdmin]:
    api = config.require_api()
    assert config.client_secret is not None
    async with contextlib.AsyncExitStack() as stack:
        if session is None:
            session = await stack.enter_async_context(
                aiohttp.ClientSession(headers={"User-Agent": "ecgw"})
            )
        tokens = TokenSource(
            session,
            token_url=api.token_url,
            client_id=api.client_id,
            client_secret=config.client_secret,
            timeout=config.delivery.timeout,
        )
        yield SparkAdmin(
            session, base_url=api.base_url, tokens=tokens, timeout=config.delivery.timeout
        )


# --- ecgw api check --------------------------------------------------------------------------


async def cmd_api_check(args: argparse.Namespace, config: Config) -> int:
    async with _spark(config) as spark:
        try:
            await spark.token()
        except GatewayError as exc:
            _step(False, "token", str(exc))
            return EXIT_FAILURE
        _step(True, "token", f"client {config.require_api().client_id} got a token")
        try:
            reply = await spark.json("GET", "/events", params={"pageSize": "1"})
        except GatewayError as exc:
            _step(False, "events", str(exc))
            return EXIT_FAILURE
        total = (
            (reply.get("pagination") or {}).get("totalRecords") if isinstance(reply, dict) else None
        )
        _step(True, "events", f"GET /events answered; {total} event(s) listed")
        ok = await _check_webhook(spark, config, getattr(args, "webhook_url", None))
    return EXIT_OK if ok else EXIT_FAILURE


async def _check_webhook(spark: SparkAdmin, config: Config, url: str | None) -> bool:
    """Is our webhook registered, enabled, and did the API's last push to it get a 200?"""
    if config.webhook is None and url is None:
        _step(None, "webhook", "no [webhook] table: the gateway polls GET /events")
        return True
    path = config.webhook.path if config.webhook is not None else urlsplit(url or "").path
    try:
        hooks = await spark.webhooks()
    except GatewayError as exc:
        _step(False, "webhook", str(exc))
        return False
    ours = [
        h
        for h in hooks
        if (h.get("webhookUrl") == url if url else urlsplit(str(h.get("webhookUrl"))).path == path)
    ]
    if not ours:
        wanted = url or f"any URL ending in {path}"
        _step(
            False, "webhook", f"none registered for {wanted}: run `ecgw api webhooks register URL`"
        )
        return False
    hook = ours[0]
    where = f"{hook.get('webhookUrl')} ({hook.get('webhookId')})"
    if hook.get("enabled") is False:
        _step(False, "webhook", f"{where} is disabled: run `ecgw api webhooks enable`")
        return False
    last = await _last_push(spark, str(hook.get("webhookId")))
    if last is None:
        _step(
            True,
            "webhook",
            f"{where} registered; nothing sent to it yet, so the API cannot tell if it reaches us",
        )
        return True
    status = last.get("responseStatusCode")
    when = last.get("notificationSent")
    if status == 200:
        _step(
            True, "webhook", f"{where} reachable: the last notification ({when}) was answered 200"
        )
        return True
    result = (
        "timed out"
        if last.get("requestTimeout")
        else f"was answered {status}"
        if status
        else "got no answer"
    )
    _step(
        False,
        "webhook",
        f"{where}: the last notification ({when}) {result}; status {hook.get('status')}",
    )
    return False


async def _last_push(spark: SparkAdmin, webhook_id: str) -> dict[str, Any] | None:
    reply = await spark.json(
        "GET", "/webhooks/logs", params={"webhookId": webhook_id, "pageSize": "1"}
    )
    logs = reply.get("webhookNotificationLogs") if isinstance(reply, dict) else None
    return logs[0] if logs and isinstance(logs[0], dict) else None


# --- ecgw api webhooks ------------------------------------------------------------------------


def _show_hook(hook: dict[str, Any]) -> str:
    types = ",".join(map(str, hook.get("notificationTypes") or [])) or "all types"
    enabled = "enabled" if hook.get("enabled", True) else "disabled"
    return safe(  # str(): the API's fields may be anything, None included
        f"{hook.get('webhookId')}  {enabled:<8} {hook.get('status', '-')!s:<9} "
        f"{hook.get('webhookUrl')}  {hook.get('name') or '-'}  {types}"
    )


async def cmd_api_webhooks_list(args: argparse.Namespace, config: Config) -> int:
    async with _spark(config) as spark:
        hooks = await spark.webhooks()
    if getattr(args, "json", False):
        _out(msgspec.json.encode(hooks).decode())
        return EXIT_OK
    for hook in hooks:
        _out(_show_hook(hook))
    if not hooks:
        _out("no webhooks registered")
    return EXIT_OK


async def cmd_api_webhooks_register(args: argparse.Namespace, config: Config) -> int:
    url: str = args.url
    try:
        parts = urlsplit(url)
    except ValueError:  # "http://[::1": an unclosed IPv6 bracket
        parts = urlsplit("")
    if (
        parts.scheme not in ("http", "https")
        or not parts.netloc
        or any(c.isspace() or not c.isprintable() for c in url)
    ):
        raise ConfigError(f"expected an http(s) URL, got {url!r}", key="url")
    if "@" in parts.netloc:  # it would be stored by Spark and printed back by list
        raise ConfigError(
            "the webhook URL must not carry credentials: Spark signs every push with the "
            "webhook secret instead",
            key="url",
        )
    if config.webhook_secret is None:
        raise ConfigError(
            "register needs the webhook secret the gateway checks", key="webhook.secret"
        )
    async with _spark(config) as spark:
        for hook in await spark.webhooks():
            if hook.get("webhookUrl") == url:
                _out(f"already registered, not registered again: {_show_hook(hook)}")
                return EXIT_OK
        request: dict[str, Any] = {
            "webhookUrl": url,
            "webhookSecret": config.webhook_secret.reveal(),
            "name": args.name,
        }
        if args.type:
            request["notificationTypes"] = list(args.type)
        hook = await spark.register_webhook(request)
    _out(f"registered: {_show_hook(hook)}")
    return EXIT_OK


async def _set_enabled(args: argparse.Namespace, config: Config, enabled: bool) -> int:
    async with _spark(config) as spark:
        hooks = await spark.webhooks()
        chosen = [h for h in hooks if args.webhook in (h.get("webhookId"), h.get("webhookUrl"))]
        if args.webhook is None:
            chosen = [h for h in hooks if h.get("name") == WEBHOOK_NAME] or hooks
        if len(chosen) != 1:
            found = "no webhook" if not chosen else f"{len(chosen)} webhooks"
            raise ConfigError(
                f"{found} match {args.webhook or 'the registered ones'}; name one by id or URL",
                key="webhook",
            )
        await spark.set_enabled(str(chosen[0]["webhookId"]), enabled)
    _out(f"{'enabled' if enabled else 'disabled'}: {safe(str(chosen[0].get('webhookUrl')))}")
    return EXIT_OK


async def cmd_api_webhooks_enable(args: argparse.Namespace, config: Config) -> int:
    return await _set_enabled(args, config, True)


async def cmd_api_webhooks_disable(args: argparse.Namespace, config: Config) -> int:
    return await _set_enabled(args, config, False)


# --- ecgw api reconcile -----------------------------------------------------------------------


async def _gather(
    spark: SparkAdmin, since: dt.datetime
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    async with contextlib.aclosing(spark.notification_logs()) as entries:
        logs = [e async for e in entries if in_window(e.get("notificationSent"), since)]
    events = []
    async with contextlib.aclosing(spark.events()) as listed:
        async for event in listed:  # newest first: stop at the first one before the window
            if not in_window(event.get("createdAt"), since):
                break
            events.append(event)
    return logs, events


async def cmd_api_reconcile(args: argparse.Namespace, config: Config) -> int:
    try:
        window = parse_duration(args.since)
    except ValueError as exc:
        raise ConfigError(str(exc), key="--since") from None
    since = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=window)
    async with _spark(config) as spark, open_database(config.db_path) as db:
        inbox, outbox = Inbox(db), Outbox(db)
        try:
            logs, events = await _gather(spark, since)
        except UpstreamError as exc:
            _out(f"FAIL cannot read the API: {exc}")
            return EXIT_FAILURE
        candidates = {e.get("id") for e in events} | {e.get("partnerEventId") for e in logs}
        local = {i for i in candidates if isinstance(i, str) and await inbox.get(i) is not None}
        findings = compare(logs, events, local)
        await _report(findings, events, outbox, args.since)
        failures = 0
        for event_id in findings.missing:
            failures += not await _fetch(spark, inbox, event_id, dry_run=args.dry_run)
    return EXIT_FAILURE if failures else EXIT_OK


async def _report(
    findings: Findings, events: list[dict[str, Any]], outbox: Outbox, since: str
) -> None:
    _out(
        f"since {since}: {findings.events_seen} event(s) listed by GET /events, "
        f"{findings.notifications_seen} notification(s) in the webhook logs"
    )
    for notice in findings.failed:
        got = "received anyway" if notice.received else "NOT received"
        _out(
            safe(
                f"failed notification {notice.notification_id} event {notice.event_id}: "
                f"{notice.attempts} attempt(s) to {notice.webhook_url}, "
                f"last {notice.last_result}; {got}"
            )
        )
    unreported = 0
    for event in events:
        if event.get("id") not in findings.missing and not await outbox.find(str(event.get("id"))):
            unreported += 1
    _out(
        f"{len(findings.failed)} failed notification(s), "
        f"{len(findings.missing)} event(s) never received, "
        f"{unreported} received event(s) with no report in the outbox yet"
    )


async def _fetch(spark: SparkAdmin, inbox: Inbox, event_id: str, *, dry_run: bool) -> bool:
    if dry_run:
        _out(safe(f"missing  {event_id} (not fetched: --dry-run)"))
        return True
    try:
        raw = await spark.event(event_id)
    except UpstreamError as exc:
        _out(safe(f"FAIL     {event_id}: {exc}"))
        return False
    if raw is None:
        _out(safe(f"FAIL     {event_id}: GET /events/{{id}} answered 404"))
        return False
    event = to_new_event(raw)  # as the poller stores a polled event: decoded or quarantined
    new = await inbox.add(event, via="poll", at=time.time())
    state = "quarantined" if event.plan_state != "new" else "stored"
    _out(safe(f"fetched  {event_id} {event.payload_type}: {state if new else 'already there'}"))
    return True


# --- ecgw sandbox event -----------------------------------------------------------------------


def _flags(args: argparse.Namespace) -> EventFlags:
    try:
        length = (
            dt.timedelta(seconds=parse_duration(args.length))
            if ":" not in args.length
            else parse_timespan(args.length)
        )
        start = parse_timestamp(args.start) if args.start else None
        prices = tuple(float(p) for p in args.prices.split(",")) if args.prices else ()
    except ValueError as exc:
        raise ConfigError(str(exc), key="event") from None
    return EventFlags(
        targets=tuple(args.target or ()),
        intervals=args.intervals,
        length=length,
        start=start,
        cap_kw=args.cap,
        prices=prices,
    )


async def cmd_sandbox_event(args: argparse.Namespace, config: Config | None) -> int:
    try:
        body = simulation_request(args.kind, _flags(args), dt.datetime.now(dt.UTC))
    except ValueError as exc:
        raise ConfigError(str(exc), key=args.kind) from None
    root = args.url.rstrip("/")
    from gateway.sandbox.api import BASE_PATH, TOKEN_PATH  # the sandbox's own paths

    form = {
        "grant_type": "client_credentials",
        "client_id": args.client_id,
        "client_secret": args.client_secret,
    }
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
            async with session.post(root + TOKEN_PATH, data=form) as resp:
                if resp.status != 200:
                    _out(f"FAIL token: HTTP {resp.status}")
                    return EXIT_FAILURE
                token = (await resp.json())["access_token"]
            headers = {"Authorization": f"Bearer {token}"}
            async with session.post(
                root + BASE_PATH + KINDS[args.kind], json=body, headers=headers
            ) as resp:
                text = await resp.text()
                if resp.status != 200:
                    _out(safe(f"FAIL {args.kind}: HTTP {resp.status}: {text[:300]}"))
                    return EXIT_FAILURE
    except (aiohttp.ClientError, TimeoutError, KeyError, ValueError) as exc:
        _out(safe(f"FAIL cannot reach the sandbox at {root}: {type(exc).__name__}: {exc}"))
        return EXIT_FAILURE
    _out(text)
    return EXIT_OK
