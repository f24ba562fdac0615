"""The cfwf_async.testing package itself: its public names, its lifecycle, its envelope
builder, and the pytest plugin that hands the fake API to users' own tests."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import msgspec
import pytest

import cfwf_async.testing as testing
from cfwf_async import NotFoundError
from cfwf_async.testing import API_PREFIX, FakeWorkflowsAPI, envelope, envelope_error

pytest_plugins = ["pytester"]


def test_the_public_names_are_where_they_always_were() -> None:
    for name in (
        "FakeWorkflowsAPI", "Fault", "RecordedRequest", "StreamBody", "make_instance",
        "API_PREFIX", "EDGE_STATUSES", "envelope_error",
        "Answer", "Reset", "Delay", "Truncate", "BadChunking", "Trickle", "Stall",
    ):
        assert name in testing.__all__
        assert getattr(testing, name) is not None
    assert API_PREFIX == "/client/v4"
    assert not hasattr(FakeWorkflowsAPI, "fail_next")  # inject() is the one way


def test_importing_the_package_does_not_import_pytest() -> None:
    code = "import sys, cfwf_async.testing; print('pytest' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "False"


def test_one_envelope_builder_for_success_and_errors() -> None:
    assert msgspec.json.decode(envelope({"a": 1})) == {
        "errors": [], "messages": [], "success": True, "result": {"a": 1}
    }
    assert msgspec.json.decode(envelope([], result_info={"count": 0})) == {
        "errors": [], "messages": [], "success": True, "result": [],
        "result_info": {"count": 0},
    }
    assert msgspec.json.decode(envelope(errors=[(7003, "no"), (1, "more")])) == {
        "errors": [{"code": 7003, "message": "no"}, {"code": 1, "message": "more"}],
        "messages": [], "success": False, "result": None,
    }
    assert envelope_error(10001, "gone") == envelope(errors=[(10001, "gone")])


@pytest.mark.anyio
async def test_async_with_serves_and_session_binds_to_it() -> None:
    api = FakeWorkflowsAPI(api_token="tok", account_id="acct")
    with pytest.raises(RuntimeError, match="not serving"):
        api.session()
    async with api:
        assert api.base_url is not None
        assert api.base_url.startswith("http://127.0.0.1:")
        assert api.base_url.endswith(API_PREFIX)
        with pytest.raises(RuntimeError, match="already serving"):
            await api.start()
        async with api.session(max_retries=0) as session:
            with pytest.raises(NotFoundError):
                await session.get_instance("wf", "missing")
    assert api.requests[0].headers["Authorization"] == "Bearer tok"
    assert api.requests[0].match["account_id"] == "acct"
    # Stopped, it can serve again (on a new port), keeping what it recorded.
    async with api.serve() as url:
        assert url == api.base_url
    assert len(api.requests) == 1


@pytest.mark.anyio
async def test_session_uses_a_global_key_when_given_one() -> None:
    api = FakeWorkflowsAPI(api_email="a@example.com", api_key="k")
    async with api, api.session(api_email="a@example.com", api_key="k", max_retries=0) as s:
        with pytest.raises(NotFoundError):
            await s.get_instance("wf", "i")
    headers = api.requests[0].headers
    assert headers["X-Auth-Key"] == "k"
    assert "Authorization" not in headers


USER_TESTS = '''
    import pytest

    from cfwf_async import NotFoundError, WorkflowsSession
    from cfwf_async.testing import FakeWorkflowsAPI, Fault, make_instance


    @pytest.mark.anyio
    async def test_reads_an_instance_through_a_503(workflows_api, workflows_session):
        assert isinstance(workflows_api, FakeWorkflowsAPI)
        assert isinstance(workflows_session, WorkflowsSession)
        assert workflows_session.base_url == workflows_api.base_url
        workflows_api.add_instance("checkout", "order-1", make_instance())
        workflows_api.inject(Fault.http(503))
        inst = await workflows_session.get_instance("checkout", "order-1")
        assert inst.status == "complete"
        assert [r.fault for r in workflows_api.requests] == ["503", None]


    @pytest.mark.anyio
    async def test_each_test_gets_its_own_fake(workflows_api):
        assert workflows_api.requests == []
        async with workflows_api.session(max_retries=0) as other:
            with pytest.raises(NotFoundError):
                await other.get_instance("checkout", "order-1")
        assert len(workflows_api.requests) == 1
'''


def test_the_pytest_plugin_serves_users_tests(pytester: pytest.Pytester) -> None:
    """The installed entry point, alone, gives a user's test file both fixtures."""
    pytester.makepyfile(test_user=textwrap.dedent(USER_TESTS))
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-q")
    result.assert_outcomes(passed=2)


def test_a_user_conftest_can_override_the_fake(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(textwrap.dedent('''
        import pytest
        from cfwf_async.testing import FakeWorkflowsAPI

        @pytest.fixture
        async def workflows_api():
            async with FakeWorkflowsAPI(api_token="mine", account_id="acct-9") as api:
                yield api
    '''))
    pytester.makepyfile(test_user=textwrap.dedent('''
        import pytest

        @pytest.mark.anyio
        async def test_session_follows_the_overridden_fake(workflows_api, workflows_session):
            assert workflows_api.api_token == "mine"
            assert workflows_session.account_id == "acct-9"
    '''))
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-q")
    result.assert_outcomes(passed=1)
