"""The sans-I/O side of the write calls, workflows, versions and raw instance answers.

Paths, argument checks, request bodies, answer decoders, and how a failed write is
classified (refused, already exists, outcome unknown). Pure functions only, like
:mod:`cfwf_async._protocol`, whose checks and envelope handling this reuses.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable
from typing import Any, Final, Generic, TypeVar

import msgspec

from . import _decoding, errors
from . import _protocol as proto
from .models import (
    BatchItemError,
    CreatedInstance,
    Envelope,
    InstanceBatchResult,
    NewInstance,
    StatusChange,
    VersionGraph,
    Workflow,
    WorkflowVersion,
)

T = TypeVar("T")

#: The API's length limit for an event type.
EVENT_TYPE_MAX: Final = 100
#: How many entries one batch request carries (the Workers binding's cap).
BATCH_SIZE: Final = 100
#: The step types a restart may name in ``from``.
RESTART_STEP_TYPES: Final = ("do", "sleep", "waitForEvent")
#: Which statuses count as "already there" for each status change.
TARGET_STATES: Final[dict[str, Callable[[str], bool]]] = {
    "pause": lambda s: s in ("paused", "waitingForPause"),
    "resume": lambda s: s not in ("paused", "waitingForPause"),
    "terminate": lambda s: s == "terminated",
}


# ---------------------------------------------------------------------------
# Paths


def workflows_path(account_id: str) -> str:
    return f"/accounts/{proto.segment(account_id)}/workflows"


def workflow_path(account_id: str, workflow_name: str) -> str:
    return f"{workflows_path(account_id)}/{proto.segment(workflow_name)}"


def version_path(account_id: str, workflow_name: str, version_id: str | None = None) -> str:
    path = workflow_path(account_id, workflow_name) + "/versions"
    return path if version_id is None else f"{path}/{proto.segment(version_id)}"


def event_path(account_id: str, workflow_name: str, instance_id: str, event_type: str) -> str:
    base = proto.instance_path(account_id, workflow_name, instance_id)
    return f"{base}/events/{proto.segment(event_type)}"


# ---------------------------------------------------------------------------
# Arguments and bodies


def check_event_type(value: object) -> str:
    return proto.check_path_segment("event_type", value, max_len=EVENT_TYPE_MAX)


def check_version_id(value: object) -> str:
    return proto.check_path_segment("version_id", value, max_len=proto.INSTANCE_ID_MAX)


def workflow_body(class_name: object, script_name: object) -> bytes:
    """The ``PUT /workflows/{name}`` body: the Worker script and the class in it."""
    return msgspec.json.encode({
        "class_name": proto.check_str("class_name", class_name),
        "script_name": proto.check_str("script_name", script_name),
    })


def encode_json(name: str, value: object) -> bytes:
    """``value`` as JSON bytes; a value JSON cannot carry raises naming the argument."""
    try:
        return msgspec.json.encode(value)
    except TypeError as exc:
        raise TypeError(f"{name} cannot be encoded as JSON: {exc}") from None
    except (msgspec.EncodeError, ValueError, OverflowError, RecursionError) as exc:
        raise ValueError(f"{name} cannot be encoded as JSON: {exc}") from None


def new_instance_id() -> str:
    """An id for an instance the caller did not name, fixed before the first attempt."""
    return str(uuid.uuid4())


def create_entry(instance_id: str, params: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {"instance_id": instance_id}
    if params is not None:
        entry["params"] = params
    return entry


def check_new_instance(item: object, index: int) -> NewInstance:
    """One entry of a batch create, checked; its instance id generated when missing."""
    if not isinstance(item, NewInstance):
        raise TypeError(f"instances[{index}] must be a NewInstance, got {type(item).__name__}")
    name = f"instances[{index}]"
    if item.instance_id is None:
        instance_id = new_instance_id()
    else:
        instance_id = proto.check_instance_id(item.instance_id, f"{name}.instance_id")
    encode_json(f"{name}.params", item.params)
    return NewInstance(params=item.params, instance_id=instance_id)


def check_ids(instance_ids: Iterable[str]) -> list[str]:
    if isinstance(instance_ids, (str, bytes)):
        raise TypeError("instance_ids must be an iterable of ids, not a single str")
    return [proto.check_instance_id(i, f"instance_ids[{n}]") for n, i in enumerate(instance_ids)]


def status_body(
    action: str,
    *,
    rollback: bool = False,
    from_step: str | None = None,
    count: int | None = None,
    type: str | None = None,
) -> bytes:
    """The ``PATCH .../status`` body for ``action``."""
    body: dict[str, Any] = {"status": action}
    if not isinstance(rollback, bool):
        raise TypeError(f"rollback must be a bool, got {type_name(rollback)}")
    if rollback:
        body["rollback"] = True
    if from_step is not None:
        step: dict[str, Any] = {"name": proto.check_str("from_step", from_step)}
        if count is not None:
            step["count"] = proto.check_positive_int("count", count)
        if type is not None:
            step["type"] = proto.check_choice("type", type, RESTART_STEP_TYPES)
        body["from"] = step
    elif count is not None or type is not None:
        raise ValueError("count and type need from_step")
    return msgspec.json.encode(body)


def type_name(value: object) -> str:
    return type(value).__name__


def same_params(sent: Any, found: Any) -> bool:
    """Whether an instance's stored params are the ones a create sent.

    Compared as JSON values (what the server stored), so a tuple sent is a list found;
    no params sent matches none or an empty object stored.
    """
    if sent is None:
        return found is None or found == {}
    return bool(msgspec.json.decode(msgspec.json.encode(sent)) == found)


# ---------------------------------------------------------------------------
# Answers


#: Timestamps of workflow and version answers that may come without an offset (UTC).
_TIMES: Final = ("created_on", "modified_on", "triggered_on")
#: The per-status instance counts of a workflow, typed ``number`` by the API.
_COUNTS: Final = (
    "queued", "running", "paused", "errored", "terminated", "complete", "waiting",
    "waitingForPause",
)


def _repaired(model: Any, body: bytes) -> Any:
    """The second chance for a body the strict decoder refused: naive timestamps are
    UTC and whole-number counts (``50.0``) ints, at known fields only."""
    doc = _decoding._json_envelope(body)
    result = doc.get("result")
    for item in result if isinstance(result, list) else [result]:
        if isinstance(item, dict):
            _decoding._as_utc(item, _TIMES)
            _decoding._as_int(item.get("instances"), _COUNTS)
    return msgspec.convert(doc, Envelope[model])


def _lenient(model: Any) -> Callable[[bytes], Any]:
    decoder = msgspec.json.Decoder(Envelope[model])

    def decode(body: bytes) -> Any:
        try:
            return decoder.decode(body)
        except msgspec.ValidationError:
            return _repaired(model, body)

    return decode


def _decoder(model: Any, what: str) -> Callable[..., Any]:
    decode_envelope = _lenient(model)

    def decode(body: bytes, *, status: int = 200, cf_ray: str | None = None) -> Any:
        return proto.decode_result(decode_envelope, body, what=what, status=status,
                                   cf_ray=cf_ray)

    return decode


class NumberedPage(msgspec.Struct, Generic[T], frozen=True, gc=False):
    """One page of a page-numbered listing (workflows, versions)."""

    items: list[T]
    total_pages: int | None = None
    status: int = 200
    cf_ray: str | None = None


def _page_decoder(model: Any, what: str) -> Callable[..., Any]:
    decode_envelope = _lenient(list[model])

    def decode(body: bytes, *, status: int = 200, cf_ray: str | None = None) -> Any:
        env = proto.decode_result(
            lambda b: _with_list(decode_envelope(b)), body, what=what, status=status,
            cf_ray=cf_ray,
        )
        items, info = env
        pages = None if info is None else info.total_pages
        return NumberedPage(items, pages, status, cf_ray)

    return decode


def _with_list(env: Envelope[Any]) -> Envelope[Any]:
    """The envelope with ``(items, result_info)`` as its result (a null list is empty),
    so the envelope checks of :func:`_protocol.decode_result` apply to pages too."""
    if env.success is False:
        return env
    return msgspec.structs.replace(env, result=(env.result or [], env.result_info))


decode_created: Final[Callable[..., CreatedInstance]] = _decoder(CreatedInstance, "create")
decode_created_list: Final[Callable[..., list[CreatedInstance]]] = _decoder(
    list[CreatedInstance], "batch create"
)
decode_status_change: Final[Callable[..., StatusChange]] = _decoder(StatusChange, "status")
decode_workflow: Final[Callable[..., Workflow]] = _decoder(Workflow, "workflow")
decode_workflows: Final[Callable[..., list[Workflow]]] = _decoder(list[Workflow], "workflows")
decode_version: Final[Callable[..., WorkflowVersion]] = _decoder(WorkflowVersion, "version")
decode_versions: Final[Callable[..., list[WorkflowVersion]]] = _decoder(
    list[WorkflowVersion], "versions"
)
decode_graph: Final[Callable[..., VersionGraph]] = _decoder(VersionGraph, "version graph")
decode_workflow_page: Final[Callable[..., NumberedPage[Workflow]]] = _page_decoder(
    Workflow, "workflow listing"
)
decode_version_page: Final[Callable[..., NumberedPage[WorkflowVersion]]] = _page_decoder(
    WorkflowVersion, "version listing"
)
_decode_any: Final = _decoder(Any, "batch")


def decode_nothing(body: bytes, *, status: int = 200, cf_ray: str | None = None) -> None:
    """A 2xx answer whose body carries nothing the caller needs (an event, a delete)."""


def decode_batch_result(
    body: bytes, *, status: int = 200, cf_ray: str | None = None
) -> InstanceBatchResult:
    """A batch delete or terminate answer: a list of ``{id}`` done, or an object with
    the ids done (``deleted`` / ``terminated`` / ``instances``) and ``errors``."""
    raw = _decode_any(body, status=status, cf_ray=cf_ray)
    done_items = raw
    error_items: Any = []
    if isinstance(raw, dict):
        done_items = raw.get("deleted") or raw.get("terminated") or raw.get("instances") or []
        error_items = raw.get("errors") or []
    try:
        done = [i if isinstance(i, str) else str(i["id"]) for i in done_items]
        errs = msgspec.convert(error_items, list[BatchItemError])
    except (KeyError, TypeError, msgspec.ValidationError) as exc:
        raise errors.APIResponseValidationError(
            f"batch: the {status} answer does not decode: {exc!r}",
            status_code=status, cf_ray=cf_ray,
        ) from None
    return InstanceBatchResult(done=done, errors=errs)


class _ResultOnly(msgspec.Struct, gc=False):
    result: msgspec.Raw


_result_only: Final = msgspec.json.Decoder(_ResultOnly)


def decode_instance_json(body: bytes, *, status: int = 200, cf_ray: str | None = None) -> bytes:
    """A 2xx ``get_instance`` body's own ``result``, byte for byte, once it decodes as an
    instance (a broken one raises as :func:`~cfwf_async._protocol.decode_instance` does)."""
    proto.decode_instance(body, status=status, cf_ray=cf_ray)
    return bytes(_decoding.surrogate_tolerant(_result_only.decode, body).result)


# ---------------------------------------------------------------------------
# Failures of writes

_EXISTS_WORDS: Final = ("already exist", "duplicate", "already in use", "unique")


def already_exists(exc: errors.WorkflowsError) -> bool:
    """A create refused because the id is taken: 409, or a 4xx whose message says so.

    Cloudflare documents no code for it, so both are recognised.
    """
    if not isinstance(exc, errors.APIStatusError) or exc.status_code not in (400, 409, 422):
        return False
    if exc.status_code == 409:
        return True
    text = " ".join(e.message for e in exc.errors).lower() or str(exc).lower()
    return any(word in text for word in _EXISTS_WORDS)


async def settle_delete(
    exc: errors.WorkflowsError, applied: bool, unknown: bool
) -> tuple[None] | None:
    """How a failed delete ends: an unknown outcome is retried, and a 404 after an
    earlier attempt may have been applied means that attempt deleted it."""
    if unknown:
        return None
    if applied and isinstance(exc, errors.NotFoundError):
        return (None,)
    raise exc


def refused(exc: errors.WorkflowsError) -> bool:
    """A definite refusal of a status change (400, 409 or 422): the API read the
    request and said no, for example to pausing a paused instance."""
    return isinstance(exc, errors.APIStatusError) and exc.status_code in (400, 409, 422)


def outcome_unknown(exc: errors.WorkflowsError) -> bool:
    """The request may have been applied: no answer after sending, a timeout, a 408 or
    a 5xx, or a 2xx whose body broke (call :func:`_transport.never_sent` first)."""
    if isinstance(exc, errors.APIStatusError):
        return exc.status_code == 408 or exc.status_code >= 500
    return isinstance(exc, (errors.APIConnectionError, errors.APIResponseValidationError))
