"""Cold start of ``ecgw run`` and cold read-only commands: a big database vs an empty one.

Two state directories are built in the same run: ``empty`` (a fresh database) and
``big`` (about ``--mb`` MB, filled with SQL: delivered reports with their frozen
bodies, the events and report jobs behind them, a year of readings for 20 channels).
Each has seen one ``ecgw run`` stopped by SIGTERM, so its last run stopped cleanly,
as after an orderly reboot.

Every measurement starts cold: the database file, its WAL and its shared-memory file
are synced and dropped from the page cache (``posix_fadvise(POSIX_FADV_DONTNEED)``)
first; the Python installation itself stays cached. Then, in pairs, alternating
which goes first (ABAB, BAAB, ...):

* ``run``: ``ecgw run`` until its ``gateway.started`` line (ready; ``READY=1`` goes to
  systemd right after it), then SIGTERM (a clean stop, so the next start is clean too);
* ``status``, ``outbox list``, ``events list``: the command's wall time to exit;
* ``database part only``: the same opens and reads inside this process, without the
  interpreter's start and imports (what grows with the file, if anything does);
* ``run after kill``: with ``--unclean``, the same ``run`` after a ``kill -9`` of the
  previous one: the start then runs ``PRAGMA quick_check`` over the whole file.

For each pair it prints big, empty and big/empty; then per measurement the median and
the spread (min..max) of each, and the median CPU time of the process (user + system, to
its exit): on a machine shared with other work the wall time includes waiting for a core,
the CPU time does not. Targets (issue 12): big ``run`` <= 1 s to ready,
big ``status`` <= 0.5 s.

    python bench/cold_start.py [--pairs 7] [--mb 100] [--unclean] [--keep DIR] [--quick]
                               [--python VENV/bin/python]

The figures of an installed gateway come from a venv as a site has it (``pip install .``,
no extras: ``python -m venv V && V/bin/pip install .``, then ``--python V/bin/python``). The
default, this Python, is a development venv: its test extras bring ``rich`` (through
import-linter), which structlog imports at start, and each command then starts 0.1-0.15 s
later on a slow machine.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DB_NAME = "ecgw.sqlite3"
CHANNELS = 20
YEAR = 365 * 86400.0

# --- building the databases ------------------------------------------------------------------


def write_config(state: Path) -> Path:
    """An offline config: API on a closed port, no webhook, no polling, no adapters."""
    path = state.parent / f"{state.name}.toml"
    path.write_text(
        f'[gateway]\nstate_dir = "{state.name}"\n'
        "[api]\nbase_url = 'http://127.0.0.1:1/v1'\n"
        "token_url = 'http://127.0.0.1:1/connect/token'\nclient_id = 'c'\nclient_secret = 's'\n"
    )
    return path


def create_schema(db: Path) -> None:
    from gateway.store.database import open_database

    async def create() -> None:
        async with open_database(db):
            pass

    asyncio.run(create())


def fill(db: Path, mb: int) -> None:
    """About ``mb`` MB of history, written with SQL (seconds, not minutes).

    Per 100 MB: 25k delivered reports (1 kB body each) with their events (0.6 kB
    payload) and report jobs, spread over a year; 20 channels of readings: 40 hours of
    raw 10 s readings and 60 days of compacted minutes before them, with the hand-over
    row compaction keeps. Nothing is left for the gateway's compaction to do (the raw
    rows are younger than ``raw_retention``, the minutes than ``retention``), so the
    file stays the same from one start to the next.
    """
    scale = mb / 100
    reports = int(25_000 * scale)
    minutes = int(60 * 1440 * scale)
    now = time.time()
    raw_from = (now - 40 * 3600) // 60 * 60
    start, step = now - YEAR, YEAR / max(reports, 1)
    with contextlib.closing(sqlite3.connect(db)) as conn:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("BEGIN")
        conn.execute(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?) "
            "INSERT INTO events (event_id, payload_type, created_at, received_via, received_at, "
            "payload, plan_state, plan_note) "
            "SELECT printf('evt-%07d', i), 'PriceCurve', NULL, 'webhook', ? + i * ?, "
            'CAST(\'{"payloadType":"PriceCurve","pad":"\' || hex(randomblob(300)) '
            "|| '\"}' AS BLOB), 'done', 'EnergyUsage queued' FROM n",
            (reports, start, step),
        )
        conn.execute(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?) "
            "INSERT INTO outbox (event_id, kind, body, idempotency_key, source, state, attempts, "
            "next_attempt_at, last_status, report_id, deadline, created_at, updated_at, "
            "delivered_at) "
            "SELECT printf('evt-%07d', i), 'EnergyUsage', "
            'CAST(\'{"eventId":"\' || printf(\'evt-%07d\', i) || \'","pad":"\' '
            "|| hex(randomblob(500)) || '\"}' AS BLOB), lower(hex(randomblob(16))), "
            "'scheduler', 'delivered', 1, ? + i * ?, 201, printf('rep-%07d', i), "
            "? + i * ? + 40 * 86400, ? + i * ?, ? + i * ? + 5, ? + i * ? + 5 FROM n",
            (reports, *(start, step) * 5),
        )
        conn.execute(
            "INSERT INTO report_jobs (event_id, kind, outcome, note, at) "
            "SELECT event_id, kind, 'queued', NULL, created_at FROM outbox"
        )
        conn.executemany(
            "INSERT INTO channels (id, adapter, channel, kind, unit, wrap) "
            "VALUES (?, 'meter', ?, 'counter', 'kWh', NULL)",
            [(c, f"ch{c:02d}") for c in range(1, CHANNELS + 1)],
        )
        # a 3 kW load: 0.05 kWh a minute; the minutes end where the raw rows begin
        conn.execute(
            "WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < ?1) "
            "INSERT INTO readings_minute (channel_id, at, value) "
            "SELECT c.id, ?2 - (?1 - n.i) * 60.0, n.i * 0.05 FROM channels c, n",
            (minutes, raw_from),
        )
        conn.execute(
            "WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < ?1) "
            "INSERT INTO readings (channel_id, at, value) "
            "SELECT c.id, ?2 + n.i * 10.0, ?3 * 0.05 + n.i * 0.05 / 6 FROM channels c, n",
            (40 * 360, raw_from, minutes),
        )
        conn.execute(
            "INSERT INTO compaction (channel_id, through, handover_at, handover_state, "
            "handover_value, raw_from) "
            "SELECT c.id, ?, ?, 0.0, r.value, ? FROM channels c "
            "JOIN readings r ON r.channel_id = c.id AND r.at = ?",
            (raw_from, raw_from, raw_from - minutes * 60.0, raw_from),
        )
        conn.execute("COMMIT")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")


# --- cold measurements -------------------------------------------------------------------------


def drop_cache(state: Path) -> None:
    """Write back and drop the database's pages (file, WAL, shared memory) from the page cache."""
    for name in (DB_NAME, f"{DB_NAME}-wal", f"{DB_NAME}-shm"):
        path = state / name
        if not path.exists():
            continue
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def resident_kb(state: Path) -> int:
    """How much of the database file is in the page cache (``fincore``), to show the drop works."""
    try:
        out = subprocess.run(
            ["fincore", "--bytes", "--noheadings", "--output", "RES", str(state / DB_NAME)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return -1
    return int(out.split()[0]) // 1024


PYTHON = [sys.executable]
"""The interpreter whose ``ecgw`` is timed (``--python``): by default this one."""


def _ecgw(*args: str, config: Path) -> list[str]:
    # -P: the working directory is not put first on sys.path, so a checkout's gateway/
    # never hides the one installed in that Python
    return [*PYTHON, "-P", "-m", "gateway", *args, "-c", str(config)]


PROBE_SECONDS = 6.0


def probe(python: str) -> str:
    """Where ``python`` imports ``gateway`` from; RuntimeError naming ``python`` if it does
    not within PROBE_SECONDS (not a Python, no ecgw installed in it, hangs)."""
    try:
        found = subprocess.run(
            [python, "-P", "-c", "import gateway; print(gateway.__file__)"],
            capture_output=True,
            text=True,
            timeout=PROBE_SECONDS,
            env=ENV,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"--python {python}: no answer in {PROBE_SECONDS:.0f} s") from None
    except OSError as exc:
        raise RuntimeError(f"--python {python}: cannot run it ({exc.strerror})") from None
    if found.returncode != 0:
        why = (found.stderr.strip().splitlines() or [f"exit {found.returncode}"])[-1]
        raise RuntimeError(f"--python {python}: cannot import gateway ({why})")
    return found.stdout.strip()


def loads_rich(python: str) -> bool:
    """Whether ``python`` has ``rich``: structlog imports it when it is there (a development
    install has it through import-linter, a test dependency; ``pip install ecgw`` does not),
    and it costs every command some 0.1-0.15 s of start on a slow machine."""
    probe = "import importlib.util, sys; sys.exit(importlib.util.find_spec('rich') is None)"
    return subprocess.run([python, "-c", probe], check=False).returncode == 0


ENV = dict(os.environ)
"""The commands' environment: bytecode cached (``PYTHONPYCACHEPREFIX``, set by ``main``), as
``pip install`` leaves an installed ecgw, even where ``PYTHONDONTWRITEBYTECODE`` is set."""
ENV.pop("PYTHONDONTWRITEBYTECODE", None)


RUN_DEADLINE = 120.0
"""Seconds ``ecgw run`` has to say it started, before the bench gives up on it."""


def time_run(config: Path, *, kill: bool = False) -> float:
    """Seconds from spawning ``ecgw run`` to its ``gateway.started`` line; then SIGTERM
    (or SIGKILL with ``kill``: the next start finds a run that did not stop cleanly)."""
    started = time.perf_counter()
    proc = subprocess.Popen(
        _ecgw("run", config=config),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**ENV, "ECGW_LOG_LEVEL": "info"},
    )
    assert proc.stderr is not None
    ready = None
    seen = []
    deadline = threading.Timer(RUN_DEADLINE, proc.kill)  # never ready: its stderr ends
    deadline.start()
    try:
        for line in proc.stderr:
            seen.append(line)
            if '"gateway.started"' in line:
                ready = time.perf_counter() - started
                break
    finally:
        deadline.cancel()
    proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
    rest = proc.stderr.read()
    code = proc.wait(timeout=60)
    if ready is None or code not in (0, -signal.SIGKILL):
        raise RuntimeError(
            f"ecgw run ({PYTHON[0]}) did not start (exit {code}):\n{''.join(seen)}{rest}"
        )
    return ready


def time_command(config: Path, *args: str) -> float:
    started = time.perf_counter()
    result = subprocess.run(_ecgw(*args, config=config), capture_output=True, text=True, env=ENV)
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(f"ecgw {' '.join(args)} failed: {result.stderr}")
    return elapsed


def time_in_process(config: Path, what: str) -> float:
    """The database part alone, in this process (no interpreter start, no imports): open as
    ``ecgw run`` opens it, or open and read what ``ecgw status`` / ``outbox list`` read."""
    from gateway.config import load_config
    from gateway.listing import Filter
    from gateway.status import status_record
    from gateway.store.database import open_database
    from gateway.store.listings import outbox_page

    cfg = load_config(str(config))

    async def run() -> None:
        if what == "status":
            await status_record(cfg, now=time.time())
            return
        async with open_database(cfg.db_path, full_check_after_crash=what == "open") as db:
            if what == "outbox list":
                await outbox_page(db, Filter())

    started = time.perf_counter()
    asyncio.run(run())
    return time.perf_counter() - started


def paired(
    name: str,
    pairs: int,
    measure: Callable[[Path], float],
    states: dict[str, Path],
    *,
    child: bool = True,
) -> dict[str, list[float]]:
    """``pairs`` pairs of (big, empty), each cold, the order alternating; prints each pair."""
    times: dict[str, list[float]] = {"big": [], "empty": []}
    cpu: dict[str, list[float]] = {"big": [], "empty": []}
    print(f"\n{name}:")
    for i in range(pairs):
        order = ("big", "empty") if i % 2 == 0 else ("empty", "big")
        for kind in order:
            drop_cache(states[kind])
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            times[kind].append(measure(states[kind]))
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu[kind].append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
        big, empty = times["big"][-1], times["empty"][-1]
        print(f"  pair {i + 1}: big {big:6.3f} s  empty {empty:6.3f} s  ratio {big / empty:5.2f}")
    ratios = [b / e for b, e in zip(times["big"], times["empty"], strict=True)]
    for kind in ("big", "empty"):
        values = times[kind]
        print(
            f"  {kind:5s}: median {statistics.median(values):6.3f} s  "
            f"spread {min(values):6.3f} .. {max(values):6.3f} s"
            + (f"  (CPU of the process: median {statistics.median(cpu[kind]):5.3f} s)" * child)
        )
    print(
        f"  ratio: median {statistics.median(ratios):5.2f}  "
        f"spread {min(ratios):5.2f} .. {max(ratios):5.2f}"
    )
    return times


@contextlib.contextmanager
def workdir(keep: str | None) -> Iterator[Path]:
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        yield Path(keep)
        return
    with tempfile.TemporaryDirectory(prefix="ecgw-cold-") as tmp:
        yield Path(tmp)


def prepare(work: Path, mb: int) -> dict[str, Path]:
    states = {}
    for kind in ("big", "empty"):
        state = work / kind
        states[kind] = state
        if (state / DB_NAME).exists():
            continue  # --keep: built by an earlier run
        state.mkdir(parents=True, exist_ok=True)
        create_schema(state / DB_NAME)
        if kind == "big":
            built = time.perf_counter()
            fill(state / DB_NAME, mb)
            print(f"built the big database in {time.perf_counter() - built:.1f} s")
        time_run(write_config(state))  # one run, stopped cleanly: its stop is recorded
    return states


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pairs", type=int, default=7)
    parser.add_argument("--mb", type=int, default=100, help="size of the big database")
    parser.add_argument("--unclean", action="store_true", help="also: start after kill -9")
    parser.add_argument("--keep", help="build (or reuse) the databases in this directory")
    parser.add_argument("--quick", action="store_true", help="2 pairs, a 20 MB database")
    parser.add_argument(
        "--python",
        default=sys.executable,
        help="the Python whose installed ecgw is timed (default: this one); for the figures "
        "of an installed gateway, a venv with `pip install .` and no extras",
    )
    args = parser.parse_args()
    PYTHON[:] = [args.python]
    try:
        found = probe(args.python)  # before anything is built
    except RuntimeError as exc:
        parser.error(str(exc))
    if args.quick:
        args.pairs, args.mb = 2, 20
    with workdir(args.keep) as work:
        ENV["PYTHONPYCACHEPREFIX"] = str(work / "pycache")
        states = prepare(work, args.mb)
        configs = {kind: write_config(state) for kind, state in states.items()}
        for kind, state in states.items():
            size = sum(p.stat().st_size for p in state.glob(f"{DB_NAME}*")) / 1e6
            with contextlib.closing(sqlite3.connect(state / DB_NAME)) as conn:
                counts = {
                    t: conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]
                    for t in ("events", "outbox", "readings")
                }
            drop_cache(state)
            print(
                f"{kind}: {size:.1f} MB, {json.dumps(counts)}; "
                f"in the page cache after the drop: {resident_kb(state)} kB"
            )
        for command in (("status",), ("outbox", "list"), ("events", "list")):
            time_command(configs["empty"], *command)  # compiles what each imports, once
        print(
            f"ecgw run with: {args.python}, its gateway from {found} "
            f"({'with' if loads_rich(args.python) else 'without'} rich, which structlog loads)"
        )
        print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")

        def by_config(measure: Callable[[Path], float]) -> Callable[[Path], float]:
            return lambda state: measure(configs["big" if state == states["big"] else "empty"])

        results = {
            "ecgw run, to ready": paired(
                "ecgw run, to ready", args.pairs, by_config(time_run), states
            ),
        }
        for command in (("status",), ("outbox", "list"), ("events", "list")):
            name = "ecgw " + " ".join(command)
            results[name] = paired(
                name, args.pairs, by_config(lambda c, a=command: time_command(c, *a)), states
            )
        for what in ("open", "status", "outbox list"):
            name = f"database part only, in this process: {what}"
            results[name] = paired(
                name,
                args.pairs,
                by_config(lambda c, w=what: time_in_process(c, w)),
                states,
                child=False,
            )
        if args.unclean:
            for state in states.values():  # leave each with a run that did not stop cleanly
                time_run(configs["big" if state == states["big"] else "empty"], kill=True)
            name = "ecgw run after kill -9, to ready (quick_check)"
            results[name] = paired(
                name, max(2, args.pairs // 2), by_config(lambda c: time_run(c, kill=True)), states
            )
            for config in configs.values():
                time_run(config)  # leave them stopped cleanly again
        print(f"\nload average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        print("summary (big, median):")
        for name, times in results.items():
            print(f"  {name}: {statistics.median(times['big']):.3f} s")


if __name__ == "__main__":
    main()
