"""Reports delivered per second: the gateway's outbox vs a bare aiohttp client.

Both post the same bodies with 16 requests in flight to the same server, a
**sink** that costs nearly nothing (raw asyncio in its own process on loopback:
it answers the token request and every ``POST /reports`` with a 200 in Spark's
wire format, ``{"id": ..., "createdAt": ...}``, and keeps nothing), so that the
ratio measures the gateway's delivery, not the server. ``--sandbox`` posts to
``ecgw sandbox`` instead (a fresh one per run: it keeps every report and slows
as they pile up), which mostly measures the sandbox.

The gateway's figure includes everything it really does per report: claim from
SQLite, POST with token and Idempotency-Key, record the outcome (WAL,
synchronous=FULL), and log it as ``ecgw run`` does (JSON lines at level info).
Its clock stops when the outcome of the last report is committed (a signal from
the outbox's ``settle``, no polling); the bare client's when its last answer is
read. Each run is its own process; runs go in pairs (bare and gateway, the
order alternating), and each pair gives one ratio.

    python bench/delivery.py [--reports 3000] [--rounds 5] [--sandbox] [--quick]

``--rounds`` is the number of pairs. Prints every run's reports/s, every pair's
ratio gateway / bare with the median and spread (target >= 0.5), and peak RSS.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import aiohttp
from pairs import interleave, load_line, ratio_line, ratios

IN_FLIGHT = 16


def bodies(n: int) -> list[bytes]:
    return [
        json.dumps(
            {
                "eventId": f"bench-{i:06d}",
                "payloads": [
                    {
                        "payloadType": "EnergyUsage",
                        "resourceId": f"res-{i % 50}",
                        "locationId": "loc",
                        "resolution": "01:00:00",
                        "points": [
                            {"timestamp": f"2026-11-26T{h:02d}:00:00Z", "kiloWattHours": 1.234}
                            for h in range(24)
                        ],
                    }
                ],
            },
            separators=(",", ":"),
        ).encode()
        for i in range(n)
    ]


async def token(session: aiohttp.ClientSession, root: str) -> str:
    form = {
        "grant_type": "client_credentials",
        "client_id": "ecgw-sandbox",
        "client_secret": "sandbox-secret",
    }
    async with session.post(f"{root}/connect/token", data=form) as resp:
        return str((await resp.json())["access_token"])


async def bare_client(root: str, n: int) -> float:
    """16 workers posting the bodies with one shared session; returns reports/s."""
    payloads = bodies(n)
    async with aiohttp.ClientSession() as session:
        bearer = await token(session, root)
        headers = {"Authorization": f"Bearer {bearer}", "Content-Type": "application/json"}
        queue = list(reversed(payloads))

        async def worker() -> None:
            while queue:
                body = queue.pop()
                async with session.post(
                    f"{root}/energy-coordination/v1/reports", data=body, headers=headers
                ) as resp:
                    await resp.read()
                    assert resp.status == 200, resp.status

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(IN_FLIGHT)))
        return n / (time.perf_counter() - start)


def signalled_outbox(db: Any, n: int) -> Any:
    """The real outbox, which sets ``done`` once ``n`` delivered outcomes are committed
    (``settle`` returns after its commit): the clock stops on a signal, not a poll."""
    from gateway.delivery.policy import Delivered
    from gateway.store.outbox import Outbox

    class Signalled(Outbox):
        def __init__(self, db: Any) -> None:
            super().__init__(db)
            self.done = asyncio.Event()
            self.delivered = 0

        async def settle(self, results: Sequence[tuple[int, Any]], **kw: Any) -> Any:
            round_ = await super().settle(results, **kw)
            self.delivered += sum(isinstance(o, Delivered) for _, o in results)
            if self.delivered >= n:
                self.done.set()
            return round_

    return Signalled(db)


async def gateway(root: str, n: int, state: Path) -> float:
    """The real outbox + deliverer, concurrency 16; returns reports/s."""
    from gateway.config import Secret
    from gateway.delivery.api import ApiClient, TokenSource
    from gateway.delivery.deliverer import Deliverer
    from gateway.store.database import open_database

    async with open_database(state / "ecgw.sqlite3") as db, aiohttp.ClientSession() as session:
        outbox = signalled_outbox(db, n)
        now = time.time()
        for i, body in enumerate(bodies(n)):
            await outbox.enqueue(
                event_id=f"bench-{i:06d}", kind="EnergyUsage", body=body, source="bench", now=now
            )
        tokens = TokenSource(
            session,
            token_url=f"{root}/connect/token",
            client_id="ecgw-sandbox",
            client_secret=Secret("sandbox-secret"),
            timeout=30,
        )
        api = ApiClient(
            session, base_url=f"{root}/energy-coordination/v1", tokens=tokens, timeout=30
        )
        deliverer = Deliverer(
            outbox,
            api,
            concurrency=IN_FLIGHT,
            backoff_initial=1,
            backoff_max=10,
            retry_after_max=60,
        )
        await tokens.get()
        start = time.perf_counter()
        task = asyncio.create_task(deliverer.run())
        async with asyncio.timeout(600):
            await outbox.done.wait()
        elapsed = time.perf_counter() - start
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return n / elapsed


def child(kind: str, root: str, n: int) -> None:
    from gateway.logs import configure_logging

    configure_logging(level="info", json=True)  # as `ecgw run`: a JSON line per report
    if kind == "bare":
        rate = asyncio.run(bare_client(root, n))
    else:
        with tempfile.TemporaryDirectory() as tmp:
            rate = asyncio.run(gateway(root, n, Path(tmp)))
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"rate": rate, "rss_mb": rss_mb}))


def run_child(kind: str, root: str, n: int) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, __file__, "--child", kind, "--root", root, "--reports", str(n)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


# --- the servers ----------------------------------------------------------------------------

_HEAD_END = b"\r\n\r\n"
_LENGTH = re.compile(rb"(?i)\r\ncontent-length: *(\d+)")
TOKEN_REPLY = json.dumps(
    {"access_token": "bench-token", "token_type": "Bearer", "expires_in": 3600}
).encode()


def reply(status: str, body: bytes) -> bytes:
    head = (
        f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


class Sink(asyncio.Protocol):
    """HTTP/1.1 keep-alive, Content-Length bodies only: the token endpoint, and ``POST
    /reports`` answered 200 with a fresh report id; anything else 404. Keeps nothing."""

    reports = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        self.buffer = b""

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while (end := self.buffer.find(_HEAD_END)) >= 0:
            match = _LENGTH.search(self.buffer, 0, end + 2)
            total = end + 4 + (int(match.group(1)) if match else 0)
            if len(self.buffer) < total:
                return
            request_line = self.buffer[: self.buffer.find(b"\r\n")]
            self.buffer = self.buffer[total:]
            self.transport.write(self.answer(request_line))

    def answer(self, request_line: bytes) -> bytes:
        if request_line.startswith(b"POST /energy-coordination/v1/reports "):
            Sink.reports += 1
            body = b'{"id":"bench-%d","createdAt":"2026-12-01T00:00:00Z"}' % Sink.reports
            return reply("200 OK", body)
        if request_line.startswith(b"POST /connect/token "):
            return reply("200 OK", TOKEN_REPLY)
        return reply("404 Not Found", b'"not found"')


async def serve_sink() -> None:
    """Print the sink's root URL, serve until stdin closes, then print the report count."""
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Sink, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    print(f"sink listening on http://127.0.0.1:{port}", flush=True)
    await asyncio.to_thread(sys.stdin.read)
    server.close()
    print(json.dumps({"reports": Sink.reports}), flush=True)


