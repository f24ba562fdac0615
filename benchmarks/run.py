"""Benchmark cfwf_async against the official SDK and bare aiohttp + msgspec, side by side.

One command runs every comparison against one loopback server (benchmarks/server.py, its
own process, precomputed answers) and prints markdown tables of medians and ratios::

    pip install -e ".[bench]"
    python benchmarks/run.py                 # the full run (about 10 minutes on 2 cores)
    python benchmarks/run.py --quick         # a tiny configuration, seconds

The clients:

``cfwf_async``
    ``WorkflowsSession(rate_limit=None, coalesce=False).get_instance(...)``: typed,
    validated models, one request per call.
``cfwf_async + limiter``
    the same with a ``RateLimit`` that never binds, to show what the limiter costs.
``official``
    Cloudflare's ``AsyncCloudflare(...).workflows.instances.get(...)`` (httpx + pydantic);
    skipped when the ``cloudflare`` package is not installed.
``bare aiohttp``
    ``aiohttp`` GET with a prebuilt URL and headers, then untyped
    ``msgspec.json.decode``: the practical ceiling for any aiohttp client.

Measurements are interleaved in rounds (A B C, A B C, ...) so that drift of a shared
machine lands on every client alike, and each table shows the median over rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import gc
import json
import os
import platform
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import aiohttp
import msgspec
from yarl import URL

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))

import cfwf_async  # noqa: E402
from cfwf_async import RateLimit, WorkflowsSession, _decoding  # noqa: E402
from cfwf_async import _protocol as proto  # noqa: E402
from cfwf_async.streaming import StepStream  # noqa: E402

sys.path.insert(0, HERE)
from _spawn import server_process  # noqa: E402

TOKEN = "bench-token"
ACCOUNT = "bench-account"
WORKFLOW = "bench"
CONNECTIONS = 100  # every client gets the same pool size (aiohttp's and httpx's default)

try:
    import cloudflare

    HAVE_OFFICIAL = True
except ImportError:  # CI installs only .[dev]: the official peer is then skipped
    HAVE_OFFICIAL = False


# ---------------------------------------------------------------------------
# Clients


class Client(Protocol):
    label: str

    async def get(self, instance_id: str) -> Any: ...

    async def close(self) -> None: ...


class Ours:
    label = "cfwf_async"

    def __init__(self, base_url: str, *, limiter: bool = False) -> None:
        if limiter:
            self.label = "cfwf_async + limiter"
        self.session = WorkflowsSession(
            api_token=TOKEN,
            account_id=ACCOUNT,
            base_url=base_url,
            # A window that never fills: what the limiter costs when it is not binding.
            rate_limit=RateLimit(10**6, 1.0) if limiter else None,
            # Every call must be a request of its own, as for the peers: coalescing would
            # merge the benchmark's identical concurrent calls (benchmarks/quota.py
            # measures what it saves).
            coalesce=False,
        )

    async def get(self, instance_id: str) -> Any:
        return await self.session.get_instance(WORKFLOW, instance_id)

    async def close(self) -> None:
        await self.session.aclose()


class Official:
    label = "official"

    def __init__(self, base_url: str) -> None:
        self.client = cloudflare.AsyncCloudflare(api_token=TOKEN, base_url=base_url)

    async def get(self, instance_id: str) -> Any:
        return await self.client.workflows.instances.get(
            instance_id, account_id=ACCOUNT, workflow_name=WORKFLOW
        )

    async def close(self) -> None:
        await self.client.close()


class Bare:
    label = "bare aiohttp"

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=CONNECTIONS)
        )
        self.headers = {"Authorization": f"Bearer {TOKEN}", "Accept": "application/json"}
        self.urls: dict[str, URL] = {}

    def url(self, instance_id: str) -> URL:
        url = self.urls.get(instance_id)
        if url is None:
            url = self.urls[instance_id] = URL(
                f"{self.base_url}/accounts/{ACCOUNT}/workflows/{WORKFLOW}"
                f"/instances/{instance_id}",
                encoded=True,
            )
        return url

    async def get(self, instance_id: str) -> Any:
        async with self.session.get(self.url(instance_id), headers=self.headers) as resp:
            body = await resp.read()
        return msgspec.json.decode(body)

    async def close(self) -> None:
        await self.session.close()


def make_clients(base_url: str, *, limiter: bool, official: bool) -> list[Client]:
    clients: list[Client] = [Ours(base_url)]
    if limiter:
        clients.append(Ours(base_url, limiter=True))
    if official:
        clients.append(Official(base_url))
    clients.append(Bare(base_url))
    return clients


# ---------------------------------------------------------------------------
# The server


@contextlib.contextmanager
def run_server(cpu: int | None, tls: tuple[str, str] | None = None) -> Iterator[str]:
    """Start benchmarks/server.py in its own process; yield its base URL."""
    cmd = [sys.executable, os.path.join(HERE, "server.py"), "--until-stdin-closes"]
    if cpu is not None:
        cmd += ["--cpu", str(cpu)]
    if tls is not None:
        cmd += ["--tls", *tls]
    with server_process(cmd, "benchmark server") as base_url:
        yield base_url if tls is None else base_url.replace("http://", "https://", 1)


@contextlib.contextmanager
def self_signed_cert() -> Iterator[tuple[str, str] | None]:
    """A throwaway certificate for 127.0.0.1 made with the openssl CLI (None without it)."""
    with tempfile.TemporaryDirectory() as tmp:
        cert, key = os.path.join(tmp, "cert.pem"), os.path.join(tmp, "key.pem")
        try:
            subprocess.run(
                ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                 "-keyout", key, "-out", cert, "-subj", "/CN=127.0.0.1",
                 "-addext", "subjectAltName=IP:127.0.0.1"],
                check=True, capture_output=True, timeout=60,
            )
        except (OSError, subprocess.SubprocessError):
            yield None
        else:
            yield cert, key


# ---------------------------------------------------------------------------
# Measuring


def steps_id(steps: int) -> str:
    return f"steps-{steps}"


async def burst(client: Client, instance_id: str, calls: int, concurrency: int) -> float:
    """``calls`` calls with ``concurrency`` in flight; returns calls per second."""
    left = calls

    async def worker() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            await client.get(instance_id)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(min(concurrency, calls))))
    return calls / (time.perf_counter() - started)


async def sized_calls(
    client: Client, instance_id: str, concurrency: int, seconds: float
) -> int:
    """Warm the client up and size a round so that it lasts about ``seconds``."""
    first = max(concurrency, 8)
    rate = await burst(client, instance_id, first, concurrency)
    if first / rate < seconds:
        rate = await burst(
            client, instance_id, max(concurrency, int(rate * seconds / 4)), concurrency
        )
    return max(concurrency, int(rate * seconds))


async def throughput(
    clients: list[Client], instance_id: str, concurrency: int, rounds: int, seconds: float,
    cpu: dict[str, list[float]] | None = None,
) -> dict[str, list[float]]:
    """Interleaved rounds of calls/s per client (and, into ``cpu``, CPU µs per call).

    CPU time is this process's only (the server runs in its own), so it shows what a
    client costs even when other programs share the machine and blur the wall clock.
    """
    sizes = {c.label: await sized_calls(c, instance_id, concurrency, seconds) for c in clients}
    results: dict[str, list[float]] = {c.label: [] for c in clients}
    for _ in range(rounds):
        for c in clients:
            gc.collect()
            started = time.process_time()
            results[c.label].append(await burst(c, instance_id, sizes[c.label], concurrency))
            if cpu is not None:
                used = time.process_time() - started
                cpu.setdefault(c.label, []).append(used / sizes[c.label] * 1e6)
    return results


async def latencies(
    clients: list[Client], instance_id: str, rounds: int, seconds: float
) -> dict[str, list[tuple[float, float]]]:
    """Rounds of (p50, p99) in microseconds at concurrency 1.

    Calls alternate client by client, in a fresh random order each time: on a shared
    machine the wall clock of a single call wanders between modes (the other core busy
    or idle), and alternating call by call puts every client in the same conditions.
    """
    per_call = 0.0
    for c in clients:
        per_call += 1 / await burst(c, instance_id, 50, 1)
    calls = max(50, int(seconds / per_call))
    rng = random.Random(5)
    results: dict[str, list[tuple[float, float]]] = {c.label: [] for c in clients}
    clock = time.perf_counter_ns
    for _ in range(rounds):
        gc.collect()
        samples: dict[str, list[int]] = {c.label: [] for c in clients}
        order = list(clients)
        for _ in range(calls):
            # A fresh order each time: a call right after a slow client's call runs in
            # a colder cache, and no client should always be the one that follows it.
            rng.shuffle(order)
            for c in order:
                t0 = clock()
                await c.get(instance_id)
                samples[c.label].append(clock() - t0)
        for label, got in samples.items():
            got.sort()
            p50 = got[len(got) // 2] / 1000
            p99 = got[min(len(got) - 1, int(len(got) * 0.99))] / 1000
            results[label].append((p50, p99))
    return results


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


# ---------------------------------------------------------------------------
# Decode only


def decoders() -> dict[str, Callable[[bytes], Any]]:
    found: dict[str, Callable[[bytes], Any]] = {
        "cfwf_async": proto.decode_instance,
    }
    if HAVE_OFFICIAL:
        from cloudflare._models import construct_type
        from cloudflare._wrappers import ResultWrapper
        from cloudflare.types.workflows import InstanceGetResponse

        wrapper = ResultWrapper[InstanceGetResponse]

        def official(body: bytes) -> Any:
            # What the SDK does with a 2xx body: httpx's response.json() (json.loads),
            # construct_type into ResultWrapper[InstanceGetResponse], then unwrap.
            built = construct_type(type_=wrapper, value=json.loads(body))
            return wrapper._unwrapper(built)  # type: ignore[arg-type]

        found["official"] = official
    found["json.loads"] = json.loads
    found["msgspec untyped"] = msgspec.json.decode
    return found


def time_decode(fn: Callable[[bytes], Any], body: bytes, seconds: float) -> tuple[int, float]:
    """(loops, seconds per call) for a run of about ``seconds``."""
    loops = 1
    # One collection up front: a full collection of the benchmark's large heap costs
    # more than the short calibration runs it would precede.
    gc.collect()
    while True:
        t0 = time.perf_counter()
        for _ in range(loops):
            fn(body)
        took = time.perf_counter() - t0
        if took >= seconds / 4 or loops >= 1 << 20:
            return max(1, int(loops * seconds / took)), took / loops
        loops *= 2


def held_memory(fn: Callable[[bytes], Any], body: bytes) -> int:
    """Bytes still allocated while the decoded object is alive."""
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        obj = fn(body)
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - before
        del obj
    finally:
        tracemalloc.stop()
    return held


def _variant_bodies(steps: int) -> dict[str, bytes]:
    """Bodies that take cfwf_async's second-chance paths: one step of a type it does not
    know (in the middle of the log), one timestamp without an offset, one lone surrogate."""
    from cfwf_async.testing import make_instance

    def body(change: Callable[[dict[str, Any]], None]) -> bytes:
        result = make_instance(steps=steps)
        change(result)
        return msgspec.json.encode({"errors": [], "messages": [], "success": True,
                                    "result": result})

    def unknown(r: dict[str, Any]) -> None:
        r["steps"][steps // 2] = {"type": "futureStep", "name": "x", "extra": 1}

    def naive(r: dict[str, Any]) -> None:
        r["steps"][steps // 2]["end"] = "2026-10-30T08:00:01.900"

    def cut(r: dict[str, Any]) -> None:
        r["steps"][steps // 2]["output"] = "LONE_SURROGATE"

    return {
        "1 unknown step type": body(unknown),
        "1 naive timestamp": body(naive),
        "1 lone surrogate": body(cut).replace(b"LONE_SURROGATE", b"x\\ud83d"),
    }


def _first_decode(body: bytes) -> Any:
    """A decode that cannot profit from an earlier one having met an unknown step type:
    what a process pays once, the first time it meets a step type it does not know."""
    _decoding.RECENT.by_step = False
    _decoding.LEARNT.keys, _decoding.LEARNT.state = {}, None
    return proto.decode_instance(body)


def decode_bench(
    step_counts: list[int], rounds: int, seconds: float
) -> dict[int, dict[str, tuple[float, int]]]:
    """Per body size and decoder: (median microseconds per call, bytes held)."""
    from benchmarks.server import instance_body

    out: dict[int, dict[str, tuple[float, int]]] = {}
    for steps in step_counts:
        body = instance_body(steps)
        runs: dict[str, tuple[Callable[[bytes], Any], bytes]] = {
            name: (fn, body) for name, fn in decoders().items()
        }
        for name, variant in _variant_bodies(steps).items():
            runs[f"cfwf_async, {name}"] = (proto.decode_instance, variant)
        runs["cfwf_async, 1 unknown step type, first decode"] = (
            _first_decode, runs["cfwf_async, 1 unknown step type"][1]
        )
        loops = {name: time_decode(fn, b, seconds)[0] for name, (fn, b) in runs.items()}
        times: dict[str, list[float]] = {name: [] for name in runs}
        for _ in range(rounds):
            for name, (fn, b) in runs.items():
                gc.collect()
                t0 = time.perf_counter()
                for _ in range(loops[name]):
                    fn(b)
                times[name].append((time.perf_counter() - t0) / loops[name] * 1e6)
        out[steps] = {
            name: (median(times[name]), held_memory(fn, b)) for name, (fn, b) in runs.items()
        }
    return out


# ---------------------------------------------------------------------------
# Streaming (each measurement in a fresh process, so peak RSS is its own)


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _reset_peak() -> bool:
    """Reset the kernel's high-water mark of our RSS (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


