"""completion monitor: verification schedule, push health, repairs, shared push channels

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02 10:00:00

The names in the CHECK constraints are those of app/sync/states.py at this revision.

- `mailboxes.next_verify_at`: when the completion monitor next compares the mailbox with
  the provider's counts (spread over the interval, so mailboxes do not come due together).
- `mailboxes.verify_suspect` / `verify_suspect_at` / `verify_attempts`: a difference seen
  once and not yet confirmed (a change may have been in flight); it is acted on only when
  the same difference is seen again after a completed pass.
- `mailboxes.push_state`: whether provider notifications reach the mailbox (`active`,
  `none`, `failing`); a mailbox without working push is polled fast.
- `subscriptions.channel`: the provider-side channel a subscription stands for. Gmail has
  one watch per address, shared by every mailbox of that address (users.stop ends it for
  all of them); Graph subscriptions are each their own channel.
- `monitor_repairs`: what each repair found and what it left (counts before and after).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB, UUID

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_PUSH = ("active", "none", "failing")
_REPAIR = ("running", "done", "failed")


def _in(column: str, names: Sequence[str]) -> str:
    return f"{column} IN ({', '.join(repr(n) for n in names)})"


def upgrade() -> None:
    ts = sa.DateTime(timezone=True)
    op.add_column("mailboxes", sa.Column("next_verify_at", ts, nullable=True))
    op.add_column("mailboxes", sa.Column("verify_suspect", JSONB, nullable=True))
    op.add_column("mailboxes", sa.Column("verify_suspect_at", ts, nullable=True))
    op.add_column(
        "mailboxes",
        sa.Column("verify_attempts", sa.Integer(), nullable=False, server_default="0"),
    )
    op.add_column(
        "mailboxes",
        sa.Column("push_state", sa.Text(), nullable=False, server_default="none"),
    )
    op.create_check_constraint("ck_mailboxes_push_state", "mailboxes", _in("push_state", _PUSH))
    op.create_index("ix_mailboxes_next_verify_at", "mailboxes", ["next_verify_at"])
    # Mailboxes from before with a live channel have working push.
    op.execute(
        "UPDATE mailboxes m SET push_state = 'active' WHERE EXISTS ("
        "SELECT 1 FROM subscriptions s WHERE s.mailbox_id = m.id AND s.status = 'active' "
        "AND s.expires_at > now())"
    )

    op.add_column("subscriptions", sa.Column("channel", sa.Text(), nullable=True))
    op.create_index("ix_subscriptions_channel", "subscriptions", ["channel"])

    op.create_table(
        "monitor_repairs",
        sa.Column("id", sa.BigInteger(), primary_key=True, autoincrement=True),
        sa.Column("mailbox_id", UUID(as_uuid=True), nullable=False),
        sa.Column("provider", sa.Text(), nullable=False),
        # "stream" (a Graph folder, the Gmail mailbox) or "label" (a Gmail label)
        sa.Column("scope_kind", sa.Text(), nullable=False),
        sa.Column("scope_key", sa.Text(), nullable=False),
        # "restart" (re-enumerated under a new generation) or "list" (ids listed and diffed)
        sa.Column("method", sa.Text(), nullable=False),
        sa.Column("state", sa.Text(), nullable=False),
        sa.Column("detected_at", ts, nullable=False, server_default=sa.text("now()")),
        sa.Column("finished_at", ts, nullable=True),
        sa.Column("provider_total", sa.BigInteger(), nullable=False),
        sa.Column("provider_unread", sa.BigInteger(), nullable=True),
        sa.Column("stored_total_before", sa.BigInteger(), nullable=False),
        sa.Column("stored_unread_before", sa.BigInteger(), nullable=True),
        sa.Column("provider_total_after", sa.BigInteger(), nullable=True),
        sa.Column("provider_unread_after", sa.BigInteger(), nullable=True),
        sa.Column("stored_total_after", sa.BigInteger(), nullable=True),
        sa.Column("stored_unread_after", sa.BigInteger(), nullable=True),
        # What a listing repair changed: fetched, removed, relabelled messages.
        sa.Column("fetched", sa.BigInteger(), nullable=True),
        sa.Column("removed", sa.BigInteger(), nullable=True),
        sa.Column("relabelled", sa.BigInteger(), nullable=True),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.CheckConstraint(_in("state", _REPAIR), name="ck_monitor_repairs_state"),
    )
    op.create_index("ix_monitor_repairs_mailbox", "monitor_repairs", ["mailbox_id", "detected_at"])


def downgrade() -> None:
    op.drop_index("ix_monitor_repairs_mailbox", table_name="monitor_repairs")
    op.drop_table("monitor_repairs")
    op.drop_index("ix_subscriptions_channel", table_name="subscriptions")
    op.drop_column("subscriptions", "channel")
    op.drop_index("ix_mailboxes_next_verify_at", table_name="mailboxes")
    op.drop_constraint("ck_mailboxes_push_state", "mailboxes", type_="check")
    for name in (
        "push_state",
        "verify_attempts",
        "verify_suspect_at",
        "verify_suspect",
        "next_verify_at",
    ):
        op.drop_column("mailboxes", name)
