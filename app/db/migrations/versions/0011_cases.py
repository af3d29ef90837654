"""cases: contacts, search entries and message links; mailbox scope; a participants index

Revision ID: 0011
Revises: 0007
Create Date: 2026-12-01 18:30:00

- `mailboxes.scope`: `full` (a mirror of the whole mailbox) or `cases` (only mail exchanged
  with contacts of its owner's cases). The names are app/sync/cases/states.py's at this
  revision.
- `cases` (the caller's `case_id`, unique per user), `case_mailboxes`, `case_contacts`.
- `case_searches`: one entry per (case, mailbox, contact): its status (CHECK: the entry
  states of app/sync/cases/states.py), counters, the search plan (checkpointed windows) and
  a lease with a fencing token, like a mailbox's.
- `case_links`: (case, mailbox, message, contact). A message found for two contacts is
  stored once and linked twice; removing one contact leaves it linked by the other.
- `ix_messages_participants`: GIN over `ARRAY[from_address] || to_addresses ||
  cc_addresses || bcc_addresses`, so "every message with this address" is a bitmap of the
  few matching rows on a mailbox of a million. Addresses are stored lower-cased (both
  mappers lower-case them), so the index holds plain columns. Measured on 60k messages in
  1000-message pages (`python -m bench.cases --only index`, three rounds each): the plain
  expression writes at 0.88-1.05 of no index (within the machine's noise), the same
  lower-cased in an IMMUTABLE function at 0.64-0.69, a participants table (a row per
  address, the other candidate) at 0.29. fastupdate stays on: a page's entries go to the
  pending list.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0011"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_SCOPES = ("full", "cases")
_ENTRY_STATUSES = ("pending", "syncing", "complete", "error", "auth_expired")


def _in(column: str, names: Sequence[str]) -> str:
    return f"{column} IN ({', '.join(repr(n) for n in names)})"


def _ts(name: str, *, now: bool = False) -> sa.Column[datetime]:
    return sa.Column(
        name,
        sa.DateTime(timezone=True),
        nullable=not now,
        server_default=sa.text("now()") if now else None,
    )


def upgrade() -> None:
    op.add_column("mailboxes", sa.Column("scope", sa.Text(), nullable=False, server_default="full"))
    op.create_check_constraint("ck_mailboxes_scope", "mailboxes", _in("scope", _SCOPES))

    op.create_table(
        "cases",
        sa.Column("id", sa.BigInteger(), sa.Identity(), primary_key=True),
        sa.Column("user_id", sa.Text(), nullable=False),
        sa.Column("case_id", sa.Text(), nullable=False),
        sa.Column("title", sa.Text(), nullable=True),
        sa.Column("since", sa.Date(), nullable=True),
        # When case.sync_complete was written for the case's current contacts and mailboxes.
        _ts("completed_at"),
        _ts("created_at", now=True),
        _ts("updated_at", now=True),
        sa.UniqueConstraint("user_id", "case_id", name="uq_cases_user_case"),
    )
    op.create_table(
        "case_mailboxes",
        sa.Column(
            "case_key", sa.BigInteger(), sa.ForeignKey("cases.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column(
            "mailbox_id", sa.UUID(), sa.ForeignKey("mailboxes.id", ondelete="CASCADE"),
            primary_key=True,
        ),
    )  # fmt: skip
    # Every page a mailbox commits asks whether the mailbox belongs to a case.
    op.create_index("ix_case_mailboxes_mailbox", "case_mailboxes", ["mailbox_id"])
    op.create_table(
        "case_contacts",
        sa.Column(
            "case_key", sa.BigInteger(), sa.ForeignKey("cases.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("email", sa.Text(), primary_key=True),
        # The order the caller gave them in.
        sa.Column("position", sa.BigInteger(), sa.Identity(), nullable=False),
        _ts("created_at", now=True),
    )  # fmt: skip
    op.create_table(
        "case_searches",
        sa.Column("id", sa.BigInteger(), sa.Identity(), primary_key=True),
        sa.Column("case_key", sa.BigInteger(), nullable=False),
        sa.Column("mailbox_id", sa.UUID(), nullable=False),
        sa.Column("email", sa.Text(), nullable=False),
        sa.Column("status", sa.Text(), nullable=False, server_default="pending"),
        sa.Column("found", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("estimate", sa.BigInteger(), nullable=True),
        sa.Column("requests", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("plan", postgresql.JSONB(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        _ts("last_error_at"),
        sa.Column("consecutive_failures", sa.BigInteger(), nullable=False, server_default="0"),
        _ts("next_run_at"),
        sa.Column("lease_owner", sa.Text(), nullable=True),
        _ts("lease_expires_at"),
        sa.Column("fencing_token", sa.BigInteger(), nullable=False, server_default="0"),
        _ts("completed_at"),
        _ts("created_at", now=True),
        _ts("updated_at", now=True),
        sa.UniqueConstraint("case_key", "mailbox_id", "email", name="uq_case_searches_entry"),
        sa.ForeignKeyConstraint(
            ["case_key", "email"],
            ["case_contacts.case_key", "case_contacts.email"],
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["case_key", "mailbox_id"],
            ["case_mailboxes.case_key", "case_mailboxes.mailbox_id"],
            ondelete="CASCADE",
        ),
        sa.CheckConstraint(_in("status", _ENTRY_STATUSES), name="ck_case_searches_status"),
    )
    op.create_index("ix_case_searches_mailbox", "case_searches", ["mailbox_id", "status"])
    op.create_index("ix_case_searches_next_run_at", "case_searches", ["next_run_at"])
    op.create_index("ix_case_searches_lease_expires_at", "case_searches", ["lease_expires_at"])
    # No foreign keys: links are written beside a mailbox's pages (each key check would be a
    # lookup per row) and are removed explicitly with the entry, the contact or the case.
    op.create_table(
        "case_links",
        sa.Column("case_key", sa.BigInteger(), nullable=False),
        sa.Column("mailbox_id", sa.UUID(), nullable=False),
        sa.Column("email", sa.Text(), nullable=False),
        sa.Column("provider_message_id", sa.Text(), nullable=False),
        _ts("linked_at", now=True),
        sa.PrimaryKeyConstraint("case_key", "mailbox_id", "email", "provider_message_id"),
    )
    # "Is this message still linked by any case?" (removing a contact from a cases-only
    # mailbox) and the case listing's join to messages.
    op.create_index("ix_case_links_message", "case_links", ["mailbox_id", "provider_message_id"])
    op.execute(
        "CREATE INDEX ix_messages_participants ON messages USING gin "
        "((ARRAY[from_address] || to_addresses || cc_addresses || bcc_addresses))"
    )


def downgrade() -> None:
    op.execute("DROP INDEX IF EXISTS ix_messages_participants")
    op.drop_table("case_links")
    op.drop_table("case_searches")
    op.drop_table("case_contacts")
    op.drop_table("case_mailboxes")
    op.drop_table("cases")
    op.drop_constraint("ck_mailboxes_scope", "mailboxes", type_="check")
    op.drop_column("mailboxes", "scope")