async def _stream_ours(base_url: str, size: int) -> int:
    async with WorkflowsSession(
        api_token=TOKEN, account_id=ACCOUNT, base_url=base_url, rate_limit=None
    ) as session:
        out = await session.get_step_output(WORKFLOW, f"stream-{size}", name="export-1")
        assert isinstance(out, StepStream)
        n = 0
        async with out:
            async for chunk in out:
                n += len(chunk)
        return n


async def _stream_bare(
    base_url: str, size: int, chunk_size: int | None = None, recv_size: int | None = None
) -> int:
    url = (
        f"{base_url}/accounts/{ACCOUNT}/workflows/{WORKFLOW}/instances/stream-{size}"
        "/step?name=export-1&type=step"
    )
    async with (
        aiohttp.ClientSession() as session,
        session.get(url, headers={"Authorization": f"Bearer {TOKEN}"}) as resp,
    ):
        if recv_size is not None:
            # What StepStream does on a plain-HTTP connection (see streaming.py).
            assert resp.connection is not None
            resp.connection.transport.max_size = recv_size  # type: ignore[union-attr]
        n = 0
        chunks = (
            resp.content.iter_any() if chunk_size is None
            else resp.content.iter_chunked(chunk_size)
        )
        async for chunk in chunks:
            n += len(chunk)
        return n


