"""The composition root: opens every resource in order and runs the pipeline.

    webhook / poller -> inbox -> scheduler (planner, builder) -> outbox -> deliverer -> API
                                   ^
    adapters -> runtime -> readings store

A site of a fleet (``[upstream] mode = "hub"``) has no API client, webhook or poller:
its link to the hub (:mod:`gateway.fleet.site`) fills the inbox, and the deliverer
sends through the hub.

Resources are entered on one AsyncExitStack (the state directory's lock,
database, readings writer, HTTP session, webhook server, adapter runtime) and
closed in reverse; a second gateway on the same state directory stops at once
with a ConfigError (``gateway.state_dir``) naming the holder's PID; every loop
runs as a named, supervised task (:mod:`gateway.supervise`): a loop that fails
is logged and restarted with backoff, and only a fatal error (a broken
database, a config error) stops the gateway, leaving :meth:`Gateway.run` as
itself. Cancelling :meth:`Gateway.run` (SIGTERM, SIGINT) stops the loops, hands
in-flight reports back to the outbox, stops the adapters, then closes the
server, the session and the database.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import os
import time
from collections.abc import Awaitable, Callable, Sequence

import aiohttp
import structlog

from gateway.admin import serve_admin
from gateway.backoff import Backoff
from gateway.config import Config, parse_listen
from gateway.control.commands import Commander
from gateway.control.controller import Controller
from gateway.control.decider import Decider
from gateway.control.participant import Participant
from gateway.control.publish import PlanPublisher
from gateway.control.strategies import load_strategies
from gateway.delivery.api import ApiClient, TokenSource
from gateway.delivery.deliverer import Deliverer, ReportTransport
from gateway.errors import AdapterError, AdapterLoadError, ConfigError
from gateway.fleet.site import HubUpstream, hub_upstream, site_link
from gateway.health import STALE_FLOOR, Health, HealthRules, stale_limit
from gateway.intake.poller import Poller
from gateway.intake.webhook import WebhookSettings, serve_webhook
from gateway.lifecycle import settled, version
from gateway.metering.discovery import build_adapters
from gateway.metering.latest import LatestReadings
from gateway.metering.runtime import AdapterRuntime, AdapterStatus, adapter_channels
from gateway.plugin import Adapter, AdapterConfig, Channel, Reading
from gateway.reports.clock import ServerClock, clock_problem
from gateway.reports.scheduler import ReportScheduler
from gateway.sdnotify import Notifier
from gateway.store.control import ControlStore
from gateway.store.database import Database, hold_state_dir, open_database
from gateway.store.inbox import Inbox
from gateway.store.meta import Meta
from gateway.store.observed import Observed
from gateway.store.outbox import Outbox
from gateway.store.readings import ReadingsStore
from gateway.store.retention import Retention
from gateway.supervise import Supervisor

__all__ = [
    "Gateway",
    "clock_distrust",
    "keep_retaining",
    "load_adapters",
    "stop_recorder",
    "webhook_settings",
]

log = structlog.get_logger("gateway.app")

HEARTBEAT_EVERY = 15.0
COMPACT_EVERY = 3600.0
RETAIN_EVERY = 3600.0
RETAIN_RECHECK = 60.0  # seconds between looks at a clock retention does not trust yet


def webhook_settings(config: Config) -> WebhookSettings | None:
    hook = config.webhook
    if hook is None:
        return None
    assert config.webhook_secret is not None  # parse_config guarantees it
    host, _, port = hook.listen.rpartition(":")
    return WebhookSettings(
        host=host.strip("[]"),
        port=int(port),
        path=hook.path,
        secret=config.webhook_secret,
        max_body=hook.max_body,
        read_timeout=hook.read_timeout,
    )


def load_adapters(
    config: Config,
) -> tuple[dict[str, Adapter], dict[str, AdapterLoadError]]:
    """Build the configured adapters. A config mistake in an adapter table is a
    ConfigError (the gateway does not start); a plugin that cannot be imported or
    initialised is returned as a load error, and the others run on. A resource's
    channel is checked against its adapter's ``channels()``, unless that call
    fails: then the adapter runtime reports and retries it."""
    adapters, errors = build_adapters(config.adapters)
    for error in errors.values():
        if isinstance(error.__cause__, ConfigError):
            raise error.__cause__
    wanted = [(f"resources[{i}]", r.adapter, r.channel) for i, r in enumerate(config.resources)]
    wanted += [(f"locations[{i}]", r.adapter, r.channel) for i, r in enumerate(config.locations)]
    for where, name, channel in wanted:
        names = _channel_names(name, adapters.get(name))
        if names is not None and channel not in names:
            raise ConfigError(
                f"adapter {name!r} has no channel {channel!r} (it has: {', '.join(names)})",
                key=f"{where}.channel",
            )
    return adapters, errors


def _channel_names(name: str, adapter: Adapter | None) -> list[str] | None:
    """The adapter's channel names; None if there is no adapter or its channels() fails."""
    if adapter is None:
        return None
    try:
        return [c.name for c in adapter_channels(name, adapter)]
    except AdapterError:
        return None


