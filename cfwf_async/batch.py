"""Batch fetching: many instances, or every step output of an instance, concurrently.

A :class:`Batch` runs a fixed pool of ``concurrency`` workers inside an anyio task
group and hands results over as they complete, one result per input: a
:class:`BatchSuccess` holding the value or a :class:`BatchFailure` holding the
exception. A failure never cancels the rest, and no input is ever dropped. Every
request still goes through the session's limiter and retry policy, so a batch of
thousands stays within Cloudflare's quota.

A batch is an async context manager: the workers live exactly as long as the
``async with`` block, so leaving it early (``break``, an exception, cancellation)
cancels the outstanding requests and releases their connections. ``result.ok`` is a
literal ``True`` or ``False``, so a type checker narrows the result on it::

    async with session.get_instances("checkout", ids, concurrency=16) as batch:
        async for result in batch:
            if result.ok:
                print(result.key, result.value.status)
            else:
                print(result.key, "failed:", result.error.args)

This module knows nothing of the session: the builders take the calls to make
(``fetch_instance``, ``fetch_output``, ``fetch_log``) as callables, and
:meth:`~cfwf_async.WorkflowsSession.get_instances` and
:meth:`~cfwf_async.WorkflowsSession.get_step_outputs` pass their own.
"""

from __future__ import annotations

import hashlib
import os
import sys
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Final, Generic, Literal, NoReturn, Self, TypeVar, Union

import anyio
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from . import _protocol as proto
from ._resource import AsyncResource
from .errors import OutputTooLargeError
from .models import Instance, StepOutput, StepRun, WaitForEventStep
from .streaming import StepStream

__all__ = [
    "Batch",
    "BatchFailure",
    "BatchProgress",
    "BatchResult",
    "BatchSuccess",
    "StepRef",
    "StreamedOutput",
]

K = TypeVar("K")
V = TypeVar("V")

_STREAM_SUFFIX: Final = ".bin"
#: Longest file name written under ``stream_dir``, in bytes. File systems allow 255;
#: the rest is left for a suffix another tool may add beside it (``.part``, ``~``).
_STREAM_NAME_MAX: Final = 240
#: Hex digits of the hash that keeps a shortened stream file name unique.
_NAME_HASH_HEX: Final = 16


# ---------------------------------------------------------------------------
# Results


@dataclass(frozen=True, slots=True)
class BatchSuccess(Generic[K, V]):
    """The outcome for one input whose fetch succeeded: its ``key`` and its ``value``.

    ``ok`` is always ``True`` and ``error`` always ``None``; they are there so code
    can test any result the same way, and so a type checker narrows on ``result.ok``.
    """

    key: K
    value: V
    ok: Literal[True] = field(default=True, init=False, repr=False)
    error: None = field(default=None, init=False, repr=False)

    def unwrap(self) -> V:
        """The value."""
        return self.value


@dataclass(frozen=True, slots=True)
class BatchFailure(Generic[K]):
    """The outcome for one input whose fetch failed: its ``key`` and its ``error``.

    ``error`` is the exception the fetch raised, usually a
    :class:`~cfwf_async.WorkflowsError` such as :class:`~cfwf_async.NotFoundError`.
    ``ok`` is always ``False`` and ``value`` always ``None``.
    """

    key: K
    error: Exception
    ok: Literal[False] = field(default=False, init=False, repr=False)
    value: None = field(default=None, init=False, repr=False)

    def unwrap(self) -> NoReturn:
        """Raise the stored error."""
        raise self.error


#: The outcome for one input of a batch: ``BatchResult[K, V]`` is
#: ``BatchSuccess[K, V] | BatchFailure[K]``. Test ``result.ok`` (a type checker then
#: knows which), or ``match`` on the two classes::
#:
#:     match result:
#:         case BatchSuccess(key, inst):
#:             print(key, inst.status)
#:         case BatchFailure(key, NotFoundError()):
#:             missing.append(key)
BatchResult = Union[BatchSuccess[K, V], BatchFailure[K]]  # noqa: UP007 - a generic alias


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


