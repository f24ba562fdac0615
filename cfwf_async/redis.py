"""One rate limit shared by many processes and machines, held in Redis.

Cloudflare counts its API quota per user, across every client of that user. A
:class:`~cfwf_async.RateLimit` only knows about its own process, so eight worker
processes with ``RateLimit(1200, 300)`` each let 9,600 requests through. A
:class:`RedisRateLimit` keeps the window in Redis instead, so every process and machine
that uses the same ``key`` draws from one budget::

    from cfwf_async import WorkflowsSession
    from cfwf_async.redis import RedisRateLimit

    async with RedisRateLimit.from_url(
        "redis://:password@redis.internal:6379/0",
        requests=1000, period=300.0, key="cf-account-1234",
    ) as limit, WorkflowsSession(rate_limit=limit) as session:
        inst = await session.get_instance("checkout", "order-981")

It needs the ``redis`` extra: ``pip install "cfwf_async[redis]"`` (redis-py 5 or newer,
and Redis 5 or newer on the server).

How it works: each acquisition is one ``EVALSHA`` of a short Lua script that, atomically
on the server, drops entries older than ``period`` from a sorted set, and either adds one
entry (a free slot) or answers how long until the oldest entry leaves the window. Times
come from the Redis server's ``TIME``, so hosts with skewed clocks still agree, and only
durations travel back. A 429's ``Retry-After`` (and a ``Ratelimit`` header with ``r=0``)
is written to a pause key that the same script checks, so one process's 429 holds every
process. Both keys expire on their own, and the sorted set never holds more than
``requests`` entries.

Keys used for ``key="cf-account-1234"``: ``cfwf:{cf-account-1234}:window`` and
``cfwf:{cf-account-1234}:pause`` (the braces keep both in one Redis Cluster slot).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import random
import re
import secrets
import time
from collections import deque
from types import TracebackType
from typing import Any, Final, Self, cast

import anyio
import anyio.lowlevel

try:
    import redis.asyncio as aioredis
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff
    from redis.exceptions import RedisError
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        'cfwf_async.redis needs redis-py: pip install "cfwf_async[redis]"'
    ) from exc

from .errors import RateLimiterUnavailableError
from .models import RateLimitInfo
from .ratelimit import Limiter

__all__ = ["RedisRateLimit"]

logger = logging.getLogger("cfwf_async.redis")

# KEYS[1] window (sorted set), KEYS[2] pause (string); ARGV: limit, period in µs, then one
# member per acquisition wanted. Grants slots in ARGV order while the window has room and
# answers {granted, µs until the next slot may free (0 when all were granted)}.
_ACQUIRE: Final = """
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local limit = tonumber(ARGV[1])
local period = tonumber(ARGV[2])
local paused = tonumber(redis.call('GET', KEYS[2]) or '0')
if paused > now then
  return {0, paused - now}
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - period)
local count = redis.call('ZCARD', KEYS[1])
local wanted = #ARGV - 2
local granted = math.max(0, math.min(wanted, limit - count))
if granted > 0 then
  local entries = {}
  for i = 1, granted do
    entries[2 * i - 1] = now
    entries[2 * i] = ARGV[2 + i]
  end
  redis.call('ZADD', KEYS[1], unpack(entries))
  redis.call('PEXPIRE', KEYS[1], math.ceil(period / 1000) + 1)
  count = count + granted
end
if granted == wanted then
  return {granted, 0}
end
-- The window is full: the next slot frees when the entry that would make room leaves.
local entry = redis.call('ZRANGE', KEYS[1], count - limit, count - limit, 'WITHSCORES')
return {granted, math.max(1, tonumber(entry[2]) + period - now)}
"""

# KEYS[1] pause; ARGV[1] pause length in µs. Never shortens a longer pause.
_PAUSE: Final = """
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local length = tonumber(ARGV[1])
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if now + length > current then
  redis.call('SET', KEYS[1], string.format('%d', now + length), 'PX',
             math.ceil(length / 1000) + 1)
