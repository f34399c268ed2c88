"""The composition root: opens every resource in order and runs the pipeline.

    webhook / poller -> inbox -> planner -> outbox -> deliverer -> POST /reports
                                   ^
    adapters -> runtime -> readings store

Resources are entered on one AsyncExitStack (database, HTTP session, webhook
server) and closed in reverse; every loop runs as a named task in one
TaskGroup. Cancelling :meth:`Gateway.run` (SIGTERM, SIGINT) stops the loops,
hands in-flight reports back to the outbox, then closes the server, the
session and the database.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable

import aiohttp
import structlog

from gateway.config import Config
from gateway.delivery.api import ApiClient, TokenSource
from gateway.delivery.deliverer import Deliverer
from gateway.intake.poller import Poller
from gateway.intake.webhook import WebhookSettings, serve_webhook
from gateway.store.database import open_database
from gateway.store.inbox import Inbox
from gateway.store.meta import Meta
from gateway.store.outbox import Outbox

__all__ = ["Gateway"]

log = structlog.get_logger("gateway.app")

HEARTBEAT_EVERY = 15.0


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


class Gateway:
    def __init__(self, config: Config, *, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.clock = clock
        self.webhook_url: str | None = None
        self.ready = asyncio.Event()

    async def run(self) -> None:
        config = self.config
        api_config = config.require_api()
        assert config.client_secret is not None
        async with contextlib.AsyncExitStack() as stack:
            db = await stack.enter_async_context(open_database(config.db_path))
            inbox, outbox, meta = Inbox(db), Outbox(db), Meta(db)
            session = await stack.enter_async_context(
                aiohttp.ClientSession(headers={"User-Agent": "ecgw"})
            )
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
            on_event = self._on_event
            settings = webhook_settings(config)
            if settings is not None:
                self.webhook_url = await stack.enter_async_context(
                    serve_webhook(settings, inbox, on_event)
                )
            await meta.started(pid=os.getpid(), now=self.clock(), webhook_url=self.webhook_url)
            log.info(
                "gateway.started",
                state_dir=config.gateway.state_dir,
                webhook=self.webhook_url,
                polling=config.poll is not None,
            )
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(deliverer.run(), name="delivery")
                tasks.create_task(self._heartbeat(meta), name="heartbeat")
                if config.poll is not None:
                    poller = Poller(
                        api,
                        inbox,
                        interval=config.poll.interval,
                        page_size=config.poll.page_size,
                        on_event=on_event,
                        clock=self.clock,
                    )
                    tasks.create_task(poller.run(), name="poller")
                self.ready.set()

    def _on_event(self, event_id: str) -> None:
        """A new event is in the inbox. (The planner hooks in here.)"""
        del event_id

    async def _heartbeat(self, meta: Meta) -> None:
        while True:
            await meta.heartbeat(now=self.clock())
            await asyncio.sleep(HEARTBEAT_EVERY)
