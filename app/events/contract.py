"""The event contract: one pydantic model per event type, the source of the committed JSON
Schemas (`events.schema.json`, `mailsync events schema`) and of docs/events.md.

The publisher builds events as plain dicts for speed (app/events/expand.py); tests validate
what it publishes against these models, so the two cannot drift apart.
"""

from __future__ import annotations

import json
import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter


class _Event(BaseModel):
    model_config = ConfigDict(extra="forbid")

    event_id: str = Field(
        description="Stable for a given outbox entry; also the `Nats-Msg-Id` header, so a "
        "republished event is dropped by JetStream's duplicate window."
    )
    ts: datetime = Field(description="When the change committed (RFC 3339, UTC).")
    user_id: str = Field(description="The mailbox owner (the `sub` that connected it).")
    mailbox_id: uuid.UUID
    inbox_id: uuid.UUID = Field(description="The mailbox id again, under its legacy name.")
    provider: Literal["google", "microsoft"]


class _MessageState(_Event):
    version: int = Field(
        description="Grows with every change of this message (the mailbox's event position "
        "of the change): keep the highest seen per message, deletions included, and drop "
        "an event whose version is not higher."
    )
    provider_message_id: str
    provider_thread_id: str | None
    internet_message_id: str | None
    subject: str | None
    sender: str | None
    to_addrs: list[str]
    cc_addrs: list[str]
    bcc_addrs: list[str]
    snippet: str | None
    labels: list[str] = Field(
        description="As `/mail/messages` returns them: INBOX, UNREAD, SENT, … and the "
        "user's categories/labels."
    )
    msg_date: datetime | None = Field(description="When the message was received.")
    is_read: bool
    has_attachments: bool


class EmailReceived(_MessageState):
    """A message stored for the first time."""

    type: Literal["email.received"]


class EmailUpdated(_MessageState):
    """A stored message changed (labels, read state or fields); carries its whole state."""

    type: Literal["email.updated"]


class EmailSnapshot(_MessageState):
    """A stored message as it is, re-emitted by a resnapshot."""

    type: Literal["email.snapshot"]
    snapshot_id: uuid.UUID


class EmailDeleted(_Event):
    """A message left the mailbox (deleted, or moved out of every synced folder)."""

    type: Literal["email.deleted"]
    version: int
    provider_message_id: str


class _MailboxEvent(_Event):
    status: str = Field(description="The mailbox status after the transition.")


class MailboxConnected(_MailboxEvent):
    """The mailbox's first sync completed (once in its life)."""

    type: Literal["mailbox.connected"]


class MailboxSyncFailed(_MailboxEvent):
    """Syncing stopped working: a permanent error, or MAX_TRANSIENT_RETRIES in a row."""

    type: Literal["mailbox.sync_failed"]
    error_class: str | None
    message: str | None
    consecutive_failures: int


class MailboxAuthExpired(_MailboxEvent):
    """The provider refused the grant; nothing syncs until the user reconnects."""

    type: Literal["mailbox.auth_expired"]
    last_error: str
    action: Literal["reconnect"]


class MailboxRecovered(_MailboxEvent):
    """A sync completed after `mailbox.sync_failed` or `mailbox.auth_expired`."""

    type: Literal["mailbox.recovered"]


class MailboxDisconnected(_MailboxEvent):
    """The user disconnected the mailbox."""

    type: Literal["mailbox.disconnected"]


class MailboxSnapshotComplete(_Event):
    """Every message the mailbox held was re-emitted as `email.snapshot`."""

    type: Literal["mailbox.snapshot_complete"]
    snapshot_id: uuid.UUID
    messages: int


class CaseMessageLinked(_Event):
    """A stored message of the mailbox was linked to a case of its owner (app/sync/cases):
    found by the case's search or query, or stored as new mail. One event per message."""

    type: Literal["case.message_linked"]
    case_id: str = Field(description="The case's identifier, as its owner gave it.")
    provider_message_id: str
    contacts: list[str] = Field(description="The case contacts the message involves.")


class CaseSyncComplete(_Event):
    """Every contact's mail in every mailbox of the case is stored and linked (once per
    completion; again only after the case gains a contact, a mailbox or an earlier
    `since`). `mailbox_id` is the mailbox whose search completed it."""

    type: Literal["case.sync_complete"]
    case_id: str
    mailbox_ids: list[uuid.UUID]
    contacts: list[str]


Event = Annotated[
    EmailReceived
    | EmailUpdated
    | EmailSnapshot
    | EmailDeleted
    | MailboxConnected
    | MailboxSyncFailed
    | MailboxAuthExpired
    | MailboxRecovered
    | MailboxDisconnected
    | MailboxSnapshotComplete
    | CaseMessageLinked
    | CaseSyncComplete,
    Field(discriminator="type"),
]

EVENT = TypeAdapter(Event)

EVENT_TYPES: tuple[str, ...] = (
    "email.received",
    "email.updated",
    "email.deleted",
    "email.snapshot",
    "mailbox.connected",
    "mailbox.sync_failed",
    "mailbox.auth_expired",
    "mailbox.recovered",
    "mailbox.disconnected",
    "mailbox.snapshot_complete",
    "case.message_linked",
    "case.sync_complete",
)


def parse(data: bytes | str) -> Any:
    """Validate one published event against the contract."""
    return EVENT.validate_json(data)


def schema_document() -> str:
    """The committed events.schema.json."""
    schema: dict[str, Any] = EVENT.json_schema()
    schema = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "mailsync events",
        "description": "One JSON document per NATS message; `type` says which. "
        "Subjects: {EVENTS_SUBJECT_PREFIX}.user.{user_token}.{type} (docs/events.md).",
        **schema,
    }
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"
