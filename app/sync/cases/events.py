"""Case events, written to the outbox in the transaction that links or completes.

- `case.message_linked`: one outbox row per case and transaction, listing the messages of
  one mailbox it newly linked, each with the contacts that link it; the publisher sends one
  event per message (app/events/expand.py). Written by the transaction that creates the
  links (a mailbox's page, a search page, a query over a full mirror), so a link never
  exists without its event and a replay that links nothing writes none.
- `case.sync_complete`: every entry of the case is complete (all the mail of every contact
  in every mailbox is stored and linked); written once per completion, again only after
  the case gains work (a contact, a mailbox, an earlier `since`) and completes again.

Events carry `user_id`, `mailbox_id` (the outbox row's) and `case_id` (the caller's own
identifier); the contract is app/events/contract.py, documented in docs/events.md.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from sqlalchemy.ext.asyncio import AsyncSession

from app.db.repositories.case_links import CaseLinkRepository, Linked
from app.db.repositories.cases import CaseRow
from app.db.repositories.outbox import OutboxRepository
from app.sync.cases.states import CaseEvent


async def announce_links(session: AsyncSession, mailbox_id: uuid.UUID, linked: Linked) -> None:
    if not linked:
        return
    by_case = linked.by_case()
    cases = await CaseLinkRepository(session).case_ids(list(by_case))
    outbox = OutboxRepository(session)
    for case_key, messages in by_case.items():
        if case_key not in cases:
            continue
        user_id, case_id = cases[case_key]
        await outbox.add(
            mailbox_id,
            CaseEvent.MESSAGE_LINKED.value,
            {
                "user_id": user_id,
                "case_id": case_id,
                "messages": [
                    {"provider_message_id": message_id, "contacts": sorted(contacts)}
                    for message_id, contacts in messages.items()
                ],
            },
        )


async def announce_complete(
    session: AsyncSession,
    case: CaseRow,
    mailbox_id: uuid.UUID,
    mailbox_ids: Sequence[uuid.UUID],
    contacts: Sequence[str],
) -> None:
    await OutboxRepository(session).add(
        mailbox_id,
        CaseEvent.SYNC_COMPLETE.value,
        {
            "user_id": case.user_id,
            "case_id": case.case_id,
            "mailbox_ids": [str(m) for m in mailbox_ids],
            "contacts": list(contacts),
        },
    )
