"""Single flight: identical calls in flight at once share one request.

A :class:`Coalescer` maps a key (for the session: the account, path and query of a GET)
to the one call currently running for it. The first caller starts that call in a task
the coalescer owns; later callers with the same key wait for the same outcome instead of
sending a request of their own::

    flights: Coalescer[str, Instance] = Coalescer()
    inst = await flights.run(url, lambda: fetch(url), max_age=2.0)

Rules, each relied on by the session:

- The call runs in its own task, so cancelling any one caller (the first included) only
  detaches that caller. When the last caller is gone the task is cancelled, and the
  caller that leaves last waits (shielded) until the call has unwound, so a request
  never outlives everyone who wanted it: its connection is released by the call's own
  cancellation handling before that caller's cancellation goes on.
- Every caller gets the same result object, or an exception of the same type, text,
  cause and attributes. Each caller raises its own shallow copy, whose traceback starts
  from the original one: re-raising one shared object from many tasks would append every
  caller's frames to that one object's traceback (and keep all their frames alive).
- A call may answer :class:`Unshared` (a streamed body only one reader can consume):
  one caller, the first to resume, gets the value; every other caller runs its own
  ``start`` instead, outside the coalescer. An unclaimed value is closed.
- ``max_age``: a caller joins only a call that started less than ``max_age`` seconds
  ago (``0`` never joins); otherwise it starts a new call, which later callers join.
- :meth:`forget` detaches running calls from their keys (a write to an instance must
  not be followed by a read that joins a request which began before the write): their
  callers still get their outcome, later callers start afresh.

The task is an :mod:`asyncio` task: the coalescer has no scope of its own to run a task
group in, and the package is asyncio-only (aiohttp).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Hashable
from types import TracebackType
from typing import Any, Final, Generic, TypeVar, cast

import anyio

__all__ = ["Coalescer", "Unshared"]

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")


class Unshared(Generic[T]):
    """Wraps a result that only one caller may have (a stream).

    ``close`` is awaited when no caller is left to take ``value``.
    """

    __slots__ = ("close", "value")

    def __init__(self, value: T, close: Callable[[], Awaitable[object]] | None = None) -> None:
        self.value = value
        self.close = close


class _Flight(Generic[T]):
    """One call in flight and the callers waiting for it."""

    __slots__ = ("callers", "claimed", "done", "error", "result", "started", "task", "tb")

    def __init__(self, started: float) -> None:
        self.started = started
        self.callers = 0
        self.done = anyio.Event()
        self.task: asyncio.Task[None] | None = None
        self.result: T | Unshared[T] | None = None
        self.error: BaseException | None = None
        self.tb: TracebackType | None = None
        self.claimed = False


class Coalescer(Generic[K, T]):
    """Runs at most one call per key at a time and hands its outcome to every caller.

    ``clock`` (seconds, monotonic) dates each call for ``max_age``; tests inject one.
    Use it from one event loop only.
    """

    __slots__ = ("_clock", "_flights")

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock: Final = clock
        self._flights: dict[K, _Flight[T]] = {}

    def __len__(self) -> int:
        """How many keys have a call in flight that new callers may join."""
        return len(self._flights)

    async def run(
        self,
        key: K,
        start: Callable[[], Awaitable[T | Unshared[T]]],
        *,
        max_age: float | None = None,
    ) -> T:
        """The outcome of ``start()`` for ``key``: a running call's, or a new one's.

        ``start`` is called (at most once, by this caller) only if no call for ``key``
        is running that started less than ``max_age`` seconds ago (any age when None),
        or when the call this caller joined answered :class:`Unshared` to another caller.
        """
        flight = self._flights.get(key)
        if flight is None or (
            max_age is not None and self._clock() - flight.started >= max_age
        ):
            flight = self._launch(key, start)
        await self._wait(flight)
        if flight.error is not None:
            if isinstance(flight.error, asyncio.CancelledError):
                # Cancelled by someone else while callers remained (the loop closing,
                # for one): this caller's own request is the honest fallback.
                return _unwrap(await start())
            raise _copy_error(flight.error, flight.tb)
        result = flight.result
        if isinstance(result, Unshared):
            if not flight.claimed:
                flight.claimed = True
                return cast(T, result.value)
            return _unwrap(await start())
        return cast(T, result)

    def forget(self, predicate: Callable[[K], bool]) -> int:
        """Stop offering the running calls whose key matches; returns how many.

        Their callers still get their outcome; the next caller of such a key starts a
        new call.
        """
        stale = [key for key in self._flights if predicate(key)]
        for key in stale:
            del self._flights[key]
        return len(stale)

    # -- machinery ---------------------------------------------------------------

    def _launch(self, key: K, start: Callable[[], Awaitable[T | Unshared[T]]]) -> _Flight[T]:
        flight: _Flight[T] = _Flight(self._clock())
        self._flights[key] = flight
        flight.task = asyncio.get_running_loop().create_task(self._fly(key, flight, start))
        return flight

    async def _fly(
        self, key: K, flight: _Flight[T], start: Callable[[], Awaitable[T | Unshared[T]]]
    ) -> None:
        try:
            flight.result = await start()
        except BaseException as exc:
            flight.error = exc
            flight.tb = exc.__traceback__
            if not isinstance(exc, Exception):  # cancellation, KeyboardInterrupt, ...
                raise
        finally:
            if self._flights.get(key) is flight:
                del self._flights[key]
            flight.done.set()

    async def _wait(self, flight: _Flight[T]) -> None:
        flight.callers += 1
        try:
            await flight.done.wait()
        except BaseException:
            flight.callers -= 1
            if flight.callers == 0:
                await _abandon(flight)
            raise
        flight.callers -= 1


def _unwrap(value: T | Unshared[T]) -> T:
    return cast(T, value.value) if isinstance(value, Unshared) else value


async def _abandon(flight: _Flight[Any]) -> None:
    """The last caller was cancelled: end the call, or close an answer nobody took.

    Shielded: the caller's own cancellation goes on once the call has unwound (and its
    connection is released), so no request outlives everyone who wanted it.
    """
    with anyio.CancelScope(shield=True):
        if not flight.done.is_set():
            task = flight.task
            assert task is not None
            task.cancel()
            await asyncio.wait([task])
            return
        result = flight.result
        if isinstance(result, Unshared) and not flight.claimed and result.close is not None:
            flight.claimed = True
            await result.close()


def _copy_error(exc: BaseException, tb: TracebackType | None) -> BaseException:
    """A shallow copy of ``exc`` for one caller: same type, args, attributes and cause.

    Built without calling ``__init__`` (the SDK's errors take keyword-only arguments),
    its traceback starting from the original's. An exception that cannot be copied this
    way (``__slots__`` without ``__dict__``) is re-raised itself, traceback reset.
    """
    cls = type(exc)
    try:
        dup = cls.__new__(cls, *exc.args)
        if type(dup) is not cls:  # OSError's __new__ may pick a subclass
            raise TypeError(cls.__name__)
        dup.args = exc.args
        dup.__dict__.update(exc.__dict__)
    except Exception:
        return exc.with_traceback(tb)
    dup.__cause__ = exc.__cause__
    dup.__context__ = exc.__context__
    dup.__suppress_context__ = exc.__suppress_context__
    return dup.with_traceback(tb)
