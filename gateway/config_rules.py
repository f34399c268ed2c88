"""The ranges and rules a parsed config must meet, so that what loads can run.

Each numeric key has a range in :data:`LIMITS` (with the reason for it); the rules
between keys are in :func:`check_rules`; names, URLs and the webhook address are
checked by :func:`check_names` and :func:`check_endpoints`. Pure: what the machine
offers (a state directory, a host to listen on) is :mod:`gateway.config_probes`.
Every problem is a :class:`~gateway.errors.ConfigError` naming the key.
"""

from __future__ import annotations

import ipaddress
import json
import math
import re
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from gateway.errors import ConfigError
from gateway.fleet.sites import Site, SiteTable
from gateway.fleet.topics import Topics, check_prefix, check_site_id
from gateway.timeutil import MAX_DURATION, format_duration

if TYPE_CHECKING:
    from gateway.config import Config, HubConfig, UpstreamConfig

__all__ = [
    "LIMITS",
    "MONTH",
    "Limit",
    "check_broker_credentials",
    "check_fleet_tables",
    "check_values",
    "key_name",
    "parse_broker_url",
    "parse_listen",
    "parse_window",
    "shown",
]

# --- ranges -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Limit:
    """The range of one numeric key: ``low`` .. ``high``, and why."""

    low: float
    high: float
    why: str
    kind: Literal["duration", "integer", "bytes", "number"] = "duration"
    low_inclusive: bool = True

    def problem(self, value: float) -> str | None:
        """None if ``value`` is in range, else what is wrong with it."""
        above_low = value >= self.low if self.low_inclusive else value > self.low
        if math.isfinite(value) and above_low and value <= self.high:
            return None
        return f"must be {self.describe()}, got {self.show(value)}"

    def describe(self) -> str:
        low = "at least" if self.low_inclusive else "more than"
        return f"{low} {self.show(self.low)} and at most {self.show(self.high)}"

    def show(self, value: float) -> str:
        if self.kind == "duration" and math.isfinite(value) and value >= 0:
            return format_duration(value)
        if self.kind == "bytes" and value > 0:
            for unit, size in (("MiB", 1024 * 1024), ("KiB", 1024)):
                if value % size == 0:
                    return f"{value // size} {unit}"
        return str(value) if self.kind in ("integer", "bytes") else f"{value:g}"


_DAY = 86400.0
MONTH = 31 * _DAY
"""Spark takes a report until the end of the month of its intervals: a reading may be
needed for up to a (31-day) month after it was taken."""

LIMITS: dict[str, Limit] = {
    "webhook.max_body": Limit(
        1024, 64 * 1024 * 1024, "a notification is a few KiB; 64 MiB bounds memory", "bytes"
    ),
    "webhook.read_timeout": Limit(
        1.0, 3600.0, "shorter cuts off real clients; the bound stops slow-loris holds"
    ),
    "poll.interval": Limit(1.0, _DAY, "0 polled 2,500 times in 7 s; a day still polls daily"),
    "poll.page_size": Limit(1, 1000, "the API's maximum pageSize is 1000", "integer"),
    "delivery.timeout": Limit(0.1, 600.0, "0 sent nothing ever; 10 min is a hung request"),
    "delivery.backoff_initial": Limit(
        0.01, 3600.0, "a first retry sooner than 10 ms hammers; also <= backoff_max"
    ),
    "delivery.backoff_max": Limit(0.1, _DAY, "retry at least daily, never in a tight loop"),
    "delivery.concurrency": Limit(
        1, 64, "0 sends nothing; 1,000,000 workers took 1.6 GB of RAM", "integer"
    ),
    "delivery.retry_after_max": Limit(
        1.0, _DAY, "a 429's Retry-After is honoured for at least 1 s, at most a day"
    ),
    "reporting.grace": Limit(
        0.0, _DAY, "0 reports at the interval's end; a day is past 'next day'"
    ),
    "metering.max_gap": Limit(1.0, _DAY, "readings further apart than this are a gap"),
    "metering.raw_retention": Limit(
        3600.0, 30 * _DAY, "raw rows are compacted after this; also > max_gap, < retention"
    ),
    "metering.retention": Limit(
        MONTH,
        MAX_DURATION,
        "reports may be built until month end: at least 31 d + max_gap + grace",
        low_inclusive=False,
    ),
    "resources[].max_kw": Limit(
        0.0, 1e6, "the most a resource can draw; above 1 GW is a typo", "number", False
    ),
    "locations[].max_kw": Limit(
        0.0, 1e6, "the most a location can draw; above 1 GW is a typo", "number", False
    ),
    "resources[].rated_kw": Limit(
        0.0, 1e6, "what the resource draws when on; also <= its max_kw", "number", False
    ),
    "resources[].priority": Limit(-1000, 1000, "an order, not a quantity", "integer"),
    "resources[].need_kwh": Limit(0.0, 1e6, "energy a resource needs per event", "number"),
    "reporting.max_wait": Limit(0.0, 31 * _DAY, "a report waits at most to month end"),
    "lpc.margin_kw": Limit(0.0, 1e6, "kept below every cap", "number"),
    "lpc.failsafe": Limit(1.0, 3600.0, "power unread this long during a cap: loads off"),
    "lpc.lead": Limit(0.0, 3600.0, "loads go off this long before a capped interval"),
    "control.confirm_timeout": Limit(0.1, 600.0, "a device confirms a command within this"),
    "control.attempts": Limit(1, 20, "tries per command", "integer"),
    "upstream.answer_timeout": Limit(
        1.0, 3600.0, "a hub answers within seconds once Spark has; 0 would never wait"
    ),
}
"""The range of every numeric config key. Durations are also finite, not negative and at
most 100 years (:func:`gateway.timeutil.parse_duration`)."""


