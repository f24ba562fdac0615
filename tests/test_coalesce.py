"""Coalescer: one call per key in flight, shared outcomes, cancellation per caller."""

from __future__ import annotations

import traceback

import anyio
import pytest

from cfwf_async._coalesce import Coalescer, Unshared
from cfwf_async.errors import NotFoundError

pytestmark = pytest.mark.anyio


class Gate:
    """A start function that blocks until released, counting its calls."""

    def __init__(self, result: object = "answer") -> None:
        self.result = result
        self.calls = 0
        self.entered = anyio.Event()
        self.release = anyio.Event()
        self.finished = anyio.Event()  # set in the call's finally: it has unwound
        self.cancelled = False

    async def __call__(self) -> object:
        self.calls += 1
        self.entered.set()
        try:
            await self.release.wait()
            return self.result
        except anyio.get_cancelled_exc_class():
            self.cancelled = True
            raise
        finally:
            self.finished.set()


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def _settle() -> None:
    """Let every ready task run until it blocks again."""
    for _ in range(5):
        await anyio.lowlevel.checkpoint()


async def test_500_identical_calls_make_one_call_and_share_its_result() -> None:
    flights: Coalescer[str, object] = Coalescer()
    result = object()
    gate = Gate(result)
    got: list[object] = []

    async def caller() -> None:
        got.append(await flights.run("k", gate))

    async with anyio.create_task_group() as tg:
        for _ in range(500):
            tg.start_soon(caller)
        await gate.entered.wait()
        await _settle()
        assert len(flights) == 1
        gate.release.set()
    assert gate.calls == 1
    assert len(got) == 500
    assert all(r is result for r in got)
    assert len(flights) == 0  # a finished call is never joined: errors and results age


async def test_different_keys_do_not_share() -> None:
    flights: Coalescer[str, object] = Coalescer()
    gate = Gate()
    gate.release.set()
    async with anyio.create_task_group() as tg:
        for key in ("a", "b", "c"):
            tg.start_soon(flights.run, key, gate)
    assert gate.calls == 3


async def test_cancelling_499_callers_still_delivers_to_the_last() -> None:
    flights: Coalescer[str, object] = Coalescer()
    gate = Gate("value")
    scopes: list[anyio.CancelScope] = []
    got: list[object] = []
    cancelled = 0

    async def caller(keep: bool) -> None:
        nonlocal cancelled
        with anyio.CancelScope() as scope:
            if not keep:
                scopes.append(scope)
            got.append(await flights.run("k", gate))
            return
        cancelled += 1

    async with anyio.create_task_group() as tg:
        for i in range(500):
            # The first caller (the one whose start runs) is among the cancelled.
            tg.start_soon(caller, i == 250)
        await gate.entered.wait()
        await _settle()
        for scope in scopes:
            scope.cancel()
        await _settle()
        assert not gate.finished.is_set()  # the call goes on for the one left
        gate.release.set()
    assert cancelled == 499
    assert got == ["value"]
    assert gate.calls == 1
    assert not gate.cancelled


async def test_cancelling_every_caller_cancels_the_call_before_they_return() -> None:
    flights: Coalescer[str, object] = Coalescer()
    gate = Gate()
    finished_when_caller_left: list[bool] = []

    async def caller(scope: anyio.CancelScope) -> None:
        with scope:
            try:
                await flights.run("k", gate)
            finally:
                finished_when_caller_left.append(gate.finished.is_set())

    scopes = [anyio.CancelScope() for _ in range(20)]
    async with anyio.create_task_group() as tg:
        for scope in scopes:
            tg.start_soon(caller, scope)
        await gate.entered.wait()
        await _settle()
        for scope in scopes:
            scope.cancel()
    assert gate.cancelled
    assert gate.finished.is_set()
    # The caller that left last saw the call already unwound (connection released).
    assert finished_when_caller_left[-1] is True
    assert len(flights) == 0


async def test_errors_are_shared_as_copies_of_one_type_text_and_attributes() -> None:
    flights: Coalescer[str, object] = Coalescer()
    release = anyio.Event()
    calls = 0

    async def failing() -> object:
        nonlocal calls
        calls += 1
        await release.wait()
        raise NotFoundError("instance not found", status_code=404, cf_ray="ray-1")

    caught: list[BaseException] = []

    async def caller() -> None:
        try:
            await flights.run("k", failing)
        except NotFoundError as exc:
            caught.append(exc)

    async with anyio.create_task_group() as tg:
        for _ in range(100):
            tg.start_soon(caller)
        await _settle()
        release.set()
    assert calls == 1
    assert len(caught) == 100
    assert {type(e) for e in caught} == {NotFoundError}
    assert {str(e) for e in caught} == {"instance not found (cf-ray ray-1)"}
    assert {(e.status_code, e.cf_ray) for e in caught} == {(404, "ray-1")}  # type: ignore[attr-defined]
    assert len({id(e) for e in caught}) == 100  # one object per caller
    # No caller's traceback carries the others' frames: all are about equally long.
    depths = {len(traceback.extract_tb(e.__traceback__)) for e in caught}
    assert max(depths) <= min(depths) + 1
    assert all("failing" in "".join(traceback.format_tb(e.__traceback__)) for e in caught)

    # Errors are not remembered: the next call starts afresh.
    release = anyio.Event()
    release.set()
    with pytest.raises(NotFoundError):
        await flights.run("k", failing)
    assert calls == 2


