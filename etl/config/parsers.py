"""The parsers of configuration values: each checks one value and names its YAML path or variable in an error.

A parser takes ``(path, value, errors)`` and returns the parsed value, or None after appending one
message to ``errors`` (so that every problem of a config is reported at once). Numbers and durations
are ``Bounded`` objects whose range can be read (for docs/configuration.md, the example config and the tests).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from etl.db.dialects import SUPPORTED_URLS, normalise_url
from etl.errors import ConfigError
from etl.errors import shown as _show
from etl.files import MAX_SECRET_BYTES, read_text

UNPRINTABLE_RE = re.compile("[\x00-\x1f\x7f-\x9f]")
PLACEHOLDER_SECRETS = {"changethis", "changeme", "your_client_secret", "secret", "xxx"}
DAY = 86400.0


class Secret:
    """A string that never shows itself in repr, str or logs."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def get(self) -> str:
        """Return the secret value, for the one place that sends it."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


Parser = Callable[[str, Any, list[str]], Any]


@dataclass(frozen=True)
class Bounded:
    """A parser for a finite number (or a duration: ``90s``, ``15m``, ``1h``, ``1d``) within [low, high]."""

    low: float
    high: float
    whole: bool = False  # an integer (a duration: whole seconds)
    duration: bool = False

    @property
    def kind(self) -> str:
        """How an environment variable's text is read first: durations are ``text`` (``15m``)."""
        return "text" if self.duration else "whole" if self.whole else "number"

    def __call__(self, path: str, value: Any, errors: list[str]) -> float | int | None:
        return (_check_duration if self.duration else _check_number)(self, path, value, errors)


def _check_number(bounds: Bounded, path: str, value: Any, errors: list[str]) -> float | int | None:
    low, high, whole = bounds.low, bounds.high, bounds.whole
    kind = "a whole number" if whole else "a number"
    ok = not isinstance(value, bool) and isinstance(value, int if whole else int | float)
    if not ok or not (math.isfinite(value) and low <= value <= high):
        errors.append(f"{path}: expected {kind} from {low:g} to {high:g}, got {_show(value)}")
        return None
    return int(value) if whole else float(value)


def number(low: float, high: float, *, whole: bool = False) -> Bounded:
    """A parser for a finite number in [low, high]; ``whole``: an integer."""
    return Bounded(low, high, whole=whole)


def yaml_name(key: Any) -> str:
    """A YAML key as written, if it is a short printable string; else its clipped repr."""
    if isinstance(key, str) and len(key) <= 60 and not UNPRINTABLE_RE.search(key):
        return key
    return _show(key)


def clip(text: str, limit: int = 60) -> str:
    """Text cut to ``limit`` characters, an ellipsis marking the cut."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def boolean(path: str, value: Any, errors: list[str]) -> bool | None:
    """true or false (a variable's yes/no/on/off/1/0 were read as such before)."""
    if not isinstance(value, bool):
        errors.append(f"{path}: expected true or false, got {_show(value)}")
        return None
    return value


def string(path: str, value: Any, errors: list[str]) -> str | None:
    """A non-empty string of printable characters, at most 4096, stripped."""
    if not isinstance(value, str) or not value.strip() or len(value) > 4096 or UNPRINTABLE_RE.search(value.strip()):
        errors.append(f"{path}: expected a non-empty string of printable characters, got {_show(value)}")
        return None
    return value.strip()


def short_string(path: str, value: Any, errors: list[str]) -> str | None:
    """A ``string`` of at most 200 characters."""
    text = string(path, value, errors)
    if text is not None and len(text) > 200:
        errors.append(f"{path}: at most 200 characters, got {len(text)}")
        return None
    return text


APPLICATION_NAME_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,39}")
VARIABLE_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")


def application_name(path: str, value: Any, errors: list[str]) -> str | None:
    """An application's name: lower-case letters, digits and hyphens, at most 40 (it names locks, metric labels
    and variables)."""
    if not isinstance(value, str) or not APPLICATION_NAME_RE.fullmatch(value.strip()):
        errors.append(f"{path}: expected lower-case letters, digits and hyphens (not first), at most 40, "
                      f"got {_show(value)}")
        return None
    return value.strip()


def variable_name(path: str, value: Any, errors: list[str]) -> str | None:
    """The name of an environment variable (letters, digits, underscores; not a digit first). The value is never
    echoed: a secret put here by mistake must not reach the output."""
    if not isinstance(value, str) or not VARIABLE_NAME_RE.fullmatch(value.strip()):
        errors.append(f"{path}: expected the name of an environment variable (letters, digits and underscores, "
                      "not a digit first; the value given is not shown, in case it is the secret itself)")
        return None
    return value.strip()


def choice(choices: tuple[str, ...], *, upper: bool = False) -> Parser:
    """A parser for one of ``choices`` (``upper``: given in any case)."""
    def parse(path: str, value: Any, errors: list[str]) -> str | None:
        text = value.upper() if upper and isinstance(value, str) else value
        if text not in choices:
            errors.append(f"{path}: expected one of {', '.join(choices)}, got {_show(value)}")
            return None
        return str(text)

    return parse


DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
DURATION_RE = re.compile(r"([0-9]+(?:\.[0-9]+)?)\s*([smhd]?)")


