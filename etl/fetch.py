"""Where a pass's outcomes come from: tracked ids one by one, the full listing, or whichever is cheaper.

Each source is an object that owns its state (how many it plans, why it is
incomplete, the listing page it is on) and yields ``Fetched`` / ``Gone`` /
``Failed`` outcomes that the run loop in ``etl.runloop`` stores in batches while
fetching goes on (and ``Postponed`` for a connection whose retry would have
ended past the pass's deadline: it stays due).
"""

from __future__ import annotations

import datetime as dt
import logging
import queue
from collections import OrderedDict
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Protocol

from etl.api.client import SmartcarClient
from etl.api.deadline import Cancelled, Deferred
from etl.api.listing import ListingPage, Paginator, pages_for
from etl.clock import utcnow
from etl.context import Pass
from etl.errors import ApiError, FatalApiError
from etl.outcomes import Failed, Fetched, Gone, Postponed, Result

log = logging.getLogger(__name__)


class OutcomeSource(Protocol):
    """A stream of outcomes, with how many it plans (None: as many as come) and why it is incomplete."""

    @property
    def planned(self) -> int | None: ...

    @property
    def incomplete(self) -> str | None: ...

    @property
    def out_of_time(self) -> bool: ...

    def outcomes(self) -> Generator[Result, None, None]: ...


def _one(client: SmartcarClient, now: Callable[[], dt.datetime], connection_id: str) -> Result:
    """Fetch one connection: its outcome. A fatal error stops every other request (and is raised);
    Cancelled means the pass stopped or ran out of time before this request could start."""
    try:
        record = client.get_connection(connection_id)
    except FatalApiError:
        client.cancelled.set()
        raise
    except Deferred as deferred:
        if isinstance(deferred.after, ApiError):  # its retry would end past the deadline: it stays due
            return Postponed(connection_id, now(), deferred.after)
        raise
    except ApiError as error:
        return Failed(connection_id, now(), error)
    at = now()
    return Gone(connection_id, at) if record is None else Fetched(connection_id, at, record)


def fetch_outcomes(
    ids: Iterable[str],
    *,
    client: SmartcarClient,
    concurrency: int,
    window: int | None = None,
    now: Callable[[], dt.datetime] = utcnow,
) -> Generator[Result, None, None]:
    """Fetch every id with up to ``concurrency`` requests in flight; yield outcomes as they complete.

    One request in flight (``api.concurrency: 1``, what a fast local API wants) is a plain loop in the
    caller's thread. More is a bounded window over a thread pool of ``concurrency`` threads: up to
    ``window`` requests (default: ``concurrency``) are given to the pool, which sends ``concurrency`` at
    a time, and the next is given as each answer is taken; so fetching goes on while the caller stores
    a batch, and at most ``window`` answers wait unread. No request starts once the pass is stopped or
    out of time; a FatalApiError is raised as soon as it is seen, and no other request is sent.
    """
    if concurrency <= 1:
        for connection_id in ids:
            if not client.may_send():
                return
            try:
                yield _one(client, now, connection_id)
            except Cancelled:
                return
        return
    pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="fetch")
    try:
        yield from _window(iter(ids), client, pool, max(window or concurrency, concurrency), now)
    finally:  # left early (stopped): what was given and not started is dropped, requests in flight end alone
        pool.shutdown(wait=not client.cancelled.is_set(), cancel_futures=True)


