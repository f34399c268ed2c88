"""Plans as retained JSON on MQTT, for an EMS the site already has (``[control] publish``).

``mqtt://HOST[:PORT]/PREFIX`` (or ``mqtts://``): every plan that is open (a cap
not yet ended, a schedule whose window has not ended) is published, QoS 1 and
retained, on ``PREFIX/plans/EVENT_ID`` as the JSON ``ecgw plan show --json``
prints, each time it changes. Home Assistant, OpenEMS or evcc can subscribe to
``PREFIX/plans/#`` and follow. Publishing is for display only: a broker that
is down is retried with backoff and never holds anything else up.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import ssl
import time
import urllib.parse
from collections.abc import Callable

import aiomqtt
import structlog

from gateway.backoff import Backoff
from gateway.config import Config
from gateway.control.plan_view import plan_record
from gateway.errors import describe
from gateway.store.control import ControlStore
from gateway.store.database import Database

__all__ = ["PlanPublisher", "publish_target"]

log = structlog.get_logger("gateway.control")

EVERY = 2.0  # seconds between looks for changed plans


def publish_target(url: str) -> tuple[str, int, str, bool]:
    """``(host, port, prefix, tls)`` of a ``[control] publish`` URL (checked by config)."""
    parts = urllib.parse.urlsplit(url)
    tls = parts.scheme == "mqtts"
    host = parts.hostname or "localhost"
    port = parts.port or (8883 if tls else 1883)
    prefix = parts.path.strip("/") or "ecgw"
    return host, port, prefix, tls


class PlanPublisher:
    def __init__(
        self, db: Database, config: Config, *, clock: Callable[[], float] = time.time
    ) -> None:
        assert config.control.publish is not None
        self._db = db
        self._config = config
        self._clock = clock
        self._host, self._port, self._prefix, self._tls = publish_target(config.control.publish)
        self._sent: dict[str, str] = {}  # event id -> digest of what was published
        self._wake = asyncio.Event()

    def wake(self, *_: object) -> None:
        self._wake.set()

    async def run(self) -> None:
        backoff = Backoff(1.0, 60.0)
        while True:
            try:
                async with aiomqtt.Client(
                    self._host,
                    self._port,
                    identifier=f"ecgw-plans-{self._prefix}",
                    tls_context=ssl.create_default_context() if self._tls else None,
                    timeout=10.0,
                ) as client:
                    backoff.reset()
                    self._sent.clear()  # a new session: publish everything open again
                    log.info("control.publishing", broker=f"{self._host}:{self._port}")
                    while True:
                        await self._publish_changed(client)
                        self._wake.clear()
                        try:
                            async with asyncio.timeout(EVERY):
                                await self._wake.wait()
                        except TimeoutError:
                            pass
            except aiomqtt.MqttError as exc:
                delay = backoff.next()
                log.warning("control.publish_failed", error=describe(exc), retry_in=delay)
                await asyncio.sleep(delay)

    async def _publish_changed(self, client: aiomqtt.Client) -> None:
        now = self._clock()
        store = ControlStore(self._db)
        events = {d.event_id for d in await store.held_caps(now=now)}
        events |= {s.event_id for s in await store.schedules_open(now=now)}
        for event_id in sorted(events):
            record = await plan_record(self._db, self._config, event_id)
            if record is None:
                continue
            body = json.dumps(record, sort_keys=True).encode()
            digest = hashlib.sha256(body).hexdigest()
            if self._sent.get(event_id) == digest:
                continue
            topic = f"{self._prefix}/plans/{_topic_safe(event_id)}"
            await client.publish(topic, body, qos=1, retain=True)
            self._sent[event_id] = digest


def _topic_safe(text: str) -> str:
    """An event id as one topic level: no level separator, wildcard or NUL."""
    return "".join("_" if c in "/+#\x00" else c for c in text) or "_"