async def _stream_official(base_url: str, size: int) -> str:
    client = cloudflare.AsyncCloudflare(api_token=TOKEN, base_url=base_url)
    try:
        await client.workflows.instances.step(
            f"stream-{size}", account_id=ACCOUNT, workflow_name=WORKFLOW,
            name="export-1", type="step",
        )
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    finally:
        await client.close()
    return "no error"


STREAM_KINDS: dict[str, Callable[[str, int], Any]] = {
    "ours": _stream_ours,
    "bare": _stream_bare,
    "bare 64 KiB": functools.partial(_stream_bare, chunk_size=64 << 10),
    "bare 128 KiB recv": functools.partial(_stream_bare, recv_size=128 << 10),
    "official": _stream_official,
}
STREAM_LABELS = {
    "ours": "cfwf_async StepStream",
    "bare": "bare aiohttp iter_any()",
    "bare 64 KiB": "bare aiohttp iter_chunked(64 KiB)",
    "bare 128 KiB recv": "bare aiohttp iter_any(), 128 KiB recv()",
}


def stream_worker(kind: str, base_url: str, size: int) -> None:
    """Child-process side of the streaming benchmark: prints one JSON line."""
    fn = STREAM_KINDS[kind]
    asyncio.run(fn(base_url, 1 << 20))  # warm up imports, buffers and the loop
    gc.collect()
    base = _rss()
    exact_peak = _reset_peak()
    sampled = [base]
    usage: dict[str, float] = {}  # the download's CPU time and page faults

    async def main() -> Any:
        async def sample() -> None:
            while True:
                sampled.append(_rss())
                await asyncio.sleep(0.005)

        sampler = asyncio.create_task(sample())
        faults0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        cpu0, t0 = time.process_time(), time.perf_counter()
        try:
            result = await fn(base_url, size)
        finally:
            sampler.cancel()
        usage["cpu"] = time.process_time() - cpu0
        usage["faults"] = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults0
        return result, time.perf_counter() - t0

    result, took = asyncio.run(main())
    peak = _peak_rss() if exact_peak else max(sampled)
    print(json.dumps({
        "kind": kind, "result": result, "seconds": took, "size": size,
        "rss_growth": max(0, peak - base), "exact_peak": exact_peak, **usage,
    }))


