"""What a shared RedisRateLimit costs per call, against RateLimit and no limiter.

Two measurements, each at 64 calls in flight, in interleaved rounds (median of rounds):

``acquire``
    only ``limiter.acquire()``, with a budget so large that nobody ever waits: the pure
    price of asking (one Redis round trip for RedisRateLimit).
``get_instance, instant answers``
    whole ``WorkflowsSession.get_instance`` calls against the loopback answer server
    (benchmarks/server.py, its own process). The client's CPU is the bottleneck here,
    so this shows what the limiter costs in throughput; with 64 calls queued for one
    CPU, every microsecond of work per call adds 64 to each call's latency.
``get_instance, answers after 20 ms``
    the same against a server (its own process) that answers after 20 ms, closer to the
    real API (50-300 ms away): the client has CPU to spare, so the added p50 is the
    latency the limiter itself adds to a call.

For the calls, ``p50 - none`` is the p50 with the limiter minus the p50 without one
(noisy: a difference of two numbers of milliseconds), and ``held p50`` is the median
time a call spent inside ``acquire()`` before its request could leave: the latency the
limiter adds, measured directly.

Redis is a throwaway ``redis-server`` on loopback (password set, persistence off),
unless ``--redis-url`` points at another one. Run::

    python benchmarks/redis_limiter.py            # about a minute
    python benchmarks/redis_limiter.py --rounds 3 --calls 2000
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import os
import platform
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator

import msgspec
import redis
from aiohttp import web

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
sys.path.insert(0, HERE)

from _spawn import server_process  # noqa: E402

from cfwf_async import RateLimit, RateLimitInfo, WorkflowsSession  # noqa: E402
from cfwf_async.redis import RedisRateLimit  # noqa: E402
from cfwf_async.testing import make_instance  # noqa: E402

CONCURRENCY = 64
# Large enough that no call ever waits: we measure the asking, not the limiting.
BIG = 10**7


@contextlib.contextmanager
def answer_server() -> Iterator[str]:
    """benchmarks/server.py in its own process; yields its base URL."""
    cmd = [sys.executable, os.path.join(HERE, "server.py"), "--until-stdin-closes"]
    with server_process(cmd, "answer server") as base_url:
        yield base_url


@contextlib.contextmanager
def delayed_server(delay: float) -> Iterator[str]:
    """This script in ``--serve`` mode, its own process; yields its base URL."""
    cmd = [sys.executable, os.path.abspath(__file__), "--serve", str(delay)]
    with server_process(cmd, "delayed server") as base_url:
        yield base_url


async def serve_delayed(delay: float) -> None:
    """Answer every GET with a 3-step instance after ``delay`` seconds, until stdin ends."""
    body = msgspec.json.encode(
        {"errors": [], "messages": [], "success": True, "result": make_instance(steps=3)}
    )

    async def answer(request: web.Request) -> web.Response:
        await asyncio.sleep(delay)
        return web.Response(body=body, content_type="application/json")

    app = web.Application()
    app.router.add_get("/{tail:.*}", answer)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, backlog=1024)
    await site.start()
    print(f"PORT {runner.addresses[0][1]}", flush=True)
    await asyncio.to_thread(sys.stdin.buffer.read)
    await runner.cleanup()


@contextlib.contextmanager
def throwaway_redis() -> Iterator[str]:
    """A loopback redis-server with a password and no persistence; yields its URL."""
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    if not os.path.exists(binary):
        raise SystemExit("redis-server not found: apt-get install redis-server, or --redis-url")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    password = secrets.token_hex(12)
    with tempfile.TemporaryDirectory() as workdir:
        proc = subprocess.Popen(
            [binary, "--bind", "127.0.0.1", "--port", str(port), "--requirepass", password,
             "--save", "", "--appendonly", "no", "--dir", workdir, "--logfile", ""],
            stdout=subprocess.DEVNULL,
        )
        try:
            client = redis.Redis(port=port, password=password, socket_timeout=0.5)
            deadline = time.monotonic() + 10
            while True:
                try:
                    client.ping()
                    break
                except redis.exceptions.ConnectionError:
                    if time.monotonic() > deadline or proc.poll() is not None:
                        raise
                    time.sleep(0.02)
            client.close()
            yield f"redis://:{password}@127.0.0.1:{port}/0"
        finally:
            proc.terminate()
            proc.wait()


def percentiles(samples_ns: list[int]) -> tuple[float, float]:
    """(p50, p99) in microseconds."""
    samples_ns.sort()
    n = len(samples_ns)
    return samples_ns[n // 2] / 1000, samples_ns[min(n - 1, int(n * 0.99))] / 1000


Row = tuple[float, float, float]


async def timed(call: Callable[[], Awaitable[object]], calls: int, concurrency: int) -> Row:
    """``calls`` calls, ``concurrency`` in flight: (p50 µs, p99 µs, calls per second)."""
    left = calls
    samples: list[int] = []
    clock = time.perf_counter_ns

    async def worker() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            t0 = clock()
            await call()
            samples.append(clock() - t0)

    gc.collect()
    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    rate = calls / (time.perf_counter() - started)
    p50, p99 = percentiles(samples)
    return p50, p99, rate


class Held:
    """Wraps a limiter and notes how long each ``acquire`` held its call back."""

    def __init__(self, inner: RedisRateLimit | RateLimit | None) -> None:
        self.inner = inner
        self.samples: list[int] = []

    async def acquire(self) -> None:
        t0 = time.perf_counter_ns()
        if self.inner is not None:
            await self.inner.acquire()
        self.samples.append(time.perf_counter_ns() - t0)

    async def pause(self, seconds: float) -> None:
        if self.inner is not None:
            await self.inner.pause(seconds)

    async def observe(self, info: RateLimitInfo) -> None:
        if self.inner is not None:
            await self.inner.observe(info)

    def take(self) -> float:
        """p50 of the samples since the last call, in µs."""
        p50, _ = percentiles(self.samples)
        self.samples = []
        return p50


async def nothing() -> None:
    """The 'no limiter' acquire: a bare coroutine call."""


async def measure(
    redis_url: str, instant_url: str, delayed_url: str, calls: int, rounds: int
) -> None:
    key = "bench-" + secrets.token_hex(4)
    async with RedisRateLimit.from_url(redis_url, requests=BIG, period=300.0, key=key) as shared:
        limiters: dict[str, RedisRateLimit | RateLimit | None] = {
            "no limiter": None, "RateLimit": RateLimit(BIG, 300.0), "RedisRateLimit": shared,
        }
        # At 20 ms per answer, 64 in flight make about 3,000 calls a second.
        targets = {"instant answers": (instant_url, calls), "answers after 20 ms": (
            delayed_url, calls)}
        acquire1: dict[str, list[Row]] = {k: [] for k in limiters}
        acquire: dict[str, list[Row]] = {k: [] for k in limiters}
        e2e: dict[str, dict[str, list[Row]]] = {
            t: {k: [] for k in limiters} for t in targets
        }
        held_p50: dict[str, dict[str, list[float]]] = {
            t: {k: [] for k in limiters} for t in targets
        }
        held = {(t, name): Held(lim) for t in targets for name, lim in limiters.items()}
        sessions = {
            (t, name): WorkflowsSession(api_token="bench", account_id="bench", base_url=url,
                                        rate_limit=held[t, name], retry_budget=None,
                                        coalesce=False)
            for t, (url, _) in targets.items()
            for name in limiters
        }

        def get(session: WorkflowsSession) -> Callable[[], Awaitable[object]]:
            return lambda: session.get_instance("wf", "steps-3")

        try:
            for (t, _), session in sessions.items():  # warm up connections on every side
                await timed(get(session), targets[t][1] // 4, CONCURRENCY)
            for h in held.values():
                h.take()
            for _ in range(rounds):
                for name, lim in limiters.items():
                    call = lim.acquire if lim is not None else nothing
                    acquire1[name].append(await timed(call, min(calls, 2000), 1))
                    acquire[name].append(await timed(call, calls, CONCURRENCY))
                for (t, name), session in sessions.items():
                    e2e[t][name].append(await timed(get(session), targets[t][1], CONCURRENCY))
                    held_p50[t][name].append(held[t, name].take())
        finally:
            for session in sessions.values():
                await session.aclose()
        # The benchmark filled a window far beyond any real budget: leave nothing behind.
        client = redis.Redis.from_url(redis_url)
        client.delete(f"cfwf:{{{key}}}:window", f"cfwf:{{{key}}}:pause")
        client.close()

    def med(rows: list[Row], i: int) -> float:
        return statistics.median(r[i] for r in rows)

    print(f"Python {platform.python_version()}, {os.cpu_count()} CPUs, {rounds} rounds "
          f"(median of rounds), {calls} acquisitions per round")
    for title, table in (("acquire() alone, one at a time", acquire1),
                         (f"acquire() alone, {CONCURRENCY} at once", acquire)):
        print()
        print(title)
        print(f"{'limiter':<16}{'p50 µs':>10}{'p99 µs':>10}{'per second':>14}")
        for name, rows in table.items():
            print(f"{name:<16}{med(rows, 0):>10.1f}{med(rows, 1):>10.1f}{med(rows, 2):>14.0f}")
    for t, table in e2e.items():
        print()
        print(f"get_instance, {CONCURRENCY} in flight, {t} ({targets[t][1]} calls per round)")
        print(f"{'limiter':<16}{'p50 µs':>10}{'p99 µs':>10}{'calls/s':>10}"
              f"{'p50 - none':>12}{'held p50 µs':>13}")
        base = med(table["no limiter"], 0)
        for name, rows in table.items():
            print(f"{name:<16}{med(rows, 0):>10.1f}{med(rows, 1):>10.1f}{med(rows, 2):>10.0f}"
                  f"{med(rows, 0) - base:>12.1f}{statistics.median(held_p50[t][name]):>13.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--redis-url", help="use this Redis instead of a throwaway one")
    parser.add_argument("--calls", type=int, default=4000, help="calls per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--serve", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve is not None:
        asyncio.run(serve_delayed(args.serve))
        return
    with contextlib.ExitStack() as stack:
        redis_url = args.redis_url or stack.enter_context(throwaway_redis())
        instant_url = stack.enter_context(answer_server())
        delayed_url = stack.enter_context(delayed_server(0.020))
        asyncio.run(measure(redis_url, instant_url, delayed_url, args.calls, args.rounds))


if __name__ == "__main__":
    main()
