"""`/mail/threads`: conversations (Graph conversationId, Gmail threadId), newest first."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Path, Query, Response

from app.api.auth import CurrentUser
from app.api.cursors import decode_cursor, encode_cursor
from app.api.deps import RuntimeDep, UnitOfWorkDep
from app.api.errors import ApiError
from app.api.filters import FilterDep
from app.api.schemas import Contact, ThreadItem, ThreadResponse, ThreadsResponse
from app.api.views import json_response, message_item
from app.db.repositories.reading import ReadRepository
from app.sync import mailboxes as service

router = APIRouter(prefix="/mail", tags=["mail"])


async def _mailbox_ids(
    uow: UnitOfWorkDep, user: str, mailbox_id: uuid.UUID | None
) -> list[uuid.UUID]:
    try:
        return await service.readable_mailboxes(uow.session, user, mailbox_id)
    except service.MailboxNotFound as exc:
        raise ApiError(404, "not_found", "mailbox not found") from exc


@router.get("/threads", response_model=ThreadsResponse)
async def threads(
    user: CurrentUser,
    uow: UnitOfWorkDep,
    rt: RuntimeDep,
    flt: FilterDep,
    mailbox_id: uuid.UUID | None = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(max_length=512)] = None,
) -> Response:
    """One item per thread, ordered by its newest message (with filters: its newest
    matching message); a thread is listed when any of its messages matches."""
    ids = await _mailbox_ids(uow, user, mailbox_id)
    if not ids:
        return json_response(ThreadsResponse(items=[], next_cursor=None))
    after = decode_cursor(cursor) if cursor else None
    repo = ReadRepository(uow.session, scan_budget=rt.settings.read_scan_budget)
    rows, next_key = await repo.list_threads(ids, flt, limit, after)
    return json_response(
        ThreadsResponse(
            items=[
                ThreadItem(
                    thread_id=r["thread_id"],
                    mailbox_id=r["mailbox_id"],
                    subject=r["subject"],
                    participants=[Contact(**p) for p in r["participants"]],
                    message_count=r["message_count"],
                    unread_count=r["unread_count"],
                    last_message_at=r["last_message_at"],
                    labels=r["labels"],
                )
                for r in rows
            ],
            next_cursor=encode_cursor(next_key) if next_key else None,
        )
    )


@router.get("/threads/{thread_id}", response_model=ThreadResponse)
async def thread(
    thread_id: Annotated[str, Path(min_length=1, max_length=1024)],
    user: CurrentUser,
    uow: UnitOfWorkDep,
    mailbox_id: uuid.UUID | None = None,
) -> Response:
    """The thread's messages, oldest first."""
    ids = await _mailbox_ids(uow, user, mailbox_id)
    rows = await ReadRepository(uow.session).thread_messages(ids, thread_id)
    if not rows:
        raise ApiError(404, "not_found", "thread not found")
    return json_response(
        ThreadResponse.model_construct(thread_id=thread_id, items=[message_item(r) for r in rows])
    )