def _poll_interval(adapter: Adapter) -> float:
    """The adapter's ``poll_interval`` (0 if its config cannot be read: the floor applies)."""
    config = getattr(adapter, "config", None)
    return float(config.poll_interval) if isinstance(config, AdapterConfig) else 0.0


class _ReadingsSink:
    """The runtime's sinks: registers an adapter's channels, commits its readings, then
    hands them to the latest-readings cache (the controller's view; never ahead of the
    database).

    A StoreError propagates: the runtime logs the batch as not stored (so not
    accepted; a counter's next reading carries the energy on).
    """

    def __init__(self, store: ReadingsStore, latest: LatestReadings, health: Health) -> None:
        self._store = store
        self._latest = latest
        self._health = health

    async def channels(self, name: str, channels: tuple[Channel, ...]) -> None:
        await self._store.register_channels(name, channels)
        self._latest.channels(name, channels)

    async def __call__(self, name: str, readings: Sequence[Reading]) -> None:
        await self._store.write(name, readings)
        self._latest.put(name, readings)
        self._health.readings_stored(name, len(readings))


def stop_recorder(
    meta: Meta, db: Database, health: Health, clock: Callable[[], float]
) -> Callable[..., Awaitable[bool]]:
    """An exit callback (``AsyncExitStack.push_async_exit``): a cancelled run (SIGTERM,
    SIGINT) is a clean stop, recorded; never after the database was found damaged, so that
    the next start reads the whole file (:mod:`gateway.store.open_checks`)."""

    async def record(exc_type: type[BaseException] | None, *_: object) -> bool:
        if db.damage is not None:
            return False
        if exc_type is not None and issubclass(exc_type, asyncio.CancelledError):
            # what it last saw (a report delivered after the last beat, say) stays shown
            await meta.put(**{"gateway.health": health.snapshot()})
            await meta.stopped(now=clock(), reason="signal")
        return False

    return record


async def open_api_client(
    stack: contextlib.AsyncExitStack, config: Config, server_clock: ServerClock, health: Health
) -> ApiClient:
    """Spark's API client (``[api]``), on a session the stack closes."""
    api_config = config.require_api()
    assert config.client_secret is not None  # require_api guarantees it
    session = await stack.enter_async_context(aiohttp.ClientSession(headers={"User-Agent": "ecgw"}))
    tokens = TokenSource(
        session,
        token_url=api_config.token_url,
        client_id=api_config.client_id,
        client_secret=config.client_secret,
        timeout=config.delivery.timeout,
        health=health,
    )
    return ApiClient(
        session,
        base_url=api_config.base_url,
        tokens=tokens,
        timeout=config.delivery.timeout,
        server_clock=server_clock,
    )


