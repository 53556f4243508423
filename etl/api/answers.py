"""What an answer of the API means: every response is sorted here (``classify``) and nowhere else.

200 is an answer, and so is a 404 that is Smartcar's own word that the resource is missing
(``smartcar_not_found``); any other 404 (a proxy's page, a wrong base path) fails that one request.
401 asks for one token renewal; 403 and 430 stop the run; 429, 5xx, timeouts and network errors are
retried by the ``RetryPolicy``; any other status fails that one request. Error messages carry status,
reason, path and the API's error code and detail, never headers, tokens or query strings.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import quote, quote_plus

import httpx

from etl.api.documents import UNSTORABLE_RE, decode_json
from etl.api.retry import parse_retry_after
from etl.clock import utcnow
from etl.errors import ApiError, AuthenticationError, FatalApiError, RetriableApiError

MAX_DETAIL = 200


class Unauthorized(AuthenticationError):
    """A 401: the token was refused (the client renews it once before giving up).

    ``token``: the bearer token that was refused, set by the client that sent it.
    """

    token: str | None = None


def _clip(text: str) -> str:
    text = " ".join(UNSTORABLE_RE.sub(" ", text).split())
    return text if len(text) <= MAX_DETAIL else text[: MAX_DETAIL - 1] + "…"


def _scalar_text(value: Any) -> str | None:
    """A JSON scalar as clipped, printable text; None for nothing or a container."""
    if not value or not isinstance(value, str | int | float):
        return None
    return _clip(str(value))


def error_info(response: httpx.Response) -> tuple[str | None, str | None]:
    """(code, detail) from an error body: JSON:API ``errors``, the flat v2 object, OAuth, or text."""
    try:
        body: Any = decode_json(response.content)
    except ValueError:
        body = None
    if isinstance(body, dict):
        errors = body.get("errors")
        if isinstance(errors, list) and errors and isinstance(errors[0], dict):
            first = errors[0]
            code = first.get("code") or first.get("type")
            detail = first.get("detail") or first.get("title")
        elif "error" in body:  # OAuth token endpoint
            code, detail = body.get("error"), body.get("error_description")
        else:  # v2 flat object
            kind, sub = body.get("type"), body.get("code")
            code = f"{kind}:{sub}" if kind and sub else kind or sub
            detail = body.get("description") or body.get("message")
        return _scalar_text(code), _scalar_text(detail)
    text = response.content[:2000].decode("utf-8", errors="replace")
    content_type = response.headers.get("content-type", "").split(";")[0].strip()
    if "html" in content_type or text.lstrip().startswith("<"):
        title = re.search(r"<title>(.*?)</title>", text, re.IGNORECASE | re.DOTALL)
        return None, _clip(f"HTML page: {title.group(1)}" if title else "HTML page")
    return None, _clip(text) if text.strip() else None


def redact(text: str | None, secrets: Iterable[str]) -> str | None:
    """``text`` with every secret the job knows (as sent: raw or form-encoded) replaced by ``[redacted]``."""
    if not text:
        return text
    for secret in secrets:
        for form in {secret, quote_plus(secret), quote(secret, safe="")}:
            if len(form) >= 4:
                text = text.replace(form, "[redacted]")
    return text


# Smartcar's documented 404s for a request it could not route (RESOURCE_NOT_FOUND with code PATH or
# VERSION): a wrong base URL, not a missing connection.
WRONG_PATH_CODES = frozenset({"PATH", "VERSION"})


def smartcar_not_found(response: httpx.Response) -> bool:
    """Whether a 404 is Smartcar's answer for a missing resource: a JSON:API ``errors`` array whose first
    entry has status "404" and no code of a wrong path or version. An inferred rule (Smartcar documents
    the error shape and the PATH/VERSION codes, not a body for each case): an HTML page, an empty body or
    other JSON is some other server's 404, never proof that a connection is gone."""
    try:
        body: Any = decode_json(response.content)
    except ValueError:
        return False
    errors = body.get("errors") if isinstance(body, dict) else None
    if not isinstance(errors, list) or not errors or not isinstance(errors[0], dict):
        return False
    first = errors[0]
    if first.get("status") not in ("404", 404):
        return False
    marks = {str(first.get(key) or "").upper().rsplit(":", 1)[-1] for key in ("type", "code")}
    return not marks & WRONG_PATH_CODES


def vehicle_rate_limited(error: ApiError) -> bool:
    """A 429 for one vehicle's limit (``RATE_LIMIT`` with code ``VEHICLE``), not the application's."""
    return error.status == 429 and (error.code or "").upper().rsplit(":", 1)[-1] == "VEHICLE"


def classify(
    response: httpx.Response,
    *,
    path: str,
    now: Callable[[], dt.datetime] = utcnow,
    secrets: Iterable[str] = (),
) -> None:
    """Return for an answer (200, Smartcar's 404); raise the error class that decides what happens next.

    The API's error code and detail go into the error with ``secrets`` redacted.
    """
    status = response.status_code
    if status == 200 or (status == 404 and smartcar_not_found(response)):
        return
    code, detail = error_info(response)
    secrets = list(secrets)
    fields: dict[str, Any] = {
        "path": path, "status": status, "reason": response.reason_phrase,
        "code": redact(code, secrets), "detail": redact(detail, secrets),
    }
    if status == 401:
        raise Unauthorized(**fields)
    if status in (403, 430):
        raise FatalApiError(kind="billing" if status == 430 else "forbidden", **fields)
    if status == 429 or status >= 500:
        retry_after = parse_retry_after(response.headers.get("retry-after"), now=now)
        kind = "server" if status >= 500 else "vehicle_limit" if vehicle_rate_limited(ApiError(**fields)) \
            else "rate_limited"
        raise RetriableApiError(retry_after=retry_after, kind=kind, **fields)
    if status == 404:
        fields["detail"] = "not Smartcar's answer for a missing connection (" + (
            fields["detail"] or "no error body") + "); is api.base_url right?"
        raise ApiError(kind="unrecognised_404", **fields)
    raise ApiError(**fields)
