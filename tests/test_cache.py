"""MemoryCache and the answer encoding: lifetimes, max_age, invalidation, LRU bounds."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import msgspec
import pytest

from cfwf_async import _protocol as proto
from cfwf_async.cache import (
    Cache,
    CacheKey,
    MemoryCache,
    Miss,
    answer_size,
    decode_answer,
    encode_answer,
)
from cfwf_async.models import Instance, StepOutput, StepRun, UnknownStep
from cfwf_async.testing import make_instance

pytestmark = pytest.mark.anyio

SCOPE = "http://127.0.0.1:1/client/v4/accounts/a/workflows/w/instances/i-1"
KEY = CacheKey(SCOPE, "")
SIMPLE = CacheKey(SCOPE, "?simple=true")
OTHER = CacheKey(SCOPE.replace("i-1", "i-2"), "")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def instance(status: str = "running", steps: int = 2, **extra: Any) -> Instance:
    body = msgspec.json.encode({"success": True, "result": {**make_instance(status, steps=steps),
                                                            **extra}})
    return proto.decode_instance(body)


def cache(clock: Clock, **kwargs: Any) -> MemoryCache:
    return MemoryCache(clock=clock, **kwargs)


async def store(c: MemoryCache, key: CacheKey, value: Any, *, age: float = 0.0) -> None:
    miss = await c.get(key, max_age=0)
    assert isinstance(miss, Miss)
    await c.put(key, value, miss, age=age)


async def test_is_a_cache() -> None:
    assert isinstance(MemoryCache(), Cache)


async def test_a_running_instance_lives_ttl_and_a_hit_is_the_same_object() -> None:
    clock = Clock()
    c = cache(clock, ttl=1.0, terminal_ttl=60.0)
    inst = instance("running")
    assert isinstance(await c.get(KEY), Miss)
    await store(c, KEY, inst)
    assert await c.get(KEY) is inst
    clock.now += 0.999
    assert await c.get(KEY) is inst
    clock.now += 0.001
    assert isinstance(await c.get(KEY), Miss)
    assert len(c) == 0  # expired entries go when met


@pytest.mark.parametrize("status", ["complete", "errored", "terminated"])
async def test_a_terminal_instance_lives_terminal_ttl(status: str) -> None:
    clock = Clock()
    c = cache(clock, ttl=1.0, terminal_ttl=60.0)
    inst = instance(status)
    await store(c, KEY, inst)
    clock.now += 59.9
    assert await c.get(KEY) is inst
    clock.now += 0.1
    assert isinstance(await c.get(KEY), Miss)


async def test_only_complete_step_outputs_are_kept_for_terminal_ttl() -> None:
    clock = Clock()
    c = cache(clock, ttl=1.0, terminal_ttl=30.0)
    done = StepOutput(status="complete", output={"n": 1})
    key = CacheKey(SCOPE, "/step?name=s&type=step")
    await store(c, key, done)
    for status in ("running", "waiting", "errored", "future-status"):
        await store(c, CacheKey(SCOPE, f"/step?name={status}&type=step"),
                    StepOutput(status=status))
    assert len(c) == 1
    clock.now += 29.9
    assert await c.get(key) is done
    clock.now += 0.1
    assert isinstance(await c.get(key), Miss)


async def test_max_age_bounds_a_hit_and_zero_never_hits() -> None:
    clock = Clock()
    c = cache(clock, ttl=10.0)
    inst = instance()
    await store(c, KEY, inst)
    clock.now += 2.0
    assert isinstance(await c.get(KEY, max_age=2.0), Miss)
    assert await c.get(KEY, max_age=2.5) is inst
    assert isinstance(await c.get(KEY, max_age=0), Miss)
    assert await c.get(KEY) is inst  # a strict caller does not evict it for the others


async def test_age_at_put_counts_against_the_lifetime() -> None:
    clock = Clock()
    c = cache(clock, ttl=1.0)
    inst = instance()
    await store(c, KEY, inst, age=0.75)
    assert isinstance(await c.get(KEY, max_age=0.75), Miss)
    clock.now += 0.24
    assert await c.get(KEY) is inst
    clock.now += 0.01
    assert isinstance(await c.get(KEY), Miss)
    await store(c, KEY, inst, age=1.0)  # already as old as its lifetime: not kept
    assert len(c) == 0


async def test_differently_shaped_answers_never_mix() -> None:
    c = MemoryCache()
    full, simple = instance(steps=3), instance(steps=0)
    await store(c, KEY, full)
    await store(c, SIMPLE, simple)
    assert await c.get(KEY) is full
    assert await c.get(SIMPLE) is simple
    assert isinstance(await c.get(CacheKey(SCOPE, "?order=desc")), Miss)


async def test_invalidate_drops_the_scope_and_refuses_answers_begun_before() -> None:
    c = MemoryCache()
    await store(c, KEY, instance())
    await store(c, SIMPLE, instance())
    await store(c, OTHER, instance())
    before = await c.get(CacheKey(SCOPE, "?order=desc"))
    before_other = await c.get(CacheKey(OTHER.scope, "?x"))
    assert isinstance(before, Miss)
    assert isinstance(before_other, Miss)
    await c.invalidate(SCOPE)
    assert len(c) == 1
    assert isinstance(await c.get(KEY), Miss)
    assert isinstance(await c.get(OTHER), Instance)
    # A request that began before the write answers after it: not kept.
    await c.put(CacheKey(SCOPE, "?order=desc"), instance(), before)
    assert isinstance(await c.get(CacheKey(SCOPE, "?order=desc")), Miss)
    # Another instance's read is unaffected, and reads begun after the write are kept.
    await c.put(CacheKey(OTHER.scope, "?x"), instance(), before_other)
    assert isinstance(await c.get(CacheKey(OTHER.scope, "?x")), Instance)
    await store(c, KEY, instance())
    assert isinstance(await c.get(KEY), Instance)


async def test_forgotten_invalidations_refuse_every_older_lookup() -> None:
    c = MemoryCache()
    old = await c.get(KEY)
    assert isinstance(old, Miss)
    for i in range(5000):  # more scopes than it remembers one by one
        await c.invalidate(f"scope-{i}")
    await c.put(KEY, instance(), old)
    assert len(c) == 0  # conservative: it cannot tell whether SCOPE was among them
    await store(c, KEY, instance())
    assert len(c) == 1


async def test_lru_by_entries_and_a_hit_refreshes_recency() -> None:
    c = MemoryCache(max_entries=3)
    keys = [CacheKey(f"s{i}", "") for i in range(4)]
    for k in keys[:3]:
        await store(c, k, instance())
    await c.get(keys[0])  # now the most recent
    await store(c, keys[3], instance())
    assert len(c) == 3
    assert isinstance(await c.get(keys[1]), Miss)
    for k in (keys[0], keys[2], keys[3]):
        assert isinstance(await c.get(k), Instance)


async def test_lru_by_bytes_and_oversized_answers_are_not_kept() -> None:
    inst = instance(steps=5)
    size = answer_size(inst)
    assert size == len(msgspec.json.encode(inst))
    c = MemoryCache(max_bytes=size * 2 + size // 2)
    keys = [CacheKey(f"s{i}", "") for i in range(3)]
    for k in keys:
        await store(c, k, inst)
    assert len(c) == 2
    assert c.size == 2 * size
    assert isinstance(await c.get(keys[0]), Miss)
    await store(c, CacheKey("big", ""), instance(steps=50))
    assert isinstance(await c.get(CacheKey("big", "")), Miss)
    assert c.size == 2 * size
    # Replacing an entry does not count it twice.
    await store(c, keys[2], inst)
    assert (len(c), c.size) == (2, 2 * size)
    await c.invalidate("s2")
    assert (len(c), c.size) == (1, size)
    c.clear()
    assert (len(c), c.size) == (0, 0)


@pytest.mark.parametrize(
    ("kwargs", "exc", "name"),
    [
        ({"ttl": "1"}, TypeError, "ttl"),
        ({"ttl": -1}, ValueError, "ttl"),
        ({"terminal_ttl": float("inf")}, ValueError, "terminal_ttl"),
        ({"max_entries": 0}, ValueError, "max_entries"),
        ({"max_entries": 1.5}, TypeError, "max_entries"),
        ({"max_bytes": True}, TypeError, "max_bytes"),
        ({"clock": 3}, TypeError, "clock"),
    ],
)
async def test_invalid_settings_name_the_argument(
    kwargs: dict[str, Any], exc: type[Exception], name: str
) -> None:
    with pytest.raises(exc, match=name):
        MemoryCache(**kwargs)


async def test_invalid_max_age_and_age_name_the_argument() -> None:
    c = MemoryCache()
    with pytest.raises(ValueError, match="max_age"):
        await c.get(KEY, max_age=-1)
    with pytest.raises(TypeError, match="max_age"):
        await c.get(KEY, max_age="1")  # type: ignore[arg-type]
    miss = await c.get(KEY)
    assert isinstance(miss, Miss)
    with pytest.raises(ValueError, match="age"):
        await c.put(KEY, instance(), miss, age=float("nan"))


# -- the encoding -------------------------------------------------------------------


async def test_an_instance_round_trips_offsets_renames_and_unknown_steps() -> None:
    raw = make_instance("running", steps=2)
    raw["queued"] = "2026-10-30T10:00:00.120+02:00"
    raw["schedule"] = {"cron": "* * * * *", "scheduledTime": 1761811200000}
    raw["steps"].append({"type": "someNewStep", "name": "n", "extra": [1, 2.5, None]})
    raw["steps"].append({"type": 7, "name": "odd"})
    inst = proto.decode_instance(msgspec.json.encode({"success": True, "result": raw}))
    assert isinstance(inst.steps[2], UnknownStep)
    body = encode_answer(inst)
    assert body is not None
    back = decode_answer(body, Instance)
    assert back == inst
    assert back.queued is not None
    assert back.queued.utcoffset() == timedelta(hours=2)
    assert back.steps[2] == UnknownStep(type="someNewStep", fields=raw["steps"][2])
    assert back.steps[3] == UnknownStep(type="", fields=raw["steps"][3])
    assert back.schedule is not None
    assert back.schedule.scheduled_time == 1761811200000


async def test_an_unknown_step_a_decode_would_not_reproduce_is_not_encoded() -> None:
    fake = UnknownStep(type="step", fields={"type": "step", "name": "x"})
    inst = Instance(status="running", steps=[fake])
    assert encode_answer(inst) is None


async def test_a_step_output_round_trips() -> None:
    out = StepOutput(status="complete", output={"rows": [1, 2], "at": "x"}, event_type="e")
    body = encode_answer(out)
    assert body is not None
    assert decode_answer(body, StepOutput) == out


async def test_datetimes_keep_their_zone() -> None:
    when = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=timezone(timedelta(hours=-5)))
    inst = Instance(status="complete", start=when, end=datetime(2026, 1, 2, tzinfo=UTC),
                    steps=[StepRun(name="a", start=when)])
    body = encode_answer(inst)
    assert body is not None
    back = decode_answer(body, Instance)
    assert back == inst
    assert back.start is not None
    assert back.start.tzinfo == when.tzinfo
