"""``ecgw hub run``: the fleet's hub (docs/fleet.md), composed like ``ecgw run``.

    webhook / poller -> inbox -> router ----publish----> <prefix>/sites/<site>/events
    <prefix>/sites/+/reports -> report intake -> outbox -> deliverer -> API
                                   acker <- (delivered | dead) --publish--> .../acks

The intake (webhook and poller), the outbox and its deliverer are ``ecgw run``'s own;
the hub has no adapters, no scheduler and no controller: its sites do that. Resources
are entered on one AsyncExitStack (the state directory's lock, the database, the HTTP
session, the webhook server, the admin listener) and closed in reverse; every loop is
supervised (:mod:`gateway.supervise`). The broker connection is one supervised loop: a
lost connection ends it, and the supervisor connects again with backoff; the router,
the report intake and the acker (:class:`gateway.fleet.hub.Hub`) run inside it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import time
from collections.abc import Callable

import structlog

from gateway.admin import serve_admin
from gateway.app import (
    RETAIN_EVERY,
    deliverer_for,
    keep_beating,
    keep_retaining,
    open_api_client,
    poller_for,
    stop_recorder,
    webhook_settings,
)
from gateway.backoff import Backoff
from gateway.config import Config, parse_listen
from gateway.config_rules import hub_site_clash
from gateway.errors import ConfigError
from gateway.fleet.broker import BrokerSettings, ack, connect, hub_settings
from gateway.fleet.hub import Hub, NotifyingOutbox
from gateway.fleet.sites import SiteEntry, SiteTable, parse_sites
from gateway.fleet.topics import Topics
from gateway.health import Health, HealthRules
from gateway.intake.webhook import serve_webhook
from gateway.lifecycle import settled, version
from gateway.metrics import hub_metrics
from gateway.reports.clock import ServerClock
from gateway.sdnotify import Notifier
from gateway.store.database import hold_state_dir, open_database
from gateway.store.fleet import FleetStore
from gateway.store.inbox import Inbox
from gateway.store.meta import Meta
from gateway.store.observed import Observed
from gateway.store.retention import Retention
from gateway.supervise import Supervisor

__all__ = ["HubGateway"]

log = structlog.get_logger("gateway.hub_app")

BROKER_BACKOFF = (0.5, 10.0)
"""Seconds before connecting again after the broker connection failed: first, at most."""


class HubGateway:
    def __init__(self, config: Config, *, clock: Callable[[], float] = time.time) -> None:
        if config.hub is None:
            raise ConfigError("ecgw hub needs a [hub] table (docs/fleet.md)", key="hub")
        self.config = config
        self.clock = clock
        self.webhook_url: str | None = None
        self.admin_url: str | None = None
        self.health = Health(clock)
        self.ready = asyncio.Event()
        self.notifier = Notifier.from_env()
        self.hub: Hub | None = None

    async def run(self) -> None:
        config = self.config
        hub_config = config.hub
        assert hub_config is not None
        config.require_api()
        topics = Topics(prefix=hub_config.prefix, share_group=hub_config.share_group)
        broker = hub_settings(config)  # a TLS file that does not load: ConfigError now
        try:
            config_sites = parse_sites(
                SiteEntry(s.site_id, s.resources, s.locations, s.meter_points)
                for s in hub_config.sites
            )
        except ValueError as exc:
            raise ConfigError(str(exc), key="hub.sites") from None
        loops = Supervisor()
        async with contextlib.AsyncExitStack() as stack:
            await stack.enter_async_context(hold_state_dir(config.state_path))
            # after a run that did not stop cleanly, the whole file is checked first
            db = await stack.enter_async_context(
                open_database(config.db_path, full_check_after_crash=True)
            )
            db.on_damage = loops.stop  # damage met by any statement stops the hub (exit 1)
            inbox, meta, store = Inbox(db), Meta(db), FleetStore(db)
            stack.push_async_exit(stop_recorder(meta, db, self.health, self.clock))
            try:  # a site both configured and imported, or an id claimed by two: say which
                await store.replace_sites(config_sites, "config", self.clock())
                for site in SiteTable(await store.sites()):  # the imported too
                    hub_site_clash(hub_config, site.site_id)
            except ValueError as exc:
                raise ConfigError(str(exc), key="hub.sites") from None
            server_clock = ServerClock(self.clock)
            api = await open_api_client(stack, config, server_clock, self.health)
            outbox = NotifyingOutbox(db)
            deliverer = deliverer_for(outbox, api, config, clock=self.clock, health=self.health)
            hub = Hub(
                inbox=inbox,
                store=store,
                topics=topics,
                ack=ack,
                on_queued=deliverer.wake,
                clock=self.clock,
            )
            outbox.on_settled = hub.settled  # each delivery round wakes the acker
            self.hub = hub
            settings = webhook_settings(config)
            if settings is not None:
                self.webhook_url = await stack.enter_async_context(
                    serve_webhook(settings, inbox, hub.wake, health=self.health)
                )
            started_at = self.clock()
            if config.admin is not None:
                host, port = parse_listen(config.admin.listen)
                rules = HealthRules(
                    api_budget=config.delivery.backoff_max, stale_after={}, started_at=started_at
                )
                self.admin_url = await stack.enter_async_context(
                    serve_admin(
                        host,
                        port,
                        health=self.health,
                        rules=rules,
                        observed=Observed(db),
                        clock=self.clock,
                        extra=lambda: hub_metrics(hub.counts),
                    )
                )
            await meta.started(pid=os.getpid(), now=started_at, webhook_url=self.webhook_url)
            log.info(
                "hub.started",
                version=version(),
                state_dir=config.gateway.state_dir,
                webhook=self.webhook_url,
                polling=config.poll is not None,
                broker=hub_config.url,
                sites=len(await store.sites()),
            )
            stack.enter_context(settled())  # until the run ends
            self.notifier.ready()
            stack.callback(self.notifier.stopping)
            async with loops:
                loops.start("delivery", deliverer.run)
                loops.start(
                    "broker",
                    functools.partial(self._broker, hub, broker),
                    backoff=Backoff(*BROKER_BACKOFF),
                )
                loops.start(
                    "heartbeat",
                    functools.partial(keep_beating, meta, self.health, self.notifier, self.clock),
                )
                loops.start(
                    "retention",
                    functools.partial(
                        keep_retaining, Retention(db), server_clock, clock=self.clock, api=True
                    ),
                    backoff=Backoff(60.0, RETAIN_EVERY),
                )
                poller = poller_for(
                    api, inbox, config, on_event=hub.wake, clock=self.clock, health=self.health
                )
                if poller is not None:
                    loops.start("poller", poller.run)
                self.ready.set()

    async def _broker(self, hub: Hub, settings: BrokerSettings) -> None:
        """One connection: the hub's loops run on it until it fails (a BrokerError; then
        the supervisor connects again, with backoff)."""
        async with connect(settings) as client:
            await hub.serve(client)
