"""The sans-I/O core: argument checks, URLs, headers, header parsing, error mapping.

Pure functions only: no socket in this file.
"""

from __future__ import annotations

import email.utils
from datetime import UTC, datetime, timedelta, timezone
from urllib.parse import unquote

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cfwf_async import _protocol as proto
from cfwf_async import errors
from cfwf_async._retry import MAX_SERVER_WAIT
from cfwf_async.ratelimit import RateLimitInfo

# ---------------------------------------------------------------------------
# Retry-After


@pytest.mark.parametrize(
    ("value", "expected"),
    [("300", 300.0), ("0", 0.0), ("0.2", 0.2), (" 5 ", 5.0), ("1e1", 10.0)],
)
def test_retry_after_seconds(value: str, expected: float) -> None:
    assert proto.parse_retry_after(value) == pytest.approx(expected)


def test_retry_after_http_date() -> None:
    now = 1_800_000_000.0
    future = email.utils.formatdate(now + 120, usegmt=True)
    assert proto.parse_retry_after(future, now=now) == pytest.approx(120.0)
    past = email.utils.formatdate(now - 3600, usegmt=True)
    assert proto.parse_retry_after(past, now=now) == 0.0
    # An HTTP date without an explicit zone is read as GMT.
    naive = email.utils.formatdate(now + 60, usegmt=True).replace(" GMT", "")
    assert proto.parse_retry_after(naive, now=now) == pytest.approx(60.0)


@pytest.mark.parametrize(
    "value", [None, "", "soon", "-5", "inf", "nan", "Mon, 99 Foo 2026", "5 seconds", "   "]
)
def test_retry_after_garbage(value: str | None) -> None:
    assert proto.parse_retry_after(value) is None


# ---------------------------------------------------------------------------
# Ratelimit headers


def test_ratelimit_full() -> None:
    info = proto.parse_ratelimit('"default";r=50;t=30', '"default";q=1200;w=300')
    assert info == RateLimitInfo(remaining=50, reset=30.0, quota=1200, window=300.0)


def test_ratelimit_several_items_takes_the_first() -> None:
    info = proto.parse_ratelimit(
        '"default";r=7;t=12, "burst";r=1;t=1', '"default";q=1200;w=300, "burst";q=200;w=1'
    )
    assert info == RateLimitInfo(remaining=7, reset=12.0, quota=1200, window=300.0)


def test_ratelimit_tolerates_spacing_and_case() -> None:
    info = proto.parse_ratelimit('"default"; R = 9 ; T=4')
    assert info is not None
    assert (info.remaining, info.reset) == (9, 4.0)


@pytest.mark.parametrize(
    ("ratelimit", "policy", "expected"),
    [
        ('"default";r=5', None, RateLimitInfo(remaining=5)),
        ('"default";t=60', None, RateLimitInfo(reset=60.0)),
        (None, '"default";q=1200;w=300', RateLimitInfo(quota=1200, window=300.0)),
        ('"default";r=0;t=299', None, RateLimitInfo(remaining=0, reset=299.0)),
        ('"default";r=abc;t=10', None, RateLimitInfo(reset=10.0)),
        ('"default";r=-1;t=10', None, RateLimitInfo(reset=10.0)),
    ],
)
def test_ratelimit_missing_parts(
    ratelimit: str | None, policy: str | None, expected: RateLimitInfo
) -> None:
    assert proto.parse_ratelimit(ratelimit, policy) == expected


@pytest.mark.parametrize(
    ("ratelimit", "policy"),
    [(None, None), ("", ""), ("garbage", None), ("r=5", None), (";;;", "???"),
     ('"default";r=inf;t=nan', None)],
)
def test_ratelimit_garbage(ratelimit: str | None, policy: str | None) -> None:
    assert proto.parse_ratelimit(ratelimit, policy) is None


# ---------------------------------------------------------------------------
# Path segments and queries


