"""Tables. Rows are read and written only through the repositories next to this module."""

from __future__ import annotations

import uuid
from datetime import date, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Date,
    DateTime,
    ForeignKey,
    Identity,
    Index,
    Integer,
    LargeBinary,
    SmallInteger,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, REAL, UUID
from sqlmodel import Field, SQLModel


def _ts(nullable: bool = True, default_now: bool = False) -> Any:
    return Field(
        default=None,
        sa_column=Column(
            DateTime(timezone=True),
            nullable=nullable,
            server_default=text("now()") if default_now else None,
        ),
    )


class Mailbox(SQLModel, table=True):
    __tablename__ = "mailboxes"
    __table_args__ = (
        # One mailbox per provider account per user: reconnecting updates it.
        UniqueConstraint("user_id", "provider", "account_key", name="uq_mailboxes_account"),
        Index("ix_mailboxes_next_sync_at", "next_sync_at"),
        Index("ix_mailboxes_email", "provider", "email"),
        Index("ix_mailboxes_lease_expires_at", "lease_expires_at"),
        Index("ix_mailboxes_next_verify_at", "next_verify_at"),
        Index("ix_mailboxes_disconnected", "id", postgresql_where=text("status = 'disconnected'")),
    )

    id: uuid.UUID = Field(
        default_factory=uuid.uuid4, sa_column=Column(UUID(as_uuid=True), primary_key=True)
    )
    user_id: str = Field(sa_column=Column(Text, nullable=False, index=True))
    provider: str = Field(sa_column=Column(Text, nullable=False))
    # Lower-cased email, or the app-only user id when no email was given.
    account_key: str = Field(sa_column=Column(Text, nullable=False))
    email: str | None = Field(default=None, sa_column=Column(Text))
    auth_mode: str = Field(default="delegated", sa_column=Column(Text, nullable=False))
    tenant_id: str | None = Field(default=None, sa_column=Column(Text))
    provider_user_id: str | None = Field(default=None, sa_column=Column(Text))
    # MailboxScope (app/sync/cases/states.py): a full mirror, or only mail of case contacts.
    scope: str = Field(
        default="full", sa_column=Column(Text, nullable=False, server_default="full")
    )

    # Values and the transitions between them: app/sync/states.py (CHECK constraints too).
    status: str = Field(default="pending", sa_column=Column(Text, nullable=False))
    phase: str | None = Field(default=None, sa_column=Column(Text))
    messages_synced: int = Field(
        default=0, sa_column=Column(BigInteger, nullable=False, server_default="0")
    )
    messages_total_estimate: int | None = Field(default=None, sa_column=Column(BigInteger))
    last_synced_at: datetime | None = _ts()
    last_error: str | None = Field(default=None, sa_column=Column(Text))
    last_error_at: datetime | None = _ts()
    consecutive_failures: int = Field(
        default=0, sa_column=Column(BigInteger, nullable=False, server_default="0")
    )

    next_sync_at: datetime | None = _ts()
    # The suffix of the job connect enqueued (sync:{id}:{connect_job}) until a slice takes
    # the lease: the scheduler re-enqueues a waiting first sync under the same id.
    connect_job: str | None = Field(default=None, sa_column=Column(Text))
    # Set by webhooks and connect; a sync that started before it owes another pass.
    sync_requested_at: datetime | None = _ts()
    # The slice that holds (or last held) the lease started at sync_started_at; the pass it
    # belongs to (a pass may span slices) at pass_started_at (NULL between passes).
    sync_started_at: datetime | None = _ts()
    pass_started_at: datetime | None = _ts()
    # The oldest change known and not yet applied; pending_next: the oldest that arrived
    # after the running pass began (it becomes pending_since when that pass completes).
    pending_since: datetime | None = _ts()
    pending_next: datetime | None = _ts()
    # When the next pass over every stream is due (NULL: at the next pass); passes before
    # it follow only what notifications pointed to (app/sync/targets.py).
    full_pass_at: datetime | None = _ts()
    # First completed pass (mailbox.connected); entered error/auth_expired without a pass
    # completed since (mailbox.recovered when one does); the monitor's last good check.
    connected_at: datetime | None = _ts()
    failing_since: datetime | None = _ts()
    last_verified_at: datetime | None = _ts()
    # The completion monitor (app/sync/monitor.py): its next check, and a difference seen
    # once that waits for confirmation after a completed pass (see migration 0006).
    next_verify_at: datetime | None = _ts()
    verify_suspect: dict[str, Any] | None = Field(default=None, sa_column=Column(JSONB))
    verify_suspect_at: datetime | None = _ts()
    verify_attempts: int = Field(
        default=0, sa_column=Column(Integer, nullable=False, server_default="0")
    )
    # PushState (app/sync/states.py): whether provider notifications reach this mailbox.
    push_state: str = Field(
        default="none", sa_column=Column(Text, nullable=False, server_default="none")
    )

    lease_owner: str | None = Field(default=None, sa_column=Column(Text))
    lease_expires_at: datetime | None = _ts()
    fencing_token: int = Field(
        default=0, sa_column=Column(BigInteger, nullable=False, server_default="0")
    )
    # The position of the mailbox's last outbox row (see OutboxEvent.position).
    outbox_position: int = Field(
        default=0, sa_column=Column(BigInteger, nullable=False, server_default="0")
    )

    created_at: datetime | None = _ts(nullable=False, default_now=True)
    updated_at: datetime | None = _ts(nullable=False, default_now=True)
    disconnected_at: datetime | None = _ts()
    # The user paused syncing: nothing is scheduled or synced; `status` keeps its meaning.
    paused: bool = Field(
        default=False, sa_column=Column(Boolean, nullable=False, server_default="false")
    )


