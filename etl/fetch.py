"""Where a pass's outcomes come from: tracked ids one by one, the full listing, or whichever is cheaper.

Each source is an object that owns its state (how many it plans, why it is
incomplete, the listing page it is on) and yields ``Fetched`` / ``Gone`` /
``Failed`` outcomes that the run loop in ``etl.sync`` stores in batches while
fetching goes on.
"""

from __future__ import annotations

import datetime as dt
import logging
import queue
from collections.abc import Callable, Generator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Protocol

from etl.api.client import Cancelled, Deferred, ListingPage, Paginator, SmartcarClient
from etl.clock import utcnow
from etl.context import Pass
from etl.errors import ApiError, FatalApiError
from etl.outcomes import Failed, Fetched, Gone, Outcome

log = logging.getLogger(__name__)


class OutcomeSource(Protocol):
    """A stream of outcomes, with how many it plans (None: as many as come) and why it is incomplete."""

    @property
    def planned(self) -> int | None: ...

    @property
    def incomplete(self) -> str | None: ...

    @property
    def out_of_time(self) -> bool: ...

    def outcomes(self) -> Generator[Outcome, None, None]: ...


def fetch_outcomes(
    ids: Sequence[str],
    *,
    client: SmartcarClient,
    concurrency: int,
    window: int,
    now: Callable[[], dt.datetime] = utcnow,
) -> Generator[Outcome, None, None]:
    """Fetch every id with up to ``concurrency`` requests in flight; yield outcomes as they complete.

    At most ``window`` results wait to be consumed, so fetching goes on while
    the consumer writes a batch, and memory stays bounded. A FatalApiError is
    raised as soon as it is seen; the other requests are cancelled.
    """

    def fetch_one(connection_id: str) -> Outcome:
        try:
            record = client.get_connection(connection_id)
        except FatalApiError:
            client.cancelled.set()
            raise
        except ApiError as error:
            return Failed(connection_id, now(), error)
        at = now()
        return Gone(connection_id, at) if record is None else Fetched(connection_id, at, record)

    pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="fetch")
    finished: queue.SimpleQueue[Future[Outcome]] = queue.SimpleQueue()
    remaining = iter(ids)
    in_flight = 0  # submitted and not yet consumed

    def fill() -> None:
        nonlocal in_flight
        while in_flight < window and not client.cancelled.is_set() and (
                client.deadline is None or client.deadline.allows()):
            connection_id = next(remaining, None)
            if connection_id is None:
                return
            pool.submit(fetch_one, connection_id).add_done_callback(finished.put)
            in_flight += 1

    try:
        fill()
        while in_flight:
            future = finished.get()
            in_flight -= 1
            error = future.exception()
            if isinstance(error, Cancelled):
                continue
            if error is not None:
                raise error
            yield future.result()
            fill()
    finally:
        if in_flight:  # left early (an error, or the consumer stopped): stop the requests still queued
            client.cancelled.set()
        pool.shutdown(wait=True, cancel_futures=True)


class ByIds:
    """One GET per id."""

    def __init__(self, ctx: Pass, ids: Sequence[str]) -> None:
        self.ctx = ctx
        self.ids = ids
        self.planned: int | None = len(ids)
        self.incomplete: str | None = None
        self.done = 0

    @property
    def out_of_time(self) -> bool:
        """Whether --max-duration left some ids for the next pass (not a stop on request)."""
        return (self.ctx.client.deadline is not None and self.done < len(self.ids)
                and not self.ctx.cancelled.is_set())

    def outcomes(self) -> Generator[Outcome, None, None]:
        """Every id's outcome, as requests complete."""
        for outcome in fetch_outcomes(self.ids, client=self.ctx.client, concurrency=self.ctx.config.api.concurrency,
                                      window=self.ctx.window, now=self.ctx.now):
            self.done += 1
            yield outcome


