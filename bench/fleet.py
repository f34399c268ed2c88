"""The fleet at scale: one hub, one Mosquitto, N simulated sites (issue 11).

Started by this script, each its own process on loopback: a Mosquitto (persistence
on, ``max_connections -1``, ``max_queued_messages 0``), the near-free **sink** of
``bench/delivery.py`` as Spark, and ``ecgw hub run`` (its sites written with ``ecgw hub
sites import``, delivery concurrency 16, logging at info into a file as a service
would). The sink, not the sandbox: the sandbox keeps every report and slows as they
pile up, so with it the figure is mostly the sandbox's; the sink costs nearly nothing,
so the figure is the hub's (and the broker's, and this process's sites').

In this process: N light aiomqtt clients, one per site (its own client id, persistent
session), each subscribed to its events and acks, ``online`` on its retained status
topic as the real site link says it, and answering each event with one EnergyUsage
report for its resource (as FakeSite in tests/test_fleet_hub.py).

Each pair has two runs, the order alternating (bench/pairs.py):

* **hub**: one signed webhook notification, a PriceCurve targeting all N sites, to
  the hub. Fan-out: from the webhook's 200 to the last site's receipt of the event.
  Reports: from the first site's report publish to the last ``delivered`` answer a site
  receives (every one of the N must come back delivered), as reports/s.
* **bare**: the same N report bodies posted straight to the sink by a bare aiohttp
  client with 16 requests in flight (the hub's delivery concurrency), as reports/s.

Prints each run, each pair's ratio hub / bare with median and spread, the hub's RSS
(peak: VmHWM; after: VmRSS once all is answered), and the load average.

    python bench/fleet.py [--sites 1000] [--pairs 3] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import aiomqtt
from delivery import sandbox, sink, token
from pairs import Pair, load_line, order, ratio_line, ratios

ROOT = Path(__file__).resolve().parent.parent
SECRET = "bench-fleet-webhook-secret"
PREFIX = "ecgw"
IN_FLIGHT = 16
CONNECTING = 50
"""Sites connecting at once while the fleet comes up."""
MOSQUITTO = shutil.which("mosquitto", path="/usr/sbin:/usr/bin:/usr/local/sbin") or "mosquitto"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def site_ids(n: int) -> list[str]:
    return [f"site-{i:05d}" for i in range(n)]


def resource_of(site: str) -> str:
    return "r-" + site.removeprefix("site-")


def location_of(site: str) -> str:
    return "loc-" + site.removeprefix("site-")


def report_body(event_id: str, site: str) -> bytes:
    body = {
        "eventId": event_id,
        "payloads": [
            {
                "payloadType": "EnergyUsage",
                "resourceId": resource_of(site),
                "locationId": location_of(site),
                "resolution": "01:00:00",
                "points": [
                    {"timestamp": f"2026-11-26T{h:02d}:00:00Z", "kiloWattHours": 1.234}
                    for h in range(24)
                ],
            }
        ],
    }
    return json.dumps(body, separators=(",", ":")).encode()


def notification(event_id: str, sites: list[str]) -> bytes:
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    payload = {
        "payloadType": "PriceCurve",
        "priceArea": "NO5",
        "targets": [{"resourceId": resource_of(s), "locationId": location_of(s)} for s in sites],
        "priceCurveDelta": {
            "points": [
                {"timestamp": f"2026-11-26T{h:02d}:00:00Z", "price": 0.5 + h / 100}
                for h in range(24)
            ],
            "energyUnit": "kWh",
            "currency": "NOK",
            "resolution": "01:00:00",
        },
    }
    note = {
        "notificationId": f"note-{event_id}",
        "eventId": event_id,
        "eventCreatedAtUtc": now,
        "notificationSentUtc": now,
        "notificationType": "PriceCurveCreated",
        "payload": payload,
    }
    return json.dumps(note, separators=(",", ":")).encode()


# --- the broker and the hub ------------------------------------------------------------------


@contextlib.contextmanager
def mosquitto(workdir: Path) -> Iterator[tuple[int, int]]:
    """A Mosquitto on a free loopback port; yields the port and its pid."""
    port = free_port()
    store = workdir / "mosquitto"
    store.mkdir()
    config = store / "mosquitto.conf"
    config.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\nmax_connections -1\n"
        "max_queued_messages 0\nmax_inflight_messages 100\n"
        f"persistence true\npersistence_location {store}/\n"
        "log_dest stderr\nlog_type error\nlog_type warning\nlog_type notice\nuser root\n"
    )
    proc = subprocess.Popen(
        [MOSQUITTO, "-c", str(config)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=(store / "log").open("w"),
    )
    try:
        wait_port(port, proc)
        yield port, proc.pid
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def wait_port(port: int, proc: subprocess.Popen[Any], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"process {proc.args!r} ended with {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise SystemExit(f"nothing listens on port {port} after {timeout:g} s")


def hub_config(workdir: Path, sink_root: str, broker_port: int, webhook_port: int) -> Path:
    path = workdir / "hub.toml"
    password = workdir / "hub-broker-password"  # the broker lets anyone in: any will do
    password.write_text("bench\n")
    path.write_text(
        f'[gateway]\nstate_dir = "{workdir / "hub"}"\n'
        f'[api]\nbase_url = "{sink_root}/energy-coordination/v1"\n'
        f'token_url = "{sink_root}/connect/token"\n'
        'client_id = "ecgw-sandbox"\nclient_secret = "sandbox-secret"\n'
        f'[webhook]\nlisten = "127.0.0.1:{webhook_port}"\npath = "/notify"\n'
        f'secret = "{SECRET}"\n'
        f'[delivery]\nconcurrency = {IN_FLIGHT}\ntimeout = "30s"\n'
        f'[hub]\nurl = "mqtt://127.0.0.1:{broker_port}"\nclient_id = "bench-hub"\n'
        f'username = "ecgw-hub"\npassword_file = "{password}"\n'
        f'prefix = "{PREFIX}"\n'
    )
    return path


def ecgw(*args: str) -> list[str]:
    return [sys.executable, "-m", "gateway", *args]


def import_sites(config: Path, workdir: Path, sites: list[str]) -> None:
    rows = [
        {"site_id": s, "resources": [resource_of(s)], "locations": [location_of(s)]} for s in sites
    ]
    path = workdir / "sites.json"
    path.write_text(json.dumps({"sites": rows}))
    done = subprocess.run(
        ecgw("--config", str(config), "hub", "sites", "import", str(path)),
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    if done.returncode != 0:
        raise SystemExit(f"ecgw hub sites import: {done.stderr.strip()}")


@contextlib.contextmanager
def hub(config: Path, workdir: Path, webhook_port: int, profile: str | None) -> Iterator[int]:
    """``ecgw hub run`` (under cProfile into ``profile``, if given); yields its pid once
    its webhook listens."""
    log = (workdir / "hub.log").open("w")
    command = ecgw("--config", str(config), "hub", "run")
    if profile is not None:
        command[1:1] = ["-m", "cProfile", "-o", profile]
    proc = subprocess.Popen(
        command,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=ROOT,
    )
    try:
        wait_port(webhook_port, proc)
        yield proc.pid
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        log.close()


def memory(pid: int) -> tuple[float, float]:
    """(VmHWM, VmRSS) of ``pid`` in MB: the peak since it started, and now."""
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    return tuple(int(fields[k].split()[0]) / 1024 for k in ("VmHWM", "VmRSS"))  # type: ignore[return-value]


def seen_sites(db: Path) -> int:
    try:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
            return int(conn.execute("SELECT COUNT(*) FROM fleet_seen").fetchone()[0])
    except sqlite3.Error:
        return 0


# --- the sites -------------------------------------------------------------------------------


@dataclass
class Round:
    """What the sites saw of one event."""

    event_id: str
    expected: int
    received: dict[str, float] = field(default_factory=dict)
    published: dict[str, float] = field(default_factory=dict)
    answered: dict[str, float] = field(default_factory=dict)
    refused: list[str] = field(default_factory=list)
    done: asyncio.Event = field(default_factory=asyncio.Event)
    reached: asyncio.Event = field(default_factory=asyncio.Event)


class Fleet:
    """N sites' MQTT clients; each answers an event of the current round with a report."""

    def __init__(self, port: int, sites: list[str]) -> None:
        self.port = port
        self.sites = sites
        self.round: Round | None = None

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Fleet]:
        async with contextlib.AsyncExitStack() as stack:
            gate = asyncio.Semaphore(CONNECTING)
            clients = await asyncio.gather(*(self._connect(stack, s, gate) for s in self.sites))
            async with asyncio.TaskGroup() as tasks:
                listening = [
                    tasks.create_task(self._listen(site, client))
                    for site, client in zip(self.sites, clients, strict=True)
                ]
                try:
                    yield self
                finally:
                    for task in listening:
                        task.cancel()

    async def _connect(
        self, stack: contextlib.AsyncExitStack, site: str, gate: asyncio.Semaphore
    ) -> aiomqtt.Client:
        client = aiomqtt.Client(
            "127.0.0.1",
            self.port,
            identifier=site,
            clean_session=False,
            protocol=aiomqtt.ProtocolVersion.V311,
            keepalive=60,
            timeout=60,
        )
        async with gate:
            await stack.enter_async_context(client)
            topic = f"{PREFIX}/sites/{site}"
            await client.subscribe([(f"{topic}/events", 1), (f"{topic}/acks", 1)])
            await client.publish(f"{topic}/status", b"online", qos=1, retain=True)
        return client

    async def _listen(self, site: str, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            now = time.perf_counter()
            round_ = self.round
            assert isinstance(message.payload, bytes)
            data = json.loads(message.payload)
            if round_ is None:
                continue
            if str(message.topic).endswith("/events"):
                if data["id"] != round_.event_id or site in round_.received:
                    continue
                round_.received[site] = now
                if len(round_.received) == round_.expected:
                    round_.reached.set()
                report = {"eventId": data["id"], "kind": "EnergyUsage"}
                raw = json.dumps(report)[:-1].encode() + b',"body":'
                raw += report_body(data["id"], site) + b"}"
                round_.published.setdefault(site, time.perf_counter())
                await client.publish(f"{PREFIX}/sites/{site}/reports", raw, qos=1)
            elif data.get("eventId") == round_.event_id and site not in round_.answered:
                if data.get("outcome") != "delivered":
                    round_.refused.append(f"{site}: {data}")
                round_.answered[site] = now
                if len(round_.answered) == round_.expected:
                    round_.done.set()


# --- the two runs ----------------------------------------------------------------------------


def hub_stages(db: Path, event_id: str, start: float) -> dict[str, float]:
    """Seconds from ``start`` (the first report's publish, on the hub's clock) to the
    last report queued, delivered, answered at the hub (its outbox and answers)."""
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
        row = conn.execute(
            "SELECT MAX(o.created_at), MAX(o.delivered_at), MAX(a.answered_at) FROM outbox o "
            "JOIN fleet_answers a ON a.outbox_id = o.id WHERE o.event_id = ?",
            (event_id,),
        ).fetchone()
    return {
        k: v - start for k, v in zip(("queued_s", "delivered_s", "answered_s"), row, strict=True)
    }


async def hub_run(
    fleet: Fleet, webhook: str, pid: int, db: Path, index: int, limit: float
) -> dict[str, float]:
    event_id = f"bench-fleet-event-{index:03d}-{os.getpid()}"
    round_ = fleet.round = Round(event_id, len(fleet.sites))
    body = notification(event_id, fleet.sites)
    from gateway.intake.signature import sign

    headers = {"Content-Type": "application/json", "X-Payload-Signature": sign(body, SECRET)}
    async with (
        aiohttp.ClientSession() as session,
        session.post(webhook, data=body, headers=headers) as resp,
    ):
        await resp.read()
        accepted = time.perf_counter()
        if resp.status != 200:
            raise SystemExit(f"the hub's webhook answered {resp.status}")
    try:
        async with asyncio.timeout(limit):
            await round_.reached.wait()
            await round_.done.wait()
    except TimeoutError:
        raise SystemExit(
            f"after {limit:g} s: {len(round_.received)} sites reached, "
            f"{len(round_.answered)} answered of {round_.expected}"
        ) from None
    if round_.refused:
        raise SystemExit(f"{len(round_.refused)} reports not delivered, e.g. {round_.refused[0]}")
    first_publish = min(round_.published.values())
    last_answer = max(round_.answered.values())
    peak, _ = memory(pid)
    wall = time.time() - time.perf_counter()  # perf_counter -> the hub's clock
    stages = hub_stages(db, event_id, first_publish + wall)
    return {
        **stages,
        "published_s": max(round_.published.values()) - first_publish,
        "fanout_s": max(round_.received.values()) - accepted,
        "rate": len(fleet.sites) / (last_answer - first_publish),
        "peak_mb": peak,
    }


async def bare_run(root: str, sites: list[str], index: int) -> dict[str, float]:
    """The same N report bodies posted straight to the sink, 16 in flight."""
    event_id = f"bench-fleet-bare-{index:03d}"
    queue = [report_body(event_id, s) for s in reversed(sites)]
    async with aiohttp.ClientSession() as session:
        bearer = await token(session, root)
        headers = {"Authorization": f"Bearer {bearer}", "Content-Type": "application/json"}

        async def worker() -> None:
            while queue:
                body = queue.pop()
                url = f"{root}/energy-coordination/v1/reports"
                async with session.post(url, data=body, headers=headers) as resp:
                    await resp.read()
                    assert resp.status == 200, resp.status

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(IN_FLIGHT)))
        return {"rate": len(sites) / (time.perf_counter() - start)}


