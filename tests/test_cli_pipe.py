"""A reader that goes away (``cfwf list | head -1``) ends every command the same way:
exit status 0, nothing on stderr, no traceback."""

from __future__ import annotations

import os
import sys
from datetime import UTC, datetime

import anyio
import pytest

from cfwf_async.cli._demo import (
    INSTANCE,
    STREAM_STEP,
    WORKFLOW,
    UnfoldingWorkflowsAPI,
    fill_demo_api,
)
from tests.test_cli import child_env

pytestmark = pytest.mark.anyio


@pytest.fixture
def fake_api() -> UnfoldingWorkflowsAPI:
    api = UnfoldingWorkflowsAPI()
    fill_demo_api(api, datetime.now(UTC))
    return api


@pytest.mark.parametrize("argv", [
    ["list", WORKFLOW],
    ["list", WORKFLOW, "--json"],
    ["describe", WORKFLOW, INSTANCE],
    ["describe", WORKFLOW, INSTANCE, "--json"],
    ["step", WORKFLOW, INSTANCE, "--step", "load order-1"],
    ["step", WORKFLOW, INSTANCE, "--step", STREAM_STEP, "--output", "-"],
])
async def test_a_closed_pipe_ends_quietly_with_status_0(
    fake_api: UnfoldingWorkflowsAPI, base_url: str, argv: list[str]
) -> None:
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the first byte is written
    try:
        with anyio.fail_after(20):
            result = await anyio.run_process(
                [sys.executable, "-m", "cfwf_async", *argv, "--base-url", base_url],
                env=child_env(fake_api), stdout=write_end, check=False)
    finally:
        os.close(write_end)
    assert result.stderr == b""
    assert result.returncode == 0
    assert fake_api.requests  # it did run the command
