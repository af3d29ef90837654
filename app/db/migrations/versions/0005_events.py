"""events: outbox positions in commit order, compact payloads, publisher indexes, resnapshots

Revision ID: 0005
Revises: 0003
Create Date: 2026-12-01 09:00:00

- `mailboxes.outbox_position` and `outbox_events.position`: a BEFORE INSERT trigger gives
  every outbox row the next position of its mailbox while holding the mailbox row's lock,
  which the writing transaction keeps until it commits; so a mailbox's positions are in
  commit order (ids of concurrent transactions are not), and the publisher keeps them.
  The position is also each message event's `version`.
- `outbox_events.created_at` defaults to the clock (not the transaction's start): the row is the last thing a page writes before its lease fence,
  so it is the commit time give or take a statement, and the events' `ts`.
- `outbox_events.payload` becomes bytea holding JSON, stored EXTERNAL: a page's row holds
  the values of every message it wrote (up to ~0.5 MB), which jsonb would parse and pglz
  would compress inside the page's transaction for nothing; the publisher reads it whole.
- A statement trigger NOTIFYs `mailsync_outbox` (delivered at commit) so publishers wake
  on commit instead of polling.
- Rows written before this revision carry message ids without their values, so they
  cannot become events: they are marked published (a resnapshot gives consumers the
  current state). Lifecycle rows keep their payloads and get positions.
- `message_tombstones`: messages an incremental page removed from their folder, kept a
  day, so a move whose removal commits before its arrival is an `email.updated`.
- `resnapshots`: operator-requested walks over a mailbox's messages that emit
  `email.snapshot` in bounded, resumable batches.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

NOTIFY_CHANNEL = "mailsync_outbox"


def upgrade() -> None:
    ts = sa.DateTime(timezone=True)
    op.add_column(
        "mailboxes",
        sa.Column("outbox_position", sa.BigInteger(), nullable=False, server_default="0"),
    )
    op.add_column("outbox_events", sa.Column("position", sa.BigInteger(), nullable=True))
    op.execute(
        "UPDATE outbox_events SET published_at = now() "
        "WHERE kind = 'messages.changed' AND published_at IS NULL"
    )
    op.execute(
        """
        UPDATE outbox_events o SET position = n.position
          FROM (SELECT id, row_number() OVER (PARTITION BY mailbox_id ORDER BY id) AS position
                  FROM outbox_events) n
         WHERE n.id = o.id
        """
    )
    op.execute(
        """
        UPDATE mailboxes m SET outbox_position = p.last
          FROM (SELECT mailbox_id, max(position) AS last FROM outbox_events GROUP BY 1) p
         WHERE p.mailbox_id = m.id
        """
    )
    op.execute(
        "ALTER TABLE outbox_events ALTER COLUMN payload TYPE bytea "
        "USING convert_to(payload::text, 'UTF8')"
    )
    op.execute("ALTER TABLE outbox_events ALTER COLUMN payload SET STORAGE EXTERNAL")
    op.alter_column("outbox_events", "created_at", server_default=sa.text("clock_timestamp()"))
    op.drop_index("ix_outbox_events_mailbox_id", table_name="outbox_events")
    op.create_index("ix_outbox_events_position", "outbox_events", ["mailbox_id", "position"])
    # What publishers claim, and what pruning deletes; both stay small.
    op.create_index(
        "ix_outbox_events_unpublished",
        "outbox_events",
        ["id"],
        postgresql_where=sa.text("published_at IS NULL"),
    )
    op.create_index("ix_outbox_events_published_at", "outbox_events", ["published_at"])
    op.execute(
        """
        CREATE FUNCTION outbox_events_position() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF NEW.position IS NULL THEN
                UPDATE mailboxes SET outbox_position = outbox_position + 1
                 WHERE id = NEW.mailbox_id
             RETURNING outbox_position INTO NEW.position;
            END IF;
            RETURN NEW;
        END $$
        """
    )
    op.execute(
        "CREATE TRIGGER outbox_events_position BEFORE INSERT ON outbox_events "
        "FOR EACH ROW EXECUTE FUNCTION outbox_events_position()"
    )
    op.execute(
        f"""
        CREATE FUNCTION outbox_events_notify() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM pg_notify('{NOTIFY_CHANNEL}', '');
            RETURN NULL;
        END $$
        """
    )
    op.execute(
        "CREATE TRIGGER outbox_events_notify AFTER INSERT ON outbox_events "
        "FOR EACH STATEMENT EXECUTE FUNCTION outbox_events_notify()"
    )

    # A message an incremental page removed from its folder, for a day: if it appears in
    # another folder meanwhile (a move whose removal committed first), it is an update of
    # a message consumers know, not a second first arrival.
    op.create_table(
        "message_tombstones",
        sa.Column("mailbox_id", sa.UUID(), nullable=False),
        sa.Column("provider_message_id", sa.Text(), nullable=False),
        sa.Column("deleted_at", ts, nullable=False, server_default=sa.text("now()")),
        sa.PrimaryKeyConstraint("mailbox_id", "provider_message_id"),
    )
    op.create_table(
        "resnapshots",
        sa.Column("id", sa.UUID(), nullable=False),
        sa.Column("mailbox_id", sa.UUID(), nullable=False),
        sa.Column("requested_by", sa.Text(), nullable=True),
        # The walk's keyset cursor: the last provider message id emitted.
        sa.Column("after", sa.Text(), nullable=True),
        sa.Column("batch", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("emitted", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("total_estimate", sa.BigInteger(), nullable=True),
        sa.Column("created_at", ts, nullable=False, server_default=sa.text("now()")),
        sa.Column("updated_at", ts, nullable=False, server_default=sa.text("now()")),
        sa.Column("finished_at", ts, nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    # One walk at a time per mailbox: asking again while one runs returns it.
    op.create_index(
        "uq_resnapshots_running",
        "resnapshots",
        ["mailbox_id"],
        unique=True,
        postgresql_where=sa.text("finished_at IS NULL"),
    )


def downgrade() -> None:
    op.drop_index("uq_resnapshots_running", table_name="resnapshots")
    op.drop_table("resnapshots")
    op.drop_table("message_tombstones")
    op.execute("DROP TRIGGER outbox_events_notify ON outbox_events")
    op.execute("DROP FUNCTION outbox_events_notify()")
    op.execute("DROP TRIGGER outbox_events_position ON outbox_events")
    op.execute("DROP FUNCTION outbox_events_position()")
    op.drop_index("ix_outbox_events_published_at", table_name="outbox_events")
    op.drop_index("ix_outbox_events_unpublished", table_name="outbox_events")
    op.drop_index("ix_outbox_events_position", table_name="outbox_events")
    op.create_index("ix_outbox_events_mailbox_id", "outbox_events", ["mailbox_id"])
    op.alter_column("outbox_events", "created_at", server_default=sa.text("now()"))
    op.execute("ALTER TABLE outbox_events ALTER COLUMN payload SET STORAGE EXTENDED")
    op.execute(
        "ALTER TABLE outbox_events ALTER COLUMN payload TYPE jsonb "
        "USING convert_from(payload, 'UTF8')::jsonb"
    )
    op.drop_column("outbox_events", "position")
    op.drop_column("mailboxes", "outbox_position")
