"""messages: keyed by (mailbox, provider id); the page fence guards the mailbox reference

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23 03:40:00

A backfill inserts a thousand rows a page, four folders at a time, and each of these cost
CPU on every row: the foreign key to mailboxes (a lookup that locks the mailbox row, which
every page's fence also updates: as much CPU as the rest of the insert) and a primary-key
index on `id` that no query reads. The natural key, which every upsert already probes,
becomes the primary key. `id` stays: it still comes from its sequence, and the listing
index still orders by it.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.drop_constraint("messages_mailbox_id_fkey", "messages", type_="foreignkey")
    op.drop_constraint("messages_pkey", "messages", type_="primary")
    op.drop_constraint("uq_messages_provider_id", "messages", type_="unique")
    op.create_primary_key("messages_pkey", "messages", ["mailbox_id", "provider_message_id"])


def downgrade() -> None:
    op.drop_constraint("messages_pkey", "messages", type_="primary")
    op.create_unique_constraint(
        "uq_messages_provider_id", "messages", ["mailbox_id", "provider_message_id"]
    )
    op.create_primary_key("messages_pkey", "messages", ["id"])
    op.create_foreign_key(
        "messages_mailbox_id_fkey",
        "messages",
        "mailboxes",
        ["mailbox_id"],
        ["id"],
        ondelete="CASCADE",
    )
