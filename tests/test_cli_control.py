"""The ``cfwf`` write commands, run as real subprocesses against the fake API's state."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path
from subprocess import CompletedProcess

import anyio
import pytest

from cfwf_async.cli._console import Console, UsageError
from cfwf_async.cli._control import confirm, read_ids
from cfwf_async.testing import FakeWorkflowsAPI, Fault, make_instance
from tests.test_cli import assert_clean_error, cfwf, child_env

pytestmark = pytest.mark.anyio

WF = "checkout"


async def run(api: FakeWorkflowsAPI, base_url: str, *args: str,
              stdin: bytes | None = None) -> CompletedProcess[bytes]:
    cmd = ["--base-url", base_url, *args]
    if stdin is None:
        return await cfwf(*cmd, env=child_env(api))
    with anyio.fail_after(20):
        return await anyio.run_process([sys.executable, "-m", "cfwf_async", *cmd],
                                       input=stdin, env=child_env(api), check=False)


def ok(result: CompletedProcess[bytes]) -> str:
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout.decode()


def _status(api: FakeWorkflowsAPI, instance_id: str) -> str:
    found = api._instances[(WF, instance_id)]
    assert isinstance(found, dict)
    status: str = found["status"]
    return status


def _writes(api: FakeWorkflowsAPI) -> list[str]:
    return [r.method for r in api.requests if r.method != "GET"]


async def test_trigger_creates_one_instance_with_params(
    fake_api: FakeWorkflowsAPI, base_url: str
) -> None:
    out = ok(await run(fake_api, base_url, "trigger", WF, '{"order": 981}', "--id", "o-1"))
    assert out == f"triggered {WF} / o-1 (queued)\n"
    assert list(fake_api._instances) == [(WF, "o-1")]
    found = fake_api._instances[(WF, "o-1")]
    assert isinstance(found, dict)
    assert found["params"] == {"order": 981}

    out = ok(await run(fake_api, base_url, "trigger", WF, "--json"))
    document = json.loads(out)
    assert document["workflow"] == WF
    assert document["status"] == "queued"
    assert (WF, document["id"]) in fake_api._instances
    assert len(fake_api._instances) == 2


async def test_trigger_existing_id_is_an_api_error(
    fake_api: FakeWorkflowsAPI, base_url: str
) -> None:
    fake_api.add_instance(WF, "o-1", make_instance("running"))
    line = assert_clean_error(await run(fake_api, base_url, "trigger", WF, "--id", "o-1"), 1)
    assert "already_exists" in line


async def test_invalid_json_fails_with_usage_before_any_request(
    fake_api: FakeWorkflowsAPI, base_url: str, tmp_path: Path
) -> None:
    fake_api.add_instance(WF, "o-1", make_instance("waiting"))
    bad = tmp_path / "bad.json"
    bad.write_text("{nope")
    for args in (("trigger", WF, "{not json"),
                 ("send-event", WF, "o-1", "--type", "go", "--payload", "[1,"),
                 ("send-event", WF, "o-1", "--type", "go", "--payload-file", str(bad)),
                 ("send-event", WF, "o-1", "--type", "go", "--payload-file",
                  str(tmp_path / "missing.json"))):
        result = await run(fake_api, base_url, *args)
        assert result.returncode == 2, args
        assert b"Traceback" not in result.stderr
        assert result.stdout == b""
    assert fake_api.requests == []
    assert fake_api.events == []


@pytest.mark.parametrize(("command", "first", "after"), [
    ("pause", "running", "paused"),
    ("resume", "paused", "running"),
    ("restart", "errored", "running"),
])
async def test_status_commands_move_the_instance(
    fake_api: FakeWorkflowsAPI, base_url: str, command: str, first: str, after: str
) -> None:
    fake_api.add_instance(WF, "o-1", make_instance(first))
    out = ok(await run(fake_api, base_url, command, WF, "o-1"))
    done = {"pause": "paused", "resume": "resumed", "restart": "restarted"}[command]
    assert out == f"{done} {WF} / o-1 (now {after})\n"
    assert _status(fake_api, "o-1") == after
    assert _writes(fake_api) == ["PATCH"]


async def test_restart_from_step_sends_the_step(
    fake_api: FakeWorkflowsAPI, base_url: str
) -> None:
    fake_api.add_instance(WF, "o-1", make_instance("errored"))
    out = ok(await run(fake_api, base_url, "restart", WF, "o-1", "--from-step", "charge",
                       "--from-step-count", "2", "--from-step-type", "do", "--json"))
    assert json.loads(out)["status"] == "running"
    assert fake_api.restarts == [(WF, "o-1", {"name": "charge", "count": 2, "type": "do"})]
    result = await run(fake_api, base_url, "restart", WF, "o-1", "--from-step-count", "2")
    assert_clean_error(result, 2)
    assert len(fake_api.restarts) == 1


async def test_terminate_needs_yes_without_a_terminal(
    fake_api: FakeWorkflowsAPI, base_url: str
) -> None:
    fake_api.add_instance(WF, "o-1", make_instance("running"))
    line = assert_clean_error(await run(fake_api, base_url, "terminate", WF, "o-1",
                                        stdin=b"y\n"), 2)
    assert "--yes" in line
    assert fake_api.requests == []
    assert _status(fake_api, "o-1") == "running"

    out = ok(await run(fake_api, base_url, "terminate", WF, "o-1", "--rollback", "--yes"))
    assert out == f"terminated {WF} / o-1 (now terminated)\n"
    assert _status(fake_api, "o-1") == "terminated"


async def test_refused_status_change_is_an_api_error(
    fake_api: FakeWorkflowsAPI, base_url: str
) -> None:
    fake_api.add_instance(WF, "o-1", make_instance("complete"))
    line = assert_clean_error(await run(fake_api, base_url, "pause", WF, "o-1"), 1)
    assert "cannot pause a complete instance" in line
    assert _status(fake_api, "o-1") == "complete"


async def test_send_event_delivers_payload(
    fake_api: FakeWorkflowsAPI, base_url: str, tmp_path: Path
) -> None:
    fake_api.add_instance(WF, "o-1", make_instance("waiting"))
    out = ok(await run(fake_api, base_url, "send-event", WF, "o-1", "--type", "approval",
                       "--payload", '{"ok": true}'))
    assert out == f"sent event 'approval' to {WF} / o-1\n"
    payload = tmp_path / "p.json"
    payload.write_text('[1, "two"]')
    out = ok(await run(fake_api, base_url, "send-event", WF, "o-1", "--type", "more",
                       "--payload-file", str(payload), "--json"))
    assert json.loads(out) == {"workflow": WF, "id": "o-1", "type": "more",
                               "payload": [1, "two"]}
    assert fake_api.events == [(WF, "o-1", "approval", {"ok": True}),
                               (WF, "o-1", "more", [1, "two"])]


async def test_lost_answer_says_the_outcome_is_unknown(
    fake_api: FakeWorkflowsAPI, base_url: str
) -> None:
    fake_api.add_instance(WF, "o-1", make_instance("waiting"))
    fake_api.inject(Fault.drop_answer())
    result = await run(fake_api, base_url, "send-event", WF, "o-1", "--type", "go")
    line = assert_clean_error(result, 1)
    assert "may or may not have been applied" in line
    assert f"cfwf describe {WF} o-1" in result.stderr.decode()
    assert len(fake_api.events) == 1  # applied once, never resent


async def test_delete_one_and_many_from_args_and_stdin(
    fake_api: FakeWorkflowsAPI, base_url: str
) -> None:
    for n in range(5):
        fake_api.add_instance(WF, f"o-{n}", make_instance("complete"))
    assert_clean_error(await run(fake_api, base_url, "delete", WF, "o-0", stdin=b""), 2)
    assert fake_api.requests == []

    out = ok(await run(fake_api, base_url, "delete", WF, "o-0", "--yes"))
    assert out == f"deleted {WF} / o-0\n"
    assert (WF, "o-0") not in fake_api._instances

    result = await run(fake_api, base_url, "delete", WF, "o-1", "--file", "-", "--yes",
                       stdin=b"o-2\n\n# a comment\no-3\nnope\n")
    assert result.returncode == 1
    assert result.stdout.decode() == f"deleted 3 of 4 instances of {WF}; 1 failed\n"
    assert "not deleted: nope" in result.stderr.decode()
    assert sorted(i for _, i in fake_api._instances) == ["o-4"]


async def test_describe_latest_is_the_newest_instance(
    fake_api: FakeWorkflowsAPI, base_url: str
) -> None:
    for n, day in ((1, "01"), (2, "03"), (3, "02")):
        fake_api.add_summary(WF, f"o-{n}", {"status": "complete",
                                            "created_on": f"2026-10-{day}T08:00:00Z"})
        fake_api.add_instance(WF, f"o-{n}", make_instance("complete"))
    out = ok(await run(fake_api, base_url, "describe", WF))
    assert out.startswith(f"{WF} / o-2  complete")
    listed = [r for r in fake_api.requests if r.path.endswith("/instances")]
    assert listed[0].query["direction"] == "desc"
    assert listed[0].query["per_page"] == "1"
    out = ok(await run(fake_api, base_url, "describe", WF, "latest"))
    assert out.startswith(f"{WF} / o-2  complete")


async def test_describe_latest_without_instances(
    fake_api: FakeWorkflowsAPI, base_url: str
) -> None:
    line = assert_clean_error(await run(fake_api, base_url, "describe", WF), 1)
    assert "no instances" in line


async def test_list_reverse_and_version_modified_columns(
    fake_api: FakeWorkflowsAPI, base_url: str
) -> None:
    for n, day in ((1, "01"), (2, "02")):
        fake_api.add_summary(WF, f"o-{n}", {
            "status": "complete", "created_on": f"2026-10-{day}T08:00:00Z",
            "modified_on": f"2026-10-{day}T09:00:00Z", "version_id": f"v-{n}"})
    out = ok(await run(fake_api, base_url, "list", WF, "--reverse"))
    lines = out.splitlines()
    assert lines[0].split() == ["ID", "STATUS", "CREATED", "STARTED", "ENDED", "DURATION",
                                "MODIFIED", "VERSION"]
    assert [line.split()[0] for line in lines[1:]] == ["o-2", "o-1"]
    assert lines[1].split()[-3:] == ["2026-10-02", "09:00:00Z", "v-2"]
    narrow = await cfwf("--base-url", base_url, "list", WF,
                        env=child_env(fake_api, COLUMNS="60"))
    head = narrow.stdout.decode().splitlines()[0].split()
    assert "VERSION" not in head
    assert "MODIFIED" not in head
    assert head[:3] == ["ID", "STATUS", "CREATED"]


async def test_workflows_list_describe_delete(
    fake_api: FakeWorkflowsAPI, base_url: str
) -> None:
    fake_api.add_instance(WF, "o-1", make_instance("running"))
    out = ok(await run(fake_api, base_url, "workflows", "list"))
    assert out.splitlines()[0].split()[0] == "NAME"
    assert WF in out
    out = ok(await run(fake_api, base_url, "workflows", "describe", WF))
    assert out.startswith(WF)
    refused = await run(fake_api, base_url, "workflows", "delete", WF, stdin=b"")
    assert_clean_error(refused, 2)
    out = ok(await run(fake_api, base_url, "workflows", "delete", WF, "--yes"))
    assert out == f"deleted workflow {WF}\n"


def test_confirm_asks_on_a_terminal() -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    err = io.StringIO()
    console = Console(io.StringIO(), err)
    confirm(console, "terminate x?", yes=False, stdin=Tty("y\n"))
    assert err.getvalue() == "terminate x? [y/N] "
    with pytest.raises(UsageError, match="cancelled"):
        confirm(console, "terminate x?", yes=False, stdin=Tty("\n"))
    with pytest.raises(UsageError, match="--yes"):
        confirm(console, "terminate x?", yes=False, stdin=io.StringIO("y\n"))
    confirm(console, "terminate x?", yes=True, stdin=io.StringIO(""))


def test_read_ids_merges_args_and_file(tmp_path: Path) -> None:
    ids = tmp_path / "ids.txt"
    ids.write_text("b\n  c  \n\n# skip\na\n")
    assert read_ids(["a", "b"], str(ids)) == ["a", "b", "c"]
    assert read_ids([], "-", io.StringIO("x\ny\n")) == ["x", "y"]
    with pytest.raises(UsageError, match="no instance ids"):
        read_ids([], None)
    with pytest.raises(UsageError, match="cannot read"):
        read_ids([], str(tmp_path / "missing"))