@contextlib.contextmanager
def spark(use_sandbox: bool) -> Iterator[tuple[str, list[int] | None]]:
    """The API the hub and the bare client post to: the sink (its answered count comes
    back in the list once it stops), or with ``--sandbox`` the project's sandbox API."""
    if use_sandbox:
        with sandbox() as root:
            yield root, None
    else:
        with sink() as (root, answered):
            yield root, answered


async def measure(args: argparse.Namespace, workdir: Path) -> None:
    sites = site_ids(args.sites)
    with spark(args.sandbox) as (root, answered), mosquitto(workdir) as (port, broker_pid):
        webhook_port = free_port()
        config = hub_config(workdir, root, port, webhook_port)
        import_sites(config, workdir, sites)
        with hub(config, workdir, webhook_port, args.profile) as pid:
            alone = memory(pid)[1]
            started = time.perf_counter()
            async with Fleet(port, sites).running() as fleet:
                db = workdir / "hub" / "ecgw.sqlite3"
                while seen_sites(db) < len(sites):
                    await asyncio.sleep(0.1)
                up = time.perf_counter() - started
                idle = memory(pid)[1]
                broker_idle = memory(broker_pid)[1]
                print(f"{len(sites)} sites connected and seen by the hub in {up:.1f} s")
                runs: list[Pair[dict[str, float]]] = []
                webhook = f"http://127.0.0.1:{webhook_port}/notify"
                for index in range(args.pairs):
                    got: dict[str, dict[str, float]] = {}
                    for side in order(index):
                        if side == "baseline":
                            got[side] = await bare_run(root, sites, index)
                        else:
                            got[side] = await hub_run(fleet, webhook, pid, db, index, args.timeout)
                    runs.append(Pair(got["baseline"], got["subject"], index % 2 == 1))
                await asyncio.sleep(2.0)
                peak, after = memory(pid)
                broker = memory(broker_pid)
    rss = Rss(alone, idle, peak, after, broker_idle, *broker)
    report(args, runs, rss, sink_reports=answered[0] if answered else None)


