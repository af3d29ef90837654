"""mailboxes: an index for the operator dashboard's list (by status, then address)

Revision ID: 0008
Revises: 0004
Create Date: 2026-11-30 18:20:00

The dashboard lists mailboxes attention first (by status, in the order app.dashboard.views
gives) and then by address, fifty at a time, and refreshes the page every few seconds.
Without an index every refresh sorted the whole table (10,000 mailboxes: most of the
page's time); with one, each status's slice of a page is an index scan that stops after
the page. Addresses sort in byte order (COLLATE "C"): they are lower-case ASCII, and the
linguistic collation made every comparison several times dearer.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0008"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute(
        'CREATE INDEX IF NOT EXISTS ix_mailboxes_dashboard ON mailboxes (status, email COLLATE "C", id)'
    )


def downgrade() -> None:
    op.execute("DROP INDEX IF EXISTS ix_mailboxes_dashboard")
