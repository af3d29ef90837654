"""`/mail/*`: what a frontend calls. Thin: validate, call app.sync.mailboxes, shape the answer."""

from __future__ import annotations

from fastapi import APIRouter

from app.api.auth import CurrentCaller, CurrentUser
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
from app.sync import mailboxes as service
from app.sync.cases.states import MailboxScope
from app.sync.states import MailboxStatus

router = APIRouter(prefix="/mail", tags=["mail"])


@router.post("/connect", status_code=202)
async def connect(
    body: ConnectRequest, caller: CurrentCaller, uow: UnitOfWorkDep
) -> ConnectResponse:
    if body.auth == "application":
        # App-only access reads any mailbox of a tenant that consented: operators only,
        # and only for tenants this deployment lists.
        settings = uow.rt.settings
        if not caller.is_operator(settings):
            raise ApiError(
                403,
                "forbidden",
                "app-only connect needs the operator role "
                f"{settings.auth_operator_role!r} in the token's {settings.auth_roles_claim!r} "
                "claim",
            )
        assert body.tenant_id is not None
        if body.tenant_id.lower() not in settings.app_only_tenants:
            raise ApiError(
                403,
                "tenant_not_allowed",
                f"tenant {body.tenant_id!r} is not in MICROSOFT_APP_ONLY_TENANTS"
                if settings.app_only_tenants
                else "app-only connect is disabled (MICROSOFT_APP_ONLY_TENANTS is empty)",
            )
    command = service.ConnectCommand(
        user_id=caller.user_id,
        provider=body.provider,
        auth_mode=body.auth,
        email=str(body.email) if body.email else None,
        access_token=body.access_token,
        refresh_token=body.refresh_token,
        expires_in=body.expires_in,
        tenant_id=body.tenant_id,
        provider_user_id=body.user_id,
        scope=body.scope,
    )
    try:
        mailbox = await service.connect(uow, command)
    except service.ScopeConflict as exc:
        raise ApiError(409, "scope_conflict", str(exc)) from exc
    await uow.commit()
    return ConnectResponse(
        mailbox_id=mailbox.id,
        provider=mailbox.provider,
        email=mailbox.email,
        status=MailboxStatus(mailbox.status),
        scope=MailboxScope(mailbox.scope),
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
    views = await service.status_of(uow.session, user)
    return StatusResponse(user_id=user, mailboxes=[mailbox_view(v) for v in views])
