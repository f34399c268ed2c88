"""``/metrics``: the health record and a few database counts in Prometheus text format.

Each scrape reads the database once (:class:`~gateway.store.observed.Observed`), then a
:class:`Scrape` collector turns that and the live :class:`~gateway.health.Health`
into metric families in a dedicated ``CollectorRegistry`` (never the global one: a
test or a second gateway in the process must not see this one's series).

Every metric, with its labels:

===============================================  ==========================  ===========
``ecgw_outbox_reports``                          ``state``                   gauge
``ecgw_outbox_oldest_pending_age_seconds``                                   gauge
``ecgw_outbox_oldest_pending_cutoff_seconds``    (left to the month-end cut-off; may be < 0)
``ecgw_deliveries_total``                        ``result``, ``status_class``  counter
``ecgw_last_delivery_success_timestamp_seconds``                             gauge
``ecgw_webhook_requests_total``                  ``outcome``                 counter
``ecgw_events_total``                            ``payload_type``            counter
``ecgw_reading_age_seconds``                     ``adapter``, ``channel``    gauge
``ecgw_readings_ingested_total``                 ``adapter``                 counter
``ecgw_adapter_restarts_total``                  ``adapter``                 counter
``ecgw_token_failures_total``                                                counter
===============================================  ==========================  ===========

The hub (``ecgw hub run``) adds, from :class:`gateway.fleet.hub.HubCounts`
(:func:`hub_metrics`): ``ecgw_hub_sites_online`` (gauge: sites whose last status is
``online``), ``ecgw_hub_events_total{outcome="routed"|"unrouted"}``,
``ecgw_hub_site_reports_total{outcome="accepted"|"rejected"}`` (counters since start) and
``ecgw_hub_answers_owed`` (gauge: site reports delivered or dead, not yet answered).

A gauge with no value to give (no pending report, no delivery yet) is left out, not 0;
the webhook outcomes and ``delivered``/``2xx`` are there from 0, so that a rate can be
taken from the start.
Counters of the record count since the gateway started, as Prometheus expects.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Protocol

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from gateway.health import Health
from gateway.store.observed import ChannelLatest, Observed, OldestPending

__all__ = ["WEBHOOK_OUTCOMES", "Extra", "Scrape", "hub_metrics", "render_metrics"]

WEBHOOK_OUTCOMES = ("stored", "duplicate", "rejected", "failed")  # shown from 0

Extra = Callable[[], Iterable[Metric]]
"""More metric families for a scrape (the hub's: :func:`hub_metrics`)."""


class HubFacts(Protocol):
    """What :func:`hub_metrics` reads (:class:`gateway.fleet.hub.HubCounts`)."""

    routed: int
    unrouted: int
    accepted: int
    rejected: int
    owed: int
    status: dict[str, str]


def hub_metrics(counts: HubFacts) -> Iterator[Metric]:
    online = GaugeMetricFamily("ecgw_hub_sites_online", "Sites whose last status is online")
    online.add_metric([], sum(1 for state in counts.status.values() if state == "online"))
    yield online
    events = CounterMetricFamily(
        "ecgw_hub_events", "Events routed to sites, or kept unrouted", labels=["outcome"]
    )
    events.add_metric(["routed"], counts.routed)
    events.add_metric(["unrouted"], counts.unrouted)
    yield events
    reports = CounterMetricFamily(
        "ecgw_hub_site_reports", "Site reports accepted or rejected", labels=["outcome"]
    )
    reports.add_metric(["accepted"], counts.accepted)
    reports.add_metric(["rejected"], counts.rejected)
    yield reports
    yield GaugeMetricFamily(
        "ecgw_hub_answers_owed",
        "Site reports delivered or dead whose answer is not yet published",
        value=counts.owed,
    )


@dataclass(frozen=True, eq=False)  # hashed by identity: the registry keys on collectors
class Scrape:
    """One scrape's facts; ``collect`` is the prometheus-client collector protocol."""

    health: Health
    now: float
    outbox: dict[str, int]
    oldest: OldestPending | None
    events: dict[str, int]
    channels: list[ChannelLatest]
    extra: Extra | None = None

    def collect(self) -> Iterator[Metric]:
        yield from self._outbox()
        yield from self._deliveries()
        yield from self._intake()
        yield from self._readings()
        if self.extra is not None:
            yield from self.extra()

    def _outbox(self) -> Iterator[Metric]:
        depth = GaugeMetricFamily(
            "ecgw_outbox_reports", "Reports in the outbox by state", labels=["state"]
        )
        for state, count in sorted(self.outbox.items()):
            depth.add_metric([state], count)
        yield depth
        age = GaugeMetricFamily(
            "ecgw_outbox_oldest_pending_age_seconds",
            "Age of the oldest report not yet delivered",
        )
        cutoff = GaugeMetricFamily(
            "ecgw_outbox_oldest_pending_cutoff_seconds",
            "Seconds left to the month-end cut-off of the oldest report not yet delivered",
        )
        if self.oldest is not None:
            age.add_metric([], self.now - self.oldest.created_at)
            if self.oldest.deadline is not None:
                cutoff.add_metric([], self.oldest.deadline - self.now)
        yield age
        yield cutoff

    def _deliveries(self) -> Iterator[Metric]:
        health = self.health
        deliveries = CounterMetricFamily(
            "ecgw_deliveries",
            "Report POST outcomes by result and HTTP status class",
            labels=["result", "status_class"],
        )
        for result, klass in sorted({("delivered", "2xx"), *health.deliveries}):
            deliveries.add_metric([result, klass], health.deliveries[(result, klass)])
        yield deliveries
        last = GaugeMetricFamily(
            "ecgw_last_delivery_success_timestamp_seconds",
            "When a report was last delivered (Unix time)",
        )
        if health.last_delivered_at is not None:
            last.add_metric([], health.last_delivered_at)
        yield last
        yield CounterMetricFamily(
            "ecgw_token_failures", "Failed token requests", value=health.token_failures
        )

    def _intake(self) -> Iterator[Metric]:
        webhook = CounterMetricFamily(
            "ecgw_webhook_requests", "Webhook requests by outcome", labels=["outcome"]
        )
        counted = self.health.webhook_requests
        for outcome in sorted({*WEBHOOK_OUTCOMES, *counted}):
            webhook.add_metric([outcome], counted[outcome])
        yield webhook
        events = CounterMetricFamily(
            "ecgw_events", "Events in the inbox by payload type", labels=["payload_type"]
        )
        for kind, count in sorted(self.events.items()):
            events.add_metric([kind], count)
        yield events

    def _readings(self) -> Iterator[Metric]:
        age = GaugeMetricFamily(
            "ecgw_reading_age_seconds",
            "Age of the newest stored reading per channel",
            labels=["adapter", "channel"],
        )
        for channel in self.channels:
            if channel.at is not None:
                age.add_metric([channel.adapter, channel.channel], self.now - channel.at)
        yield age
        ingested = CounterMetricFamily(
            "ecgw_readings_ingested", "Readings stored, by adapter", labels=["adapter"]
        )
        restarts = CounterMetricFamily(
            "ecgw_adapter_restarts", "Adapter restarts", labels=["adapter"]
        )
        for name in sorted(self.health.adapters):
            ingested.add_metric([name], self.health.readings[name])
            restarts.add_metric([name], self.health.adapter_restarts[name])
        yield ingested
        yield restarts


async def render_metrics(
    health: Health, observed: Observed, *, now: float, extra: Extra | None = None
) -> bytes:
    """The text exposition of one scrape (StoreError if the database cannot answer)."""
    scrape = Scrape(
        extra=extra,
        health=health,
        now=now,
        outbox=await observed.outbox_by_state(),
        oldest=await observed.oldest_pending(),
        events=await observed.events_by_payload_type(),
        channels=await observed.channels(),
    )
    registry = CollectorRegistry(auto_describe=False)
    registry.register(scrape)
    return generate_latest(registry)
