"""How a session's reads share requests and answers: coalescing, the cache, writes.

:class:`Reads` sits between :class:`~cfwf_async.WorkflowsSession`'s read calls and its
request loop. For each read it tries, in order:

1. the cache (only for ``get_instance`` and ``get_step_output``), within the caller's
   ``max_age``; callers looking up one key at once share one lookup;
2. a request already in flight for the same key (same base URL, account, path and
   query) that began less than ``max_age`` ago, or else the cache's ``ttl``;
3. its own request (the session's limiter, retries and retry budget: only this one
   pays), whose answer is stored in the cache, dated from when the request was sent.

A streamed step output is never shared: callers that joined a request that turned out
to be a stream send their own. A write to an instance (:meth:`Reads.note_write`)
detaches the requests in flight for it, so no later read joins one that began before
the write, and drops its cache entries before any later read of it looks there.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping
from contextlib import aclosing
from typing import Final, Protocol, TypeVar, cast, runtime_checkable

import anyio

from . import _protocol as proto
from ._coalesce import Coalescer, Unshared
from .cache import Cache, CacheKey, CacheValue, Miss
from .models import Instance
from .streaming import StepStream

__all__ = ["Reads"]

logger = logging.getLogger("cfwf_async")

T = TypeVar("T")

#: How much longer each watch_instance poll waits than the one before.
_POLL_BACKOFF: Final = 1.25
#: The target a shared wait_for_instance poll loop runs under, in its instance's scope.
WAIT_TARGET: Final = "#wait"


@runtime_checkable
class _SharesMisses(Protocol):
    """A cache that lets other processes wait for a miss's request (``RedisCache``):
    told when that request brings nothing to keep, so they need not wait it out."""

    async def release(self, key: CacheKey, miss: Miss) -> None: ...


class _WaitState:
    """The last status a shared poll loop saw, and how many waiters read it."""

    __slots__ = ("status", "users")

    def __init__(self) -> None:
        self.status = "unknown"
        self.users = 0


class Reads:
    """A session's coalescer, cache and pending invalidations (see the module)."""

    def __init__(self, base_url: str, *, coalesce: object, cache: object) -> None:
        if not isinstance(coalesce, bool):
            raise TypeError(f"coalesce must be a bool, got {type(coalesce).__name__}")
        if cache is not None and not isinstance(cache, Cache):
            raise TypeError("cache must be a Cache (a MemoryCache, a RedisCache) or None")
        self.base_url: Final = base_url
        self.cache: Final[Cache | None] = cache
        self.flights: Final[Coalescer[CacheKey, object] | None] = (
            Coalescer() if coalesce else None
        )
        # Concurrent lookups of one key (with one max_age) share one trip to the cache:
        # with a remote cache, callers that each paid a round trip would all miss while
        # the first answer is still on its way, and then each send its own request.
        self.lookups: Final[Coalescer[tuple[CacheKey, float | None], object] | None] = (
            Coalescer() if coalesce and cache is not None else None
        )
        self._invalidating: dict[str, asyncio.Task[None]] = {}
        self._releasing: set[asyncio.Task[None]] = set()
        self._waits: dict[CacheKey, _WaitState] = {}

    def key(self, scope_path: str, path: str, query: Mapping[str, str]) -> CacheKey:
        """The key of a GET of ``path`` (which starts with ``scope_path``) and ``query``."""
        target = path[len(scope_path):]
        if query:
            target += "?" + proto.query_string(query)
        return CacheKey(self.base_url + scope_path, target)

    async def read(
        self,
        key: CacheKey,
        path: str,
        send: Callable[[], Awaitable[T]],
        kind: type[CacheValue] | None,
        *,
        max_age: float | None,
    ) -> T:
        """``send()``'s answer, or a cached or shared one no older than allowed.

        ``kind`` is the model the cache may hold for ``key`` (None: never cached).
        """
        cache = self.cache if kind is not None else None
        miss: Miss | None = None
        if cache is not None:
            await self._settled(key.scope)
            found = await self._look_up(cache, key, max_age)
            if isinstance(found, Miss):
                miss = found
            elif kind is not None and isinstance(found, kind):
                if logger.isEnabledFor(logging.DEBUG):
                    logger.debug("GET %s -> from the cache", path)
                return cast(T, found)
        sent = False

        async def start() -> T | Unshared[T]:
            nonlocal sent
            sent = True
            began = time.monotonic()
            try:
                result = await send()
            except BaseException:
                self._release(key, miss)
                raise
            if miss is not None and cache is not None and isinstance(result, kind or ()):
                await cache.put(key, result, miss, age=time.monotonic() - began)
            else:
                self._release(key, miss)
            if isinstance(result, StepStream):
                return Unshared(result, result.aclose)
            return result

        if self.flights is None or max_age == 0:
            answer = await start()
            return cast(T, answer.value) if isinstance(answer, Unshared) else answer
        bound = max_age if max_age is not None else (None if self.cache is None else self.cache.ttl)
        try:
            return cast(T, await self.flights.run(key, start, max_age=bound))
        finally:
            if not sent and logger.isEnabledFor(logging.DEBUG):
                logger.debug("GET %s joined a request in flight", path)

    async def _look_up(self, cache: Cache, key: CacheKey, max_age: float | None) -> object:
        """``cache.get``, shared by the callers asking for the same key at once."""
        if self.lookups is None or max_age == 0:
            return await cache.get(key, max_age=max_age)

        async def get() -> object:
            return await cache.get(key, max_age=max_age)

        return await self.lookups.run((key, max_age), get)

    async def wait(
        self,
        key: CacheKey,
        polls: AsyncGenerator[Instance, None],
        final: Callable[[], Awaitable[Instance]],
        deadline: float | None,
    ) -> tuple[Instance | None, str]:
        """``final()`` once ``polls`` saw a terminal status, or None at the deadline; and
        the last status seen. Waiters on one ``key`` share the first one's polls (the
        others' ``polls`` are never started)."""
        state = self._waits.get(key)
        if state is None:
            state = self._waits[key] = _WaitState()
        state.users += 1

        async def until_done() -> Instance:
            async with aclosing(polls):
                async for polled in polls:
                    state.status = polled.status
                    if polled.is_terminal:
                        break
            return await final()

        try:
            with anyio.move_on_after(deadline):
                if self.flights is None:
                    return await until_done(), state.status
                return cast(Instance, await self.flights.run(key, until_done)), state.status
            return None, state.status
        finally:
            state.users -= 1
            if not state.users:
                del self._waits[key]

    def note_write(self, scope_path: str, listing_path: str) -> None:
        """A write to the instance at ``scope_path`` ended (whatever its outcome)."""
        scope = self.base_url + scope_path
        listing = self.base_url + listing_path
        if self.flights is not None:
            self.flights.forget(lambda k: k.scope == scope or k.scope == listing)
        if self.lookups is not None:
            self.lookups.forget(lambda k: k[0].scope == scope)
        if self.cache is not None:
            earlier = self._invalidating.get(scope)
            task = asyncio.get_running_loop().create_task(
                self._invalidate(self.cache, scope, earlier)
            )
            self._invalidating[scope] = task
            task.add_done_callback(lambda t: self._settle(scope, t))

    async def aclose(self) -> None:
        """Let pending invalidations and releases finish (a shared cache must see them)."""
        with anyio.CancelScope(shield=True):
            while self._invalidating or self._releasing:
                await asyncio.wait([*self._invalidating.values(), *self._releasing])

    # -- machinery ---------------------------------------------------------------

    async def _settled(self, scope: str) -> None:
        """Wait (without cancelling it) for an invalidation of ``scope`` under way."""
        task = self._invalidating.get(scope)
        if task is not None:
            await asyncio.wait([task])

    @staticmethod
    async def _invalidate(cache: Cache, scope: str, earlier: asyncio.Task[None] | None) -> None:
        if earlier is not None:
            await asyncio.wait([earlier])
        try:
            await cache.invalidate(scope)
        except Exception as exc:  # a cache must not raise; never let it fail a write
            logger.warning(
                "the cache failed to drop an instance's entries: %s", type(exc).__name__
            )

    def _release(self, key: CacheKey, miss: Miss | None) -> None:
        """Tell a cache that shares misses that ``miss``'s request brought nothing to
        keep. In a task of its own: it also runs when the request was cancelled."""
        cache = self.cache
        if miss is None or not isinstance(cache, _SharesMisses):
            return
        task = asyncio.get_running_loop().create_task(self._released(cache, key, miss))
        self._releasing.add(task)
        task.add_done_callback(self._releasing.discard)

    @staticmethod
    async def _released(cache: _SharesMisses, key: CacheKey, miss: Miss) -> None:
        try:
            await cache.release(key, miss)
        except Exception as exc:  # a cache must not raise; never let it fail a read
            logger.warning("the cache failed to give back a miss: %s", type(exc).__name__)

    def _settle(self, scope: str, task: asyncio.Task[None]) -> None:
        if self._invalidating.get(scope) is task:
            del self._invalidating[scope]


async def poll(
    get: Callable[[], Awaitable[Instance]], interval: float, ceiling: float
) -> AsyncGenerator[Instance, None]:
    """``get()`` now, then ``interval`` seconds later, each wait a quarter longer up to
    ``ceiling``, until an answer is terminal (yielded last)."""
    while True:
        polled = await get()
        yield polled
        if polled.is_terminal:
            return
        await anyio.sleep(interval)
        interval = min(interval * _POLL_BACKOFF, ceiling)
