"""Triggering and controlling instances, and reading workflows and versions.

:class:`ControlMixin` holds the write calls of :class:`~cfwf_async.WorkflowsSession`
and the rules that make each write happen exactly once (docs/guides/control.md):

* every attempt goes through the session's limiter, retry policy and budget;
* a failure that provably left nothing applied (:func:`_transport.never_sent`: a
  connection never made, a 429) is retried like a read;
* after an unknown outcome a create or status change finds out what happened by
  reading the instance; ``send_event`` and ``restart_instance`` never resend and raise
  :class:`~cfwf_async.errors.OutcomeUnknownError` instead.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any, Final, Generic, TypeVar

import anyio
import msgspec

from . import _protocol as proto
from . import _transport as transport
from . import _wire as wire
from . import errors
from ._calls import Caller
from .models import (
    CreatedInstance,
    Instance,
    InstanceBatchResult,
    NewInstance,
    StatusChange,
)

__all__ = ["ControlMixin"]

logger = logging.getLogger("cfwf_async")

T = TypeVar("T")
#: Decides what a failed attempt means: ``(value,)`` settles the call, None retries it
#: (per the session's policy); raising ends it. Arguments: the failure, whether an
#: earlier attempt may have been applied, whether this one may have been.
Recover = Callable[[errors.WorkflowsError, bool, bool], Awaitable[tuple[T] | None]]
#: Page size of the workflow and version listings.
_PER_PAGE: Final = 100


class _Resend(Exception):
    """A batch create learnt which entries still need sending (internal)."""

    def __init__(
        self,
        found: list[CreatedInstance],
        remaining: list[NewInstance],
        cause: errors.WorkflowsError,
    ) -> None:
        super().__init__("resend")
        self.found = found
        self.remaining = remaining
        self.cause = cause


def _unknown(call: str, cause: errors.WorkflowsError) -> errors.OutcomeUnknownError:
    failure = errors.OutcomeUnknownError(call, reason=str(cause), cf_ray=cause.cf_ray)
    failure.__cause__ = cause
    return failure


def _conflict(call: str, message: str, cause: errors.WorkflowsError) -> errors.ConflictError:
    if isinstance(cause, errors.ConflictError):
        return cause
    status = cause.status_code if isinstance(cause, errors.APIStatusError) else 409
    items = cause.errors if isinstance(cause, errors.APIStatusError) else ()
    return errors.ConflictError(
        f"{call}: {message}", status_code=status, errors=items, cf_ray=cause.cf_ray
    )


class _WriteOutcome(Generic[T]):
    """The exactly-once rules, applied to each failed attempt of one write.

    ``once``: never resent after an unknown outcome. ``recover``: see :data:`Recover`;
    without one, a definite answer is raised as it is. ``applied``: an earlier request
    of this call may have been applied.
    """

    __slots__ = ("applied", "call", "method", "once", "recover")

    def __init__(
        self, call: str, method: str, *, once: bool, recover: Recover[T] | None, applied: bool
    ) -> None:
        self.call, self.method, self.once = call, method, once
        self.recover, self.applied = recover, applied

    async def after(self, failure: errors.WorkflowsError) -> tuple[T] | None:
        unsent = transport.never_sent(failure)
        unknown = not unsent and wire.outcome_unknown(failure)
        if unknown and self.once:
            raise _unknown(self.call, failure)
        if not unsent and self.recover is not None:
            settled = await self.recover(failure, self.applied, unknown)
            if settled is not None:
                return settled
        elif not unsent and not unknown:
            raise failure
        self.applied = self.applied or unknown
        return None

    def give_up(self, failure: errors.WorkflowsError) -> errors.WorkflowsError:
        if self.applied and self.method != "GET":
            return _unknown(self.call, failure)
        return failure


class ControlMixin:
    """The write calls of :class:`~cfwf_async.WorkflowsSession` (see the module)."""

    if TYPE_CHECKING:  # what the session provides
        _caller: Caller

        def _account(self, account_id: str | None) -> str: ...

    def _note_write(self, account: str, workflow_name: str, instance_id: str) -> None:
        """Called after every write to an instance, whatever its outcome.

        Does nothing here; a session that keeps cached reads overrides it to drop the
        instance's entries.
        """

    # -- writes go through the session's request loop --------------------------------

    async def _write(
        self,
        method: str,
        path: str,
        body: bytes | None,
        decode: transport.Decode[T],
        *,
        call: str,
        once: bool = False,
        recover: Recover[T] | None = None,
        applied: bool = False,
    ) -> T:
        """One call through the session's request loop, with the exactly-once rules of
        the module (:class:`_WriteOutcome`)."""
        outcome = _WriteOutcome(call, method, once=once, recover=recover, applied=applied)
        return await self._caller.call(path, {}, decode, method=method, body=body,
                                       outcome=outcome)

    async def _probe(
        self, account: str, workflow_name: str, instance_id: str, call: str
    ) -> Instance | None:
        """Read an instance to learn what a write did (None: it does not exist).

        Read past any cache; a read that fails leaves the write's outcome unknown.
        """
        path = proto.instance_path(account, workflow_name, instance_id)
        try:
            return await self._caller.call(path, {"simple": "true"}, proto.decode_instance)
        except errors.NotFoundError:
            return None
        except errors.WorkflowsError as exc:
            failure = exc
        raise _unknown(call, failure)

    # -- creating instances ------------------------------------------------------------

    async def create_instance(
        self,
        workflow_name: str,
        *,
        instance_id: str | None = None,
        params: Any = None,
        account_id: str | None = None,
    ) -> CreatedInstance:
        """Start one instance of a workflow, exactly once; return its id and status.

        Without ``instance_id`` the SDK generates one (a UUID) before the first attempt,
        so a retry can never start a second instance. ``params`` is any JSON value. An
        id that already exists raises :class:`ConflictError`; see the control guide for
        how a lost answer is settled::

            created = await session.create_instance("checkout", params={"order": 981})
            print(created.id, created.status)
        """
        account = self._account(account_id)
        proto.check_workflow_name(workflow_name)
        if instance_id is None:
            instance_id = wire.new_instance_id()
        proto.check_instance_id(instance_id)
        body = wire.encode_json("params", wire.create_entry(instance_id, params))
        call = f"create_instance({workflow_name!r}, instance_id={instance_id!r})"

        async def recover(
            exc: errors.WorkflowsError, applied: bool, unknown: bool
        ) -> tuple[CreatedInstance] | None:
            entry = NewInstance(params=params, instance_id=instance_id)
            found = await self._settle_created(account, workflow_name, [entry], exc, applied,
                                               unknown, call)
            return None if not found else (found[0],)

        try:
            return await self._write(
                "POST", proto.instances_path(account, workflow_name), body,
                wire.decode_created, call=call, recover=recover,
            )
        finally:
            self._note_write(account, workflow_name, instance_id)

    async def _settle_created(
        self,
        account: str,
        workflow_name: str,
        entries: list[NewInstance],
        exc: errors.WorkflowsError,
        applied: bool,
        unknown: bool,
        call: str,
    ) -> list[CreatedInstance]:
        """After a failed create of ``entries``: those found created with their params.

        Raises the failure when it is a plain refusal, :class:`ConflictError` for an id
        taken on the first attempt or taken with other params, and :class:`_Resend`
        (batches) when only some were found.
        """
        if not unknown:
            if not wire.already_exists(exc):
                raise exc
            if not applied:
                raise _conflict(call, "the instance id already exists", exc)
        found: list[CreatedInstance] = []
        remaining: list[NewInstance] = []
        for entry in entries:
            assert entry.instance_id is not None
            inst = await self._probe(account, workflow_name, entry.instance_id, call)
            if inst is None:
                remaining.append(entry)
            elif wire.same_params(entry.params, inst.params):
                found.append(CreatedInstance(
                    id=entry.instance_id, status=inst.status, version_id=inst.version_id
                ))
            else:
                raise _conflict(
                    call, f"instance {entry.instance_id!r} exists with other params", exc
                )
        if found and remaining:
            raise _Resend(found, remaining, exc)
        return found

    async def create_instances(
        self,
        workflow_name: str,
        instances: Iterable[NewInstance],
        *,
        account_id: str | None = None,
    ) -> list[CreatedInstance]:
        """Start many instances, exactly once each; the results come in input order.

        Each :class:`NewInstance` without an id gets a generated one before anything is
        sent. Any number of entries, sent 100 per request; each entry follows the rules
        of :meth:`create_instance`::

            created = await session.create_instances(
                "checkout", [NewInstance(params={"order": n}) for n in range(250)]
            )
        """
        account = self._account(account_id)
        proto.check_workflow_name(workflow_name)
        if isinstance(instances, (NewInstance, str, bytes)):
            raise TypeError("instances must be an iterable of NewInstance")
        entries = [wire.check_new_instance(item, n) for n, item in enumerate(instances)]
        done: dict[str, CreatedInstance] = {}
        for start in range(0, len(entries), wire.BATCH_SIZE):
            chunk = entries[start : start + wire.BATCH_SIZE]
            try:
                for created in await self._create_chunk(account, workflow_name, chunk):
                    done[created.id] = created
            finally:
                for entry in chunk:
                    assert entry.instance_id is not None
                    self._note_write(account, workflow_name, entry.instance_id)
        return [done[e.instance_id] for e in entries if e.instance_id in done]

    async def _create_chunk(
        self, account: str, workflow_name: str, pending: list[NewInstance]
    ) -> list[CreatedInstance]:
        path = proto.instances_path(account, workflow_name) + "/batch"
        call = f"create_instances({workflow_name!r})"
        created: list[CreatedInstance] = []
        rounds, applied = 0, False

        async def recover(
            exc: errors.WorkflowsError, was_applied: bool, unknown: bool
        ) -> tuple[list[CreatedInstance]] | None:
            found = await self._settle_created(
                account, workflow_name, pending, exc, was_applied, unknown, call
            )
            return (found,) if found else None

        while pending:
            body = msgspec.json.encode(
                [wire.create_entry(e.instance_id or "", e.params) for e in pending]
            )
            try:
                created += await self._write(
                    "POST", path, body, wire.decode_created_list, call=call,
                    recover=recover, applied=applied,
                )
                return created
            except _Resend as resend:
                created += resend.found
                rounds, applied = rounds + 1, True
                delay = self._caller.retry_delay(rounds, resend.cause, path, method="POST")
                if delay is None:
                    raise _unknown(call, resend.cause) from None
                pending = resend.remaining
                await anyio.sleep(delay[0])
        return created

    # -- status changes ----------------------------------------------------------------

    async def _change_status(
        self,
        workflow_name: str,
        instance_id: str,
        action: str,
        account_id: str | None,
        body: bytes | None = None,
    ) -> StatusChange:
        account = self._account(account_id)
        proto.check_workflow_name(workflow_name)
        proto.check_instance_id(instance_id)
        body = wire.status_body(action) if body is None else body
        call = f"{action}_instance({workflow_name!r}, {instance_id!r})"
        reached = wire.TARGET_STATES.get(action)

        async def recover(
            exc: errors.WorkflowsError, applied: bool, unknown: bool
        ) -> tuple[StatusChange] | None:
            if unknown:
                return None
            if reached is None or not (applied and wire.refused(exc)):
                raise exc
            inst = await self._probe(account, workflow_name, instance_id, call)
            if inst is not None and reached(inst.status):
                return (StatusChange(status=inst.status),)
            raise exc

        path = proto.instance_path(account, workflow_name, instance_id) + "/status"
        try:
            return await self._write(
                "PATCH", path, body, wire.decode_status_change, call=call,
                once=reached is None, recover=None if reached is None else recover,
            )
        finally:
            self._note_write(account, workflow_name, instance_id)

    async def pause_instance(
        self, workflow_name: str, instance_id: str, *, account_id: str | None = None
    ) -> StatusChange:
        """Pause a running instance. Retried like a read: a retry the API refuses
        because the instance is already paused (or pausing) succeeds."""
        return await self._change_status(workflow_name, instance_id, "pause", account_id)

    async def resume_instance(
        self, workflow_name: str, instance_id: str, *, account_id: str | None = None
    ) -> StatusChange:
        """Resume a paused instance. Retried like a read: a retry the API refuses
        because the instance is no longer paused succeeds."""
        return await self._change_status(workflow_name, instance_id, "resume", account_id)

    async def terminate_instance(
        self,
        workflow_name: str,
        instance_id: str,
        *,
        rollback: bool = False,
        account_id: str | None = None,
    ) -> StatusChange:
        """Terminate an instance (``rollback=True``: run its rollback steps first).
        Retried like a read: a retry refused because it already terminated succeeds."""
        body = wire.status_body("terminate", rollback=rollback)
        return await self._change_status(
            workflow_name, instance_id, "terminate", account_id, body
        )

    async def restart_instance(
        self,
        workflow_name: str,
        instance_id: str,
        *,
        from_step: str | None = None,
        count: int | None = None,
        type: str | None = None,
        account_id: str | None = None,
    ) -> StatusChange:
        """Restart an instance, from the start or ``from_step`` (a step name; ``count``
        picks its nth run, ``type`` is ``"do"``, ``"sleep"`` or ``"waitForEvent"``).

        Resent only when the request provably never reached the API (connection
        refused, 429); after an unknown outcome it raises :class:`OutcomeUnknownError`.
        """
        body = wire.status_body("restart", from_step=from_step, count=count, type=type)
        return await self._change_status(
            workflow_name, instance_id, "restart", account_id, body
        )

    # -- events and deletes --------------------------------------------------------------

    async def send_event(
        self,
        workflow_name: str,
        instance_id: str,
        event_type: str,
        payload: Any = None,
        *,
        account_id: str | None = None,
    ) -> None:
        """Send an event (``payload``: any JSON) to an instance's ``waitForEvent`` steps.

        Resent only when the request provably was not processed (connection refused,
        429); any other failure after sending raises :class:`OutcomeUnknownError`, so
        an event is never delivered twice by the SDK::

            await session.send_event("etl", "run-7", "approval", {"approved": True})
        """
        account = self._account(account_id)
        proto.check_workflow_name(workflow_name)
        proto.check_instance_id(instance_id)
        wire.check_event_type(event_type)
        body = wire.encode_json("payload", payload)
        call = f"send_event({workflow_name!r}, {instance_id!r}, {event_type!r})"
        try:
            await self._write(
                "POST", wire.event_path(account, workflow_name, instance_id, event_type),
                body, wire.decode_nothing, call=call, once=True,
            )
        finally:
            self._note_write(account, workflow_name, instance_id)

    async def delete_instance(
        self, workflow_name: str, instance_id: str, *, account_id: str | None = None
    ) -> None:
        """Delete an instance (stopping it and freeing its stored state).

        Retried like a read; a retry answered 404 after an unknown outcome succeeds.
        """
        account = self._account(account_id)
        proto.check_workflow_name(workflow_name)
        proto.check_instance_id(instance_id)
        call = f"delete_instance({workflow_name!r}, {instance_id!r})"

        async def recover(
            exc: errors.WorkflowsError, applied: bool, unknown: bool
        ) -> tuple[None] | None:
            if unknown:
                return None
            if applied and isinstance(exc, errors.NotFoundError):
                return (None,)
            raise exc

        try:
            await self._write(
                "DELETE", proto.instance_path(account, workflow_name, instance_id), None,
                wire.decode_nothing, call=call, recover=recover,
            )
        finally:
            self._note_write(account, workflow_name, instance_id)

    async def delete_instances(
        self, workflow_name: str, instance_ids: Iterable[str], *, account_id: str | None = None
    ) -> InstanceBatchResult:
        """Delete many instances, 100 per request; ids that do not exist come back in
        ``errors``. Safe to retry, and retried like a read."""
        return await self._batch_ids(workflow_name, instance_ids, "delete", account_id)

    async def terminate_instances(
        self, workflow_name: str, instance_ids: Iterable[str], *, account_id: str | None = None
    ) -> InstanceBatchResult:
        """Terminate many instances, 100 per request; refusals come back in ``errors``."""
        return await self._batch_ids(workflow_name, instance_ids, "terminate", account_id)

    async def _batch_ids(
        self, workflow_name: str, instance_ids: Iterable[str], action: str,
        account_id: str | None,
    ) -> InstanceBatchResult:
        account = self._account(account_id)
        proto.check_workflow_name(workflow_name)
        ids = wire.check_ids(instance_ids)
        path = f"{proto.instances_path(account, workflow_name)}/batch/{action}"
        done: list[str] = []
        failed: list[Any] = []
        for start in range(0, len(ids), wire.BATCH_SIZE):
            chunk = ids[start : start + wire.BATCH_SIZE]
            body = msgspec.json.encode({"instance_ids": chunk})
            try:
                result = await self._write(
                    "POST", path, body, wire.decode_batch_result,
                    call=f"{action}_instances({workflow_name!r})",
                )
            finally:
                for instance_id in chunk:
                    self._note_write(account, workflow_name, instance_id)
            done += result.done
            failed += [
                e if e.index is None else msgspec.structs.replace(e, index=e.index + start)
                for e in result.errors
            ]
        return InstanceBatchResult(done=done, errors=failed)
