"""systemd's readiness and watchdog protocol (``sd_notify``), in a few lines, no dependency.

Under ``Type=notify`` systemd passes ``NOTIFY_SOCKET`` (a unix datagram socket; a leading
``@`` names one in the abstract namespace) and, with ``WatchdogSec=``, ``WATCHDOG_USEC``
(and ``WATCHDOG_PID``). The gateway says ``READY=1`` once it has started, ``WATCHDOG=1``
from its heartbeat loop (so a gateway whose loops or database hang is restarted) and
``STOPPING=1`` on its way out. Without ``NOTIFY_SOCKET`` (a terminal, Docker, the tests)
every call does nothing.

A notification is best effort: a send that fails is logged once and never stops the
gateway (systemd then sees no readiness or no watchdog, and acts on that itself).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping

import structlog

__all__ = ["Notifier"]

log = structlog.get_logger("gateway.sdnotify")

MIN_WATCHDOG_INTERVAL = 0.05
"""The heartbeat writes the database each time: a typo like ``WatchdogSec=1ms`` must not
turn it into a busy loop."""


class Notifier:
    """Sends ``sd_notify`` states to ``NOTIFY_SOCKET``; a no-op when it is unset."""

    def __init__(self, address: str | None, watchdog_usec: int | None = None) -> None:
        if address and address.startswith("@"):
            address = "\0" + address[1:]
        self.address = address or None
        self.watchdog_interval = (
            max(watchdog_usec / 2e6, MIN_WATCHDOG_INTERVAL) if watchdog_usec else None
        )
        """How often to say ``WATCHDOG=1`` (half of ``WatchdogSec=``); None: no watchdog."""
        self._failed = False

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Notifier:
        """From ``NOTIFY_SOCKET``, ``WATCHDOG_USEC`` and ``WATCHDOG_PID`` (the watchdog is
        ours only when ``WATCHDOG_PID`` is unset or is this process)."""
        env = os.environ if env is None else env
        usec: int | None = None
        pid = env.get("WATCHDOG_PID", "")
        if pid in ("", str(os.getpid())):
            try:
                usec = int(env.get("WATCHDOG_USEC", "")) or None
            except ValueError:
                usec = None
        if usec is not None and usec < 0:
            usec = None
        return cls(env.get("NOTIFY_SOCKET"), usec)

    def send(self, state: str) -> bool:
        """Send one state (``"READY=1"``); True if it was sent."""
        if self.address is None:
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.setblocking(False)  # never hold the event loop: a full queue is a failure
                sock.sendto(state.encode(), self.address)
        except OSError as exc:
            if not self._failed:
                log.warning("sdnotify.failed", state=state, error=exc.strerror or str(exc))
                self._failed = True
            return False
        return True

    def ready(self) -> bool:
        return self.send("READY=1")

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1")

    def stopping(self) -> bool:
        return self.send("STOPPING=1")
