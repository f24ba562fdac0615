"""Batches: one result per input, failures kept apart, bounded work, clean early exits."""

from __future__ import annotations

import ast
import asyncio
import importlib.util
import itertools
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from aiohttp import web
from hypothesis import given, settings
from hypothesis import strategies as st

from cfwf_async import (
    Batch,
    BatchProgress,
    BatchResult,
    Instance,
    NotFoundError,
    OutputTooLargeError,
    RateLimit,
    StepOutput,
    StepRef,
    StreamedOutput,
    WorkflowsSession,
)
from cfwf_async import batch as batch_module
from cfwf_async.batch import BatchFailure, BatchSuccess, stream_filename
from cfwf_async.testing import API_PREFIX, FakeWorkflowsAPI, StreamBody, make_instance

WF = "checkout"
ServeApp = Callable[[web.Application], AbstractAsyncContextManager[str]]


@asynccontextmanager
async def _session(api: FakeWorkflowsAPI, app: web.Application | None = None,
                   serve_app: ServeApp | None = None) -> AsyncIterator[WorkflowsSession]:
    # Batches here repeat ids on purpose, to count requests in flight: no coalescing.
    if app is None:
        async with api.serve() as url, WorkflowsSession(
            api_token=api.api_token, account_id=api.account_id, base_url=url, rate_limit=None,
            coalesce=False,
        ) as session:
            yield session
    else:
        assert serve_app is not None
        async with serve_app(app) as root, WorkflowsSession(
            api_token=api.api_token, account_id=api.account_id,
            base_url=root + API_PREFIX, rate_limit=None, coalesce=False,
        ) as session:
            yield session


# ---------------------------------------------------------------------------
# get_instances


@pytest.mark.anyio
async def test_two_thousand_ids_with_five_percent_missing() -> None:
    api = FakeWorkflowsAPI()
    body = make_instance("complete", steps=1)
    ids = [f"order-{i}" for i in range(2000)]
    missing = {i for i in ids if int(i.split("-")[1]) % 20 == 7}
    for instance_id in ids:
        if instance_id not in missing:
            api.add_instance(WF, instance_id, body)
    progress: list[BatchProgress] = []
    results: list[BatchResult[str, Instance]] = []
    most_tasks = 0
    async with _session(api) as session:
        batch = session.get_instances(WF, ids, concurrency=16, on_progress=progress.append)
        async with batch:
            async for result in batch:
                results.append(result)
                most_tasks = max(most_tasks, len(asyncio.all_tasks()))
    assert len(missing) == 100
    assert len(results) == 2000
    assert sorted(r.key for r in results) == sorted(ids)
    failed = {r.key for r in results if not r.ok}
    assert failed == missing
    assert all(isinstance(r.error, NotFoundError) for r in results if not r.ok)
    assert all(r.unwrap().status == "complete" for r in results if r.ok)
    assert progress[0] == BatchProgress(0, 0, 2000)
    assert progress[-1] == BatchProgress(2000, 100, 2000)
    assert len(progress) == 2001
    assert batch.progress.succeeded == 1900
    # A fixed pool: 16 workers plus the server's handlers, never a task per id.
    assert most_tasks < 100
    assert len(api.requests) == 2000


@settings(max_examples=60, deadline=None)
@given(
    keys=st.lists(st.integers(0, 30), max_size=80),
    failing=st.frozensets(st.integers(0, 30)),
    concurrency=st.integers(1, 12),
    yields=st.integers(0, 3),
)
def test_one_result_per_input_whatever_fails(
    keys: list[int], failing: frozenset[int], concurrency: int, yields: int
) -> None:
    """Any inputs (duplicates too), any failures, any pool size: nothing lost or doubled."""

    async def fetch(key: int) -> int:
        for _ in range(yields + key % 3):  # interleave the workers differently
            await anyio.lowlevel.checkpoint()
        if key in failing:
            raise LookupError(key)
        return key * 2

    async def run() -> list[BatchResult[int, int]]:
        async with Batch(keys, fetch, concurrency=concurrency) as batch:
            return [r async for r in batch]

    results = anyio.run(run)
    assert Counter(r.key for r in results) == Counter(keys)
    for r in results:
        if r.key in failing:
            assert isinstance(r.error, LookupError)
            assert not r.ok
        else:
            assert r.unwrap() == r.key * 2


