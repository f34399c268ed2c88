"""Signed webhook notifications per second: the gateway vs a bare aiohttp handler.

Three servers, each in its own process, in the same run, alternating, each fed
the same signed notifications (Volue's two test vectors with fresh ids) by the
same client (this process: raw HTTP/1.1 keep-alive connections, ``--in-flight``
requests outstanding, one per connection):

* ``bare``: an aiohttp handler that only answers 200 (the ceiling);
* ``webhook``: the gateway's receiver (``serve_webhook``) with a real SQLite
  inbox (WAL, synchronous=FULL), logging JSON lines as ``ecgw run`` does;
* ``gateway``: the whole ``ecgw run`` (sandbox in its own process, two
  simulated adapters, the scheduler planning the new events once their arrival
  pauses for 50 ms, and at most 2 s after the first).

Every answer must be 200; afterwards the inbox must hold every event once.

Each subject (``webhook``, ``gateway``) runs in pairs with ``bare``, the order
alternating (bare first, then the subject first, ...), ``--rounds`` pairs each;
every pair gives one ratio subject / bare.

    python bench/webhook.py [--requests 4000] [--rounds 3] [--in-flight 64] [--quick]
        [--kinds webhook,gateway]

Prints notifications/s of every run, every pair's ratio to ``bare`` with the
median and spread (target >= 0.5), the commits the webhook needed, and the cost
of the signature check and decode.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import timeit
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from pairs import Pair, interleave, load_line, ratio_line, ratios

ROOT = Path(__file__).resolve().parent.parent
VECTORS = ROOT / "tests" / "fixtures" / "volue"
SECRET = "bench-webhook-secret"
PATH = "/notify"
KINDS = ("bare", "webhook", "gateway")


def notifications(n: int, tag: str) -> list[bytes]:
    """``n`` distinct notification bodies, alternating Volue's two vectors."""
    vectors = [
        json.loads((VECTORS / name).read_bytes())
        for name in ("price-curve-event.json", "user-eligibility-event.json")
    ]
    bodies = []
    for i in range(n):
        note = dict(vectors[i % 2])
        note["eventId"] = f"bench-{tag}-event-{i:07d}"
        note["notificationId"] = f"bench-{tag}-note-{i:07d}"
        bodies.append(json.dumps(note, separators=(",", ":")).encode())
    return bodies


