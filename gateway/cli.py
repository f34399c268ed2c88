"""The ``ecgw`` command.

Exit codes: 0 success; 2 a usage or config error (one line naming the key or
field); 1 any other failure. Every command takes ``-c/--config`` or the
``ECGW_CONFIG`` environment variable. Commands that read the database work
while ``ecgw run`` is running (WAL lets readers in beside the writer).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import structlog

from gateway import listing, render, wire
from gateway.config import Config, key_name, load_config, parse_listen
from gateway.config_probes import require_runnable
from gateway.config_schema import cmd_config_schema
from gateway.db_commands import cmd_db_backup, cmd_db_check, cmd_db_stats, cmd_db_vacuum
from gateway.errors import (
    AdapterLoadError,
    ConfigError,
    GatewayError,
    ReportInvalid,
    WireError,
    describe,
)
from gateway.fleet.cli import add_hub_commands
from gateway.lifecycle import log_stopped, version
from gateway.logs import configure_logging, register_secrets
from gateway.status import status_record, status_text
from gateway.store.control import ControlStore
from gateway.store.database import open_database
from gateway.store.inbox import Inbox, InboxEvent
from gateway.store.listings import Page, events_page, outbox_page
from gateway.store.meta import Meta
from gateway.store.outbox import Outbox, OutboxItem
from gateway.store.readings import ReadingsStore
from gateway.supervise import exit_code, run_process

__all__ = ["check_config", "main"]

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2
SQLITE_MAX_INT = 2**63 - 1
PATH_ARGUMENTS = frozenset({"config", "file"})  # any bytes the file system takes


class UsageError(GatewayError):
    """The command line asks for something that cannot be done (exit 2)."""


def _lazy(module: str, name: str) -> Handler:
    """A command handler imported when it runs: ``ecgw status`` need not load aiohttp, the
    sandbox and the onboarding client first (a third of a second on a small box)."""

    async def handler(args: argparse.Namespace, config: Any) -> int:
        command: Handler = getattr(importlib.import_module(module), name)
        return await command(args, config)

    handler.__name__ = handler.__qualname__ = name
    return handler


cmd_api_check = _lazy("gateway.onboarding.commands", "cmd_api_check")
cmd_api_reconcile = _lazy("gateway.onboarding.commands", "cmd_api_reconcile")
cmd_api_webhooks_disable = _lazy("gateway.onboarding.commands", "cmd_api_webhooks_disable")
cmd_api_webhooks_enable = _lazy("gateway.onboarding.commands", "cmd_api_webhooks_enable")
cmd_api_webhooks_list = _lazy("gateway.onboarding.commands", "cmd_api_webhooks_list")
cmd_api_webhooks_register = _lazy("gateway.onboarding.commands", "cmd_api_webhooks_register")
cmd_sandbox_event = _lazy("gateway.onboarding.commands", "cmd_sandbox_event")


def _out(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


@contextlib.asynccontextmanager
async def _stores(config: Config) -> AsyncIterator[tuple[Inbox, Outbox, Meta]]:
    async with open_database(config.db_path) as db:
        yield Inbox(db), Outbox(db), Meta(db)


async def run_until_signalled(main: Coroutine[Any, Any, None]) -> str | None:
    """Run ``main`` until it ends or SIGTERM/SIGINT arrives; then cancel it cleanly.
    Returns the name of the signal that stopped it, None if it ended by itself."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    received: list[str] = []

    def stopping(sig: signal.Signals) -> None:
        received.append(sig.name)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping, sig)
    task = asyncio.create_task(main, name="main")
    stopper = asyncio.create_task(stop.wait(), name="signal")
    try:
        await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopper.cancel()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
    if not task.done():
        task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return received[0] if received else None


# --- commands ----------------------------------------------------------------