# ---------------------------------------------------------------------------
# The batch


class Batch(AsyncResource, Generic[K, V]):
    """Results of a concurrent fetch, delivered as they complete.

    Use it as ``async with batch: async for result in batch``: entering starts at most
    ``concurrency`` workers (never one task per input, so a million ids cost
    ``concurrency`` tasks), iterating yields one :data:`BatchResult` per input in
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

    async def __aenter__(self) -> Self:
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
    ) -> None:
        # The block's own exception goes to the task group, which must see a
        # cancellation leave through it; an ordinary error stays the caller's.
        if isinstance(exc, Exception):
            await self._stop(None, None, None)
        else:
            await self._stop(exc_type, exc, tb)

    async def aclose(self) -> None:
        """Cancel whatever is still running and wait for the workers to unwind."""
        await self._stop(None, None, None)

    async def _stop(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        task_group, self._task_group = self._task_group, None
        if task_group is None:
            return
        # Whatever is still running is no longer wanted: cancel it, then wait for the
        # workers to unwind (their connections are released on the way out). The
        # workers never raise, so the task group adds no error of its own.
        task_group.cancel_scope.cancel()
        if self._receive is not None:
            self._receive.close()
        await task_group.__aexit__(exc_type, exc, tb)

    def __aiter__(self) -> Self:
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
        if not result.ok:
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
                    result: BatchResult[K, V] = BatchFailure(key, exc)
                else:
                    result = BatchSuccess(key, value)
                await send.send(result)


class _FetchOnce(Generic[K, V]):
    """Fetches each distinct key once; every occurrence of a repeated key shares it.

    A step listed twice must not be fetched twice: both downloads would go to one
    ``stream_dir`` file, and two answers may differ (a step retried in between), so a
    result could point at bytes that are not its own. An outcome is kept only until
    the last occurrence of its key has taken it.
    """

    def __init__(self, fetch: Callable[[K], Awaitable[V]], keys: Sequence[K]) -> None:
        self._fetch = fetch
        self._left = Counter(keys)
        self._ready: dict[K, anyio.Event] = {}
        self._outcomes: dict[K, tuple[V] | Exception] = {}

    async def __call__(self, key: K) -> V:
        ready = self._ready.get(key)
        if ready is None:
            ready = self._ready[key] = anyio.Event()
            try:
                self._outcomes[key] = (await self._fetch(key),)
            except Exception as exc:
                self._outcomes[key] = exc
            # Not set on cancellation: the waiters belong to the same task group and
            # are cancelled with it.
            ready.set()
        else:
            await ready.wait()
        outcome = self._outcomes[key]
        self._left[key] -= 1
        if self._left[key] == 0:
            del self._outcomes[key]
        if isinstance(outcome, Exception):
            raise outcome
        return outcome[0]


# ---------------------------------------------------------------------------
# Arguments of the session's batch methods


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


def _check_step_name(name: str, value: object) -> str:
    # A step name travels in the query string, where "." and ".." are ordinary
    # names; everything else is the path-segment rule (a non-empty str that UTF-8
    # can carry, so a lone surrogate fails here and not inside a request).
    if value in (".", ".."):
        return proto.check_str(name, value)
    return proto.check_path_segment(name, value, max_len=sys.maxsize)


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
        _check_step_name(f"steps[{i}].name", ref.name)
        proto.check_choice(f"steps[{i}].type", ref.type, proto.STEP_TYPES)
        refs.append(ref)
    return refs


def _check_stream_dir(directory: Path) -> Path:
    """Refuse a ``stream_dir`` that can never hold a file, before any request.

    Mirrors :func:`cfwf_async._files.check_target` for a directory that is created on
    demand: it must be a directory already, or its nearest existing ancestor must be
    one the process may create entries in.
    """
    shown = os.fspath(directory)
    existing = directory
    while not (existing.exists() or existing.is_symlink()) and existing.parent != existing:
        existing = existing.parent
    if existing == directory and not directory.is_dir():
        raise ValueError(f"stream_dir: {shown!r} exists and is not a directory")
    if not existing.is_dir():
        raise ValueError(
            f"stream_dir: {shown!r} cannot be created: {os.fspath(existing)!r} is not a "
            "directory"
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"stream_dir: {shown!r} cannot be written: permission denied")
    return directory


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
        directory = _check_stream_dir(Path(os.fspath(stream_dir)))
    cap: int | None = None
    if max_stream_bytes is not None:
        cap = proto.check_int("max_stream_bytes", max_stream_bytes)
    return directory, cap


# ---------------------------------------------------------------------------
# Step outputs


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
    never share a file and an encoded name never contains a ``.``; ``waitForEvent``
    outputs get ``.waitForEvent`` before the ``.bin`` suffix. A name is at most
    ``_STREAM_NAME_MAX`` bytes: a longer one is cut at a character boundary and gets
    ``.`` and a hash of the whole step name, which no uncut name can look like.
    """
    suffix = ("" if ref.type == "step" else "." + ref.type) + _STREAM_SUFFIX
    stem = proto.segment(ref.name)
    if len(stem) + len(suffix) <= _STREAM_NAME_MAX:
        return stem + suffix
    digest = hashlib.blake2b(
        ref.name.encode("utf-8", "surrogatepass"), digest_size=_NAME_HASH_HEX // 2
    ).hexdigest()
    room = _STREAM_NAME_MAX - len(suffix) - len(digest) - 1
    kept: list[str] = []
    for char in ref.name:
        # Encoded one character at a time, so the cut never splits an escape
        # sequence or the UTF-8 bytes of one character.
        encoded = proto.segment(char)
        if len(encoded) > room:
            break
        kept.append(encoded)
        room -= len(encoded)
    return "".join(kept) + "." + digest + suffix


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


