"""Webhook latency while compaction catches up on 30 days, against none, in ABAB pairs.

    python bench/maintenance.py [--pairs 3] [--rate 100] [--seconds 10] [--days 30]
                                [--channels 20] [--before DIR]

An aged database is made once (setup, not timed): ``--channels`` channels (half
Wh counters, half W power) of 10 s readings over ``--days`` days, never
compacted, written with plain SQL into the gateway's schema. Each run copies it
and starts a server in its own process: the gateway's webhook receiver
(``serve_webhook``, real SQLite inbox, JSON logs as ``ecgw run``) and, in a
``catch-up`` run, ``ReadingsStore.compact`` in the same event loop, as the
gateway's compaction loop runs it at start (raw retention 48 h, retention 62
days: about ``days - 2`` days to compact).

This process sends signed notifications (Volue's test vectors, fresh ids) at a
steady ``--rate`` per second, as Spark would, over keep-alive connections, and
times each answer from when it was due to be sent (so a stalled server is not
hidden by requests that were never sent); the server also times each answer in its
receiver's handler (the commit and the write turn included; not the wait for the event
loop to reach the request) and how late its event loop runs a 5 ms timer (that wait),
and reports the p99 and max of both beside the client's.
``idle`` runs send for ``--seconds``;
``catch-up`` runs send until the compaction has finished, and time it.

Runs alternate in pairs (idle, catch-up), (catch-up, idle), ...; each pair's
ratio is p99 during catch-up / p99 idle (target <= 3), printed with the median
and the spread. With ``--before DIR`` (a tree holding an older ``gateway``
package, e.g. ``git archive <commit> gateway | tar -x -C DIR``) as many catch-up
runs of that code follow, each paired with an idle run of this code, so the
catch-up time and latency before and after a change are measured in one run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

from webhook import PATH, SECRET, notifications, requests  # noqa: E402

NOW = 1_767_225_600.0  # the runs' clock: the newest readings are just before it
STEP = 10.0
RAW_RETENTION = 48 * 3600.0
RETENTION = 62 * 86400.0
MAX_GAP = 900.0
CONNECTIONS = 32


# --- the aged database ------------------------------------------------------------------------


def channel_rows(channel_id: int, days: float) -> Iterator[tuple[int, float, float, int]]:
    """10 s readings of one channel: odd ids a Wh counter, even ids W of power."""
    count = int(days * 86400 / STEP)
    first = NOW - days * 86400
    value = 1000.0 * channel_id
    for k in range(count):
        if channel_id % 2:
            value += 2.0 + (k % 7) * 0.1
            yield channel_id, first + STEP * k, value, int(k == 0)
        else:
            yield channel_id, first + STEP * k, 1500.0 + (k % 13) * 10.0, 0


async def _register(path: Path, channels: int) -> None:
    from gateway.plugin import Channel, ChannelKind, Unit
    from gateway.store.database import open_database
    from gateway.store.readings import ReadingsStore

    chans = [
        Channel(f"m{i:02d}", ChannelKind.ENERGY, Unit.WH)
        if i % 2 == 0
        else Channel(f"p{i:02d}", ChannelKind.POWER, Unit.W)
        for i in range(channels)
    ]
    async with open_database(path) as db:
        await ReadingsStore(db).register_channels("site", chans)


def make_aged(path: Path, days: float, channels: int) -> int:
    """The aged database at ``path``; returns the raw rows written."""
    asyncio.run(_register(path, channels))
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode = OFF")
        conn.execute("PRAGMA synchronous = OFF")
        conn.execute("BEGIN")
        for channel_id in range(1, channels + 1):
            conn.executemany(
                "INSERT INTO readings (channel_id, at, value, dropped) VALUES (?, ?, ?, ?)",
                channel_rows(channel_id, days),
            )
        conn.execute("COMMIT")
        conn.execute("PRAGMA journal_mode = WAL")
        return int(conn.execute("SELECT COUNT(*) FROM readings").fetchone()[0])
    finally:
        conn.close()


def copy_durably(source: Path, target: Path) -> None:
    """Copy and fsync, as an aged database on disk is: a copy still in the page cache would
    make the run's first fsyncs write out all of it (setup, not timed)."""
    shutil.copy(source, target)
    fd = os.open(target, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.sync()


# --- the server (a child process) -------------------------------------------------------------


async def serve(state: Path, *, compact: bool) -> None:
    """Webhook (+ compaction): print the URL, start on "go", report, stop at stdin's end."""
    import gateway
    from gateway.config import Secret
    from gateway.intake.webhook import WebhookSettings, serve_webhook
    from gateway.logs import configure_logging
    from gateway.store.database import open_database
    from gateway.store.inbox import Inbox
    from gateway.store.readings import ReadingsStore

    configure_logging(level="info", json=True)  # as `ecgw run`
    settings = WebhookSettings(
        host="127.0.0.1",
        port=0,
        path=PATH,
        secret=Secret(SECRET),
        max_body=1024 * 1024,
        read_timeout=30.0,
    )
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    answers = _time_answers()
    lags: list[float] = []
    watch = asyncio.create_task(_watch_loop(lags))
    async with open_database(state / "ecgw.sqlite3") as db:
        store = ReadingsStore(db)
        async with serve_webhook(settings, Inbox(db), lambda event_id: None) as url:
            _say({"url": url, "gateway": str(Path(gateway.__file__).parent)})
            await reader.readline()  # "go"
            if compact:
                began = time.perf_counter()
                stats = await store.compact(
                    now=NOW, raw_retention=RAW_RETENTION, retention=RETENTION, max_gap=MAX_GAP
                )
                elapsed = time.perf_counter() - began
                report: dict[str, object] = {"catch_up": elapsed, "chunks": stats.chunks}
                budget = getattr(store, "budget", None)  # what each slice cost (this tree's)
                if budget is not None:
                    report.update(slice_mean=budget.spent / budget.slices, slice_max=budget.longest)
                _say(report)
            await reader.read()  # until the client is done
    watch.cancel()
    _say({"server": _summary(answers), "loop_lag": _summary(lags)})


async def _watch_loop(lags: list[float], every: float = 0.005) -> None:
    """How late the event loop runs a timer due every ``every`` s: the wait a request that
    arrived meanwhile had before the loop could read it (not in the handler's time)."""
    loop = asyncio.get_running_loop()
    while True:
        due = loop.time() + every
        await asyncio.sleep(every)
        lags.append(max(loop.time() - due, 0.0))


def _time_answers() -> list[float]:
    """Seconds each notification spent in the receiver's handler, from its first line to its
    answer (the commit and the wait for the write turn included). Not in it: the wait for the
    event loop to reach the request, and the way to and from the client. A stall the client
    sees and the handler does not lies there. Empty for a tree without the handler."""
    from gateway.intake import webhook

    answers: list[float] = []
    receiver = getattr(webhook, "_Receiver", None)
    if receiver is None or not hasattr(receiver, "handle"):
        return answers
    handle = receiver.handle

    async def timed(self: object, request: object) -> object:
        began = time.perf_counter()
        try:
            return await handle(self, request)
        finally:
            answers.append(time.perf_counter() - began)

    receiver.handle = timed
    return answers


def _summary(seconds: list[float]) -> dict[str, float]:
    if not seconds:
        return {}
    ordered = sorted(seconds)
    return {
        "p50": statistics.median(ordered),
        "p99": ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))],
        "max": ordered[-1],
    }