def check_config(config: Config) -> Config:
    """Everything ``ecgw run`` refuses before it starts, checked without starting anything.

    Beyond parsing (ranges, names, URLs, secrets): the API table and a usable state
    directory (:func:`~gateway.config_probes.require_runnable`), the webhook's address,
    the broker's TLS files of ``[hub]`` / ``[upstream]``, and every adapter built from its
    table with the channels the config asks of it.
    ``run`` keeps running beside an adapter whose plugin cannot be loaded; ``check``
    refuses it. Raises ConfigError naming the key.
    """
    from gateway.app import load_adapters, webhook_settings
    from gateway.fleet.broker import hub_settings, site_settings

    require_runnable(config)
    webhook_settings(config)
    if config.hub is not None:
        hub_settings(config)  # its TLS files load
    if config.upstream is not None:
        site_settings(config)
    _, errors = load_adapters(config)
    if errors:
        names = sorted(errors)
        key = f"adapters.{key_name(names[0])}" if len(names) == 1 else "adapters"
        raise ConfigError("; ".join(str(errors[name]) for name in names), key=key)
    return config


async def cmd_run(args: argparse.Namespace, config: Config) -> int:
    """Run until signalled. A fatal error (supervise.FATAL) or any other error that stops the
    gateway ends it with one line on stderr and its exit code, never a traceback; the
    traceback of an error that is not ours (a bug) goes to the log as ``gateway.crashed``."""
    from gateway.app import Gateway

    require_runnable(config)
    return await _serve(Gateway(config).run())


async def cmd_hub_run(args: argparse.Namespace, config: Config) -> int:
    """``ecgw hub run``: the fleet's hub (docs/fleet.md), stopped as ``run`` is."""
    from gateway.hub_app import HubGateway

    hub = HubGateway(config)  # ConfigError without a [hub] table
    require_runnable(config)
    return await _serve(hub.run())


async def _serve(main: Coroutine[Any, Any, None]) -> int:
    try:
        signalled = await run_until_signalled(main)
    except GatewayError as exc:
        if not isinstance(exc, ConfigError):  # a config error is the one line, nothing else
            log_stopped(type(exc).__name__, exc)
        raise  # main() prints the one line, with exit 2 for a ConfigError, else 1
    except Exception as exc:
        if exit_code(exc) is None:  # fatal ones were logged by the supervisor
            structlog.get_logger("gateway.cli").error(
                "gateway.crashed", error=describe(exc), exc_info=exc
            )
        log_stopped(type(exc).__name__, exc)
        sys.stderr.write(f"ecgw: {describe(exc)}\n")
        return exit_code(exc) or EXIT_FAILURE
    log_stopped(signalled or "ended")
    return EXIT_OK


async def cmd_check(args: argparse.Namespace, config: Config) -> int:
    check_config(config)
    parts = [
        f"state_dir={config.gateway.state_dir}",
        f"webhook={'on' if config.webhook else 'off'}",
        f"polling={'on' if config.poll else 'off'}",
        f"adapters={len(config.adapters)}",
        f"resources={len(config.resources)}",
        f"locations={len(config.locations)}",
    ]
    if config.hub is not None:
        parts.append(f"hub={config.hub.url} sites={len(config.hub.sites)}")
    if config.upstream is not None:
        parts.append(f"upstream={config.upstream.url} site={config.upstream.site_id}")
    _out(f"config OK: {config.source} ({', '.join(parts)})")
    return EXIT_OK


async def cmd_status(args: argparse.Namespace, config: Config) -> int:
    record = await status_record(config, now=time.time())
    _out(render.to_json(record) if args.json else "\n".join(status_text(record)))
    return EXIT_OK


def _num(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) else None


OUTBOX_COLUMNS = (
    "id",
    "event_id",
    "kind",
    "state",
    "created_at",
    "attempts",
    "last_status",
    "report_id",
    "last_error",
)


def _listing(args: argparse.Namespace) -> listing.Filter:
    """``--limit``, ``--state``, ``--since`` of a listing; a bad value is a usage error."""
    since = None
    if args.since is not None:
        try:
            since = listing.parse_since(args.since, now=time.time())
        except ValueError as exc:
            raise UsageError(f"--since: {exc}") from None
    return listing.Filter(limit=args.limit, state=args.state, since=since)