def _window(ids: Iterator[str], client: SmartcarClient, pool: ThreadPoolExecutor, window: int,
            now: Callable[[], dt.datetime]) -> Generator[Result, None, None]:
    """``fetch_outcomes`` with up to ``window`` requests given to ``pool``; answers are taken as they come."""
    answered: queue.SimpleQueue[Future[Result]] = queue.SimpleQueue()
    given = 0  # given to the pool and not taken back yet
    try:
        while True:
            while given < window and client.may_send():
                connection_id = next(ids, None)
                if connection_id is None:
                    break
                pool.submit(_one, client, now, connection_id).add_done_callback(answered.put)
                given += 1
            if not given:
                return
            future = answered.get()
            given -= 1
            try:
                outcome = future.result()
            except Cancelled:
                continue
            yield outcome
    finally:
        if given:  # left early (an error, or the caller stopped): what was given sends nothing more
            client.cancelled.set()


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

    def outcomes(self) -> Generator[Result, None, None]:
        """Every id's outcome, as requests complete."""
        settings = self.ctx.config
        for outcome in fetch_outcomes(self.ids, client=self.ctx.client, concurrency=settings.api.concurrency,
                                      window=settings.sync.batch_size + settings.api.concurrency, now=self.ctx.now):
            if not isinstance(outcome, Postponed):
                self.done += 1
            yield outcome


