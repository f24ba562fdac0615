"""Quick start without a Cloudflare account: run the fake Workflows API on loopback,
fetch an instance and a streamed step output through a real WorkflowsSession.

    python examples/quickstart.py
"""

from __future__ import annotations

import anyio

from cfwf_async import StepStream, WorkflowsSession
from cfwf_async.testing import FakeWorkflowsAPI, StreamBody, make_instance


async def main() -> None:
    api = FakeWorkflowsAPI()
    api.add_instance("checkout", "order-981", make_instance("complete", steps=3))
    api.add_step_output("checkout", "order-981", "step 1-1", {"n": 1})
    # 5 MiB produced on the fly, served as application/octet-stream.
    api.add_step_output("checkout", "order-981", "export-1", StreamBody.repeat(5 * 1024 * 1024))

    async with api.serve() as base_url, WorkflowsSession(
        api_token=api.api_token, account_id=api.account_id, base_url=base_url
    ) as session:
        inst = await session.get_instance("checkout", "order-981")
        print(f"instance order-981: {inst.status}, {len(inst.steps)} steps")
        for step in inst.steps:
            print(f"  {step.type:<12} {step.name}")

        out = await session.get_step_output("checkout", "order-981", name="step 1-1")
        print(f"step 1-1 output: {out}")

        stream = await session.get_step_output("checkout", "order-981", name="export-1")
        assert isinstance(stream, StepStream)
        async with stream:
            chunks = 0
            async for _chunk in stream:  # one chunk at a time, never the whole body
                chunks += 1
        print(f"export-1: {stream.bytes_read:,} bytes streamed in {chunks} chunks")


if __name__ == "__main__":
    anyio.run(main)