@pytest.mark.parametrize(
    ("value", "encoded"),
    [
        ("order-981", "order-981"),
        ("A_z~0-9", "A_z~0-9"),
        ("a/b", "a%2Fb"),
        ("a?b", "a%3Fb"),
        ("a#b", "a%23b"),
        ("100%", "100%25"),
        ("a b", "a%20b"),
        (".", "%2E"),
        ("..", "%2E%2E"),
        ("../x", "%2E%2E%2Fx"),
        ("a+b&c=d;e", "a%2Bb%26c%3Dd%3Be"),
        ("é", "%C3%A9"),
        ("%2e%2e", "%252e%252e"),
    ],
)
def test_segment(value: str, encoded: str) -> None:
    assert proto.segment(value) == encoded


@settings(max_examples=200, deadline=None)
@given(st.text(min_size=1, max_size=40))
def test_segment_round_trips_and_never_changes_the_path_shape(value: str) -> None:
    enc = proto.segment(value)
    assert "/" not in enc
    assert "." not in enc
    assert "?" not in enc
    assert "#" not in enc
    assert enc.isascii()
    assert unquote(enc, errors="strict") == value


def test_instance_path_encodes_every_segment() -> None:
    path = proto.instance_path("acc/1", "wf..", "../../x")
    assert path == "/accounts/acc%2F1/workflows/wf%2E%2E/instances/%2E%2E%2F%2E%2E%2Fx"
    assert proto.instances_path("a", "b c") == "/accounts/a/workflows/b%20c/instances"


def test_query_string() -> None:
    assert proto.query_string({"name": "fetch page-1", "type": "step"}) == (
        "name=fetch%20page-1&type=step"
    )
    assert proto.query_string({"name": "a&b=c+d#e"}) == "name=a%26b%3Dc%2Bd%23e"
    assert proto.query_string({}) == ""


# ---------------------------------------------------------------------------
# Datetimes for queries


def test_format_datetime_utc_and_offsets() -> None:
    assert proto.format_datetime("date_start", datetime(2026, 10, 30, 8, 0, tzinfo=UTC)) == (
        "2026-10-30T08:00:00.000Z"
    )
    plus2 = datetime(2026, 10, 30, 10, 0, 1, 123456, tzinfo=timezone(timedelta(hours=2)))
    assert proto.format_datetime("date_end", plus2) == "2026-10-30T08:00:01.123Z"


def test_format_datetime_refuses_naive_and_non_datetimes() -> None:
    with pytest.raises(ValueError, match="date_start"):
        proto.format_datetime("date_start", datetime(2026, 10, 30))
    with pytest.raises(TypeError, match="date_end"):
        proto.format_datetime("date_end", "2026-10-30T08:00:00Z")


# ---------------------------------------------------------------------------
# Argument checks


def test_check_str() -> None:
    assert proto.check_str("name", "x") == "x"
    with pytest.raises(TypeError, match="name"):
        proto.check_str("name", 5)
    with pytest.raises(ValueError, match="name"):
        proto.check_str("name", "")
    with pytest.raises(ValueError, match="name"):
        proto.check_str("name", "abc", max_len=2)


def test_workflow_name_and_instance_id_limits() -> None:
    assert proto.check_workflow_name("w" * 64) == "w" * 64
    with pytest.raises(ValueError, match="workflow_name"):
        proto.check_workflow_name("w" * 65)
    assert proto.check_instance_id("i" * 1024) == "i" * 1024
    assert proto.check_instance_id("c" * 149) == "c" * 149
    with pytest.raises(ValueError, match="instance_id"):
        proto.check_instance_id("i" * 1025)


def test_check_account_id_names_the_env_var() -> None:
    with pytest.raises(ValueError, match="CLOUDFLARE_ACCOUNT_ID"):
        proto.check_account_id(None)
    with pytest.raises(ValueError, match="account_id"):
        proto.check_account_id("")


