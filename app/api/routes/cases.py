"""`/cases/*`: a caller's cases, their progress and their messages. Thin: validate, call
app.sync.cases.service, shape the answer. A case of another caller is a 404."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Response
from pydantic import EmailStr, TypeAdapter, ValidationError

from app.api.auth import CurrentUser
from app.api.case_schemas import (
    CASE_ID_PATTERN,
    CaseContactStatus,
    CaseMailboxView,
    CaseRequest,
    CaseResponse,
    ContactRequest,
)
from app.api.cursors import decode_cursor, encode_cursor
from app.api.deps import UnitOfWorkDep
from app.api.errors import ApiError
from app.api.schemas import MessagesResponse
from app.api.views import json_response, message_item
from app.db.repositories.reading import Key
from app.sync.cases import service
from app.sync.cases.service import CaseSpec, CaseView

router = APIRouter(prefix="/cases", tags=["cases"])

CaseId = Annotated[
    str,
    Path(
        min_length=1,
        max_length=200,
        pattern=CASE_ID_PATTERN,
        description="The caller's own identifier: 1-200 of A-Z a-z 0-9 . _ : -",
    ),
]
_EMAIL = TypeAdapter(EmailStr)


def _not_found(exc: Exception) -> ApiError:
    if isinstance(exc, service.ContactNotFound):
        return ApiError(404, "not_found", f"contact {exc} is not in this case")
    return ApiError(404, "not_found", "case not found")


def _response(view: CaseView) -> CaseResponse:
    return CaseResponse(
        case_id=view.case.case_id,
        title=view.case.title,
        since=view.case.since,
        status=view.status,
        contacts=view.contacts,
        mailboxes=[
            CaseMailboxView(
                mailbox_id=mailbox_id,
                contacts=[
                    CaseContactStatus(
                        email=e.email,
                        status=e.status,
                        found=e.found,
                        linked=e.linked,
                        estimate=e.estimate,
                        last_error=e.last_error,
                    )
                    for e in view.entries_of(mailbox_id)
                ],
            )
            for mailbox_id in view.mailbox_ids
        ],
    )


@router.put("/{case_id}", responses={201: {"model": CaseResponse}})
async def put_case(
    case_id: CaseId, body: CaseRequest, user: CurrentUser, uow: UnitOfWorkDep, response: Response
) -> CaseResponse:
    spec = CaseSpec(
        case_id=case_id,
        title=body.title,
        mailbox_ids=list(dict.fromkeys(body.mailbox_ids)),
        contacts=service.normalized_contacts([str(c) for c in body.contacts]),
        since=body.since,
    )
    try:
        view, created = await service.put_case(uow, user, spec)
    except service.UnknownMailboxes as exc:
        raise ApiError(404, "mailbox_not_found", f"no mailbox {exc} of yours") from exc
    await uow.commit()
    if created:
        response.status_code = 201
    return _response(view)


@router.get("/{case_id}")
async def get_case(case_id: CaseId, user: CurrentUser, uow: UnitOfWorkDep) -> CaseResponse:
    try:
        return _response(await service.get_case(uow.session, user, case_id))
    except service.CaseNotFound as exc:
        raise _not_found(exc) from exc


@router.delete("/{case_id}", status_code=204)
async def delete_case(case_id: CaseId, user: CurrentUser, uow: UnitOfWorkDep) -> None:
    try:
        await service.delete_case(uow, user, case_id)
    except service.CaseNotFound as exc:
        raise _not_found(exc) from exc
    await uow.commit()


@router.post("/{case_id}/contacts")
async def add_contact(
    case_id: CaseId, body: ContactRequest, user: CurrentUser, uow: UnitOfWorkDep
) -> CaseResponse:
    try:
        view = await service.add_contact(uow, user, case_id, str(body.email))
    except service.CaseNotFound as exc:
        raise _not_found(exc) from exc
    except service.TooManyContacts as exc:
        raise ApiError(409, "too_many_contacts", str(exc)) from exc
    await uow.commit()
    return _response(view)


@router.delete("/{case_id}/contacts/{email}")
async def remove_contact(
    case_id: CaseId,
    email: Annotated[str, Path(min_length=3, max_length=320)],
    user: CurrentUser,
    uow: UnitOfWorkDep,
) -> CaseResponse:
    try:
        address = str(_EMAIL.validate_python(email))
    except ValidationError as exc:
        raise ApiError(422, "invalid_request", f"{email!r} is not an email address") from exc
    try:
        view = await service.remove_contact(uow, user, case_id, address)
    except (service.CaseNotFound, service.ContactNotFound) as exc:
        raise _not_found(exc) from exc
    await uow.commit()
    return _response(view)


@router.get("/{case_id}/messages", response_model=MessagesResponse)
async def case_messages(
    case_id: CaseId,
    user: CurrentUser,
    uow: UnitOfWorkDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[str | None, Query(max_length=512)] = None,
) -> Response:
    after = decode_cursor(cursor) if cursor else None
    try:
        rows = await service.case_messages(uow.session, user, case_id, limit + 1, after)
    except service.CaseNotFound as exc:
        raise _not_found(exc) from exc
    more = len(rows) > limit
    rows = rows[:limit]
    next_cursor = (
        encode_cursor(Key(rows[-1]["received_at"], rows[-1]["id"])) if more and rows else None
    )
    # As /mail/messages answers: the rows are ours, serialized once.
    return json_response(
        MessagesResponse.model_construct(
            items=[message_item(r) for r in rows], next_cursor=next_cursor
        )
    )