def _say_cut(page: Page[Any], what: str, chosen: listing.Filter) -> None:
    """The listing is cut: one line on stderr (stdout stays the table or the JSON list)."""
    note = listing.cut_note(len(page.rows), page.total, what, chosen, exact=page.exact)
    if note is not None:
        sys.stderr.write(f"ecgw: {note}\n")


async def cmd_outbox_list(args: argparse.Namespace, config: Config) -> int:
    """Reports, newest first (by when they were queued)."""
    chosen = _listing(args)
    async with open_database(config.db_path) as db:
        page = await outbox_page(db, chosen)
    records = [render.outbox_record(i) for i in page.rows]
    _out(render.to_json(records) if args.json else render.table(records, OUTBOX_COLUMNS))
    _say_cut(page, "reports", chosen)
    return EXIT_OK


async def _find(outbox: Outbox, ref: str) -> list[OutboxItem]:
    """Rows by id or event id; a number no SQLite row id can be (beyond 64 bits, or digits
    ``int`` does not take) finds nothing by id instead of ending in a traceback."""
    if ref.isdigit() and not (ref.isascii() and int(ref) <= SQLITE_MAX_INT):
        try:
            return await outbox.find(ref)
        except (OverflowError, ValueError):
            return []
    return await outbox.find(ref)


async def cmd_outbox_show(args: argparse.Namespace, config: Config) -> int:
    async with _stores(config) as (_, outbox, _meta):
        items = await _find(outbox, args.ref)
    if not items:
        raise UsageError(f"no outbox row with id or event id {args.ref!r}")
    _out(render.to_json([render.outbox_record(i, body=True) for i in items]))
    return EXIT_OK


async def _outbox_ids(outbox: Outbox, refs: list[str], all_dead: bool) -> list[int]:
    if all_dead:
        return [i.id for i in await outbox.items(state="dead", limit=1_000_000)]
    if not refs:
        raise UsageError("name outbox rows (id or event id) or pass --all-dead")
    ids: list[int] = []
    for ref in refs:
        found = await _find(outbox, ref)
        if not found:
            raise UsageError(f"no outbox row with id or event id {ref!r}")
        ids += [i.id for i in found]
    return ids


async def cmd_outbox_retry(args: argparse.Namespace, config: Config) -> int:
    async with _stores(config) as (_, outbox, _meta):
        ids = await _outbox_ids(outbox, args.refs, args.all_dead)
        changed = await outbox.retry(ids, now=time.time())
    _out(f"{changed} report(s) due now (delivered reports are never sent again)")
    return EXIT_OK


async def cmd_outbox_purge(args: argparse.Namespace, config: Config) -> int:
    async with _stores(config) as (_, outbox, _meta):
        ids = await _outbox_ids(outbox, args.refs, args.all_dead)
        removed = await outbox.purge(ids)
    _out(f"{removed} dead report(s) removed (only dead rows can be purged)")
    return EXIT_OK


EVENT_COLUMNS = (
    "event_id",
    "payload_type",
    "created_at",
    "received_via",
    "received_at",
    "plan_state",
)


async def cmd_events_list(args: argparse.Namespace, config: Config) -> int:
    """Events, newest first (by when they arrived)."""
    chosen = _listing(args)
    async with open_database(config.db_path) as db:
        page = await events_page(db, chosen)
    records = [render.event_record(e) for e in page.rows]
    _out(render.to_json(records) if args.json else render.table(records, EVENT_COLUMNS))
    _say_cut(page, "events", chosen)
    return EXIT_OK