def run_stream_worker(
    kind: str, base_url: str, size: int, cafile: str | None = None
) -> dict[str, Any]:
    cmd = [sys.executable, os.path.abspath(__file__), "--stream-worker", kind,
           "--url", base_url, "--stream-size", str(size)]
    # Over TLS every client trusts the throwaway certificate through the standard
    # SSL_CERT_FILE variable, so none of them needs code of its own for it.
    env = None if cafile is None else {**os.environ, "SSL_CERT_FILE": cafile}
    done = subprocess.run(cmd, capture_output=True, check=True, timeout=600, env=env)
    return json.loads(done.stdout.decode().strip().splitlines()[-1])  # type: ignore[no-any-return]


def stream_bench(
    base_url: str, size: int, rounds: int, kinds: list[str], cafile: str | None = None
) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {kind: [] for kind in kinds}
    order, rng = list(out), random.Random(5)
    for _ in range(rounds):
        rng.shuffle(order)  # no client always runs right after the same other one
        for kind in order:
            res = run_stream_worker(kind, base_url, size, cafile)
            if res["result"] != size:
                raise RuntimeError(f"{kind} read {res['result']} of {size} bytes")
            out[kind].append(res)
    return out


# ---------------------------------------------------------------------------
# Reporting


@dataclass
class Report:
    lines: list[str] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)  # medians, for --json

    def add(self, *lines: str) -> None:
        for line in lines:
            print(line, flush=True)
            self.lines.append(line)

    def table(self, header: list[str], rows: list[list[str]]) -> None:
        self.add(
            "| " + " | ".join(header) + " |",
            "|" + "|".join("---:" if i else "---" for i in range(len(header))) + "|",
            *("| " + " | ".join(r) + " |" for r in rows),
            "",
        )


