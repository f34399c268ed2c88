"""Commands are recorded before they are sent, confirmed by what the device reports,
retried, and whatever the adapter's code does fails only that command."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Sequence

import pytest

from gateway import AdapterError, Control, ControlKind, ControlState
from gateway.control.commands import Commander
from gateway.store.control import ControlStore
from gateway.store.database import Database

SWITCH = Control("switch", ControlKind.SWITCH)


class Plug:
    """A device behind an adapter: obeys after ``delay`` s, or never (``obey=False``)."""

    def __init__(
        self,
        *,
        delay: float = 0.0,
        obey: bool = True,
        fail: BaseException | None = None,
        hang: bool = False,
        stamp_offset: float = 0.0,
    ) -> None:
        self.on = 1.0
        self.at = time.time() - 60
        self.delay, self.obey, self.fail, self.hang = delay, obey, fail, hang
        self.stamp_offset = stamp_offset
        self.applied: list[float] = []

    def controls(self) -> Sequence[Control]:
        return (SWITCH,)

    async def apply(self, control: str, value: float) -> None:
        if self.fail is not None:
            raise self.fail
        if self.hang:
            await asyncio.sleep(3600)
        self.applied.append(value)
        if self.obey:
            asyncio.get_running_loop().call_later(self.delay, self._switch, value)

    def _switch(self, value: float) -> None:
        self.on, self.at = value, time.time() + self.stamp_offset

    async def state(self, control: str) -> ControlState | None:
        return ControlState(self.on, self.at)


class Devices:
    def __init__(self, **plugs: Plug) -> None:
        self.plugs = plugs

    def controllable(self, name: str) -> Plug:
        if name not in self.plugs:
            raise AdapterError(f"adapter {name!r} is not configured", adapter=name)
        return self.plugs[name]


def commander(db: Database, devices: Devices, **kw: object) -> Commander:
    settings: dict[str, object] = {"confirm_timeout": 0.5, "attempts": 2} | kw
    return Commander(ControlStore(db), devices, **settings)  # type: ignore[arg-type]


async def test_a_command_is_confirmed_by_the_devices_report_and_recorded(db: Database) -> None:
    plug = Plug(delay=0.1)
    outcome = await commander(db, Devices(p=plug)).command(
        adapter="p", control="switch", value=0, reason="lpc: cap", event_id="e1", resource_id="r1"
    )
    assert outcome == "confirmed" and plug.on == 0.0
    [row] = await ControlStore(db).commands("e1")
    assert (row.state, row.value, row.confirmed_value, row.attempts) == ("confirmed", 0, 0, 1)
    assert row.sent_at is not None and row.confirmed_at is not None
    assert row.confirmed_at >= row.sent_at


async def test_a_device_that_does_not_obey_fails_after_every_attempt(db: Database) -> None:
    plug = Plug(obey=False)
    outcome = await commander(db, Devices(p=plug)).command(
        adapter="p", control="switch", value=0, reason="lpc", resource_id="r1"
    )
    assert outcome == "failed" and plug.applied == [0.0, 0.0]
    [row] = await ControlStore(db).commands()
    assert row.state == "failed" and row.attempts == 2
    assert "did not report 0" in (row.error or "") and "reports 1" in (row.error or "")


async def test_a_report_stamped_long_before_the_command_does_not_confirm_it(db: Database) -> None:
    plug = Plug(obey=True, stamp_offset=-30)  # switches, but says so with an old time
    outcome = await commander(db, Devices(p=plug), attempts=1).command(
        adapter="p", control="switch", value=0, reason="lpc"
    )
    assert outcome == "failed"


@pytest.mark.parametrize(
    "plug",
    [
        Plug(fail=AdapterError("not connected")),
        Plug(fail=RuntimeError("bug")),
        Plug(fail=SystemExit(3)),
        Plug(fail=KeyboardInterrupt()),
        Plug(hang=True),
    ],
    ids=["adapter-error", "bug", "system-exit", "keyboard-interrupt", "hang"],
)
async def test_whatever_the_adapter_does_fails_only_the_command(db: Database, plug: Plug) -> None:
    outcome = await commander(db, Devices(p=plug), confirm_timeout=0.2).command(
        adapter="p", control="switch", value=0, reason="lpc"
    )
    assert outcome == "failed"
    [row] = await ControlStore(db).commands()
    assert row.state == "failed" and row.error


async def test_a_value_that_is_not_a_number_is_refused_before_anything(db: Database) -> None:
    plug = Plug()
    for value in (math.nan, math.inf):
        with pytest.raises(ValueError, match="finite"):
            await commander(db, Devices(p=plug)).command(
                adapter="p", control="switch", value=value, reason="lpc"
            )
    assert plug.applied == [] and await ControlStore(db).commands() == []


@pytest.mark.parametrize("value", [0.5, 2.0, -1.0])
async def test_a_value_the_control_does_not_take_is_never_sent(db: Database, value: float) -> None:
    plug = Plug()
    outcome = await commander(db, Devices(p=plug), attempts=1).command(
        adapter="p", control="switch", value=value, reason="lpc"
    )
    assert outcome == "failed" and plug.applied == []
    [row] = await ControlStore(db).commands()
    assert "switch" in (row.error or "")


async def test_unknown_adapter_and_unknown_control_fail_with_their_names(db: Database) -> None:
    cmd = commander(db, Devices(p=Plug()), attempts=1)
    assert await cmd.command(adapter="x", control="switch", value=0, reason="lpc") == "failed"
    assert await cmd.command(adapter="p", control="valve", value=0, reason="lpc") == "failed"
    errors = [r.error for r in await ControlStore(db).commands()]
    assert "'x'" in (errors[0] or "") and "'valve'" in (errors[1] or "")


async def test_dry_run_records_and_sends_nothing(db: Database) -> None:
    plug = Plug()
    outcome = await commander(db, Devices(p=plug), dry_run=True).command(
        adapter="p", control="switch", value=0, reason="lpc"
    )
    assert outcome == "dry_run" and plug.applied == []
    [row] = await ControlStore(db).commands()
    assert row.state == "dry_run" and row.sent_at is None


async def test_a_command_left_sending_by_a_crash_is_failed_at_start(db: Database) -> None:
    store = ControlStore(db)
    await store.command_started(
        event_id=None,
        resource_id="r",
        adapter="p",
        control="switch",
        value=0,
        reason="lpc",
        now=1.0,
    )
    assert await store.interrupted(now=2.0) == 1
    [row] = await store.commands()
    assert row.state == "failed" and "interrupted" in (row.error or "")
    assert await store.interrupted(now=3.0) == 0
