"""Reports delivered per second: the gateway's outbox vs a bare aiohttp client.

Both post the same bodies to the same sandbox (its own process, loopback) with
16 requests in flight, in the same run, alternating. The gateway's figure
includes everything it really does per report: claim from SQLite, POST with
token and Idempotency-Key, record the outcome (WAL, synchronous=FULL), and log
it as ``ecgw run`` does (JSON lines at level info).

    python bench/delivery.py [--reports 3000] [--rounds 3]

Prints reports/s for each, the ratio (target >= 0.5), and each child's peak RSS.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp

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


async def gateway(root: str, n: int, state: Path) -> float:
    """The real outbox + deliverer, concurrency 16; returns reports/s."""
    from gateway.config import Secret
    from gateway.delivery.api import ApiClient, TokenSource
    from gateway.delivery.deliverer import Deliverer
    from gateway.store.database import open_database
    from gateway.store.outbox import Outbox

    async with open_database(state / "ecgw.sqlite3") as db, aiohttp.ClientSession() as session:
        outbox = Outbox(db)
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
        while (await outbox.counts())["delivered"] < n:
            await asyncio.sleep(0.02)
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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reports", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--child")
    parser.add_argument("--root")
    args = parser.parse_args()
    if args.child:
        child(args.child, args.root, args.reports)
        return
    results: dict[str, list[dict[str, float]]] = {"bare": [], "gateway": []}
    with sandbox() as root:
        run_child("bare", root, min(args.reports, 500))  # warm-up, not counted
    for _ in range(args.rounds):
        for kind in ("bare", "gateway"):
            # A fresh sandbox for each run: it keeps every report it receives and slows
            # down as they pile up, which would favour whichever client runs first.
            with sandbox() as root:
                results[kind].append(run_child(kind, root, args.reports))
    bare = statistics.median(r["rate"] for r in results["bare"])
    gw = statistics.median(r["rate"] for r in results["gateway"])
    print(f"reports per round: {args.reports}, rounds: {args.rounds}, in flight: {IN_FLIGHT}")
    for label, kind, rate in (
        ("bare aiohttp client", "bare", bare),
        ("gateway outbox     ", "gateway", gw),
    ):
        rounds = ", ".join(f"{r['rate']:.0f}" for r in results[kind])
        rss = max(r["rss_mb"] for r in results[kind])
        print(f"{label} : {rate:8.0f} reports/s  (rounds: {rounds})  peak RSS {rss:.1f} MB")
    print(f"ratio gateway/bare  : {gw / bare:.2f}  (target >= 0.5)")


if __name__ == "__main__":
    main()