def _numbers(cfg: Config) -> Iterator[tuple[str, str, float]]:
    """``(LIMITS key, config key, value)`` for every numeric value the config holds."""
    for key in LIMITS:
        section, _, name = key.partition(".")
        if section.endswith("[]"):
            items = getattr(cfg, section[:-2])
            for i, item in enumerate(items):
                if (value := getattr(item, name)) is not None:
                    yield key, f"{section[:-2]}[{i}].{name}", value
        elif (table := getattr(cfg, section)) is not None and (
            value := getattr(table, name)
        ) is not None:
            yield key, key, value


def _check_ranges(cfg: Config) -> None:
    for limit_key, key, value in _numbers(cfg):
        if problem := LIMITS[limit_key].problem(value):
            raise ConfigError(problem, key=key)


def _check_rules(cfg: Config) -> None:
    """The rules between keys, after each key is in its own range."""
    delivery, metering, grace = cfg.delivery, cfg.metering, cfg.reporting.grace
    if delivery.backoff_initial > delivery.backoff_max:
        raise ConfigError(
            f"must not be longer than delivery.backoff_max "
            f"({format_duration(delivery.backoff_max)})",
            key="delivery.backoff_initial",
        )
    if metering.raw_retention <= metering.max_gap:
        # Compaction settles a minute from the samples up to max_gap after it.
        raise ConfigError(
            f"must be longer than metering.max_gap ({format_duration(metering.max_gap)})",
            key="metering.raw_retention",
        )
    if metering.raw_retention >= metering.retention:
        raise ConfigError(
            f"must be shorter than metering.retention ({format_duration(metering.retention)})",
            key="metering.raw_retention",
        )
    _check_site(cfg)
    _check_fleet(cfg)
    needed = MONTH + metering.max_gap + grace
    if metering.retention < needed:
        raise ConfigError(
            f"must be at least 31d + metering.max_gap + reporting.grace "
            f"({format_duration(needed)}): a report may be built until the month's end",
            key="metering.retention",
        )


_WINDOW = re.compile(r"([01]\d|2[0-3]):([0-5]\d)-([01]\d|2[0-3]|24):([0-5]\d)", re.ASCII)


def parse_window(text: str) -> tuple[float, float]:
    """``"HH:MM-HH:MM"`` (UTC) -> (start, end) in seconds of the day; the end may be
    before the start (the window wraps midnight) and ``24:00`` ends the day.
    ValueError if it is not such a window or is empty."""
    match = _WINDOW.fullmatch(text)
    if match is None:
        raise ValueError(f"expected HH:MM-HH:MM (UTC), got {shown(text)}")
    h1, m1, h2, m2 = (int(g) for g in match.groups())
    start, end = h1 * 3600.0 + m1 * 60.0, h2 * 3600.0 + m2 * 60.0
    if end > 86400.0 or start == end:
        raise ValueError(f"{shown(text)} is not a window of the day")
    return start, end