async def cmd_events_show(args: argparse.Namespace, config: Config) -> int:
    from gateway.reports.scheduler import ReportJobs

    async with open_database(config.db_path) as db:
        event = await Inbox(db).get(args.event_id)
        reports = await _find(Outbox(db), args.event_id)
        jobs = await ReportJobs(db).for_event(args.event_id)
    if event is None:
        raise UsageError(f"no event {args.event_id!r} in the inbox")
    record = render.event_record(event, payload=True)
    record["jobs"] = [{**j, "at": render.iso(_num(j["at"]))} for j in jobs]
    record["reports"] = [render.outbox_record(r) for r in reports]
    _out(render.to_json(record))
    return EXIT_OK


def _require_payload(event: InboxEvent | None, event_id: str) -> InboxEvent:
    """The event, if the inbox has it with its payload (retention drops old ones)."""
    if event is None:
        raise UsageError(f"no event {event_id!r} in the inbox")
    if event.payload_dropped_at is not None:
        raise UsageError(
            f"event {event_id!r}: its payload was dropped by retention at "
            f"{render.iso(event.payload_dropped_at)} (its month is closed); nothing to plan"
        )
    return event


async def cmd_events_replan(args: argparse.Namespace, config: Config) -> int:
    """Plan a quarantined event again, once its cause is fixed (a running gateway sees it
    on its next scheduler pass)."""
    from gateway.reports.scheduler import ReportJobs

    async with open_database(config.db_path) as db:
        _require_payload(await Inbox(db).get(args.event_id), args.event_id)
        released = await ReportJobs(db).release(args.event_id)
    shown = render.printable(args.event_id)
    if released:
        _out(f"event {shown} will be planned again (its quarantined jobs are forgotten)")
    else:
        _out(f"event {shown} has nothing quarantined: unchanged")
    return EXIT_OK


async def cmd_plan_show(args: argparse.Namespace, config: Config) -> int:
    from gateway.control.plan_view import plan_record

    async with open_database(config.db_path) as db:
        record = await plan_record(db, config, args.event_id)
    if record is None:
        raise UsageError(f"no event {args.event_id!r} in the inbox")
    _out(render.to_json(record) if args.json else render.plan_text(record))
    return EXIT_OK


async def cmd_plan_override(args: argparse.Namespace, config: Config) -> int:
    """Set one resource's participation in one event, before the event's window starts."""
    from gateway.control.plan_view import event_window

    resource = next((r for r in config.resources if r.resource_id == args.resource), None)
    if resource is None:
        raise UsageError(f"no resource {args.resource!r} in the config")
    if args.participation == "shift" and (resource.control is None or resource.need_kwh is None):
        raise UsageError(f"resource {args.resource!r} cannot shift: it needs control and need_kwh")
    async with open_database(config.db_path) as db:
        event = await Inbox(db).get(args.event_id)
        if event is None:
            raise UsageError(f"no event {args.event_id!r} in the inbox")
        try:
            payload = wire.decode_event_payload(event.payload)
        except WireError as exc:
            raise UsageError(f"event {args.event_id!r} cannot be read: {exc}") from None
        if not isinstance(payload, wire.PriceCurve):
            raise UsageError(f"event {args.event_id!r} is a {event.payload_type}, not a PriceCurve")
        if args.resource not in {t.resource_id for t in payload.targets}:
            raise UsageError(f"resource {args.resource!r} is not a target of the event")
        window = event_window(payload)
        now = time.time()
        if window is not None and now >= window[0]:
            raise UsageError(
                f"the event's window started at {render.iso(window[0])}: too late to change"
            )
        await ControlStore(db).override(args.event_id, args.resource, args.participation, now=now)
    _out(
        f"event {render.printable(args.event_id)}: resource {render.printable(args.resource)} "
        f"takes part as {args.participation!r} (a running gateway plans it again)"
    )
    return EXIT_OK


async def cmd_report_submit(args: argparse.Namespace, config: Config) -> int:
    from gateway.reports import manual

    try:
        raw = await asyncio.to_thread(manual.read_report_file, args.file)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    async with _stores(config) as (_, outbox, _meta):
        report, queued = await manual.submit(outbox, raw, now=time.time())
    what = f"{report.kind} report for event {render.printable(report.event_id)}"
    if queued:
        _out(f"queued {what}")
    else:
        _out(f"already queued: {what} (not queued again)")
    return EXIT_OK