def fmt(value: float, digits: int = 0) -> str:
    return f"{value:,.{digits}f}"


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b else "n/a"


def plot_scaling(path: str, scaling: dict[int, dict[str, float]], steps: int) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    levels = sorted(scaling)
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    labels = list(next(iter(scaling.values())))
    for label in labels:
        ax.plot(levels, [scaling[c][label] for c in levels], marker="o", label=label)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(levels, [str(c) for c in levels])
    ax.set_xlabel("calls in flight")
    ax.set_ylabel("get_instance calls / s (median)")
    ax.set_title(f"Throughput vs concurrency, {steps}-step instance, loopback")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


async def network_benches(args: argparse.Namespace, base_url: str, report: Report) -> None:
    official = HAVE_OFFICIAL and not args.no_official

    if "throughput" in args.only:
        conc = 64
        report.add(f"### 1. get_instance throughput, concurrency {conc} (calls/s)", "")
        rows, cpu_rows = [], []
        for steps in args.steps:
            clients = make_clients(base_url, limiter=True, official=official)
            cpu: dict[str, list[float]] = {}
            try:
                res = await throughput(
                    clients, steps_id(steps), conc, args.rounds, args.seconds, cpu
                )
            finally:
                for c in clients:
                    await c.close()
            cpu_med = {k: median(v) for k, v in cpu.items()}
            cpu_rows.append([f"{steps:,}", *(fmt(v, 1) for v in cpu_med.values()),
                             ratio(cpu_med["bare aiohttp"], cpu_med["cfwf_async"])])
            cpu_header = ["steps", *cpu_med, "bare / ours"]
            med = {k: median(v) for k, v in res.items()}
            report.data.setdefault("throughput", {})[steps] = med
            report.data.setdefault("cpu_us", {})[steps] = cpu_med
            ours, bare = med["cfwf_async"], med["bare aiohttp"]
            rows.append([
                f"{steps:,}",
                fmt(ours),
                fmt(med["cfwf_async + limiter"]),
                fmt(med["official"]) if official else "-",
                fmt(bare),
                ratio(ours, bare),
                ratio(ours, med["official"]) if official else "-",
            ])
        report.table(
            ["steps", "cfwf_async", "+ limiter", "official", "bare aiohttp",
             "ours / bare", "ours / official"],
            rows,
        )
        report.add("Client CPU time per call, same rounds (µs; lower is better):", "")
        report.table(cpu_header, cpu_rows)

    if "latency" in args.only:
        steps = args.steps[0]
        report.add(f"### 2. Latency at concurrency 1, {steps}-step instance (µs per call)", "")
        clients = make_clients(base_url, limiter=True, official=official)
        try:
            lat = await latencies(clients, steps_id(steps), args.rounds, args.seconds)
        finally:
            for c in clients:
                await c.close()
        bare50 = median([p[0] for p in lat["bare aiohttp"]])
        bare99 = median([p[1] for p in lat["bare aiohttp"]])
        rows = []
        for label, samples in lat.items():
            p50, p99 = median([p[0] for p in samples]), median([p[1] for p in samples])
            rows.append([label, fmt(p50, 1), fmt(p99, 1), f"{p50 - bare50:+.1f}",
                         f"{p99 - bare99:+.1f}"])
            report.data.setdefault("latency_us", {})[label] = {"p50": p50, "p99": p99}
        report.table(["client", "p50", "p99", "p50 - bare", "p99 - bare"], rows)

    if "scaling" in args.only:
        steps = args.steps[0]
        report.add(f"### 3. Scaling, {steps}-step instance (calls/s)", "")
        scaling: dict[int, dict[str, float]] = {}
        for conc in args.concurrency:
            clients = make_clients(base_url, limiter=False, official=official)
            try:
                # Five times the rounds, each a fifth as long: at low concurrency the
                # wall clock of a shared machine switches between modes for seconds at
                # a time, and short rounds spread those switches over every client.
                res = await throughput(
                    clients, steps_id(steps), conc, args.rounds * 5, args.seconds / 5
                )
            finally:
                for c in clients:
                    await c.close()
            scaling[conc] = {k: median(v) for k, v in res.items()}
        report.data["scaling"] = scaling
        labels = list(next(iter(scaling.values())))
        rows = []
        for conc, med in scaling.items():
            row = [str(conc), *(fmt(med[label]) for label in labels)]
            row.append(ratio(med["cfwf_async"], med["bare aiohttp"]))
            if official:
                row.append(ratio(med["cfwf_async"], med["official"]))
            rows.append(row)
        header = ["in flight", *labels, "ours / bare"] + (["ours / official"] if official else [])
        report.table(header, rows)
        if args.png and plot_scaling(args.png, scaling, steps):
            report.add(f"Plotted to `{args.png_shown}`.", "")