@pytest.mark.anyio
async def test_concurrency_bounds_requests_in_flight(serve_app: ServeApp) -> None:
    api = FakeWorkflowsAPI()
    api.add_instance(WF, "order-1", make_instance("complete", steps=0))
    in_flight = most = 0

    @web.middleware
    async def count(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        nonlocal in_flight, most
        in_flight += 1
        most = max(most, in_flight)
        try:
            await asyncio.sleep(0.01)
            return await handler(request)
        finally:
            in_flight -= 1

    app = api.make_app()
    app.middlewares.append(count)
    async with (
        _session(api, app, serve_app) as session,
        session.get_instances(WF, ["order-1"] * 40, concurrency=4) as batch,
    ):
        results = [r async for r in batch]
    assert len(results) == 40, "duplicates are inputs too: one result each"
    assert all(r.ok for r in results)
    assert most == 4


@pytest.mark.anyio
async def test_leaving_early_cancels_outstanding_work(serve_app: ServeApp) -> None:
    api = FakeWorkflowsAPI()
    for i in range(20):
        api.add_instance(WF, f"order-{i}", make_instance("complete", steps=0))
    release = anyio.Event()
    arrived: list[str] = []
    dropped: list[bool] = []
    held = 0  # set before release: how many requests the server holds
    all_checked = anyio.Event()

    @web.middleware
    async def hold(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        arrived.append(request.path)
        if not request.path.endswith("/order-0"):
            await release.wait()
            # Did the client hang up on this request while the server held it?
            dropped.append(request.transport is None or request.transport.is_closing())
            if len(dropped) == held:
                all_checked.set()
        return await handler(request)

    app = api.make_app()
    app.middlewares.append(hold)
    ids = [f"order-{i}" for i in range(20)]
    try:
        async with _session(api, app, serve_app) as session:
            started = time.monotonic()
            async with session.get_instances(WF, ids, concurrency=5) as batch:
                async for result in batch:
                    first = result
                    break
            # Requests were still held by the server; leaving did not wait for them.
            assert time.monotonic() - started < 2.0
            assert first.key == "order-0"
            assert batch.progress == BatchProgress(1, 0, 20)
            await anyio.sleep(0.05)  # let a request already on the wire land
            settled = len(arrived)
            # Five workers, one of which may have taken a second id before the break.
            assert settled <= 6
            await anyio.sleep(0.1)
            assert len(arrived) == settled, "no new request after leaving the block"
            held = settled - 1
            release.set()
            with anyio.fail_after(2):
                await all_checked.wait()
            assert all(dropped), "cancelled requests must close their connections"
            assert (await session.get_instance(WF, "order-3")).status == "complete"
    finally:
        release.set()


@pytest.mark.anyio
async def test_an_exception_in_the_caller_cancels_the_batch_and_propagates() -> None:
    api = FakeWorkflowsAPI()
    api.add_instance(WF, "a", make_instance("complete", steps=0))
    async def fail_on_first(session: WorkflowsSession) -> None:
        async with session.get_instances(WF, ["a"] * 50, concurrency=2) as batch:
            async for _ in batch:
                raise KeyError("boom")

    async with _session(api) as session:
        with pytest.raises(KeyError, match="boom"):
            await fail_on_first(session)
        assert len(api.requests) < 50


@pytest.mark.anyio
async def test_cancellation_from_outside_ends_the_batch_cleanly() -> None:
    api = FakeWorkflowsAPI()
    api.add_instance(WF, "a", make_instance("complete", steps=0))
    seen = 0
    async with _session(api) as session:
        with anyio.move_on_after(0.1) as scope:
            async with session.get_instances(WF, ["a"] * 1000, concurrency=4) as batch:
                async for _ in batch:
                    seen += 1
                    await anyio.sleep(0.02)  # a slow consumer
        assert scope.cancelled_caught
        assert 0 < seen < 1000
        # The slow consumer held the workers back: at most the buffer ran ahead.
        assert len(api.requests) <= seen + 2 * 4 + 1
        assert (await session.get_instance(WF, "a")).status == "complete"


@pytest.mark.anyio
async def test_a_batch_goes_through_the_session_limiter() -> None:
    api = FakeWorkflowsAPI()
    api.add_instance(WF, "a", make_instance("complete", steps=0))
    async with api.serve() as url, WorkflowsSession(
        api_token=api.api_token, account_id=api.account_id, base_url=url,
        rate_limit=RateLimit(5, 0.3), coalesce=False,
    ) as session, session.get_instances(WF, ["a"] * 12, concurrency=12) as batch:
        assert len([r async for r in batch if r.ok]) == 12
    t = sorted(r.received_at for r in api.requests)
    assert t[5] - t[0] >= 0.3 - 0.05
    assert t[10] - t[5] >= 0.3 - 0.05


@pytest.mark.anyio
async def test_a_progress_hook_that_raises_on_entry_starts_nothing() -> None:
    api = FakeWorkflowsAPI()

    def broken(progress: BatchProgress) -> None:
        raise ZeroDivisionError(progress.total)

    async def enter(session: WorkflowsSession) -> None:
        async with session.get_instances(WF, ["a", "b"], on_progress=broken):
            pass

    async with _session(api) as session:
        with pytest.raises(ZeroDivisionError):
            await enter(session)
        await anyio.sleep(0.05)
    assert api.requests == []


@pytest.mark.anyio
async def test_batch_must_be_entered_and_runs_once() -> None:
    api = FakeWorkflowsAPI()
    async with _session(api) as session:
        batch = session.get_instances(WF, ["a", "b"])
        with pytest.raises(RuntimeError, match="async with"):
            await batch.__anext__()
        async with batch:
            assert len([r async for r in batch]) == 2
        with pytest.raises(RuntimeError, match="runs once"):
            async with batch:
                pass
        async with session.get_instances(WF, []) as empty:
            assert [r async for r in empty] == []


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("call", "error", "name"),
    [
        (lambda s: s.get_instances(WF, "order-1"), TypeError, "instance_ids"),
        (lambda s: s.get_instances(WF, ["ok", ""]), ValueError, r"instance_ids\[1\]"),
        (lambda s: s.get_instances(WF, ["ok", 7]), TypeError, r"instance_ids\[1\]"),
        (lambda s: s.get_instances(WF, ["ok"], concurrency=0), ValueError, "concurrency"),
        (lambda s: s.get_instances(WF, ["ok"], concurrency=2.5), TypeError, "concurrency"),
        (lambda s: s.get_instances("", ["ok"]), ValueError, "workflow_name"),
        (lambda s: s.get_instances(WF, ["ok"], order="up"), ValueError, "order"),
        (lambda s: s.get_instances(WF, ["ok"], on_progress=3), TypeError, "on_progress"),
        (lambda s: s.get_step_outputs(WF, "r", concurrency=-1), ValueError, "concurrency"),
        (lambda s: s.get_step_outputs(WF, "r", max_stream_bytes=-1), ValueError,
         "max_stream_bytes"),
        (lambda s: s.get_step_outputs(WF, "r", stream_dir=3), TypeError, "stream_dir"),
        (lambda s: s.get_step_outputs(WF, "r", steps="a-1"), TypeError, "steps"),
        (lambda s: s.get_step_outputs(WF, "r", steps=[StepRef("a", "sleep")]), ValueError,
         r"steps\[0\].type"),
        (lambda s: s.get_step_outputs(WF, "r", steps=["ok", "bad\ud800"]), ValueError,
         r"steps\[1\]\.name"),
        (lambda s: s.get_step_outputs(WF, "r", steps=[StepRef("\udfff")]), ValueError,
         r"steps\[0\]\.name"),
        (lambda s: s.get_step_outputs(WF, "r", steps=[""]), ValueError, r"steps\[0\]\.name"),
        (lambda s: s.get_step_outputs(WF, "r", max_stream_bytes="9"), TypeError,
         "max_stream_bytes"),
        (lambda s: s.get_step_outputs(WF, "r", max_stream_bytes=True), TypeError,
         "max_stream_bytes"),
        (lambda s: s.get_step_outputs(WF, ""), ValueError, "instance_id"),
    ],
)
async def test_invalid_arguments_fail_before_any_request(
    call: Callable[[WorkflowsSession], Batch[Any, Any]], error: type[Exception], name: str
) -> None:
    api = FakeWorkflowsAPI()
    async with _session(api) as session:
        with pytest.raises(error, match=name):
            call(session)
    assert api.requests == []


# ---------------------------------------------------------------------------
# get_step_outputs


def _instance_with_outputs(api: FakeWorkflowsAPI, big: int = 300_000) -> None:
    """Steps 0..2 (JSON, streamed, missing), a waitForEvent and a sleep."""
    body = make_instance("complete", steps=3)
    body["steps"] += [
        {"type": "waitForEvent", "name": "approval-1", "start": None, "end": None,
         "finished": True, "error": None, "output": {"ok": True}},
        {"type": "sleep", "name": "nap-1", "start": None, "end": None, "finished": True,
         "error": None},
    ]
    api.add_instance(WF, "run-1", body)
    api.add_step_output(WF, "run-1", "step 0-1", {"n": 0})
    api.add_step_output(WF, "run-1", "step 1-1", StreamBody.repeat(big, fill=b"ab"))
    api.add_step_output(WF, "run-1", "approval-1", {"ok": True}, type="waitForEvent")


def _names(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


async def _outputs(
    session: WorkflowsSession, **kwargs: Any
) -> dict[StepRef, BatchResult[StepRef, StepOutput | StreamedOutput]]:
    async with session.get_step_outputs(WF, "run-1", **kwargs) as batch:
        return {r.key: r async for r in batch}


@pytest.mark.anyio
async def test_step_outputs_from_the_log_saved_to_a_directory(tmp_path: Path) -> None:
    api = FakeWorkflowsAPI()
    _instance_with_outputs(api)
    out_dir = tmp_path / "outputs"
    async with _session(api) as session:
        results = await _outputs(session, stream_dir=out_dir)
    assert set(results) == {
        StepRef("step 0-1"), StepRef("step 1-1"), StepRef("step 2-1"),
        StepRef("approval-1", "waitForEvent"),
    }
    json_out = results[StepRef("step 0-1")].unwrap()
    assert isinstance(json_out, StepOutput)
    assert json_out.output == {"n": 0}
    streamed = results[StepRef("step 1-1")].unwrap()
    assert isinstance(streamed, StreamedOutput)
    assert streamed.path == out_dir / "step%201-1.bin"
    assert streamed.data is None
    assert streamed.size == 300_000
    assert streamed.path.read_bytes() == b"ab" * 150_000
    assert isinstance(results[StepRef("step 2-1")].error, NotFoundError)
    wait = results[StepRef("approval-1", "waitForEvent")].unwrap()
    assert isinstance(wait, StepOutput)
    assert wait.output == {"ok": True}
    # The log fetch, then one request per step with an output (the sleep has none).
    assert len(api.requests) == 5
    assert _names(out_dir) == ["step%201-1.bin"]


@pytest.mark.anyio
async def test_streamed_outputs_read_into_memory_under_a_cap() -> None:
    api = FakeWorkflowsAPI()
    _instance_with_outputs(api, big=1000)
    async with _session(api) as session:
        fits = await _outputs(session, steps=["step 1-1"], max_stream_bytes=1000)
        over = await _outputs(session, steps=[StepRef("step 1-1")], max_stream_bytes=999)
        refused = await _outputs(session, steps=["step 1-1", "step 0-1"])
    value = fits[StepRef("step 1-1")].unwrap()
    assert isinstance(value, StreamedOutput)
    assert value.data == b"ab" * 500
    assert value.path is None
    error = over[StepRef("step 1-1")].error
    assert isinstance(error, OutputTooLargeError)
    assert (error.size, error.limit) == (1000, 999)
    # With neither a directory nor a cap a streamed output is refused, unread; the
    # JSON output next to it is unaffected.
    error = refused[StepRef("step 1-1")].error
    assert isinstance(error, OutputTooLargeError)
    assert "stream_dir" in str(error)
    assert refused[StepRef("step 0-1")].ok


@pytest.mark.anyio
async def test_a_chunked_stream_over_the_cap_leaves_no_file(tmp_path: Path) -> None:
    api = FakeWorkflowsAPI()
    _instance_with_outputs(api)

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(10):
            yield b"x" * 1000

    api.add_step_output(WF, "run-1", "step 1-1", StreamBody(chunks, None))  # no length
    async with _session(api) as session:
        results = await _outputs(
            session, steps=["step 1-1"], stream_dir=tmp_path, max_stream_bytes=2500
        )
        again = await _outputs(
            session, steps=["step 1-1"], stream_dir=tmp_path, max_stream_bytes=10_000
        )
    assert isinstance(results[StepRef("step 1-1")].error, OutputTooLargeError)
    saved = again[StepRef("step 1-1")].unwrap()
    assert isinstance(saved, StreamedOutput)
    assert saved.size == 10_000
    assert _names(tmp_path) == ["step%201-1.bin"]


@pytest.mark.anyio
async def test_step_names_cannot_escape_the_stream_directory(tmp_path: Path) -> None:
    api = FakeWorkflowsAPI()
    api.add_instance(WF, "run-1", make_instance("complete", steps=0))
    api.add_step_output(WF, "run-1", "../../evil-1", b"payload")
    out_dir = tmp_path / "out"
    async with _session(api) as session:
        results = await _outputs(session, steps=["../../evil-1"], stream_dir=out_dir)
    saved = results[StepRef("../../evil-1")].unwrap()
    assert isinstance(saved, StreamedOutput)
    assert saved.path is not None
    assert saved.path.parent == out_dir
    assert saved.path.read_bytes() == b"payload"
    assert _names(tmp_path) == ["out"]


@pytest.mark.anyio
async def test_step_outputs_of_a_missing_instance_raise_on_entry() -> None:
    api = FakeWorkflowsAPI()
    async with _session(api) as session:
        with pytest.raises(NotFoundError):
            await _outputs(session)
    assert len(api.requests) == 1


# ---------------------------------------------------------------------------
# Results a type checker can narrow

NARROWED = """\
from cfwf_async import WorkflowsSession


async def report(session: WorkflowsSession, ids: list[str]) -> None:
    async with session.get_instances("checkout", ids) as batch:
        async for result in batch:
            if result.ok:
                print(result.key, result.value.status)
            else:
                print(result.key, "failed:", result.error.args)
"""

MATCHED = """\
from cfwf_async import NotFoundError, WorkflowsSession
from cfwf_async.batch import BatchFailure, BatchSuccess


async def report(session: WorkflowsSession, ids: list[str]) -> list[str]:
    missing: list[str] = []
    async with session.get_instances("checkout", ids) as batch:
        async for result in batch:
            match result:
                case BatchSuccess(key, inst):
                    print(key, inst.status)
                case BatchFailure(key, NotFoundError()):
                    missing.append(key)
                case BatchFailure(key, error):
                    print(key, error.args)
    return missing
"""

UNNARROWED = """\
from cfwf_async import WorkflowsSession


async def report(session: WorkflowsSession, ids: list[str]) -> None:
    async with session.get_instances("checkout", ids) as batch:
        async for result in batch:
            print(result.value.status)
"""


@pytest.mark.skipif(importlib.util.find_spec("mypy") is None, reason="mypy is not installed")
def test_mypy_strict_narrows_a_result_on_ok_and_on_match(tmp_path: Path) -> None:
    sources = {name: tmp_path / f"{name}.py" for name in ("narrowed", "matched", "unnarrowed")}
    for name, code in (("narrowed", NARROWED), ("matched", MATCHED), ("unnarrowed", UNNARROWED)):
        sources[name].write_text(code)
    root = Path(__file__).resolve().parent.parent
    run = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental",
         "--cache-dir", os.fspath(tmp_path / "cache"), *map(os.fspath, sources.values())],
        capture_output=True, text=True, cwd=tmp_path, check=False,
        env={**os.environ, "MYPYPATH": os.fspath(root)},
    )
    errors = [line for line in run.stdout.splitlines() if ": error:" in line]
    # The two snippets written as a user would are clean ...
    assert not [e for e in errors if "unnarrowed.py" not in e], run.stdout + run.stderr
    # ... and the check has teeth: without testing `ok`, `value` may be None.
    assert len(errors) == 1, run.stdout + run.stderr
    assert 'Item "None" of "Instance | None" has no attribute "status"' in errors[0]