async def cmd_report_preview(args: argparse.Namespace, config: Config) -> int:
    """Plan and build the event's reports now, from the stored readings; queue nothing."""
    from gateway.reports.planner import plan_event
    from gateway.reports.scheduler import build_job, read_overrides

    async with open_database(config.db_path) as db:
        event = _require_payload(await Inbox(db).get(args.event_id), args.event_id)
        plan = plan_event(
            event.event_id,
            wire.decode_event_payload(event.payload),
            config,
            now=time.time(),
            received_at=event.received_at,
            overrides=await read_overrides(db, event.event_id),
        )
        previews = []
        for job in plan.jobs:
            result, notes = await build_job(job, ReadingsStore(db), max_gap=config.metering.max_gap)
            previews.append(
                {
                    "kind": job.kind,
                    "due_at": render.iso(job.due_at),
                    "notes": [*notes, *result.notes],
                    "report": json.loads(result.body) if result.body else None,
                    "table": [
                        {"target": t, "start": render.iso(s), "kwh": k} for t, s, k in result.table
                    ],
                }
            )
    _out(
        render.to_json(
            {
                "event_id": event.event_id,
                "payload_type": event.payload_type,
                "no_report_reason": plan.no_report_reason,
                "notes": list(plan.notes),
                "reports": previews,
            }
        )
    )
    return EXIT_OK


async def cmd_sandbox(args: argparse.Namespace, config: Config | None) -> int:
    from gateway.onboarding.banner import sandbox_banner
    from gateway.sandbox import run_sandbox  # only this command needs it

    host, _, port = args.listen.rpartition(":")
    async with run_sandbox(host or "127.0.0.1", int(port or 0)) as sandbox:
        _out(
            sandbox_banner(
                sandbox.root_url,
                sandbox.base_url,
                sandbox.token_url,
                sandbox.client_id,
                sandbox.client_secret,
            )
        )
        await run_until_signalled(_forever())
    return EXIT_OK


async def cmd_sandbox_meter(args: argparse.Namespace, config: Config | None) -> int:
    """A simulated SDM630 on Modbus TCP until SIGTERM/SIGINT; prints the adapter table."""
    from gateway.sandbox.meter import SimulatedSdm630  # only this command needs pymodbus here

    try:
        host, port = parse_listen(args.listen)
    except ValueError as exc:
        raise UsageError(f"--listen: {exc}") from None
    meter = SimulatedSdm630(kw=args.kw, unit=args.unit)
    try:
        serving = meter.serving(host, port)
        async with serving as running:
            _out(
                f"a simulated Eastron SDM630 drawing {args.kw:g} kW on "
                f"{running.server.host}:{running.server.port}, unit {args.unit}; "
                "in the gateway's config:\n\n"
                "[adapters.meter]\n"
                'type = "modbus"\n'
                f'host = "{running.server.host}"\n'
                f"port = {running.server.port}\n"
                f"unit = {args.unit}\n"
                'profile = "eastron-sdm630"\n'
                'poll_interval = "1s"\n'
            )
            await run_until_signalled(_forever())
    except OSError as exc:
        raise UsageError(f"--listen: cannot listen on {args.listen}: {exc.strerror}") from None
    return EXIT_OK


async def _forever() -> None:
    await asyncio.Event().wait()


async def cmd_probe(args: argparse.Namespace, config: Config) -> int:
    from gateway.probe import probe

    try:
        return await probe(config.adapters, args.adapter, seconds=args.seconds, out=_out)
    except AdapterLoadError as exc:
        if isinstance(exc.__cause__, ConfigError):
            raise exc.__cause__ from None
        _out(f"  cannot probe: {exc}")
        return EXIT_FAILURE


async def cmd_demo(args: argparse.Namespace, config: Config | None) -> int:
    from gateway.demo import run_demo

    return await run_until_signalled_result(run_demo(_out))