class Listing:
    """Every connection of the listing, then a direct GET of each tracked one it did not show.

    Connections the user untracked are skipped, and so are new ones unless
    ``track_new`` (``backfill --all``, or ``sync.track_listed``). A connection that paging shows again on a nearby page
    (the last ``batch_size`` + 10 pages of ids are remembered) counts once. Only
    a complete listing leads to confirmations: if a page fails (after retries)
    or the paging goes wrong, ``incomplete`` says why and nothing is confirmed,
    so nothing is marked deleted. A missing connection is only marked deleted if
    its own GET answers 404 (page-number paging can skip rows when the set
    changes under it). Missing means tracked and not attempted since the
    listing started (``since``; a resumed listing passes when it first
    started): the database says what was stored, the remembered ids cover what
    is not stored yet, and memory stays flat however long the listing.
    """

    def __init__(
        self,
        ctx: Pass,
        *,
        first_page: ListingPage | None = None,
        start_page: int = 1,
        since: dt.datetime | None = None,
        track_new: bool | None = None,
    ) -> None:
        """``track_new``: store and track connections seen for the first time (default: ``sync.track_listed``)."""
        self.ctx = ctx
        self.track_new = ctx.config.sync.track_listed if track_new is None else track_new
        self.first_page = first_page
        self.start_page = start_page
        self.since = since
        self.planned: int | None = None  # as many as the listing shows
        self.incomplete: str | None = None
        self.page = 0  # the page being read
        self.total: int | None = None  # the listing's totalCount, once known
        self.listed = 0  # distinct connections listed so far
        # The ids listed last: enough to see a connection that paging shows again on the next pages, and
        # to cover those not stored yet when the listing ends. Memory does not grow with the listing.
        self.recent = RecentIds(ctx.config.sync.batch_size + 10 * ctx.config.sync.page_size)
        self.out_of_time = False  # stopped at a page boundary by --max-duration; the next pass resumes

    def outcomes(self) -> Generator[Result, None, None]:
        """The listing's outcomes, then the confirmations of what it missed."""
        ctx = self.ctx
        page_size = ctx.config.sync.page_size
        log.info("the full listing, %d a page", page_size, extra={"strategy": "list"})
        self.since = self.since or ctx.now()  # what is attempted from now on was listed
        untracked, track_new = ctx.store.untracked_ids(), self.track_new
        owners: dict[str, str] = {}  # the page's ids the database holds, and their applications
        mine = ctx.store.writing_as

        def wanted(connection_id: str) -> bool:
            if not self.recent.add(connection_id):
                return False
            self.listed += 1
            owner = owners.get(connection_id)
            return connection_id not in untracked and (owner == mine or (track_new and owner is None))

        paginator = Paginator(size=page_size, start=self.start_page)
        page = self.first_page
        ahead = PageAhead(ctx.client, page_size)
        try:
            while True:
                if ctx.cancelled.is_set():
                    self.incomplete = "stopped on request"
                    return
                try:
                    self.page = paginator.number
                    page = page or ahead.take(paginator.number)
                    if self._past_end(paginator, page):  # a resumed listing of an application that shrank
                        paginator, page = Paginator(size=page_size, start=1), None
                        continue
                    if self._goes_round(page):
                        return
                    more, problem = self._advance(paginator, page)
                    if more:  # the next page is read while this one is stored
                        ahead.fetch(paginator.number)
                    owners = ctx.store.owners(page.ids)
                    _warn_foreign(owners, mine)
                    yield from self._items(page, wanted)
                    if problem is not None:
                        raise problem
                    self.total = paginator.total
                except FatalApiError:
                    raise
                except (Cancelled, ApiError) as error:
                    self._stop(error, paginator.number)
                    return
                if not more:
                    break
                page = None
        finally:
            ahead.close()
        yield from self._confirm_missing()

    def _goes_round(self, page: ListingPage) -> bool:
        """Whether a page brings no connection the listing had not shown already (its paging goes round)."""
        if not page.ids or any(i not in self.recent for i in page.ids):
            return False
        self.incomplete = (f"listing stopped at page {page.number}: it brought no connection the listing had not "
                           "shown already (its paging goes round)")
        log.error("%s; nothing will be marked deleted this run", self.incomplete)
        return True

    def _stop(self, error: Cancelled | ApiError, number: int) -> None:
        """The listing stops at page ``number``: out of time (the next pass resumes there), stopped on
        request, or a page that failed (nothing is confirmed deleted from an incomplete listing)."""
        if isinstance(error, Deferred):
            self.out_of_time = True
            if self.total is not None:  # what this pass leaves for the next one
                self.planned = self.listed + max(0, self.total - (number - 1) * self.ctx.config.sync.page_size)
            log.info("out of time at page %d (--max-duration): the next pass resumes there; nothing is "
                     "confirmed until the listing has gone through", number)
        elif isinstance(error, Cancelled):
            self.incomplete = "stopped on request"
        else:
            self.incomplete = f"listing stopped at page {number}: {error}"
            log.error("%s; nothing will be marked deleted this run", self.incomplete)

    def _past_end(self, paginator: Paginator, page: ListingPage) -> bool:
        """Whether a listing resumed at a later page found that page past the end (the application shrank
        since it stopped there); if so it starts again from page 1, as a new listing."""
        if self.start_page == 1 or paginator.number != self.start_page or self.listed:
            return False
        total, size = page.total_count, paginator.size
        if total is None or paginator.number <= pages_for(total, size):
            return False  # without a totalCount, an empty page is the end, as in any listing
        log.info("page %d is past the end of the listing (totalCount %d): the application shrank since the "
                 "listing stopped there; starting again from page 1", paginator.number, total)
        self.start_page, self.since = 1, self.ctx.now()
        return True

    @staticmethod
    def _advance(paginator: Paginator, page: ListingPage) -> tuple[bool, ApiError | None]:
        """Move past ``page``: (whether there is a next one, what is wrong with the paging if anything).

        The problem is raised only once the page's own items are stored, as they are good.
        """
        try:
            return paginator.advance(page), None
        except ApiError as error:
            return False, error

    def _items(self, page: ListingPage, wanted: Callable[[str], bool]) -> Generator[Result, None, None]:
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

    def _confirm_missing(self) -> Generator[Result, None, None]:
        if self.incomplete:
            log.warning("%s; nothing will be marked deleted this run", self.incomplete)
            return
        missing = self.ctx.store.missing_from(self.recent, since=self.since)
        if missing:
            log.info("%d tracked connection(s) missing from the listing; confirming each with a GET", len(missing))
            confirm = ByIds(self.ctx, missing)
            yield from confirm.outcomes()
            if confirm.out_of_time:  # the next pass reads the last page again, then confirms the rest
                self.out_of_time = True