def deliverer_for(
    outbox: Outbox,
    transport: ReportTransport,
    config: Config,
    *,
    clock: Callable[[], float],
    health: Health,
) -> Deliverer:
    """The outbox's deliverer, as ``[delivery]`` says."""
    delivery = config.delivery
    return Deliverer(
        outbox,
        transport,
        concurrency=delivery.concurrency,
        backoff_initial=delivery.backoff_initial,
        backoff_max=delivery.backoff_max,
        retry_after_max=delivery.retry_after_max,
        clock=clock,
        health=health,
    )


def poller_for(
    api: ApiClient | None,
    inbox: Inbox,
    config: Config,
    *,
    on_event: Callable[[str], None],
    clock: Callable[[], float],
    health: Health,
) -> Poller | None:
    """The ``GET /events`` poller when ``[poll]`` is set (a site of a fleet, without an
    API client, polls nobody)."""
    if config.poll is None or api is None:
        return None
    return Poller(
        api,
        inbox,
        interval=config.poll.interval,
        page_size=config.poll.page_size,
        on_event=on_event,
        clock=clock,
        health=health,
    )


async def keep_beating(
    meta: Meta, health: Health, notifier: Notifier, clock: Callable[[], float]
) -> None:
    """Beat every HEARTBEAT_EVERY (or systemd's watchdog interval, if shorter), with the
    health record's status part, and feed the watchdog after each beat written: a process
    whose database or event loop hangs stops feeding it and is restarted. Sooner when the
    error state changes (an API failure, an adapter error set or cleared)."""
    every = min(HEARTBEAT_EVERY, notifier.watchdog_interval or HEARTBEAT_EVERY)
    changed = asyncio.Event()
    health.on_change = changed.set
    loop = asyncio.get_running_loop()
    beat_at = loop.time()
    while True:
        changed.clear()
        await meta.put(**{"gateway.health": health.snapshot()})
        if loop.time() >= beat_at:
            await meta.heartbeat(now=clock())
            notifier.watchdog()
            beat_at = loop.time() + every
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(beat_at - loop.time(), 0.0)):
                await changed.wait()