@pytest.mark.parametrize("value", [0, -1])
def test_check_positive_int_values(value: int) -> None:
    with pytest.raises(ValueError, match="attempt"):
        proto.check_positive_int("attempt", value)


@pytest.mark.parametrize("value", [True, False, "1", 1.0, None])
def test_check_positive_int_types(value: object) -> None:
    with pytest.raises(TypeError, match="attempt"):
        proto.check_positive_int("attempt", value)


def test_check_choice() -> None:
    assert proto.check_choice("order", "desc", proto.ORDERS) == "desc"
    for bad in ("DESC", "", None, 1):
        with pytest.raises(ValueError, match="order"):
            proto.check_choice("order", bad, proto.ORDERS)


@pytest.mark.parametrize("value", [0, -1.0, float("inf"), float("nan")])
def test_check_timeout_values(value: float) -> None:
    with pytest.raises(ValueError, match="timeout"):
        proto.check_timeout("timeout", value)


def test_check_timeout_types() -> None:
    assert proto.check_timeout("timeout", 2) == 2.0
    assert proto.check_timeout("timeout", None, allow_none=True) is None
    for bad in (True, "5", None):
        with pytest.raises(TypeError, match="timeout"):
            proto.check_timeout("timeout", bad)


# ---------------------------------------------------------------------------
# Base URL and headers


def test_check_base_url() -> None:
    assert proto.check_base_url("https://api.example.com/v4/", allow_insecure_http=False) == (
        "https://api.example.com/v4"
    )
    for loopback in ("http://127.0.0.1:8080/x", "http://localhost/x", "http://[::1]:9/x"):
        assert proto.check_base_url(loopback, allow_insecure_http=False) == loopback
    with pytest.raises(ValueError, match="http"):
        proto.check_base_url("http://api.example.com", allow_insecure_http=False)
    assert proto.check_base_url("http://api.example.com", allow_insecure_http=True)
    for bad in ("ftp://x", "https://", "https://h/?q=1", "https://h/#f", "nohost"):
        with pytest.raises(ValueError, match="base_url"):
            proto.check_base_url(bad, allow_insecure_http=False)
    with pytest.raises(ValueError, match="credentials") as info:
        proto.check_base_url("https://user:pa55word@h/", allow_insecure_http=False)
    assert "pa55word" not in str(info.value)


def test_auth_headers() -> None:
    assert proto.auth_headers(api_token="t", api_email=None, api_key=None) == {
        "Authorization": "Bearer t"
    }
    assert proto.auth_headers(api_token=None, api_email="e@x", api_key="k") == {
        "X-Auth-Email": "e@x",
        "X-Auth-Key": "k",
    }
    with pytest.raises(ValueError, match="CLOUDFLARE_API_TOKEN"):
        proto.auth_headers(api_token=None, api_email=None, api_key=None)
    with pytest.raises(ValueError, match="api_email") as info:
        proto.auth_headers(api_token=None, api_email=None, api_key="s3cret-key")
    assert "s3cret-key" not in str(info.value)


@pytest.mark.parametrize("value", ["tok\n", "tok\r\nX-Evil: 1", "to ken", "tök", "\x00", "\t"])
@pytest.mark.parametrize("field", ["api_token", "api_key", "api_email"])
def test_credentials_must_be_visible_ascii(field: str, value: str) -> None:
    creds: dict[str, str | None] = {"api_token": None, "api_email": "e@x", "api_key": "k"}
    creds[field] = value
    with pytest.raises(ValueError, match=field) as info:
        proto.auth_headers(**creds)
    assert value not in str(info.value)


def test_credentials_must_be_str() -> None:
    with pytest.raises(TypeError, match="api_token"):
        proto.auth_headers(api_token=b"bytes-token", api_email=None, api_key=None)  # type: ignore[arg-type]


