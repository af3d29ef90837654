"""What creating, changing and reading a case mean; the routes only translate HTTP to these.

The request's transaction owns the commit; entries' jobs are enqueued after it commits.
Removing a contact (or a mailbox, or moving `since` later) unlinks its messages unless
another contact of the case still links them, and in a cases-only mailbox deletes the
messages no case links any more.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import date
from functools import partial
from typing import Any, Protocol

from sqlalchemy.ext.asyncio import AsyncSession

from app.db.repositories.cases import (
    CaseEntryRepository,
    CaseRepository,
    CaseRow,
    EntryView,
)
from app.db.repositories.mailboxes import MailboxRepository
from app.db.repositories.outbox import OutboxRepository
from app.db.repositories.reading import Key
from app.events.changes import MESSAGES_CHANGED
from app.sync.cases import states
from app.sync.cases.events import announce_complete
from app.sync.cases.jobs import enqueue_cases
from app.sync.cases.states import EntryStatus
from app.sync.runtime import Runtime

MAX_CONTACTS = 1000
MAX_MAILBOXES = 100


class Transaction(Protocol):
    """The caller's unit of work (app.api.deps.UnitOfWork): a session and after-commit jobs."""

    session: AsyncSession
    rt: Runtime

    def after_commit(self, action: Callable[[], Awaitable[object]]) -> None: ...


class CaseNotFound(Exception):
    pass


class ContactNotFound(Exception):
    pass


class UnknownMailboxes(Exception):
    def __init__(self, mailbox_ids: Sequence[uuid.UUID]) -> None:
        super().__init__(", ".join(str(m) for m in mailbox_ids))
        self.mailbox_ids = list(mailbox_ids)


class TooManyContacts(Exception):
    pass


@dataclass(frozen=True, slots=True)
class CaseSpec:
    case_id: str
    title: str | None
    mailbox_ids: list[uuid.UUID]
    # Lower-cased, without duplicates, in the caller's order.
    contacts: list[str]
    since: date | None


@dataclass(frozen=True, slots=True)
class CaseView:
    case: CaseRow
    status: EntryStatus
    contacts: list[str]
    mailbox_ids: list[uuid.UUID]
    entries: list[EntryView]

    def entries_of(self, mailbox_id: uuid.UUID) -> list[EntryView]:
        return [e for e in self.entries if e.mailbox_id == mailbox_id]


def normalized_contacts(emails: Sequence[str]) -> list[str]:
    return list(dict.fromkeys(e.strip().lower() for e in emails))


async def put_case(uow: Transaction, user_id: str, spec: CaseSpec) -> tuple[CaseView, bool]:
    """Create or update the caller's case; (the case as it now is, created)."""
    session = uow.session
    owned = {m.id for m in await MailboxRepository(session).list_for_user(user_id)}
    unknown = [m for m in spec.mailbox_ids if m not in owned]
    if unknown:
        raise UnknownMailboxes(unknown)
    cases = CaseRepository(session)
    case, created, old_since = await cases.upsert(
        user_id, spec.case_id, title=spec.title, since=spec.since
    )
    contacts = set(await cases.contacts(case.key))
    mailbox_ids = set(await cases.mailbox_ids(case.key))
    wanted_mailboxes = set(spec.mailbox_ids)
    gone_contacts = sorted(contacts - set(spec.contacts))
    gone_mailboxes = sorted(mailbox_ids - wanted_mailboxes)
    later = not created and spec.since is not None and (old_since is None or spec.since > old_since)
    earlier = not created and spec.since != old_since and not later
    if gone_contacts or gone_mailboxes or later:
        await cases.lock_mailboxes(sorted(mailbox_ids))
    removed = await cases.remove_mailboxes(case.key, gone_mailboxes)
    removed += await cases.remove_contacts(case.key, gone_contacts)
    if later:
        assert spec.since is not None
        removed += await cases.unlink_before(case.key, spec.since)
    await _delete_orphans(uow, removed)
    # An earlier (or no longer any) `since`: older mail is wanted now, every entry searches
    # again (what it stored already is kept; links are never duplicated).
    restarted = await cases.restart_entries(case.key) if earlier else []
    await cases.add_mailboxes(case.key, sorted(wanted_mailboxes - mailbox_ids))
    await cases.add_contacts(case.key, [c for c in spec.contacts if c not in contacts])
    created_entries = await cases.create_entries(case.key)
    await _after_change(uow, case, [*created_entries, *restarted])
    return await view_case(session, case), created


