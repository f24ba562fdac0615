"""Reading and managing workflows and their versions.

:class:`WorkflowsMixin` holds the workflow and version calls of
:class:`~cfwf_async.WorkflowsSession`. Every call goes through the session's limiter,
retry policy and budget, error model and debug log (one request loop, ``_calls``):
reads as ``get_instance`` does, writes with the exactly-once rules of ``_control``. The
idempotent ``update_workflow`` (a PUT) is retried like a read, and ``delete_workflow``
is retried too, a 404 on a retry after an unknown outcome meaning the workflow was
deleted (the rule ``delete_instance`` follows).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Final, TypeVar

from . import _protocol as proto
from . import _transport as transport
from . import _wire as wire
from ._control import ControlMixin
from .listing import PageListing, version_key, workflow_key
from .models import VersionGraph, Workflow, WorkflowVersion

__all__ = ["WorkflowsMixin"]

T = TypeVar("T")
#: Page size of the workflow and version listings.
PER_PAGE: Final = 100


class WorkflowsMixin(ControlMixin):
    """The workflow and version calls of :class:`~cfwf_async.WorkflowsSession`.

    Built on :class:`~cfwf_async._control.ControlMixin`: its writes go through
    ``_write`` and its exactly-once rules.
    """

    async def _get_json(
        self, path: str, decode: transport.Decode[T], query: Mapping[str, str] | None = None
    ) -> T:
        # A read: the session's read loop, retried as its retry policy says.
        return await self._caller.call(path, query or {}, decode)

    def _pages(
        self, path: str, decode: transport.Decode[wire.NumberedPage[T]], call: str,
        key: Callable[[T], str],
    ) -> PageListing[T]:
        async def fetch(query: Mapping[str, str]) -> wire.NumberedPage[T]:
            return await self._get_json(path, decode, query)

        return PageListing(fetch, PER_PAGE, key, call)

    # -- workflows -----------------------------------------------------------------

    def list_workflows(self, *, account_id: str | None = None) -> PageListing[Workflow]:
        """The account's workflows as an async iterator of :class:`Workflow`.

        No ``await`` before ``async for``: pages are requested lazily, each through the
        session's limiter and retries; the listing always ends (see
        :class:`~cfwf_async.listing.PageListing`)::

            async for workflow in session.list_workflows():
                print(workflow.name, workflow.script_name)
        """
        path = wire.workflows_path(self._account(account_id))
        return self._pages(path, wire.decode_workflow_page, "workflow listing", workflow_key)

    async def get_workflow(
        self, workflow_name: str, *, account_id: str | None = None
    ) -> Workflow:
        """One workflow, with its instance counts per status (404: NotFoundError)."""
        account = self._account(account_id)
        proto.check_workflow_name(workflow_name)
        path = wire.workflow_path(account, workflow_name)
        return await self._get_json(path, wire.decode_workflow)

    async def update_workflow(
        self,
        workflow_name: str,
        *,
        class_name: str,
        script_name: str,
        account_id: str | None = None,
    ) -> Workflow:
        """Create the workflow, or point it at another class or Worker script.

        A PUT: sending it twice does what sending it once does, so it is retried like a
        read. The answer names the version it made (``version_id``)::

            wf = await session.update_workflow(
                "checkout", class_name="CheckoutWorkflow", script_name="shop"
            )
        """
        account = self._account(account_id)
        proto.check_workflow_name(workflow_name)
        body = wire.workflow_body(class_name, script_name)
        call = f"update_workflow({workflow_name!r})"
        return await self._write(
            "PUT", wire.workflow_path(account, workflow_name), body, wire.decode_workflow,
            call=call,
        )

    async def delete_workflow(
        self, workflow_name: str, *, account_id: str | None = None
    ) -> None:
        """Delete a workflow, with its instances and versions.

        Retried like a read; a retry answered 404 after an unknown outcome succeeds.
        A workflow that does not exist raises :class:`NotFoundError`.
        """
        account = self._account(account_id)
        proto.check_workflow_name(workflow_name)
        await self._write(
            "DELETE", wire.workflow_path(account, workflow_name), None, wire.decode_nothing,
            call=f"delete_workflow({workflow_name!r})", recover=wire.settle_delete,
        )

    # -- versions ------------------------------------------------------------------

    def list_versions(
        self, workflow_name: str, *, account_id: str | None = None
    ) -> PageListing[WorkflowVersion]:
        """A workflow's versions as an async iterator of :class:`WorkflowVersion`::

            async for version in session.list_versions("checkout"):
                print(version.id, version.created_on)
        """
        account = self._account(account_id)
        proto.check_workflow_name(workflow_name)
        return self._pages(
            wire.version_path(account, workflow_name), wire.decode_version_page,
            f"version listing of {workflow_name!r}", version_key,
        )

    async def get_version(
        self, workflow_name: str, version_id: str, *, account_id: str | None = None
    ) -> WorkflowVersion:
        """One version of a workflow (404: NotFoundError)."""
        account = self._account(account_id)
        proto.check_workflow_name(workflow_name)
        wire.check_version_id(version_id)
        return await self._get_json(
            wire.version_path(account, workflow_name, version_id), wire.decode_version
        )

    async def get_version_graph(
        self, workflow_name: str, version_id: str, *, account_id: str | None = None
    ) -> VersionGraph:
        """A version's step graph (``graph``: the API's graph document, or None)."""
        account = self._account(account_id)
        proto.check_workflow_name(workflow_name)
        wire.check_version_id(version_id)
        path = wire.version_path(account, workflow_name, version_id) + "/graph"
        return await self._get_json(path, wire.decode_graph)
