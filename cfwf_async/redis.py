"""One rate limit shared by many processes and machines, held in Redis.

A :class:`~cfwf_async.RateLimit` only knows its own process: eight workers with
``RateLimit(1200, 300)`` each let 9,600 requests through. :class:`RedisRateLimit` keeps
the window in Redis, so everything using the same ``key`` draws from one budget. It needs
``pip install "cfwf_async[redis]"`` (redis-py 5+, Redis 5+).

Each acquisition is one ``EVALSHA`` of a Lua script that, atomically and on the Redis
clock (so skewed hosts agree), drops entries older than ``period + margin`` from a
sorted set and adds one, or answers how long until a slot frees or a shared pause (a
429, an ``r=0`` answer) ends. Both keys expire on their own; no pause counts for more
than 15 minutes, whoever wrote it. For ``key="acct"`` the keys are ``cfwf:{acct}:window``
and ``cfwf:{acct}:pause`` (one Redis Cluster slot); a key of another type fails closed.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import random
import secrets
import time
from collections import deque
from typing import Any, Final, cast

import anyio
import anyio.lowlevel

try:
    import redis.asyncio as aioredis
    from redis.exceptions import RedisError, ResponseError
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        'cfwf_async.redis needs redis-py: pip install "cfwf_async[redis]"'
    ) from exc

from ._protocol import check_int, check_number, check_str, check_timeout
from ._redis_cache import RedisCache
from ._redis_common import as_text, client_from_url, describe, host_port, scrub
from ._resource import AsyncResource
from ._retry import MAX_SERVER_WAIT, clamp_server_wait
from .errors import RateLimiterUnavailableError
from .models import RateLimitInfo
from .ratelimit import Limiter, server_wait_error

__all__ = ["RedisCache", "RedisRateLimit"]

logger = logging.getLogger("cfwf_async.redis")

#: The error code the scripts answer with when a key holds something else.
_WRONG_TYPE: Final = "CFWF-WRONGTYPE"

# Shared by both scripts: the current pause (µs on the Redis clock) of KEYS[pause], never
# more than `most` µs ahead, or an error naming a key that is not a number string.
_READ_PAUSE: Final = """
if redis.replicate_commands then redis.replicate_commands() end
local function wrong(key)
  return redis.error_reply('CFWF-WRONGTYPE ' .. key .. ' ' .. redis.call('TYPE', key)['ok'])
end
local function pause_of(key, now, most)
  local raw = redis.pcall('GET', key)
  if type(raw) == 'table' then return nil end
  local paused = tonumber(raw or '0')
  if paused == nil then return nil end
  if paused > now + most then
    -- Written by something that did not cap it: cap it, and its expiry, for everyone.
    paused = now + most
    redis.call('SET', key, string.format('%d', paused), 'PX', math.ceil(most / 1000))
  end
  return paused
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
"""

# KEYS[1] window (sorted set), KEYS[2] pause (string); ARGV: limit, window (period plus
# margin) in µs, longest pause in µs, then one member per acquisition wanted. Grants
# slots in ARGV order while the window has room and answers {granted, µs until the next
# slot may free (0 when all were granted), 1 when that wait is a pause else 0}.
_ACQUIRE: Final = _READ_PAUSE + """
local limit = tonumber(ARGV[1])
local period = tonumber(ARGV[2])
local paused = pause_of(KEYS[2], now, tonumber(ARGV[3]))
if paused == nil then return wrong(KEYS[2]) end
if paused > now then
  return {0, paused - now, 1}