async def test_an_unshared_result_goes_to_one_caller_the_others_send_their_own() -> None:
    flights: Coalescer[str, str] = Coalescer()
    release = anyio.Event()
    starts = 0

    async def streaming() -> str | Unshared[str]:
        nonlocal starts
        starts += 1
        mine = f"stream-{starts}"
        await release.wait()
        return Unshared(mine)

    got: list[str] = []

    async def caller() -> None:
        got.append(await flights.run("k", streaming))

    async with anyio.create_task_group() as tg:
        for _ in range(5):
            tg.start_soon(caller)
        await _settle()
        assert starts == 1
        release.set()
    assert starts == 5  # the first caller kept the stream, four sent their own
    assert sorted(got) == ["stream-1", "stream-2", "stream-3", "stream-4", "stream-5"]
    assert got[0] == "stream-1"


async def test_an_unshared_result_nobody_takes_is_closed() -> None:
    flights: Coalescer[str, str] = Coalescer()
    closed = anyio.Event()
    scopes: list[anyio.CancelScope] = []

    async def close() -> None:
        closed.set()

    async def streaming() -> str | Unshared[str]:
        await anyio.lowlevel.checkpoint()
        # Every caller is cancelled just as the answer arrives.
        for scope in scopes:
            scope.cancel()
        return Unshared("stream", close)

    async def caller() -> None:
        with anyio.CancelScope() as scope:
            scopes.append(scope)
            await flights.run("k", streaming)

    async with anyio.create_task_group() as tg:
        for _ in range(3):
            tg.start_soon(caller)
    assert closed.is_set()


async def test_a_joiner_takes_the_unshared_result_when_the_first_caller_left() -> None:
    flights: Coalescer[str, str] = Coalescer()
    release = anyio.Event()
    starts = 0

    async def streaming() -> str | Unshared[str]:
        nonlocal starts
        starts += 1
        await release.wait()
        return Unshared(f"stream-{starts}")

    got: list[str] = []
    first = anyio.CancelScope()

    async def leader() -> None:
        with first:
            await flights.run("k", streaming)

    async def joiner() -> None:
        got.append(await flights.run("k", streaming))

    async with anyio.create_task_group() as tg:
        tg.start_soon(leader)
        await _settle()
        tg.start_soon(joiner)
        await _settle()
        first.cancel()
        await _settle()
        release.set()
    assert got == ["stream-1"]
    assert starts == 1


async def test_max_age_bounds_which_call_a_caller_joins() -> None:
    clock = Clock()
    flights: Coalescer[str, object] = Coalescer(clock=clock)
    gates = [Gate(f"call-{i}") for i in range(3)]
    for g in gates:
        g.release.set()
    release = anyio.Event()
    order: list[int] = []

    def start(i: int) -> object:
        async def call() -> object:
            order.append(i)
            await release.wait()
            return f"call-{i}"

        return call

    got: dict[str, object] = {}

    async def caller(name: str, i: int, max_age: float | None) -> None:
        got[name] = await flights.run("k", start(i), max_age=max_age)  # type: ignore[arg-type]

    async with anyio.create_task_group() as tg:
        tg.start_soon(caller, "first", 0, None)  # starts call 0 at t=100
        await _settle()
        clock.now = 105.0
        tg.start_soon(caller, "young enough", 1, 10.0)  # 5 s < 10 s: joins call 0
        await _settle()
        tg.start_soon(caller, "too old", 2, 5.0)  # 5 s is not < 5 s: starts call 2
        await _settle()
        tg.start_soon(caller, "fresh", 3, 0.0)  # 0 never joins: starts call 3
        await _settle()
        tg.start_soon(caller, "any", 4, None)  # joins the newest call, 3
        await _settle()
        release.set()
    assert order == [0, 2, 3]
    assert got == {
        "first": "call-0",
        "young enough": "call-0",
        "too old": "call-2",
        "fresh": "call-3",
        "any": "call-3",
    }


async def test_forget_makes_later_callers_start_afresh() -> None:
    flights: Coalescer[tuple[str, str], object] = Coalescer()
    before, after = Gate("before the write"), Gate("after the write")
    other = Gate("other instance")
    got: dict[str, object] = {}

    async def caller(name: str, key: tuple[str, str], gate: Gate) -> None:
        got[name] = await flights.run(key, gate)

    async with anyio.create_task_group() as tg:
        tg.start_soon(caller, "early", ("inst-1", "?simple=true"), before)
        tg.start_soon(caller, "other", ("inst-2", ""), other)
        await _settle()
        assert flights.forget(lambda key: key[0] == "inst-1") == 1
        assert len(flights) == 1
        tg.start_soon(caller, "late", ("inst-1", "?simple=true"), after)
        await _settle()
        tg.start_soon(caller, "other joiner", ("inst-2", ""), after)
        await _settle()
        after.release.set()
        await after.finished.wait()
        assert len(flights) == 1  # the forgotten call ended without touching the new one
        before.release.set()
        other.release.set()
    assert got == {
        "early": "before the write",
        "late": "after the write",
        "other": "other instance",
        "other joiner": "other instance",
    }
    assert (before.calls, after.calls, other.calls) == (1, 1, 1)