class Credential(SQLModel, table=True):
    """Tokens live in their own table, encrypted; the API never selects from it."""

    __tablename__ = "credentials"

    mailbox_id: uuid.UUID = Field(
        sa_column=Column(
            UUID(as_uuid=True), ForeignKey("mailboxes.id", ondelete="CASCADE"), primary_key=True
        )
    )
    # Fernet token of a JSON document {access_token, refresh_token}.
    secret: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    access_expires_at: datetime | None = _ts()
    version: int = Field(
        default=1, sa_column=Column(BigInteger, nullable=False, server_default="1")
    )
    updated_at: datetime | None = _ts(nullable=False, default_now=True)


class SyncCursor(SQLModel, table=True):
    """One row per stream (a Graph folder, the Gmail mailbox)."""

    __tablename__ = "sync_cursors"

    mailbox_id: uuid.UUID = Field(
        sa_column=Column(
            UUID(as_uuid=True), ForeignKey("mailboxes.id", ondelete="CASCADE"), primary_key=True
        )
    )
    stream_key: str = Field(sa_column=Column(Text, primary_key=True))
    name: str | None = Field(default=None, sa_column=Column(Text))
    labels: list[str] = Field(
        default_factory=list, sa_column=Column(ARRAY(Text), nullable=False, server_default="{}")
    )
    cursor: dict[str, Any] | None = Field(default=None, sa_column=Column(JSONB))
    # StreamMode (app/sync/states.py): full while enumerating from scratch, then incremental.
    mode: str = Field(default="full", sa_column=Column(Text, nullable=False))
    # Bumped by every full enumeration; rows not seen by the current one are swept at its end.
    generation: int = Field(
        default=1, sa_column=Column(BigInteger, nullable=False, server_default="1")
    )
    caught_up: bool = Field(default=False)
    total_estimate: int | None = Field(default=None, sa_column=Column(BigInteger))
    # Messages seen by the current full enumeration (progress of a backfill or rebuild).
    enumerated: int = Field(
        default=0, sa_column=Column(BigInteger, nullable=False, server_default="0")
    )
    updated_at: datetime | None = _ts(nullable=False, default_now=True)


class PendingStream(SQLModel, table=True):
    """What a change notification pointed to, until a pass takes it (app/sync/targets.py).
    Empty `stream_key` and `message_id`: every stream."""

    __tablename__ = "pending_streams"

    mailbox_id: uuid.UUID = Field(
        sa_column=Column(
            UUID(as_uuid=True), ForeignKey("mailboxes.id", ondelete="CASCADE"), primary_key=True
        )
    )
    stream_key: str = Field(default="", sa_column=Column(Text, primary_key=True))
    message_id: str = Field(default="", sa_column=Column(Text, primary_key=True))
    locate: bool = Field(default=False, sa_column=Column(Boolean, primary_key=True))
    noted_at: datetime | None = _ts(nullable=False, default_now=True)