class Gateway:
    def __init__(
        self,
        config: Config,
        *,
        clock: Callable[[], float] = time.time,
        stale_floor: float = STALE_FLOOR,
    ) -> None:
        self.config = config
        self.clock = clock
        self.webhook_url: str | None = None
        self.admin_url: str | None = None
        self.health = Health(clock)
        self._stale_floor = stale_floor
        self.ready = asyncio.Event()
        self.notifier = Notifier.from_env()  # systemd's READY/WATCHDOG/STOPPING; else a no-op
        self._scheduler: ReportScheduler | None = None

    async def run(self) -> None:
        config = self.config
        if config.upstream is None:  # standalone; a site of a fleet holds no API credentials
            config.require_api()
        loops = Supervisor()
        async with contextlib.AsyncExitStack() as stack:
            # First: one gateway per state directory (before any plugin is built).
            await stack.enter_async_context(hold_state_dir(config.state_path))
            adapters, load_errors = load_adapters(config)
            for name, error in load_errors.items():
                log.error("adapter.load_failed", adapter=name, error=str(error))
            # after a run that did not stop cleanly, the whole file is checked first
            db = await stack.enter_async_context(
                open_database(config.db_path, full_check_after_crash=True)
            )
            # damage met by any statement stops the gateway (exit 1), whoever caught it
            db.on_damage = loops.stop
            inbox, outbox, meta = Inbox(db), Outbox(db), Meta(db)
            # runs last, before the db closes
            stack.push_async_exit(stop_recorder(meta, db, self.health, self.clock))
            readings = ReadingsStore(db)
            await stack.enter_async_context(readings.writer())
            latest = LatestReadings(clock=self.clock)
            sink = _ReadingsSink(readings, latest, self.health)
            server_clock = ServerClock(self.clock)
            api: ApiClient | None = None
            hub: HubUpstream | None = None
            transport: ReportTransport
            if config.upstream is not None:  # a site: reports go to the hub (gateway.fleet)
                transport = hub = hub_upstream(config.upstream)
            else:
                transport = api = await open_api_client(stack, config, server_clock, self.health)
            deliverer = deliverer_for(
                outbox, transport, config, clock=self.clock, health=self.health
            )
            control_store = ControlStore(db)
            switch_states: dict[str, bool | None] = {}  # the controller's, read by the decider
            strategies, strategy_errors = load_strategies()
            for strategy, problem in strategy_errors.items():
                log.error("strategy.load_failed", strategy=strategy, error=problem)
            participant = Participant(
                config,
                control_store,
                Decider(
                    config, control_store, readings, latest, states=switch_states, clock=self.clock
                ),
                strategies,
            )
            scheduler = ReportScheduler(
                db=db,
                readings=readings,
                config=config,
                server_clock=server_clock,
                on_queued=deliverer.wake,
                clock=self.clock,
                participant=participant,
                health=self.health,
            )
            self._scheduler = scheduler
            settings = webhook_settings(config)
            if settings is not None:
                self.webhook_url = await stack.enter_async_context(
                    serve_webhook(settings, inbox, scheduler.wake, health=self.health)
                )
            if hub is not None:  # instead of the webhook and the poller
                await stack.enter_async_context(
                    site_link(
                        config,
                        inbox=inbox,
                        on_event=scheduler.wake,
                        upstream=hub,
                        clock=self.clock,
                        on_fatal=loops.stop,
                    )
                )
            runtime = await stack.enter_async_context(
                AdapterRuntime(
                    adapters,
                    sink,
                    channels_sink=sink.channels,
                    status_sink=self._status_sink(meta),
                    on_fatal=loops.stop,
                    load_errors=load_errors,
                    clock=self.clock,
                )
            )
            controller = Controller(
                config,
                control_store,
                Commander(
                    control_store,
                    runtime,
                    confirm_timeout=config.control.confirm_timeout,
                    attempts=config.control.attempts,
                    dry_run=config.control.dry_run,
                    clock=self.clock,
                ),
                latest,
                runtime,
                states=switch_states,
                clock=self.clock,
            )
            participant.on_change(controller.wake)
            started_at = self.clock()
            if config.admin is not None:
                self.admin_url = await stack.enter_async_context(
                    self._admin(config, Observed(db), adapters, started_at)
                )
            await meta.started(pid=os.getpid(), now=started_at, webhook_url=self.webhook_url)
            log.info(
                "gateway.started",
                version=version(),
                state_dir=config.gateway.state_dir,
                webhook=self.webhook_url,
                polling=config.poll is not None,
                upstream="hub" if hub is not None else "api",
                adapters=sorted(adapters),
                failed_adapters=sorted(load_errors),
            )
            stack.enter_context(settled())  # until the run ends
            self.notifier.ready()
            stack.callback(self.notifier.stopping)  # after the loops, before the resources close
            async with loops:
                loops.start("delivery", deliverer.run)
                loops.start("scheduler", scheduler.run)
                loops.start("controller", controller.run)
                if config.control.publish is not None:
                    publisher = PlanPublisher(db, config, clock=self.clock)
                    participant.on_change(publisher.wake)
                    loops.start("plans", publisher.run)
                loops.start(
                    "heartbeat",
                    functools.partial(keep_beating, meta, self.health, self.notifier, self.clock),
                )
                loops.start(
                    "compaction",
                    functools.partial(self._compact, readings, server_clock, api=api is not None),
                    backoff=Backoff(60.0, COMPACT_EVERY),  # a failed pass waits, up to an hour
                )
                loops.start(
                    "retention",
                    functools.partial(
                        keep_retaining,
                        Retention(db),
                        server_clock,
                        clock=self.clock,
                        api=api is not None,
                    ),
                    backoff=Backoff(60.0, RETAIN_EVERY),
                )
                poller = poller_for(
                    api,
                    inbox,
                    config,
                    on_event=scheduler.wake,
                    clock=self.clock,
                    health=self.health,
                )
                if poller is not None:
                    loops.start("poller", poller.run)
                self.ready.set()

    def _status_sink(self, meta: Meta) -> Callable[[AdapterStatus], Awaitable[None]]:
        async def put(status: AdapterStatus) -> None:
            record = dataclasses.asdict(status)
            self.health.adapter_status(record)
            await meta.put(**{f"adapter.{status.name}": record})

        return put

    def _admin(
        self, config: Config, observed: Observed, adapters: dict[str, Adapter], started_at: float
    ) -> contextlib.AbstractAsyncContextManager[str]:
        assert config.admin is not None
        host, port = parse_listen(config.admin.listen)
        rules = HealthRules(
            api_budget=config.delivery.backoff_max,
            stale_after={
                name: stale_limit(_poll_interval(adapter), self._stale_floor)
                for name, adapter in adapters.items()
            },
            started_at=started_at,
        )
        return serve_admin(
            host, port, health=self.health, rules=rules, observed=observed, clock=self.clock
        )

    async def _compact(
        self, readings: ReadingsStore, server_clock: ServerClock, *, api: bool
    ) -> None:
        """Compact now and every COMPACT_EVERY; a failure is the supervisor's (nothing is lost:
        raw readings wait for the next pass). Readings past ``metering.retention`` are
        deleted only with a clock retention trusts (:meth:`_distrust`): a clock far ahead
        would delete every reading collected so far. Compaction itself goes on."""
        metering = self.config.metering
        said: str | None = None
        while True:
            now = self.clock()
            held = clock_distrust(now, server_clock, api=api)
            if held is not None and held != said:
                log.warning("readings.expiry_held_back", reason=held)
            said = held
            stats = await readings.compact(
                now=now,
                raw_retention=metering.raw_retention,
                retention=metering.retention,
                max_gap=metering.max_gap,
                expire=held is None,
            )
            log.info("readings.compacted", **dataclasses.asdict(stats))
            await asyncio.sleep(COMPACT_EVERY if held is None else RETAIN_RECHECK)


