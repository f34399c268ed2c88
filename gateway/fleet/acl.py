"""The broker's access rules for a fleet (pure): each site may read only its own events and
acks and write only its own reports and status (``online``, and its will ``offline``); the
hub reads and writes every site's topics.

Two forms, for the two ways Mosquitto controls access:

* :func:`acl_file`: the text of an ``acl_file`` (every other topic is denied to a user named
  in it). The site's broker user name is its site id.
* :func:`dynamic_security`: the ``clients`` and ``roles`` of the dynamic-security plugin's
  JSON, one role per site. Passwords are not in it (nothing secret is printed): set them
  with ``mosquitto_ctrl dynsec setClientPassword <site> ...``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from gateway.fleet.topics import Topics, check_site_id

__all__ = ["acl_file", "dynamic_security", "site_rules"]


def site_rules(topics: Topics, site_id: str) -> list[tuple[str, str]]:
    """(access, topic) pairs a site needs: ``read`` or ``write``."""
    return [
        ("read", topics.events(site_id)),
        ("read", topics.acks(site_id)),
        ("write", topics.reports(site_id)),
        ("write", topics.status(site_id)),
    ]


def acl_file(topics: Topics, site_ids: Iterable[str], *, hub_user: str) -> str:
    """A Mosquitto ``acl_file`` for the hub user and every site."""
    check_site_id(hub_user)
    lines = [
        "# ECGW fleet access rules, written by `ecgw hub acl`. Each site's broker user name",
        "# is its site id; a user may use only the topics listed under it.",
        "# In mosquitto.conf, on the sites' listener, also set",
        "#   use_username_as_clientid true",
        "# or a site could connect with another site's client id and take its session.",
        "# This file cannot stop a site from joining the hubs' shared subscription: use",
        "# `ecgw hub acl --format dynsec` (it denies SUBSCRIBE by default) where that matters.",
        "",
        f"user {hub_user}",
        f"topic readwrite {topics.prefix}/sites/#",
    ]
    for site_id in sorted(set(site_ids)):
        if site_id == hub_user:
            raise ValueError(f"site id {site_id!r} is the hub's own broker user")
        lines += ["", f"user {check_site_id(site_id)}"]
        lines += [f"topic {access} {topic}" for access, topic in site_rules(topics, site_id)]
    return "\n".join(lines) + "\n"


def _acls(rules: Iterable[tuple[str, str]]) -> list[dict[str, Any]]:
    acls: list[dict[str, Any]] = []
    for access, topic in rules:
        kinds = []
        if access in ("read", "readwrite"):
            kinds += ["subscribePattern", "publishClientReceive"]
        if access in ("write", "readwrite"):
            kinds.append("publishClientSend")
        acls += [{"acltype": k, "topic": topic, "priority": 0, "allow": True} for k in kinds]
    return acls


def dynamic_security(topics: Topics, site_ids: Iterable[str], *, hub_user: str) -> dict[str, Any]:
    """The dynamic-security plugin's ``defaultACLAccess``, ``clients`` and ``roles``."""
    check_site_id(hub_user)
    sites = sorted(set(site_ids))
    clients: list[dict[str, Any]] = [
        {"username": hub_user, "textname": "ECGW hub", "roles": [{"rolename": "ecgw-hub"}]}
    ]
    roles: list[dict[str, Any]] = [
        {
            "rolename": "ecgw-hub",
            "textname": "ECGW hub: every site's topics",
            "acls": _acls([("readwrite", f"{topics.prefix}/sites/#")]),
        }
    ]
    for site_id in sites:
        if site_id == hub_user:
            raise ValueError(f"site id {site_id!r} is the hub's own broker user")
        role = f"ecgw-site-{check_site_id(site_id)}"
        clients.append(
            {"username": site_id, "textname": f"ECGW site {site_id}", "roles": [{"rolename": role}]}
        )
        roles.append(
            {
                "rolename": role,
                "textname": f"ECGW site {site_id}: its own events, acks and reports",
                "acls": _acls(site_rules(topics, site_id)),
            }
        )
    return {
        "defaultACLAccess": {
            "publishClientSend": False,
            "publishClientReceive": True,
            "subscribe": False,
            "unsubscribe": True,
        },
        "clients": clients,
        "groups": [],
        "roles": roles,
    }
