"""Batch fetching: many instances, or every step output of an instance, concurrently.

A :class:`Batch` runs a fixed pool of ``concurrency`` workers inside an anyio task
group and hands results over as they complete, one :class:`BatchResult` per input,
each holding the value or the exception for that input. A failure never cancels the
rest, and no input is ever dropped. Every request still goes through the session's
limiter and retry policy, so a batch of thousands stays within Cloudflare's quota.

A batch is an async context manager: the workers live exactly as long as the
``async with`` block, so leaving it early (``break``, an exception, cancellation)
cancels the outstanding requests and releases their connections::

    async with session.get_instances("checkout", ids, concurrency=16) as batch:
        async for result in batch:
            if result.ok:
                print(result.key, result.unwrap().status)
            else:
                print(result.key, "failed:", result.error)

The session methods :meth:`~cfwf_async.WorkflowsSession.get_instances` and
:meth:`~cfwf_async.WorkflowsSession.get_step_outputs` build batches; this module
holds the machinery and the result types.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Final, Generic, TypeVar

import anyio
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from . import _protocol as proto
from .errors import OutputTooLargeError
from .models import StepOutput, StepRun, WaitForEventStep
from .streaming import StepStream

if TYPE_CHECKING:
    from .models import Instance
    from .session import WorkflowsSession

__all__ = ["Batch", "BatchProgress", "BatchResult", "StepRef", "StreamedOutput"]

K = TypeVar("K")
V = TypeVar("V")

_STREAM_SUFFIX: Final = ".bin"


@dataclass(frozen=True, slots=True)
class BatchResult(Generic[K, V]):
    """The outcome for one input of a batch: its ``key`` and a value or an error.

    ``key`` is the input (an instance id, a :class:`StepRef`). Exactly one of ``value``
    and ``error`` is meaningful: ``ok`` tells which. ``error`` is the exception the
    fetch raised, usually a :class:`~cfwf_async.WorkflowsError` such as
    :class:`~cfwf_async.NotFoundError`::

        if result.ok:
            inst = result.unwrap()
        elif isinstance(result.error, NotFoundError):
            missing.append(result.key)
    """

    key: K
    value: V | None = None
    error: Exception | None = None

    @property
    def ok(self) -> bool:
        """True when the fetch succeeded (``error`` is None)."""
        return self.error is None

    def unwrap(self) -> V:
        """The value; raises the stored error when the fetch failed."""
        if self.error is not None:
            raise self.error
        return self.value  # type: ignore[return-value]


@dataclass(frozen=True, slots=True)
class BatchProgress:
    """Counts handed to a batch's ``on_progress`` hook.

    ``done`` results have been delivered so far (failures included), ``failed`` of them
    are errors, out of ``total`` inputs.
    """

    done: int
    failed: int
    total: int

    @property
    def succeeded(self) -> int:
        """Delivered results that hold a value."""
        return self.done - self.failed


@dataclass(frozen=True, slots=True)
class StepRef:
    """Names one step for the step-output endpoint: its exact ``name`` and its ``type``.

    ``name`` is the step name from the instance log, counter suffix included
    (``"fetch page-1"``); ``type`` is ``"step"`` or ``"waitForEvent"``.
    """

    name: str
    type: str = "step"


@dataclass(frozen=True, slots=True)
class StreamedOutput:
    """A streamed step output fetched by a batch, already read to the end.

    With ``stream_dir`` the bytes were written to ``path`` (``data`` is None); with only
    ``max_stream_bytes`` they are in ``data`` (``path`` is None). ``size`` is the
    number of bytes either way.
    """

    size: int
    content_type: str
    path: Path | None = None
    data: bytes | None = None
    cf_ray: str | None = None


ProgressHook = Callable[[BatchProgress], object]


class Batch(Generic[K, V]):
    """Results of a concurrent fetch, delivered as they complete.

    Use it as ``async with batch: async for result in batch``: entering starts at most
    ``concurrency`` workers (never one task per input, so a million ids cost
    ``concurrency`` tasks), iterating yields one :class:`BatchResult` per input in
    completion order, and leaving the block cancels whatever is still running. At
    most ``2 * concurrency`` finished results wait for the caller (a buffer of
    ``concurrency``, plus one per worker), so a slow consumer slows the workers down
    instead of growing memory.

    ``on_progress`` is called with a :class:`BatchProgress` once on entry (``done=0``,
    for a progress bar's total) and after each result is delivered, in the caller's
    task. ``progress`` and ``total`` can also be read at any time.
    """

    def __init__(
        self,
        keys: Sequence[K] | Callable[[], Awaitable[Sequence[K]]],
        fetch: Callable[[K], Awaitable[V]],
        *,
        concurrency: int,
        on_progress: ProgressHook | None = None,
    ) -> None:
        proto.check_positive_int("concurrency", concurrency)
        if on_progress is not None and not callable(on_progress):
            raise TypeError("on_progress must be a callable taking a BatchProgress")
        self._keys = keys
        self._fetch = fetch
        self._concurrency = concurrency
        self._on_progress = on_progress
        self._task_group: TaskGroup | None = None
        self._receive: MemoryObjectReceiveStream[BatchResult[K, V]] | None = None
        self._entered = False
        self._done = 0
        self._failed = 0
        #: Number of inputs; known once the batch has been entered.
        self.total: int | None = None if callable(keys) else len(keys)

    def __repr__(self) -> str:
        total = "?" if self.total is None else str(self.total)
        return f"<Batch {self._done}/{total} done, {self._failed} failed>"

    @property
    def progress(self) -> BatchProgress:
        """The counts so far (``total`` is 0 until the inputs are known)."""
        return BatchProgress(self._done, self._failed, self.total or 0)

    async def __aenter__(self) -> Batch[K, V]:
        if self._entered:
            raise RuntimeError("a Batch runs once; build a new one to fetch again")
        self._entered = True
        keys = self._keys if not callable(self._keys) else await self._keys()
        self.total = len(keys)
        # Before the task group starts, so a hook that raises leaves nothing running.
        self._report()
        send, receive = anyio.create_memory_object_stream[BatchResult[K, V]](
            self._concurrency
        )
        task_group = anyio.create_task_group()
        await task_group.__aenter__()
        self._task_group, self._receive = task_group, receive
        shared = iter(keys)
        with send:
            for _ in range(min(self._concurrency, len(keys))):
                task_group.start_soon(self._worker, shared, send.clone())
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        task_group, self._task_group = self._task_group, None
        if task_group is None:
            return None
        # Whatever is still running is no longer wanted: cancel it, then wait for the
        # workers to unwind (their connections are released on the way out).
        task_group.cancel_scope.cancel()
        if self._receive is not None:
            self._receive.close()
        if isinstance(exc, Exception):
            # The caller's own error: let it propagate as itself, not wrapped in an
            # ExceptionGroup by the task group (the workers never raise).
            await task_group.__aexit__(None, None, None)
            return False
        return await task_group.__aexit__(exc_type, exc, tb)

    def __aiter__(self) -> Batch[K, V]:
        return self

    async def __anext__(self) -> BatchResult[K, V]:
        if self._receive is None:
            raise RuntimeError(
                "enter the batch first: `async with session.get_instances(...) as batch:` "
                "then `async for result in batch`"
            )
        try:
            result = await self._receive.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError):
            raise StopAsyncIteration from None
        self._done += 1
        if result.error is not None:
            self._failed += 1
        self._report()
        return result

    def _report(self) -> None:
        if self._on_progress is not None:
            self._on_progress(self.progress)

    async def _worker(
        self, keys: Iterator[K], send: MemoryObjectSendStream[BatchResult[K, V]]
    ) -> None:
        # Workers share one iterator: next() never awaits, so no key is taken twice.
        async with send:
            for key in keys:
                try:
                    value = await self._fetch(key)
                except Exception as exc:
                    # One input's failure is that input's result, never the batch's.
                    result: BatchResult[K, V] = BatchResult(key, error=exc)
                else:
                    result = BatchResult(key, value)
                await send.send(result)


# ---------------------------------------------------------------------------
# What the session's batch methods run


def check_instance_ids(instance_ids: object) -> list[str]:
    """The ids as a list, each checked like ``get_instance`` checks one."""
    if isinstance(instance_ids, (str, bytes)) or not isinstance(instance_ids, Iterable):
        raise TypeError(
            "instance_ids must be an iterable of str (a list of ids, not a single id), "
            f"got {type(instance_ids).__name__}"
        )
    ids = list(instance_ids)
    for i, value in enumerate(ids):
        proto.check_instance_id(value, f"instance_ids[{i}]")
    return ids


def check_step_refs(steps: object) -> list[StepRef]:
    """Explicit steps for ``get_step_outputs``: ``StepRef`` objects or bare step names."""
    if isinstance(steps, (str, bytes)) or not isinstance(steps, Iterable):
        raise TypeError(
            f"steps must be an iterable of StepRef or str, got {type(steps).__name__}"
        )
    refs: list[StepRef] = []
    for i, item in enumerate(steps):
        ref = StepRef(item) if isinstance(item, str) else item
        if not isinstance(ref, StepRef):
            raise TypeError(f"steps[{i}] must be a StepRef or a str, got {type(item).__name__}")
        proto.check_str(f"steps[{i}].name", ref.name)
        proto.check_choice(f"steps[{i}].type", ref.type, proto.STEP_TYPES)
        refs.append(ref)
    return refs


def check_stream_options(
    stream_dir: object, max_stream_bytes: object
) -> tuple[Path | None, int | None]:
    """Validate where streamed outputs go: a directory, a byte cap, or both."""
    directory: Path | None = None
    if stream_dir is not None:
        if not isinstance(stream_dir, (str, os.PathLike)):
            raise TypeError(
                f"stream_dir must be a str or a path, got {type(stream_dir).__name__}"
            )
        directory = Path(os.fspath(stream_dir))
        if directory.exists() and not directory.is_dir():
            raise ValueError(f"stream_dir is not a directory: {directory}")
    if max_stream_bytes is not None and (
        isinstance(max_stream_bytes, bool)
        or not isinstance(max_stream_bytes, int)
        or max_stream_bytes < 0
    ):
        raise ValueError(f"max_stream_bytes must be an int >= 0 or None, got {max_stream_bytes!r}")
    return directory, max_stream_bytes


def steps_with_output(instance: Instance) -> list[StepRef]:
    """The steps of a log whose output the step endpoint serves, each once, in log order.

    ``step.do`` runs and ``waitForEvent`` steps have outputs; sleeps, terminations,
    rollbacks and unknown step types are skipped.
    """
    seen: dict[StepRef, None] = {}
    for step in instance.steps:
        # RollbackStep subclasses StepRun but the endpoint knows no "rollback" type.
        if isinstance(step, StepRun) and step.type == "step" and step.name:
            seen.setdefault(StepRef(step.name, "step"))
        elif isinstance(step, WaitForEventStep) and step.name:
            seen.setdefault(StepRef(step.name, "waitForEvent"))
    return list(seen)


def stream_filename(ref: StepRef) -> str:
    """A file name for a step's streamed output that no step name can escape.

    The name is percent-encoded (``/``, ``..`` and ``.`` included), so distinct steps
    never share a file; ``waitForEvent`` outputs get their type in the name.
    """
    stem = proto.segment(ref.name)
    if ref.type != "step":
        stem += "." + ref.type
    return stem + _STREAM_SUFFIX


async def consume_stream(
    stream: StepStream,
    ref: StepRef,
    *,
    stream_dir: Path | None,
    max_stream_bytes: int | None,
) -> StreamedOutput:
    """Read a streamed output to the end the way the caller chose, releasing it always."""
    async with stream:
        cap = max_stream_bytes
        if stream_dir is None and cap is None:
            raise OutputTooLargeError(
                f"step {ref.name!r} returned a streamed output "
                f"({_size_text(stream.content_length)}); pass stream_dir= to save streamed "
                "outputs or max_stream_bytes= to read them into memory",
                size=stream.content_length,
                limit=0,
                cf_ray=stream.cf_ray,
            )
        if stream_dir is None:
            data = await stream.read(cap)
            return StreamedOutput(
                len(data), stream.content_type, data=data, cf_ray=stream.cf_ray
            )
        if cap is not None and stream.content_length is not None and stream.content_length > cap:
            raise _too_large(ref, stream, cap)

        def check_cap(received: int, _: int | None) -> None:
            if cap is not None and received > cap:
                raise _too_large(ref, stream, cap)

        await anyio.Path(stream_dir).mkdir(parents=True, exist_ok=True)
        path = stream_dir / stream_filename(ref)
        size = await stream.save(path, progress=check_cap)
        return StreamedOutput(size, stream.content_type, path=path, cf_ray=stream.cf_ray)


def _size_text(size: int | None) -> str:
    return "size unknown" if size is None else f"{size} bytes"


def _too_large(ref: StepRef, stream: StepStream, cap: int) -> OutputTooLargeError:
    return OutputTooLargeError(
        f"step {ref.name!r}: the streamed output ({_size_text(stream.content_length)}) "
        f"exceeds max_stream_bytes={cap}",
        size=stream.content_length,
        limit=cap,
        cf_ray=stream.cf_ray,
    )


def instances_batch(
    session: WorkflowsSession,
    workflow_name: str,
    instance_ids: Iterable[str],
    *,
    concurrency: int,
    order: str | None,
    simple: bool | None,
    account_id: str | None,
    on_progress: ProgressHook | None,
) -> Batch[str, Instance]:
    """Build the batch behind :meth:`WorkflowsSession.get_instances` (arguments checked)."""
    ids = check_instance_ids(instance_ids)

    async def fetch(instance_id: str) -> Instance:
        return await session.get_instance(
            workflow_name, instance_id, order=order, simple=simple, account_id=account_id
        )

    return Batch(ids, fetch, concurrency=concurrency, on_progress=on_progress)


def step_outputs_batch(
    session: WorkflowsSession,
    workflow_name: str,
    instance_id: str,
    *,
    steps: Iterable[StepRef | str] | None,
    concurrency: int,
    stream_dir: str | os.PathLike[str] | None,
    max_stream_bytes: int | None,
    account_id: str | None,
    on_progress: ProgressHook | None,
) -> Batch[StepRef, StepOutput | StreamedOutput]:
    """Build the batch behind :meth:`WorkflowsSession.get_step_outputs`."""
    directory, cap = check_stream_options(stream_dir, max_stream_bytes)
    keys: Sequence[StepRef] | Callable[[], Awaitable[Sequence[StepRef]]]
    if steps is not None:
        keys = check_step_refs(steps)
    else:

        async def from_log() -> Sequence[StepRef]:
            instance = await session.get_instance(
                workflow_name, instance_id, account_id=account_id
            )
            return steps_with_output(instance)

        keys = from_log

    async def fetch(ref: StepRef) -> StepOutput | StreamedOutput:
        out = await session.get_step_output(
            workflow_name, instance_id, name=ref.name, type=ref.type, account_id=account_id
        )
        if isinstance(out, StepOutput):
            return out
        return await consume_stream(out, ref, stream_dir=directory, max_stream_bytes=cap)

    return Batch(keys, fetch, concurrency=concurrency, on_progress=on_progress)