def _check_site(cfg: Config) -> None:
    """Controls, shifting and the control tables."""
    for i, res in enumerate(cfg.resources):
        where = f"resources[{i}]"
        if res.control is not None and res.rated_kw is None:
            raise ConfigError(
                "a resource with a control needs rated_kw: the power it draws when on",
                key=f"{where}.rated_kw",
            )
        if res.rated_kw is not None and res.rated_kw > res.max_kw:
            raise ConfigError(f"must be at most max_kw ({res.max_kw:g})", key=f"{where}.rated_kw")
        if res.participation == "shift" and (res.control is None or res.need_kwh is None):
            missing = "control" if res.control is None else "need_kwh"
            raise ConfigError(
                f"shift needs a control and need_kwh (no {missing})",
                key=f"{where}.participation",
            )
        for j, window in enumerate(res.allowed):
            try:
                parse_window(window)
            except ValueError as exc:
                raise ConfigError(str(exc), key=f"{where}.allowed[{j}]") from None
    publish = cfg.control.publish
    if publish is not None:
        parts = urllib.parse.urlsplit(publish)
        if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
            raise ConfigError(
                f"expected mqtt://HOST[:PORT]/PREFIX, got {shown(publish)}",
                key="control.publish",
            )


# --- names, addresses, URLs ---------------------------------------------------------------------

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+", re.ASCII)
_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)", re.ASCII)
_WEBHOOK_PATH = re.compile(r"/[A-Za-z0-9._~/-]{0,255}", re.ASCII)


def key_name(name: str) -> str:
    """A TOML key as a config key names it: bare if it can be, else quoted on one line."""
    return name if _BARE_KEY.fullmatch(name) else json.dumps(name)


def shown(text: str) -> str:
    """``text`` for an error message: as is if printable, else quoted with escapes."""
    text = text if len(text) <= 200 else text[:197] + "..."
    return text if text.isprintable() else json.dumps(text)


def _host_problem(host: str) -> str | None:
    """None for an IP address (IPv6 in brackets) or a DNS name, else what is wrong."""
    if host.startswith("[") and host.endswith("]"):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            return f"{shown(host)} is not an IPv6 address"
        return None
    if ":" in host:
        return "write an IPv6 address in brackets, like [::1]:8080"
    labels = host.removesuffix(".").split(".")
    if len(host) > 253 or not all(_LABEL.fullmatch(label) for label in labels):
        return f"{shown(host)} is not a host name or IP address"
    return None


def parse_listen(text: str) -> tuple[str, int]:
    """``"127.0.0.1:8080"`` or ``"[::1]:0"`` -> (host without brackets, port).

    Port 0 asks the system for a free port (``ecgw status`` shows the URL).
    Raises ValueError naming what is wrong.
    """
    host, sep, port = text.rpartition(":")
    if not sep or not host or not (port.isascii() and port.isdigit()) or len(port) > 5:
        raise ValueError(f"expected HOST:PORT, got {shown(text)}")
    if int(port) > 65535:
        raise ValueError(f"port {port} is out of range (0..65535)")
    if problem := _host_problem(host):
        raise ValueError(problem)
    return host.strip("[]"), int(port)


def _url_problem(url: str, *, base: bool) -> str | None:
    """None for an ``http(s)://host[:port]/path`` URL, else what is wrong with it."""
    if not url.isprintable() or any(c.isspace() for c in url):
        return f"{shown(url)} contains spaces or control characters"
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port  # ValueError when out of range
    except ValueError as exc:
        return f"{shown(url)} is not a URL: {exc}"
    if parts.scheme not in ("http", "https"):
        return f"{shown(url)} must start with https:// (or http://)"
    if "@" in parts.netloc:
        return "must not carry credentials: give api.client_id and the secret instead"
    host = parts.netloc
    if port is not None or host.endswith(":"):
        host = host.rpartition(":")[0]
    if not host:
        return f"{shown(url)} has no host"
    if problem := _host_problem(host):
        return problem
    if base and (parts.query or parts.fragment):
        return "must not have a query or fragment: paths are added to it"
    return None