def parse_duration(text: str) -> float | None:
    """Seconds from ``90s``, ``15m``, ``1h``, ``1d`` (or a bare number of seconds); None if unreadable.

    Only plain decimal numbers are read: no exponent, infinity or NaN.
    """
    match = DURATION_RE.fullmatch(text.strip().lower()) if len(text) <= 32 else None
    if match is None:
        return None
    return float(match.group(1)) * DURATION_UNITS.get(match.group(2) or "s", 1)


def duration(low: float, high: float, *, whole: bool = False) -> Bounded:
    """A parser for a duration (``90s``, ``15m``, or a number of seconds) within [low, high] seconds."""
    return Bounded(low, high, whole=whole, duration=True)


def _check_duration(bounds: Bounded, path: str, value: Any, errors: list[str]) -> float | int | None:
    low, high, whole = bounds.low, bounds.high, bounds.whole
    seconds: float | None = None
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str):
        seconds = parse_duration(value)
    if seconds is None or not math.isfinite(seconds) or not low <= seconds <= high or (
            whole and seconds != int(seconds)):
        errors.append(f"{path}: expected a duration like 90s, 15m, 1h or 1d, from {span(low)} to "
                      f"{span(high)}{' in whole seconds' if whole else ''}, got {_show(value)}")
        return None
    return int(seconds) if whole else seconds


def span(seconds: float) -> str:
    """Seconds as people write them: ``15m``, ``6h``, ``1d``, ``90s``."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"


def cron(path: str, value: Any, errors: list[str]) -> str | None:
    """A crontab expression (UTC) that fires at least once."""
    from apscheduler.triggers.cron import CronTrigger

    text = string(path, value, errors)
    if text is None:
        return None
    try:
        trigger = CronTrigger.from_crontab(text, timezone=dt.UTC)
    except ValueError as exc:
        errors.append(f"{path}: not a crontab expression ({clip(str(exc))}): {_show(text)}")
        return None
    if trigger.get_next_fire_time(None, dt.datetime.now(dt.UTC)) is None:  # 31 February: a daemon that never runs
        errors.append(f"{path}: {_show(text)} never fires")
        return None
    return text


def listen(path: str, value: Any, errors: list[str]) -> str | None:
    """``host:port`` to listen on."""
    text = string(path, value, errors)
    if text is None:
        return None
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        errors.append(f"{path}: expected host:port, got {_show(text)}")
        return None
    return text


def file_secret(path: str, value: Any, errors: list[str]) -> Secret | None:
    """The secret held by the file the value names (the name is never echoed)."""
    if not isinstance(value, str) or not value.strip():
        errors.append(f"{path}: expected the name of a file holding the secret")
        return None
    # The value is never echoed: a secret pasted here by mistake must not reach the output.
    try:
        text = read_text(value.strip(), where=f"{path} (the file it names)", limit=MAX_SECRET_BYTES).strip()
    except ConfigError as error:
        errors.extend(error.errors)
        return None
    return check_secret(path, text, errors)


def check_secret(where: str, text: str, errors: list[str]) -> Secret | None:
    """A secret that is not empty, not a placeholder and of printable characters."""
    if not text:
        errors.append(f"{where}: the secret is empty")
        return None
    if UNPRINTABLE_RE.search(text) or len(text) > 4096:
        errors.append(f"{where}: the secret holds control characters or is longer than 4096 characters")
        return None
    if text.lower() in PLACEHOLDER_SECRETS or (text.startswith("<") and text.endswith(">")):
        # Never echo the value itself, even a placeholder: it may be a real secret.
        errors.append(f"{where}: looks like a placeholder, not a real secret")
        return None
    return Secret(text)


def is_loopback_host(host: str | None) -> bool:
    """True for localhost and addresses in 127.0.0.0/8 or ::1."""
    if not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def api_url(path: str, value: Any, errors: list[str]) -> str | None:
    """An https:// URL (http:// for loopback) without credentials or a query string."""
    text = string(path, value, errors)
    if text is None:
        return None
    try:
        parts = urlsplit(text)
        host = parts.hostname
    except ValueError:  # "Invalid IPv6 URL": the text may hold credentials, so it is not echoed
        errors.append(f"{path}: not a URL (expected https://HOST/PATH)")
        return None
    if "@" in parts.netloc or parts.query:
        # Neither is echoed: user:password@ or ?token= in a URL is a secret in the wrong place.
        errors.append(f"{path}: must not carry credentials (user:password@) or a query string; credentials "
                      "are read from SMARTCAR_CLIENT_ID and SMARTCAR_CLIENT_SECRET")
        return None
    if parts.scheme == "http" and not is_loopback_host(host):
        errors.append(f"{path}: plain http:// is accepted only for loopback addresses, got {_show(text)}")
        return None
    if parts.scheme not in ("http", "https") or not host:
        errors.append(f"{path}: expected an https:// URL, got {_show(text)}")
        return None
    return text.rstrip("/")


def database_url(path: str, value: Any, errors: list[str]) -> str | None:
    """A database URL of a supported driver, normalised (``postgres://`` read with psycopg 3)."""
    if not isinstance(value, str) or not value.strip() or UNPRINTABLE_RE.search(value.strip()):
        # Not echoed: a URL may carry a password.
        errors.append(f"{path}: expected a database URL ({SUPPORTED_URLS})")
        return None
    try:
        return normalise_url(value.strip())
    except ValueError as exc:
        errors.append(f"{path}: {exc}")
        return None