@contextlib.contextmanager
def sink() -> Iterator[tuple[str, list[int]]]:
    """The sink in its own process; yields its root URL and a list that receives the
    number of reports it answered once it has stopped."""
    proc = subprocess.Popen(
        [sys.executable, __file__, "--serve-sink"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    counted: list[int] = []
    try:
        assert proc.stdout is not None
        yield re.search(r"(http://\S+)", proc.stdout.readline()).group(1), counted  # type: ignore[union-attr]
    finally:
        assert proc.stdin is not None
        assert proc.stdout is not None
        proc.stdin.close()
        proc.wait(timeout=60)
        counted.append(json.loads(proc.stdout.read().strip().splitlines()[-1])["reports"])


@contextlib.contextmanager
def sandbox() -> Iterator[str]:
    """``ecgw sandbox`` in its own process on a free loopback port; yields its root URL."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway", "sandbox", "--listen", "127.0.0.1:0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "ECGW_LOG_LEVEL": "warning"},
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        yield re.search(r"(http://\S+)", line).group(1)  # type: ignore[union-attr]
    finally:
        proc.terminate()
        proc.wait()


# --- the run ------------------------------------------------------------------------------


def run_pairs(args: argparse.Namespace) -> tuple[list[Any], str]:
    """``args.rounds`` pairs of (bare, gateway) runs; the pairs and what they posted to."""
    if args.sandbox:

        def run(kind: str) -> dict[str, float]:
            # A fresh sandbox for each run: it keeps every report it receives and slows
            # down as they pile up, which would favour whichever client runs first.
            with sandbox() as root:
                return run_child(kind, root, args.reports)

        with sandbox() as root:
            run_child("bare", root, min(args.reports, 500))  # warm-up, not counted
        runs = interleave(args.rounds, lambda _: run("bare"), lambda _: run("gateway"))
        return runs, "ecgw sandbox (a fresh one per run)"
    with sink() as (root, counted):
        run_child("bare", root, min(args.reports, 500))  # warm-up, not counted
        runs = interleave(
            args.rounds,
            lambda _: run_child("bare", root, args.reports),
            lambda _: run_child("gateway", root, args.reports),
        )
    expected = min(args.reports, 500) + 2 * args.rounds * args.reports
    if counted != [expected]:
        raise RuntimeError(f"the sink answered {counted} reports, expected {expected}")
    return runs, f"a sink that answers 200 at once ({expected} reports answered, as expected)"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reports", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=5, help="pairs of runs")
    parser.add_argument("--sandbox", action="store_true", help="post to ecgw sandbox")
    parser.add_argument("--quick", action="store_true", help="500 reports, 3 pairs")
    parser.add_argument("--child")
    parser.add_argument("--root")
    parser.add_argument("--serve-sink", action="store_true")
    args = parser.parse_args()
    if args.serve_sink:
        asyncio.run(serve_sink())
        return
    if args.child:
        child(args.child, args.root, args.reports)
        return
    if args.quick:
        args.reports, args.rounds = 500, 3
    runs, server = run_pairs(args)
    print(
        f"reports per run: {args.reports}, pairs: {args.rounds}, in flight: {IN_FLIGHT}, "
        f"server: {server}; {load_line(os.getloadavg())}"
    )
    for label, side in (("bare aiohttp client", "baseline"), ("gateway outbox     ", "subject")):
        results = [getattr(p, side) for p in runs]
        each = ", ".join(f"{r['rate']:.0f}" for r in results)
        rss = max(r["rss_mb"] for r in results)
        print(f"{label}: reports/s per run [{each}]  peak RSS {rss:.1f} MB")
    print(ratio_line("ratio gateway / bare", ratios(runs, lambda r: r["rate"])))
    print("target: ratio >= 0.5")


if __name__ == "__main__":
    main()
