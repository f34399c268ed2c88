"""Which site owns what, which sites an event goes to, and whether a report is a site's
own (pure).

A site owns resource ids, location ids and meter point ids; each id belongs to at most
one site of the fleet (a second claim is a configuration error naming both sites).

Routing: an event goes to every site that owns one of its targets, with its ``targets``
cut to that site's own (the rest of the payload as Spark wrote it: timestamps keep their
text). A ``PriceCurve`` or ``ResourceLPC`` target is owned through its resource id; a
``LocationLPC`` or ``LPCReservation`` target through its location id (or, if no site
lists the location, its meter point id). ``UserEligibility`` and payload types the
gateway does not know name no target: no site owns them, and the hub keeps them.

Reports: every resource id and location id a site's report names must be the site's
own (a location no site lists, as the router does, is the site's when the same target
names a meter point of the site's); a meter point id must not be another site's, and must
be the site's own when the site lists meter points at all.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import msgspec

from gateway import wire
from gateway.fleet.topics import check_site_id

__all__ = ["Site", "SiteTable", "SiteFile", "parse_sites"]

IdKind = Literal["resource", "location", "meter point"]


@dataclass(frozen=True, slots=True)
class Site:
    site_id: str
    resources: frozenset[str] = field(default_factory=frozenset)
    locations: frozenset[str] = field(default_factory=frozenset)
    meter_points: frozenset[str] = field(default_factory=frozenset)

    def __post_init__(self) -> None:
        check_site_id(self.site_id)
        for kind, ids in (
            ("resource", self.resources),
            ("location", self.locations),
            ("meter point", self.meter_points),
        ):
            for one in ids:
                if not isinstance(one, str) or not one.strip() or len(one) > 256:
                    raise ValueError(
                        f"site {self.site_id}: a {kind} id must be a non-empty string of at "
                        f"most 256 characters, not {repr(one)[:80]}"
                    )


class SiteEntry(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """One site as a file or the config writes it."""

    site_id: str
    resources: list[str] = []
    locations: list[str] = []
    meter_points: list[str] = []


class SiteFile(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """``ecgw hub sites import FILE``: ``{"sites": [{"site_id": ..., "resources": [...],
    "locations": [...], "meter_points": [...]}, ...]}`` (JSON or TOML ``[[sites]]``)."""

    sites: list[SiteEntry] = []


def parse_sites(entries: Iterable[SiteEntry]) -> list[Site]:
    """Sites from entries; ValueError naming the entry for a bad one or a repeated id."""
    sites: list[Site] = []
    seen: set[str] = set()
    for n, entry in enumerate(entries):
        try:
            site = Site(
                entry.site_id,
                frozenset(entry.resources),
                frozenset(entry.locations),
                frozenset(entry.meter_points),
            )
        except ValueError as exc:
            raise ValueError(f"sites[{n}]: {exc}") from None
        if site.site_id in seen:
            raise ValueError(f"sites[{n}]: site id {site.site_id!r} is listed twice")
        seen.add(site.site_id)
        sites.append(site)
    return sites


class SiteTable:
    """The fleet's sites, with each id's owner."""

    def __init__(self, sites: Iterable[Site]) -> None:
        self._sites: dict[str, Site] = {}
        self._owner: dict[tuple[IdKind, str], str] = {}
        for site in sites:
            if site.site_id in self._sites:
                raise ValueError(f"site id {site.site_id!r} is listed twice")
            self._sites[site.site_id] = site
            for kind, ids in _ids(site):
                for one in ids:
                    other = self._owner.setdefault((kind, one), site.site_id)
                    if other != site.site_id:
                        raise ValueError(
                            f"{kind} {one!r} is claimed by two sites: {other} and {site.site_id}"
                        )

    def __len__(self) -> int:
        return len(self._sites)

    def __iter__(self) -> Any:
        return iter(sorted(self._sites.values(), key=lambda s: s.site_id))

    def get(self, site_id: str) -> Site | None:
        return self._sites.get(site_id)

    def owner(self, kind: IdKind, one: str) -> str | None:
        return self._owner.get((kind, one))

    # --- events --------------------------------------------------------------------

    def route(self, payload: wire.EventPayload, raw: bytes) -> dict[str, bytes]:
        """Per owning site, the payload cut to that site's targets (JSON bytes).

        ``raw`` is the payload exactly as Spark sent it; ``payload`` is it decoded."""
        owners = self._target_owners(payload)
        if not any(owner is not None for owner in owners):
            return {}
        # Each value kept as its raw JSON text: a number the generic decoder refuses
        # (``1e999`` in a field the gateway does not know) cannot stop the router, and
        # what a site receives is what Spark wrote.
        document = msgspec.json.decode(raw, type=dict[str, msgspec.Raw])
        targets = msgspec.json.decode(document["targets"], type=list[msgspec.Raw])
        mine: dict[str, list[msgspec.Raw]] = {}
        for target, owner in zip(targets, owners, strict=True):  # one pass, not one per site
            if owner is not None:
                mine.setdefault(owner, []).append(target)
        return {
            site_id: msgspec.json.encode({**document, "targets": mine[site_id]})
            for site_id in sorted(mine)
        }

    def owners(self, payload: wire.EventPayload) -> set[str]:
        """The sites that own any of the payload's targets (what :meth:`route` would
        send to, without cutting a payload for each)."""
        return {o for o in self._target_owners(payload) if o is not None}

    def _target_owners(self, payload: wire.EventPayload) -> list[str | None]:
        match payload:
            case wire.PriceCurve() | wire.ResourceLPC():
                return [self.owner("resource", t.resource_id) for t in payload.targets]
            case wire.LocationLPC() | wire.LPCReservation():
                return [
                    self.owner("location", t.location_id)
                    or self.owner("meter point", t.meter_point_id)
                    for t in payload.targets
                ]
        return []

    # --- reports ---------------------------------------------------------------------

    def foreign(self, site_id: str, request: wire.PostReportRequest) -> list[str]:
        """What ``site_id``'s report names that is not its own (empty: all its own)."""
        site = self._sites.get(site_id)
        if site is None:
            return [f"site {site_id!r} is not registered"]
        problems: list[str] = []
        for n, payload in enumerate(request.payloads):
            for group in _named(payload):
                # as the router: a location no site lists goes with the target's meter point
                by_meter = any(
                    kind == "meter point" and self._owner.get((kind, one)) == site_id
                    for kind, one in group
                )
                for kind, one in group:
                    if not self._owns(site, kind, one, by_meter=by_meter):
                        problems.append(f"payloads[{n}]: {kind} {one!r} is not this site's")
        return problems

    def _owns(self, site: Site, kind: IdKind, one: str, *, by_meter: bool) -> bool:
        owner = self._owner.get((kind, one))
        if kind == "meter point":
            return owner == site.site_id or (owner is None and not site.meter_points)
        if kind == "location" and owner is None:
            return by_meter
        return owner == site.site_id