class Listing:
    """Every connection of the listing, then a direct GET of each tracked one it did not show.

    Connections the user untracked are skipped, and so are new ones unless
    ``sync.track_listed``. A connection seen twice across pages counts once. Only
    a complete listing leads to confirmations: if a page fails (after retries)
    or the paging goes wrong, ``incomplete`` says why and nothing is confirmed,
    so nothing is marked deleted. A missing connection is only marked deleted if
    its own GET answers 404 (page-number paging can skip rows when the set
    changes under it). A listing resumed at ``start_page`` passes ``since``
    (when it first started): connections attempted since then were seen by the
    earlier part.
    """

    def __init__(
        self,
        ctx: Pass,
        *,
        first_page: ListingPage | None = None,
        start_page: int = 1,
        since: dt.datetime | None = None,
    ) -> None:
        self.ctx = ctx
        self.first_page = first_page
        self.start_page = start_page
        self.since = since
        self.planned: int | None = None  # as many as the listing shows
        self.incomplete: str | None = None
        self.page = 0  # the page being read
        self.total: int | None = None  # the listing's totalCount, once known
        self.seen: set[str] = set()
        self.out_of_time = False  # stopped at a page boundary by --max-duration; the next pass resumes

    def outcomes(self) -> Generator[Outcome, None, None]:
        """The listing's outcomes, then the confirmations of what it missed."""
        ctx = self.ctx
        page_size = ctx.config.sync.page_size
        log.info("the full listing, %d a page", page_size, extra={"strategy": "list"})
        tracked = ctx.store.tracked_flags()
        track_new = ctx.config.sync.track_listed

        def wanted(connection_id: str) -> bool:
            if connection_id in self.seen:
                return False
            self.seen.add(connection_id)
            return tracked.get(connection_id, track_new)

        paginator = Paginator(size=page_size, start=self.start_page)
        page = self.first_page
        while True:
            if ctx.cancelled.is_set():
                self.incomplete = "stopped on request"
                return
            try:
                self.page = paginator.number
                if page is None:
                    page = ctx.client.list_page(paginator.number, page_size)
                yield from self._items(page, wanted)
                more = paginator.advance(page)
                self.total = paginator.total
            except FatalApiError:
                raise
            except Deferred:
                self.out_of_time = True
                if self.total is not None:  # what this pass leaves for the next one
                    self.planned = len(self.seen) + max(0, self.total - (paginator.number - 1) * page_size)
                log.info("out of time at page %d (--max-duration): the next pass resumes there; nothing is "
                         "confirmed until the listing has gone through", paginator.number)
                return
            except Cancelled:
                self.incomplete = "stopped on request"
                return
            except ApiError as error:
                self.incomplete = f"listing stopped at page {paginator.number}: {error}"
                log.error("%s; nothing will be marked deleted this run", self.incomplete)
                return
            if not more:
                break
            page = None
        yield from self._confirm_missing()

    def _items(self, page: ListingPage, wanted: Callable[[str], bool]) -> Generator[Outcome, None, None]:
        at = self.ctx.now()
        for record in page.records:
            if wanted(record.connection_id):
                yield Fetched(record.connection_id, at, record)
        for connection_id, error in page.malformed:
            if wanted(connection_id):
                yield Failed(connection_id, at, error)
        if page.unreadable:
            # An item without a readable id might be any tracked connection: confirm none.
            self.incomplete = f"page {page.number}: {len(page.unreadable)} item(s) without a readable id"

    def _confirm_missing(self) -> Generator[Outcome, None, None]:
        if self.incomplete:
            log.warning("%s; nothing will be marked deleted this run", self.incomplete)
            return
        missing = self.ctx.store.missing_from(self.seen, since=self.since)
        if missing:
            log.info("%d tracked connection(s) missing from the listing; confirming each with a GET", len(missing))
            confirm = ByIds(self.ctx, missing)
            yield from confirm.outcomes()
            if confirm.out_of_time:  # the next pass reads the last page again, then confirms the rest
                self.out_of_time = True


