"""`/mail/*`: what a frontend calls. Thin: validate, call app.sync.mailboxes, shape the answer."""

from __future__ import annotations

from fastapi import APIRouter

from app.api.auth import CurrentUser
from app.api.deps import UnitOfWorkDep
from app.api.errors import ApiError
from app.api.schemas import (
    ConnectRequest,
    ConnectResponse,
    DisconnectRequest,
    DisconnectResponse,
    StatusResponse,
)
from app.api.views import mailbox_view
from app.db.repositories.mailboxes import MailboxRepository
from app.sync import mailboxes as service

router = APIRouter(prefix="/mail", tags=["mail"])


@router.post("/connect", status_code=202)
async def connect(body: ConnectRequest, user: CurrentUser, uow: UnitOfWorkDep) -> ConnectResponse:
    command = service.ConnectCommand(
        user_id=user,
        provider=body.provider,
        auth_mode=body.auth,
        email=str(body.email) if body.email else None,
        access_token=body.access_token,
        refresh_token=body.refresh_token,
        expires_in=body.expires_in,
        tenant_id=body.tenant_id,
        provider_user_id=body.user_id,
    )
    mailbox = await service.connect(uow, command)
    await uow.commit()
    return ConnectResponse(
        mailbox_id=mailbox.id,
        provider=mailbox.provider,
        email=mailbox.email,
        status=mailbox.status,
    )


@router.post("/disconnect")
async def disconnect(
    body: DisconnectRequest, user: CurrentUser, uow: UnitOfWorkDep
) -> DisconnectResponse:
    try:
        targets = await service.resolve_targets(uow.session, user, body.mailbox_id, body.provider)
    except service.MailboxNotFound as exc:
        raise ApiError(404, "not_found", "mailbox not found") from exc
    await service.disconnect(uow, targets, purge=body.purge)
    await uow.commit()
    return DisconnectResponse(disconnected=targets, purged=body.purge)


@router.get("/status")
async def status(user: CurrentUser, uow: UnitOfWorkDep) -> StatusResponse:
    mailboxes = await MailboxRepository(uow.session).list_for_user(user)
    return StatusResponse(
        user_id=user,
        mailboxes=[mailbox_view(m) for m in mailboxes],
    )
