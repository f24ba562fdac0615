"""RedisCache against a real redis-server: shared entries, expiry, invalidation, outages."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest
import redis.asyncio as aioredis
from redis_server import REDIS_SERVER, RedisServer, free_port, running_redis

from cfwf_async import _protocol as proto
from cfwf_async.cache import Cache, CacheKey, Miss
from cfwf_async.models import Instance, StepOutput, UnknownStep
from cfwf_async.redis import RedisCache
from cfwf_async.testing import make_instance

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.redis,
    pytest.mark.skipif(
        REDIS_SERVER is None,
        reason="redis-server is not installed (apt-get install redis-server)",
    ),
]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


_n = iter(range(1_000_000))


@pytest.fixture
def prefix(request: pytest.FixtureRequest) -> str:
    """Keys of its own for every test."""
    return f"t{next(_n)}-{request.node.name[:40]}:"


def key(target: str = "", instance_id: str = "i-1") -> CacheKey:
    return CacheKey(f"http://127.0.0.1:1/client/v4/accounts/a/workflows/w/instances/{instance_id}",
                    target)


def instance(status: str = "running", **extra: Any) -> Instance:
    body = msgspec.json.encode({"success": True, "result": {**make_instance(status), **extra}})
    return proto.decode_instance(body)


async def store(c: RedisCache, k: CacheKey, value: Any, *, age: float = 0.0) -> None:
    miss = await c.get(k, max_age=0)
    assert isinstance(miss, Miss)
    await c.put(k, value, miss, age=age)


async def ttls(client: aioredis.Redis, prefix: str, *, leases: bool = False) -> list[int]:
    """PTTLs of the entries and generations under ``prefix`` (of the fill leases if
    ``leases``)."""
    return [await client.pttl(k) async for k in client.scan_iter(match=prefix + "*")
            if k.endswith(b":fill") == leases]


async def test_caches_on_one_redis_share_entries(
    rclient: aioredis.Redis, prefix: str
) -> None:
    a = RedisCache(rclient, prefix=prefix)
    b = RedisCache(rclient, prefix=prefix)
    assert isinstance(a, Cache)
    inst = instance()
    assert isinstance(await b.get(key()), Miss)
    await store(a, key(), inst)
    got = await b.get(key())
    assert got == inst
    assert isinstance(await b.get(key("?simple=true")), Miss)
    assert isinstance(await RedisCache(rclient, prefix=prefix + "x").get(key()), Miss)
    # Every key expires on the server: entry and generation.
    left = await ttls(rclient, prefix)
    assert len(left) == 2
    # The misses took fill leases; they expire too, within fill_wait.
    leases = await ttls(rclient, prefix, leases=True)
    assert leases
    assert all(0 < ms <= 5000 for ms in leases)
    assert all(0 < t <= 2000 for t in left)


async def test_terminal_answers_live_terminal_ttl_and_others_are_not_stored(
    rclient: aioredis.Redis, prefix: str
) -> None:
    c = RedisCache(rclient, prefix=prefix, ttl=1.0, terminal_ttl=60.0)
    done = instance("complete")
    await store(c, key(), done)
    await store(c, key("/step?name=a&type=step"), StepOutput(status="complete", output=[1]))
    await store(c, key("/step?name=b&type=step"), StepOutput(status="running"))
    assert await c.get(key()) == done
    assert await c.get(key("/step?name=a&type=step")) == StepOutput(status="complete",
                                                                    output=[1])
    assert isinstance(await c.get(key("/step?name=b&type=step")), Miss)
    left = sorted(await ttls(rclient, prefix))
    assert len(left) == 3  # two entries and the generation
    assert all(58_000 < t <= 61_000 for t in left)


async def test_age_and_max_age_and_each_readers_own_ttl(
    rclient: aioredis.Redis, prefix: str
) -> None:
    # The bare gets below stand for reads that never store: fill_wait=0, so that none
    # waits for another's miss (sharing misses has tests of its own).
    writer = RedisCache(rclient, prefix=prefix, ttl=10.0, fill_wait=0)
    strict = RedisCache(rclient, prefix=prefix, ttl=1.0, fill_wait=0)
    inst = instance()
    await store(writer, key(), inst, age=2.0)  # fetched two seconds ago
    assert await writer.get(key()) == inst
    assert isinstance(await writer.get(key(), max_age=2.0), Miss)
    assert isinstance(await writer.get(key(), max_age=0), Miss)
    assert await writer.get(key(), max_age=5.0) == inst
    assert isinstance(await strict.get(key()), Miss)  # older than its own ttl
    left = await rclient.pttl(writer._keys(key())[1])
    assert 7_000 < left <= 8_000


async def test_invalidate_hides_entries_everywhere_and_refuses_older_answers(
    rclient: aioredis.Redis, prefix: str
) -> None:
    a = RedisCache(rclient, prefix=prefix)
    b = RedisCache(rclient, prefix=prefix)
    await store(a, key(), instance())
    await store(a, key(instance_id="i-2"), instance())
    early = await b.get(key("?order=desc"))
    assert isinstance(early, Miss)
    await b.invalidate(key().scope)
    assert isinstance(await a.get(key()), Miss)
    assert isinstance(await a.get(key(instance_id="i-2")), Instance)
    # A read that began before the write, answering after it, is not stored.
    await a.put(key("?order=desc"), instance(), early)
    assert isinstance(await b.get(key("?order=desc")), Miss)
    # Reads begun after the write are stored again.
    await store(a, key(), instance("paused"))
    assert await b.get(key()) == instance("paused")
    # Invalidating never shortens the generation's life below the entries'.
    gen_left = await rclient.pttl(a._keys(key())[0])
    assert gen_left > 800_000


async def test_unknown_steps_round_trip(rclient: aioredis.Redis, prefix: str) -> None:
    c = RedisCache(rclient, prefix=prefix)
    raw_step = {"type": "brandNewStep", "name": "x", "payload": {"a": [1, 2]}}
    inst = instance(steps=[raw_step])
    assert isinstance(inst.steps[0], UnknownStep)
    await store(c, key(), inst)
    assert await c.get(key()) == inst


async def test_a_client_that_decodes_responses_works_too(
    redis_server: RedisServer, prefix: str
) -> None:
    client = aioredis.from_url(redis_server.url, decode_responses=True)
    try:
        c = RedisCache(client, prefix=prefix)
        await store(c, key(), instance())
        assert await c.get(key()) == instance()
    finally:
        await client.aclose()


async def test_redis_down_skips_the_cache_warns_once_and_comes_back(
    tmp_path: Path, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    port = free_port()
    clock = Clock()
    url = f"redis://:pw-down@127.0.0.1:{port}/0"
    async with RedisCache.from_url(url, prefix=prefix, retry_interval=5.0) as down:
        down._clock = clock  # type: ignore[misc]
        with caplog.at_level(logging.WARNING, logger="cfwf_async"):
            miss = await down.get(key())
            assert isinstance(miss, Miss)
            await down.put(key(), instance(), miss)
            await down.invalidate(key().scope)  # remembered, replayed later
            for _ in range(3):
                assert isinstance(await down.get(key()), Miss)
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1
        assert "cannot be reached" in warnings[0].getMessage()
        assert "pw-down" not in caplog.text

        with running_redis(tmp_path, port=port, password="pw-down") as server:
            client = aioredis.from_url(server.url)
            try:
                other = RedisCache(client, prefix=prefix)
                await store(other, key(), instance())  # stored by a process unaware
                assert isinstance(await down.get(key()), Miss)  # still skipping
                clock.now += 5.0
                caplog.clear()
                with caplog.at_level(logging.WARNING, logger="cfwf_async"):
                    # The write made while Redis was away reaches it first.
                    assert isinstance(await down.get(key()), Miss)
                    assert isinstance(await other.get(key()), Miss)
                    await store(down, key(), instance("complete"))
                    assert await other.get(key()) == instance("complete")
                assert "answers again" in caplog.text
            finally:
                await client.aclose()


async def test_arguments_are_checked(rclient: aioredis.Redis) -> None:
    with pytest.raises(TypeError, match="client"):
        RedisCache(object())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="ttl"):
        RedisCache(rclient, ttl=-1)
    with pytest.raises(TypeError, match="terminal_ttl"):
        RedisCache(rclient, terminal_ttl="60")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="prefix"):
        RedisCache(rclient, prefix="")
    with pytest.raises(ValueError, match="url"):
        RedisCache.from_url("http://x")
    with pytest.raises(TypeError, match="url"):
        RedisCache.from_url(b"redis://x")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_age"):
        await RedisCache(rclient).get(key(), max_age=-1)
    with pytest.raises(ValueError, match="fill_wait"):
        RedisCache(rclient, fill_wait=61)
    with pytest.raises(TypeError, match="fill_wait"):
        RedisCache(rclient, fill_wait="1")  # type: ignore[arg-type]


# -- misses shared between processes ------------------------------------------------------


async def subscribed(cache: RedisCache) -> None:
    """Until ``cache`` listens for stores (it starts to when a read first waits)."""
    with anyio.fail_after(5):
        await cache._fills.ready.wait()


async def test_a_reader_waits_for_the_answer_another_process_is_fetching(
    redis_server: RedisServer, rclient: aioredis.Redis, prefix: str
) -> None:
    async with RedisCache.from_url(redis_server.url, prefix=prefix) as a, \
            RedisCache.from_url(redis_server.url, prefix=prefix, fill_wait=30) as b:
        miss = await a.get(key())
        assert isinstance(miss, Miss)  # and a's to fill: b waits for it
        async with anyio.create_task_group() as tg:
            got: list[object] = []

            async def read() -> None:
                got.append(await b.get(key()))

            tg.start_soon(read)
            await subscribed(b)
            assert got == []
            await a.put(key(), instance(), miss)
        assert got == [instance()]
        assert await ttls(rclient, prefix, leases=True) == [], "the lease was given back"


@pytest.mark.parametrize("how", ["released", "not kept", "lease expired"])
async def test_a_reader_stops_waiting_when_the_fetch_brings_nothing(
    redis_server: RedisServer, rclient: aioredis.Redis, prefix: str, how: str
) -> None:
    fill_wait = 0.3 if how == "lease expired" else 30.0
    async with RedisCache.from_url(redis_server.url, prefix=prefix, fill_wait=fill_wait) as a, \
            RedisCache.from_url(redis_server.url, prefix=prefix, fill_wait=30) as b:
        miss = await a.get(key())
        assert isinstance(miss, Miss)
        with anyio.fail_after(10):  # far less than b's own fill_wait
            async with anyio.create_task_group() as tg:
                got: list[object] = []

                async def read() -> None:
                    got.append(await b.get(key()))

                tg.start_soon(read)
                if how != "lease expired":
                    await subscribed(b)
                if how == "released":  # the request failed
                    await a.release(key(), miss)
                elif how == "not kept":  # a step output still running is never stored
                    await a.put(key(), StepOutput(status="running", output=1), miss)
        # b found nothing to read: its read sends its own request, holding no lease.
        [found] = got
        assert isinstance(found, Miss)
        assert found.token[2] == ""  # type: ignore[index]


async def test_repr_shows_where_but_never_the_password(redis_server: RedisServer) -> None:
    async with RedisCache.from_url(redis_server.url) as c:
        text = repr(c)
    assert f"127.0.0.1:{redis_server.port}/0" in text
    assert redis_server.password not in text