def _ids(site: Site) -> tuple[tuple[IdKind, frozenset[str]], ...]:
    return (
        ("resource", site.resources),
        ("location", site.locations),
        ("meter point", site.meter_points),
    )


def _named(payload: wire.ReportPayload) -> list[list[tuple[IdKind, str]]]:
    """Every id a report payload names, one group per target (the ids named together)."""
    groups: list[list[tuple[IdKind, str | None]]] = []
    match payload:
        case wire.EnergyUsage():
            groups.append(
                [
                    ("resource", payload.resource_id),
                    ("location", payload.location_id),
                    ("meter point", payload.meter_point_id),
                ]
            )
        case wire.LocationEnergyUsage():
            groups.append(
                [("location", payload.location_id), ("meter point", payload.meter_point_id)]
            )
        case wire.LocationLPCAcknowledgement():
            groups.extend(
                [("location", loc.location_id), ("meter point", loc.meter_point_id)]
                for loc in (*payload.acknowledged_targets, *payload.declined_targets)
            )
        case wire.ResourceLPCAcknowledgement():
            groups.extend(
                [
                    ("resource", res.resource_id),
                    ("location", res.location_id),
                    ("meter point", res.meter_point_id),
                ]
                for res in (*payload.acknowledged_targets, *payload.declined_targets)
            )
    return [[(kind, one) for kind, one in group if one is not None] for group in groups]


def sites_from_mapping(data: Mapping[str, Any]) -> list[Site]:
    """Sites from a decoded JSON/TOML document (``{"sites": [...]}``); ValueError if bad."""
    try:
        parsed = msgspec.convert(data, SiteFile)
    except msgspec.ValidationError as exc:
        raise ValueError(str(exc)) from None
    return parse_sites(parsed.sites)
