"""One worker process for test_redis.py: its own session behind a shared RedisRateLimit.

Run as ``python redis_worker.py '<json config>'``. It prints ``ready`` once the session
and limiter are set up, waits for a line on stdin (the start signal), fires ``calls``
concurrent ``get_instance`` calls, and prints a JSON summary as its last line. It prints
``paused`` whenever its limiter was asked to pause (after a 429), so the test can act on
that moment instead of guessing it. With ``delay_max``, each request waits a random time
up to that long (seeded by ``seed``) between its grant and leaving, as a loaded machine or
a slow network would make it.
"""

from __future__ import annotations

import random
import sys

import anyio
import msgspec

from cfwf_async import WorkflowsSession
from cfwf_async.redis import RedisRateLimit


class ReportingLimit(RedisRateLimit):
    delay_max = 0.0
    rng = random.Random(0)

    async def acquire(self) -> None:
        await super().acquire()
        if self.delay_max:
            await anyio.sleep(self.rng.uniform(0.0, self.delay_max))

    async def pause(self, seconds: float) -> None:
        await super().pause(seconds)
        print("paused", flush=True)


async def main(cfg: dict[str, object]) -> None:
    ok = 0
    failures: list[str] = []
    async with (
        ReportingLimit.from_url(
            str(cfg["redis_url"]),
            requests=int(cfg["requests"]),  # type: ignore[call-overload]
            period=float(cfg["period"]),  # type: ignore[arg-type]
            key=str(cfg["key"]),
            margin=float(cfg.get("margin", 1.0)),  # type: ignore[arg-type]
        ) as limit,
        WorkflowsSession(
            api_token=str(cfg["token"]),
            account_id=str(cfg["account"]),
            base_url=str(cfg["base_url"]),
            rate_limit=limit,
            coalesce=False,  # every call must reach the API: they are what is counted
        ) as session,
    ):
        limit.delay_max = float(cfg.get("delay_max", 0.0))  # type: ignore[arg-type]
        limit.rng = random.Random(int(cfg.get("seed", 0)))  # type: ignore[call-overload]
        print("ready", flush=True)
        await anyio.to_thread.run_sync(sys.stdin.readline)

        async def one() -> None:
            nonlocal ok
            try:
                await session.get_instance("wf", str(cfg["instance"]))
            except Exception as exc:
                failures.append(f"{type(exc).__name__}: {exc}")
            else:
                ok += 1

        async with anyio.create_task_group() as tg:
            for _ in range(int(cfg["calls"])):  # type: ignore[call-overload]
                tg.start_soon(one)
    print(msgspec.json.encode({"ok": ok, "failures": failures}).decode(), flush=True)


if __name__ == "__main__":
    anyio.run(main, msgspec.json.decode(sys.argv[1]))
