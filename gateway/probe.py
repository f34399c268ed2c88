"""``ecgw probe ADAPTER``: read (or listen) once and say what came back, or exactly why not.

For installers at the site: it builds the one adapter from the config, starts
it, takes one read (a polling adapter) or listens until every channel has
spoken or the time is up (a push adapter), and prints each channel's value,
unit and timestamp.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Callable, Sequence

from gateway.errors import AdapterError, AdapterLoadError, AdapterReadError
from gateway.metering.discovery import build_adapters
from gateway.plugin import Adapter, Channel, PollingAdapter, PushAdapter, Reading

__all__ = ["probe"]


def _line(channel: Channel, reading: Reading | None) -> str:
    if reading is None:
        return f"  {channel.name:<16} (no value)        {channel.kind}"
    stamp = dt.datetime.fromtimestamp(reading.at, dt.UTC).isoformat(timespec="milliseconds")
    return (
        f"  {channel.name:<16} {reading.value:>14.6g} {channel.unit:<4} at {stamp}  {channel.kind}"
    )


async def _listen(adapter: PushAdapter, names: set[str], seconds: float) -> dict[str, Reading]:
    latest: dict[str, Reading] = {}

    async def collect() -> None:
        async for batch in adapter.stream():
            for reading in batch:
                latest[reading.channel] = reading
            if names <= set(latest):
                return

    try:
        async with asyncio.timeout(seconds):
            await collect()
    except TimeoutError:
        pass
    return latest


async def _read_once(adapter: Adapter, seconds: float) -> Sequence[Reading]:
    if isinstance(adapter, PollingAdapter):
        try:
            async with asyncio.timeout(seconds):
                return await adapter.read()
        except TimeoutError:
            raise AdapterReadError(
                f"no answer within {seconds:g} s", adapter=adapter.name
            ) from None
    if isinstance(adapter, PushAdapter):
        names = {c.name for c in adapter.channels()}
        return list((await _listen(adapter, names, seconds)).values())
    raise AdapterLoadError("neither a polling nor a push adapter", adapter=adapter.name)


async def probe(
    tables: dict[str, dict[str, object]], name: str, *, seconds: float, out: Callable[[str], None]
) -> int:
    """0 if every channel gave a value, 1 otherwise (the reason is printed)."""
    if name not in tables:
        known = ", ".join(sorted(tables)) or "none"
        raise AdapterLoadError(f"no such adapter in the config (configured: {known})", adapter=name)
    adapters, errors = build_adapters({name: tables[name]})
    if name in errors:
        raise errors[name]
    adapter = adapters[name]
    out(f"probing adapter {name!r} (type {tables[name].get('type')}) for up to {seconds:g} s")
    try:
        async with asyncio.timeout(seconds):
            await adapter.__aenter__()
    except TimeoutError:
        raise AdapterLoadError(f"did not start within {seconds:g} s", adapter=name) from None
    try:
        readings = await _read_once(adapter, seconds)
    except AdapterError as exc:
        out(f"  no reading: {exc}")
        return 1
    finally:
        await adapter.__aexit__(None, None, None)
    latest = {r.channel: r for r in readings}
    for channel in adapter.channels():
        out(_line(channel, latest.get(channel.name)))
    missing = [c.name for c in adapter.channels() if c.name not in latest]
    if missing:
        out(f"  no value for: {', '.join(missing)} (the device did not send them in time)")
        return 1
    return 0