end
return 0
"""

#: Most acquisitions asked for in one round trip (Lua's stack bounds a script's arguments).
_MAX_BATCH: Final = 256

_URL_CREDENTIALS: Final = re.compile(r"(?i)([a-z][a-z0-9+.-]*://)[^@/\s]*@")


class RedisRateLimit:
    """A sliding-window limit shared through Redis: ``requests`` per ``period`` seconds.

    Every process and machine that builds a ``RedisRateLimit`` with the same ``key`` (and
    the same ``requests`` and ``period``) on the same Redis shares one window: never more
    than ``requests`` acquisitions in any ``period`` seconds, counted on the Redis
    server's clock. Use it like :class:`~cfwf_async.RateLimit`::

        limit = RedisRateLimit.from_url("redis://:pw@10.0.0.5:6379/0",
                                        requests=1000, period=300.0, key="cf-acct")
        async with limit, WorkflowsSession(rate_limit=limit) as session:
            ...

    ``client`` is a caller's :class:`redis.asyncio.Redis`: used, never closed by us.
    :meth:`from_url` builds and owns a client instead, closed by :meth:`aclose` or
    ``async with``.

    When Redis cannot be reached, :meth:`acquire` raises
    :class:`~cfwf_async.errors.RateLimiterUnavailableError` and no request is sent (the
    limit fails closed). With ``fallback`` (another limiter, typically a
    ``RateLimit`` with this process's share of the budget) requests go through the
    fallback instead while Redis is away; Redis is tried again every
    ``retry_interval`` seconds.

    A waiting caller sleeps until Redis says the next slot frees, plus up to
    :attr:`jitter` seconds so processes do not wake in lockstep. Waiters of one process
    are served first come, first served, and only the first of them asks Redis.
    """

    #: Up to this many seconds are added at random to each wait.
    jitter: float = 0.01

    def __init__(
        self,
        client: aioredis.Redis,
        *,
        requests: int,
        period: float,
        key: str,
        fallback: Limiter | None = None,
        retry_interval: float = 5.0,
    ) -> None:
        if isinstance(requests, bool) or not isinstance(requests, int) or requests < 1:
            raise ValueError(f"requests must be an int >= 1, got {requests!r}")
        if isinstance(period, bool) or not isinstance(period, (int, float)) or not (
            period > 0 and math.isfinite(period)
        ):
            raise ValueError(f"period must be a positive number of seconds, got {period!r}")
        if not isinstance(key, str) or not key or len(key) > 200 or not key.isprintable():
            raise ValueError("key must be a non-empty printable str of at most 200 characters")
        if not isinstance(client, aioredis.Redis):
            raise TypeError("client must be a redis.asyncio.Redis")
        if fallback is not None and not isinstance(fallback, Limiter):
            raise TypeError("fallback must be a Limiter (for example a RateLimit) or None")
        if isinstance(retry_interval, bool) or not isinstance(retry_interval, (int, float)) or (
            not (retry_interval > 0 and math.isfinite(retry_interval))
        ):
            raise ValueError(
                f"retry_interval must be a positive number of seconds, got {retry_interval!r}"
            )
        self.requests: Final = requests
        self.period: Final = float(period)
        self.key: Final = key
        self.fallback: Final = fallback
        self.retry_interval: Final = float(retry_interval)
        self._client = client
        self._owns_client = False
        self._period_us: Final = max(1, round(self.period * 1_000_000))
        self._window_key: Final = f"cfwf:{{{key}}}:window"
        self._pause_key: Final = f"cfwf:{{{key}}}:pause"
        self._acquire_script = client.register_script(_ACQUIRE)
        self._pause_script = client.register_script(_PAUSE)
        # Members must be unique per acquisition across every process: a random
        # per-object prefix and a counter.
        self._member_prefix: Final = secrets.token_hex(8)
        self._counter = itertools.count()
        self._queue: deque[_Waiter] = deque()
        self._leader: _Waiter | None = None
        self._paused_until = 0.0  # this process's copy of the latest pause (monotonic)
        self._down_until = 0.0  # with a fallback: skip Redis until then (monotonic)
        self._down = False
        kwargs = client.connection_pool.connection_kwargs
        self._password: Final[str | None] = _as_text(kwargs.get("password"))
        self._where: Final = _describe(kwargs)

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        requests: int,
        period: float,
        key: str,
        fallback: Limiter | None = None,
        retry_interval: float = 5.0,
        **redis_options: Any,
    ) -> RedisRateLimit:
        """Connect to the Redis at ``url`` (``redis://``, ``rediss://`` or ``unix://``).

        The client is ours: close it with :meth:`aclose` or ``async with``. By default it
        gives up on a dead server within about 2 seconds (connect and read timeouts of
        1 s, one reconnect); ``redis_options`` go to :func:`redis.asyncio.from_url` and
        override those defaults.
        """
        if not isinstance(url, str):
            raise TypeError("url must be a str")
        if not url.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("url must start with redis://, rediss:// or unix://")
        options: dict[str, Any] = {
            "socket_connect_timeout": 1.0,
            "socket_timeout": 1.0,
            "retry": Retry(NoBackoff(), 1),
        }
        options.update(redis_options)
        try:
            client = aioredis.from_url(url, **options)
        except (ValueError, TypeError) as exc:
            # redis-py's message may quote the URL, password included.
            raise ValueError(
                f"url is not a usable Redis URL: {_scrub(str(exc), _url_password(url))}"
            ) from None
        # Nothing is connected yet, so a refused argument below leaks no socket.
        self = cls(
            client,
            requests=requests,
            period=period,
            key=key,
            fallback=fallback,
            retry_interval=retry_interval,
        )
        self._owns_client = True
        return self

    def __repr__(self) -> str:
        return (
            f"RedisRateLimit({self.requests}, {self.period}, key={self.key!r}, "
            f"redis={self._where!r})"
        )

    # -- lifetime ------------------------------------------------------------

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the Redis client if :meth:`from_url` made it (a caller's stays open)."""
        if self._owns_client:
            self._owns_client = False
            await self._client.aclose()

    # -- the Limiter protocol ----------------------------------------------------

    async def acquire(self) -> None:
        """Wait until the shared window has a free slot and no pause holds, then take it.

        Raises :class:`~cfwf_async.errors.RateLimiterUnavailableError` when Redis cannot
        be reached and there is no ``fallback``. Cancelling it never consumes a slot.
        """
        await self._sit_out_pause()
        if self._fallback_active():
            await cast(Limiter, self.fallback).acquire()
            return
        me = _Waiter()
        self._queue.append(me)
        if self._leader is not None:
            try:
                await me.done.wait()
            except anyio.get_cancelled_exc_class():
                await self._abandon(me)
                raise
            if me.granted:
                return
            if me.error is not None:
                await self._redis_failed(me.error, log=False)
                return
        # Nobody is talking to Redis for this process: this caller does, for everyone queued.
        self._leader = me
        await self._lead(me)

    async def _lead(self, me: _Waiter) -> None:
        """Ask Redis for slots for every queued caller (``me`` first) until ``me`` has one.

        At most one round trip per object is in flight: callers arriving meanwhile queue
        up and go together in the next one, so a busy process pays one round trip for
        many acquisitions instead of one each.
        """
        while True:
            try:
                await self._sit_out_pause()
                # Let callers that are ready to run in this same turn of the event loop
                # queue up first, so they share this round trip instead of the next.
                await anyio.lowlevel.checkpoint()
            except anyio.get_cancelled_exc_class():
                self._queue.remove(me)
                self._hand_over()
                raise
            batch = list(itertools.islice(self._queue, _MAX_BATCH))
            for w in batch:
                w.member = f"{self._member_prefix}:{next(self._counter)}"
            try:
                # Shielded: the answer decides the fate of every caller in the batch.
                with anyio.CancelScope(shield=True):
                    answer = await self._acquire_script(
                        keys=[self._window_key, self._pause_key],
                        args=[self.requests, self._period_us, *(w.member for w in batch)],
                    )
            except anyio.get_cancelled_exc_class():
                # Cancelled from outside anyio's scopes (task.cancel()): the script may
                # or may not have run, so give back whatever it may have granted.
                await self._release([w.member for w in batch])
                self._queue.remove(me)
                self._hand_over()
                raise
            except (RedisError, OSError) as exc:
                waiting = list(self._queue)
                self._queue.clear()
                self._leader = None
                for w in waiting:
                    if w is not me:
                        w.error = exc
                        w.done.set()
                await self._redis_failed(exc, log=True)
                return
            if self._down:
                self._down = False
                logger.warning("Redis at %s answers again; the shared limit is back", self._where)
            granted, wait_us = (int(x) for x in cast("list[int]", answer))
            given_back: list[str] = []
            for w in batch[:granted]:
                if w.cancelled:
                    given_back.append(w.member)
                    continue
                first = self._queue.popleft()
                assert first is w, "queue order broken"
                w.granted = True
                if w is not me:
                    w.done.set()
            if given_back:
                await self._release(given_back)
            if me.granted:
                self._hand_over()
                try:
                    await anyio.lowlevel.checkpoint_if_cancelled()
                except anyio.get_cancelled_exc_class():
                    await self._release([me.member])
                    raise
                return
            try:
                await anyio.sleep(wait_us / 1_000_000 + random.uniform(0.0, self.jitter))
            except anyio.get_cancelled_exc_class():
                self._queue.remove(me)
                self._hand_over()
                raise

    def _hand_over(self) -> None:
        """The leader is done: the first queued caller talks to Redis next."""
        if self._queue:
            nxt = self._queue[0]
            self._leader = nxt
            nxt.done.set()
        else:
            self._leader = None

    async def _abandon(self, me: _Waiter) -> None:
        """A queued caller was cancelled: leave no slot, no queue entry, no lost lead."""
        if me.granted:
            await self._release([me.member])
        elif me.error is not None:
            pass
        elif self._leader is me:
            self._queue.remove(me)
            self._hand_over()
        else:
            # If its batch is in flight, the leader gives back the slot it may get.
            me.cancelled = True
            self._queue.remove(me)

    async def _release(self, members: list[str]) -> None:
        """Give back slots that were granted to callers who no longer want them."""
        with (
            anyio.CancelScope(shield=True),
            anyio.move_on_after(1.0),
            contextlib.suppress(RedisError, OSError),
        ):
            await self._client.zrem(self._window_key, *members)

    def _fallback_active(self) -> bool:
        return (
            self.fallback is not None and self._down and time.monotonic() < self._down_until
        )

    async def _redis_failed(self, exc: BaseException, *, log: bool) -> None:
        """Fail closed, or hand this acquisition to the fallback limiter."""
        fallback = self.fallback
        if fallback is None:
            raise self._unavailable(exc) from None
        if log and not self._down:
            logger.warning(
                "Redis at %s cannot be reached (%s); limiting in-process with %r "
                "until it answers again",
                self._where, self._reason(exc), fallback,
            )
        self._down = True
        self._down_until = time.monotonic() + self.retry_interval
        await fallback.acquire()

    async def pause(self, seconds: float) -> None:
        """Hold every process sharing the key for ``seconds`` (a 429's ``Retry-After``).

        Never shortens a longer pause. If Redis cannot be reached the pause still holds
        this process (and the fallback), and the next :meth:`acquire` reports the outage.
        """
        if not isinstance(seconds, (int, float)) or not math.isfinite(seconds) or seconds <= 0:
            return
        self._paused_until = max(self._paused_until, time.monotonic() + seconds)
        if self.fallback is not None:
            await self.fallback.pause(seconds)
        try:
            await self._pause_script(
                keys=[self._pause_key], args=[max(1, round(seconds * 1_000_000))]
            )
        except (RedisError, OSError) as exc:
            logger.warning(
                "could not share a %.1f s pause through Redis at %s: %s",
                seconds, self._where, self._reason(exc),
            )

    async def observe(self, info: RateLimitInfo) -> None:
        """Follow Cloudflare's ``Ratelimit`` header: ``r=0;t=N`` pauses everyone N s."""
        if self.fallback is not None:
            await self.fallback.observe(info)
        if info.remaining is not None and info.remaining <= 0 and info.reset:
            await self.pause(info.reset)

    # -- machinery -----------------------------------------------------------------

    async def _sit_out_pause(self) -> None:
        left = self._paused_until - time.monotonic()
        if left > 0:
            await anyio.sleep(left)

    def _reason(self, exc: BaseException) -> str:
        text = f"{type(exc).__name__}: {exc}"
        if len(text) > 300:
            text = text[:300] + "..."
        return _scrub(text, self._password)

    def _unavailable(self, exc: BaseException) -> RateLimiterUnavailableError:
        host, port = _host_port(self._client.connection_pool.connection_kwargs)
        return RateLimiterUnavailableError(
            f"the shared rate limit's Redis at {self._where} cannot be reached "
            f"({self._reason(exc)}); no request was sent",
            host=host,
            port=port,
        )


class _Waiter:
    """One caller of :meth:`RedisRateLimit.acquire` waiting in its object's queue."""

    __slots__ = ("cancelled", "done", "error", "granted", "member")

    def __init__(self) -> None:
        # Set when the slot is granted, when Redis failed, or when it is this caller's
        # turn to talk to Redis for the queue.
        self.done = anyio.Event()
        self.granted = False
        self.cancelled = False
        self.error: BaseException | None = None
        self.member = ""


def _as_text(value: object) -> str | None:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value if isinstance(value, str) and value else None


def _host_port(kwargs: dict[str, Any]) -> tuple[str, int | None]:
    path = kwargs.get("path")
    if path:
        return str(path), None
    port = kwargs.get("port", 6379)
    return str(kwargs.get("host", "localhost")), int(port) if port is not None else None


def _describe(kwargs: dict[str, Any]) -> str:
    """``host:port/db`` (or ``unix:path/db``), never credentials."""
    host, port = _host_port(kwargs)
    db = kwargs.get("db", 0)
    if port is None:
        return f"unix:{host}/{db}"
    shown = f"[{host}]" if ":" in host else host
    return f"{shown}:{port}/{db}"


def _url_password(url: str) -> str | None:
    match = re.match(r"(?i)[a-z][a-z0-9+.-]*://([^@/\s]*)@", url)
    if match is None:
        return None
    userinfo = match.group(1)
    return userinfo.split(":", 1)[1] if ":" in userinfo else userinfo or None


def _scrub(text: str, password: str | None) -> str:
    """Remove a password and any URL credentials from a text meant for people."""
    text = _URL_CREDENTIALS.sub(r"\1***@", text)
    if password:
        text = text.replace(password, "***")
    return text
