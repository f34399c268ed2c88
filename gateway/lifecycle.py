"""The gateway's version, its ``gateway.stopped`` line, and what it does once started.

``gateway.started`` (logged by :mod:`gateway.app` once everything is open) and
``gateway.stopped`` (logged by ``ecgw run`` once everything is closed) bracket a run
in the journal, both with the version, so that an operator reading years of logs sees
which release ran when and why each run ended: the signal (``SIGTERM``), or the
name of the error that stopped it (``StoreCorrupt``).
"""

from __future__ import annotations

import gc
from importlib import metadata

import structlog

from gateway.errors import describe

__all__ = ["log_stopped", "settle", "version"]

log = structlog.get_logger("gateway.app")


def version() -> str:
    """The installed distribution's version (``unknown`` when run from a bare source tree)."""
    try:
        return metadata.version("ecgw")
    except metadata.PackageNotFoundError:
        return "unknown"


def log_stopped(reason: str, error: BaseException | None = None) -> None:
    """One ``gateway.stopped`` line: info for a signal or an end, error for an error."""
    if error is None:
        log.info("gateway.stopped", version=version(), reason=reason)
    else:
        log.error("gateway.stopped", version=version(), reason=reason, error=describe(error))


def settle() -> None:
    """Once started: what start-up made (modules, config, the app, adapters) lives as long
    as the process, so it is moved out of the cycle collector's sight (``gc.freeze``,
    after one collection so that no garbage is kept). Every full collection would walk it
    again: at a burst of notifications one took 54 ms, a tenth of the receiver's time.
    Objects made later are collected as before. What start-up made and a cycle later drops
    (a task of the start, say) is not reclaimed: a cost bounded by the start, once, never
    one that grows while the gateway runs."""
    gc.collect()
    gc.freeze()
