"""What an operator can do to a mailbox from its page. One table: adding an action (resync,
pause, resume, as the service grows them) is one entry here and nothing in the templates.

Each action runs in the request's unit of work, through the same service functions the
API uses; jobs leave after the commit.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial

from app.api.deps import UnitOfWork
from app.dashboard.views import MailboxView
from app.db.repositories.mailboxes import MailboxRepository
from app.sync import mailboxes as service
from app.sync.queue import enqueue_sync
from app.sync.states import MailboxStatus


async def sync_now(uow: UnitOfWork, mailbox_id: uuid.UUID) -> None:
    """A pass now: the request is recorded (a running sync owes another pass) and a job with
    an id of its own is queued, so a pending job cannot swallow it."""
    await MailboxRepository(uow.session).request_sync([mailbox_id])
    uow.after_commit(
        partial(enqueue_sync, uow.rt.redis, mailbox_id, suffix=f"now{uuid.uuid4().hex[:8]}")
    )


async def disconnect(uow: UnitOfWork, mailbox_id: uuid.UUID) -> None:
    await service.disconnect(uow, [mailbox_id], purge=False)


@dataclass(frozen=True, slots=True)
class Action:
    name: str
    label: str
    done: str
    run: Callable[[UnitOfWork, uuid.UUID], Awaitable[None]]
    applies: Callable[[MailboxView], bool]
    # Asked in the browser before the form is sent.
    confirm: str | None = None
    danger: bool = False


ACTIONS: dict[str, Action] = {
    a.name: a
    for a in (
        Action(
            name="sync",
            label="Sync now",
            done="Sync requested: a worker picks it up within a second.",
            run=sync_now,
            applies=lambda m: not m.parked,
        ),
        Action(
            name="disconnect",
            label="Disconnect",
            done="Disconnected: syncing stopped; subscriptions and credentials are being removed.",
            run=disconnect,
            applies=lambda m: m.row.status != MailboxStatus.DISCONNECTED,
            confirm=(
                "Disconnect this mailbox? Syncing stops at once and its credentials are "
                "deleted; only the user can connect it again. Stored messages are kept."
            ),
            danger=True,
        ),
    )
}


def available(mailbox: MailboxView) -> list[Action]:
    return [a for a in ACTIONS.values() if a.applies(mailbox)]
