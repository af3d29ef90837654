"""webhook audit log: an outcome for every webhook request, counted floods, bounded indexes

Revision ID: 0007
Revises: 0008
Create Date: 2026-11-30 19:00:00

`webhook_notifications` becomes the audit log of every webhook request: `outcome` (the
names of app/sync/webhook_log.py at this revision, held by a CHECK constraint), where it
came from (`source`), what it was answered (`http_status`) and how long that took
(`handling_ms`), `count`/`aggregated` for the rows that stand for a minute of identical
refusals, `dedup_key` (a hash that is equal for redeliveries of one notification) and a
short `detail`. Rows from before were all accepted notifications, except the Gmail pushes
for unknown addresses (`push:unknown`).

Indexes are chosen for an insert-heavy table: the listing of one mailbox (mailbox_id, id),
refusals by outcome (a partial index: accepted and duplicate rows, the bulk, are not in
it), duplicates (a partial index on accepted rows' keys) and a BRIN on received_at for
`since` and pruning, which costs next to nothing per insert.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_OUTCOMES = (
    "accepted",
    "duplicate",
    "validation",
    "lifecycle",
    "forged_client_state",
    "unknown_subscription",
    "missing_token",
    "bad_token",
    "malformed",
    "unavailable",
)
_TABLE = "webhook_notifications"


def upgrade() -> None:
    op.add_column(_TABLE, sa.Column("outcome", sa.Text(), nullable=True))
    op.add_column(_TABLE, sa.Column("source", sa.Text(), nullable=True))
    op.add_column(_TABLE, sa.Column("http_status", sa.SmallInteger(), nullable=True))
    op.add_column(_TABLE, sa.Column("handling_ms", sa.REAL(), nullable=True))
    op.add_column(_TABLE, sa.Column("count", sa.Integer(), nullable=False, server_default="1"))
    op.add_column(
        _TABLE,
        sa.Column("aggregated", sa.Boolean(), nullable=False, server_default=sa.false()),
    )
    op.add_column(_TABLE, sa.Column("dedup_key", sa.Text(), nullable=True))
    op.add_column(_TABLE, sa.Column("detail", sa.Text(), nullable=True))
    op.execute(
        f"UPDATE {_TABLE} SET outcome = CASE "  # noqa: S608 - constant table name
        "WHEN kind = 'push:unknown' THEN 'unknown_subscription' "
        "WHEN kind LIKE 'lifecycle:%' THEN 'lifecycle' ELSE 'accepted' END, "
        "kind = CASE WHEN kind = 'push:unknown' THEN 'push' ELSE kind END"
    )
    op.alter_column(_TABLE, "outcome", nullable=False)
    op.alter_column(_TABLE, "payload", server_default=sa.text("'{}'::jsonb"))
    op.create_check_constraint(
        "ck_webhook_notifications_outcome",
        _TABLE,
        f"outcome IN ({', '.join(repr(o) for o in _OUTCOMES)})",
    )
    op.drop_index("ix_webhook_notifications_mailbox_id", table_name=_TABLE)
    op.create_index("ix_webhook_notifications_mailbox", _TABLE, ["mailbox_id", "id"])
    op.create_index(
        "ix_webhook_notifications_refusals",
        _TABLE,
        ["outcome", "id"],
        postgresql_where=sa.text("outcome NOT IN ('accepted', 'duplicate')"),
    )
    op.create_index(
        "ix_webhook_notifications_dedup",
        _TABLE,
        ["dedup_key"],
        postgresql_where=sa.text("outcome = 'accepted' AND dedup_key IS NOT NULL"),
    )
    op.create_index(
        "ix_webhook_notifications_received_at",
        _TABLE,
        ["received_at"],
        postgresql_using="brin",
    )


def downgrade() -> None:
    op.drop_index("ix_webhook_notifications_received_at", table_name=_TABLE)
    op.drop_index("ix_webhook_notifications_dedup", table_name=_TABLE)
    op.drop_index("ix_webhook_notifications_refusals", table_name=_TABLE)
    op.drop_index("ix_webhook_notifications_mailbox", table_name=_TABLE)
    op.create_index("ix_webhook_notifications_mailbox_id", _TABLE, ["mailbox_id"])
    op.drop_constraint("ck_webhook_notifications_outcome", _TABLE, type_="check")
    op.alter_column(_TABLE, "payload", server_default=None)
    # Before this revision only Gmail's unknown addresses were recorded among refusals.
    op.execute(
        f"UPDATE {_TABLE} SET kind = 'push:unknown' "  # noqa: S608 - constant table name
        "WHERE provider = 'google' AND outcome = 'unknown_subscription'"
    )
    op.execute(
        f"DELETE FROM {_TABLE} WHERE outcome NOT IN ('accepted', 'duplicate', 'lifecycle') "  # noqa: S608
        "AND kind <> 'push:unknown'"
    )
    for name in (
        "detail",
        "dedup_key",
        "aggregated",
        "count",
        "handling_ms",
        "http_status",
        "source",
        "outcome",
    ):
        op.drop_column(_TABLE, name)
