"""One bounded slice of work for one case entry (a contact in a mailbox), under a lease.

    take the entry's lease -> a full mirror: link by one query over the stored messages
                           -> a cases-only mailbox: search pages, window by window
    -> every page in ONE transaction: new messages, links, events, the plan, the lease check
    -> until the plan is done or the slice budget is spent -> release with a status

Like a mailbox's sync, a slice is short (SYNC_SLICE_SECONDS / SYNC_SLICE_PAGES) and ends by
saying what follows (the job enqueues the continuation); tokens are read at use time
(`TokenSource`; app-only mailboxes mint client-credentials tokens), so a job that waited in
the queue for hours, or a search that outlives a token, never sends a stale one. A lease
heartbeat keeps a slow page from losing the entry; every write is fenced by the lease.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

from app.db.models import Mailbox
from app.db.repositories.case_links import CaseLinkRepository
from app.db.repositories.cases import (
    CaseEntryRepository,
    CaseRepository,
    CaseRow,
    EntryLease,
    EntryLeaseLost,
    EntryRow,
)
from app.db.repositories.cursors import CursorRepository
from app.db.repositories.mailboxes import MailboxRepository
from app.db.repositories.messages import MessageRepository
from app.db.repositories.outbox import OutboxRepository
from app.events.changes import MESSAGES_CHANGED, PageChanges
from app.providers.base import (
    AuthExpiredError,
    CursorInvalidError,
    ParticipantSearch,
    PermanentError,
    SearchPage,
    TransientError,
)
from app.sync.binding import bind
from app.sync.cases import states
from app.sync.cases.events import announce_complete, announce_links
from app.sync.cases.mail import involving, take
from app.sync.cases.plan import SearchPlan
from app.sync.cases.states import EntryStatus, MailboxScope
from app.sync.engine import backoff_seconds
from app.sync.heartbeat import renew_while_running
from app.sync.runtime import Runtime
from app.sync.states import MailboxStatus
from app.sync.tokens import with_token_retry

log = logging.getLogger(__name__)


# A full mirror's entry waits for the mailbox's first completed pass; the pass's job wakes
# it, and the scheduler checks again this often should that wake-up be lost.
WAITING_RECHECK_SECONDS = 60
# A cases-only mailbox's search starts once each of its streams follows a cursor.
STREAMS_RECHECK_SECONDS = 2


class Outcome(enum.StrEnum):
    BUSY = "busy"  # another live worker holds the entry, or it is not runnable
    CONTINUE = "continue"  # budget spent, more to search now
    COMPLETE = "complete"
    WAITING = "waiting"  # nothing to do until the mailbox gets further; `delay` says when
    AWAITING_BACKFILL = "awaiting_backfill"  # a full mirror's first pass wakes it
    RETRY_LATER = "retry_later"
    AUTH_EXPIRED = "auth_expired"
    ERROR = "error"
    LEASE_LOST = "lease_lost"


@dataclass(slots=True)
class EntrySliceResult:
    outcome: Outcome
    delay: float = 0.0
    pages: int = 0
    fencing_token: int | None = None
    message: str | None = None


@dataclass(slots=True)
class _Budget:
    deadline: float
    pages_left: int

    def spent(self) -> bool:
        return self.pages_left <= 0 or time.monotonic() >= self.deadline


@dataclass(slots=True)
class _Slice:
    lease: EntryLease
    entry: EntryRow
    case: CaseRow
    mailbox: Mailbox
    pages: int = 0


def _reconnect(reason: str) -> str:
    reason = reason.rstrip(". ")
    return reason if states.RECONNECT_ADVICE in reason else f"{reason}; {states.RECONNECT_ADVICE}"


class CaseSearchRunner:
    def __init__(self, rt: Runtime, owner: str, *, max_pages: int | None = None) -> None:
        self.rt = rt
        self.owner = owner
        self.settings = rt.settings
        self.max_pages = max_pages or self.settings.sync_slice_pages

    async def run_slice(self, entry_id: int) -> EntrySliceResult:
        seconds = self.settings.lease_seconds
        async with self.rt.sessions() as session, session.begin():
            lease = await CaseEntryRepository(session).acquire(entry_id, self.owner, seconds)
        if lease is None:
            return EntrySliceResult(Outcome.BUSY)
        async with self.rt.sessions() as session:
            entry = await CaseEntryRepository(session).get(entry_id)
            case = await CaseRepository(session).by_key(entry.case_key) if entry else None
            mailbox = await MailboxRepository(session).get(entry.mailbox_id) if entry else None
        if entry is None or case is None or mailbox is None:
            return EntrySliceResult(Outcome.LEASE_LOST)  # removed meanwhile
        work = _Slice(lease, entry, case, mailbox)
        lost = asyncio.Event()
        heartbeat = asyncio.create_task(
            renew_while_running(
                self.rt,
                lambda session: CaseEntryRepository(session).heartbeat(
                    lease, self.settings.lease_seconds
                ),
                what=f"case entry {lease.entry_id}",
                lost=lost,
                task=asyncio.current_task(),
            )
        )
        try:
            result = await self._settle(work)
        except asyncio.CancelledError:
            if not lost.is_set():
                raise
            current = asyncio.current_task()
            if current is not None:
                current.uncancel()
            log.warning("case entry %s: lease lost mid-slice; stopped", entry_id)
            return EntrySliceResult(Outcome.LEASE_LOST, pages=work.pages)
        finally:
            heartbeat.cancel()
            await asyncio.gather(heartbeat, return_exceptions=True)
        result.fencing_token = lease.fencing_token
        if result.outcome is Outcome.COMPLETE:
            await self._announce_if_case_complete(work)
        return result

    async def _settle(self, work: _Slice) -> EntrySliceResult:
        try:
            if work.mailbox.scope == MailboxScope.FULL:
                return await self._link_stored(work)
            return await self._search(work)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            return await self._after_failure(work, exc)

    # -- a full mirror: one query ------------------------------------------------------

    async def _link_stored(self, work: _Slice) -> EntrySliceResult:
        entry, lease = work.entry, work.lease
        async with self.rt.sessions() as session, session.begin():
            links = CaseLinkRepository(session)
            linked = await links.link_by_query(
                entry.case_key, entry.mailbox_id, entry.email, work.case.since
            )
            await announce_links(session, entry.mailbox_id, linked)
            found = await links.count(entry.case_key, entry.mailbox_id, entry.email)
            # Read after the query took the mailbox row: a first pass that completed before
            # it is seen here; one that completes after it wakes this entry again.
            mailbox = await MailboxRepository(session).get(entry.mailbox_id)
            assert mailbox is not None
            entries = CaseEntryRepository(session)
            await entries.fence(
                lease,
                self.settings.lease_seconds,
                status=states.during_run(entry.status),
                found=found,
                requests=0,
            )
            backfilled = mailbox.connected_at is not None
            if backfilled or mailbox.status == MailboxStatus.DISCONNECTED:
                # A disconnected mirror gets no more mail: what it stores is all there is.
                await entries.finish(
                    lease, status=EntryStatus.COMPLETE, next_run_at=None, estimate=found
                )
                return EntrySliceResult(Outcome.COMPLETE, pages=1)
            if mailbox.status == MailboxStatus.AUTH_EXPIRED:
                message = _reconnect(mailbox.last_error or "the mailbox's authorization expired")
                await entries.finish(
                    lease,
                    status=EntryStatus.AUTH_EXPIRED,
                    next_run_at=None,
                    last_error=message,
                    failure=True,
                )
                return EntrySliceResult(Outcome.AUTH_EXPIRED, pages=1, message=message)
            await entries.finish(
                lease,
                status=EntryStatus.SYNCING,
                next_run_at=datetime.now(UTC) + timedelta(seconds=WAITING_RECHECK_SECONDS),
            )
        return EntrySliceResult(Outcome.AWAITING_BACKFILL, pages=1)

    # -- a cases-only mailbox: the provider's search -----------------------------------

    async def _search(self, work: _Slice) -> EntrySliceResult:
        entry, mailbox = work.entry, work.mailbox
        if mailbox.status == MailboxStatus.AUTH_EXPIRED:
            raise AuthExpiredError(mailbox.last_error or "the mailbox's authorization expired")
        if mailbox.status == MailboxStatus.DISCONNECTED:
            raise PermanentError("the mailbox is disconnected; reconnect it to search it")
        provider = self.rt.provider(mailbox.provider)
        if not isinstance(provider, ParticipantSearch):
            raise PermanentError(f"provider {mailbox.provider} cannot search for participants")
        async with self.rt.sessions() as session:
            started = await CaseLinkRepository(session).streams_started(mailbox.id)
            streams = [s.as_stream() for s in await CursorRepository(session).list(mailbox.id)]
        if not started:
            # Until every stream follows a cursor, mail arriving now could be behind both the
            # search (which sees what exists when it runs) and the stream.
            return await self._wait(work, STREAMS_RECHECK_SECONDS)
        _, ctx, tokens = bind(self.rt, mailbox)
        plan = SearchPlan.load(entry.plan, work.case.since)
        budget = _Budget(time.monotonic() + self.settings.sync_slice_seconds, self.max_pages)
        status = states.during_run(entry.status)

        def fetch() -> asyncio.Task[SearchPage]:
            window = plan.current
            call = partial(
                provider.search_participant,
                ctx,
                streams,
                entry.email,
                window.as_search(),
                window.cursor,
            )
            return asyncio.create_task(with_token_retry(tokens, call))

        # What to ask next is known as soon as a page is read (the plan decides it, not the
        # commit), so the next request is on its way while the page commits.
        upcoming: asyncio.Task[SearchPage] | None = None
        try:
            while not plan.done and not budget.spent():
                budget.pages_left -= 1
                current, upcoming = upcoming or fetch(), None
                try:
                    page = await current
                except CursorInvalidError as exc:
                    log.warning("case entry %s: %s; searching the window again", entry.id, exc)
                    plan.current.restart()
                    await self._commit_page(work, SearchPage(), plan, status, requests=1)
                    continue
                plan.record(page, provider.search_cap)
                if not plan.done and not budget.spent() and budget.pages_left > 0:
                    upcoming = fetch()
                await self._commit_page(work, page, plan, status, requests=1)
        finally:
            if upcoming is not None:
                upcoming.cancel()
                await asyncio.gather(upcoming, return_exceptions=True)
        if not plan.done:
            async with self.rt.sessions() as session, session.begin():
                await CaseEntryRepository(session).finish(
                    work.lease,
                    status=status,
                    # Should the continuation job be lost, the scheduler resumes soon.
                    next_run_at=datetime.now(UTC) + timedelta(seconds=5),
                )
            return EntrySliceResult(Outcome.CONTINUE, pages=work.pages)
        note = None
        if plan.unsplittable:
            note = (
                f"{plan.unsplittable} one-second window(s) held more than the provider's "
                f"{provider.search_cap} search results; only those were returned"
            )
        async with self.rt.sessions() as session, session.begin():
            found = await CaseLinkRepository(session).count(
                entry.case_key, entry.mailbox_id, entry.email
            )
            await CaseEntryRepository(session).finish(
                work.lease,
                status=EntryStatus.COMPLETE,
                next_run_at=None,
                last_error=note,
                estimate=found,
            )
        return EntrySliceResult(Outcome.COMPLETE, pages=work.pages)

    async def _commit_page(
        self,
        work: _Slice,
        page: SearchPage,
        plan: SearchPlan,
        status: EntryStatus,
        *,
        requests: int,
    ) -> None:
        """The page's messages (new ones only: a row the mailbox's own sync wrote is newer
        than a search result), their links and events, the plan: one transaction."""
        entry = work.entry
        wanted = {entry.email: work.case.since}
        inserted = 0
        # What the page stores reaches the events' consumers like any page's new mail.
        changes = PageChanges(None)
        async with self.rt.sessions() as session, session.begin():
            links = CaseLinkRepository(session)
            generations = await links.stream_generations(entry.mailbox_id)
            # A search matches words; the contact must really be a participant.
            theirs = {
                stream_key: mine
                for stream_key, batch in page.upserts.items()
                if stream_key in generations and (mine := take(batch, involving(batch, wanted)))
            }
            found_ids = [i for mine in theirs.values() for i in mine.provider_message_id]
            stored = await links.existing(entry.mailbox_id, found_ids)
            for stream_key, mine in theirs.items():
                ids = mine.provider_message_id
                new = [i for i, message_id in enumerate(ids) if message_id not in stored]
                if new:
                    written = await MessageRepository(session).upsert_page(
                        entry.mailbox_id, stream_key, generations[stream_key], take(mine, new)
                    )
                    inserted += written.inserted
                    changes.upserted(written)
            payload = changes.payload() if self.settings.events_enabled else None
            if payload is not None:
                await OutboxRepository(session).add(entry.mailbox_id, MESSAGES_CHANGED, payload)
            linked = await links.link_found(
                entry.case_key, entry.mailbox_id, entry.email, found_ids
            )
            await announce_links(session, entry.mailbox_id, linked)
            found = await links.count(entry.case_key, entry.mailbox_id, entry.email)
            await CaseEntryRepository(session).fence(
                work.lease,
                self.settings.lease_seconds,
                status=status,
                plan=plan.dump(),
                found=found,
                requests=requests,
                estimate=max(found, page.estimate) if page.estimate is not None else None,
            )
        work.pages += 1
        if inserted:
            # Its own statement: the mailbox row is the page commits' lock, not ours to hold.
            async with self.rt.sessions() as session, session.begin():
                await CaseLinkRepository(session).count_stored(entry.mailbox_id, inserted)

    async def _wait(self, work: _Slice, seconds: float) -> EntrySliceResult:
        async with self.rt.sessions() as session, session.begin():
            await CaseEntryRepository(session).finish(
                work.lease,
                status=states.during_run(work.entry.status),
                next_run_at=datetime.now(UTC) + timedelta(seconds=seconds),
            )
        return EntrySliceResult(Outcome.WAITING, delay=seconds)

    # -- completion and failure --------------------------------------------------------

    async def _announce_if_case_complete(self, work: _Slice) -> None:
        entry = work.entry
        async with self.rt.sessions() as session, session.begin():
            case = await CaseEntryRepository(session).complete_case_if_done(entry.case_key)
            if case is None:
                return
            cases = CaseRepository(session)
            await announce_complete(
                session,
                case,
                entry.mailbox_id,
                await cases.mailbox_ids(case.key),
                await cases.contacts(case.key),
            )

    async def _after_failure(self, work: _Slice, exc: BaseException) -> EntrySliceResult:
        entry, lease = work.entry, work.lease
        if isinstance(exc, EntryLeaseLost):
            log.warning("case entry %s: %s; stopping without writing", entry.id, exc)
            return EntrySliceResult(Outcome.LEASE_LOST, pages=work.pages)
        if isinstance(exc, AuthExpiredError):
            message = _reconnect(str(exc) or "the mailbox's authorization was refused")
            log.warning("case entry %s: %s", entry.id, message)
            await self._release(
                lease,
                status=EntryStatus.AUTH_EXPIRED,
                next_run_at=None,
                last_error=message,
                failure=True,
            )
            return EntrySliceResult(Outcome.AUTH_EXPIRED, pages=work.pages, message=message)
        if isinstance(exc, PermanentError):
            message = f"{exc.__class__.__name__}: {exc}"[:500]
            log.error("case entry %s: %s", entry.id, message)
            delay = float(self.settings.sync_interval_seconds)
            await self._release(
                lease,
                status=EntryStatus.ERROR,
                next_run_at=datetime.now(UTC) + timedelta(seconds=delay),
                last_error=message,
                failure=True,
            )
            return EntrySliceResult(Outcome.ERROR, delay=delay, pages=work.pages, message=message)
        if not isinstance(exc, Exception):
            raise exc
        if not isinstance(exc, TransientError):
            log.error("case entry %s: unexpected failure", entry.id, exc_info=exc)
        failures = entry.consecutive_failures + 1
        retry_after = exc.retry_after if isinstance(exc, TransientError) else None
        delay = max(retry_after or 0.0, backoff_seconds(failures))
        message = f"{exc.__class__.__name__}: {exc}"[:500]
        await self._release(
            lease,
            status=states.after_transient_failure(
                entry.status, failures, self.settings.max_transient_retries
            ),
            next_run_at=datetime.now(UTC) + timedelta(seconds=delay),
            last_error=message,
            failure=True,
        )
        return EntrySliceResult(Outcome.RETRY_LATER, delay=delay, pages=work.pages, message=message)

    async def _release(self, lease: EntryLease, **kwargs: Any) -> None:
        try:
            async with self.rt.sessions() as session, session.begin():
                await CaseEntryRepository(session).finish(lease, **kwargs)
        except EntryLeaseLost:
            log.info("case entry %s: lease lost before its status was written", lease.entry_id)
