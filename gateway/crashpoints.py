"""Named crash points for fault-injection tests.

``ECGW_CRASH_AT=name`` (read once at import) makes :func:`crashpoint` kill the
process with SIGKILL when it reaches ``name``: the same as ``kill -9`` at that
exact moment. Unset (always, in production) it is one dict lookup.

Points: ``outbox.queued`` (a report was committed to the outbox),
``delivery.sent`` (the POST was answered, before the answer is looked at),
``delivery.answered_2xx`` (a 2xx arrived, before it is recorded), ``hub.published``
(the broker took an event for a site, before the route is recorded).
"""

from __future__ import annotations

import os
import signal

__all__ = ["crashpoint"]

_ARMED = frozenset(filter(None, os.environ.get("ECGW_CRASH_AT", "").split(",")))


def crashpoint(name: str) -> None:
    if name in _ARMED:
        os.kill(os.getpid(), signal.SIGKILL)
