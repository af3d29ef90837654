"""What a mailbox's page transaction does for cases (the engine calls these two steps).

1. `keep`, before the upsert: a cases-only mailbox stores only messages exchanged with a
   contact of its owner's cases (from the contacts committed when the page starts); a full
   mirror keeps everything. The stream's cursor advances either way.
2. `link`, after the page's fence: messages the page wrote are linked to every case contact
   they involve, in the same transaction, with their case.message_linked events. The fence
   holds the mailbox row, so the contacts read here are those committed before the page
   commits, and a contact added or removed meanwhile waits for the page (or the page for
   it): a message that arrives while a case is being linked is never missed. Whether the
   mailbox is in a case at all is read by the fence's own statement (one probe of a small
   index): a page of a mailbox in no case runs no statement more.

A cases-only page can store a message for a contact removed before the page linked it;
the link step deletes such messages again (and says how many, for the mailbox's count).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, date, datetime

from sqlalchemy.ext.asyncio import AsyncSession

from app.db.repositories.case_links import CaseLinkRepository
from app.db.repositories.outbox import OutboxRepository
from app.events.changes import MESSAGES_CHANGED
from app.providers.base import MessageBatch
from app.sync.cases.events import announce_links
from app.sync.cases.states import MailboxScope


def _midnight(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def involving(batch: MessageBatch, contacts: dict[str, date | None]) -> list[int]:
    """Positions of the messages that involve a contact (received on or after its `since`)."""
    if not contacts:
        return []
    since = {email: _midnight(day) if day else None for email, day in contacts.items()}
    keep: list[int] = []
    for i in range(len(batch)):
        received = batch.received_at[i]
        for address in (batch.from_[i], *batch.to[i], *batch.cc[i], *batch.bcc[i]):
            if address is None:
                continue
            key = address.lower()
            if key in since:
                floor = since[key]
                if floor is None or (received is not None and received >= floor):
                    keep.append(i)
                    break
    return keep


def take(batch: MessageBatch, positions: Sequence[int]) -> MessageBatch:
    if len(positions) == len(batch):
        return batch
    return MessageBatch.of(batch[i] for i in positions)


class CaseMail:
    def __init__(self, scope: str, *, events: bool = True) -> None:
        self.cases_only = scope == MailboxScope.CASES
        self.events = events

    async def keep(
        self, session: AsyncSession, mailbox_id: uuid.UUID, batch: MessageBatch
    ) -> MessageBatch:
        if not self.cases_only or not batch:
            return batch
        contacts = await CaseLinkRepository(session).contacts_of_mailbox(mailbox_id)
        return take(batch, involving(batch, contacts))

    async def link(
        self,
        session: AsyncSession,
        mailbox_id: uuid.UUID,
        written: Sequence[str],
        *,
        in_cases: bool | None = None,
    ) -> list[str]:
        """Link what the page wrote; returns the cases-only messages that went again.
        `in_cases`: whether the mailbox belongs to a case, when the caller's fence read it
        under the mailbox row's lock (None: ask)."""
        if not written:
            return []
        links = CaseLinkRepository(session)
        if in_cases is None:
            in_cases = await links.in_any_case(mailbox_id)
        if in_cases:
            linked = await links.link_messages(mailbox_id, written)
            await announce_links(session, mailbox_id, linked)
        if not self.cases_only:
            return []
        gone = await links.delete_unlinked(mailbox_id, written)
        if gone and self.events:
            # The page's own row announced them as received: they leave again after it.
            await OutboxRepository(session).add(
                mailbox_id, MESSAGES_CHANGED, {"stream": None, "deleted": gone}
            )
        return gone