def _check_names(cfg: Config) -> None:
    for name, table in cfg.adapters.items():
        if not name:
            raise ConfigError("an adapter needs a name", key='adapters.""')
        if not isinstance(table.get("type"), str):
            raise ConfigError("required key missing", key=f"adapters.{key_name(name)}.type")
    wanted = [(f"resources[{i}]", r.adapter) for i, r in enumerate(cfg.resources)]
    wanted += [(f"locations[{i}]", r.adapter) for i, r in enumerate(cfg.locations)]
    for where, adapter in wanted:
        if adapter not in cfg.adapters:
            raise ConfigError(f"no [adapters.{key_name(adapter)}] table", key=f"{where}.adapter")
    seen: set[object] = set()
    for i, res in enumerate(cfg.resources):
        if res.resource_id in seen:
            raise ConfigError(f"{shown(res.resource_id)} is listed twice", key=f"resources[{i}]")
        seen.add(res.resource_id)
    for i, loc in enumerate(cfg.locations):
        if (loc.location_id, loc.meter_point_id) in seen:
            raise ConfigError(
                f"location {shown(loc.location_id)} with meter point "
                f"{shown(loc.meter_point_id)} is listed twice",
                key=f"locations[{i}]",
            )
        seen.add((loc.location_id, loc.meter_point_id))


def _check_endpoints(cfg: Config) -> None:
    if cfg.api is not None:
        for name in ("base_url", "token_url"):
            if problem := _url_problem(getattr(cfg.api, name), base=name == "base_url"):
                raise ConfigError(problem, key=f"api.{name}")
    if cfg.admin is not None:
        try:
            parse_listen(cfg.admin.listen)
        except ValueError as exc:
            raise ConfigError(str(exc), key="admin.listen") from None
    if cfg.webhook is not None:
        try:
            parse_listen(cfg.webhook.listen)
        except ValueError as exc:
            raise ConfigError(str(exc), key="webhook.listen") from None
        if not _WEBHOOK_PATH.fullmatch(cfg.webhook.path):
            raise ConfigError(
                f"must be '/' and up to 255 of A-Z a-z 0-9 . _ ~ / -, got "
                f"{shown(cfg.webhook.path)}",
                key="webhook.path",
            )


# --- the fleet: [hub] and [upstream] -------------------------------------------------------------

MQTT_PORTS = {"mqtt": 1883, "mqtts": 8883}
_CLIENT_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}", re.ASCII)


def parse_broker_url(url: str) -> tuple[str, int, bool]:
    """``mqtt(s)://HOST[:PORT]`` -> (host without brackets, port, TLS?); ValueError naming
    what is wrong. The port defaults to 1883 (mqtt) or 8883 (mqtts)."""
    if not url.isprintable() or any(c.isspace() for c in url):
        raise ValueError(f"{shown(url)} contains spaces or control characters")
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port  # ValueError when out of range
    except ValueError as exc:
        raise ValueError(f"{shown(url)} is not a URL: {exc}") from None
    if parts.scheme not in MQTT_PORTS:
        raise ValueError(f"{shown(url)} must start with mqtts:// (or mqtt://)")
    if port == 0:  # not the default port, as ``port or default`` below would make it
        raise ValueError(f"{shown(url)} names port 0: give the broker's port, or none")
    if "@" in parts.netloc:
        raise ValueError("must not carry credentials: give them in their own keys")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(f"{shown(url)} must be mqtts://HOST[:PORT]: the topic prefix is `prefix`")
    host = parts.netloc
    if port is not None or host.endswith(":"):
        host = host.rpartition(":")[0]
    if not host:
        raise ValueError(f"{shown(url)} has no host")
    if problem := _host_problem(host):
        raise ValueError(problem)
    return host.strip("[]"), port or MQTT_PORTS[parts.scheme], parts.scheme == "mqtts"


