"""What ``ecgw run`` needs of this machine beyond a valid config: nothing lasting changed.

I/O (the file system, name resolution, a bind to port 0), kept apart from the pure rules
in :mod:`gateway.config_rules` so that nothing pure imports a socket. ``ecgw check`` runs
:func:`require_runnable` beside a running gateway.
"""

from __future__ import annotations

import os
import socket
import tempfile
from pathlib import Path

from gateway.config import ApiConfig, Config
from gateway.config_rules import parse_listen, shown
from gateway.errors import ConfigError

__all__ = ["listen_problem", "require_runnable", "state_dir_problem"]


def require_runnable(config: Config) -> ApiConfig | None:
    """The API table (none for a site of a fleet: its ``[upstream]`` replaces it), a state
    directory ``run`` can create or open, and a webhook host this machine can listen on.
    Raises ConfigError naming the key."""
    api = config.require_api() if config.upstream is None else None
    if problem := state_dir_problem(config.state_path):
        raise ConfigError(problem, key="gateway.state_dir")
    if config.webhook is not None:
        host, _ = parse_listen(config.webhook.listen)
        if problem := listen_problem(host):
            raise ConfigError(problem, key="webhook.listen")
    if config.admin is not None:
        host, _ = parse_listen(config.admin.listen)
        if problem := listen_problem(host):
            raise ConfigError(problem, key="admin.listen")
    return api


def listen_problem(host: str) -> str | None:
    """None if every address ``host`` resolves to can be bound here, else why not.

    Binds each to port 0 and closes it at once, so it neither needs the configured port
    nor disturbs a gateway already listening there (whether that port is free is only
    known when ``run`` binds it).
    """
    try:
        found = socket.getaddrinfo(host, 0, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (OSError, UnicodeError) as exc:
        return f"cannot resolve {shown(host)}: {getattr(exc, 'strerror', None) or exc}"
    for family, kind, proto, _, address in found:
        try:
            with socket.socket(family, kind, proto) as probe:
                probe.bind(address)
        except OSError as exc:
            return f"cannot listen on {shown(host)}: {exc.strerror or exc}"
    return None


def state_dir_problem(path: Path) -> str | None:
    """None if ``ecgw run`` can create (or open) its database under ``path``.

    Changes nothing lasting. The nearest existing folder must be a folder we may write
    in, and one that really takes files: a temporary folder (when ``path`` is still to be
    made) or file (when it exists) is created there and removed at once, so a ``/proc``
    or ``/sys`` path, or a read-only mount, is refused here and not by every start of
    ``run``. An existing database file must be a file we may read and write. A path the
    file system refuses outright (a name longer than it allows) is named, not a traceback.
    """
    try:
        return _state_dir_problem(path)
    except OSError as exc:
        return f"cannot use {shown(str(path))}: {exc.strerror or exc}"


def _state_dir_problem(path: Path) -> str | None:
    probe = path
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        return f"{shown(str(probe))} is not a directory"
    if not os.access(probe, os.W_OK | os.X_OK):
        return f"cannot write in {shown(str(probe))}"
    db = path / "ecgw.sqlite3"
    if probe == path and db.exists():
        if not db.is_file():
            return f"{shown(str(db))} is not a file"
        if not os.access(db, os.R_OK | os.W_OK):
            return f"cannot read and write {shown(str(db))}"
    return _try_writing(probe, folder=probe != path)


def _try_writing(where: Path, *, folder: bool) -> str | None:
    """Create a temporary folder or file in ``where`` and remove it; why not, if it fails."""
    try:
        if folder:
            os.rmdir(tempfile.mkdtemp(prefix=".ecgw-check-", dir=where))
        else:
            fd, name = tempfile.mkstemp(prefix=".ecgw-check-", dir=where)
            os.close(fd)
            os.unlink(name)
    except OSError as exc:
        what = "a folder" if folder else "a file"
        return f"cannot create {what} in {shown(str(where))}: {exc.strerror or exc}"
    return None
