"""Request and response bodies of the HTTP API (INTERFACE.md names; additions only)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, EmailStr, Field, model_validator

from app.sync.cases.states import MailboxScope
from app.sync.states import MailboxStatus, Phase, PushState


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
    push: PushState = Field(
        description=(
            "Whether provider notifications reach the mailbox: active (a live subscription or "
            "watch), none (push not configured), failing (creating or renewing it failed, it "
            "lapsed, or notifications were missed). Without working push the mailbox is "
            "polled every SYNC_POLL_WITHOUT_PUSH_SECONDS."
        )
    )
    paused: bool = Field(
        default=False,
        description="Syncing paused by the user (POST /mail/mailboxes/{id}/pause); "
        "status keeps its meaning.",
    )
    scope: MailboxScope = MailboxScope.FULL


class StatusResponse(BaseModel):
    user_id: str
    mailboxes: list[MailboxStatusView]


class Contact(BaseModel):
    name: str | None
    address: str


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
    # Additions: the same people with their display names, and more of the headers.
    from_contact: Contact | None = None
    to_contacts: list[Contact] = Field(default_factory=list)
    cc_contacts: list[Contact] = Field(default_factory=list)
    bcc_contacts: list[Contact] = Field(default_factory=list)
    sent_at: datetime | None = None
    in_reply_to: str | None = None
    references: list[str] = Field(default_factory=list)
    size: int | None = None
    importance: Literal["low", "normal", "high"] | None = None
    flagged: bool = False


class MessagesResponse(BaseModel):
    items: list[MessageItem]
    next_cursor: str | None


class MessageDetail(MessageItem):
    # The provider's stream the message was synced from (a Graph folder id, "mailbox").
    stream: str
    synced_at: datetime | None


class BodyResponse(BaseModel):
    format: Literal["text", "html"]
    content: str


class AttachmentItem(BaseModel):
    attachment_id: str
    name: str | None
    content_type: str | None
    size: int | None
    inline: bool
    content_id: str | None


class AttachmentsResponse(BaseModel):
    items: list[AttachmentItem]


class ThreadItem(BaseModel):
    thread_id: str
    mailbox_id: uuid.UUID
    subject: str | None
    participants: list[Contact]
    message_count: int
    unread_count: int
    last_message_at: datetime | None
    labels: list[str]


class ThreadsResponse(BaseModel):
    items: list[ThreadItem]
    next_cursor: str | None


class ThreadResponse(BaseModel):
    thread_id: str
    items: list[MessageItem]


class MailboxActionResponse(BaseModel):
    mailbox_id: uuid.UUID
    action: Literal["sync", "resync", "pause", "resume"]
    mailbox: MailboxStatusView


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
