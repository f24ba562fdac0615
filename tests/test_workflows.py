"""Workflow and version calls against the fake API's registry."""

from __future__ import annotations

import pytest

from cfwf_async import (
    APIResponseValidationError,
    NotFoundError,
    PageListing,
    VersionGraph,
    Workflow,
    WorkflowsSession,
)
from cfwf_async.testing import FakeWorkflowsAPI, Fault

pytestmark = pytest.mark.anyio


async def names(session: WorkflowsSession) -> list[str]:
    return [w.name async for w in session.list_workflows()]


async def test_workflows_exist_from_instances_and_updates(
    fake_api: FakeWorkflowsAPI, session: WorkflowsSession
) -> None:
    fake_api.add_instance("checkout", "a", {"status": "running"})
    fake_api.add_instance("checkout", "b", {"status": "errored"})
    assert await names(session) == ["checkout"]
    made = await session.update_workflow("etl", class_name="Etl", script_name="jobs")
    assert isinstance(made, Workflow)
    assert (made.name, made.class_name, made.script_name) == ("etl", "Etl", "jobs")
    assert made.version_id is not None
    assert await names(session) == ["checkout", "etl"]
    checkout = await session.get_workflow("checkout")
    assert checkout.instances is not None
    assert (checkout.instances.running, checkout.instances.errored) == (1, 1)


async def test_created_instance_makes_its_workflow(session: WorkflowsSession) -> None:
    await session.create_instance("fresh", instance_id="one")
    assert await names(session) == ["fresh"]


async def test_update_with_a_new_class_adds_a_version(session: WorkflowsSession) -> None:
    first = await session.update_workflow("etl", class_name="A", script_name="s")
    same = await session.update_workflow("etl", class_name="A", script_name="s")
    second = await session.update_workflow("etl", class_name="B", script_name="s")
    assert first.version_id == same.version_id != second.version_id
    versions = [v async for v in session.list_versions("etl")]
    assert {v.id for v in versions} == {first.version_id, second.version_id}
    got = await session.get_version("etl", second.version_id or "")
    assert got.class_name == "B"


async def test_every_version_has_a_graph(
    fake_api: FakeWorkflowsAPI, session: WorkflowsSession
) -> None:
    fake_api.add_instance("checkout", "a", {"status": "running"})
    versions = [v async for v in session.list_versions("checkout")]
    assert len(versions) == 1
    graph = await session.get_version_graph("checkout", versions[0].id)
    assert isinstance(graph, VersionGraph)
    assert graph.graph is not None
    assert graph.graph["workflow"]["nodes"][0]["type"] == "step_do"


async def test_delete_removes_the_workflow_and_its_instances(
    fake_api: FakeWorkflowsAPI, session: WorkflowsSession
) -> None:
    fake_api.add_instance("checkout", "a", {"status": "running"})
    await session.update_workflow("etl", class_name="E", script_name="s")
    await session.delete_workflow("checkout")
    assert await names(session) == ["etl"]
    with pytest.raises(NotFoundError):
        await session.get_instance("checkout", "a")
    with pytest.raises(NotFoundError):
        await session.get_workflow("checkout")
    with pytest.raises(NotFoundError):
        await session.delete_workflow("checkout")


async def test_missing_version_is_not_found(
    fake_api: FakeWorkflowsAPI, session: WorkflowsSession
) -> None:
    fake_api.add_workflow("etl")
    with pytest.raises(NotFoundError):
        await session.get_version("etl", "no-such-version")
    with pytest.raises(NotFoundError):
        await session.get_version_graph("etl", "no-such-version")
    with pytest.raises(NotFoundError):
        [v async for v in session.list_versions("ghost")]


async def test_listing_pages_by_number_and_never_repeats(
    fake_api: FakeWorkflowsAPI, session: WorkflowsSession
) -> None:
    for n in range(250):
        fake_api.add_workflow(f"wf-{n:03d}")
    listing = session.list_workflows()
    assert isinstance(listing, PageListing)
    got = [w.name async for w in listing]
    assert got == sorted(f"wf-{n:03d}" for n in range(250))
    assert listing.pages == 3
    pages = [r.query["page"] for r in fake_api.requests if r.path.endswith("/workflows")]
    assert pages == ["1", "2", "3"]


async def test_listing_early_break_sends_one_request(
    fake_api: FakeWorkflowsAPI, session: WorkflowsSession
) -> None:
    for n in range(150):
        fake_api.add_workflow(f"wf-{n:03d}")
    async with session.list_workflows() as listing:
        async for _ in listing:
            break
    assert len(fake_api.requests) == 1
    assert "finished" in repr(listing)


async def test_reads_and_put_are_retried_through_faults(
    fake_api: FakeWorkflowsAPI, session: WorkflowsSession
) -> None:
    fake_api.add_workflow("etl")
    fake_api.inject(Fault.http(503))
    assert (await session.get_workflow("etl")).name == "etl"
    fake_api.inject(Fault.drop_answer())
    made = await session.update_workflow("etl", class_name="New", script_name="s")
    assert made.class_name == "New"
    assert len([v async for v in session.list_versions("etl")]) == 2


async def test_delete_whose_answer_was_lost_counts_as_deleted(
    fake_api: FakeWorkflowsAPI, session: WorkflowsSession
) -> None:
    fake_api.add_workflow("etl")
    fake_api.inject(Fault.drop_answer())
    await session.delete_workflow("etl")
    assert [r.method for r in fake_api.requests] == ["DELETE", "DELETE"]
    assert await names(session) == []


async def test_broken_listing_answer_raises_validation_error(
    fake_api: FakeWorkflowsAPI, session: WorkflowsSession
) -> None:
    fake_api.add_workflow("etl")
    broken = b'{"success": true, "result": [{"nameless": 1}]}'
    fake_api.inject(Fault.malformed(body=broken), times=3)
    with pytest.raises(APIResponseValidationError):
        await names(session)
