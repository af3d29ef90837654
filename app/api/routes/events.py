"""Operator routes for events: re-emit a mailbox's state to consumers."""

from __future__ import annotations

import uuid

from fastapi import APIRouter

from app.api.auth import Operator
from app.api.deps import UnitOfWorkDep
from app.api.errors import ApiError
from app.api.schemas import ResnapshotResponse
from app.events import snapshot

router = APIRouter(prefix="/admin", tags=["admin"])


@router.post("/mailboxes/{mailbox_id}/resnapshot", status_code=202)
async def resnapshot(
    mailbox_id: uuid.UUID, operator: Operator, uow: UnitOfWorkDep
) -> ResnapshotResponse:
    """Emit `email.snapshot` for every message the mailbox holds now, then
    `mailbox.snapshot_complete`, in bounded batches run by the workers. Asking again while
    a walk runs returns that walk."""
    try:
        walk, created = await snapshot.request(uow.session, mailbox_id, operator.user_id)
    except snapshot.MailboxNotFound as exc:
        raise ApiError(404, "not_found", "mailbox not found") from exc
    except snapshot.EventsDisabled as exc:
        raise ApiError(
            409, "events_disabled", "events are disabled (EVENTS_ENABLED=false): nothing to emit"
        ) from exc
    redis, walk_id, batch = uow.rt.redis, walk.id, walk.batch
    uow.after_commit(lambda: snapshot.enqueue_batch(redis, walk_id, batch))
    await uow.commit()
    return ResnapshotResponse(
        snapshot_id=walk.id,
        mailbox_id=walk.mailbox_id,
        created=created,
        emitted=walk.emitted,
        messages_total_estimate=walk.total_estimate,
        complete=walk.finished_at is not None,
    )