async def run_until_signalled_result(main: Coroutine[Any, Any, int]) -> int:
    result: list[int] = []

    async def keep() -> None:
        result.append(await main)

    await run_until_signalled(keep())
    return result[0] if result else EXIT_FAILURE


# --- argument parsing ----------------------------------------------------------


Handler = Callable[[argparse.Namespace, Any], Coroutine[Any, Any, int]]


def _arg(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """An argparse ``type`` from a parser raising ValueError: its message, not "invalid"."""

    def convert(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return convert


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "-c", "--config", default=argparse.SUPPRESS, help="config file (default: $ECGW_CONFIG)"
    )
    lists = argparse.ArgumentParser(add_help=False)
    lists.add_argument("--json", action="store_true", help="print JSON")
    lists.add_argument(
        "--limit",
        type=_arg(listing.parse_limit),
        default=listing.DEFAULT_LIMIT,
        help=f"show at most this many, the newest (default {listing.DEFAULT_LIMIT}); "
        "when more match, a line on stderr says how many",
    )
    lists.add_argument(
        "--since",
        metavar="WHEN",
        help="only those since WHEN: a duration back from now (7d, 12h, 30m) or an ISO-8601 "
        "time (2026-11-01, 2026-11-01T08:00:00Z; UTC if no offset)",
    )

    parser = argparse.ArgumentParser(
        prog="ecgw", parents=[common], description="Energy Coordination Gateway"
    )
    parser.add_argument("--version", action="version", version=f"ecgw {version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(
        name: str, handler: Handler, help_: str, *parents: argparse.ArgumentParser, into: Any = sub
    ) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = into.add_parser(name, parents=[common, *parents], help=help_)
        p.set_defaults(handler=handler)
        return p

    add("run", cmd_run, "run the gateway until SIGTERM/SIGINT")
    add("check", cmd_check, "validate the config")
    status = add("status", cmd_status, "show what the gateway is doing")
    status.add_argument("--json", action="store_true")

    outbox = sub.add_parser("outbox", help="inspect and steer the report outbox")
    osub = outbox.add_subparsers(dest="action", required=True, metavar="ACTION")
    lst = add("list", cmd_outbox_list, "list reports, newest first", lists, into=osub)
    lst.add_argument("--state", choices=listing.OUTBOX_STATES, help="only reports in this state")
    add("show", cmd_outbox_show, "show reports of an id or event id", into=osub).add_argument("ref")
    for name, handler, help_ in (
        ("retry", cmd_outbox_retry, "make dead/pending reports due now"),
        ("purge", cmd_outbox_purge, "delete dead reports"),
    ):
        p = add(name, handler, help_, into=osub)
        p.add_argument("refs", nargs="*")
        p.add_argument("--all-dead", action="store_true")

    events = sub.add_parser("events", help="inspect received events")
    esub = events.add_subparsers(dest="action", required=True, metavar="ACTION")
    add("list", cmd_events_list, "list events, newest first", lists, into=esub).add_argument(
        "--state", choices=listing.EVENT_STATES, help="only events in this plan state"
    )
    add("show", cmd_events_show, "show one event and its reports", into=esub).add_argument(
        "event_id"
    )
    add(
        "replan", cmd_events_replan, "plan a quarantined event again, after a fix", into=esub
    ).add_argument("event_id")

    plan = sub.add_parser("plan", help="what the gateway decided and did for an event")
    psub = plan.add_subparsers(dest="action", required=True, metavar="ACTION")
    show = add("show", cmd_plan_show, "decisions, schedule, commands, caps and peaks", into=psub)
    show.add_argument("event_id")
    show.add_argument("--json", action="store_true", help="print JSON")
    override = add(
        "override", cmd_plan_override, "set a resource's participation before the window", into=psub
    )
    override.add_argument("event_id")
    override.add_argument("--resource", required=True)
    override.add_argument("--participation", required=True, choices=("off", "report", "shift"))

    report = sub.add_parser("report", help="reports")
    rsub = report.add_subparsers(dest="action", required=True, metavar="ACTION")
    add(
        "submit", cmd_report_submit, "validate a report request JSON and queue it", into=rsub
    ).add_argument("file")
    add(
        "preview",
        cmd_report_preview,
        "print the reports an event would give now, from stored readings; nothing queued",
        into=rsub,
    ).add_argument("event_id")

    database = sub.add_parser("db", help="back up, check, measure and vacuum the database")
    dsub = database.add_subparsers(dest="action", required=True, metavar="ACTION")
    backup = add("backup", cmd_db_backup, "copy the database (safe while running)", into=dsub)
    backup.add_argument("file", metavar="PATH", help="the copy to write")
    backup.add_argument("--force", action="store_true", help="overwrite an existing PATH")
    add("check", cmd_db_check, "full integrity check and schema version", into=dsub)
    add(
        "stats",
        cmd_db_stats,
        "rows and bytes per table, free pages, what retention frees",
        into=dsub,
    )
    add("vacuum", cmd_db_vacuum, "rewrite the file once so freed space goes back", into=dsub)

    probe = add("probe", cmd_probe, "read one adapter once and print what it gives")
    probe.add_argument("adapter")
    probe.add_argument("--seconds", type=float, default=30.0, help="how long to wait")
    add("demo", cmd_demo, "run sandbox + gateway with simulated devices: one real report")
    sandbox = add("sandbox", cmd_sandbox, "run a local stand-in for the API")
    sandbox.add_argument("--listen", default="127.0.0.1:8900")
    config_cmd = sub.add_parser("config", help="the config's reference")
    csub = config_cmd.add_subparsers(dest="action", required=True, metavar="ACTION")
    schema = add("schema", cmd_config_schema, "print the config's JSON Schema", into=csub)
    schema.add_argument("--markdown", action="store_true", help="docs/configuration.md instead")
    _add_onboarding(sub, sandbox, add)
    hub = add_hub_commands(sub, add)
    add("run", cmd_hub_run, "run the hub until SIGTERM/SIGINT", into=hub)
    return parser


def _add_onboarding(sub: Any, sandbox: argparse.ArgumentParser, add: Any) -> None:
    """``ecgw api ...`` and ``ecgw sandbox event ...`` (handlers in gateway.onboarding)."""
    api = sub.add_parser("api", help="onboarding with Spark: check, webhooks, reconcile")
    asub = api.add_subparsers(dest="action", required=True, metavar="ACTION")
    check = add(
        "check", cmd_api_check, "token, GET /events and the webhook, one line each", into=asub
    )
    check.add_argument("--webhook-url", help="the public URL Spark pushes to")
    hooks = asub.add_parser("webhooks", help="the webhooks registered with the API")
    hsub = hooks.add_subparsers(dest="hook_action", required=True, metavar="ACTION")
    add("list", cmd_api_webhooks_list, "list webhooks", into=hsub).add_argument(
        "--json", action="store_true"
    )
    register = add(
        "register",
        cmd_api_webhooks_register,
        "register URL with the config's webhook secret",
        into=hsub,
    )
    register.add_argument("url")
    register.add_argument("--name", default="ecgw")
    register.add_argument(
        "--type", action="append", help="a notificationType (repeat; default all)"
    )
    for name, handler in (
        ("enable", cmd_api_webhooks_enable),
        ("disable", cmd_api_webhooks_disable),
    ):
        add(
            name, handler, f"{name} a webhook (id or URL; default: the one named ecgw)", into=hsub
        ).add_argument("webhook", nargs="?")
    reconcile = add(
        "reconcile",
        cmd_api_reconcile,
        "find and fetch events the gateway never received",
        into=asub,
    )
    reconcile.add_argument("--since", default="7d", help="how far back to look (default 7d)")
    reconcile.add_argument("--dry-run", action="store_true", help="list, fetch nothing")
    ssub = sandbox.add_subparsers(dest="action", required=False, metavar="ACTION")
    meter = add("meter", cmd_sandbox_meter, "serve a simulated SDM630 on Modbus TCP", into=ssub)
    meter.add_argument("--listen", default="127.0.0.1:5020", help="HOST:PORT (0: any free port)")
    meter.add_argument("--kw", type=float, default=3.0, help="the constant load it measures")
    meter.add_argument("--unit", type=int, default=1, help="its Modbus unit id")
    event = add("event", cmd_sandbox_event, "create an event in a running sandbox", into=ssub)
    event.add_argument("kind", choices=("pricecurve", "location-lpc", "resource-lpc"))
    event.add_argument("--url", default="http://127.0.0.1:8900", help="the sandbox's root URL")
    event.add_argument("--target", action="append", help="RESOURCE/LOCATION[/METERPOINT] (repeat)")
    event.add_argument("--intervals", type=int, default=4, help="how many intervals")
    event.add_argument("--length", default="1h", help="interval length: 15m, 1h or 00:15:00")
    event.add_argument(
        "--start", help="first interval, ISO-8601 (default: the next whole interval ahead)"
    )
    event.add_argument("--cap", type=float, default=0.0, help="LPC cap in kW")
    event.add_argument("--prices", help="comma-separated prices, repeated over the intervals")
    event.add_argument("--client-id", default="ecgw-sandbox")
    event.add_argument("--client-secret", default="sandbox-secret")


NO_CONFIG = {cmd_sandbox, cmd_demo, cmd_config_schema, cmd_sandbox_event, cmd_sandbox_meter}
QUIET = {cmd_demo}  # commands whose own output is the point: only warnings are logged


def _exit_cleanly(signum: int, frame: object) -> None:
    """SIGTERM/SIGINT before the event loop takes over: nothing has started; leave with 0."""
    raise SystemExit(EXIT_OK)


LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


def _log_level(default: str) -> str:
    """``ECGW_LOG_LEVEL`` (any case), or ``default``; another value is a config error."""
    level = os.environ.get("ECGW_LOG_LEVEL") or default
    if level.lower() not in LOG_LEVELS:
        raise ConfigError(
            f"expected one of {', '.join(LOG_LEVELS)}, got {level!r}", key="ECGW_LOG_LEVEL"
        )
    return level.lower()


def _require_utf8(args: argparse.Namespace) -> None:
    """Refs, event ids and names are text: one not valid UTF-8 (bytes the locale could not
    decode, kept as surrogates) is a usage error naming the argument. Paths may be any bytes."""
    for name, value in vars(args).items():
        if name in PATH_ARGUMENTS:
            continue
        for text in value if isinstance(value, list) else [value]:
            if isinstance(text, str):
                try:
                    text.encode("utf-8")
                except UnicodeEncodeError:
                    raise UsageError(f"{name}: not valid UTF-8 text: {text!a}") from None


def main(argv: list[str] | None = None) -> int:
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _exit_cleanly)
    args = _parser().parse_args(argv)
    try:
        _require_utf8(args)
        config = None
        if args.handler not in NO_CONFIG:
            config = load_config(getattr(args, "config", None))
            register_secrets(
                s.reveal()
                for s in (
                    config.client_secret,
                    config.webhook_secret,
                    config.hub_password,
                    config.upstream_password,
                )
                if s is not None
            )
        configure_logging(level=_log_level("warning" if args.handler in QUIET else "info"))
        handler: Handler = args.handler
        return run_process(handler(args, config))  # asyncio.run, bounded at the end
    except (ConfigError, UsageError) as exc:
        sys.stderr.write(f"ecgw: error: {render.printable(str(exc))}\n")
        return EXIT_USAGE
    except (ReportInvalid, WireError) as exc:
        sys.stderr.write(f"ecgw: invalid report: {render.printable(str(exc))}\n")
        return EXIT_USAGE
    except GatewayError as exc:
        sys.stderr.write(f"ecgw: {render.printable(str(exc))}\n")
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
