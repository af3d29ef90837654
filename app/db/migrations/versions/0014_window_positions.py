"""window positions: how far a backfill window has listed, so an idle worker can take half
of what a busy one has left

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-01 00:30:00

- `backfill_partitions.listed_before`: every message of the window received before this
  moment has been written (a provider that lists oldest first says so with each page;
  NULL: it cannot say, and the window is never shared). `listed_from`: the oldest received
  time the window's first such page held. A worker with no window left to claim estimates
  from them what each held window has left, splits the one with the most, and takes the
  second half (app/sync/partitions.py), so the last windows of a backfill do not run alone.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("backfill_partitions", sa.Column("listed_from", sa.DateTime(timezone=True)))
    op.add_column("backfill_partitions", sa.Column("listed_before", sa.DateTime(timezone=True)))


def downgrade() -> None:
    op.drop_column("backfill_partitions", "listed_before")
    op.drop_column("backfill_partitions", "listed_from")
