"""How far coalescing and caching stretch the API quota: requests per 1,000 calls.

Workload: 200 concurrent handlers each call ``get_instance`` 50 times, on instance ids
drawn from a Zipf distribution (s = 1.1) over 200 ids, with 10-50 ms of think time
between calls. The API is :class:`cfwf_async.testing.FakeWorkflowsAPI` in its own
process, answering after ``--latency`` seconds (default 0.1: the real API is 50-300 ms
away) and changing a few instances every 100 ms (each answer's ``output`` holds its
version), so the benchmark also checks freshness: every answer must be a version the
API held at some time between the call's start minus the staleness the scenario
allows (0 without a cache, plus the cache's ``ttl`` and one request latency for a
joined or cached answer) and the call's end.

Scenarios (each session is built by :func:`make_session`, the one place they differ):

a. no coalescing, no cache
b. coalescing (``WorkflowsSession(coalesce=True)``, the default)
c. coalescing + ``MemoryCache(ttl=1.0)``
d. 4 processes sharing one ``RedisCache(ttl=1.0)`` (50 handlers each)
e. 4 processes, each with its own ``MemoryCache(ttl=1.0)`` (50 handlers each)

Run::

    python benchmarks/quota.py                         # about 30 s on 2 CPUs
    python benchmarks/quota.py --quick                 # a tiny configuration in seconds
    python benchmarks/quota.py --only de --fill-wait 0 # (d) without shared misses
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import itertools
import json
import os
import random
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

from aiohttp import web

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
sys.path.insert(0, HERE)

from _spawn import server_process  # noqa: E402

from cfwf_async import WorkflowsSession  # noqa: E402
from cfwf_async.cache import MemoryCache  # noqa: E402
from cfwf_async.testing import FakeWorkflowsAPI, make_instance  # noqa: E402

WORKFLOW = "bench"
IDS = [f"zipf-{i}" for i in range(200)]
SCENARIOS = {
    "a": "no coalescing, no cache",
    "b": "coalescing",
    "c": "coalescing + MemoryCache(ttl=1.0)",
    "d": "4 processes, shared RedisCache(ttl=1.0)",
    "e": "4 processes, own MemoryCache(ttl=1.0)",
}
PROCESSES = {"d": 4, "e": 4}
TTL = 1.0


@dataclass(frozen=True)
class Config:
    handlers: int = 200
    calls: int = 50
    zipf_s: float = 1.1
    think: tuple[float, float] = (0.010, 0.050)
    latency: float = 0.1
    seed: int = 1
    fill_wait: float = 5.0  # RedisCache's: how long a miss waits for another's request


# -- the fake API, in its own process ---------------------------------------------------


def instance_result(version: int) -> dict[str, Any]:
    result = make_instance("running", steps=3)
    result["output"] = {"version": version}
    return result


async def serve(latency: float) -> None:
    """The fake API with a latency and changing instances, until stdin closes."""
    api = FakeWorkflowsAPI(api_token="bench", account_id="bench")
    versions = dict.fromkeys(IDS, 0)
    changes: dict[str, list[tuple[float, int]]] = {i: [(0.0, 0)] for i in IDS}
    for i in IDS:
        api.add_instance(WORKFLOW, i, instance_result(0))
    app = api.make_app()

    @web.middleware
    async def slow(
        request: web.Request,
        handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
    ) -> web.StreamResponse:
        if request.path.startswith("/__bench/"):
            return await handler(request)
        await asyncio.sleep(latency)
        return await handler(request)

    async def stats(request: web.Request) -> web.Response:
        return web.json_response({"requests": len(api.requests), "changes": changes})

    async def reset(request: web.Request) -> web.Response:
        api.requests.clear()
        return web.json_response({})

    app.middlewares.insert(0, slow)
    app.router.add_get("/__bench/stats", stats)
    app.router.add_post("/__bench/reset", reset)

    async def change() -> None:
        rng = random.Random(7)
        while True:
            await asyncio.sleep(0.1)
            for i in rng.sample(IDS, 5):
                versions[i] += 1
                api.add_instance(WORKFLOW, i, instance_result(versions[i]))
                changes[i].append((time.monotonic(), versions[i]))

    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, backlog=2048)
    await site.start()
    changer = asyncio.create_task(change())
    print(f"PORT {runner.addresses[0][1]}", flush=True)
    await asyncio.to_thread(sys.stdin.buffer.read)
    changer.cancel()
    await runner.cleanup()


@contextlib.contextmanager
def fake_api(latency: float) -> Iterator[str]:
    cmd = [sys.executable, os.path.abspath(__file__), "--serve", str(latency)]
    with server_process(cmd, "fake API") as base_url:
        yield base_url


# -- sessions: the one place scenarios differ --------------------------------------------


class NotAvailable(Exception):
    """The session in this checkout has no coalesce=/cache= arguments yet."""


async def make_session(
    scenario: str, base_url: str, redis_url: str | None, fill_wait: float = 5.0
) -> tuple[WorkflowsSession, Any]:
    """The session a scenario runs with, and its cache (ours to close) or None.

    The rate limit is off: the benchmark counts requests, it does not pace them.
    """
    common: dict[str, Any] = {"api_token": "bench", "account_id": "bench",
                              "base_url": base_url, "rate_limit": None}
    if scenario == "a":
        return WorkflowsSession(**common, coalesce=False), None
    # Everything below needs the session's coalesce= and cache= arguments.
    cache: Any = None
    if scenario in ("c", "e"):
        cache = MemoryCache(ttl=TTL)
    elif scenario == "d":
        assert redis_url is not None
        from cfwf_async.redis import RedisCache

        try:
            cache = RedisCache.from_url(redis_url, ttl=TTL, terminal_ttl=60.0,
                                        fill_wait=fill_wait)
        except TypeError:  # before RedisCache shared misses
            cache = RedisCache.from_url(redis_url, ttl=TTL, terminal_ttl=60.0)
    try:
        session = WorkflowsSession(**common, coalesce=True, cache=cache)
    except TypeError as exc:
        if hasattr(cache, "aclose"):
            await cache.aclose()
        raise NotAvailable(str(exc)) from None
    return session, cache


# -- the workload -------------------------------------------------------------------------


def zipf_picker(n: int, s: float, rng: random.Random) -> Callable[[], int]:
    weights = [1.0 / (k**s) for k in range(1, n + 1)]
    cumulative = list(itertools.accumulate(weights))
    total = cumulative[-1]
    return lambda: bisect.bisect_left(cumulative, rng.random() * total)


async def run_handlers(
    scenario: str, base_url: str, redis_url: str | None, cfg: Config, handlers: int, seed: int
) -> dict[str, Any]:
    """``handlers`` handlers in this process; returns latencies and the answers seen."""
    session, cache = await make_session(scenario, base_url, redis_url, cfg.fill_wait)
    latencies: list[float] = []
    answers: list[tuple[str, int, float, float]] = []

    async def handler(h: int) -> None:
        rng = random.Random(seed * 100_003 + h)
        pick = zipf_picker(len(IDS), cfg.zipf_s, rng)
        for _ in range(cfg.calls):
            await asyncio.sleep(rng.uniform(*cfg.think))
            instance_id = IDS[pick()]
            t0 = time.monotonic()
            inst = await session.get_instance(WORKFLOW, instance_id)
            t1 = time.monotonic()
            latencies.append(t1 - t0)
            answers.append((instance_id, int(inst.output["version"]), t0, t1))

    try:
        await asyncio.gather(*(handler(h) for h in range(handlers)))
    finally:
        await session.aclose()
        if hasattr(cache, "aclose"):
            await cache.aclose()
    return {"latencies": latencies, "answers": answers}


async def _post(base_url: str, path: str, method: str = "GET") -> Any:
    import aiohttp

    root = base_url.split("/client/v4")[0]
    async with aiohttp.ClientSession() as http, http.request(method, root + path) as resp:
        return await resp.json()


def run_workers(scenario: str, base_url: str, redis_url: str | None, cfg: Config) -> list[Any]:
    """PROCESSES[scenario] processes of this script, sharing the handlers between them."""
    n = PROCESSES[scenario]
    procs = [
        subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--worker", scenario, base_url,
             redis_url or "-", json.dumps(cfg.__dict__), str(cfg.handlers // n), str(w)],
            stdout=subprocess.PIPE,
        )
        for w in range(n)
    ]
    out = []
    for p in procs:
        stdout, _ = p.communicate()
        if p.returncode != 0:
            raise RuntimeError(f"worker for {scenario} failed")
        out.append(json.loads(stdout))
    return out


def stale_answers(
    answers: list[tuple[str, int, float, float]],
    changes: dict[str, list[tuple[float, int]]],
    allowed: float,
) -> int:
    """Answers holding a version the API did not hold in [start - allowed, end]."""
    bad = 0
    for instance_id, version, t0, t1 in answers:
        log = changes[instance_id]
        held_from = log[version][0] if version < len(log) else float("inf")
        held_until = log[version + 1][0] if version + 1 < len(log) else float("inf")
        if not (held_from <= t1 and held_until >= t0 - allowed - 0.005):
            bad += 1
    return bad


async def measure(
    scenario: str, base_url: str, redis_url: str | None, cfg: Config
) -> dict[str, Any] | None:
    await _post(base_url, "/__bench/reset", "POST")
    try:
        if scenario in PROCESSES:
            # Probe in this process first, so a missing argument reports cleanly.
            session, cache = await make_session(scenario, base_url, redis_url)
            await session.aclose()
            if hasattr(cache, "aclose"):
                await cache.aclose()
            parts = await asyncio.to_thread(run_workers, scenario, base_url, redis_url, cfg)
        else:
            parts = [await run_handlers(scenario, base_url, redis_url, cfg, cfg.handlers, 0)]
    except NotAvailable:
        return None
    stats = await _post(base_url, "/__bench/stats")
    latencies = sorted(x for p in parts for x in p["latencies"])
    answers = [tuple(a) for p in parts for a in p["answers"]]
    allowed = 0.0 if scenario == "a" else (TTL if scenario in "cde" else 0.0) + 2 * cfg.latency
    calls = len(latencies)
    return {
        "calls": calls,
        "requests": stats["requests"],
        "p50": latencies[calls // 2] * 1000,
        "p99": latencies[min(calls - 1, int(calls * 0.99))] * 1000,
        "stale": stale_answers(answers, stats["changes"], allowed),
    }


def report(results: dict[str, dict[str, Any] | None]) -> None:
    print(f"{'scenario':<44}{'calls':>7}{'requests':>10}{'per 1,000':>11}"
          f"{'vs (a)':>8}{'p50 ms':>9}{'p99 ms':>9}{'stale':>7}")
    base = results.get("a")
    for s, title in SCENARIOS.items():
        if s not in results:
            continue  # not asked for (--only)
        r = results[s]
        label = f"({s}) {title}"
        if r is None:
            print(f"{label:<44}  not available (needs WorkflowsSession(coalesce=, cache=))")
            continue
        per = 1000 * r["requests"] / r["calls"]
        ratio = (base["requests"] / r["requests"]) if base and r["requests"] else float("nan")
        print(f"{label:<44}{r['calls']:>7}{r['requests']:>10}{per:>11.1f}{ratio:>7.1f}x"
              f"{r['p50']:>9.1f}{r['p99']:>9.1f}{r['stale']:>7}")
    d, e = results.get("d"), results.get("e")
    if d and e and d["requests"]:
        print(f"(e) / (d) requests: {e['requests'] / d['requests']:.1f}x (target >= 2x)")


@contextlib.contextmanager
def maybe_redis(needed: bool, url: str | None) -> Iterator[str | None]:
    if not needed or url:
        yield url
        return
    from redis_limiter import throwaway_redis

    with throwaway_redis() as started:
        yield started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="20 handlers x 10 calls")
    parser.add_argument("--only", default="abcde", help="scenarios to run, e.g. ab")
    parser.add_argument("--latency", type=float, default=0.1, help="fake API answer delay")
    parser.add_argument("--redis-url", help="use this Redis instead of a throwaway one")
    parser.add_argument("--fill-wait", type=float, default=5.0,
                        help="RedisCache(fill_wait=) for (d); 0 sends every miss's request")
    parser.add_argument("--serve", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--worker", nargs=6, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve is not None:
        asyncio.run(serve(args.serve))
        return
    if args.worker:
        scenario, url, redis_url, raw, handlers, seed = args.worker
        fields: dict[str, Any] = json.loads(raw)
        fields["think"] = tuple(fields["think"])
        cfg = Config(**fields)
        out = asyncio.run(run_handlers(scenario, url, None if redis_url == "-" else redis_url,
                                       cfg, int(handlers), int(seed) + 1))
        print(json.dumps(out))
        return
    cfg = Config(handlers=20, calls=10, latency=args.latency, fill_wait=args.fill_wait) \
        if args.quick else Config(latency=args.latency, fill_wait=args.fill_wait)
    print(f"{cfg.handlers} handlers x {cfg.calls} get_instance calls, Zipf s={cfg.zipf_s} over "
          f"{len(IDS)} ids, think {cfg.think[0] * 1000:.0f}-{cfg.think[1] * 1000:.0f} ms, "
          f"API latency {cfg.latency * 1000:.0f} ms, RedisCache fill_wait {cfg.fill_wait:g} s; "
          f"Python {sys.version.split()[0]}, "
          f"{os.cpu_count()} CPUs")
    results: dict[str, dict[str, Any] | None] = {}
    with fake_api(cfg.latency) as base_url, maybe_redis("d" in args.only, args.redis_url) as rurl:
        for s in args.only:
            results[s] = asyncio.run(measure(s, base_url, rurl, cfg))
    report(results)


if __name__ == "__main__":
    main()
