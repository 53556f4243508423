"""The retry policy: backoff sequence, jitter bounds, Retry-After, give-up."""

from __future__ import annotations

import datetime as dt

import pytest

from etl.api.retry import RetryPolicy, parse_retry_after
from etl.errors import ApiError, RetriableApiError

NOW = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)


def failing(times: int, **fields: object) -> tuple[list[int], object]:
    calls: list[int] = []

    def attempt() -> str:
        calls.append(1)
        if len(calls) <= times:
            raise RetriableApiError(path="/p", status=503, **fields)  # type: ignore[arg-type]
        return "ok"

    return calls, attempt


def test_backoff_doubles_up_to_the_cap() -> None:
    sleeps: list[float] = []
    policy = RetryPolicy(max_attempts=6, initial_backoff=0.5, max_backoff=3.0, sleep=sleeps.append,
                         jitter=lambda: 1.0)
    calls, attempt = failing(5)
    assert policy.call(attempt) == "ok"  # type: ignore[arg-type]
    assert sleeps == [0.5, 1.0, 2.0, 3.0, 3.0] and len(calls) == 6


def test_jitter_keeps_at_least_half_the_wait() -> None:
    sleeps: list[float] = []
    policy = RetryPolicy(initial_backoff=2.0, sleep=sleeps.append, jitter=lambda: 0.0)
    policy.call(failing(2)[1])  # type: ignore[arg-type]
    assert sleeps == [1.0, 2.0]


def test_gives_up_after_max_attempts_with_the_last_error() -> None:
    sleeps: list[float] = []
    policy = RetryPolicy(max_attempts=3, sleep=sleeps.append, jitter=lambda: 1.0)
    calls, attempt = failing(10)
    with pytest.raises(RetriableApiError, match="HTTP 503"):
        policy.call(attempt)  # type: ignore[arg-type]
    assert len(calls) == 3 and len(sleeps) == 2


def test_retry_after_replaces_backoff_and_is_clamped() -> None:
    sleeps: list[float] = []
    policy = RetryPolicy(max_retry_after=10.0, sleep=sleeps.append)
    policy.call(failing(1, retry_after=4.0)[1])  # type: ignore[arg-type]
    policy.call(failing(1, retry_after=999.0)[1])  # type: ignore[arg-type]
    assert sleeps == [4.0, 10.0]


def test_non_retriable_errors_are_not_retried() -> None:
    sleeps: list[float] = []
    calls: list[int] = []

    def attempt() -> None:
        calls.append(1)
        raise ApiError(path="/p", status=400)

    with pytest.raises(ApiError):
        RetryPolicy(sleep=sleeps.append).call(attempt)
    assert calls == [1] and sleeps == []


@pytest.mark.parametrize("header, expected", [
    ("5", 5.0), (" 17 ", 17.0), ("Sun, 01 Mar 2026 12:00:30 GMT", 30.0),
    ("Sun, 01 Mar 2026 11:00:00 GMT", 0.0), ("soon", None), (None, None), ("-3", None),
])
def test_parse_retry_after(header: str | None, expected: float | None) -> None:
    assert parse_retry_after(header, now=lambda: NOW) == expected
