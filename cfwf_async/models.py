"""Typed models of what the Workflows API sends.

Declarations only: decoding lives in :mod:`cfwf_async._protocol`. Attributes are
snake_case; the few camelCase wire names (``versionId``, ``scheduledTime``) are renamed.
Fields the API reference types as ``number`` (counts, codes, a retry limit) take any
JSON number and keep its kind: ``50`` decodes as the int ``50``, ``50.0`` and ``2.5`` as
floats, so they are typed ``int | float``. Every datetime is timezone-aware: a timestamp
without an offset is UTC (see :mod:`cfwf_async._decoding`).
Every model ignores fields it does not know, and every status stays a plain ``str`` so
that values added by a newer API decode without error. Models are frozen and skip the
cyclic garbage collector (``gc=False``): decoded answers hold no reference cycles, and
leaving thousands of step objects out of GC scans is measurably faster.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any, Final, Generic, TypeVar, Union

import msgspec

__all__ = [
    "INSTANCE_STATUSES",
    "TERMINAL_STATUSES",
    "Attempt",
    "BatchItemError",
    "CreatedInstance",
    "Envelope",
    "ErrorInfo",
    "ErrorItem",
    "ErrorSource",
    "Instance",
    "InstanceBatchResult",
    "InstanceRollback",
    "InstanceSummary",
    "NewInstance",
    "RateLimitInfo",
    "ResultInfo",
    "RetryConfig",
    "RollbackStep",
    "Schedule",
    "SleepStep",
    "StatusChange",
    "Step",
    "StepConfig",
    "StepOutput",
    "StepRun",
    "TerminationStep",
    "Trigger",
    "UnknownStep",
    "VersionGraph",
    "WaitForEventStep",
    "Workflow",
    "WorkflowInstanceCounts",
    "WorkflowVersion",
]

T = TypeVar("T")

#: Instance statuses the API documents today. The set is open: compare with these,
#: never assume a status is one of them.
INSTANCE_STATUSES: Final = frozenset(
    {
        "queued",
        "running",
        "paused",
        "errored",
        "terminated",
        "complete",
        "waitingForPause",
        "waiting",
        "rollingBack",
    }
)

#: Statuses after which an instance never changes again.
TERMINAL_STATUSES: Final = frozenset({"complete", "errored", "terminated"})


class _Model(msgspec.Struct, frozen=True, gc=False, kw_only=True, omit_defaults=True):
    """Base of every wire model: immutable, untracked by GC, keyword-only."""


# A timestamp that must carry an offset. Checking it in the strict decoders costs
# nothing measurable, and a naive value then takes the second-chance path, which reads
# it as UTC, instead of reaching users who compare it with aware datetimes.
_Time = Annotated[datetime, msgspec.Meta(tz=True)]


class ErrorSource(_Model, frozen=True):
    """Where in the request an error item points (``source.pointer``, a JSON pointer)."""

    pointer: str | None = None


class ErrorItem(_Model, frozen=True):
    """One entry of the envelope's ``errors`` or ``messages`` list.

    A plain string entry (some 4xx bodies send ``"messages": ["..."]``) becomes an item
    with ``code == 0`` and that string as ``message``.
    """

    code: int | float = 0
    message: str = ""
    documentation_url: str | None = None
    source: ErrorSource | None = None


class ResultInfo(_Model, frozen=True):
    """Paging information some answers carry; ``cursor`` names the next page."""

    count: int | float | None = None
    per_page: int | float | None = None
    total_count: int | float | None = None
    cursor: str | None = None
    page: int | float | None = None
    total_pages: int | float | None = None


class Envelope(_Model, Generic[T], frozen=True):
    """Cloudflare's answer envelope around every JSON ``result``.

    ``errors`` and ``messages`` hold objects, or plain strings where the API sends them.
    """

    success: bool | None = None
    errors: list[ErrorItem | str] = []
    messages: list[ErrorItem | str] = []
    result: T | None = None
    result_info: ResultInfo | None = None


class ErrorInfo(_Model, frozen=True):
    """A JavaScript error as the Workflows runtime recorded it."""

    name: str = ""
    message: str = ""


class Trigger(_Model, frozen=True):
    """What started an instance (or terminated it): ``api``, ``binding``, ``cron``, ..."""

    source: str = "unknown"


class Attempt(_Model, frozen=True):
    """One try of a ``step.do``; ``end``, ``error`` and ``success`` are None while it runs."""

    start: _Time | None = None
    end: _Time | None = None
    error: ErrorInfo | None = None
    success: bool | None = None


class RetryConfig(_Model, frozen=True):
    """A step's retry policy. ``delay`` is ``"[dynamic]"`` when computed at run time."""

    delay: str | int | float | None = None
    limit: int | float | None = None
    backoff: str | None = None