# ---------------------------------------------------------------------------
# What the session's batch methods build


def instances_batch(
    fetch_instance: Callable[[str], Awaitable[Instance]],
    instance_ids: Iterable[str],
    *,
    concurrency: int,
    on_progress: ProgressHook | None,
) -> Batch[str, Instance]:
    """The batch behind ``get_instances``: ``fetch_instance(id)`` for every id (checked)."""
    ids = check_instance_ids(instance_ids)
    return Batch(ids, fetch_instance, concurrency=concurrency, on_progress=on_progress)


def step_outputs_batch(
    fetch_output: Callable[[StepRef], Awaitable[StepOutput | StepStream]],
    fetch_log: Callable[[], Awaitable[Instance]],
    *,
    steps: Iterable[StepRef | str] | None,
    concurrency: int,
    stream_dir: str | os.PathLike[str] | None,
    max_stream_bytes: int | None,
    on_progress: ProgressHook | None,
) -> Batch[StepRef, StepOutput | StreamedOutput]:
    """The batch behind ``get_step_outputs``.

    ``fetch_output(ref)`` fetches one step's output; ``fetch_log()`` the instance, whose
    log names the steps when ``steps`` is None (on entering the batch).
    """
    directory, cap = check_stream_options(stream_dir, max_stream_bytes)

    async def fetch(ref: StepRef) -> StepOutput | StreamedOutput:
        out = await fetch_output(ref)
        if isinstance(out, StepOutput):
            return out
        return await consume_stream(out, ref, stream_dir=directory, max_stream_bytes=cap)

    if steps is not None:
        refs = check_step_refs(steps)
        once = _FetchOnce(fetch, refs)
        return Batch(refs, once, concurrency=concurrency, on_progress=on_progress)

    async def from_log() -> Sequence[StepRef]:
        # A log names each step once, so nothing here needs fetching once.
        return steps_with_output(await fetch_log())

    return Batch(from_log, fetch, concurrency=concurrency, on_progress=on_progress)