def _warn_foreign(owners: dict[str, str], mine: str) -> None:
    """Listed connections that are tracked under another application are left alone, and said so once a page."""
    foreign = {i: app for i, app in owners.items() if app != mine}
    if foreign:
        example, app = next(iter(foreign.items()))
        log.warning("%d listed connection(s) of %s are tracked under another application (%s under %s) and are "
                    "left alone; if they are %s's: `smartcar-etl connections move ID... --application %s`",
                    len(foreign), mine, example, app, mine, mine)


class RecentIds:
    """The last ``limit`` ids added, as a set that forgets the oldest."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._ids: OrderedDict[str, None] = OrderedDict()

    def add(self, connection_id: str) -> bool:
        """Remember the id; False if it is remembered already."""
        if connection_id in self._ids:
            return False
        self._ids[connection_id] = None
        if len(self._ids) > self.limit:
            self._ids.popitem(last=False)
        return True

    def __contains__(self, connection_id: object) -> bool:
        return connection_id in self._ids

    def __iter__(self) -> Iterator[str]:
        return iter(self._ids)

    def __len__(self) -> int:
        return len(self._ids)


class PageAhead:
    """The listing's next page, read on a thread of its own while the page before is stored.

    Reading and validating a page then overlaps the database's work on the one before (on PostgreSQL,
    the listing's first pass ran at 0.36 of its speed without it). What the request raises (Deferred,
    Cancelled, an ApiError) is raised by ``take``, where a request made there would have raised it.
    """

    def __init__(self, client: SmartcarClient, size: int) -> None:
        self.client = client
        self.size = size
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="listing")
        self._pending: tuple[int, Future[ListingPage]] | None = None

    def fetch(self, number: int) -> None:
        """Start reading page ``number``."""
        self._pending = number, self._pool.submit(self.client.list_page, number, self.size)

    def take(self, number: int) -> ListingPage:
        """Page ``number``: the one read ahead, or read now."""
        pending, self._pending = self._pending, None
        if pending is not None and pending[0] == number:
            return pending[1].result()
        return self.client.list_page(number, self.size)

    def close(self) -> None:
        """Drop a page nobody will take; a request already sent finishes on its own."""
        self._pending = None
        self._pool.shutdown(wait=False, cancel_futures=True)


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

    def outcomes(self) -> Generator[Result, None, None]:
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

    def outcomes(self) -> Generator[Result, None, None]:
        """Choose, then the chosen source's outcomes."""
        try:
            self.chosen = self._choose()
        except Deferred:  # no time left for the probe: everything stays due for the next pass
            self.chosen = ByIds(self.ctx, self.due)
            return
        except Cancelled:
            self._incomplete = "stopped on request"
            return
        except FatalApiError:
            raise
        except ApiError as error:  # the listing is broken, not the application: fetch the due ids instead
            log.warning("auto strategy: the listing's first page failed (%s); fetching the %d due connection(s) "
                        "one by one instead", error, len(self.due))
            self.chosen = ByIds(self.ctx, self.due)
        yield from self.chosen.outcomes()

    def _choose(self) -> ByIds | ResumableListing:
        page_size = self.ctx.config.sync.page_size
        known = self.ctx.store.known_connections()
        if len(self.due) <= pages_for(known, page_size) or self.ctx.affordable_requests() < 1:
            return ByIds(self.ctx, self.due)  # no probe: the ids win anyway, or no request fits this pass
        first = self.ctx.client.list_page(1, page_size)
        size = first.total_count if first.total_count is not None else known
        pages = pages_for(size, page_size)
        log.info("auto strategy: %d due id(s) vs %d listing page(s) for %d connection(s)", len(self.due), pages, size)
        return ResumableListing(self.ctx, first_page=first) if pages < len(self.due) else ByIds(self.ctx, self.due)

    def checkpoint(self) -> tuple[int, int | None] | None:
        """The chosen listing's place, if the listing was chosen."""
        return self.chosen.checkpoint() if isinstance(self.chosen, ResumableListing) else None
