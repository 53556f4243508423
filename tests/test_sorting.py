"""Reading error bodies, clipping, redaction and small parsers: table-driven, each branch pinned.

(Closes gaps that mutation testing found: mutants that survived because no test
read these values exactly.)
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import httpx
import pytest

from etl.api.answers import MAX_DETAIL, _clip, error_info, redact
from etl.api.documents import OutOfRange
from etl.api.retry import RetryPolicy, parse_retry_after
from etl.errors import RetriableApiError

NOW = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)


@pytest.mark.parametrize("body, code, detail", [
    ({"errors": [{"code": "c", "type": "t", "detail": "d", "title": "ti"}]}, "c", "d"),
    ({"errors": [{"type": "UPSTREAM", "title": "Bad Gateway"}]}, "UPSTREAM", "Bad Gateway"),
    ({"errors": [{"status": "500"}]}, None, None),
    ({"errors": ["not an object"], "type": "T"}, "T", None),
    ({"errors": [], "type": "T", "code": "C", "description": "desc"}, "T:C", "desc"),
    ({"type": "RATE_LIMIT", "code": "SMARTCAR_API", "description": "slow down"}, "RATE_LIMIT:SMARTCAR_API",
     "slow down"),
    ({"type": "RATE_LIMIT"}, "RATE_LIMIT", None),
    ({"code": "ONLY_CODE", "message": "a message"}, "ONLY_CODE", "a message"),
    ({"error": "invalid_client", "error_description": "Client authentication failed."}, "invalid_client",
     "Client authentication failed."),
    ({"error": "invalid_request"}, "invalid_request", None),
    ({"errors": [{"code": ["a", "list"], "detail": {"an": "object"}}]}, None, None),
    ({"errors": [{"code": 42, "detail": 1.5}]}, "42", "1.5"),
])
def test_error_bodies_of_every_shape(body: Any, code: str | None, detail: str | None) -> None:
    assert error_info(httpx.Response(400, json=body)) == (code, detail)


@pytest.mark.parametrize("content, headers, expected", [
    (b"<html><head><TITLE>502\n Bad Gateway</TITLE></head></html>", {}, "HTML page: 502 Bad Gateway"),
    (b"  <html>no title</html>", {}, "HTML page"),
    (b"oops, no tags", {"content-type": "text/html; charset=utf-8"}, "HTML page"),
    (b"plain words\tand\x00more", {"content-type": "text/plain"}, "plain words and more"),
    (b"", {}, None),
    (b" " * 2000 + b"beyond the first 2000 bytes", {}, None),
    (b"plain text", {"content-type": "text/plain; note=html"}, "plain text"),
    (b"   \n ", {}, None),
    (b"caf\xe9", {}, "caf\ufffd"),
])
def test_bodies_that_are_not_json(content: bytes, headers: dict[str, str], expected: str | None) -> None:
    assert error_info(httpx.Response(500, content=content, headers=headers)) == (None, expected)


def test_clip_keeps_short_text_and_cuts_long_text_to_the_limit() -> None:
    assert _clip("a  b\n\x00c") == "a b c"
    exact = "x" * MAX_DETAIL
    assert _clip(exact) == exact
    long = "y" * (MAX_DETAIL + 1)
    assert _clip(long) == "y" * (MAX_DETAIL - 1) + "…" and len(_clip(long)) == MAX_DETAIL


def test_redact_replaces_every_form_of_a_secret_but_not_short_strings() -> None:
    secret = "s3cr/t+x=y"
    text = f"raw {secret} plus %s quote %s" % ("s3cr%2Ft%2Bx%3Dy", "s3cr%2Ft%2Bx%3Dy")
    assert redact(text, [secret]) == "raw [redacted] plus [redacted] quote [redacted]"
    assert redact("path s3cr/t x", ["s3cr/t"]) == "path [redacted] x"  # quote() with safe="" encodes '/'
    assert redact("abcd and abc", ["abcd", "abc"]) == "[redacted] and abc"  # under 4 characters: left alone
    assert redact(None, [secret]) is None and redact("", [secret]) == ""
    assert redact("a b", []) == "a b"


def test_out_of_range_values_show_briefly() -> None:
    assert repr(OutOfRange("NaN")) == "NaN"
    assert repr(OutOfRange("1" * 24)) == "1" * 24
    assert repr(OutOfRange("2" * 25)) == "2222222222…(25 characters)"


@pytest.mark.parametrize("value, expected", [
    ("0", 0.0), ("120", 120.0), ("9" * 12, float("9" * 12)), ("9" * 13, None),
    ("Sun, 01 Mar 2026 12:01:00 GMT", 60.0), ("Sun, 01 Mar 2026 11:00:00 GMT", 0.0),
    ("soon", None), (None, None),
])
def test_retry_after_values(value: str | None, expected: float | None) -> None:
    assert parse_retry_after(value, now=lambda: NOW) == expected


def test_a_date_of_64_characters_is_read_and_a_longer_one_is_not() -> None:
    date = "Sun, 01 Mar 2026 12:00:10 +0000 "  # the parser ignores what follows the zone
    assert parse_retry_after(date.ljust(64, "x"), now=lambda: NOW) == 10.0
    assert parse_retry_after(date.ljust(65, "x"), now=lambda: NOW) is None


def test_a_retry_after_of_zero_is_not_rounded_up() -> None:
    policy = RetryPolicy(max_retry_after=30.0)
    assert policy.delay(1, RetriableApiError(path="/p", retry_after=0.0)) == 0.0
    assert policy.delay(1, RetriableApiError(path="/p", retry_after=0.5)) == 0.5
    assert policy.delay(1, RetriableApiError(path="/p", retry_after=-3.0)) == 0.0
    assert policy.delay(1, RetriableApiError(path="/p", retry_after=99.0)) == 30.0


@pytest.mark.parametrize("total, expected", [(250, 250), (0, 0), (10**9, 10**9), (10**9 + 1, None), (-1, None),
                                             (True, None), ("250", None), (2.5, None)])
def test_only_a_plausible_total_count_is_believed(total: Any, expected: int | None) -> None:
    from etl.api.listing import ListingPage

    assert ListingPage(number=1, body={"data": [], "meta": {"totalCount": total}}).total_count == expected


def not_found(error: Any) -> httpx.Response:
    return httpx.Response(404, json={"errors": [error]} if isinstance(error, dict) else error)


@pytest.mark.parametrize("response, missing", [
    (not_found({"status": "404", "type": "RESOURCE_NOT_FOUND", "code": "CONNECTION"}), True),
    (not_found({"status": 404, "code": "CONNECTION"}), True),  # the status as a number
    (not_found({"status": "404"}), True),  # no type, no code
    (not_found({"status": "405", "code": "CONNECTION"}), False),
    (not_found({"status": "404", "type": "RESOURCE_NOT_FOUND", "code": "PATH"}), False),
    (not_found({"status": "404", "type": "path"}), False),  # the wrong-path mark in "type"
    (not_found({"status": "404", "code": "RESOURCE_NOT_FOUND:VERSION"}), False),
    (not_found({"status": "404", "code": "SMARTCAR:RESOURCE_NOT_FOUND:PATH"}), False),  # the mark is the last part
    (not_found([{"status": "404"}]), False),  # JSON, but not an object
    (httpx.Response(404, text="<html>Not Found</html>"), False),
])
def test_only_smartcars_own_404_says_a_resource_is_missing(response: httpx.Response, missing: bool) -> None:
    from etl.api.answers import smartcar_not_found

    assert smartcar_not_found(response) is missing


@pytest.mark.parametrize("status, code, vehicle", [
    (429, "VEHICLE", True), (429, "rate_limit:vehicle", True), (429, "SMARTCAR:RATE_LIMIT:VEHICLE", True),
    (429, "VEHICLE:RATE_LIMIT", False), (429, None, False), (429, "RATE_LIMIT", False), (503, "VEHICLE", False),
])
def test_a_vehicles_own_rate_limit_is_told_from_the_applications(status: int, code: str | None,
                                                                 vehicle: bool) -> None:
    from etl.api.answers import vehicle_rate_limited

    error = RetriableApiError(path="/connections/x", status=status, code=code)
    assert vehicle_rate_limited(error) is vehicle
