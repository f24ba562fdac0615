"""pytest fixtures for testing code that uses cfwf_async, against the fake API.

Installed with cfwf_async and registered as the ``cfwf_async`` pytest plugin, so the
fixtures are there in any project that has the package installed (only this module
imports pytest). The fixtures are async: mark the tests that use them with
``@pytest.mark.anyio`` (anyio's pytest plugin, installed with anyio, runs them; the fake
API is an aiohttp server, so the ``anyio_backend`` must be ``"asyncio"``, anyio's
default)::

    import pytest
    from cfwf_async.testing import Fault, make_instance

    @pytest.mark.anyio
    async def test_survives_a_503(workflows_api, workflows_session):
        workflows_api.add_instance("checkout", "order-1", make_instance())
        workflows_api.inject(Fault.http(503))
        inst = await workflows_session.get_instance("checkout", "order-1")
        assert inst.status == "complete"

``workflows_api``
    A started :class:`~cfwf_async.testing.FakeWorkflowsAPI`, new for each test; its
    :attr:`~cfwf_async.testing.FakeWorkflowsAPI.base_url` is where it serves, and
    :meth:`~cfwf_async.testing.FakeWorkflowsAPI.session` builds more sessions for it.
``workflows_session``
    A :class:`~cfwf_async.WorkflowsSession` bound to ``workflows_api``, with no
    client-side rate limit, closed after the test.

To change how the fake API is built (other credentials, a subclass), override
``workflows_api`` in your own ``conftest.py``; ``workflows_session`` follows it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from ..session import WorkflowsSession
from ._api import FakeWorkflowsAPI

__all__ = ["workflows_api", "workflows_session"]


@pytest.fixture
async def workflows_api() -> AsyncIterator[FakeWorkflowsAPI]:
    """A fake Workflows API serving on 127.0.0.1 for the duration of one test."""
    async with FakeWorkflowsAPI() as api:
        yield api


@pytest.fixture
async def workflows_session(workflows_api: FakeWorkflowsAPI) -> AsyncIterator[WorkflowsSession]:
    """A session bound to ``workflows_api`` (its token and account, no rate limit)."""
    async with workflows_api.session() as session:
        yield session