def decode_report(args: argparse.Namespace, report: Report) -> None:
    report.add(
        "### 4. Decode only, no network (µs per body; memory held by the result)",
        "",
        "The `cfwf_async, ...` rows decode bodies that need a second chance: a step type "
        "it does not know (mid-log; the plain row is a program decoding such logs over "
        "and over, the `first decode` row one that just met it), a timestamp without an "
        "offset, a lone surrogate escape.",
        "",
    )
    res = decode_bench(args.decode_steps, args.rounds, args.seconds)
    report.data["decode"] = {
        steps: {name: {"us": us, "held": held} for name, (us, held) in by_name.items()}
        for steps, by_name in res.items()
    }
    rows = []
    for steps, by_name in res.items():
        ours = by_name["cfwf_async"][0]
        for name, (us, held) in by_name.items():
            rows.append([f"{steps:,}", name, fmt(us, 1), ratio(us, ours),
                         fmt(held / 2**20, 2)])
    report.table(["steps", "decoder", "µs / body", "time vs cfwf_async", "MiB held"], rows)


def stream_table(
    report: Report, res: dict[str, list[dict[str, Any]]], size: int
) -> dict[str, Any]:
    """One streaming table (medians; worst round for RSS); returns its numbers."""
    mib, gib = size / 2**20, size / 2**30
    speed = {k: median([mib / r["seconds"] for r in v]) for k, v in res.items()}
    growth = {k: max(r["rss_growth"] for r in v) / 2**20 for k, v in res.items()}
    cpu = {k: median([r["cpu"] * 1000 / gib for r in v]) for k, v in res.items()}
    faults = {k: median([r["faults"] / gib for r in v]) for k, v in res.items()}
    report.table(
        ["client", "MiB/s (median)", "vs bare iter_any()", "client CPU ms / GiB",
         "page faults / GiB", "peak RSS growth (MiB, worst round)"],
        [
            [STREAM_LABELS[kind], fmt(speed[kind]), ratio(speed[kind], speed["bare"]),
             fmt(cpu[kind]), fmt(faults[kind]), fmt(growth[kind], 1)]
            for kind in res
        ],
    )
    return {
        "mib_s": speed, "rss_growth_mib": growth, "size": size,
        "cpu_ms_per_gib": cpu, "faults_per_gib": faults,
    }


