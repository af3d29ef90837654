"""reading the mirror: richer metadata, body cache, paused mailboxes, read indexes

Revision ID: 0004
Revises: 0006
Create Date: 2026-11-24 18:00:00

New message columns (names beside the address lists, sent_at, in_reply_to,
reference_ids, size, importance, flagged) are filled by each mailbox's next sync: every
stream's cursor is reset here, so that sync enumerates the mailbox again under a new
generation (rewriting every row it sees, sweeping nothing that still exists).

Indexes. Every index on `messages` is paid by every page a backfill writes, so each
candidate was measured twice: its write cost (`python -m bench.upsert`, first write of
100k messages as a fraction of COPY's speed in the same run; 0.84-0.86 before this
migration's columns) and what it buys on a mailbox of 1,000,000 messages plus 100,000 in
others (`python -m bench.reading`, EXPLAIN ANALYZE of each listing):

| candidate | first write / COPY |
|---|---|
| new columns, no new index | 0.80 |
| GIN full-text (subject, snippet, names) | 0.31 |
| GIN over labels, sender and recipients as terms | 0.32 |
| btree (mailbox, thread, newest first, id) | 0.67 |
| btree (mailbox, thread) | 0.61-0.67 |
| hash (thread) | 0.47 |

Kept:

- The listing index (0001) serves the plain list and every filter: the planner walks it
  newest first, evaluates the filter on each row and stops at `limit` matches. Filters that
  match often (a label like INBOX, unread, attachments, a date range, which also bounds
  the walk) cost a few pages of the index. A rare filter (one correspondent, a word) would
  walk the whole mailbox, so a page reads at most READ_SCAN_BUDGET entries per mailbox and
  answers a short page with a cursor (as Gmail's own list does): latency is bounded, and
  every match is still returned exactly once. Full-text and trigram GIN indexes would make
  those filters direct, at two thirds of the backfill's write speed: not kept.
- ix_messages_thread (mailbox, thread): a thread's messages, and the "no newer message in
  this thread" probe that pages threads without aggregating the mailbox.
- ix_messages_id, BRIN on the public id (GET /mail/messages/{id}): ids come from a
  sequence in insertion order, so block ranges summarise them tightly; it costs a backfill
  next to nothing, where a btree on id cost ~5 ms per 1000-message page (0002).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0004"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    text_array = postgresql.ARRAY(sa.Text())
    op.add_column("messages", sa.Column("from_name", sa.Text(), nullable=True))
    for name in ("to_names", "cc_names", "bcc_names", "reference_ids"):
        op.add_column("messages", sa.Column(name, text_array, server_default="{}", nullable=False))
    op.add_column("messages", sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("messages", sa.Column("in_reply_to", sa.Text(), nullable=True))
    op.add_column("messages", sa.Column("size", sa.BigInteger(), nullable=True))
    op.add_column("messages", sa.Column("importance", sa.Text(), nullable=True))
    op.add_column(
        "messages",
        sa.Column("flagged", sa.Boolean(), server_default=sa.text("false"), nullable=False),
    )
    op.add_column(
        "mailboxes",
        sa.Column("paused", sa.Boolean(), server_default=sa.text("false"), nullable=False),
    )
    op.create_table(
        "message_bodies",
        sa.Column("mailbox_id", sa.UUID(), nullable=False),
        sa.Column("provider_message_id", sa.Text(), nullable=False),
        sa.Column("format", sa.Text(), nullable=False),
        sa.Column("content", sa.Text(), nullable=False),
        sa.Column(
            "attachments",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default="[]",
            nullable=False,
        ),
        sa.Column(
            "fetched_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(["mailbox_id"], ["mailboxes.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("mailbox_id", "provider_message_id", "format"),
    )
    op.create_index("ix_message_bodies_fetched_at", "message_bodies", ["fetched_at"])
    # Equality only (a thread's messages; "is there a newer one in this thread?"): the
    # narrowest btree that serves it, since every backfilled row pays for it.
    op.execute("CREATE INDEX ix_messages_thread ON messages (mailbox_id, thread_id)")
    # GET /mail/messages/{id}: a BRIN index, not a btree. Ids come from a sequence in
    # insertion order, so a block range summarises them tightly, and maintaining it costs
    # a backfill next to nothing (a btree on id cost ~5 ms per 1000-message page: 0002).
    op.execute(
        "CREATE INDEX ix_messages_id ON messages USING brin (id) "
        "WITH (pages_per_range = 16, autosummarize = on)"
    )
    # Every stream enumerates again on its mailbox's next sync, filling the new columns.
    op.execute(
        "UPDATE sync_cursors SET cursor = NULL, mode = 'full', caught_up = false, enumerated = 0, "
        "generation = generation + 1, updated_at = now()"
    )
    op.execute("UPDATE mailboxes SET next_sync_at = now() WHERE next_sync_at IS NOT NULL")


def downgrade() -> None:
    op.drop_index("ix_messages_thread", table_name="messages")
    op.drop_index("ix_messages_id", table_name="messages")
    op.drop_index("ix_message_bodies_fetched_at", table_name="message_bodies")
    op.drop_table("message_bodies")
    op.drop_column("mailboxes", "paused")
    for name in (
        "flagged", "importance", "size", "in_reply_to", "sent_at", "reference_ids",
        "bcc_names", "cc_names", "to_names", "from_name",
    ):  # fmt: skip
        op.drop_column("messages", name)
