"""What an operator can do to a mailbox from its page. One table: an action is one entry
here and nothing in the templates.

Each action runs in the request's unit of work through the same service functions as the
user's own `POST /mail/mailboxes/{id}/sync|resync|pause|resume` and `/mail/disconnect`;
jobs leave after the commit.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from app.api.deps import UnitOfWork
from app.dashboard.views import MailboxView
from app.sync import mailboxes as service
from app.sync.states import MailboxStatus

# The service refuses these (a parked or paused mailbox): the route answers 409.
Refused = service.MailboxParked


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


def _syncable(m: MailboxView) -> bool:
    return not m.parked and not m.row.paused


ACTIONS: dict[str, Action] = {
    a.name: a
    for a in (
        Action(
            name="sync",
            label="Sync now",
            done="Sync requested: a worker picks it up within a second.",
            run=service.sync_now,
            applies=_syncable,
        ),
        Action(
            name="resync",
            label="Resync",
            done="Resync started: every stream is enumerated again; the result is exact.",
            run=service.resync,
            applies=_syncable,
            confirm=(
                "Resync this mailbox? Every folder is read again from the provider (the "
                "stored copy stays readable meanwhile)."
            ),
        ),
        Action(
            name="pause",
            label="Pause",
            done="Paused: nothing is scheduled or synced until it is resumed.",
            run=service.pause,
            applies=lambda m: not m.parked and not m.row.paused,
        ),
        Action(
            name="resume",
            label="Resume",
            done="Resumed: a pass is on its way for whatever changed meanwhile.",
            run=service.resume,
            applies=lambda m: not m.parked and m.row.paused,
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
