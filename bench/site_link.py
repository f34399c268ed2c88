"""Events into a site's inbox through the broker: the site link next to a bare subscriber.

One Mosquitto (gateway.testing.mosquitto); a publisher sends N PriceCurve events (QoS 1) to
the site's ``events`` topic. Each round times from the first publish to the last event
committed:

* ``link``: :class:`gateway.fleet.site.SiteLink` (decode, store in the inbox, wake, then
  the manual PUBACK), as ``ecgw run`` with ``[upstream]`` runs it;
* ``bare``: the baseline, an aiomqtt client on the same persistent-session, manual-PUBACK
  connection (``gateway.fleet.broker.connect``) that does only ``Inbox.add`` then the ack.

Each on a fresh SQLite file; rounds interleaved in pairs (link, bare, link, bare, ...).

    python bench/site_link.py [--events 500] [--pairs 5] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import aiomqtt

from gateway.fleet.broker import BrokerSettings, ack, connect, site_will
from gateway.fleet.site import HubUpstream, SiteLink
from gateway.fleet.topics import Topics
from gateway.intake.poller import to_new_event
from gateway.store.database import open_database
from gateway.store.inbox import Inbox
from gateway.testing.mosquitto import Mosquitto

SITE = "bench-site"
TOPICS = Topics()


def event(n: int, round_: int) -> bytes:
    return json.dumps(
        {
            "id": f"r{round_}-e{n}",
            "createdAt": "2026-12-01T10:00:00Z",
            "payload": {
                "payloadType": "PriceCurve",
                "priceArea": "NO1",
                "targets": [{"resourceId": "r1", "locationId": "loc-a"}],
                "priceCurveDelta": {
                    "points": [{"price": 0.5, "timestamp": "2026-12-02T00:00:00Z"}],
                    "resolution": "01:00:00",
                },
            },
        }
    ).encode()


async def publish(broker: Mosquitto, count: int, round_: int) -> float:
    """Publish ``count`` events; returns when the first was sent (perf_counter)."""
    async with aiomqtt.Client(broker.host, broker.port, identifier="bench-hub") as client:
        started = time.perf_counter()
        for n in range(count):
            await client.publish(TOPICS.events(SITE), event(n, round_), qos=1)
    return started


async def link_round(broker: Mosquitto, db_path: Path, count: int, round_: int) -> float:
    settings = BrokerSettings(broker.host, broker.port, None, None, None, f"{SITE}-{round_}")
    stored = asyncio.Event()
    seen = 0

    def woken(_: str) -> None:
        nonlocal seen
        seen += 1
        if seen == count:
            stored.set()

    async with open_database(db_path) as db:
        link = SiteLink(
            site_id=SITE,
            topics=TOPICS,
            connect=lambda: connect(settings, will=site_will(TOPICS, SITE)),
            ack=ack,
            inbox=Inbox(db),
            on_event=woken,
            upstream=HubUpstream(topic=TOPICS.reports(SITE), answer_timeout=5.0),
        )
        async with link:
            await link.connected.wait()
            started = await publish(broker, count, round_)
            await stored.wait()
            return time.perf_counter() - started


async def bare_round(broker: Mosquitto, db_path: Path, count: int, round_: int) -> float:
    settings = BrokerSettings(broker.host, broker.port, None, None, None, f"{SITE}-{round_}")
    async with open_database(db_path) as db, connect(settings) as client:
        inbox = Inbox(db)
        await client.subscribe(TOPICS.events(SITE), qos=1)
        sender = asyncio.create_task(publish(broker, count, round_))
        seen = 0
        async for message in client.messages:
            assert isinstance(message.payload, bytes)
            await inbox.add(to_new_event(message.payload), via="hub", at=time.time())
            ack(client, message)
            seen += 1
            if seen == count:
                break
        return time.perf_counter() - await sender


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=500)
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="100 events, 2 pairs")
    args = parser.parse_args()
    if args.quick:
        args.events, args.pairs = 100, 2
    ratios = []
    with tempfile.TemporaryDirectory() as tmp:
        async with Mosquitto.running(Path(tmp) / "broker") as broker:
            for pair in range(args.pairs):
                link_s = await link_round(
                    broker, Path(tmp) / f"link-{pair}.db", args.events, 2 * pair
                )
                bare_s = await bare_round(
                    broker, Path(tmp) / f"bare-{pair}.db", args.events, 2 * pair + 1
                )
                ratios.append(link_s / bare_s)
                print(
                    f"pair {pair + 1}: link {args.events / link_s:7.0f} events/s, "
                    f"bare {args.events / bare_s:7.0f} events/s, link/bare time {ratios[-1]:.3f}"
                )
    spread = f"{min(ratios):.3f}..{max(ratios):.3f}"
    print(
        f"{args.events} events a round, {args.pairs} pairs; load average "
        f"{os.getloadavg()[0]:.2f}; link/bare time: median {statistics.median(ratios):.3f}, "
        f"spread {spread}"
    )


if __name__ == "__main__":
    asyncio.run(main())
