"""Request and response bodies of `/cases` (ISSUE 12's names; additions only)."""

from __future__ import annotations

import uuid
from datetime import date

from pydantic import BaseModel, ConfigDict, EmailStr, Field

from app.sync.cases.service import MAX_CONTACTS, MAX_MAILBOXES
from app.sync.cases.states import EntryStatus

# The caller's own identifier: 1-200 characters of A-Z a-z 0-9 . _ : -
CASE_ID_PATTERN = r"^[A-Za-z0-9._:\-]{1,200}$"


class CaseRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    title: str | None = Field(default=None, max_length=500)
    mailbox_ids: list[uuid.UUID] = Field(
        max_length=MAX_MAILBOXES, description="The caller's mailboxes this case's mail is in."
    )
    contacts: list[EmailStr] = Field(
        max_length=MAX_CONTACTS,
        description="Addresses whose mail (from, to, cc or bcc) belongs to the case.",
    )
    since: date | None = Field(
        default=None, description="Only mail received on or after this day (UTC)."
    )


class ContactRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    email: EmailStr


class CaseContactStatus(BaseModel):
    email: str
    status: EntryStatus
    found: int = Field(description="Messages found with this contact in this mailbox.")
    linked: int = Field(description="Of those, the ones stored and linked now.")
    estimate: int | None = Field(
        description="How many there are in all, when known (exact once complete)."
    )
    last_error: str | None


class CaseMailboxView(BaseModel):
    mailbox_id: uuid.UUID
    contacts: list[CaseContactStatus]


class CaseResponse(BaseModel):
    case_id: str
    title: str | None
    since: date | None
    status: EntryStatus = Field(description="`complete` only when every entry is complete.")
    contacts: list[str]
    mailboxes: list[CaseMailboxView]
