"""How an LPC target is named where decisions are stored and looked up. Pure."""

from __future__ import annotations

import json

__all__ = ["location_key", "resource_key"]


def location_key(location_id: str, meter_point_id: str) -> str:
    return json.dumps(["location", location_id, meter_point_id])


def resource_key(resource_id: str, location_id: str, meter_point_id: str | None) -> str:
    return json.dumps(["resource", resource_id, location_id, meter_point_id])