def test_success_and_failure_carry_what_their_kind_promises() -> None:
    good: BatchResult[str, int] = BatchSuccess("a", 3)
    bad: BatchResult[str, int] = BatchFailure("b", NotFoundError("gone", status_code=404))
    assert (good.ok, good.value, good.error, good.unwrap()) == (True, 3, None, 3)
    assert (bad.ok, bad.value) == (False, None)
    with pytest.raises(NotFoundError, match="gone"):
        bad.unwrap()
    seen = []
    for result in (good, bad):
        match result:
            case BatchSuccess(key, value):
                seen.append((key, value))
            case BatchFailure(key, NotFoundError() as error):
                seen.append((key, str(error)))
    assert seen == [("a", 3), ("b", "gone")]
    assert repr(good) == "BatchSuccess(key='a', value=3)"
    with pytest.raises(AttributeError):
        good.ok = False  # type: ignore[misc]


def test_batch_imports_no_session() -> None:
    """The session builds batches from callables; batch.py never reaches back into it."""
    assert batch_module.__file__ is not None
    tree = ast.parse(Path(batch_module.__file__).read_text())
    imported = {
        node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
    } | {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import)
         for alias in node.names}
    assert not any("session" in name for name in imported), imported


# ---------------------------------------------------------------------------
# Streamed outputs on disk: one complete file per result, names that fit