class StreamCatalog(SQLModel, table=True):
    """A provider's stream discovery as it left it (Graph: folders, folder deltaLink,
    well-known folder ids), so no worker discovers a mailbox twice."""

    __tablename__ = "stream_catalogs"

    mailbox_id: uuid.UUID = Field(
        sa_column=Column(
            UUID(as_uuid=True), ForeignKey("mailboxes.id", ondelete="CASCADE"), primary_key=True
        )
    )
    state: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSONB, nullable=False))
    refreshed_at: datetime | None = _ts(nullable=False, default_now=True)


class Message(SQLModel, table=True):
    __tablename__ = "messages"
    __table_args__ = (
        # Keyset listing, newest first, undated last: a row-value comparison on
        # (COALESCE(received_at, '-infinity'), id) walks this index from any cursor.
        Index(
            "ix_messages_listing",
            "mailbox_id",
            text("COALESCE(received_at, '-infinity'::timestamptz) DESC"),
            text("id DESC"),
        ),
        # No index on (stream_key, generation): sweeps are rare and the primary key already
        # narrows them to the mailbox; every extra index slows each page's upsert.
    )

    # The public id and the listing's tie-breaker, from its sequence. Nothing looks a
    # message up by it, so it has no index of its own (migration 0002).
    id: int | None = Field(
        default=None,
        sa_column=Column(
            BigInteger,
            server_default=text("nextval('messages_id_seq'::regclass)"),
            nullable=False,
        ),
    )
    # (mailbox, provider id) is what every upsert probes: the primary key.
    #
    # No foreign key to mailboxes: PostgreSQL checks one row by row, locking the mailbox
    # row for each message, and with a mailbox's folders committing side by side that cost
    # as much CPU as the rest of the insert. Every transaction that writes messages ends
    # with the lease fence, an UPDATE of this mailbox's row that fails when the row is
    # gone, so the reference is still checked, once a page; and mailboxes are never deleted
    # (disconnect parks them).
    mailbox_id: uuid.UUID = Field(sa_column=Column(UUID(as_uuid=True), primary_key=True))
    provider_message_id: str = Field(sa_column=Column(Text, primary_key=True))
    stream_key: str = Field(sa_column=Column(Text, nullable=False))
    generation: int = Field(default=1, sa_column=Column(BigInteger, nullable=False))
    thread_id: str | None = Field(default=None, sa_column=Column(Text))
    internet_message_id: str | None = Field(default=None, sa_column=Column(Text))
    subject: str | None = Field(default=None, sa_column=Column(Text))
    from_address: str | None = Field(default=None, sa_column=Column(Text))
    to_addresses: list[str] = Field(
        default_factory=list, sa_column=Column(ARRAY(Text), nullable=False)
    )
    cc_addresses: list[str] = Field(
        default_factory=list, sa_column=Column(ARRAY(Text), nullable=False)
    )
    bcc_addresses: list[str] = Field(
        default_factory=list, sa_column=Column(ARRAY(Text), nullable=False)
    )
    snippet: str | None = Field(default=None, sa_column=Column(Text))
    received_at: datetime | None = _ts()
    labels: list[str] = Field(default_factory=list, sa_column=Column(ARRAY(Text), nullable=False))
    is_read: bool = Field(default=False)
    has_attachments: bool = Field(default=False)
    # Display names beside the address lists ("" where the provider gave none).
    from_name: str | None = Field(default=None, sa_column=Column(Text))
    to_names: list[str] = Field(
        default_factory=list, sa_column=Column(ARRAY(Text), nullable=False, server_default="{}")
    )
    cc_names: list[str] = Field(
        default_factory=list, sa_column=Column(ARRAY(Text), nullable=False, server_default="{}")
    )
    bcc_names: list[str] = Field(
        default_factory=list, sa_column=Column(ARRAY(Text), nullable=False, server_default="{}")
    )
    sent_at: datetime | None = _ts()
    in_reply_to: str | None = Field(default=None, sa_column=Column(Text))
    reference_ids: list[str] = Field(
        default_factory=list, sa_column=Column(ARRAY(Text), nullable=False, server_default="{}")
    )
    size: int | None = Field(default=None, sa_column=Column(BigInteger))
    importance: str | None = Field(default=None, sa_column=Column(Text))
    flagged: bool = Field(
        default=False, sa_column=Column(Boolean, nullable=False, server_default="false")
    )
    updated_at: datetime | None = _ts(nullable=False, default_now=True)


