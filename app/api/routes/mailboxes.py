"""`/mail/mailboxes/{id}`: one mailbox's status, and what its user can ask of it."""

from __future__ import annotations

import uuid

from fastapi import APIRouter

from app.api.auth import CurrentUser
from app.api.deps import UnitOfWorkDep
from app.api.errors import ApiError
from app.api.schemas import MailboxActionResponse, MailboxStatusView
from app.api.views import mailbox_view
from app.db.repositories.mailboxes import MailboxRepository
from app.sync import mailboxes as service

router = APIRouter(prefix="/mail/mailboxes", tags=["mail"])


async def _own(uow: UnitOfWorkDep, user: str, mailbox_id: uuid.UUID) -> None:
    if await MailboxRepository(uow.session).get_for_user(user, mailbox_id) is None:
        raise ApiError(404, "not_found", "mailbox not found")


async def _view(uow: UnitOfWorkDep, user: str, mailbox_id: uuid.UUID) -> MailboxStatusView:
    view = await service.view_of(uow.session, user, mailbox_id)
    if view is None:
        raise ApiError(404, "not_found", "mailbox not found")
    return mailbox_view(view)


async def _after(
    uow: UnitOfWorkDep, user: str, mailbox_id: uuid.UUID, action: str
) -> MailboxActionResponse:
    await uow.commit()
    return MailboxActionResponse(
        mailbox_id=mailbox_id,
        action=action,
        mailbox=await _view(uow, user, mailbox_id),
    )


@router.get("/{mailbox_id}")
async def mailbox(
    mailbox_id: uuid.UUID, user: CurrentUser, uow: UnitOfWorkDep
) -> MailboxStatusView:
    return await _view(uow, user, mailbox_id)


@router.post("/{mailbox_id}/sync", status_code=202)
async def sync(
    mailbox_id: uuid.UUID, user: CurrentUser, uow: UnitOfWorkDep
) -> MailboxActionResponse:
    """A pass now (one already running owes another pass)."""
    await _own(uow, user, mailbox_id)
    try:
        await service.sync_now(uow, mailbox_id)
    except service.MailboxParked as exc:
        raise ApiError(409, "mailbox_unavailable", str(exc)) from exc
    return await _after(uow, user, mailbox_id, "sync")


@router.post("/{mailbox_id}/resync", status_code=202)
async def resync(
    mailbox_id: uuid.UUID, user: CurrentUser, uow: UnitOfWorkDep
) -> MailboxActionResponse:
    """Rebuild from the provider: every stream enumerates again; the result is exact."""
    await _own(uow, user, mailbox_id)
    try:
        await service.resync(uow, mailbox_id)
    except service.MailboxParked as exc:
        raise ApiError(409, "mailbox_unavailable", str(exc)) from exc
    return await _after(uow, user, mailbox_id, "resync")


@router.post("/{mailbox_id}/pause")
async def pause(
    mailbox_id: uuid.UUID, user: CurrentUser, uow: UnitOfWorkDep
) -> MailboxActionResponse:
    """Stop scheduling and syncing (a running slice commits nothing more)."""
    await _own(uow, user, mailbox_id)
    await service.pause(uow, mailbox_id)
    return await _after(uow, user, mailbox_id, "pause")


@router.post("/{mailbox_id}/resume")
async def resume(
    mailbox_id: uuid.UUID, user: CurrentUser, uow: UnitOfWorkDep
) -> MailboxActionResponse:
    await _own(uow, user, mailbox_id)
    await service.resume(uow, mailbox_id)
    return await _after(uow, user, mailbox_id, "resume")