class SyncListing:
    """What identifies the listing that ``sync`` keeps its place in (a ``backfills`` row of its own)."""

    name = "the listing (sync)"
    kind = "all"
    fingerprint = "sync-listing"
    total = None


class ResumableListing(Listing):
    """The listing of a sync pass, which keeps its place in the database.

    A pass that runs out of time (``--max-duration``) stops at a page boundary;
    the next pass resumes at that page, and only a listing that has gone through
    from its first page to its last leads to confirmations (and so to deletions).
    """

    def __init__(self, ctx: Pass, *, first_page: ListingPage | None = None) -> None:
        place = ctx.store.listing_place(SyncListing(), at=ctx.now())
        resumed = place.next_page > 1
        super().__init__(ctx, first_page=None if resumed else first_page, start_page=place.next_page,
                         since=place.started_at if resumed else None)
        self.place = place

    def checkpoint(self) -> tuple[int, int | None] | None:
        """(the listing's row, the page to resume at), written with each batch."""
        return self.place.id, self.page or None

    def outcomes(self) -> Generator[Outcome, None, None]:
        """The listing's outcomes; the place is done once the listing went through."""
        yield from super().outcomes()
        if not self.out_of_time and not self.incomplete:
            self.ctx.store.finish_backfill(self.place.id, at=self.ctx.now())


class Cheapest:
    """``auto``: the listing when it needs fewer requests than one GET per due id, else the ids.

    The listing costs one request per ``page_size`` connections of the whole
    application. The database gives a lower bound of that size; only when the
    listing could still win is page 1 fetched to read ``totalCount`` (and then
    reused as the listing's first page if the listing wins). The tokens actually
    available do not change the choice: when the budget cannot finish either, the
    listing still refreshes a hundred connections a request and resumes where it
    stopped. They decide whether to probe at all: no page 1 when no request fits
    this pass (the budget now, plus its refill until ``--max-duration``).
    """

    def __init__(self, ctx: Pass, due: Sequence[str]) -> None:
        self.ctx = ctx
        self.due = due
        self.chosen: ByIds | ResumableListing | None = None
        self._incomplete: str | None = None

    @property
    def planned(self) -> int | None:
        """The due ids until the listing is chosen; then as many as it shows."""
        return len(self.due) if self.chosen is None else self.chosen.planned

    @property
    def incomplete(self) -> str | None:
        """Why the chosen source could not see everything, if it could not."""
        return self._incomplete if self.chosen is None else self.chosen.incomplete

    @property
    def out_of_time(self) -> bool:
        """Whether the chosen source stopped at --max-duration."""
        return self.chosen is not None and self.chosen.out_of_time

    def outcomes(self) -> Generator[Outcome, None, None]:
        """Choose, then the chosen source's outcomes."""
        try:
            self.chosen = self._choose()
        except Deferred:  # no time left for the probe: everything stays due for the next pass
            self.chosen = ByIds(self.ctx, self.due)
            return
        except Cancelled:
            self._incomplete = "stopped on request"
            return
        yield from self.chosen.outcomes()

    def _choose(self) -> ByIds | ResumableListing:
        page_size = self.ctx.config.sync.page_size
        known = self.ctx.store.known_connections()
        if len(self.due) <= max(1, -(-known // page_size)) or self.ctx.affordable_requests() < 1:
            return ByIds(self.ctx, self.due)  # no probe: the ids win anyway, or no request fits this pass
        first = self.ctx.client.list_page(1, page_size)
        size = first.total_count if first.total_count is not None else known
        pages = max(1, -(-size // page_size))
        log.info("auto strategy: %d due id(s) vs %d listing page(s) for %d connection(s)", len(self.due), pages, size)
        return ResumableListing(self.ctx, first_page=first) if pages < len(self.due) else ByIds(self.ctx, self.due)

    def checkpoint(self) -> tuple[int, int | None] | None:
        """The chosen listing's place, if the listing was chosen."""
        return self.chosen.checkpoint() if isinstance(self.chosen, ResumableListing) else None