class MessageBody(SQLModel, table=True):
    """Bodies fetched from the provider, kept a while (BODY_CACHE_*): the raw provider
    content, sanitized again on every read."""

    __tablename__ = "message_bodies"

    mailbox_id: uuid.UUID = Field(
        sa_column=Column(
            UUID(as_uuid=True), ForeignKey("mailboxes.id", ondelete="CASCADE"), primary_key=True
        )
    )
    provider_message_id: str = Field(sa_column=Column(Text, primary_key=True))
    format: str = Field(sa_column=Column(Text, primary_key=True))
    content: str = Field(sa_column=Column(Text, nullable=False))
    # [{"attachment_id", "content_id", ...}] learned with the body, for cid: links.
    attachments: list[dict[str, Any]] = Field(
        default_factory=list, sa_column=Column(JSONB, nullable=False, server_default="[]")
    )
    fetched_at: datetime | None = _ts(nullable=False, default_now=True)


class PushSubscription(SQLModel, table=True):
    """A Graph subscription or a Gmail watch. Replaced ones stay briefly to map late notifications."""

    __tablename__ = "subscriptions"

    id: uuid.UUID = Field(
        default_factory=uuid.uuid4, sa_column=Column(UUID(as_uuid=True), primary_key=True)
    )
    mailbox_id: uuid.UUID = Field(
        sa_column=Column(
            UUID(as_uuid=True),
            ForeignKey("mailboxes.id", ondelete="CASCADE"),
            nullable=False,
            index=True,
        )
    )
    provider: str = Field(sa_column=Column(Text, nullable=False))
    subscription_id: str = Field(sa_column=Column(Text, nullable=False, unique=True))
    resource: str | None = Field(default=None, sa_column=Column(Text))
    client_state: bytes | None = Field(default=None, sa_column=Column(LargeBinary))
    expires_at: datetime = Field(
        sa_column=Column(DateTime(timezone=True), nullable=False, index=True)
    )
    # active | replaced
    status: str = Field(default="active", sa_column=Column(Text, nullable=False))
    # The provider-side channel (Gmail: one watch per address, shared by every mailbox of
    # that address); NULL: the subscription is its own channel.
    channel: str | None = Field(default=None, sa_column=Column(Text, index=True))
    extra: dict[str, Any] = Field(
        default_factory=dict, sa_column=Column(JSONB, nullable=False, server_default="{}")
    )
    created_at: datetime | None = _ts(nullable=False, default_now=True)
    renewed_at: datetime | None = _ts(nullable=False, default_now=True)
    replaced_at: datetime | None = _ts()


class WebhookNotification(SQLModel, table=True):
    """The webhook audit log: every request to a webhook route, with its outcome
    (app/sync/webhook_log.py; migration 0007 has the indexes)."""

    __tablename__ = "webhook_notifications"

    id: int | None = Field(
        default=None, sa_column=Column(BigInteger, primary_key=True, autoincrement=True)
    )
    received_at: datetime | None = _ts(nullable=False, default_now=True)
    provider: str = Field(sa_column=Column(Text, nullable=False))
    outcome: str = Field(sa_column=Column(Text, nullable=False))
    mailbox_id: uuid.UUID | None = Field(default=None, sa_column=Column(UUID(as_uuid=True)))
    kind: str = Field(sa_column=Column(Text, nullable=False))
    subscription_id: str | None = Field(default=None, sa_column=Column(Text))
    source: str | None = Field(default=None, sa_column=Column(Text))
    http_status: int | None = Field(default=None, sa_column=Column(SmallInteger))
    handling_ms: float | None = Field(default=None, sa_column=Column(REAL))
    # More than 1 on a row that stands for a minute of identical refusals (`aggregated`).
    count: int = Field(default=1, sa_column=Column(Integer, nullable=False, server_default="1"))
    aggregated: bool = Field(default=False)
    # Equal for redeliveries of one notification (a hash; never a secret).
    dedup_key: str | None = Field(default=None, sa_column=Column(Text))
    detail: str | None = Field(default=None, sa_column=Column(Text))
    payload: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSONB, nullable=False))