def requests(bodies: list[bytes], host: str) -> list[bytes]:
    from gateway.intake.signature import sign

    return [
        (
            f"POST {PATH} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"X-Payload-Signature: {sign(body, SECRET)}\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode()
        + body
        for body in bodies
    ]


# --- the client ---------------------------------------------------------------

_LENGTH = re.compile(rb"(?i)\r\ncontent-length: *(\d+)")


async def blast(host: str, port: int, reqs: list[bytes], in_flight: int) -> tuple[float, Counter]:
    """Send every request over ``in_flight`` keep-alive connections; (seconds, statuses)."""
    todo = iter(reqs)
    statuses: Counter[int] = Counter()
    conns = [await asyncio.open_connection(host, port) for _ in range(in_flight)]

    async def worker(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for req in todo:
            writer.write(req)
            head = await reader.readuntil(b"\r\n\r\n")
            match = _LENGTH.search(head)
            await reader.readexactly(int(match.group(1)) if match else 0)
            statuses[int(head[9:12])] += 1
        writer.close()

    start = time.perf_counter()
    await asyncio.gather(*(worker(r, w) for r, w in conns))
    return time.perf_counter() - start, statuses


# --- the servers (children) -------------------------------------------------------


async def serve_bare() -> None:
    from aiohttp import web

    async def ok(request: web.Request) -> web.Response:
        return web.Response(status=200)

    app = web.Application()
    app.router.add_post(PATH, ok)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    await _until_stdin_closes(f"http://{host}:{port}{PATH}")
    await runner.cleanup()


async def serve_webhook_only(state: Path) -> None:
    from gateway.config import Secret
    from gateway.intake.webhook import WebhookSettings, serve_webhook
    from gateway.lifecycle import settled
    from gateway.logs import configure_logging
    from gateway.store.database import open_database
    from gateway.store.inbox import Inbox

    configure_logging(level="info", json=True)  # as `ecgw run`
    settings = WebhookSettings(
        host="127.0.0.1",
        port=0,
        path=PATH,
        secret=Secret(SECRET),
        max_body=1024 * 1024,
        read_timeout=30.0,
    )
    async with (
        open_database(state / "ecgw.sqlite3") as db,
        serve_webhook(settings, Inbox(db), lambda event_id: None) as url,
    ):
        with settled():  # as `ecgw run` once started
            await _until_stdin_closes(url)


def commits_logged(log: Path) -> tuple[int, int]:
    """(commits, notifications in them) from the receiver's log: one ``webhook.received``
    line follows each commit and counts what it stored. Read after the run: a trace
    callback on the connection would run Python in SQLite's thread for every statement,
    triggers included, and fight the event loop for the GIL (it cut the rate 10x)."""
    commits = stored = 0
    for line in log.read_text().splitlines():
        if '"webhook.received"' in line:
            commits += 1
            stored += json.loads(line)["count"]
    return commits, stored


async def _until_stdin_closes(url: str) -> None:
    print(url, flush=True)
    await asyncio.to_thread(sys.stdin.read)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def server(kind: str, state: Path) -> Iterator[tuple[str, int]]:
    """A server of ``kind`` in its own process; yields (webhook URL, its pid)."""
    if kind == "gateway":
        with full_gateway(state) as served:
            yield served
        return
    proc = subprocess.Popen(
        [sys.executable, __file__, "--serve", kind, "--state", str(state)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=(state / "server.log").open("wb"),
        text=True,
    )
    try:
        assert proc.stdout is not None
        yield proc.stdout.readline().strip(), proc.pid
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        if proc.wait(timeout=60) != 0:
            raise RuntimeError(f"{kind} server failed; see {state / 'server.log'}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def sandbox() -> Iterator[dict[str, str]]:
    """``ecgw sandbox`` in its own process; yields the [api] table that points at it."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway", "sandbox", "--listen", "127.0.0.1:0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "ECGW_LOG_LEVEL": "warning"},
    )
    try:
        assert proc.stdout is not None
        root = re.search(r"(http://\S+)", proc.stdout.readline()).group(1)  # type: ignore[union-attr]
        yield {
            "base_url": f"{root}/energy-coordination/v1",
            "token_url": f"{root}/connect/token",
            "client_id": "ecgw-sandbox",
            "client_secret": "sandbox-secret",
        }
    finally:
        proc.terminate()
        proc.wait()


def gateway_config(api: dict[str, str], state: Path, port: int) -> str:
    """A TOML config: the sandbox's API, a webhook, two simulated resources."""
    lines = ["[gateway]", f"state_dir = {json.dumps(str(state))}", "[api]"]
    lines += [f"{k} = {json.dumps(v)}" for k, v in api.items()]
    lines += ["[webhook]", f'listen = "127.0.0.1:{port}"', f'path = "{PATH}"']
    lines += [f'secret = "{SECRET}"']
    for name, kw in (("tank", 3.0), ("charger", 11.0)):
        lines += [f"[adapters.{name}]", 'type = "simulated"', f"power_kw = {kw}"]
        lines += ['poll_interval = "1s"']
    for name in ("tank", "charger"):
        lines += ["[[resources]]", f'resource_id = "bench-{name}"', 'location_id = "bench-site"']
        lines += [f'adapter = "{name}"']
    return "\n".join(lines) + "\n"


@contextlib.contextmanager
def full_gateway(state: Path) -> Iterator[tuple[str, int]]:
    """``ecgw run`` in its own process (logging JSON lines to a file); yields the URL."""
    port = _free_port()
    with sandbox() as api:
        config = state / "ecgw.toml"
        config.write_text(gateway_config(api, state, port))
        log = state / "gateway.log"
        proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "run"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=log.open("wb"),
            env={**os.environ, "ECGW_CONFIG": str(config)},
        )
        try:
            deadline = time.monotonic() + 30
            while b"gateway.started" not in log.read_bytes():
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"ecgw run did not start; see {log}")
                time.sleep(0.05)
            yield f"http://127.0.0.1:{port}{PATH}", proc.pid
        finally:
            proc.terminate()
            if proc.wait(timeout=60) != 0:
                raise RuntimeError(f"ecgw run did not exit cleanly; see {log}")


# --- one run, and the costs per request ------------------------------------------------


def stored_events(state: Path) -> int:
    with contextlib.closing(sqlite3.connect(state / "ecgw.sqlite3")) as conn:
        return int(conn.execute("SELECT COUNT(*) FROM events").fetchone()[0])


def one_run(kind: str, n: int, in_flight: int, tag: str) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp)
        with server(kind, state) as (url, pid):
            host, port = re.match(r"http://([^:/]+):(\d+)", url).groups()  # type: ignore[union-attr]
            reqs = requests(notifications(n, tag), f"{host}:{port}")
            cpu = cpu_seconds(pid)
            seconds, statuses = asyncio.run(blast(host, int(port), reqs, in_flight))
            cpu = cpu_seconds(pid) - cpu
            if kind == "gateway":  # the scheduler plans each event after its 200
                catch_up = time.perf_counter()
                wait_planned(state)
                planned = n / (seconds + time.perf_counter() - catch_up)
                planning_cpu = cpu_seconds(pid) - cpu
        if statuses != Counter({200: n}):
            raise RuntimeError(f"{kind}: answers {dict(statuses)}, expected {n} x 200")
        if kind != "bare" and (stored := stored_events(state)) != n:
            raise RuntimeError(f"{kind}: {stored} events stored, expected {n}")
        result = {"rate": n / seconds, "cpu_us": cpu / n * 1e6}
        if kind == "webhook":
            result["commits"], result["in_commits"] = commits_logged(state / "server.log")
        if kind == "gateway":
            result.update(planned=planned, planned_cpu_us=planning_cpu / n * 1e6)
        return result


def wait_planned(state: Path, timeout: float = 300) -> None:
    """Until the scheduler has looked at every event (none left ``new``). The gateway is
    another process that signals nothing, so this polls the file every 10 ms: after the
    timed part of the run (the answers), for a figure of its own, never for the ratio."""
    deadline = time.monotonic() + timeout
    with contextlib.closing(sqlite3.connect(state / "ecgw.sqlite3")) as conn:
        while conn.execute("SELECT 1 FROM events WHERE plan_state = 'new' LIMIT 1").fetchone():
            if time.monotonic() > deadline:
                raise RuntimeError("the scheduler did not plan every event in time")
            time.sleep(0.01)


def costs() -> dict[str, float]:
    """Microseconds per call of what the receiver does before it queues a notification."""
    from gateway import wire
    from gateway.intake.signature import sign, verify

    body = notifications(1, "cost")[0]
    signature = sign(body, SECRET)
    runs = 20000

    def per_call(fn: object) -> float:
        return min(timeit.repeat(fn, number=runs, repeat=3)) / runs * 1e6  # type: ignore[arg-type]

    return {
        "verify_us": per_call(lambda: verify(body, signature, SECRET)),
        "decode_us": per_call(lambda: wire.decode_notification(body)),
    }


def paired(kind: str, pairs: int, n: int, in_flight: int) -> list[Pair[dict[str, float]]]:
    """``pairs`` pairs of runs, bare and ``kind``, the order alternating."""
    return interleave(
        pairs,
        lambda i: one_run("bare", n, in_flight, f"bare-{i}"),
        lambda i: one_run(kind, n, in_flight, f"{kind}-{i}"),
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=4000)
    parser.add_argument("--rounds", type=int, default=3, help="pairs per subject")
    parser.add_argument("--in-flight", type=int, default=64)
    parser.add_argument(
        "--kinds", default=",".join(KINDS), help="the subjects (bare is always the baseline)"
    )
    parser.add_argument("--quick", action="store_true", help="500 requests, 3 pairs")
    parser.add_argument("--serve", choices=("bare", "webhook"))
    parser.add_argument("--state", type=Path)
    args = parser.parse_args()
    if args.serve == "bare":
        asyncio.run(serve_bare())
        return
    if args.serve == "webhook":
        asyncio.run(serve_webhook_only(args.state))
        return
    if args.quick:
        args.requests, args.rounds = 500, 3
    subjects = [kind for kind in args.kinds.split(",") if kind and kind != "bare"]
    unknown = set(subjects) - set(KINDS)
    if unknown:
        parser.error(f"--kinds: unknown {', '.join(sorted(unknown))} (known: {', '.join(KINDS)})")
    one_run("bare", min(args.requests, 500), args.in_flight, "warm")  # warm-up, not counted
    runs = {kind: paired(kind, args.rounds, args.requests, args.in_flight) for kind in subjects}
    print(
        f"requests per run: {args.requests}, pairs per subject: {args.rounds}, "
        f"in flight: {args.in_flight}; {load_line(os.getloadavg())}"
    )
    for kind, pairs in runs.items():
        for side, results in (
            ("bare", [p.baseline for p in pairs]),
            (kind, [p.subject for p in pairs]),
        ):
            each = ", ".join(f"{r['rate']:.0f}" for r in results)
            cpu = statistics.median(r["cpu_us"] for r in results)
            print(
                f"{side:8s}: notifications/s per run [{each}]; "
                f"server CPU {cpu:.0f} us per notification (median)"
            )
        print("  " + ratio_line(f"ratio {kind} / bare", ratios(pairs, lambda r: r["rate"])))
        if kind == "webhook":
            commits = ", ".join(str(int(p.subject["commits"])) for p in pairs)
            print(
                f"  webhook commits per run: {commits} for {args.requests} notifications "
                "(from the receiver's log: one line per commit)"
            )
        if kind == "gateway":
            rate = statistics.median(p.subject["planned"] for p in pairs)
            cpu = statistics.median(p.subject["planned_cpu_us"] for p in pairs)
            print(
                f"  gateway, until every event is also planned by the scheduler: {rate:.0f} "
                f"notifications/s, CPU {cpu:.0f} us per notification (medians)"
            )
    cost = costs()
    print(
        f"per notification: signature check {cost['verify_us']:.1f} us, "
        f"decode {cost['decode_us']:.1f} us"
    )
    print("target: webhook and gateway ratio >= 0.5")


if __name__ == "__main__":
    main()