end
local removed = redis.pcall('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - period)
if type(removed) == 'table' then return wrong(KEYS[1]) end
local count = redis.call('ZCARD', KEYS[1])
local wanted = #ARGV - 3
local granted = math.max(0, math.min(wanted, limit - count))
if granted > 0 then
  local entries = {}
  for i = 1, granted do
    entries[2 * i - 1] = now
    entries[2 * i] = ARGV[3 + i]
  end
  redis.call('ZADD', KEYS[1], unpack(entries))
  redis.call('PEXPIRE', KEYS[1], math.ceil(period / 1000) + 1)
  count = count + granted
end
if granted == wanted then
  return {granted, 0, 0}
end
-- The window is full: the next slot frees when the entry that would make room leaves.
local entry = redis.call('ZRANGE', KEYS[1], count - limit, count - limit, 'WITHSCORES')
return {granted, math.max(1, tonumber(entry[2]) + period - now), 0}
"""

# KEYS[1] pause; ARGV: pause length in µs, longest pause in µs. Never shortens a longer
# pause, and the key expires when the pause ends.
_PAUSE: Final = _READ_PAUSE + """
local most = tonumber(ARGV[2])
local length = math.min(tonumber(ARGV[1]), most)
local current = pause_of(KEYS[1], now, most)
if current == nil then return wrong(KEYS[1]) end
if now + length > current then
  redis.call('SET', KEYS[1], string.format('%d', now + length), 'PX', math.ceil(length / 1000))
end
return 0
"""

#: Most acquisitions asked for in one round trip (Lua's stack bounds a script's arguments).
_MAX_BATCH: Final = 256



class RedisRateLimit(AsyncResource):
    """A sliding-window limit shared through Redis: ``requests`` per ``period`` seconds.

    Every process and machine that builds a ``RedisRateLimit`` with the same ``key`` (and
    the same ``requests``, ``period`` and ``margin``) on the same Redis shares one window:
    never more than ``requests`` acquisitions in any ``period + margin`` seconds (on the
    Redis server's clock), so that the API, which counts arrivals, sees no more than
    ``requests`` per ``period`` even when requests take up to ``margin`` seconds to get
    there. Use it like :class:`~cfwf_async.RateLimit`::

        limit = RedisRateLimit.from_url("redis://:pw@10.0.0.5:6379/0",
                                        requests=1000, period=300.0, key="cf-acct")
        async with limit, WorkflowsSession(rate_limit=limit) as session:
            ...

    ``client`` is a caller's :class:`redis.asyncio.Redis`, never closed by us;
    :meth:`from_url` builds and owns one, closed by :meth:`aclose` or ``async with``.

    When Redis cannot be reached, :meth:`acquire` raises
    :class:`~cfwf_async.errors.RateLimiterUnavailableError` and no request is sent (the
    limit fails closed). With ``fallback`` (another limiter, typically a
    ``RateLimit`` with this process's share of the budget) requests go through the
    fallback instead while Redis is away; Redis is tried again every
    ``retry_interval`` seconds. A key holding the wrong type always fails closed.

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
        margin: float = 1.0,
        fallback: Limiter | None = None,
        retry_interval: float = 5.0,
    ) -> None:
        self.requests: Final = check_int("requests", requests, minimum=1)
        self.period: Final = check_timeout("period", period)
        self.margin: Final = check_number("margin", margin)
        self.key: Final = check_str("key", key, max_len=200)
        if not key.isprintable():
            raise ValueError("key must be a printable str of at most 200 characters")
        if not isinstance(client, aioredis.Redis):
            raise TypeError("client must be a redis.asyncio.Redis")
        if fallback is not None and not isinstance(fallback, Limiter):
            raise TypeError("fallback must be a Limiter (for example a RateLimit) or None")
        self.fallback: Final = fallback
        self.retry_interval: Final = check_timeout("retry_interval", retry_interval)
        self._client = client
        self._owns_client = False
        self._window_us: Final = max(1, round((self.period + self.margin) * 1_000_000))
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
        self._password: Final[str | None] = as_text(kwargs.get("password"))
        self._where: Final = describe(kwargs)

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        requests: int,
        period: float,
        key: str,
        margin: float = 1.0,
        fallback: Limiter | None = None,
        retry_interval: float = 5.0,
        **options: Any,
    ) -> RedisRateLimit:
        """Connect to the Redis at ``url`` (``redis://``, ``rediss://`` or ``unix://``).

        The client is ours: close it with :meth:`aclose` or ``async with``. By default it
        gives up on a dead server within about 2 seconds (connect and read timeouts of
        1 s, one reconnect); ``options`` go to :func:`redis.asyncio.from_url` and
        override those defaults.
        """
        client = client_from_url(url, options)
        # Nothing is connected yet, so a refused argument below leaks no socket.
        self = cls(client, requests=requests, period=period, key=key, margin=margin,
                   fallback=fallback, retry_interval=retry_interval)
        self._owns_client = True
        return self

    def __repr__(self) -> str:
        return (
            f"RedisRateLimit({self.requests}, {self.period}, key={self.key!r}, "
            f"redis={self._where!r})"
        )

    async def aclose(self) -> None:
        """Close the Redis client if :meth:`from_url` made it (a caller's stays open)."""
        if self._owns_client:
            self._owns_client = False
            await self._client.aclose()

    # -- the Limiter protocol ----------------------------------------------------

    async def acquire(self) -> None:
        """Wait until the shared window has a free slot and no pause holds, then take it.

        Raises :class:`~cfwf_async.errors.RateLimiterUnavailableError` when Redis cannot
        be reached and there is no ``fallback``, or when a key holds the wrong type.
        Cancelling it never consumes a slot.
        """
        await self._acquire(math.inf)

    async def acquire_within(self, max_wait: float) -> None:
        """Like :meth:`acquire`, but never wait out a pause longer than ``max_wait`` s.

        A pause shared through Redis (a 429's ``Retry-After`` or an ``r=0`` answer, seen
        by any process) that would keep this call longer raises
        :class:`~cfwf_async.errors.RateLimitError` at once, with ``retry_after`` set to
        it and no slot taken; Redis says so in the same round trip that would take the
        slot. Waiting for the shared window itself is waited.
        """
        await self._acquire(check_number("max_wait", max_wait))

    async def _acquire(self, max_wait: float) -> None:
        await self._sit_out_pause(max_wait)
        if self._fallback_active():
            await self._fallback_acquire(max_wait)
            return
        me = _Waiter(max_wait)
        self._queue.append(me)
        if self._leader is not None:
            try:
                await me.done.wait()
            except anyio.get_cancelled_exc_class():
                await self._abandon(me)
                raise
            if me.granted:
                return
            if me.refused is not None:
                raise server_wait_error(me.refused, max_wait)
            if me.error is not None:
                await self._redis_failed(me.error, max_wait, log=False)
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
        nap = 0.0
        while True:
            try:
                await anyio.sleep(nap)
                await self._sit_out_pause(me.max_wait)
                # Let callers that are ready to run in this same turn of the event loop
                # queue up first, so they share this round trip instead of the next.
                await anyio.lowlevel.checkpoint()
            except BaseException:
                self._step_down(me)
                raise
            answer = await self._ask(me)
            if answer is None:
                return
            batch, granted, wait_us, held = answer
            if await self._hand_out(me, batch, granted):
                return
            wait = wait_us / 1_000_000
            nap = random.uniform(0.0, self.jitter)  # so processes do not wake in lockstep
            if held:  # sat out (or refused) by _sit_out_pause, here and in later callers
                self._paused_until = max(self._paused_until, time.monotonic() + wait)
                self._refuse_queued(wait)
            else:
                nap += wait

    async def _ask(self, me: _Waiter) -> tuple[list[_Waiter], int, int, int] | None:
        """One script round trip for the next batch of queued callers.

        None when Redis failed: then every queued caller has been told, and ``me`` went
        through the fallback.
        """
        batch = list(itertools.islice(self._queue, _MAX_BATCH))
        for w in batch:
            w.member = f"{self._member_prefix}:{next(self._counter)}"
        most_us = round(MAX_SERVER_WAIT * 1_000_000)
        try:
            # Shielded: the answer decides the fate of every caller in the batch.
            with anyio.CancelScope(shield=True):
                answer = await self._acquire_script(
                    keys=[self._window_key, self._pause_key],
                    args=[self.requests, self._window_us, most_us, *(w.member for w in batch)],
                )
        except anyio.get_cancelled_exc_class():
            # Cancelled from outside anyio's scopes (task.cancel()): the script may
            # or may not have run, so give back whatever it may have granted.
            await self._release([w.member for w in batch])
            self._step_down(me)
            raise
        except (RedisError, OSError) as exc:
            waiting = list(self._queue)
            self._queue.clear()
            self._leader = None
            for w in waiting:
                if w is not me:
                    w.error = exc
                    w.done.set()
            await self._redis_failed(exc, me.max_wait, log=True)
            return None
        if self._down:
            self._down = False
            logger.warning("Redis at %s answers again; the shared limit is back", self._where)
        granted, wait_us, held = (int(x) for x in cast("list[int]", answer))
        return batch, granted, wait_us, held

    async def _hand_out(self, me: _Waiter, batch: list[_Waiter], granted: int) -> bool:
        """Give the granted slots to the batch's callers in order; True if ``me`` got one."""
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
        if not me.granted:
            return False
        self._hand_over()
        try:
            await anyio.lowlevel.checkpoint_if_cancelled()
        except anyio.get_cancelled_exc_class():
            await self._release([me.member])
            raise
        return True

    def _step_down(self, me: _Waiter) -> None:
        self._queue.remove(me)
        self._hand_over()

    def _hand_over(self) -> None:
        """The leader is done: the first queued caller talks to Redis next."""
        if self._queue:
            nxt = self._queue[0]
            self._leader = nxt
            nxt.done.set()
        else:
            self._leader = None

    def _refuse_queued(self, wait: float) -> None:
        """A pause of ``wait`` s holds: tell queued callers that allow less, at once."""
        for w in [w for w in self._queue if w.max_wait < wait and w is not self._leader]:
            self._queue.remove(w)
            w.refused = wait
            w.done.set()

    async def _abandon(self, me: _Waiter) -> None:
        """A queued caller was cancelled: leave no slot, no queue entry, no lost lead."""
        if me.granted:
            await self._release([me.member])
        elif me.error is not None or me.refused is not None:
            pass
        elif self._leader is me:
            self._step_down(me)
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

    async def _fallback_acquire(self, max_wait: float) -> None:
        fallback = cast(Limiter, self.fallback)
        within = getattr(fallback, "acquire_within", None)
        await (within(max_wait) if within and math.isfinite(max_wait) else fallback.acquire())

    async def _redis_failed(self, exc: BaseException, max_wait: float, *, log: bool) -> None:
        """Fail closed, or hand this acquisition to the fallback limiter.

        A key of the wrong type is no outage: the fallback would hide it for good.
        """
        if _is_wrong_type(exc):
            raise self._wrong_type(exc) from None
        if self.fallback is None:
            raise self._unavailable(exc) from None
        if log and not self._down:
            logger.warning(
                "Redis at %s cannot be reached (%s); limiting in-process with %r "
                "until it answers again",
                self._where, self._reason(exc), self.fallback,
            )
        self._down = True
        self._down_until = time.monotonic() + self.retry_interval
        await self._fallback_acquire(max_wait)

    async def pause(self, seconds: float) -> None:
        """Hold every process sharing the key for ``seconds`` (a 429's ``Retry-After``).

        Never shortens a longer pause; counts for 15 minutes at most. If Redis is away
        it still holds this process (and the fallback).
        """
        if not isinstance(seconds, (int, float)) or not math.isfinite(seconds) or seconds <= 0:
            return
        seconds = clamp_server_wait(seconds)
        self._paused_until = max(self._paused_until, time.monotonic() + seconds)
        if self.fallback is not None:
            await self.fallback.pause(seconds)
        try:
            await self._pause_script(
                keys=[self._pause_key],
                args=[max(1, round(seconds * 1_000_000)), round(MAX_SERVER_WAIT * 1_000_000)],
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

    async def _sit_out_pause(self, max_wait: float) -> None:
        left = self._paused_until - time.monotonic()
        if left > max_wait:
            raise server_wait_error(left, max_wait)
        if left > 0:
            await anyio.sleep(left)

    def _reason(self, exc: BaseException) -> str:
        text = f"{type(exc).__name__}: {exc}"
        if len(text) > 300:
            text = text[:300] + "..."
        return scrub(text, self._password)

    def _error(self, message: str) -> RateLimiterUnavailableError:
        host, port = host_port(self._client.connection_pool.connection_kwargs)
        return RateLimiterUnavailableError(
            f"the shared rate limit's Redis {message}; no request was sent", host=host, port=port
        )

    def _unavailable(self, exc: BaseException) -> RateLimiterUnavailableError:
        return self._error(f"at {self._where} cannot be reached ({self._reason(exc)})")

    def _wrong_type(self, exc: BaseException) -> RateLimiterUnavailableError:
        _, key, kind = [*str(exc).split(" ", 2), "", ""][:3]
        want = "a sorted set" if key == self._window_key else "a number string"
        return self._error(
            f"key {key!r} at {self._where} holds the wrong type ({kind or 'unknown'}; this "
            f"limiter keeps {want} there), so the limit cannot be counted; delete the key "
            f"(DEL {key}) or choose another key"
        )


class _Waiter:
    """One caller of :meth:`RedisRateLimit.acquire` waiting in its object's queue."""

    __slots__ = ("cancelled", "done", "error", "granted", "max_wait", "member", "refused")

    def __init__(self, max_wait: float) -> None:
        self.max_wait = max_wait
        # The pause (seconds) that refused this caller, longer than it allows.
        self.refused: float | None = None
        # Set when the slot is granted, when Redis failed, or when it is this caller's
        # turn to talk to Redis for the queue.
        self.done = anyio.Event()
        self.granted = False
        self.cancelled = False
        self.error: BaseException | None = None
        self.member = ""


def _is_wrong_type(exc: BaseException) -> bool:
    return isinstance(exc, ResponseError) and str(exc).startswith(_WRONG_TYPE)
