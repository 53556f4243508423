"""The one clock of the job: timezone-aware UTC. Everything that needs the time takes ``now`` as an argument."""

from __future__ import annotations

import datetime as dt
import re

_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
# RFC 7231 7.1.1.1 IMF-fixdate, the one form a server may send: "Sun, 06 Nov 1994 08:49:37 GMT".
_IMF_FIXDATE = re.compile(rf"({'|'.join(_DAYS)}), ([0-9]{{2}}) ({'|'.join(_MONTHS)}) ([0-9]{{4}}) "
                          r"([0-9]{2}):([0-9]{2}):([0-9]{2}) GMT")


def utcnow() -> dt.datetime:
    """The current time, timezone-aware UTC."""
    return dt.datetime.now(dt.UTC)


def http_date(value: str | None) -> dt.datetime | None:
    """An HTTP date in IMF-fixdate form, read strictly (four-digit year, GMT, the right weekday); else None.

    Not ``email.utils.parsedate_to_datetime``: it reads a year of ``0001`` as 2001 and ``94`` as 1994, and
    accepts any offset, so a wrong Date header would pass for a plausible one.
    """
    match = _IMF_FIXDATE.fullmatch(value.strip()) if value is not None else None
    if match is None:
        return None
    weekday, day, month, year, hour, minute, second = match.groups()
    try:
        when = dt.datetime(int(year), _MONTHS.index(month) + 1, int(day), int(hour), int(minute), int(second),
                           tzinfo=dt.UTC)
    except ValueError:  # 31 Feb, year 0000, a leap second
        return None
    return when if _DAYS[when.weekday()] == weekday else None