@dataclass(frozen=True)
class Rss:
    """MB: the hub alone, with the sites connected, its peak, after; the broker's likewise."""

    alone: float
    idle: float
    peak: float
    after: float
    broker_idle: float
    broker_peak: float
    broker_after: float


def report(
    args: argparse.Namespace,
    runs: list[Pair[dict[str, float]]],
    rss: Rss,
    *,
    sink_reports: int | None,
) -> None:
    n = args.sites
    server = "the sandbox API" if args.sandbox else "sink (bench/delivery.py)"
    print(
        f"sites: {n}, pairs: {args.pairs}, in flight: {IN_FLIGHT}, server: {server}; "
        f"{load_line(os.getloadavg())}"
    )
    fanout = ", ".join(f"{p.subject['fanout_s']:.2f}" for p in runs)
    print(f"event to all {n} sites, webhook 200 -> last receipt, s per run: [{fanout}]")
    for label, side in (("bare aiohttp client", "baseline"), ("through the hub    ", "subject")):
        each = ", ".join(f"{getattr(p, side)['rate']:.0f}" for p in runs)
        print(f"{label}: reports/s per run [{each}]")
    print(ratio_line("ratio hub / bare", ratios(runs, lambda r: r["rate"])))
    stages = "; ".join(
        "{published_s:.2f} / {queued_s:.2f} / {delivered_s:.2f} / {answered_s:.2f}".format(
            **p.subject
        )
        for p in runs
    )
    print(
        "first report published -> last published by a site / queued / delivered / answered "
        f"at the hub, s: {stages}"
    )
    per_site = (rss.after - rss.alone) * 1024 / n
    print(
        f"hub RSS (MB): {rss.alone:.1f} before the sites, {rss.idle:.1f} with them connected, "
        f"peak {rss.peak:.1f}, after {rss.after:.1f} ({per_site:.1f} KB per site)"
    )
    print(
        f"Mosquitto RSS (MB): {rss.broker_idle:.1f} with the sites connected, "
        f"peak {rss.broker_peak:.1f}, after {rss.broker_after:.1f} "
        f"({rss.broker_after * 1024 / n:.1f} KB per site)"
    )
    if sink_reports is not None:
        print(f"sink answered {sink_reports} reports (expected {2 * n * args.pairs})")
    else:
        print("posted to the sandbox API (--sandbox): it keeps every report")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sites", type=int, default=1000)
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per hub run")
    parser.add_argument("--profile", help="write the hub's cProfile stats to this file")
    parser.add_argument("--quick", action="store_true", help="100 sites, 3 pairs")
    parser.add_argument(
        "--sandbox", action="store_true", help="post to the sandbox API instead of the sink"
    )
    args = parser.parse_args()
    if args.quick:
        args.sites, args.pairs = 100, 3
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, max(soft, 4 * args.sites + 1024)) if hard != resource.RLIM_INFINITY else 65536
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, want), hard))  # Mosquitto inherits it
    with tempfile.TemporaryDirectory(prefix="ecgw-fleet-") as tmp:
        asyncio.run(measure(args, Path(tmp)))


if __name__ == "__main__":
    main()
