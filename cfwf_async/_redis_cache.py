"""RedisCache: one answer cache for every process and machine sharing a quota.

Service replicas that share one Cloudflare user share its 1,200 requests per 5
minutes. With a :class:`RedisCache` an answer fetched by one process is reused by all::

    from cfwf_async import WorkflowsSession
    from cfwf_async.redis import RedisCache

    async with RedisCache.from_url("redis://:pw@redis.internal:6379/0",
                                   ttl=1.0, terminal_ttl=60.0) as cache, \\
            WorkflowsSession(cache=cache) as session:
        inst = await session.get_instance("checkout", "order-981")

Lifetimes, ``max_age`` and what is kept follow :mod:`cfwf_async.cache`. Answers are
stored as the API's own JSON (msgspec; a 10-step instance is 3.8 KB) with a small
header, and every key expires on the Redis server (``PX``): nothing is left behind.
Caches with the same ``prefix`` on one Redis share entries, whatever their ``ttl``:
each reader applies its own lifetimes, measured from when the answer was fetched.

Keys, for an instance ``scope`` (hashed, so ids of any length make short keys)::

    cfwf_async:cache:{<scope hash>}:gen            the instance's generation
    cfwf_async:cache:{<scope hash>}:<target hash>  one answer

A write to an instance gives it a new random generation; answers stored under the old
one are no longer served, and an answer whose lookup saw the old one is not stored
(both checked atomically in Lua). The braces keep an instance's keys in one Redis
Cluster slot.

Misses are shared too. A process that finds no usable answer takes a short lease on it
(``<entry>:fill``, ``SET NX``) and sends the request; a process that finds the lease
taken waits, up to ``fill_wait`` seconds, for the answer to be stored (a message on
``<prefix>filled`` says so), then reads it under its own ``max_age``. Without this,
every process whose lookup came in while the first request was on its way would send
its own. A lease is given back when its request fails or its answer is not kept, and
expires by itself after ``fill_wait`` seconds. A read waits for one fetch at most: when
that one ends without an answer to read, or ``fill_wait`` has passed, it sends its own
request.

When Redis cannot be reached the cache steps aside: reads go to the API, a warning is
logged once, and Redis is tried again after ``retry_interval`` seconds. Writes made
meanwhile are replayed to Redis when it answers again; until then, that instance is
never served from the cache.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import secrets
import time
from collections.abc import Callable
from typing import Any, Final, NamedTuple, cast

import anyio

try:
    import redis.asyncio as aioredis
    from redis.exceptions import RedisError
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        'cfwf_async.redis needs redis-py: pip install "cfwf_async[redis]"'
    ) from exc

from . import _protocol as proto
from ._redis_common import as_text, client_from_url, describe, scrub
from ._resource import AsyncResource
from .cache import (
    CacheKey,
    CacheValue,
    Miss,
    check_lifetimes,
    check_max_age,
    decode_answer,
    encode_answer,
    lifetime,
)
from .models import TERMINAL_STATUSES, Instance, StepOutput

__all__ = ["RedisCache"]

logger = logging.getLogger("cfwf_async.redis")

# KEYS: generation, entry, fill lease. ARGV: the oldest answer (ms) usable of a live
# instance, of a terminal instance or step output; a lease token ('' to take none);
# lease PX. -> {generation or '', entry or '', entry's PTTL, state[, lease PTTL]}, state
# 0: nobody is fetching, 1: the lease is ours now, 2: another holds it. An entry that
# is there but too old for this reader is a miss here, so the lease can be taken in the
# same round trip.
_GET: Final = """
local gen = redis.call('GET', KEYS[1]) or ''
local value = redis.call('GET', KEYS[2])
if value and gen ~= '' and string.sub(value, 1, 16) == gen then
  local pttl = redis.call('PTTL', KEYS[2])
  local colon = string.find(value, ':', 19, true)
  local life = colon and tonumber(string.sub(value, 19, colon - 1))
  local limit = tonumber(string.sub(value, 18, 18) == 'I' and ARGV[1] or ARGV[2])
  if life and pttl >= 0 and life - pttl < limit then return {gen, value, pttl, 0} end
end
if ARGV[3] ~= '' and redis.call('SET', KEYS[3], ARGV[3], 'NX', 'PX', ARGV[4]) then
  return {gen, '', -2, 1}