class OutboxEvent(SQLModel, table=True):
    """What changed, written in the same transaction as the change, for the publisher
    (app/events). Triggers (migration 0005) give each row its mailbox's next `position`
    under the mailbox row's lock, so a mailbox's positions follow commit order, and NOTIFY
    publishers at commit."""

    __tablename__ = "outbox_events"
    __table_args__ = (
        Index("ix_outbox_events_position", "mailbox_id", "position"),
        Index("ix_outbox_events_unpublished", "id", postgresql_where=text("published_at IS NULL")),
        Index("ix_outbox_events_published_at", "published_at"),
    )

    id: int | None = Field(
        default=None, sa_column=Column(BigInteger, primary_key=True, autoincrement=True)
    )
    mailbox_id: uuid.UUID = Field(sa_column=Column(UUID(as_uuid=True), nullable=False))
    position: int | None = Field(default=None, sa_column=Column(BigInteger))
    kind: str = Field(sa_column=Column(Text, nullable=False))
    # JSON bytes (app/events/outbox.py says what each kind holds).
    payload: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    created_at: datetime | None = Field(
        default=None,
        sa_column=Column(
            DateTime(timezone=True), nullable=False, server_default=text("clock_timestamp()")
        ),
    )
    published_at: datetime | None = _ts()


class Resnapshot(SQLModel, table=True):
    """An operator's request to re-emit a mailbox's messages as `email.snapshot` events,
    walked in bounded batches (app/events/snapshot.py)."""

    __tablename__ = "resnapshots"
    __table_args__ = (
        Index(
            "uq_resnapshots_running",
            "mailbox_id",
            unique=True,
            postgresql_where=text("finished_at IS NULL"),
        ),
    )

    id: uuid.UUID = Field(
        default_factory=uuid.uuid4, sa_column=Column(UUID(as_uuid=True), primary_key=True)
    )
    mailbox_id: uuid.UUID = Field(sa_column=Column(UUID(as_uuid=True), nullable=False))
    requested_by: str | None = Field(default=None, sa_column=Column(Text))
    after: str | None = Field(default=None, sa_column=Column(Text))
    batch: int = Field(default=0, sa_column=Column(BigInteger, nullable=False, server_default="0"))
    emitted: int = Field(
        default=0, sa_column=Column(BigInteger, nullable=False, server_default="0")
    )
    total_estimate: int | None = Field(default=None, sa_column=Column(BigInteger))
    created_at: datetime | None = _ts(nullable=False, default_now=True)
    updated_at: datetime | None = _ts(nullable=False, default_now=True)
    finished_at: datetime | None = _ts()


class MonitorRepair(SQLModel, table=True):
    """What the completion monitor found in one stream or label, and what its repair left."""

    __tablename__ = "monitor_repairs"
    __table_args__ = (Index("ix_monitor_repairs_mailbox", "mailbox_id", "detected_at"),)

    id: int | None = Field(
        default=None, sa_column=Column(BigInteger, primary_key=True, autoincrement=True)
    )
    mailbox_id: uuid.UUID = Field(sa_column=Column(UUID(as_uuid=True), nullable=False))
    provider: str = Field(sa_column=Column(Text, nullable=False))
    # "stream" (a Graph folder, the Gmail mailbox) or "label" (a Gmail label)
    scope_kind: str = Field(sa_column=Column(Text, nullable=False))
    scope_key: str = Field(sa_column=Column(Text, nullable=False))
    # "restart": re-enumerated under a new generation; "list": ids listed and diffed
    method: str = Field(sa_column=Column(Text, nullable=False))
    # RepairState (app/sync/states.py)
    state: str = Field(sa_column=Column(Text, nullable=False))
    detected_at: datetime | None = _ts(nullable=False, default_now=True)
    finished_at: datetime | None = _ts()
    provider_total: int = Field(sa_column=Column(BigInteger, nullable=False))
    provider_unread: int | None = Field(default=None, sa_column=Column(BigInteger))
    stored_total_before: int = Field(sa_column=Column(BigInteger, nullable=False))
    stored_unread_before: int | None = Field(default=None, sa_column=Column(BigInteger))
    provider_total_after: int | None = Field(default=None, sa_column=Column(BigInteger))
    provider_unread_after: int | None = Field(default=None, sa_column=Column(BigInteger))
    stored_total_after: int | None = Field(default=None, sa_column=Column(BigInteger))
    stored_unread_after: int | None = Field(default=None, sa_column=Column(BigInteger))
    fetched: int | None = Field(default=None, sa_column=Column(BigInteger))
    removed: int | None = Field(default=None, sa_column=Column(BigInteger))
    relabelled: int | None = Field(default=None, sa_column=Column(BigInteger))
    detail: str | None = Field(default=None, sa_column=Column(Text))


