"""targeted passes: pending streams, the stream catalog, the periodic pass's own due time

Revision ID: 0013
Revises: 0012
Create Date: 2026-11-30 21:45:00

- `pending_streams`: what change notifications pointed to since a pass last began, one row
  per (mailbox, stream, message, locate); a redelivered notification adds nothing (the
  primary key). Both `stream_key` and `message_id` empty means "every stream" (a
  notification that names nothing, `missed`). A pass takes the rows it read when it begins.
- `stream_catalogs`: a provider's stream discovery as it left it (Graph: the folder set,
  the folder deltaLink, the well-known folder ids), so a pass on any worker follows the
  folder delta with one request instead of discovering the mailbox again.
- `mailboxes.full_pass_at`: when the next pass over every stream is due (NULL: at the next
  pass). `next_sync_at` is when the next pass of any kind is due.
- `ix_mailboxes_disconnected`: the scheduler looks for disconnected mailboxes whose
  credentials linger on every tick; among ten thousand mailboxes, without reading them all.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("mailboxes", sa.Column("full_pass_at", sa.DateTime(timezone=True)))
    op.create_index(
        "ix_mailboxes_disconnected",
        "mailboxes",
        ["id"],
        postgresql_where=sa.text("status = 'disconnected'"),
    )
    op.create_table(
        "pending_streams",
        sa.Column(
            "mailbox_id",
            postgresql.UUID(as_uuid=True),
            sa.ForeignKey("mailboxes.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("stream_key", sa.Text(), nullable=False, server_default=""),
        sa.Column("message_id", sa.Text(), nullable=False, server_default=""),
        sa.Column("locate", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column(
            "noted_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.text("now()")
        ),
        sa.PrimaryKeyConstraint(
            "mailbox_id", "stream_key", "message_id", "locate", name="pk_pending_streams"
        ),
    )
    op.create_table(
        "stream_catalogs",
        sa.Column(
            "mailbox_id",
            postgresql.UUID(as_uuid=True),
            sa.ForeignKey("mailboxes.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("state", postgresql.JSONB(), nullable=False),
        sa.Column(
            "refreshed_at",
            sa.DateTime(timezone=True),
            nullable=False,
            server_default=sa.text("now()"),
        ),
    )


def downgrade() -> None:
    op.drop_table("stream_catalogs")
    op.drop_table("pending_streams")
    op.drop_index("ix_mailboxes_disconnected", table_name="mailboxes")
    op.drop_column("mailboxes", "full_pass_at")
