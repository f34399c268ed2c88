"""MQTT topic names shared by the hub and its sites (pure).

Every site has four topics under ``<prefix>/sites/<site>/``:

* ``events``: the hub publishes each event the site owns (QoS 1, retained: no);
* ``reports``: the site publishes its reports;
* ``acks``: the hub answers each report (Spark's report id, or why it was rejected);
* ``status``: the site's ``online`` (retained, on connect) and ``offline`` (its will).

Hubs read every site's reports through one shared subscription
(``$share/<group>/<prefix>/sites/+/reports``), so that several hubs share the load
and each report reaches one of them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["OFFLINE", "ONLINE", "Topics", "check_prefix", "check_site_id"]

ONLINE = b"online"
OFFLINE = b"offline"
"""The payloads of a site's ``status`` topic (retained): ``offline`` is its will."""

_SITE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
"""A site id is one topic level and a broker user name: no ``/``, ``+``, ``#``, ``$``,
spaces or control characters, at most 64 characters."""

_PREFIX_LEVEL = re.compile(r"[A-Za-z0-9._-]{1,64}")


def check_site_id(site_id: str) -> str:
    """``site_id`` if it can name a topic level and a broker user; ValueError if not."""
    if not isinstance(site_id, str) or not _SITE_ID.fullmatch(site_id):
        shown = repr(site_id)[:80]
        raise ValueError(
            f"site id {shown} must be 1-64 characters of letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return site_id


def check_prefix(prefix: str) -> str:
    """``prefix`` if every level of it is plain (no wildcards, no ``$``, none empty)."""
    levels = prefix.split("/")
    if not prefix or len(levels) > 8 or not all(_PREFIX_LEVEL.fullmatch(lv) for lv in levels):
        raise ValueError(
            f"topic prefix {prefix[:80]!r} must be 1-8 levels of letters, digits, '.', '_' "
            "or '-', separated by '/'"
        )
    return prefix


@dataclass(frozen=True, slots=True)
class Topics:
    prefix: str = "ecgw"
    share_group: str = "ecgw-hubs"

    def __post_init__(self) -> None:
        check_prefix(self.prefix)
        if not _PREFIX_LEVEL.fullmatch(self.share_group):
            raise ValueError(f"share group {self.share_group[:80]!r} is not a plain name")

    def site_root(self, site_id: str) -> str:
        return f"{self.prefix}/sites/{check_site_id(site_id)}"

    def events(self, site_id: str) -> str:
        return f"{self.site_root(site_id)}/events"

    def reports(self, site_id: str) -> str:
        return f"{self.site_root(site_id)}/reports"

    def acks(self, site_id: str) -> str:
        return f"{self.site_root(site_id)}/acks"

    def status(self, site_id: str) -> str:
        return f"{self.site_root(site_id)}/status"

    @property
    def all_status(self) -> str:
        """Every site's status (the hub's subscription, not shared: every hub keeps it)."""
        return f"{self.prefix}/sites/+/status"

    def site_of_status(self, topic: str) -> str | None:
        """The site a ``.../sites/<site>/status`` topic belongs to; None for another topic."""
        return self._site_of(topic, "/status")

    @property
    def all_reports(self) -> str:
        """Every site's reports (the filter a hub's shared subscription uses)."""
        return f"{self.prefix}/sites/+/reports"

    @property
    def shared_reports(self) -> str:
        return f"$share/{self.share_group}/{self.all_reports}"

    def site_of_report(self, topic: str) -> str | None:
        """The site a ``.../sites/<site>/reports`` topic belongs to; None for another topic."""
        return self._site_of(topic, "/reports")

    def _site_of(self, topic: str, tail: str) -> str | None:
        head = f"{self.prefix}/sites/"
        if not topic.startswith(head) or not topic.endswith(tail):
            return None
        site = topic[len(head) : -len(tail)]
        return site if _SITE_ID.fullmatch(site) else None
