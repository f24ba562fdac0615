"""Every ```python block of README.md and docs/ runs, and type-checks, as written.

Each block is written to a file of its own and run as ``__main__`` from a fresh working
directory (so examples may write files), in a namespace of its own (a few runner
processes take the blocks in turn), with ``CLOUDFLARE_API_TOKEN``,
``CLOUDFLARE_ACCOUNT_ID`` and ``CLOUDFLARE_BASE_URL`` pointing at one
:class:`FakeWorkflowsAPI` that holds every instance the examples name (see
``_docs_world``), and ``REDIS_URL`` at a throwaway ``redis-server`` when one is
installed. Blocks that define ``test_*`` functions go through one pytest run instead,
with the anyio plugin and cfwf_async's own, so the testing guide's tests really run. All
blocks also go through ONE ``mypy --strict`` run, in parallel with the others.

``examples/*.py`` join the same mypy run (tests/test_session.py runs the quick start).

Markers, an HTML comment on the line right before the opening fence:

``<!-- fragment: why -->``
    The block is not run (say why after the colon). It is still type-checked, wrapped
    in an ``async def`` so that it may ``await``. Keep these rare: a reader copies
    examples, and only a block that runs is known to work.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import anyio
import pytest

from cfwf_async import Instance, models
from cfwf_async.testing import FakeWorkflowsAPI, StreamBody, make_instance

ROOT = Path(__file__).resolve().parents[1]
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
FENCE = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
FRAGMENT = re.compile(r"<!--\s*fragment:\s*(\S.*?)\s*-->\s*$")
#: Seconds one block may run; the slowest (a pytest run with retries) takes about 3.
BLOCK_TIMEOUT = 60


@dataclass(frozen=True)
class Block:
    """One ```python block: where it is, its code, and how it is checked."""

    source: Path
    line: int
    code: str
    fragment: str | None

    @property
    def id(self) -> str:
        return f"{self.source.relative_to(ROOT)}:{self.line}"

    @property
    def module(self) -> str:
        stem = re.sub(r"\W", "_", str(self.source.relative_to(ROOT).with_suffix("")))
        return f"doc_{stem}_{self.line}".lower()

    @property
    def is_test(self) -> bool:
        return re.search(r"^(async )?def test_", self.code, re.MULTILINE) is not None


def collect_blocks() -> list[Block]:
    blocks = []
    for path in DOC_FILES:
        text = path.read_text(encoding="utf-8")
        for match in FENCE.finditer(text):
            line = text.count("\n", 0, match.start()) + 1
            before = text[: match.start()].rstrip("\n").rsplit("\n", 1)[-1]
            marker = FRAGMENT.search(before)
            blocks.append(Block(path, line, match.group(1), marker.group(1) if marker else None))
    return blocks


BLOCKS = collect_blocks()


def _docs_world() -> FakeWorkflowsAPI:
    """The instances and step outputs the examples of README.md and docs/ ask for."""
    api = FakeWorkflowsAPI(api_token="docs-token", account_id="docs-account")
    api.add_instance("checkout", "order-981", make_instance("complete", steps=3))
    api.add_step_output("checkout", "order-981", "step 1-1", {"n": 1})
    invoice = b"%PDF-1.7\n" + b"0" * (300 * 1024) + b"\n%%EOF\n"
    api.add_step_output("checkout", "order-981", "render invoice-1", invoice)
    for n in range(1, 1001):
        api.add_instance("checkout", f"order-{n}", make_instance("complete", steps=1))
    for n in range(1, 4):
        errored = make_instance("errored", steps=2)
        errored["queued"] = errored["start"] = f"2026-11-1{6 + n}T09:00:00.000Z"
        errored["end"] = f"2026-11-1{6 + n}T09:05:00.000Z"
        errored["error"] = {"name": "Error", "message": "payment declined"}
        errored["steps"][1].update(success=False, output=None)
        api.add_instance("checkout", f"order-e{n}", errored)
    etl = make_instance("complete", steps=2)
    etl["steps"].append({"type": "waitForEvent", "name": "approval-1", "finished": True,
                         "start": "2026-10-30T08:01:00Z", "end": "2026-10-30T08:02:00Z",
                         "output": {"approved": True}, "event_type": "approval"})
    etl["steps"][1]["name"] = "export-1"
    api.add_instance("etl", "run-7", etl)
    api.add_step_output("etl", "run-7", "step 0-1", {"rows": 1200})
    api.add_step_output("etl", "run-7", "export-1", StreamBody.repeat(3 << 20))
    api.add_step_output("etl", "run-7", "approval-1", {"approved": True}, type="waitForEvent")
    approval = make_instance("running", steps=1)
    approval["steps"].append({"type": "waitForEvent", "name": "approval-1", "finished": False,
                              "start": "2026-10-30T08:01:00Z", "event_type": "approval"})
    api.add_instance("approvals", "request-1", approval)
    api.add_workflow("checkout", class_name="CheckoutWorkflow", script_name="shop")
    return api


def _block_env(base_url: str, api: FakeWorkflowsAPI, redis_url: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CLOUDFLARE_", "REDIS_"))}
    env.update(
        CLOUDFLARE_API_TOKEN=api.api_token or "",
        CLOUDFLARE_ACCOUNT_ID=api.account_id,
        CLOUDFLARE_BASE_URL=base_url,
        NO_COLOR="1",
        PYTHONDONTWRITEBYTECODE="1",
    )
    if redis_url is not None:
        env["REDIS_URL"] = redis_url
    return env


def _mypy_source(block: Block) -> str:
    if block.fragment is None:
        return block.code
    # A fragment may await at top level: check it as the body of a coroutine.
    return "async def _fragment() -> None:\n" + textwrap.indent(block.code, "    ") + "    pass\n"


@dataclass
class Outcome:
    returncode: int
    output: str


@dataclass
class Results:
    blocks: dict[str, Outcome]
    mypy: Outcome
    redis: bool


#: Runs plain example files one after another in one interpreter, each from its own
#: working directory and as ``__main__``, and prints one JSON line per file. Starting
#: Python and importing aiohttp costs more than most examples take to run, so a few of
#: these replace one subprocess per example.
_RUNNER = textwrap.dedent(
    """
    import contextlib, io, json, os, runpy, sys, traceback

    for script in sys.argv[1:]:
        os.chdir(os.path.dirname(script))
        out = io.StringIO()
        code = 0
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            try:
                runpy.run_path(script, run_name="__main__")
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else (exc.code is not None)
            except BaseException:
                traceback.print_exc()
                code = 1
        print(json.dumps([script, code, out.getvalue()]), flush=True)
    """
)
#: How many runner processes share the plain examples (mypy and pytest run beside them).
RUNNERS = 2


def _test_outcomes(blocks: list[Block], done: Outcome) -> dict[str, Outcome]:
    """Each test block's outcome from one pytest run over all of them (``-rA`` lines)."""
    outcomes = {}
    for block in blocks:
        failed = re.search(rf"^(FAILED|ERROR) {block.module}\.py", done.output, re.MULTILINE)
        passed = re.search(rf"^PASSED {block.module}\.py", done.output, re.MULTILINE)
        ok = passed is not None and failed is None
        outcomes[block.id] = Outcome(0 if ok else 1, done.output)
    return outcomes


async def _run_all(workdir: Path, redis_url: str | None) -> Results:
    api = _docs_world()
    sources = workdir / "blocks"
    sources.mkdir()
    for block in BLOCKS:
        (sources / f"{block.module}.py").write_text(_mypy_source(block), encoding="utf-8")
    runnable = [
        block for block in BLOCKS
        if block.fragment is None and (redis_url is not None or not _needs_redis(block))
    ]
    plain = [block for block in runnable if not block.is_test]
    tests = [block for block in runnable if block.is_test]
    scripts: dict[str, Block] = {}
    for block in plain:
        cwd = workdir / "run" / block.module
        cwd.mkdir(parents=True)
        script = cwd / f"{block.module}.py"
        script.write_text(block.code, encoding="utf-8")
        scripts[str(script)] = block
    tests_dir = workdir / "tests"
    tests_dir.mkdir()
    for block in tests:
        (tests_dir / f"{block.module}.py").write_text(block.code, encoding="utf-8")
    (workdir / "runner.py").write_text(_RUNNER, encoding="utf-8")
    outcomes: dict[str, Outcome] = {}

    async def run(cmd: list[str], cwd: Path, env: dict[str, str] | None = None) -> Outcome:
        with anyio.fail_after(BLOCK_TIMEOUT):
            done = await anyio.run_process(
                cmd, cwd=cwd, env=env, check=False, stdin=subprocess.DEVNULL,
                stderr=subprocess.STDOUT,
            )
        return Outcome(done.returncode, done.stdout.decode(errors="replace"))

    async def run_scripts(share: list[str], env: dict[str, str]) -> None:
        done = await run([sys.executable, str(workdir / "runner.py"), *share], workdir, env)
        for line in done.output.splitlines():
            if line.startswith("["):
                script, code, output = json.loads(line)
                outcomes[scripts[script].id] = Outcome(code, output)
        for script in share:  # a runner that died reports its own output for the rest
            outcomes.setdefault(scripts[script].id, done)

    async def run_tests(env: dict[str, str]) -> None:
        # Only the plugins the testing guide says a reader needs: loading every
        # installed plugin (hypothesis, ...) would slow the run for nothing.
        done = await run(
            [sys.executable, "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider",
             "-p", "anyio", "-p", "cfwf_async.testing.pytest_plugin",
             *(f"{block.module}.py" for block in tests)],
            tests_dir, {**env, "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"},
        )
        outcomes.update(_test_outcomes(tests, done))

    mypy: list[Outcome] = []

    async def run_mypy() -> None:
        files = sorted(str(p) for p in sources.glob("*.py"))
        files += sorted(str(p) for p in (ROOT / "examples").glob("*.py"))
        mypy.append(await run(
            [sys.executable, "-m", "mypy", "--strict", "--no-color-output",
             "--config-file", str(ROOT / "pyproject.toml"),
             "--cache-dir", str(ROOT / ".mypy_cache"), *files],
            cwd=ROOT,
        ))

    async with api.serve() as base_url:
        env = _block_env(base_url, api, redis_url)
        async with anyio.create_task_group() as tg:
            tg.start_soon(run_mypy)
            if tests:
                tg.start_soon(run_tests, env)
            names = list(scripts)
            for i in range(RUNNERS):
                if names[i::RUNNERS]:
                    tg.start_soon(run_scripts, names[i::RUNNERS], env)
    return Results(outcomes, mypy[0], redis_url is not None)


def _needs_redis(block: Block) -> bool:
    return "cfwf_async.redis" in block.code


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Results]:
    pytest.importorskip("mypy", reason="the documentation's examples are type-checked")
    workdir = tmp_path_factory.mktemp("docs")
    try:
        from redis_server import REDIS_SERVER, running_redis
    except ImportError:  # the redis extra is not installed
        REDIS_SERVER = None
    if REDIS_SERVER is None:
        yield anyio.run(_run_all, workdir, None)
        return
    with running_redis(workdir) as server:
        yield anyio.run(_run_all, workdir, server.url)


def test_the_documentation_has_examples() -> None:
    # A broken fence pattern would otherwise pass every test below by finding nothing.
    files = {block.source.name for block in BLOCKS}
    assert {"README.md", "services.md", "batch.md", "testing.md"} <= files
    assert len(BLOCKS) >= 20


def test_fragments_are_rare_and_explained() -> None:
    fragments = [block for block in BLOCKS if block.fragment is not None]
    assert len(fragments) <= 3, [block.id for block in fragments]
    assert all(len(block.fragment or "") >= 10 for block in fragments)


@pytest.mark.parametrize("block", BLOCKS, ids=[block.id for block in BLOCKS])
def test_example_runs(block: Block, results: Results) -> None:
    if block.fragment is not None:
        pytest.skip(f"fragment, type-checked only: {block.fragment}")
    if _needs_redis(block) and not results.redis:
        pytest.skip("needs redis-server and the redis extra")
    outcome = results.blocks[block.id]
    assert outcome.returncode == 0, f"{block.id} failed:\n{outcome.output}"
    assert "Traceback" not in outcome.output


def test_examples_pass_mypy_strict(results: Results) -> None:
    assert results.mypy.returncode == 0, results.mypy.output


def test_reference_lists_every_instance_field_and_step_class() -> None:
    models_page = (ROOT / "docs" / "reference" / "models.md").read_text(encoding="utf-8")
    concepts = (ROOT / "docs" / "guides" / "concepts.md").read_text(encoding="utf-8")
    step_classes = [
        name for name in models.__all__
        if isinstance(getattr(models, name), type) and name.endswith(("Step", "StepRun"))
    ]
    assert len(step_classes) >= 6
    for name in step_classes:
        assert f"- {name}\n" in models_page, f"{name} missing from the API reference"
        assert f"| `{name}` |" in concepts, f"{name} missing from the step table"
    for field in Instance.__struct_fields__:
        assert f"| `{field}` |" in concepts, f"Instance.{field} missing from the field table"


def test_readme_gives_the_ci_test_command() -> None:
    # A newcomer runs what CI runs: the last command of .ci/run's test step.
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    command = "python -m pytest -q"
    assert re.search(rf"^{re.escape(command)}$", ci, re.MULTILINE)
    assert f"&& {command}\n" in readme
    assert "cfwf demo" in readme