def clock_distrust(now: float, server_clock: ServerClock, *, api: bool) -> str | None:
    """Why the clock cannot be trusted to count months and days back for deleting, or
    None: while the scheduler would hold reports back, and with an API until its
    ``Date`` has been seen once (a site of a fleet has none to compare with)."""
    held = clock_problem(now, api_date=server_clock.api_date, seen_at=server_clock.seen_at)
    if held is None and api and server_clock.api_date is None:
        held = "the API's clock has not been seen yet"
    return held


async def keep_retaining(
    retention: Retention, server_clock: ServerClock, *, clock: Callable[[], float], api: bool
) -> None:
    """Retention now and every RETAIN_EVERY, in short slices (gateway.store.retention),
    only with a clock it can trust (:func:`clock_distrust`, checked again every
    RETAIN_RECHECK): retention drops what is older than months counted from the clock, so
    a clock far ahead would drop what is still needed. Run by ``ecgw run`` and ``ecgw hub
    run``."""
    said: str | None = None
    while True:
        now = clock()
        held = clock_distrust(now, server_clock, api=api)
        if held is not None:
            if held != said:
                log.warning("retention.held_back", reason=held)
            said = held
            await asyncio.sleep(RETAIN_RECHECK)
            continue
        said = None
        tally = await retention.run_once(now=now)
        if tally.slices or tally.pages_freed:
            log.info("retention.pass", **dataclasses.asdict(tally))
        await asyncio.sleep(RETAIN_EVERY)