class StepConfig(_Model, frozen=True):
    """A step's configuration: retries, timeout, and ``sensitive="output"`` if redacted."""

    retries: RetryConfig | None = None
    timeout: str | int | float | None = None
    sensitive: str | None = None


class _TaggedStep(_Model, tag_field="type", frozen=True):
    """Base of the known step types: the wire tag is the class's msgspec tag."""

    @property
    def type(self) -> str:
        """The wire tag of this step: ``"step"``, ``"sleep"``, ``"waitForEvent"``, ..."""
        return str(self.__struct_config__.tag)


class StepRun(_TaggedStep, tag="step", frozen=True):
    """A ``step.do`` entry of the instance log (``type == "step"``).

    ``output`` is the step's value as a string, possibly truncated: fetch it whole with
    :meth:`cfwf_async.WorkflowsSession.get_step_output`.
    """

    name: str = ""
    start: _Time | None = None
    end: _Time | None = None
    success: bool | None = None
    output: Any = None
    attempts: list[Attempt] = []
    config: StepConfig | None = None


class RollbackStep(StepRun, tag="rollback", frozen=True):
    """A compensation step run while rolling back (``type == "rollback"``)."""


class SleepStep(_TaggedStep, tag="sleep", frozen=True):
    """A ``step.sleep`` / ``step.sleepUntil`` entry (``type == "sleep"``)."""

    name: str = ""
    start: _Time | None = None
    end: _Time | None = None
    finished: bool | None = None
    error: ErrorInfo | None = None


class WaitForEventStep(_TaggedStep, tag="waitForEvent", frozen=True):
    """A ``step.waitForEvent`` entry (``type == "waitForEvent"``)."""

    name: str = ""
    start: _Time | None = None
    end: _Time | None = None
    finished: bool | None = None
    error: ErrorInfo | None = None
    output: Any = None
    event_type: str | None = None


class TerminationStep(_TaggedStep, tag="termination", frozen=True):
    """The entry recording that an instance was terminated (``type == "termination"``)."""

    trigger: Trigger | None = None

    @property
    def name(self) -> str:
        """Termination entries have no name; an empty string keeps step lists uniform."""
        return ""


class UnknownStep(_Model, frozen=True):
    """A step of a type this version of cfwf_async does not know.

    ``type`` is the wire tag and ``fields`` every field as decoded JSON, so that code
    written against a newer API can still read it.
    """

    type: str
    fields: dict[str, Any] = {}

    @property
    def name(self) -> str:
        """The step's ``name`` field when it has one, else an empty string."""
        value = self.fields.get("name")
        return value if isinstance(value, str) else ""


KnownStep = Union[StepRun, RollbackStep, SleepStep, WaitForEventStep, TerminationStep]  # noqa: UP007

# msgspec decodes ``steps`` through a tagged union, which cannot hold an untagged
# catch-all. At run time ``Step`` is therefore the union of known types; type checkers
# see ``UnknownStep`` as well, because the decoder substitutes it for unknown tags.
if TYPE_CHECKING:
    Step = Union[KnownStep, UnknownStep]  # noqa: UP007
else:
    Step = KnownStep


class InstanceRollback(_Model, frozen=True):
    """Outcome of an instance's rollback: ``outcome`` is ``complete`` or ``failed``."""

    outcome: str | None = None
    error: ErrorInfo | None = None


class Schedule(_Model, frozen=True):
    """The cron schedule of a cron-triggered instance.

    ``scheduled_time`` is the timestamp number the API sends, unchanged.
    """

    cron: str | None = None
    scheduled_time: int | float | None = msgspec.field(default=None, name="scheduledTime")


class Instance(_Model, frozen=True):
    """A workflow instance: its status, timing, parameters, output and step log.

    With ``simple=True`` the API leaves ``steps`` empty and only ``step_count`` is set.
    """

    status: str
    queued: _Time | None = None
    start: _Time | None = None
    end: _Time | None = None
    error: ErrorInfo | None = None
    output: Any = None
    params: Any = None
    step_count: int | float | None = None
    steps: list[Step] = []
    success: bool | None = None
    trigger: Trigger | None = None
    version_id: str | None = msgspec.field(default=None, name="versionId")
    rollback: InstanceRollback | None = None
    schedule: Schedule | None = None

    @property
    def is_terminal(self) -> bool:
        """True once the instance can no longer change (complete, errored, terminated)."""
        return self.status in TERMINAL_STATUSES