@pytest.mark.anyio
async def test_a_step_listed_twice_gives_two_correct_results(tmp_path: Path) -> None:
    api = FakeWorkflowsAPI()
    api.add_instance(WF, "run-1", make_instance("complete", steps=0))
    size = 2 * 1024 * 1024
    answers = itertools.count()

    def chunks() -> AsyncIterator[bytes]:
        # Each request gets its own bytes, so a file mixing two answers shows.
        return StreamBody.repeat(size, chunk_size=64 * 1024,
                                 fill=b"AB"[next(answers) % 2 : ][:1]).chunks()

    api.add_step_output(WF, "run-1", "export-1", StreamBody(chunks, size))
    api.add_step_output(WF, "run-1", "json-1", {"n": 1})
    out_dir = tmp_path / "out"
    async with _session(api) as session, session.get_step_outputs(
        WF, "run-1", steps=["export-1", "json-1", "export-1", "json-1"],
        stream_dir=out_dir, concurrency=4,
    ) as batch:
        results = [r async for r in batch]
    assert len(results) == 4
    for result in results:
        assert result.ok, result.error
        if result.key.name == "json-1":
            assert isinstance(result.value, StepOutput)
            assert result.value.output == {"n": 1}
            continue
        value = result.value
        assert isinstance(value, StreamedOutput)
        assert value.size == size
        assert value.path == out_dir / "export-1.bin"
        data = value.path.read_bytes()
        assert data in (b"A" * size, b"B" * size), "a complete file of one answer"
    assert _names(out_dir) == ["export-1.bin"]


