"""Fetching: tracked ids one by one, or the full listing, as a stream of outcomes.

Both are generators of ``Fetched`` / ``Gone`` / ``Failed`` that the run loop in
``etl.sync`` stores in batches while fetching goes on.
"""

from __future__ import annotations

import datetime as dt
import logging
import queue
from collections.abc import Callable, Generator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from sqlalchemy import Engine, or_, select

from etl.api.client import Cancelled, ListingPage, Paginator, SmartcarClient, utcnow
from etl.db.engine import translate_errors
from etl.db.models import connections
from etl.errors import ApiError, FatalApiError
from etl.store import Failed, Fetched, Gone, Outcome

log = logging.getLogger(__name__)


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
        while in_flight < window and not client.cancelled.is_set():
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


@dataclass
class PassState:
    """What a pass decided and saw: its strategy, how many it planned, and why it is incomplete if it is."""

    strategy: str = "ids"
    planned: int | None = None
    seen: set[str] = field(default_factory=set)
    page: int = 0  # the listing page being read
    total: int | None = None  # the listing's totalCount, once known
    incomplete: str | None = None


def listing_outcomes(
    engine: Engine,
    *,
    client: SmartcarClient,
    page_size: int,
    concurrency: int,
    window: int,
    state: PassState,
    first_page: ListingPage | None = None,
    start_page: int = 1,
    track_new: bool = True,
    since: dt.datetime | None = None,
    now: Callable[[], dt.datetime] = utcnow,
) -> Generator[Outcome, None, None]:
    """Every connection of the listing, then a direct GET of each tracked one it did not show.

    Connections the user untracked are skipped, and so are new ones unless
    ``track_new``. A connection seen twice across pages counts once. Only a complete listing
    leads to confirmations: if a page fails (after retries) or the paging goes
    wrong, ``state.incomplete`` says why and nothing is confirmed, so nothing is
    marked deleted. A missing connection is only marked deleted if its own GET
    answers 404 (page-number paging can skip rows when the set changes under it).
    A listing resumed at ``start_page`` passes ``since`` (when it first started):
    connections attempted since then were seen by the earlier part.
    """
    with translate_errors(engine), engine.connect() as conn:
        tracked = dict(conn.execute(select(connections.c.id, connections.c.tracked)).all())

    def wanted(connection_id: str) -> bool:
        if connection_id in state.seen:
            return False
        state.seen.add(connection_id)
        return bool(tracked.get(connection_id, track_new))

    paginator = Paginator(size=page_size, start=start_page)
    page = first_page
    while True:
        if client.cancelled.is_set():
            state.incomplete = "stopped on request"
            return
        try:
            state.page = paginator.number
            if page is None:
                page = client.list_page(paginator.number, page_size)
            at = now()
            for record in page.records:
                if wanted(record.connection_id):
                    yield Fetched(record.connection_id, at, record)
            for connection_id, error in page.malformed:
                if wanted(connection_id):
                    yield Failed(connection_id, at, error)
            if page.unreadable:
                # An item without a readable id might be any tracked connection: confirm none.
                state.incomplete = f"page {page.number}: {len(page.unreadable)} item(s) without a readable id"
            more = paginator.advance(page)
            state.total = paginator.total
        except FatalApiError:
            raise
        except Cancelled:
            state.incomplete = "stopped on request"
            return
        except ApiError as error:
            state.incomplete = f"listing stopped at page {paginator.number}: {error}"
            log.error("%s; nothing will be marked deleted this run", state.incomplete)
            return
        if not more:
            break
        page = None
    if state.incomplete:
        log.warning("%s; nothing will be marked deleted this run", state.incomplete)
        return
    with translate_errors(engine), engine.connect() as conn:
        query = select(connections.c.id).where(
            connections.c.tracked.is_(True), connections.c.status.in_(["pending", "active"]))
        if since is not None:
            query = query.where(or_(connections.c.last_attempt_at.is_(None), connections.c.last_attempt_at < since))
        known = conn.scalars(query)
        missing = sorted(set(known) - state.seen)
    if missing:
        log.info("%d tracked connection(s) missing from the listing; confirming each with a GET", len(missing))
        yield from fetch_outcomes(missing, client=client, concurrency=concurrency, window=window, now=now)
