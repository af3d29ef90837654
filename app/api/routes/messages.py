"""`/mail/messages`: the mirror's messages, one message, its body and its attachments."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query, Response
from fastapi.responses import StreamingResponse

from app.api.auth import CurrentUser
from app.api.cursors import decode_cursor, encode_cursor
from app.api.deps import RuntimeDep, UnitOfWorkDep
from app.api.errors import ApiError
from app.api.filters import FilterDep
from app.api.schemas import (
    AttachmentItem,
    AttachmentsResponse,
    BodyResponse,
    MessageDetail,
    MessagesResponse,
)
from app.api.views import (
    content_disposition,
    json_response,
    message_detail,
    message_item,
    provider_attachment_id,
    provider_error,
    public_attachment_id,
)
from app.db.models import Mailbox
from app.db.repositories.mailboxes import MailboxRepository
from app.db.repositories.reading import ReadRepository
from app.providers.base import ProviderError
from app.sync import mailboxes as service
from app.sync.html import sanitize
from app.sync.reading import MailboxUnavailable, ReadService

router = APIRouter(prefix="/mail", tags=["mail"])

MessageId = Annotated[int, Path(ge=1, le=2**63 - 1)]
AttachmentId = Annotated[str, Path(min_length=1, max_length=2048)]


async def _mailbox_ids(
    uow: UnitOfWorkDep, user: str, mailbox_id: uuid.UUID | None
) -> list[uuid.UUID]:
    try:
        return await service.readable_mailboxes(uow.session, user, mailbox_id)
    except service.MailboxNotFound as exc:
        raise ApiError(404, "not_found", "mailbox not found") from exc


async def _message(
    uow: UnitOfWorkDep, user: str, message_id: int
) -> tuple[dict[str, Any], Mailbox]:
    """The user's message and its mailbox; another user's message is simply not found."""
    mailboxes = {m.id: m for m in await MailboxRepository(uow.session).list_for_user(user)}
    row = await ReadRepository(uow.session).message(list(mailboxes), message_id)
    if row is None:
        raise ApiError(404, "not_found", "message not found")
    return row, mailboxes[row["mailbox_id"]]


async def _release(uow: UnitOfWorkDep) -> None:
    """No connection held while the provider answers (rows stay readable, detached)."""
    uow.session.expunge_all()
    await uow.session.rollback()


@router.get("/messages", response_model=MessagesResponse)
async def messages(
    user: CurrentUser,
    uow: UnitOfWorkDep,
    rt: RuntimeDep,
    flt: FilterDep,
    mailbox_id: uuid.UUID | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[str | None, Query(max_length=512)] = None,
) -> Response:
    ids = await _mailbox_ids(uow, user, mailbox_id)
    after = decode_cursor(cursor) if cursor else None
    repo = ReadRepository(uow.session, scan_budget=rt.settings.read_scan_budget)
    page = await repo.list_messages(ids, flt, limit, after) if ids else None
    if page is None:
        return json_response(MessagesResponse(items=[], next_cursor=None))
    return json_response(
        MessagesResponse.model_construct(
            items=[message_item(r) for r in page.rows],
            next_cursor=encode_cursor(page.next_key) if page.next_key else None,
        )
    )


@router.get("/messages/{message_id}")
async def message(message_id: MessageId, user: CurrentUser, uow: UnitOfWorkDep) -> MessageDetail:
    row, _ = await _message(uow, user, message_id)
    return message_detail(row)


@router.get("/messages/{message_id}/body")
async def message_body(
    message_id: MessageId,
    user: CurrentUser,
    uow: UnitOfWorkDep,
    rt: RuntimeDep,
    format: Literal["text", "html"] = "html",
    allow_remote_images: bool = False,
) -> BodyResponse:
    row, mailbox = await _message(uow, user, message_id)
    await _release(uow)
    try:
        body = await ReadService(rt).body(mailbox, row["provider_message_id"], format)
    except (ProviderError, MailboxUnavailable) as exc:
        raise provider_error(exc) from exc
    if body.format == "text":
        return BodyResponse(format="text", content=body.content)
    prefix = f"/mail/messages/{message_id}/attachments/"
    inline_urls = {
        a.content_id.lower(): prefix + public_attachment_id(a.attachment_id)
        for a in body.attachments
        if a.content_id
    }
    content = sanitize(
        body.content,
        inline_urls=inline_urls,
        allow_remote_images=allow_remote_images,
        local_prefix=prefix,
    )
    return BodyResponse(format="html", content=content)


@router.get("/messages/{message_id}/attachments")
async def message_attachments(
    message_id: MessageId, user: CurrentUser, uow: UnitOfWorkDep, rt: RuntimeDep
) -> AttachmentsResponse:
    row, mailbox = await _message(uow, user, message_id)
    await _release(uow)
    try:
        found = await ReadService(rt).attachments(mailbox, row["provider_message_id"])
    except (ProviderError, MailboxUnavailable) as exc:
        raise provider_error(exc) from exc
    return AttachmentsResponse(
        items=[
            AttachmentItem(
                attachment_id=public_attachment_id(a.attachment_id),
                name=a.name,
                content_type=a.content_type,
                size=a.size,
                inline=a.inline,
                content_id=a.content_id,
            )
            for a in found
        ]
    )


@router.get(
    "/messages/{message_id}/attachments/{attachment_id}",
    response_class=StreamingResponse,
    responses={200: {"content": {"application/octet-stream": {}}}},
)
async def message_attachment(
    message_id: MessageId,
    attachment_id: AttachmentId,
    user: CurrentUser,
    uow: UnitOfWorkDep,
    rt: RuntimeDep,
) -> StreamingResponse:
    row, mailbox = await _message(uow, user, message_id)
    provider_id = provider_attachment_id(attachment_id)
    await _release(uow)
    limit = rt.settings.attachment_max_bytes
    stack = AsyncExitStack()
    try:
        content = await stack.enter_async_context(
            ReadService(rt).attachment(mailbox, row["provider_message_id"], provider_id)
        )
    except (ProviderError, MailboxUnavailable) as exc:
        await stack.aclose()
        raise provider_error(exc) from exc
    except BaseException:
        await stack.aclose()
        raise
    info = content.info
    if info.size is not None and info.size > limit:
        await stack.aclose()
        raise ApiError(413, "attachment_too_large", f"the attachment is larger than {limit} bytes")

    async def body() -> AsyncIterator[bytes]:
        sent = 0
        try:
            async for chunk in content.chunks:
                sent += len(chunk)
                if sent > limit:
                    # The size was not declared (or was wrong): stop rather than exceed it.
                    raise RuntimeError("attachment exceeded ATTACHMENT_MAX_BYTES while streaming")
                yield chunk
        finally:
            await stack.aclose()

    headers = {
        "Content-Disposition": content_disposition(info.name),
        "X-Content-Type-Options": "nosniff",
        # Opened directly, the file is inert: no script runs from our origin.
        "Content-Security-Policy": "default-src 'none'; sandbox",
        "Cache-Control": "private, no-store",
    }
    return StreamingResponse(
        body(),
        media_type=_media_type(info.content_type),
        headers=headers,
    )


def _media_type(value: str | None) -> str:
    if value and "/" in value and all(c.isprintable() and c not in "\r\n" for c in value):
        return value.split(";")[0].strip() or "application/octet-stream"
    return "application/octet-stream"
