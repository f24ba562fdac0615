"""Caches for answers that may be reused for a while: :class:`MemoryCache` and the protocol.

Cloudflare allows 1,200 API requests per 5 minutes per user, shared by every service of
that user. A cache lets a session answer a repeated read without a request::

    from cfwf_async import MemoryCache, WorkflowsSession

    cache = MemoryCache(ttl=1.0, terminal_ttl=60.0)
    async with WorkflowsSession(cache=cache) as session:
        inst = await session.get_instance("checkout", "order-981")  # a request
        inst = await session.get_instance("checkout", "order-981")  # reused
        inst = await session.get_instance("checkout", "order-981", max_age=0)  # a request

What is kept, and for how long (the same rule for every cache):

- an :class:`~cfwf_async.models.Instance`: ``ttl`` seconds, or ``terminal_ttl`` once its
  status is ``complete``, ``errored`` or ``terminated`` (it can no longer change);
- a JSON :class:`~cfwf_async.models.StepOutput` whose status is ``complete``:
  ``terminal_ttl`` seconds; any other step output is not kept, nor is a stream;
- errors never.

An answer's age counts from when the request that fetched it was sent, and no entry is
ever served older than its lifetime or than the caller's ``max_age``. A session's own
write to an instance (pause, terminate, ...) drops that instance's entries.

:class:`Cache` is what a session needs from a cache; :class:`MemoryCache` keeps answers
in this process and :class:`cfwf_async.redis.RedisCache` in Redis, shared by processes.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Final, NamedTuple, Protocol, TypeAlias, runtime_checkable

import msgspec

from . import _protocol as proto
from .models import TERMINAL_STATUSES, Envelope, Instance, StepOutput, UnknownStep

__all__ = ["Cache", "CacheKey", "CacheValue", "MemoryCache", "Miss"]

#: What a cache holds: the frozen models a session returns.
CacheValue: TypeAlias = Instance | StepOutput

#: Scopes whose latest invalidation MemoryCache remembers individually (see ``put``).
_INVALIDATIONS_KEPT: Final = 4096


class CacheKey(NamedTuple):
    """Which answer: ``target`` is the exact read, ``scope`` what a write invalidates.

    The session builds both from the base URL and the request: ``scope`` is the
    instance (``<base URL>/accounts/<a>/workflows/<w>/instances/<id>``), ``target`` the
    rest of the path and the query (``?simple=true``, ``/step?name=...&type=step``), so
    that differently shaped answers of one instance never mix.
    """

    scope: str
    target: str


class Miss:
    """A lookup found nothing usable; hand it back to :meth:`Cache.put`.

    ``token`` is the cache's own note of when the lookup happened, so that an answer
    whose request began before a write to its instance is never stored after the write.
    """

    __slots__ = ("token",)

    def __init__(self, token: object) -> None:
        self.token = token

    def __repr__(self) -> str:
        return f"Miss({self.token!r})"


@runtime_checkable
class Cache(Protocol):
    """What :class:`~cfwf_async.WorkflowsSession` needs from a cache.

    The session calls :meth:`get` before a read; on a :class:`Miss` it sends the
    request and passes the answer to :meth:`put` with that miss. The cache decides
    what it keeps and for how long (see the module's rules). A cache must never raise
    for being unavailable: it answers a miss and stores nothing instead.
    """

    #: Seconds a non-terminal instance may be reused; also bounds coalesced reads.
    ttl: float

    async def get(self, key: CacheKey, *, max_age: float | None = None) -> CacheValue | Miss:
        """The entry for ``key`` if it is younger than ``max_age`` (and its lifetime)."""
        ...

    async def put(
        self, key: CacheKey, value: CacheValue, miss: Miss, *, age: float = 0.0
    ) -> None:
        """Keep ``value``, already ``age`` seconds old, unless ``key``'s scope was
        invalidated since ``miss`` was answered."""
        ...

    async def invalidate(self, scope: str) -> None:
        """Drop every entry of ``scope``; answers of reads begun earlier are not kept."""
        ...


def check_lifetimes(ttl: object, terminal_ttl: object) -> tuple[float, float]:
    """Validate a cache's ``ttl`` and ``terminal_ttl`` (seconds, >= 0, finite)."""
    return proto.check_number("ttl", ttl), proto.check_number("terminal_ttl", terminal_ttl)


def check_max_age(max_age: object) -> float | None:
    """``None`` or a finite number of seconds >= 0."""
    return None if max_age is None else proto.check_number("max_age", max_age)


def lifetime(value: object, ttl: float, terminal_ttl: float) -> float | None:
    """How long ``value`` may be reused, or None when it must not be kept at all."""
    if isinstance(value, Instance):
        return terminal_ttl if value.status in TERMINAL_STATUSES else ttl
    if isinstance(value, StepOutput) and value.status == "complete":
        return terminal_ttl
    return None


# -- the encoding RedisCache stores (and MemoryCache sizes entries by) -----------------

_encoder: Final = msgspec.json.Encoder()


def encode_answer(value: CacheValue) -> bytes | None:
    """``value`` as the API's own JSON envelope, or None if it would not round-trip.

    Decoding goes through the same functions as an API answer (:func:`decode_answer`),
    so an :class:`UnknownStep` comes back as one: it is written as the fields it was
    decoded from. A hand-made ``UnknownStep`` that a decode would not reproduce (its
    fields name a known type, say) makes the answer uncacheable instead of wrong.
    """
    if isinstance(value, Instance) and any(isinstance(s, UnknownStep) for s in value.steps):
        wire = msgspec.structs.replace(
            value,
            steps=[s.fields if isinstance(s, UnknownStep) else s for s in value.steps],
        )
        body = _encoder.encode(Envelope(result=wire))
        try:
            faithful = proto.decode_instance(body) == value
        except Exception:
            faithful = False
        return body if faithful else None
    try:
        return _encoder.encode(Envelope(result=value))
    except (TypeError, ValueError, OverflowError):
        return None


def decode_answer(body: bytes, kind: type[CacheValue]) -> CacheValue:
    """The model :func:`encode_answer` encoded; raises on a body it did not write."""
    if kind is Instance:
        return proto.decode_instance(body)
    return proto.decode_step_output(body)


def answer_size(value: CacheValue) -> int:
    """The bytes :class:`MemoryCache` counts for ``value``: its JSON encoding's length."""
    return len(_encoder.encode(value))


class _Entry:
    __slots__ = ("born", "expires", "size", "value")

    def __init__(self, value: CacheValue, born: float, expires: float, size: int) -> None:
        self.value = value
        self.born = born
        self.expires = expires
        self.size = size


class MemoryCache:
    """An in-process cache of answers, least recently used first out.

    ``ttl`` and ``terminal_ttl`` (seconds) are the lifetimes described in
    :mod:`cfwf_async.cache`. It holds at most ``max_entries`` answers and at most
    ``max_bytes`` bytes of them, where an answer counts the length of its JSON
    encoding, measured once when it is stored. That is the answer about as the API sent
    it, not Python's heap: a decoded instance takes 2.2 to 2.8 times its JSON size in
    memory (measured with tracemalloc, 0 to 1,000 steps), so the default 64 MiB bound
    keeps the cached models under about 180 MiB. An answer bigger than ``max_bytes``
    is not kept.

    The stored objects are the frozen models themselves: a hit costs a dict lookup,
    no decoding and no copy. One ``MemoryCache`` may serve several sessions (of one
    event loop). ``clock`` (monotonic seconds) is for tests.
    """

    def __init__(
        self,
        *,
        ttl: float = 1.0,
        terminal_ttl: float = 60.0,
        max_entries: int = 10_000,
        max_bytes: int = 64 * 1024 * 1024,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl, self.terminal_ttl = check_lifetimes(ttl, terminal_ttl)
        self.max_entries: Final = proto.check_int("max_entries", max_entries, minimum=1)
        self.max_bytes: Final = proto.check_int("max_bytes", max_bytes, minimum=1)
        if not callable(clock):
            raise TypeError("clock must be a callable returning seconds")
        self._clock: Final = clock
        self._entries: OrderedDict[CacheKey, _Entry] = OrderedDict()
        self._scopes: dict[str, set[CacheKey]] = {}
        self._bytes = 0
        # Invalidation stamps: a put whose lookup predates its scope's latest
        # invalidation is refused. Only the latest _INVALIDATIONS_KEPT scopes are
        # remembered; a lookup older than the oldest forgotten one is refused for all.
        self._stamp = 0
        self._invalidated: OrderedDict[str, int] = OrderedDict()
        self._floor = 0
        self._miss = Miss(0)

    def __repr__(self) -> str:
        return (
            f"MemoryCache(ttl={self.ttl:g}, terminal_ttl={self.terminal_ttl:g}, "
            f"entries={len(self._entries)}/{self.max_entries}, "
            f"bytes={self._bytes}/{self.max_bytes})"
        )

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def size(self) -> int:
        """The bytes the entries count for now (see the class's description)."""
        return self._bytes

    async def get(self, key: CacheKey, *, max_age: float | None = None) -> CacheValue | Miss:
        """The answer for ``key`` if younger than its lifetime and ``max_age``; else a miss."""
        max_age = check_max_age(max_age)
        entry = self._entries.get(key)
        if entry is not None:
            now = self._clock()
            if now >= entry.expires:
                self._drop(key)
            elif max_age is None or now - entry.born < max_age:
                self._entries.move_to_end(key)
                return entry.value
        return self._miss

    async def put(
        self, key: CacheKey, value: CacheValue, miss: Miss, *, age: float = 0.0
    ) -> None:
        """Keep ``value`` (``age`` seconds old already) if the rules allow it."""
        age = proto.check_number("age", age)
        life = lifetime(value, self.ttl, self.terminal_ttl)
        if life is None or age >= life or not self._current(key.scope, miss):
            return
        size = answer_size(value)
        if size > self.max_bytes:
            return
        if key in self._entries:
            self._drop(key)
        born = self._clock() - age
        self._entries[key] = _Entry(value, born, born + life, size)
        self._scopes.setdefault(key.scope, set()).add(key)
        self._bytes += size
        while len(self._entries) > self.max_entries or self._bytes > self.max_bytes:
            self._drop(next(iter(self._entries)))

    async def invalidate(self, scope: str) -> None:
        """Drop ``scope``'s entries; answers of lookups made before now are not kept."""
        for key in self._scopes.pop(scope, ()):
            entry = self._entries.pop(key)
            self._bytes -= entry.size
        self._stamp += 1
        self._miss = Miss(self._stamp)
        self._invalidated.pop(scope, None)
        self._invalidated[scope] = self._stamp
        if len(self._invalidated) > _INVALIDATIONS_KEPT:
            _, forgotten = self._invalidated.popitem(last=False)
            self._floor = max(self._floor, forgotten)

    def clear(self) -> None:
        """Drop every entry."""
        self._entries.clear()
        self._scopes.clear()
        self._bytes = 0

    def _current(self, scope: str, miss: Miss) -> bool:
        token = miss.token
        if not isinstance(token, int) or token < self._floor:
            return False
        return self._invalidated.get(scope, -1) <= token

    def _drop(self, key: CacheKey) -> None:
        entry = self._entries.pop(key)
        self._bytes -= entry.size
        keys = self._scopes[key.scope]
        keys.discard(key)
        if not keys:
            del self._scopes[key.scope]
