"""The latest committed reading of every channel, in memory, for the controller.

Holding a cap needs the location's power within a second of it being read, and
asking SQLite for it a few times a second per location would be wasted work:
the readings sink puts every batch here right after its commit (so nothing here
is newer than the database). Power values are kept in kW whatever the channel's
unit; energy values as the device gave them. Listeners are told that a channel
moved (the controller wakes at once for its location meter).

A sample's time is the device's word, and a device clock may run ahead: a sample
is kept as read no later than when it arrived (``clock``). Otherwise one sample
stamped an hour ahead would stay "latest" for that hour: every true sample after
it dropped as older, and its age 0, so the failsafe could never see the meter stop.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from gateway.plugin import Channel, ChannelKind, Reading

__all__ = ["Latest", "LatestReadings"]

Latest = tuple[float, float]
"""``(at, value)``: when it was read (epoch seconds) and the value (power in kW)."""


class LatestReadings:
    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._values: dict[tuple[str, str], Latest] = {}
        self._factors: dict[tuple[str, str], float] = {}
        self._kinds: dict[tuple[str, str], ChannelKind] = {}
        self._listeners: list[Callable[[str, str], None]] = []

    def channels(self, adapter: str, channels: Sequence[Channel]) -> None:
        for channel in channels:
            factor = channel.unit.to_kwh if channel.kind is ChannelKind.POWER else 1.0
            self._factors[(adapter, channel.name)] = factor
            self._kinds[(adapter, channel.name)] = channel.kind

    def put(self, adapter: str, readings: Sequence[Reading]) -> None:
        moved: set[str] = set()
        arrived = self._clock()
        for reading in readings:
            key = (adapter, reading.channel)
            at = min(reading.at, arrived)  # a device clock ahead: read when it arrived
            seen = self._values.get(key)
            if seen is not None and seen[0] >= at:
                continue  # an older sample arriving late changes nothing now
            self._values[key] = (at, reading.value * self._factors.get(key, 1.0))
            moved.add(reading.channel)
        for channel in moved:
            for listener in self._listeners:
                listener(adapter, channel)

    def get(self, adapter: str, channel: str) -> Latest | None:
        return self._values.get((adapter, channel))

    def kind(self, adapter: str, channel: str) -> ChannelKind | None:
        """The channel's kind; None if the adapter has not declared it yet."""
        return self._kinds.get((adapter, channel))

    def listen(self, listener: Callable[[str, str], None]) -> None:
        self._listeners.append(listener)