@pytest.mark.anyio
async def test_long_step_names_are_saved_under_names_that_fit(tmp_path: Path) -> None:
    api = FakeWorkflowsAPI()
    api.add_instance(WF, "run-1", make_instance("complete", steps=0))
    names = [
        "数" * 28,  # 252 bytes once percent-encoded: with ".bin", over 255
        "数" * 28 + "-1",
        "数" * 28 + "-2",  # differs from the one above only after the cut
        "x" * 1000,
        "a.b/" * 100,
        "\U0001f600" * 70,
    ]
    for i, name in enumerate(names):
        api.add_step_output(WF, "run-1", name, f"payload {i}".encode())
    api.add_step_output(WF, "run-1", "数" * 40, b"wait", type="waitForEvent")
    refs = [StepRef(n) for n in names] + [StepRef("数" * 40, "waitForEvent")]
    out_dir = tmp_path / "out"
    async with _session(api) as session:
        results = await _outputs(session, steps=refs, stream_dir=out_dir)
    paths = set()
    for i, ref in enumerate(refs):
        value = results[ref].unwrap()
        assert isinstance(value, StreamedOutput)
        assert value.path is not None
        assert value.path.parent == out_dir
        assert len(os.fsencode(value.path.name)) <= 255
        expected = b"wait" if ref.type == "waitForEvent" else f"payload {i}".encode()
        assert value.path.read_bytes() == expected
        paths.add(value.path)
    assert len(paths) == len(refs)
    assert sorted(p.name for p in paths) == _names(out_dir)


