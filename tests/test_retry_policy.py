"""The retry policy, as pure functions: what is retried and how long to wait."""

from __future__ import annotations

import random

import pytest

from cfwf_async import errors
from cfwf_async._retry import RetryPolicy, is_retryable


def status(code: int) -> errors.APIStatusError:
    return errors.APIStatusError(f"{code}", status_code=code)


@pytest.mark.parametrize(
    "exc",
    [
        errors.APIConnectionError("refused"),
        errors.APITimeoutError("slow"),
        status(408),
        errors.ConflictError("c", status_code=409),
        errors.RateLimitError("r"),
        errors.InternalServerError("i", status_code=500),
        errors.InternalServerError("i", status_code=503),
        errors.InternalServerError("i", status_code=522),
    ],
)
def test_retryable(exc: errors.WorkflowsError) -> None:
    assert is_retryable(exc)
    assert RetryPolicy(2).delay(1, exc) is not None


@pytest.mark.parametrize(
    "exc",
    [
        errors.BadRequestError("b", status_code=400),
        errors.AuthenticationError("a", status_code=401),
        errors.PermissionDeniedError("p", status_code=403),
        errors.NotFoundError("n", status_code=404),
        status(418),
        status(302),
        errors.APIResponseValidationError("v", status_code=200),
        errors.StreamError("s", received=1, expected=2),
        errors.OutputTooLargeError("o", size=None, limit=1),
        ValueError("not ours"),
    ],
)
def test_not_retryable(exc: Exception) -> None:
    assert not is_retryable(exc)
    assert RetryPolicy(5).delay(1, exc) is None


def test_backoff_is_exponential_with_full_jitter() -> None:
    policy = RetryPolicy(10, base_delay=0.5, max_delay=8.0)
    rng = random.Random(1234)
    exc = errors.APIConnectionError("x")
    for retry, ceiling in [(1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (5, 8.0), (9, 8.0)]:
        delays = [policy.delay(retry, exc, rng) for _ in range(200)]
        assert all(d is not None and 0.0 <= d <= ceiling for d in delays)
        # Full jitter: spread over the range, not pinned to its top.
        assert min(d for d in delays if d is not None) < ceiling * 0.2
        assert max(d for d in delays if d is not None) > ceiling * 0.8


def test_gives_up_after_max_retries() -> None:
    exc = errors.InternalServerError("i", status_code=503)
    policy = RetryPolicy(2)
    assert policy.delay(2, exc) is not None
    assert policy.delay(3, exc) is None
    assert RetryPolicy(0).delay(1, exc) is None


def test_retry_after_is_honoured_up_to_the_cap() -> None:
    policy = RetryPolicy(3, retry_after_cap=60.0)
    assert policy.delay(1, errors.RateLimitError("r", retry_after=0.2)) == 0.2
    assert policy.delay(1, errors.RateLimitError("r", retry_after=0.0)) == 0.0
    assert policy.delay(1, errors.RateLimitError("r", retry_after=60.0)) == 60.0
    assert policy.delay(1, errors.RateLimitError("r", retry_after=300.0)) is None
    # Without Retry-After a 429 falls back to the jittered backoff.
    no_hint = policy.delay(1, errors.RateLimitError("r"), random.Random(0))
    assert no_hint is not None
    assert 0.0 <= no_hint <= policy.base_delay


def test_retry_after_on_a_503_is_honoured_too() -> None:
    policy = RetryPolicy(2, retry_after_cap=60.0)
    maintenance = errors.InternalServerError("m", status_code=503, retry_after=7.0)
    assert policy.delay(1, maintenance) == 7.0
    too_long = errors.InternalServerError("m", status_code=503, retry_after=600.0)
    assert policy.delay(1, too_long) is None
    # A Retry-After never makes a non-retryable status retryable.
    assert policy.delay(1, errors.NotFoundError("n", status_code=404, retry_after=1.0)) is None


@pytest.mark.parametrize("cap", [0.0, 1.0, 60.0])
def test_never_sleeps_longer_than_the_retry_after_cap(cap: float) -> None:
    """Whatever the server says and however far the backoff has grown."""
    policy = RetryPolicy(50, base_delay=30.0, max_delay=1e9, retry_after_cap=cap)
    rng = random.Random(7)
    for retry_after in (None, 0.0, cap, cap + 0.001, 900.0, 1e308):
        for exc in (
            errors.RateLimitError("r", retry_after=retry_after),
            errors.InternalServerError("i", status_code=503, retry_after=retry_after),
        ):
            for retry in (1, 2, 10, 50):
                delay = policy.delay(retry, exc, rng)
                if retry_after is not None:
                    assert delay is None or delay <= cap
