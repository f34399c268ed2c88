"""The composition root: opens every resource in order and runs the pipeline.

    webhook / poller -> inbox -> scheduler (planner, builder) -> outbox -> deliverer -> API
                                   ^
    adapters -> runtime -> readings store

Resources are entered on one AsyncExitStack (database, readings writer, HTTP
session, webhook server, adapter runtime) and closed in reverse; every loop
runs as a named task in one TaskGroup. Cancelling :meth:`Gateway.run`
(SIGTERM, SIGINT) stops the loops, hands in-flight reports back to the
outbox, stops the adapters, then closes the server, the session and the
database.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence

import aiohttp
import structlog

from gateway.config import Config
from gateway.delivery.api import ApiClient, ServerClock, TokenSource
from gateway.delivery.deliverer import Deliverer
from gateway.errors import AdapterLoadError, ConfigError, StoreError
from gateway.intake.poller import Poller
from gateway.intake.webhook import WebhookSettings, serve_webhook
from gateway.metering.discovery import build_adapters
from gateway.metering.runtime import AdapterRuntime, AdapterStatus
from gateway.plugin import Adapter, Channel, Reading
from gateway.reports.scheduler import ReportScheduler
from gateway.store.database import open_database
from gateway.store.inbox import Inbox
from gateway.store.meta import Meta
from gateway.store.outbox import Outbox
from gateway.store.readings import ReadingsStore

__all__ = ["Gateway", "load_adapters", "webhook_settings"]

log = structlog.get_logger("gateway.app")

HEARTBEAT_EVERY = 15.0
COMPACT_EVERY = 3600.0


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
    initialised is returned as a load error, and the others run on."""
    adapters, errors = build_adapters(config.adapters)
    for error in errors.values():
        if isinstance(error.__cause__, ConfigError):
            raise error.__cause__
    wanted = [(f"resources[{i}]", r.adapter, r.channel) for i, r in enumerate(config.resources)]
    wanted += [(f"locations[{i}]", r.adapter, r.channel) for i, r in enumerate(config.locations)]
    for where, name, channel in wanted:
        adapter = adapters.get(name)
        names = [c.name for c in adapter.channels()] if adapter is not None else []
        if adapter is not None and channel not in names:
            raise ConfigError(
                f"adapter {name!r} has no channel {channel!r} (it has: {', '.join(names)})",
                key=f"{where}.channel",
            )
    return adapters, errors


class _ReadingsSink:
    """The runtime's sink: (re-)registers an adapter's channels, then commits readings."""

    def __init__(self, store: ReadingsStore, adapters: Mapping[str, Adapter]) -> None:
        self._store = store
        self._adapters = adapters
        self._known: dict[str, tuple[Channel, ...]] = {}

    async def register_all(self) -> None:
        for name, adapter in self._adapters.items():
            await self._register(name, tuple(adapter.channels()))

    async def _register(self, name: str, channels: tuple[Channel, ...]) -> None:
        if self._known.get(name) != channels:
            await self._store.register_channels(name, channels)
            self._known[name] = channels

    async def __call__(self, name: str, readings: Sequence[Reading]) -> None:
        # An adapter may learn a channel's details (a wrap modulus) only once it has read.
        try:
            await self._register(name, tuple(self._adapters[name].channels()))
            await self._store.write(name, readings)
        except StoreError as exc:
            # Not committed, so not accepted; a counter's next reading carries the energy on.
            log.error("readings.not_stored", adapter=name, count=len(readings), error=str(exc))


