"""backfill partitions: a large stream's first enumeration, split into leased windows

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-30 21:40:00

- `backfill_partitions`: one row per window of received times [window_start, window_end)
  of one stream's enumeration at one generation (NULL bounds are open). Each row is a lease
  (owner, expiry, fencing token) with its own checkpoint (the provider's position inside the
  window), so any worker may claim it with FOR UPDATE SKIP LOCKED and resume a dead
  worker's window where its last page committed.
- `backfill_streams`: the stream's live cursor, taken before its partitions were planned
  and followed once every partition is done; a row exists while the stream is partitioned.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _ts(name: str, *, now: bool = False) -> sa.Column[datetime]:
    return sa.Column(
        name,
        sa.DateTime(timezone=True),
        nullable=not now,
        server_default=sa.text("now()") if now else None,
    )


def upgrade() -> None:
    op.create_table(
        "backfill_streams",
        sa.Column(
            "mailbox_id", sa.UUID(), sa.ForeignKey("mailboxes.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("stream_key", sa.Text(), primary_key=True),
        sa.Column("generation", sa.BigInteger(), nullable=False),
        sa.Column("live_cursor", postgresql.JSONB(), nullable=False),
        _ts("created_at", now=True),
    )  # fmt: skip
    op.create_table(
        "backfill_partitions",
        sa.Column("id", sa.BigInteger(), sa.Identity(), primary_key=True),
        sa.Column("mailbox_id", sa.UUID(), nullable=False),
        sa.Column("stream_key", sa.Text(), nullable=False),
        sa.Column("generation", sa.BigInteger(), nullable=False),
        _ts("window_start"),
        _ts("window_end"),
        sa.Column("checkpoint", postgresql.JSONB(), nullable=True),
        sa.Column("done", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("listed", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("lease_owner", sa.Text(), nullable=True),
        _ts("lease_expires_at"),
        sa.Column("fencing_token", sa.BigInteger(), nullable=False, server_default="0"),
        _ts("created_at", now=True),
        _ts("updated_at", now=True),
        sa.ForeignKeyConstraint(
            ["mailbox_id", "stream_key"],
            ["backfill_streams.mailbox_id", "backfill_streams.stream_key"],
            ondelete="CASCADE",
        ),
    )
    # Claims look for a mailbox's windows still to do.
    op.create_index(
        "ix_backfill_partitions_open",
        "backfill_partitions",
        ["mailbox_id", "stream_key"],
        postgresql_where=sa.text("NOT done"),
    )


def downgrade() -> None:
    op.drop_index("ix_backfill_partitions_open", table_name="backfill_partitions")
    op.drop_table("backfill_partitions")
    op.drop_table("backfill_streams")