def check_broker_credentials(table: HubConfig | UpstreamConfig, section: str) -> None:
    """Exactly one credential form: ``password_file``, or ``client_cert_file`` with
    ``client_key_file``; and a certificate or CA only over mqtts://."""
    cert, key = table.client_cert_file, table.client_key_file
    if table.password_file is not None and (cert is not None or key is not None):
        raise ConfigError(
            "give password_file or client_cert_file + client_key_file, not both",
            key=f"{section}.password_file",
        )
    if cert is None and key is not None:
        raise ConfigError(
            "client_key_file needs client_cert_file", key=f"{section}.client_cert_file"
        )
    if cert is not None and key is None:
        raise ConfigError(
            "client_cert_file needs client_key_file", key=f"{section}.client_key_file"
        )
    if table.password_file is None and cert is None:
        raise ConfigError(
            "no credential: give password_file, or client_cert_file and client_key_file",
            key=f"{section}.password_file",
        )
    try:
        _, _, tls = parse_broker_url(table.url)
    except ValueError as exc:
        raise ConfigError(str(exc), key=f"{section}.url") from None
    for name in ("client_cert_file", "ca_file"):
        if getattr(table, name) is not None and not tls:
            raise ConfigError(f"{name} needs an mqtts:// url", key=f"{section}.{name}")


def _check_fleet(cfg: Config) -> None:
    if cfg.hub is not None:
        _check_hub(cfg.hub)
    if cfg.upstream is not None:
        _check_upstream(cfg)


def _check_hub(hub: HubConfig) -> None:
    check_broker_credentials(hub, "hub")
    if hub.password_file is not None and hub.username is None:
        raise ConfigError("a password_file needs a username", key="hub.username")
    if hub.username is not None and (
        not hub.username.isprintable() or any(c.isspace() for c in hub.username)
    ):
        raise ConfigError(
            f"{shown(hub.username)} has spaces or control characters", key="hub.username"
        )
    if not _CLIENT_ID.fullmatch(hub.client_id):
        raise ConfigError(
            f"must be 1-128 of A-Z a-z 0-9 . _ : -, got {shown(hub.client_id)}",
            key="hub.client_id",
        )
    for name in ("prefix", "share_group"):
        try:
            Topics(prefix=hub.prefix) if name == "prefix" else Topics(share_group=hub.share_group)
        except ValueError as exc:
            raise ConfigError(str(exc), key=f"hub.{name}") from None
    sites: list[Site] = []
    for i, entry in enumerate(hub.sites):
        try:
            check_site_id(entry.site_id)
            sites.append(
                Site(
                    entry.site_id,
                    frozenset(entry.resources),
                    frozenset(entry.locations),
                    frozenset(entry.meter_points),
                )
            )
        except ValueError as exc:
            raise ConfigError(str(exc), key=f"hub.sites[{i}]") from None
    try:
        SiteTable(sites)
        for site in sites:
            hub_site_clash(hub, site.site_id)
    except ValueError as exc:
        raise ConfigError(str(exc), key="hub.sites") from None


def hub_site_clash(hub: HubConfig, site_id: str) -> None:
    """ValueError if ``site_id`` is the hub's own broker user or client id: a site's user
    name and client id are its site id, and two connections with one client id throw each
    other off the broker."""
    if site_id == hub.username:
        raise ValueError(f"site id {site_id!r} is the hub's own broker user (hub.username)")
    if site_id == hub.client_id:
        raise ValueError(f"site id {site_id!r} is the hub's own client id (hub.client_id)")


def check_fleet_tables(cfg: Config) -> None:
    """What the loader checks before it reads any secret file: a site with ``[upstream]``
    has no ``[api]``, ``[webhook]``, ``[poll]`` or ``[hub]``; each broker table has exactly
    one credential form."""
    if cfg.upstream is not None:
        for name in ("api", "webhook", "poll", "hub"):
            if getattr(cfg, name) is not None:
                raise ConfigError(
                    f"a site with [upstream] must not have [{name}]: no site holds Spark "
                    "credentials; its hub alone does, receives the webhook and polls",
                    key=name,
                )
        check_broker_credentials(cfg.upstream, "upstream")
    if cfg.hub is not None:
        check_broker_credentials(cfg.hub, "hub")


def _check_upstream(cfg: Config) -> None:
    upstream = cfg.upstream
    assert upstream is not None
    check_fleet_tables(cfg)
    try:
        check_site_id(upstream.site_id)
    except ValueError as exc:
        raise ConfigError(str(exc), key="upstream.site_id") from None
    try:
        check_prefix(upstream.prefix)
    except ValueError as exc:
        raise ConfigError(str(exc), key="upstream.prefix") from None


def check_values(cfg: Config) -> None:
    """Every name, endpoint, range and rule; raises ConfigError naming the first bad key."""
    _check_names(cfg)
    _check_endpoints(cfg)
    _check_ranges(cfg)
    _check_rules(cfg)
