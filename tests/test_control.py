"""The write calls against the fake API, and their exactly-once rules under lost answers."""

from __future__ import annotations

import logging
import uuid

import pytest

from cfwf_async import (
    APIConnectionError,
    ConflictError,
    CreatedInstance,
    NewInstance,
    OutcomeUnknownError,
    WorkflowsSession,
)
from cfwf_async.testing import FakeWorkflowsAPI, Fault, make_instance

pytestmark = pytest.mark.anyio

WF = "checkout"


def _count(api: FakeWorkflowsAPI, workflow: str = WF) -> int:
    return sum(1 for (name, _id) in api._instances if name == workflow)


def _waiting_instance() -> dict[str, object]:
    inst = make_instance("running", steps=1)
    inst["steps"].append(  # type: ignore[attr-defined]
        {"type": "waitForEvent", "name": "approval-1", "finished": False,
         "start": "2026-10-30T08:01:00Z", "end": None, "event_type": "approval"}
    )
    return inst


# -- plain behaviour ----------------------------------------------------------------


async def test_create_instance_shows_in_get_and_listing(session: WorkflowsSession) -> None:
    created = await session.create_instance(WF, instance_id="o-1", params={"n": 1})
    assert isinstance(created, CreatedInstance)
    assert created.id == "o-1"
    inst = await session.get_instance(WF, "o-1")
    assert inst.params == {"n": 1}
    assert [s.id async for s in session.list_instances(WF)] == ["o-1"]


async def test_create_instance_generates_a_uuid(session: WorkflowsSession) -> None:
    created = await session.create_instance(WF)
    assert uuid.UUID(created.id)


async def test_existing_id_on_first_attempt_is_conflict(
    session: WorkflowsSession, fake_api: FakeWorkflowsAPI
) -> None:
    fake_api.add_instance(WF, "o-1", make_instance("running"))
    with pytest.raises(ConflictError):
        await session.create_instance(WF, instance_id="o-1")
    assert len(fake_api.requests) == 1


async def test_status_changes_move_the_instance(
    session: WorkflowsSession, fake_api: FakeWorkflowsAPI
) -> None:
    await session.create_instance(WF, instance_id="o-1")
    assert (await session.pause_instance(WF, "o-1")).status == "paused"
    assert (await session.resume_instance(WF, "o-1")).status == "running"
    assert (await session.terminate_instance(WF, "o-1")).status == "terminated"
    assert (await session.restart_instance(WF, "o-1", from_step="charge")).status == "running"
    assert fake_api.restarts == [(WF, "o-1", {"name": "charge"})]
    assert (await session.get_instance(WF, "o-1")).status == "running"


async def test_refused_status_change_on_first_attempt_raises(
    session: WorkflowsSession, fake_api: FakeWorkflowsAPI
) -> None:
    fake_api.add_instance(WF, "o-1", make_instance("running"))
    with pytest.raises(ConflictError, match="cannot resume"):
        await session.resume_instance(WF, "o-1")


async def test_event_completes_the_waiting_step(
    session: WorkflowsSession, fake_api: FakeWorkflowsAPI
) -> None:
    fake_api.add_instance("etl", "run-1", _waiting_instance())
    await session.send_event("etl", "run-1", "approval", {"ok": True})
    inst = await session.get_instance("etl", "run-1")
    wait = inst.steps[-1]
    assert wait.type == "waitForEvent"
    assert wait.finished is True  # type: ignore[union-attr]
    assert wait.output == {"ok": True}  # type: ignore[union-attr]


async def test_a_delete_whose_answer_was_lost_counts_as_deleted(
    session: WorkflowsSession, fake_api: FakeWorkflowsAPI
) -> None:
    # aiohttp would resend the DELETE by itself and hand back the resend's 404 as if it
    # were the first answer; the session's own retry must see the lost answer instead.
    fake_api.add_instance(WF, "gone-1", make_instance("complete"))
    await session.get_instance(WF, "gone-1")  # a pooled connection for the DELETE to reuse
    fake_api.inject(Fault.drop_answer())
    await session.delete_instance(WF, "gone-1")
    assert [r.method for r in fake_api.requests[1:]] == ["DELETE", "DELETE"]
    assert _count(fake_api) == 0


