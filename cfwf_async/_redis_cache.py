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

When Redis cannot be reached the cache steps aside: reads go to the API, a warning is
logged once, and Redis is tried again after ``retry_interval`` seconds. Writes made
meanwhile are replayed to Redis when it answers again; until then, that instance is
never served from the cache.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import time
from collections.abc import Callable
from typing import Any, Final, cast

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

# KEYS[1] generation, KEYS[2] entry -> {generation or '', entry or '', entry's PTTL}.
_GET: Final = """
local gen = redis.call('GET', KEYS[1]) or ''
local value = redis.call('GET', KEYS[2])
if not value then return {gen, '', -2} end
return {gen, value, redis.call('PTTL', KEYS[2])}
"""

# KEYS[1] generation, KEYS[2] entry; ARGV: generation seen at lookup ('' for none), a
# fresh generation, payload, entry PX, generation PX. Stores only if the generation is
# still the one seen; keeps the generation key alive at least as long as the entry.
_PUT: Final = """
local gen = redis.call('GET', KEYS[1])
if not gen then
  if ARGV[1] ~= '' then return 0 end
  gen = ARGV[2]
  redis.call('SET', KEYS[1], gen, 'PX', ARGV[5])
elseif gen ~= ARGV[1] then
  return 0
elseif redis.call('PTTL', KEYS[1]) < tonumber(ARGV[5]) then
  redis.call('PEXPIRE', KEYS[1], ARGV[5])
end
redis.call('SET', KEYS[2], gen .. ARGV[3], 'PX', ARGV[4])
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


class RedisCache(AsyncResource):
    """A :class:`~cfwf_async.cache.Cache` held in Redis, shared by processes.

    ``client`` is a caller's :class:`redis.asyncio.Redis`: used, never closed by us;
    :meth:`from_url` builds and owns one instead (closed by :meth:`aclose` or
    ``async with``). ``ttl`` and ``terminal_ttl`` are as for
    :class:`~cfwf_async.MemoryCache`; ``prefix`` starts every key. ``clock`` is for
    tests.
    """

    def __init__(
        self,
        client: aioredis.Redis,
        *,
        ttl: float = 1.0,
        terminal_ttl: float = 60.0,
        prefix: str = "cfwf_async:cache:",
        retry_interval: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not isinstance(client, aioredis.Redis):
            raise TypeError("client must be a redis.asyncio.Redis")
        self.ttl, self.terminal_ttl = check_lifetimes(ttl, terminal_ttl)
        self.prefix: Final = proto.check_str("prefix", prefix, max_len=200)
        self.retry_interval: Final = proto.check_timeout("retry_interval", retry_interval)
        self._clock: Final = clock
        self._client = client
        self._owns_client = False
        self._get = client.register_script(_GET)
        self._put = client.register_script(_PUT)
        self._invalidate = client.register_script(_INVALIDATE)
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
        **redis_options: Any,
    ) -> RedisCache:
        """Connect to the Redis at ``url`` (``redis://``, ``rediss://`` or ``unix://``).

        The client is ours. By default it gives up on a dead server within about 2
        seconds (connect and read timeouts of 1 s, one reconnect); ``redis_options`` go
        to :func:`redis.asyncio.from_url` and override those defaults.
        """
        client = client_from_url(url, redis_options)
        self = cls(client, ttl=ttl, terminal_ttl=terminal_ttl, prefix=prefix,
                   retry_interval=retry_interval)
        self._owns_client = True
        return self

    def __repr__(self) -> str:
        return (
            f"RedisCache(ttl={self.ttl:g}, terminal_ttl={self.terminal_ttl:g}, "
            f"prefix={self.prefix!r}, redis={self._where()!r})"
        )

    async def aclose(self) -> None:
        """Close the Redis client if :meth:`from_url` made it (a caller's stays open)."""
        if self._owns_client:
            self._owns_client = False
            await self._client.aclose()

    # -- the Cache protocol ----------------------------------------------------------

    async def get(self, key: CacheKey, *, max_age: float | None = None) -> CacheValue | Miss:
        """The shared answer for ``key`` if young enough; else a miss (Redis down too)."""
        max_age = check_max_age(max_age)
        if not await self._usable() or key.scope in self._pending:
            return Miss(None)
        gen_key, entry_key = self._keys(key)
        try:
            gen, value, pttl = await self._get(keys=[gen_key, entry_key])
        except (RedisError, OSError) as exc:
            self._failed(exc)
            return Miss(None)
        self._recovered()
        gen = _as_bytes(gen)
        miss = Miss((gen, self._clock()))
        value = _as_bytes(value)
        if not value or value[:_GEN_LEN] != gen:
            return miss
        return self._hit(value[_GEN_LEN:], int(pttl), max_age) or miss

    async def put(
        self, key: CacheKey, value: CacheValue, miss: Miss, *, age: float = 0.0
    ) -> None:
        """Store ``value`` unless the instance was written since ``miss``'s lookup."""
        age = proto.check_number("age", age)
        token = miss.token
        if not isinstance(token, tuple) or self._clock() - token[1] > _MAX_LOOKUP_AGE:
            return
        life = lifetime(value, self.ttl, self.terminal_ttl)
        if life is None or age >= life:
            return
        body = encode_answer(value)
        if body is None or not await self._usable():
            return
        kind = b"I" if isinstance(value, Instance) else b"S"
        if kind == b"I" and cast(Instance, value).status in TERMINAL_STATUSES:
            kind = b"T"
        life_ms = max(1, round(life * 1000))
        px = life_ms - round(age * 1000)
        if px <= 0:
            return
        payload = _FORMAT + kind + b"%d:" % life_ms + body
        args = [token[0], secrets.token_hex(_GEN_LEN // 2), payload, px, px + 1000]
        try:
            await self._put(keys=list(self._keys(key)), args=args)
        except (RedisError, OSError) as exc:
            self._failed(exc)

    async def invalidate(self, scope: str) -> None:
        """Give ``scope`` a new generation: its stored answers are no longer served."""
        sent = await self._usable() and await self._send_invalidation(scope)
        if not sent and len(self._pending) < _PENDING_MAX:
            self._pending[scope] = None

    # -- machinery -------------------------------------------------------------------

    def _keys(self, key: CacheKey) -> tuple[str, str]:
        tag = hashlib.blake2b(key.scope.encode(), digest_size=16).hexdigest()
        target = hashlib.blake2b(key.target.encode(), digest_size=16).hexdigest()
        base = f"{self.prefix}{{{tag}}}:"
        return base + "gen", base + target

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
