"""Commands to devices, each confirmed by what the device reports back, and recorded.

A command is a row in ``commands`` before anything is sent (``sending``). The
adapter's ``apply`` returning means only that the command left: the
:class:`Commander` then asks the adapter's ``state`` until the device reports
the commanded value at or after the moment it was sent (less ``CLOCK_SKEW``,
for a device whose clock runs a little behind) or ``confirm_timeout`` passes,
and tries again up to ``attempts`` times, with a short pause. The row ends
``confirmed`` (with the value and time reported) or ``failed`` (with the last
reason). A crash leaves it ``sending``; the next start marks it failed, and
the controller, which always works from the state devices report, decides
again.

Everything an adapter's code does here (``controls``, ``apply``, ``state``) is
plugin code: whatever it raises or however long it hangs fails that attempt,
never the gateway. With ``dry_run`` the command is recorded as ``dry_run`` and
nothing is sent.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from typing import Literal, Protocol

import structlog

from gateway.errors import AdapterError, describe
from gateway.plugin import Control, ControllableAdapter, ControlState
from gateway.store.control import ControlStore
from gateway.supervise import is_cancellation

__all__ = ["Commander", "Devices", "Outcome"]

log = structlog.get_logger("gateway.control")

Outcome = Literal["confirmed", "failed", "dry_run"]
CLOCK_SKEW = 2.0  # seconds a device's report may be stamped before our send
POLL_EVERY = 0.05  # seconds between state() calls while waiting for a confirmation
RETRY_PAUSE = 0.5  # seconds between attempts


class Devices(Protocol):
    """Where running adapters are found (:class:`gateway.metering.runtime.AdapterRuntime`)."""

    def controllable(self, name: str) -> ControllableAdapter: ...


class Commander:
    def __init__(
        self,
        store: ControlStore,
        devices: Devices,
        *,
        confirm_timeout: float,
        attempts: int,
        dry_run: bool = False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._devices = devices
        self._confirm_timeout = confirm_timeout
        self._attempts = attempts
        self._dry_run = dry_run
        self._clock = clock
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}

    async def command(
        self,
        *,
        adapter: str,
        control: str,
        value: float,
        reason: str,
        event_id: str | None = None,
        resource_id: str | None = None,
    ) -> Outcome:
        """Send ``value`` to ``adapter``'s ``control`` until the device confirms it.

        ValueError for a value that is not a finite number (a bug of the caller's: it
        cannot even be recorded)."""
        if not math.isfinite(value):
            raise ValueError(f"a command needs a finite value, not {value!r}")
        lock = self._locks.setdefault((adapter, control), asyncio.Lock())
        async with lock:  # one command at a time per control: the last one wins in order
            command_id = await self._store.command_started(
                event_id=event_id,
                resource_id=resource_id,
                adapter=adapter,
                control=control,
                value=value,
                reason=reason,
                now=self._clock(),
                dry_run=self._dry_run,
            )
            bound = log.bind(
                command=command_id, adapter=adapter, control=control, value=value, reason=reason
            )
            if self._dry_run:
                bound.info("control.dry_run")
                return "dry_run"
            error = "not tried"
            for attempt in range(1, self._attempts + 1):
                if attempt > 1:
                    await asyncio.sleep(RETRY_PAUSE)
                confirmed, error = await self._attempt(command_id, attempt, adapter, control, value)
                if confirmed is not None:
                    await self._store.command_done(
                        command_id,
                        state="confirmed",
                        now=confirmed.at if math.isfinite(confirmed.at) else self._clock(),
                        confirmed_value=confirmed.value,
                    )
                    bound.info("control.confirmed", attempts=attempt)
                    return "confirmed"
                bound.warning("control.unconfirmed", attempt=attempt, error=error)
            await self._store.command_done(
                command_id, state="failed", now=self._clock(), error=error
            )
            bound.error("control.failed", attempts=self._attempts, error=error)
            return "failed"

    async def _attempt(
        self, command_id: int, attempt: int, adapter: str, control: str, value: float
    ) -> tuple[ControlState | None, str]:
        """One send and the wait for its confirmation: (the confirming state, or None and why)."""
        deadline = asyncio.get_running_loop().time() + self._confirm_timeout
        try:
            device = self._devices.controllable(adapter)
            wanted = _find(device, control).check(value)
            sent_at = self._clock()
            async with asyncio.timeout_at(deadline):
                await device.apply(control, wanted)
            await self._store.command_sent(command_id, attempts=attempt, now=sent_at)
            while True:
                async with asyncio.timeout_at(deadline):
                    state = await device.state(control)
                if _confirms(state, wanted, sent_at):
                    assert state is not None
                    return state, ""
                if asyncio.get_running_loop().time() + POLL_EVERY >= deadline:
                    seen = "nothing" if state is None else f"{state.value:g}"
                    return None, (
                        f"the device did not report {wanted:g} within "
                        f"{self._confirm_timeout:g} s (it reports {seen})"
                    )
                await asyncio.sleep(POLL_EVERY)
        except TimeoutError:
            return None, f"no answer within {self._confirm_timeout:g} s"
        except AdapterError as exc:
            return None, str(exc)
        except ValueError as exc:  # Control.check: not a value this control takes
            return None, str(exc)
        except BaseException as exc:  # plugin code: its failure is this attempt's
            if is_cancellation(exc):
                raise
            return None, f"the adapter failed: {describe(exc)}"


def _find(device: ControllableAdapter, name: str) -> Control:
    for control in device.controls():
        if isinstance(control, Control) and control.name == name:
            return control
    raise AdapterError(f"the adapter has no control {name!r}")


def _confirms(state: object, wanted: float, sent_at: float) -> bool:
    if not isinstance(state, ControlState):
        return False
    value, at = state.value, state.at  # plugin-made: may hold anything
    if not (isinstance(value, int | float) and isinstance(at, int | float)):
        return False  # type: ignore[unreachable]
    return (
        math.isfinite(at)
        and at >= sent_at - CLOCK_SKEW
        and math.isclose(value, wanted, abs_tol=1e-6)
    )