async def test_delete_and_batches(session: WorkflowsSession, fake_api: FakeWorkflowsAPI) -> None:
    created = await session.create_instances(
        WF, [NewInstance(params={"n": n}) for n in range(250)]
    )
    assert [c.id for c in created] == [c.id for c in created]  # order kept below
    assert len(created) == 250
    assert _count(fake_api) == 250
    batch_posts = [r for r in fake_api.requests if r.path.endswith("/batch")]
    assert len(batch_posts) == 3
    ids = [c.id for c in created]
    assert (await session.get_instance(WF, ids[7])).params == {"n": 7}
    terminated = await session.terminate_instances(WF, ids[:150])
    assert len(terminated.done) == 150
    await session.delete_instance(WF, ids[0])
    result = await session.delete_instances(WF, [*ids[1:120], "nope"])
    assert len(result.done) == 119
    assert [(e.id, e.index) for e in result.errors] == [("nope", 119)]
    assert _count(fake_api) == 130


# -- arguments -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "exc", "name"),
    [
        (lambda s: s.create_instance(WF, params={"a": object()}), TypeError, "params"),
        (lambda s: s.create_instance(WF, instance_id=""), ValueError, "instance_id"),
        (lambda s: s.send_event(WF, "i", "x" * 101), ValueError, "event_type"),
        (lambda s: s.send_event(WF, "i", "", None), ValueError, "event_type"),
        (lambda s: s.send_event(WF, "i", "t", object()), TypeError, "payload"),
        (lambda s: s.restart_instance(WF, "i", count=2), ValueError, "from_step"),
        (lambda s: s.restart_instance(WF, "i", from_step="a", count=0), ValueError, "count"),
        (lambda s: s.terminate_instance(WF, "i", rollback=1), TypeError, "rollback"),
        (lambda s: s.create_instances(WF, [{"params": 1}]), TypeError, "instances"),
        (lambda s: s.delete_instances(WF, "abc"), TypeError, "instance_ids"),
    ],
)
async def test_arguments_checked_before_any_request(
    session: WorkflowsSession, fake_api: FakeWorkflowsAPI, call, exc, name  # type: ignore[no-untyped-def]
) -> None:
    with pytest.raises(exc, match=name):
        await call(session)
    assert fake_api.requests == []


# -- exactly once under a lost answer ------------------------------------------------------


async def test_create_with_lost_answer_creates_once(
    session: WorkflowsSession, fake_api: FakeWorkflowsAPI
) -> None:
    fake_api.inject(Fault.drop_answer())
    created = await session.create_instance(WF, params={"n": 1})
    assert _count(fake_api) == 1
    assert (await session.get_instance(WF, created.id)).params == {"n": 1}
    assert [r.method for r in fake_api.requests[:2]] == ["POST", "GET"]


async def test_create_retry_answered_exists_is_reconciled(
    session: WorkflowsSession, fake_api: FakeWorkflowsAPI
) -> None:
    # The first answer is lost, the read meets a 503, then the resend says "exists".
    fake_api.inject(Fault.drop_answer())
    fake_api.inject(Fault.reset())
    created = await session.create_instance(WF, instance_id="o-9", params=[1, 2])
    assert created.id == "o-9"
    assert _count(fake_api) == 1


async def test_create_lost_answer_other_params_is_conflict(
    session: WorkflowsSession, fake_api: FakeWorkflowsAPI
) -> None:
    fake_api.add_instance(WF, "o-1", make_instance("running", params={"other": True}))
    fake_api.inject(Fault.http(503))
    with pytest.raises(ConflictError, match="other params"):
        await session.create_instance(WF, instance_id="o-1", params={"n": 1})


async def test_batch_create_with_lost_answer_creates_each_once(
    session: WorkflowsSession, fake_api: FakeWorkflowsAPI
) -> None:
    fake_api.inject(Fault.drop_answer())
    entries = [NewInstance(params={"n": n}, instance_id=f"b-{n}") for n in range(5)]
    created = await session.create_instances(WF, entries)
    assert [c.id for c in created] == [f"b-{n}" for n in range(5)]
    assert _count(fake_api) == 5