end
local left = redis.call('PTTL', KEYS[3])
if left > 0 then return {gen, '', -2, 2, left} end
return {gen, '', -2, 0}
"""

# KEYS: generation, entry, fill lease. ARGV: generation seen at lookup ('' for none), a
# fresh generation, payload, entry PX, generation PX, channel, lease token ('' none).
# Stores only if the generation is still the one seen; keeps the generation key alive
# at least as long as the entry; gives back our lease and tells waiting readers.
_PUT: Final = """
local stored = 1
local gen = redis.call('GET', KEYS[1])
if not gen then
  if ARGV[1] ~= '' then stored = 0 else
    gen = ARGV[2]
    redis.call('SET', KEYS[1], gen, 'PX', ARGV[5])
  end
elseif gen ~= ARGV[1] then
  stored = 0
elseif redis.call('PTTL', KEYS[1]) < tonumber(ARGV[5]) then
  redis.call('PEXPIRE', KEYS[1], ARGV[5])
end
if stored == 1 then redis.call('SET', KEYS[2], gen .. ARGV[3], 'PX', ARGV[4]) end
if ARGV[7] ~= '' and redis.call('GET', KEYS[3]) == ARGV[7] then redis.call('DEL', KEYS[3]) end
if stored == 1 or ARGV[7] ~= '' then redis.call('PUBLISH', ARGV[6], KEYS[2]) end
return stored
"""

# KEYS: entry, fill lease. ARGV: channel, lease token. Gives the lease back (a request
# that failed, an answer not kept) so that readers waiting for it go ahead at once.
_RELEASE: Final = """
if redis.call('GET', KEYS[2]) == ARGV[2] then redis.call('DEL', KEYS[2]) end
redis.call('PUBLISH', ARGV[1], KEYS[1])
return 1
"""

# KEYS[1] generation; ARGV: a fresh generation, least PX. Never shortens the key's life,
# so it outlives every entry (and every lookup) of the generations before it.
_INVALIDATE: Final = """
local px = tonumber(ARGV[2])
local left = redis.call('PTTL', KEYS[1])
if left > px then px = left end
redis.call('SET', KEYS[1], ARGV[1], 'PX', px)
return 1
"""

# The scripts above read an entry as generation (16 bytes), format, kind, lifetime in
# ms, ':' and the body: they hard-code these offsets.
_GEN_LEN: Final = 16
_FORMAT: Final = b"1"
_KINDS: Final[dict[bytes, type[CacheValue]]] = {
    b"I": Instance, b"T": Instance, b"S": StepOutput,
}
#: A lookup older than this stores nothing: an invalidation's generation key lives at
#: least _GEN_MIN_LIFE, so a request this slow could have outlived the key.
_MAX_LOOKUP_AGE: Final = 600.0
_GEN_MIN_LIFE: Final = 900.0
#: Writes remembered while Redis is away, to replay when it answers again.
_PENDING_MAX: Final = 10_000
#: The longest ``fill_wait``: a read never waits longer than this for another process.
_MAX_FILL_WAIT: Final = 60.0


class _Fills:
    """Wake-ups for readers waiting on another process's request (one subscription).

    The subscription starts with the first wait. A message published before it is in
    place is lost, so when it is (``ready``) every waiter looks again; should it fail
    (Redis went away), the waiters look again at once too, and the next wait starts it
    again.
    """

    def __init__(self, client: aioredis.Redis, channel: str) -> None:
        self._client = client
        self._channel: Final = channel
        self._waiters: dict[str, set[asyncio.Event]] = {}
        self._task: asyncio.Task[None] | None = None
        self.ready = asyncio.Event()  # set once subscribed (a new one per subscription)

    def watch(self, entry_key: str) -> asyncio.Event:
        """An event set when ``entry_key`` is stored or given up; :meth:`unwatch` it."""
        event = asyncio.Event()
        self._waiters.setdefault(entry_key, set()).add(event)
        return event

    def unwatch(self, entry_key: str, event: asyncio.Event) -> None:
        waiting = self._waiters.get(entry_key)
        if waiting is not None:
            waiting.discard(event)
            if not waiting:
                del self._waiters[entry_key]

    def listen(self) -> None:
        """Subscribe, unless a subscription of this event loop is already running."""
        task = self._task
        loop = asyncio.get_running_loop()
        if task is None or task.done() or task.get_loop() is not loop:
            if self.ready.is_set():
                self.ready = asyncio.Event()
            self._task = loop.create_task(self._listen(self.ready))

    async def aclose(self) -> None:
        task, self._task = self._task, None
        if task is not None and not task.done() and task.get_loop() is asyncio.get_running_loop():
            task.cancel()
            await asyncio.wait([task])

    async def _listen(self, ready: asyncio.Event) -> None:
        pubsub = self._client.pubsub()
        try:
            await pubsub.subscribe(self._channel)
            while True:
                message = await pubsub.get_message(timeout=None)
                if message is None:
                    continue
                if message.get("type") == "subscribe":
                    ready.set()
                    self._wake_all()
                    continue
                for event in self._waiters.get(as_text(message.get("data")) or "", ()):
                    event.set()
        except (RedisError, OSError) as exc:
            logger.debug("the shared cache's subscription ended: %s", type(exc).__name__)
            # Nobody will be told of a store now: let the waiters look again at once.
            self._wake_all()
        finally:
            with anyio.CancelScope(shield=True), contextlib.suppress(RedisError, OSError):
                await pubsub.aclose()  # type: ignore[no-untyped-call]


    def _wake_all(self) -> None:
        for events in self._waiters.values():
            for event in events:
                event.set()


class _Lookup(NamedTuple):
    """What the lookup script answered."""

    gen: bytes
    value: bytes
    pttl: int
    state: int
    lease_left: float


_NO_LEASE, _OUR_LEASE, _THEIR_LEASE = 0, 1, 2


class RedisCache(AsyncResource):
    """A :class:`~cfwf_async.cache.Cache` held in Redis, shared by processes.

    ``client`` is a caller's :class:`redis.asyncio.Redis`: used, never closed by us;
    :meth:`from_url` builds and owns one instead (closed by :meth:`aclose` or
    ``async with``). ``ttl`` and ``terminal_ttl`` are as for
    :class:`~cfwf_async.MemoryCache`; ``prefix`` starts every key. ``fill_wait`` is
    how long a read waits for another process already fetching the same answer before
    it sends its own request (0: never waits). ``clock`` is for tests.
    """

    def __init__(
        self,
        client: aioredis.Redis,
        *,
        ttl: float = 1.0,
        terminal_ttl: float = 60.0,
        prefix: str = "cfwf_async:cache:",
        retry_interval: float = 5.0,
        fill_wait: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not isinstance(client, aioredis.Redis):
            raise TypeError("client must be a redis.asyncio.Redis")
        self.ttl, self.terminal_ttl = check_lifetimes(ttl, terminal_ttl)
        self.prefix: Final = proto.check_str("prefix", prefix, max_len=200)
        self.retry_interval: Final = proto.check_timeout("retry_interval", retry_interval)
        self.fill_wait: Final = proto.check_number("fill_wait", fill_wait,
                                                   maximum=_MAX_FILL_WAIT)
        self._clock: Final = clock
        self._client = client
        self._owns_client = False
        self._get = client.register_script(_GET)
        self._put = client.register_script(_PUT)
        self._release = client.register_script(_RELEASE)
        self._invalidate = client.register_script(_INVALIDATE)
        self._lease_ms: Final = max(1, round(self.fill_wait * 1000))
        self._channel: Final = self.prefix + "filled"
        self._fills: Final = _Fills(client, self._channel)
        self._down_until: float | None = None  # set while Redis is skipped
        self._pending: dict[str, None] = {}  # scopes written while Redis was away

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        ttl: float = 1.0,
        terminal_ttl: float = 60.0,
        prefix: str = "cfwf_async:cache:",
        retry_interval: float = 5.0,
        fill_wait: float = 5.0,
        **redis_options: Any,
    ) -> RedisCache:
        """Connect to the Redis at ``url`` (``redis://``, ``rediss://`` or ``unix://``).

        The client is ours. By default it gives up on a dead server within about 2
        seconds (connect and read timeouts of 1 s, one reconnect); ``redis_options`` go
        to :func:`redis.asyncio.from_url` and override those defaults.
        """
        client = client_from_url(url, redis_options)
        self = cls(client, ttl=ttl, terminal_ttl=terminal_ttl, prefix=prefix,
                   retry_interval=retry_interval, fill_wait=fill_wait)
        self._owns_client = True
        return self

    def __repr__(self) -> str:
        return (
            f"RedisCache(ttl={self.ttl:g}, terminal_ttl={self.terminal_ttl:g}, "
            f"fill_wait={self.fill_wait:g}, prefix={self.prefix!r}, redis={self._where()!r})"
        )

    async def aclose(self) -> None:
        """Close the Redis client if :meth:`from_url` made it (a caller's stays open)."""
        await self._fills.aclose()
        if self._owns_client:
            self._owns_client = False
            await self._client.aclose()

    # -- the Cache protocol ----------------------------------------------------------

    async def get(self, key: CacheKey, *, max_age: float | None = None) -> CacheValue | Miss:
        """The shared answer for ``key`` if young enough; else a miss (Redis down too).

        When another process is fetching the answer, wait for it (see the module). A
        miss may hold the lease on fetching it: hand it to :meth:`put`, or to
        :meth:`release` when there is nothing to store (a session does both).
        """
        max_age = check_max_age(max_age)
        if not await self._usable() or key.scope in self._pending:
            return Miss(None)
        keys = self._keys(key)
        share = self.fill_wait > 0 and max_age != 0
        lease = secrets.token_hex(8) if share else ""
        event = self._fills.watch(keys[1]) if share else None
        try:
            found = await self._look_up(keys, max_age, lease)
            if found is not None and found.state == _THEIR_LEASE and event is not None:
                found = await self._wait_for_fill(keys, max_age, event, found.lease_left)
        finally:
            if event is not None:
                self._fills.unwatch(keys[1], event)
        if found is None:
            return Miss(None)
        miss = Miss((found.gen, self._clock(), lease if found.state == _OUR_LEASE else ""))
        if not found.value:
            return miss
        return self._hit(found.value[_GEN_LEN:], found.pttl, max_age) or miss

    async def _wait_for_fill(
        self, keys: tuple[str, str, str], max_age: float | None, event: asyncio.Event,
        left: float,
    ) -> _Lookup | None:
        """Look again at each wake-up until the answer is there, nobody is fetching it
        any more, or ``fill_wait`` has passed; never taking the lease (a read waits for
        one fetch at most, then sends its own request)."""
        # ``event`` was watched before the first lookup: a store in between is not missed.
        self._fills.listen()
        deadline = anyio.current_time() + self.fill_wait
        while True:
            with anyio.move_on_after(min(left, deadline - anyio.current_time())):
                await event.wait()
            event.clear()
            found = await self._look_up(keys, max_age, "")
            if found is None or found.state != _THEIR_LEASE or anyio.current_time() >= deadline:
                return found
            left = found.lease_left

    async def _look_up(
        self, keys: tuple[str, str, str], max_age: float | None, lease: str
    ) -> _Lookup | None:
        """One run of the lookup script; None if Redis failed."""
        live = self.ttl if max_age is None else min(self.ttl, max_age)
        done = self.terminal_ttl if max_age is None else min(self.terminal_ttl, max_age)
        try:
            reply = await self._get(keys=list(keys), args=[
                round(live * 1000), round(done * 1000), lease, self._lease_ms,
            ])
        except (RedisError, OSError) as exc:
            self._failed(exc)
            return None
        self._recovered()
        left = int(reply[4]) / 1000 if len(reply) > 4 else 0.0
        return _Lookup(_as_bytes(reply[0]), _as_bytes(reply[1]), int(reply[2]),
                       int(reply[3]), max(left, 0.0))

    async def put(
        self, key: CacheKey, value: CacheValue, miss: Miss, *, age: float = 0.0
    ) -> None:
        """Store ``value`` unless the instance was written since ``miss``'s lookup."""
        age = proto.check_number("age", age)
        token = miss.token
        if not isinstance(token, tuple) or self._clock() - token[1] > _MAX_LOOKUP_AGE:
            await self.release(key, miss)
            return
        payload, px = self._payload(value, age)
        if payload is None or not await self._usable():
            await self.release(key, miss)
            return
        args = [token[0], secrets.token_hex(_GEN_LEN // 2), payload, px, px + 1000,
                self._channel, token[2]]
        try:
            await self._put(keys=list(self._keys(key)), args=args)
        except (RedisError, OSError) as exc:
            self._failed(exc)

    async def release(self, key: CacheKey, miss: Miss) -> None:
        """Give back the lease ``miss`` holds, if any: its request failed, or its answer
        is not kept, so the readers waiting for it go ahead now."""
        token = miss.token
        if not isinstance(token, tuple) or not token[2]:
            return
        _, entry_key, lease_key = self._keys(key)
        try:
            await self._release(keys=[entry_key, lease_key], args=[self._channel, token[2]])
        except (RedisError, OSError) as exc:
            self._failed(exc)

    async def invalidate(self, scope: str) -> None:
        """Give ``scope`` a new generation: its stored answers are no longer served."""
        sent = await self._usable() and await self._send_invalidation(scope)
        if not sent and len(self._pending) < _PENDING_MAX:
            self._pending[scope] = None

    # -- machinery -------------------------------------------------------------------

    def _keys(self, key: CacheKey) -> tuple[str, str, str]:
        """The generation, entry and fill-lease keys of ``key``."""
        tag = hashlib.blake2b(key.scope.encode(), digest_size=16).hexdigest()
        target = hashlib.blake2b(key.target.encode(), digest_size=16).hexdigest()
        base = f"{self.prefix}{{{tag}}}:"
        return base + "gen", base + target, base + target + ":fill"

    def _payload(self, value: CacheValue, age: float) -> tuple[bytes | None, int]:
        """The stored form of ``value`` and its PX, or None if it is not to be kept."""
        life = lifetime(value, self.ttl, self.terminal_ttl)
        if life is None or age >= life:
            return None, 0
        body = encode_answer(value)
        life_ms = max(1, round(life * 1000))
        px = life_ms - round(age * 1000)
        if body is None or px <= 0:
            return None, 0
        kind = b"I" if isinstance(value, Instance) else b"S"
        if kind == b"I" and cast(Instance, value).status in TERMINAL_STATUSES:
            kind = b"T"
        return _FORMAT + kind + b"%d:" % life_ms + body, px

    def _hit(self, stored: bytes, pttl: int, max_age: float | None) -> CacheValue | None:
        """Decode an entry of the current generation if it is young enough for us."""
        kind_type = _KINDS.get(stored[1:2])
        head, sep, body = stored[2:].partition(b":")
        if stored[:1] != _FORMAT or kind_type is None or not sep or not head.isdigit():
            return None
        age = (int(head) - pttl) / 1000
        limit = self.ttl if stored[1:2] == b"I" else self.terminal_ttl
        if max_age is not None:
            limit = min(limit, max_age)
        if pttl < 0 or age >= limit:
            return None
        try:
            return decode_answer(body, kind_type)
        except Exception:
            return None  # not written by this version: a miss, never an error

    async def _send_invalidation(self, scope: str) -> bool:
        gen_key = self._keys(CacheKey(scope, ""))[0]
        life_ms = round(max(_GEN_MIN_LIFE, self.terminal_ttl) * 1000) + 1000
        try:
            await self._invalidate(
                keys=[gen_key], args=[secrets.token_hex(_GEN_LEN // 2), life_ms]
            )
        except (RedisError, OSError) as exc:
            self._failed(exc)
            return False
        return True

    async def _usable(self) -> bool:
        """False while Redis is skipped; after the pause, replays writes made meanwhile."""
        if self._down_until is None:
            return True
        if self._clock() < self._down_until:
            return False
        for scope in list(self._pending):
            if not await self._send_invalidation(scope):
                return False
            del self._pending[scope]
        return True

    def _failed(self, exc: BaseException) -> None:
        if self._down_until is None:
            logger.warning(
                "Redis at %s cannot be reached (%s); the shared cache is skipped and "
                "calls go to the API until it answers again",
                self._where(), self._reason(exc),
            )
        self._down_until = self._clock() + self.retry_interval

    def _recovered(self) -> None:
        if self._down_until is not None:
            self._down_until = None
            logger.warning("Redis at %s answers again; the shared cache is back", self._where())

    def _where(self) -> str:
        return describe(self._client.connection_pool.connection_kwargs)

    def _reason(self, exc: BaseException) -> str:
        text = f"{type(exc).__name__}: {exc}"
        password = as_text(self._client.connection_pool.connection_kwargs.get("password"))
        return scrub(text[:300], password)


def _as_bytes(value: object) -> bytes:
    """A reply as bytes, whether or not the client decodes responses."""
    if isinstance(value, bytes):
        return value
    return value.encode() if isinstance(value, str) else b""
