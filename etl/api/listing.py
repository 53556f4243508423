"""The listing (``GET /connections``): one page read and validated item by item, and the paginator.

The paginator is a small stateful object that cannot loop for ever: it raises when the API answers
another page than the one asked for, when ``links.next`` points back, when a page repeats the
previous one, or when there are more pages than ``totalCount`` allows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx

from etl.api.documents import ConnectionRecord, canonical_id, decode_json, parse_resource
from etl.errors import ApiError, MalformedDocumentError

MAX_TOTAL_COUNT = 10**9  # a totalCount beyond this is not believed (it would overflow run counters)


def pages_for(count: int, size: int) -> int:
    """How many pages of ``size`` a listing of ``count`` connections has (one, even when empty)."""
    return max(1, -(-count // size))


LISTING_PATH = "/connections"


def listing_page(number: int, response: httpx.Response) -> ListingPage:
    """The listing's page ``number`` from the API's answer, its items validated one by one."""
    path = LISTING_PATH
    if response.status_code != 200:  # the listing itself cannot be missing
        raise ApiError(path=path, status=response.status_code, reason=response.reason_phrase,
                       detail=f"page {number}: the listing answered {response.status_code}")
    try:
        body = decode_json(response.content)
    except ValueError as exc:
        raise MalformedDocumentError(path=path, status=200, detail=f"page {number}: {exc}") from None
    if not isinstance(body, dict) or not isinstance(body.get("data"), list):
        raise MalformedDocumentError(path=path, status=200, detail=f"page {number}: data is not an array")
    page = ListingPage(number=number, body=body)
    for item in body["data"]:
        try:
            page.records.append(parse_resource(item, expected_id=None, path=path))
        except MalformedDocumentError as error:
            item_id = canonical_id(item.get("id")) if isinstance(item, dict) else None
            if item_id is None:
                page.unreadable.append(str(error))
            else:
                page.malformed.append((item_id, error))
    return page


@dataclass
class ListingPage:
    """One page of the listing: valid records, items with an id but invalid, items with no readable id."""

    number: int
    body: dict[str, Any]
    records: list[ConnectionRecord] = field(default_factory=list)
    malformed: list[tuple[str, MalformedDocumentError]] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)

    @property
    def ids(self) -> list[str]:
        """Every readable id on the page, in order."""
        return [r.connection_id for r in self.records] + [i for i, _ in self.malformed]

    @property
    def total_count(self) -> int | None:
        """``meta.totalCount`` when the API gives it as a plausible whole number (0 to a billion)."""
        total = _object(self.body.get("meta")).get("totalCount")
        plausible = isinstance(total, int) and not isinstance(total, bool) and 0 <= total <= MAX_TOTAL_COUNT
        return total if plausible else None


class Paginator:
    """Page-number paging over the listing that cannot loop forever.

    After each page it decides whether there is another: ``links.next`` (absolute,
    relative, or null) when the API gives it, else ``meta.totalCount``, else a
    full page. It raises MalformedDocumentError when the API answers another
    page than the one asked for (``meta.page`` or ``meta.pageNumber``), when
    ``links.next`` points back, when a page repeats the previous one, or when
    there are more pages than ``totalCount`` allows.
    """

    def __init__(self, *, size: int, start: int = 1, max_pages: int = 1_000_000) -> None:
        self.size = size
        self.number = start
        self.max_pages = max_pages
        self.total: int | None = None
        self._previous_ids: list[str] | None = None

    def advance(self, page: ListingPage) -> bool:
        """Check ``page`` (the one just fetched); move to the next and return True if there is one."""
        path = "/connections"
        meta, links = _object(page.body.get("meta")), _object(page.body.get("links"))
        reported = meta.get("page", meta.get("pageNumber"))
        if isinstance(reported, int) and not isinstance(reported, bool) and reported != self.number:
            raise MalformedDocumentError(path=path, status=200,
                                         detail=f"asked for page {self.number}, the API answered page {reported}")
        ids = page.ids
        if ids and ids == self._previous_ids:
            raise MalformedDocumentError(path=path, status=200,
                                         detail=f"page {self.number} repeats page {self.number - 1}")
        self._previous_ids = ids
        total = page.total_count
        if total is not None:
            self.total = total
            if self.number > pages_for(total, self.size) + 1:
                raise MalformedDocumentError(path=path, status=200,
                                             detail=f"page {self.number} is past totalCount {total}")
        if not page.body["data"]:
            return False
        next_page = self.number + 1
        if "next" in links:
            if not links["next"]:
                return False
            linked = _page_number(str(links["next"]))
            if linked is not None and linked <= self.number:
                raise MalformedDocumentError(path=path, status=200,
                                             detail=f"links.next of page {self.number} points to page {linked}")
            next_page = linked or next_page
        elif self.total is not None:
            if self.number * self.size >= self.total:
                return False
        elif len(page.body["data"]) < self.size:
            return False
        if next_page - self.number > 1 or next_page > self.max_pages:
            raise MalformedDocumentError(path=path, status=200,
                                         detail=f"page {self.number} points to page {next_page}: runaway paging")
        self.number = next_page
        return True


def _object(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _page_number(link: str) -> int | None:
    """``page[number]`` of a next link (absolute or relative); None if it has none."""
    values = parse_qs(urlsplit(link).query).get("page[number]")
    try:
        return int(values[0]) if values else None
    except ValueError:
        return None