@pytest.mark.parametrize(
    ("first", "action", "status"),
    [("running", "pause", "paused"), ("paused", "resume", "running"),
     ("running", "terminate", "terminated")],
)
async def test_status_change_with_lost_answer_succeeds(
    session: WorkflowsSession, fake_api: FakeWorkflowsAPI, first: str, action: str,
    status: str,
) -> None:
    fake_api.add_instance(WF, "o-1", make_instance(first))
    fake_api.inject(Fault.drop_answer())
    change = await getattr(session, f"{action}_instance")(WF, "o-1")
    assert change.status == status
    assert (await session.get_instance(WF, "o-1")).status == status
    patches = [r for r in fake_api.requests if r.method == "PATCH"]
    assert len(patches) == 2  # the lost one and the refused retry


async def test_restart_with_lost_answer_is_outcome_unknown(
    session: WorkflowsSession, fake_api: FakeWorkflowsAPI
) -> None:
    fake_api.add_instance(WF, "o-1", make_instance("errored"))
    fake_api.inject(Fault.drop_answer())
    with pytest.raises(OutcomeUnknownError, match="restart_instance") as info:
        await session.restart_instance(WF, "o-1")
    assert len(fake_api.restarts) == 1
    assert info.value.__cause__ is not None
    assert fake_api.api_token not in repr(info.value.__cause__)


async def test_restart_retried_after_429(
    session: WorkflowsSession, fake_api: FakeWorkflowsAPI
) -> None:
    fake_api.add_instance(WF, "o-1", make_instance("errored"))
    fake_api.inject(Fault.rate_limit(0))
    await session.restart_instance(WF, "o-1")
    assert len(fake_api.restarts) == 1


async def test_event_with_lost_answer_is_sent_once(
    session: WorkflowsSession, fake_api: FakeWorkflowsAPI
) -> None:
    fake_api.add_instance("etl", "run-1", _waiting_instance())
    fake_api.inject(Fault.drop_answer())
    with pytest.raises(OutcomeUnknownError, match="send_event") as info:
        await session.send_event("etl", "run-1", "approval", {"ok": True})
    assert len(fake_api.events) == 1
    assert info.value.call.startswith("send_event")


async def test_event_after_5xx_is_not_resent(
    session: WorkflowsSession, fake_api: FakeWorkflowsAPI
) -> None:
    fake_api.add_instance("etl", "run-1", _waiting_instance())
    fake_api.inject(Fault.http(502))
    with pytest.raises(OutcomeUnknownError):
        await session.send_event("etl", "run-1", "approval")
    assert len([r for r in fake_api.requests if r.method == "POST"]) == 1


async def test_event_resent_after_connection_refused(
    make_session, fake_api: FakeWorkflowsAPI  # type: ignore[no-untyped-def]
) -> None:
    # A port nobody listens on: the connection is refused, so nothing was sent.
    async with make_session("http://127.0.0.1:9/client/v4", max_retries=1) as s:
        # Retried (nothing was sent), then the plain connection error, not "unknown".
        with pytest.raises(APIConnectionError, match="failed"):
            await s.send_event("etl", "run-1", "approval")


async def test_write_calls_note_write(
    session: WorkflowsSession, caplog: pytest.LogCaptureFixture
) -> None:
    noted: list[tuple[str, str, str]] = []
    session._note_write = lambda *a: noted.append(a)  # type: ignore[method-assign]
    await session.create_instance(WF, instance_id="o-1")
    await session.pause_instance(WF, "o-1")
    with pytest.raises(ConflictError):
        await session.pause_instance(WF, "o-1")
    await session.delete_instance(WF, "o-1")
    assert [n[2] for n in noted] == ["o-1"] * 4


async def test_writes_are_logged_with_their_method(
    session: WorkflowsSession, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG, logger="cfwf_async"):
        await session.create_instance(WF, instance_id="o-1")
    assert any(m.startswith("POST /accounts/") for m in caplog.messages)