def stream_report(args: argparse.Namespace, base_url: str, report: Report) -> None:
    size = args.stream_size
    report.add(f"### 5. Streaming a {size / 2**20:,.0f} MiB step output", "")
    res = stream_bench(base_url, size, args.stream_rounds, list(STREAM_LABELS))
    report.data["stream"] = stream_table(report, res, size)
    if not args.no_tls:
        with self_signed_cert() as tls:
            if tls is None:
                report.add("Over TLS: skipped (no `openssl` command to make a certificate).", "")
            else:
                report.add(
                    "The same over TLS (a self-signed certificate on the same kind of "
                    "server), as Cloudflare's API is served:",
                    "",
                )
                with run_server(args.server_cpu, tls) as tls_url:
                    res = stream_bench(tls_url, size, args.stream_rounds, ["ours", "bare"],
                                       cafile=tls[0])
                report.data["stream_tls"] = stream_table(report, res, size)
    if HAVE_OFFICIAL and not args.no_official:
        small = min(size, args.official_stream_size)
        r = run_stream_worker("official", base_url, small)
        report.add(
            f"The official SDK on a {small / 2**20:,.0f} MiB octet-stream output "
            f"(`client.workflows.instances.step(...)`): it buffers the whole body "
            f"(RSS +{r['rss_growth'] / 2**20:,.0f} MiB), then fails with "
            f"`{r['result'][:160]}`.",
            "",
        )
        report.data["stream"]["official"] = r


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="cfwf_async benchmarks (see benchmarks/README.md)")
    p.add_argument("--quick", action="store_true", help="a tiny configuration (smoke test)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--seconds", type=float, default=1.0, help="target length of one round")
    p.add_argument("--steps", default="10,1000,10000")
    p.add_argument("--decode-steps", default="1000,10000")
    p.add_argument("--concurrency", default="1,8,64,256")
    p.add_argument("--stream-size", type=int, default=1 << 30)
    p.add_argument("--stream-rounds", type=int, default=9)
    p.add_argument("--official-stream-size", type=int, default=64 << 20)
    p.add_argument("--no-tls", action="store_true", help="skip the streaming rows over TLS")
    p.add_argument("--only", default="throughput,latency,scaling,decode,stream")
    p.add_argument("--no-official", action="store_true", help="skip the official SDK")
    p.add_argument("--png", default=os.path.join(HERE, "scaling.png"))
    p.add_argument("--markdown", default=None, help="also write the tables to this file")
    p.add_argument("--json", default=None, help="also write the medians to this file")
    p.add_argument("--server-cpu", type=int, default=None, help="pin the server to a core")
    p.add_argument("--stream-worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--url", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.rounds, args.seconds = 1, 0.05
        args.steps, args.decode_steps, args.concurrency = "10,100", "100", "1,8"
        args.stream_size, args.stream_rounds = 8 << 20, 1
        args.official_stream_size = 1 << 20
    args.steps = [int(s) for s in str(args.steps).split(",")]
    args.decode_steps = [int(s) for s in str(args.decode_steps).split(",")]
    args.concurrency = [int(s) for s in str(args.concurrency).split(",")]
    args.only = set(str(args.only).split(","))
    args.png_shown = os.path.relpath(args.png, os.path.join(HERE, "..")) if args.png else ""
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.stream_worker:
        stream_worker(args.stream_worker, args.url, args.stream_size)
        return
    report = Report()
    load = load_start = os.getloadavg()
    report.add(
        f"cfwf_async {cfwf_async.__version__}, "
        + (f"cloudflare {cloudflare.__version__}, " if HAVE_OFFICIAL else "no official SDK, ")
        + f"aiohttp {aiohttp.__version__}, msgspec {msgspec.__version__}, "
        f"Python {platform.python_version()}, {os.cpu_count()} CPUs, "
        f"load average at start {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; "
        f"{args.rounds} interleaved rounds of ~{args.seconds:g} s, medians.",
        "",
    )
    with run_server(args.server_cpu) as base_url:
        if args.only & {"throughput", "latency", "scaling"}:
            asyncio.run(network_benches(args, base_url, report))
        if "decode" in args.only:
            decode_report(args, report)
        if "stream" in args.only:
            stream_report(args, base_url, report)
    load = os.getloadavg()
    report.add(f"Load average at the end: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}.")
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write("\n".join(report.lines) + "\n")
    if args.json:
        report.data["load_start"], report.data["load_end"] = load_start, list(load)
        with open(args.json, "w") as f:
            json.dump(report.data, f, indent=1)


if __name__ == "__main__":
    main()