def test_secret_headers_cover_every_credential_header() -> None:
    for kind in (
        proto.auth_headers(api_token="t", api_email=None, api_key=None),
        proto.auth_headers(api_token=None, api_email="e", api_key="k"),
    ):
        assert {h.lower() for h in kind} <= proto.SECRET_HEADERS


# ---------------------------------------------------------------------------
# Error answers


def env(*items: tuple[int, str]) -> bytes:
    return msgspec.json.encode(
        {"success": False, "errors": [{"code": c, "message": m} for c, m in items],
         "messages": [], "result": None}
    )


@pytest.mark.parametrize(
    ("status", "cls"),
    [
        (400, errors.BadRequestError),
        (401, errors.AuthenticationError),
        (403, errors.PermissionDeniedError),
        (404, errors.NotFoundError),
        (409, errors.ConflictError),
        (429, errors.RateLimitError),
        (500, errors.InternalServerError),
        (502, errors.InternalServerError),
        (503, errors.InternalServerError),
        (520, errors.InternalServerError),
        (418, errors.APIStatusError),
        (302, errors.APIStatusError),
        (408, errors.APIStatusError),
    ],
)
def test_status_error_mapping(status: int, cls: type[errors.APIStatusError]) -> None:
    exc = proto.status_error(
        status, method="GET", path="/p", body=env((1234, "it broke"), (5, "second")),
        cf_ray="ray-1",
    )
    assert type(exc) is cls
    assert exc.status_code == status
    assert [(e.code, e.message) for e in exc.errors] == [(1234, "it broke"), (5, "second")]
    assert exc.cf_ray == "ray-1"
    text = str(exc)
    assert "it broke" in text
    assert "second" in text
    assert str(status) in text
    assert "ray-1" in text


@pytest.mark.parametrize(
    "body", [b"", b"<html><body>502 Bad Gateway</body></html>", b"{broken", b"[1,2]", b"null"]
)
@pytest.mark.parametrize("status", [500, 502, 503, 404])
def test_status_error_html_and_empty_bodies(body: bytes, status: int) -> None:
    exc = proto.status_error(status, method="GET", path="/p", body=body, cf_ray=None)
    assert exc.status_code == status
    assert exc.errors == ()
    assert isinstance(exc, errors.InternalServerError if status >= 500 else errors.NotFoundError)
    assert str(status) in str(exc)


def test_rate_limit_error_carries_retry_after() -> None:
    exc = proto.status_error(429, method="GET", path="/p", body=b"", cf_ray=None, retry_after=300)
    assert isinstance(exc, errors.RateLimitError)
    assert exc.retry_after == 300
    assert "300" in str(exc)
    none = proto.status_error(429, method="GET", path="/p", body=b"", cf_ray=None)
    assert isinstance(none, errors.RateLimitError)
    assert none.retry_after is None


def test_server_waits_are_clamped_to_the_longest_believable_wait() -> None:
    assert proto.parse_retry_after("1e308") == MAX_SERVER_WAIT
    assert proto.parse_retry_after("901") == MAX_SERVER_WAIT
    assert proto.parse_retry_after("899.5") == 899.5
    far = email.utils.format_datetime(datetime(2036, 1, 1, tzinfo=UTC), usegmt=True)
    assert proto.parse_retry_after(far, now=1_800_000_000.0) == MAX_SERVER_WAIT
    info = proto.parse_ratelimit('"default";r=10;t=315360000', '"burst";q=1200;w=300')
    assert info is not None
    assert info.reset == MAX_SERVER_WAIT
    assert info.remaining == 10
    tolerant = proto.parse_ratelimit('"default"; t=1e308; r=3')  # not the exact form
    assert tolerant is not None
    assert tolerant.reset == MAX_SERVER_WAIT
    assert tolerant.remaining == 3
    assert proto.parse_ratelimit('"default";r=10;t=60') == RateLimitInfo(remaining=10, reset=60.0)