_NAMES = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=400)


@settings(max_examples=200, deadline=None)
@given(a=_NAMES, b=_NAMES, wait=st.booleans())
def test_stream_file_names_are_short_unique_and_plain(a: str, b: str, wait: bool) -> None:
    first = stream_filename(StepRef(a, "waitForEvent" if wait else "step"))
    second = stream_filename(StepRef(b))
    for name in (first, second):
        assert len(name.encode()) <= 255
        assert not set(name) & {"/", "\\", "\0"}
        assert not name.startswith(".")
        assert name.isascii()
    assert (first == second) == (a == b and not wait)
    # Short names stay readable: the plain percent-encoded name, nothing appended.
    if len(b) <= 20 and b.isalnum() and b.isascii():
        assert second == b + ".bin"


def test_a_cut_name_cannot_equal_a_whole_one() -> None:
    cut = stream_filename(StepRef("x" * 300))
    stem, digest, suffix = cut.split(".")
    assert suffix == "bin"
    assert len(digest) == 16
    # A step literally named like the cut name encodes its dot, so it differs.
    assert stream_filename(StepRef(f"{stem}.{digest}")) != cut


@pytest.mark.anyio
async def test_a_stream_dir_that_cannot_be_a_directory_fails_before_any_request(
    tmp_path: Path,
) -> None:
    api = FakeWorkflowsAPI()
    a_file = tmp_path / "taken"
    a_file.write_bytes(b"not a directory")
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "nowhere")
    async with _session(api) as session:
        for bad, says in (
            (a_file, "exists and is not a directory"),
            (a_file / "sub" / "dir", "cannot be created"),
            (dangling, "exists and is not a directory"),
        ):
            with pytest.raises(ValueError, match="stream_dir") as info:
                session.get_step_outputs(WF, "run-1", stream_dir=bad)
            assert says in str(info.value)
        # A directory that does not exist yet is fine: it is made on the first save.
        session.get_step_outputs(WF, "run-1", stream_dir=tmp_path / "new" / "dir")
    assert api.requests == []
    assert a_file.read_bytes() == b"not a directory"
    assert not (tmp_path / "new").exists()


def test_dot_names_are_ordinary_step_names() -> None:
    refs = batch_module.check_step_refs([".", ".."])
    assert [r.name for r in refs] == [".", ".."]
    assert stream_filename(refs[1]) == "%2E%2E.bin"
