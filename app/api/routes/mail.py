"""`/mail/*`: what a frontend calls. Thin: validate, call app.sync.mailboxes, shape the answer."""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query

from app.api.auth import CurrentCaller, CurrentUser
from app.api.deps import UnitOfWorkDep
from app.api.errors import ApiError
from app.api.schemas import (
    ConnectRequest,
    ConnectResponse,
    DisconnectRequest,
    DisconnectResponse,
    MailboxStatusView,
    MessageItem,
    MessagesResponse,
    Progress,
    StatusResponse,
)
from app.db.repositories.mailboxes import MailboxRepository
from app.db.repositories.messages import ListingKey, MessageRepository
from app.sync import mailboxes as service
from app.sync.cases.states import MailboxScope
from app.sync.states import MailboxStatus, Phase

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


def status_view(view: service.MailboxView) -> MailboxStatusView:
    m = view.mailbox
    return MailboxStatusView(
        mailbox_id=m.id,
        provider=m.provider,
        email=m.email,
        status=MailboxStatus(m.status),
        phase=Phase(m.phase) if m.phase else None,
        progress=Progress(
            messages_synced=m.messages_synced,
            messages_total_estimate=m.messages_total_estimate,
            percent=view.percent,
        ),
        last_synced_at=m.last_synced_at,
        last_error=m.last_error,
        last_error_at=m.last_error_at,
        in_sync=view.in_sync,
        pending_since=m.pending_since,
        last_verified_at=m.last_verified_at,
        streams_behind=view.streams_behind,
        scope=MailboxScope(m.scope),
    )


@router.get("/status")
async def status(user: CurrentUser, uow: UnitOfWorkDep) -> StatusResponse:
    views = await service.status_of(uow.session, user)
    return StatusResponse(user_id=user, mailboxes=[status_view(v) for v in views])


def _encode_cursor(key: ListingKey) -> str:
    raw = json.dumps({"r": key.received_at.isoformat() if key.received_at else None, "i": key.id})
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> ListingKey:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        data = json.loads(base64.urlsafe_b64decode(padded.encode()).decode())
        received = data["r"]
        return ListingKey(
            received_at=datetime.fromisoformat(received) if received is not None else None,
            id=int(data["i"]),
        )
    except (ValueError, KeyError, TypeError, binascii.Error, UnicodeDecodeError) as exc:
        raise ApiError(400, "invalid_cursor", "cursor is not one this API returned") from exc


@router.get("/messages")
async def messages(
    user: CurrentUser,
    uow: UnitOfWorkDep,
    mailbox_id: uuid.UUID | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[str | None, Query(max_length=512)] = None,
) -> MessagesResponse:
    repo = MailboxRepository(uow.session)
    if mailbox_id is not None:
        if await repo.get_for_user(user, mailbox_id) is None:
            raise ApiError(404, "not_found", "mailbox not found")
        ids = [mailbox_id]
    else:
        ids = [m.id for m in await repo.list_for_user(user)]
    after = _decode_cursor(cursor) if cursor else None
    rows = await MessageRepository(uow.session).list_page(ids, limit + 1, after) if ids else []
    more = len(rows) > limit
    rows = rows[:limit]
    items = [
        MessageItem(
            id=str(r["id"]),
            mailbox_id=r["mailbox_id"],
            provider_message_id=r["provider_message_id"],
            thread_id=r["thread_id"],
            internet_message_id=r["internet_message_id"],
            subject=r["subject"],
            **{"from": r["from_address"]},
            to=r["to_addresses"],
            cc=r["cc_addresses"],
            bcc=r["bcc_addresses"],
            snippet=r["snippet"],
            received_at=r["received_at"],
            labels=r["labels"],
            is_read=r["is_read"],
            has_attachments=r["has_attachments"],
        )
        for r in rows
    ]
    next_cursor = (
        _encode_cursor(ListingKey(rows[-1]["received_at"], rows[-1]["id"]))
        if more and rows
        else None
    )
    return MessagesResponse(items=items, next_cursor=next_cursor)