def _say(message: dict[str, object]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


# --- the client -------------------------------------------------------------------------------


async def steady(
    host: str, port: int, reqs: list[bytes], rate: float, until: asyncio.Future[object] | float
) -> list[float]:
    """Send ``reqs`` one every 1/``rate`` s until ``until`` (a future, or seconds); latencies."""
    pool: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = asyncio.Queue()
    for _ in range(CONNECTIONS):
        pool.put_nowait(await asyncio.open_connection(host, port))
    loop = asyncio.get_running_loop()
    latencies: list[float] = []
    failures: list[str] = []

    async def one(req: bytes, due: float) -> None:
        reader, writer = await pool.get()
        writer.write(req)
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
        await reader.readexactly(length)
        latencies.append(loop.time() - due)
        if head[9:12] != b"200":
            failures.append(head[:12].decode())
        pool.put_nowait((reader, writer))

    start = loop.time()
    tasks = []
    for i, req in enumerate(reqs):
        due = start + i / rate
        if isinstance(until, float) and due - start >= until:
            break
        if isinstance(until, asyncio.Future) and until.done():
            break
        await asyncio.sleep(max(0.0, due - loop.time()))
        tasks.append(asyncio.create_task(one(req, due)))
    else:
        raise RuntimeError("ran out of notifications; raise --max-requests")
    await asyncio.gather(*tasks)
    while not pool.empty():
        pool.get_nowait()[1].close()
    if failures:
        raise RuntimeError(f"{len(failures)} answers were not 200: {failures[:3]}")
    return latencies


async def one_run(
    template: Path, tree: Path, *, compact: bool, rate: float, seconds: float, tag: str
) -> dict[str, object]:
    with tempfile.TemporaryDirectory(dir=template.parent) as tmp:
        state = Path(tmp)
        copy_durably(template, state / "ecgw.sqlite3")
        env = {**os.environ, "PYTHONPATH": str(tree)}
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            __file__,
            "--serve",
            "catch-up" if compact else "idle",
            "--state",
            str(state),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=(state / "server.log").open("wb"),
            env=env,
        )
        assert proc.stdin is not None
        assert proc.stdout is not None
        hello = json.loads(await proc.stdout.readline())
        if Path(hello["gateway"]) != tree / "gateway":
            raise RuntimeError(f"the server runs {hello['gateway']}, not {tree / 'gateway'}")
        host, port = hello["url"].split("//")[1].split("/")[0].split(":")
        reqs = requests(notifications(int(rate * 3600), tag), f"{host}:{port}")
        done: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        server: dict[str, float] = {}

        async def report() -> None:  # the catch-up's report, then the server's own timing
            assert proc.stdout is not None
            async for line in proc.stdout:
                message = json.loads(line)
                if "server" in message:
                    server.update(message["server"])
                    server.update({f"lag_{k}": v for k, v in message["loop_lag"].items()})
                elif not done.done():
                    done.set_result(message)

        reporter = asyncio.create_task(report())
        proc.stdin.write(b"go\n")
        await proc.stdin.drain()
        latencies = await steady(host, int(port), reqs, rate, done if compact else seconds)
        proc.stdin.close()
        await proc.wait()
        await reporter
        if proc.returncode != 0:
            raise RuntimeError(f"server failed; see {state / 'server.log'}")
        result: dict[str, object] = done.result() if done.done() else {}  # type: ignore[assignment]
        if compact and "catch_up" not in result:
            raise RuntimeError("the catch-up did not report")
    ordered = sorted(latencies)
    result.update(
        n=len(ordered),
        p50=statistics.median(ordered),
        p99=ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))],
        max=ordered[-1],
    )
    result.update({f"server_{k}": v for k, v in server.items()})
    return result