class InstanceSummary(_Model, frozen=True):
    """One instance as a listing shows it: identity, status and timing, no step log.

    ``ended_on`` is None while the instance runs (the API sends an empty string then);
    ``trigger_source`` is ``unknown``, ``api``, ``binding``, ``event`` or ``cron`` (open
    set), None when the API leaves it out. Fetch the whole instance with
    :meth:`cfwf_async.WorkflowsSession.get_instance`.
    """

    id: str
    status: str
    created_on: _Time | None = None
    started_on: _Time | None = None
    ended_on: _Time | None = None
    modified_on: _Time | None = None
    version_id: str | None = None
    workflow_id: str | None = None
    trigger_source: str | None = None

    @property
    def is_terminal(self) -> bool:
        """True once the instance can no longer change (complete, errored, terminated)."""
        return self.status in TERMINAL_STATUSES


class StepOutput(_Model, frozen=True):
    """The full output of one step, as JSON.

    ``status`` is ``running``, ``waiting``, ``complete`` or ``errored`` (open set).
    ``status == "running"`` with an ``error`` means the step is retrying after a failed
    attempt. Sensitive outputs come back as the string ``"[REDACTED]"``.
    """

    status: str
    error: ErrorInfo | None = None
    output: Any = None
    event_type: str | None = None


class RateLimitInfo(msgspec.Struct, frozen=True, gc=False):
    """What an answer's ``Ratelimit`` / ``Ratelimit-Policy`` headers say.

    ``remaining`` requests are left and the window resets in ``reset`` seconds;
    ``quota`` requests are allowed per ``window`` seconds. Any part may be None when the
    header left it out or it did not parse.
    """

    remaining: int | None = None
    reset: float | None = None
    quota: int | None = None
    window: float | None = None


# ---------------------------------------------------------------------------
# The write side, workflows and versions


class NewInstance(msgspec.Struct, frozen=True, gc=False, kw_only=True):
    """One instance to create with ``create_instances``: its ``params`` (any JSON) and
    an optional ``instance_id`` (the SDK generates one when it is None)."""

    params: Any = None
    instance_id: str | None = None


class CreatedInstance(_Model, frozen=True):
    """What creating an instance answers: its ``id``, first ``status`` and version."""

    id: str
    status: str = "queued"
    version_id: str | None = None
    workflow_id: str | None = None


class StatusChange(_Model, frozen=True):
    """What a pause, resume, terminate or restart answers: the instance's ``status``
    and when it changed (None when the SDK learnt the outcome by reading the instance)."""

    status: str
    timestamp: _Time | None = None


class BatchItemError(_Model, frozen=True):
    """One id a batch delete or terminate refused, with its input ``index`` when sent."""

    id: str | None = None
    index: int | None = None
    code: int | float = 0
    message: str = ""


class InstanceBatchResult(_Model, frozen=True):
    """What a batch delete or terminate did: the ids ``done`` and the ``errors``."""

    done: list[str] = []
    errors: list[BatchItemError] = []


class WorkflowInstanceCounts(_Model, frozen=True):
    """How many instances of a workflow are in each status (None: not reported)."""

    queued: int | None = None
    running: int | None = None
    paused: int | None = None
    errored: int | None = None
    terminated: int | None = None
    complete: int | None = None
    waiting: int | None = None
    waiting_for_pause: int | None = msgspec.field(default=None, name="waitingForPause")


class Workflow(_Model, frozen=True):
    """A deployed workflow: its name, class and script, and instance counts.

    ``version_id`` (the version a create or update made) comes only from
    ``update_workflow``; ``instances`` only from reads.
    """

    name: str
    id: str | None = None
    class_name: str | None = None
    script_name: str | None = None
    version_id: str | None = None
    created_on: _Time | None = None
    modified_on: _Time | None = None
    triggered_on: _Time | None = None
    instances: WorkflowInstanceCounts | None = None


class WorkflowVersion(_Model, frozen=True):
    """One deployed version of a workflow."""

    id: str
    class_name: str | None = None
    workflow_id: str | None = None
    created_on: _Time | None = None
    modified_on: _Time | None = None
    has_dag: bool | None = None
    language: str | None = None


class VersionGraph(_Model, frozen=True):
    """A version's step graph; ``graph`` is the API's graph document as decoded JSON
    (its node types grow over time), None when the version has none."""

    id: str
    class_name: str | None = None
    workflow_id: str | None = None
    created_on: _Time | None = None
    modified_on: _Time | None = None
    graph: dict[str, Any] | None = None