class Gateway:
    def __init__(self, config: Config, *, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.clock = clock
        self.webhook_url: str | None = None
        self.ready = asyncio.Event()
        self._scheduler: ReportScheduler | None = None

    async def run(self) -> None:
        config = self.config
        api_config = config.require_api()
        assert config.client_secret is not None
        adapters, load_errors = load_adapters(config)
        for name, error in load_errors.items():
            log.error("adapter.load_failed", adapter=name, error=str(error))
        async with contextlib.AsyncExitStack() as stack:
            db = await stack.enter_async_context(open_database(config.db_path))
            inbox, outbox, meta = Inbox(db), Outbox(db), Meta(db)
            readings = ReadingsStore(db)
            await stack.enter_async_context(readings.writer())
            sink = _ReadingsSink(readings, adapters)
            await sink.register_all()
            session = await stack.enter_async_context(
                aiohttp.ClientSession(headers={"User-Agent": "ecgw"})
            )
            server_clock = ServerClock(self.clock)
            tokens = TokenSource(
                session,
                token_url=api_config.token_url,
                client_id=api_config.client_id,
                client_secret=config.client_secret,
                timeout=config.delivery.timeout,
            )
            api = ApiClient(
                session,
                base_url=api_config.base_url,
                tokens=tokens,
                timeout=config.delivery.timeout,
                server_clock=server_clock,
            )
            delivery = config.delivery
            deliverer = Deliverer(
                outbox,
                api,
                concurrency=delivery.concurrency,
                backoff_initial=delivery.backoff_initial,
                backoff_max=delivery.backoff_max,
                retry_after_max=delivery.retry_after_max,
                clock=self.clock,
            )
            scheduler = ReportScheduler(
                db=db,
                readings=readings,
                config=config,
                server_clock=server_clock,
                on_queued=deliverer.wake,
                clock=self.clock,
            )
            self._scheduler = scheduler
            settings = webhook_settings(config)
            if settings is not None:
                self.webhook_url = await stack.enter_async_context(
                    serve_webhook(settings, inbox, scheduler.wake)
                )
            await stack.enter_async_context(
                AdapterRuntime(
                    adapters,
                    sink,
                    status_sink=self._status_sink(meta),
                    load_errors=load_errors,
                    clock=self.clock,
                )
            )
            await meta.started(pid=os.getpid(), now=self.clock(), webhook_url=self.webhook_url)
            log.info(
                "gateway.started",
                state_dir=config.gateway.state_dir,
                webhook=self.webhook_url,
                polling=config.poll is not None,
                adapters=sorted(adapters),
                failed_adapters=sorted(load_errors),
            )
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(deliverer.run(), name="delivery")
                tasks.create_task(scheduler.run(), name="scheduler")
                tasks.create_task(self._heartbeat(meta), name="heartbeat")
                tasks.create_task(self._compact(readings), name="compaction")
                if config.poll is not None:
                    poller = Poller(
                        api,
                        inbox,
                        interval=config.poll.interval,
                        page_size=config.poll.page_size,
                        on_event=scheduler.wake,
                        clock=self.clock,
                    )
                    tasks.create_task(poller.run(), name="poller")
                self.ready.set()

    def _status_sink(self, meta: Meta) -> Callable[[AdapterStatus], Awaitable[None]]:
        async def put(status: AdapterStatus) -> None:
            await meta.put(**{f"adapter.{status.name}": dataclasses.asdict(status)})

        return put

    async def _heartbeat(self, meta: Meta) -> None:
        while True:
            try:
                await meta.heartbeat(now=self.clock())
            except StoreError as exc:
                log.error("gateway.heartbeat_failed", error=str(exc))
            await asyncio.sleep(HEARTBEAT_EVERY)

    async def _compact(self, readings: ReadingsStore) -> None:
        metering = self.config.metering
        while True:
            try:
                stats = await readings.compact(
                    now=self.clock(),
                    raw_retention=metering.raw_retention,
                    retention=metering.retention,
                    max_gap=metering.max_gap,
                )
                log.info("readings.compacted", **dataclasses.asdict(stats))
            except StoreError as exc:  # nothing is lost: raw readings wait for the next run
                log.error("readings.compaction_failed", error=str(exc))
            await asyncio.sleep(COMPACT_EVERY)