# -- cases (app/sync/cases; migration 0011) -----------------------------------------------


class Case(SQLModel, table=True):
    """A case of a user: contacts whose mail, in the case's mailboxes, is linked to it."""

    __tablename__ = "cases"
    __table_args__ = (UniqueConstraint("user_id", "case_id", name="uq_cases_user_case"),)

    id: int | None = Field(default=None, sa_column=Column(BigInteger, Identity(), primary_key=True))
    user_id: str = Field(sa_column=Column(Text, nullable=False))
    # The caller's own identifier.
    case_id: str = Field(sa_column=Column(Text, nullable=False))
    title: str | None = Field(default=None, sa_column=Column(Text))
    since: date | None = Field(default=None, sa_column=Column(Date))
    # When case.sync_complete was written for the current contacts and mailboxes.
    completed_at: datetime | None = _ts()
    created_at: datetime | None = _ts(nullable=False, default_now=True)
    updated_at: datetime | None = _ts(nullable=False, default_now=True)


class CaseMailbox(SQLModel, table=True):
    __tablename__ = "case_mailboxes"

    case_key: int = Field(
        sa_column=Column(BigInteger, ForeignKey("cases.id", ondelete="CASCADE"), primary_key=True)
    )
    mailbox_id: uuid.UUID = Field(
        sa_column=Column(
            UUID(as_uuid=True),
            ForeignKey("mailboxes.id", ondelete="CASCADE"),
            primary_key=True,
            index=True,
        )
    )


class CaseContact(SQLModel, table=True):
    __tablename__ = "case_contacts"

    case_key: int = Field(
        sa_column=Column(BigInteger, ForeignKey("cases.id", ondelete="CASCADE"), primary_key=True)
    )
    # Lower-cased address.
    email: str = Field(sa_column=Column(Text, primary_key=True))
    # The order the caller gave them in.
    position: int | None = Field(
        default=None, sa_column=Column(BigInteger, Identity(), nullable=False)
    )
    created_at: datetime | None = _ts(nullable=False, default_now=True)


class CaseSearch(SQLModel, table=True):
    """One (case, mailbox, contact): how its mail is found, how far that got, and a lease."""

    __tablename__ = "case_searches"

    id: int | None = Field(default=None, sa_column=Column(BigInteger, Identity(), primary_key=True))
    case_key: int = Field(sa_column=Column(BigInteger, nullable=False))
    mailbox_id: uuid.UUID = Field(sa_column=Column(UUID(as_uuid=True), nullable=False))
    email: str = Field(sa_column=Column(Text, nullable=False))
    # EntryStatus (app/sync/cases/states.py); the CHECK constraint holds the names.
    status: str = Field(default="pending", sa_column=Column(Text, nullable=False))
    found: int = Field(default=0, sa_column=Column(BigInteger, nullable=False))
    estimate: int | None = Field(default=None, sa_column=Column(BigInteger))
    requests: int = Field(default=0, sa_column=Column(BigInteger, nullable=False))
    # Checkpointed search windows (app/sync/cases/plan.py).
    plan: dict[str, Any] | None = Field(default=None, sa_column=Column(JSONB))
    last_error: str | None = Field(default=None, sa_column=Column(Text))
    last_error_at: datetime | None = _ts()
    consecutive_failures: int = Field(default=0, sa_column=Column(BigInteger, nullable=False))
    next_run_at: datetime | None = _ts()
    lease_owner: str | None = Field(default=None, sa_column=Column(Text))
    lease_expires_at: datetime | None = _ts()
    fencing_token: int = Field(default=0, sa_column=Column(BigInteger, nullable=False))
    completed_at: datetime | None = _ts()
    created_at: datetime | None = _ts(nullable=False, default_now=True)
    updated_at: datetime | None = _ts(nullable=False, default_now=True)


class CaseLink(SQLModel, table=True):
    """A message of a case's mailbox linked to the case through one contact."""

    __tablename__ = "case_links"

    case_key: int = Field(sa_column=Column(BigInteger, primary_key=True))
    mailbox_id: uuid.UUID = Field(sa_column=Column(UUID(as_uuid=True), primary_key=True))
    email: str = Field(sa_column=Column(Text, primary_key=True))
    provider_message_id: str = Field(sa_column=Column(Text, primary_key=True))
    linked_at: datetime | None = _ts(nullable=False, default_now=True)
