"""Client-side rate limiting: stay under Cloudflare's account-wide API quota.

Cloudflare allows 1,200 API requests per 5 minutes per user, counted across every
client of that user, and blocks the user for 5 minutes once that is crossed. A
:class:`WorkflowsSession` therefore asks a *limiter* before every request leaves.

The session speaks to its limiter through the :class:`Limiter` protocol, so a limiter
shared by several processes (see :mod:`cfwf_async.redis`) plugs in the same way as the
in-process :class:`RateLimit`.
"""

from __future__ import annotations

import math
import time
from collections import deque
from typing import Protocol, runtime_checkable

import anyio

from ._protocol import RateLimitInfo

__all__ = ["Limiter", "RateLimit", "RateLimitInfo"]


@runtime_checkable
class Limiter(Protocol):
    """What a session needs from a rate limiter.

    A session calls :meth:`acquire` before every request (retries included), :meth:`pause`
    after a 429 answer, and :meth:`observe` whenever an answer carried Cloudflare's
    ``Ratelimit`` header. All three must be safe to call from many tasks at once, and
    :meth:`acquire` must be cancellable without consuming a slot.
    """

    async def acquire(self) -> None:
        """Wait until one more request may leave, and count it."""
        ...

    async def pause(self, seconds: float) -> None:
        """Let no request leave for ``seconds`` from now (a 429's ``Retry-After``)."""
        ...

    async def observe(self, info: RateLimitInfo) -> None:
        """Learn the server's view of the quota from an answer's ``Ratelimit`` header."""
        ...


class RateLimit:
    """An in-process sliding-window limiter: at most ``requests`` per ``period`` seconds.

    A burst of up to ``requests`` leaves at once; after that each request waits until
    the oldest of the last ``requests`` is ``period`` seconds old, so no window of
    ``period`` seconds ever holds more than ``requests`` acquisitions. Waiters are
    served first come, first served.

    It also follows the server: a 429 pauses every request of every session that shares
    this object, a ``Ratelimit`` header with ``r=0`` holds requests until its reset, and
    when few requests remain the rest are spread evenly over the time to the reset
    instead of hitting the wall in one burst.

    One object may be shared by several sessions of one process to give them one budget::

        limit = RateLimit(1000, 300.0)
        async with WorkflowsSession(rate_limit=limit) as a, \\
                   WorkflowsSession(rate_limit=limit, api_token=other) as b:
            ...
    """

    #: When the server says fewer than this fraction of its quota remains, pace.
    low_water: float = 0.1

    def __init__(self, requests: int, period: float) -> None:
        if isinstance(requests, bool) or not isinstance(requests, int) or requests < 1:
            raise ValueError(f"requests must be an int >= 1, got {requests!r}")
        if isinstance(period, bool) or not isinstance(period, (int, float)) or not (
            period > 0 and math.isfinite(period)
        ):
            raise ValueError(f"period must be a positive number of seconds, got {period!r}")
        self.requests = requests
        self.period = float(period)
        self._sent: deque[float] = deque(maxlen=requests)
        self._lock = anyio.Lock()
        self._paused_until = 0.0
        self._next_paced = 0.0
        self._pace_interval = 0.0

    def __repr__(self) -> str:
        return f"RateLimit({self.requests}, {self.period})"

    def _wait_time(self, now: float) -> float:
        wait = self._paused_until - now
        if len(self._sent) == self.requests:
            wait = max(wait, self._sent[0] + self.period - now)
        if self._pace_interval:
            wait = max(wait, self._next_paced - now)
        return wait

    def _take(self, now: float) -> None:
        self._sent.append(now)
        if self._pace_interval:
            self._next_paced = now + self._pace_interval

    async def acquire(self) -> None:
        """Wait for a free slot in the window (FIFO among waiters), then take it."""
        now = time.monotonic()
        if not self._lock.locked() and self._wait_time(now) <= 0:
            # Fast path: nobody queued and a slot free; no await, no lock round trip.
            self._take(now)
            return
        async with self._lock:
            while True:
                now = time.monotonic()
                wait = self._wait_time(now)
                if wait <= 0:
                    self._take(now)
                    return
                await anyio.sleep(wait)

    async def pause(self, seconds: float) -> None:
        """Hold every request for ``seconds`` from now (never shortens a longer pause)."""
        if seconds > 0:
            self._paused_until = max(self._paused_until, time.monotonic() + seconds)

    async def observe(self, info: RateLimitInfo) -> None:
        """Pace by the server's ``Ratelimit`` header.

        ``r=0`` holds every request until the reset ``t``. When ``r`` falls below
        :attr:`low_water` of the quota, requests are spaced ``t / r`` apart so the
        remaining budget lasts until the reset.
        """
        remaining, reset = info.remaining, info.reset
        if remaining is None or reset is None:
            return
        if remaining <= 0:
            await self.pause(reset)
            self._pace_interval = 0.0
            return
        quota = info.quota or self.requests
        if remaining < max(1.0, quota * self.low_water):
            self._pace_interval = reset / remaining
        else:
            self._pace_interval = 0.0