async def add_contact(uow: Transaction, user_id: str, case_id: str, email: str) -> CaseView:
    session = uow.session
    cases = CaseRepository(session)
    case = await cases.get(user_id, case_id, for_update=True)
    if case is None:
        raise CaseNotFound(case_id)
    contacts = await cases.contacts(case.key)
    email = email.strip().lower()
    if email not in contacts:
        if len(contacts) >= MAX_CONTACTS:
            raise TooManyContacts(f"a case has at most {MAX_CONTACTS} contacts")
        await cases.add_contacts(case.key, [email])
        await _after_change(uow, case, await cases.create_entries(case.key))
    return await view_case(session, case)


async def remove_contact(uow: Transaction, user_id: str, case_id: str, email: str) -> CaseView:
    session = uow.session
    cases = CaseRepository(session)
    case = await cases.get(user_id, case_id, for_update=True)
    if case is None:
        raise CaseNotFound(case_id)
    email = email.strip().lower()
    if email not in await cases.contacts(case.key):
        raise ContactNotFound(email)
    await cases.lock_mailboxes(await cases.mailbox_ids(case.key))
    removed = await cases.remove_contacts(case.key, [email])
    await _delete_orphans(uow, removed)
    await _after_change(uow, case, [])
    return await view_case(session, case)


async def delete_case(uow: Transaction, user_id: str, case_id: str) -> None:
    session = uow.session
    cases = CaseRepository(session)
    case = await cases.get(user_id, case_id, for_update=True)
    if case is None:
        raise CaseNotFound(case_id)
    mailbox_ids = await cases.mailbox_ids(case.key)
    await cases.lock_mailboxes(mailbox_ids)
    removed = await cases.remove_mailboxes(case.key, mailbox_ids)
    await cases.delete(case.key)
    await _delete_orphans(uow, removed)


async def _delete_orphans(uow: Transaction, removed: list[tuple[uuid.UUID, str]]) -> None:
    """Cases-only mailboxes lose the messages no case links any more; consumers of the
    events hear `email.deleted` for each, as for any message that leaves a mailbox."""
    gone = await CaseRepository(uow.session).delete_orphans(removed)
    if uow.rt.settings.events_enabled:
        outbox = OutboxRepository(uow.session)
        for mailbox_id, ids in gone.items():
            await outbox.add(mailbox_id, MESSAGES_CHANGED, {"stream": None, "deleted": ids})


async def _after_change(uow: Transaction, case: CaseRow, entry_ids: list[int]) -> None:
    """New or restarted entries: the case's next completion is announced again, and their
    jobs start after commit. Without any, the change may have completed the case."""
    session = uow.session
    if entry_ids:
        await CaseRepository(session).reset_completion(case.key)
        uow.after_commit(partial(enqueue_cases, uow.rt.redis, entry_ids))
        return
    finished = await CaseEntryRepository(session).complete_case_if_done(case.key)
    if finished is not None:
        cases = CaseRepository(session)
        mailbox_ids = await cases.mailbox_ids(case.key)
        await announce_complete(
            session, finished, mailbox_ids[0], mailbox_ids, await cases.contacts(case.key)
        )


async def resume_mailbox_cases(uow: Transaction, mailbox_id: uuid.UUID) -> None:
    """A mailbox was (re)connected: its parked entries resume from their checkpoints."""
    resumed = await CaseEntryRepository(uow.session).resume_mailbox(mailbox_id)
    if resumed:
        uow.after_commit(partial(enqueue_cases, uow.rt.redis, resumed))


async def get_case(session: AsyncSession, user_id: str, case_id: str) -> CaseView:
    case = await CaseRepository(session).get(user_id, case_id)
    if case is None:
        raise CaseNotFound(case_id)
    return await view_case(session, case)


async def view_case(session: AsyncSession, case: CaseRow) -> CaseView:
    cases = CaseRepository(session)
    entries = await cases.entries(case.key)
    return CaseView(
        case=case,
        status=states.case_status(e.status for e in entries),
        contacts=await cases.contacts(case.key),
        mailbox_ids=await cases.mailbox_ids(case.key),
        entries=entries,
    )


async def case_messages(
    session: AsyncSession, user_id: str, case_id: str, limit: int, after: Key | None
) -> list[dict[str, Any]]:
    cases = CaseRepository(session)
    case = await cases.get(user_id, case_id)
    if case is None:
        raise CaseNotFound(case_id)
    return await cases.list_messages(case.key, limit, after)