def _ms(x: object) -> str:
    return f"{float(x) * 1e3:6.1f}"  # type: ignore[arg-type]


def _line(kind: str, r: dict[str, object]) -> str:
    text = f"{kind:16s} n={r['n']!s:>5} p50 {_ms(r['p50'])} ms  p99 {_ms(r['p99'])} ms"
    text += f"  max {_ms(r['max'])} ms"
    if "server_p99" in r:
        text += f"  (in the server: p99 {_ms(r['server_p99'])} ms, max {_ms(r['server_max'])} ms"
    if "server_lag_p99" in r:
        text += f"; loop lag p99 {_ms(r['server_lag_p99'])} ms, max {_ms(r['server_lag_max'])} ms"
    if "server_p99" in r:
        text += ")"
    if "catch_up" in r:
        text += f"  catch-up {float(r['catch_up']):5.1f} s, {r['chunks']} slices"  # type: ignore[arg-type]
    if "slice_mean" in r:
        text += f" (each {_ms(r['slice_mean'])} ms on average, {_ms(r['slice_max'])} at most)"
    return text


async def bench(args: argparse.Namespace, template: Path) -> None:
    ratios: list[float] = []
    catch_ups: list[float] = []
    print("pair  run", flush=True)
    for i in range(args.pairs):
        order = (False, True) if i % 2 == 0 else (True, False)
        runs = {}
        for compact in order:
            runs[compact] = await one_run(
                template,
                ROOT,
                compact=compact,
                rate=args.rate,
                seconds=args.seconds,
                tag=f"p{i}{compact}",
            )
            print(f"{i:4d}  {_line('catch-up' if compact else 'idle', runs[compact])}", flush=True)
        ratios.append(float(runs[True]["p99"]) / float(runs[False]["p99"]))  # type: ignore[arg-type]
        catch_ups.append(float(runs[True]["catch_up"]))  # type: ignore[arg-type]
        print(f"      p99 ratio catch-up/idle: {ratios[-1]:.2f}", flush=True)
    before_ratios: list[float] = []
    before_catch_ups: list[float] = []
    if args.before:
        for i in range(args.pairs):
            order = (False, True) if i % 2 == 0 else (True, False)
            runs = {}
            for old in order:
                runs[old] = await one_run(
                    template,
                    args.before if old else ROOT,
                    compact=old,
                    rate=args.rate,
                    seconds=args.seconds,
                    tag=f"b{i}{old}",
                )
                label = "before catch-up" if old else "idle"
                print(f"{i:4d}  {_line(label, runs[old])}", flush=True)
            before_ratios.append(float(runs[True]["p99"]) / float(runs[False]["p99"]))  # type: ignore[arg-type]
            before_catch_ups.append(float(runs[True]["catch_up"]))  # type: ignore[arg-type]
            print(f"      p99 ratio before-catch-up/idle: {before_ratios[-1]:.2f}", flush=True)
    print(
        f"\nrate {args.rate:.0f}/s, {args.days:g} days x {args.channels} channels of 10 s "
        f"readings, load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}"
    )
    print(
        f"webhook p99 during catch-up / idle, per pair: {', '.join(f'{r:.2f}' for r in ratios)}; "
        f"median {statistics.median(ratios):.2f}, spread {min(ratios):.2f}-{max(ratios):.2f} "
        "(target <= 3)"
    )
    print(f"catch-up took: {', '.join(f'{c:.1f}' for c in catch_ups)} s")
    if before_ratios:
        print(
            f"before ({args.before}): p99 ratio per pair "
            f"{', '.join(f'{r:.2f}' for r in before_ratios)}; median "
            f"{statistics.median(before_ratios):.2f}; catch-up took "
            f"{', '.join(f'{c:.1f}' for c in before_catch_ups)} s"
        )
        slower = statistics.median(catch_ups) / statistics.median(before_catch_ups)
        print(f"catch-up now takes {slower:.2f}x as long as before (medians)")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--rate", type=float, default=100.0, help="notifications per second")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of an idle run")
    parser.add_argument("--days", type=float, default=30.0)
    parser.add_argument("--channels", type=int, default=20)
    parser.add_argument("--before", type=Path, help="a tree with the gateway package to compare")
    parser.add_argument("--dir", type=Path, help="where the databases go (default: a temp dir)")
    parser.add_argument("--serve", choices=("idle", "catch-up"))
    parser.add_argument("--state", type=Path)
    args = parser.parse_args()
    if args.serve:
        asyncio.run(serve(args.state, compact=args.serve == "catch-up"))
        return
    if args.before is not None:
        args.before = args.before.resolve()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        template = Path(tmp) / "aged.sqlite3"
        began = time.perf_counter()
        rows = make_aged(template, args.days, args.channels)
        print(
            f"aged database: {rows} raw readings, {template.stat().st_size / 1e6:.0f} MB, "
            f"made in {time.perf_counter() - began:.1f} s (setup, not timed)",
            flush=True,
        )
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(bench(args, template))


if __name__ == "__main__":
    main()
