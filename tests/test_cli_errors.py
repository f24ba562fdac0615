"""``cfwf`` errors in a shell user's words, the flags that bound waiting, and the status
line a terminal shows while a call is slow."""

from __future__ import annotations

import io
import os
import socket
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import anyio
import msgspec
import pytest
from aiohttp import web

from cfwf_async.cli._console import Console
from cfwf_async.cli._demo import INSTANCE, WORKFLOW, UnfoldingWorkflowsAPI, demo_instance_states
from cfwf_async.cli._parser import build_parser
from cfwf_async.session import WorkflowsSession
from tests.test_cli import assert_clean_error, cfwf, child_env

pytestmark = pytest.mark.anyio


class Silent:
    """A TCP server on loopback that accepts connections and never answers."""

    def __init__(self) -> None:
        self.connections = 0
        self.url = ""


@pytest.fixture
async def silent() -> AsyncIterator[Silent]:
    server = Silent()

    async def handle(stream: anyio.abc.SocketStream) -> None:
        server.connections += 1
        async with stream:
            await anyio.sleep_forever()

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    server.url = f"http://127.0.0.1:{port}/client/v4"
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, handle)
        yield server
        tg.cancel_scope.cancel()


async def test_timeout_and_retries_bound_the_wait_with_a_plain_message(silent: Silent) -> None:
    env = child_env(UnfoldingWorkflowsAPI())
    result = await cfwf("describe", WORKFLOW, INSTANCE, "--base-url", silent.url,
                        "--timeout", "0.5", "--retries", "0", env=env)
    line = assert_clean_error(result, 1)
    host = silent.url.split("/")[2]
    assert line == (f"cfwf: error: no answer from {host} in time "
                    "(each attempt waits 0.5 s)")
    assert "--timeout" in result.stderr.decode().splitlines()[1]
    assert silent.connections == 1  # --retries 0: one attempt

    # The options are global: before the command name too, and --retries counts.
    again = await cfwf("--timeout", "0.3", "--retries", "1", "list", WORKFLOW,
                       "--base-url", silent.url, env=env)
    assert_clean_error(again, 1)
    assert silent.connections == 3


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


async def test_connection_refused_names_the_host_and_the_setting() -> None:
    port = closed_port()
    result = await cfwf("describe", WORKFLOW, INSTANCE, "--retries", "0", "--base-url",
                        f"http://127.0.0.1:{port}/client/v4",
                        env=child_env(UnfoldingWorkflowsAPI()))
    line = assert_clean_error(result, 1)
    assert line == f"cfwf: error: cannot connect to 127.0.0.1:{port} (connection refused)"
    assert result.stderr.decode().splitlines()[1] == (
        "hint: check --base-url / CLOUDFLARE_BASE_URL")


async def test_plain_http_to_a_remote_host_needs_the_flag(
    fake_api: UnfoldingWorkflowsAPI, base_url: str
) -> None:
    # 0.0.0.0 is not a loopback name to the SDK, yet connects to this machine.
    remote = base_url.replace("127.0.0.1", "0.0.0.0")
    env = child_env(fake_api)
    refused = await cfwf("describe", WORKFLOW, INSTANCE, "--base-url", remote, env=env)
    line = assert_clean_error(refused, 2)
    assert "plain http://" in line
    assert "unencrypted" in line
    assert "allow_insecure_http" not in refused.stderr.decode()
    assert "--allow-insecure-http" in refused.stderr.decode().splitlines()[1]
    assert fake_api.requests == []

    fake_api.add_instance(WORKFLOW, INSTANCE, demo_instance_states(datetime.now(UTC))[0])
    allowed = await cfwf("describe", WORKFLOW, INSTANCE, "--base-url", remote,
                         "--allow-insecure-http", env=env)
    assert allowed.returncode == 0, allowed.stderr.decode()
    assert allowed.stdout.decode().startswith(f"{WORKFLOW} / {INSTANCE}")


async def test_a_base_url_without_client_v4_gets_a_hint(
    fake_api: UnfoldingWorkflowsAPI, base_url: str
) -> None:
    root = base_url.removesuffix("/client/v4")
    result = await cfwf("describe", WORKFLOW, INSTANCE, "--base-url", root,
                        env=child_env(fake_api))
    line = assert_clean_error(result, 1)
    assert "404" in line
    assert "not the Cloudflare API" in line
    assert result.stderr.decode().splitlines()[1] == (
        f"hint: the API lives under /client/v4: try --base-url {root}/client/v4")


async def test_an_unknown_step_name_points_at_describe(
    fake_api: UnfoldingWorkflowsAPI, base_url: str
) -> None:
    fake_api.add_instance(WORKFLOW, INSTANCE, demo_instance_states(datetime.now(UTC))[0])
    result = await cfwf("step", WORKFLOW, INSTANCE, "--step", "load order", "--base-url",
                        base_url, env=child_env(fake_api))
    line = assert_clean_error(result, 1)
    assert line == f"cfwf: error: no step named 'load order' (step) in instance '{INSTANCE}'"
    assert result.stderr.decode().splitlines()[1] == (
        f"hint: run: cfwf describe {WORKFLOW} {INSTANCE} to list the step names "
        '(they end in a counter, e.g. "fetch page-1")')


async def test_output_checks_happen_before_any_request(
    fake_api: UnfoldingWorkflowsAPI, base_url: str, tmp_path: Path
) -> None:
    env = child_env(fake_api)
    for target in (tmp_path, tmp_path / "missing" / "out.csv"):
        result = await cfwf("step", WORKFLOW, INSTANCE, "--step", "export ledger-1",
                            "--output", str(target), "--base-url", base_url, env=env)
        assert_clean_error(result, 2)
    assert fake_api.requests == []


class _Terminal(io.StringIO):
    """A stderr that is a terminal, and says when the waiting line has appeared."""

    def __init__(self) -> None:
        super().__init__()
        self.shown = anyio.Event()

    def isatty(self) -> bool:
        return True

    def write(self, text: str) -> int:
        if "waiting for" in text:
            self.shown.set()
        return super().write(text)


async def test_a_slow_answer_shows_what_it_waits_for_then_erases_it(serve_app) -> None:  # type: ignore[no-untyped-def]
    err = _Terminal()
    state = demo_instance_states(datetime.now(UTC))[0]
    body = msgspec.json.encode({"success": True, "errors": [], "messages": [],
                                "result": state})

    async def instance(request: web.Request) -> web.Response:
        await err.shown.wait()  # answers only once the terminal was told
        return web.Response(body=body, content_type="application/json")

    app = web.Application()
    app.router.add_get("/client/v4/accounts/acct/workflows/{w}/instances/{i}", instance)
    async with serve_app(app) as root:
        console = Console(io.StringIO(), err, wait_delay=0.0)
        args = build_parser().parse_args(["describe", WORKFLOW, INSTANCE])
        async with WorkflowsSession(api_token="t", account_id="acct",
                                    base_url=root + "/client/v4") as session:
            code = await args.handler(session, args, console)
    assert code == 0
    host = root.split("/")[2]
    text = err.getvalue()
    assert text.startswith(f"\r\x1b[2Kwaiting for {host} (GET instance {INSTANCE})")
    assert text.endswith("\r\x1b[2K")  # erased before the answer is printed
    assert console.stdout.getvalue().startswith(f"{WORKFLOW} / {INSTANCE}")  # type: ignore[attr-defined]
    assert os.linesep not in text
