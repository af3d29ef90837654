"""Request and response bodies of the HTTP API (INTERFACE.md names; additions only)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, EmailStr, Field, model_validator

from app.sync.cases.states import MailboxScope
from app.sync.states import MailboxStatus, Phase


class ConnectRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    provider: Literal["google", "microsoft"]
    # "delegated" (default): the user's OAuth tokens. "application": Microsoft 365
    # app-only access (client credentials) to `user_id`/`email` in `tenant_id`.
    auth: Literal["delegated", "application"] = "delegated"
    access_token: str | None = Field(default=None, min_length=1, max_length=16384)
    refresh_token: str | None = Field(default=None, min_length=1, max_length=16384)
    expires_in: int | None = Field(default=None, ge=0, le=31_536_000)
    email: EmailStr | None = None
    tenant_id: str | None = Field(
        default=None, min_length=1, max_length=200, pattern=r"^[A-Za-z0-9.\-]+$"
    )
    user_id: str | None = Field(
        default=None, min_length=1, max_length=200, pattern=r"^[A-Za-z0-9@.\-_]+$"
    )
    scope: MailboxScope = Field(
        default=MailboxScope.FULL,
        description="`full`: mirror the whole mailbox. `cases`: store only mail exchanged "
        "with contacts of the owner's cases (history from the provider's search).",
    )

    @model_validator(mode="after")
    def _consistent(self) -> ConnectRequest:
        if self.auth == "application":
            if self.provider != "microsoft":
                raise ValueError("auth 'application' is only available for provider 'microsoft'")
            if not self.tenant_id:
                raise ValueError("tenant_id is required with auth 'application'")
            if not (self.user_id or self.email):
                raise ValueError("user_id or email is required with auth 'application'")
        else:
            missing = [
                name
                for name in ("access_token", "refresh_token", "expires_in")
                if getattr(self, name) is None
            ]
            if missing:
                raise ValueError(f"{', '.join(missing)} required")
        return self


class ConnectResponse(BaseModel):
    mailbox_id: uuid.UUID
    provider: str
    email: str | None
    status: MailboxStatus
    scope: MailboxScope = MailboxScope.FULL


class DisconnectRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    mailbox_id: uuid.UUID | None = None
    provider: Literal["google", "microsoft"] | None = None
    purge: bool = False

    @model_validator(mode="after")
    def _one_target(self) -> DisconnectRequest:
        if (self.mailbox_id is None) == (self.provider is None):
            raise ValueError("give exactly one of mailbox_id or provider")
        return self


class DisconnectResponse(BaseModel):
    disconnected: list[uuid.UUID]
    purged: bool


class Progress(BaseModel):
    messages_synced: int
    messages_total_estimate: int | None
    percent: int


class MailboxStatusView(BaseModel):
    mailbox_id: uuid.UUID
    provider: str
    email: str | None
    status: MailboxStatus
    phase: Phase | None
    progress: Progress
    last_synced_at: datetime | None
    last_error: str | None
    last_error_at: datetime | None
    in_sync: bool = Field(
        description="Every stream caught up and no change known that is not yet applied."
    )
    pending_since: datetime | None = Field(
        description="The oldest change known (a notification, a connect) not yet applied."
    )
    last_verified_at: datetime | None = Field(
        description="When the completion monitor last found the store equal to the provider."
    )
    streams_behind: int = Field(
        description="Streams (folders, the Gmail mailbox) being enumerated or owing a fetch."
    )
    scope: MailboxScope = MailboxScope.FULL


class StatusResponse(BaseModel):
    user_id: str
    mailboxes: list[MailboxStatusView]


class MessageItem(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    id: str
    mailbox_id: uuid.UUID
    provider_message_id: str
    thread_id: str | None
    internet_message_id: str | None
    subject: str | None
    from_: str | None = Field(alias="from", serialization_alias="from")
    to: list[str]
    cc: list[str]
    bcc: list[str]
    snippet: str | None
    received_at: datetime | None
    labels: list[str]
    is_read: bool
    has_attachments: bool


class MessagesResponse(BaseModel):
    items: list[MessageItem]
    next_cursor: str | None


class ResnapshotResponse(BaseModel):
    """A resnapshot walk: every stored message re-emitted as `email.snapshot`, in batches,
    then `mailbox.snapshot_complete` (docs/events.md)."""

    snapshot_id: uuid.UUID
    mailbox_id: uuid.UUID
    # False: a walk was already running for this mailbox; this is it.
    created: bool
    emitted: int
    messages_total_estimate: int | None
    complete: bool
