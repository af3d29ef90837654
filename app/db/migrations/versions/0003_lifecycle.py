"""lifecycle: status/phase/mode CHECK constraints, pass and pending bookkeeping, stream progress

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30 18:30:00

The names in the CHECK constraints are those of app/sync/states.py at this revision
(a migration is a snapshot: a later state added there needs a migration here too).

- `pass_started_at`: when the running pass began (a pass may span several slices); a
  change requested after it earns another pass. `sync_started_at` stays the slice start.
- `pending_since` / `pending_next`: the oldest change we know of and have not applied, and
  the oldest one that arrived after the running pass began (it becomes `pending_since`
  when that pass completes).
- `connected_at`: the first completed pass (`mailbox.connected` is raised once).
- `failing_since`: entered `error`/`auth_expired` and no pass completed since
  (`mailbox.sync_failed` once, `mailbox.recovered` when a pass completes).
- `last_verified_at`: the completion monitor's last successful check.
- `sync_cursors.enumerated`: messages seen by the stream's current enumeration, so
  progress measures a dead cursor's rebuild instead of claiming 100.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_STATUSES = ("pending", "syncing", "connected", "error", "auth_expired", "disconnected")
_PHASES = ("backfill", "resync", "incremental", "idle")
_MODES = ("full", "incremental")


def _in(column: str, names: Sequence[str]) -> str:
    return f"{column} IN ({', '.join(repr(n) for n in names)})"


def upgrade() -> None:
    ts = sa.DateTime(timezone=True)
    for name in (
        "pass_started_at",
        "pending_since",
        "pending_next",
        "connected_at",
        "failing_since",
        "last_verified_at",
    ):
        op.add_column("mailboxes", sa.Column(name, ts, nullable=True))
    op.add_column(
        "sync_cursors",
        sa.Column("enumerated", sa.BigInteger(), nullable=False, server_default="0"),
    )
    # Rows from before: a mailbox that has completed a pass has been connected.
    op.execute(
        "UPDATE mailboxes SET connected_at = last_synced_at WHERE last_synced_at IS NOT NULL"
    )
    op.execute(
        "UPDATE mailboxes SET failing_since = last_error_at "
        "WHERE status IN ('error', 'auth_expired')"
    )
    op.execute(
        "UPDATE mailboxes SET phase = NULL WHERE phase IS NOT NULL AND NOT "  # noqa: S608
        + _in("phase", _PHASES)
    )
    op.create_check_constraint("ck_mailboxes_status", "mailboxes", _in("status", _STATUSES))
    op.create_check_constraint(
        "ck_mailboxes_phase", "mailboxes", f"phase IS NULL OR {_in('phase', _PHASES)}"
    )
    op.create_check_constraint("ck_sync_cursors_mode", "sync_cursors", _in("mode", _MODES))


def downgrade() -> None:
    op.drop_constraint("ck_sync_cursors_mode", "sync_cursors", type_="check")
    op.drop_constraint("ck_mailboxes_phase", "mailboxes", type_="check")
    op.drop_constraint("ck_mailboxes_status", "mailboxes", type_="check")
    op.drop_column("sync_cursors", "enumerated")
    for name in (
        "last_verified_at",
        "failing_since",
        "connected_at",
        "pending_next",
        "pending_since",
        "pass_started_at",
    ):
        op.drop_column("mailboxes", name)
