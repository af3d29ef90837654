"""connect job: the id suffix of a connect's first sync job, until that job takes the lease

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-01 06:30:00

- `mailboxes.connect_job`: the suffix of the job `POST /mail/connect` enqueued after its
  commit (`sync:{id}:{connect_job}`), cleared when a slice takes the mailbox's lease. The
  scheduler and the completion monitor re-enqueue a first sync that is due under this very
  id: while the connect's job waits in Redis (a burst of connects queues thousands), ARQ
  collapses the two into one; if Redis lost it, it is made again. Before, each tick queued
  a second job for every mailbox still waiting, and each ran a whole second pass.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("mailboxes", sa.Column("connect_job", sa.Text()))


def downgrade() -> None:
    op.drop_column("mailboxes", "connect_job")
