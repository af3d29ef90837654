"""Every column that holds a secret encrypted with TOKEN_ENCRYPTION_KEYS, for key rotation.

A new encrypted column belongs in ENCRYPTED_COLUMNS, or `mailsync rotate-keys` leaves it
under the old key (and the old key can then not be dropped).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession


@dataclass(frozen=True, slots=True)
class EncryptedColumn:
    table: str
    key: str
    column: str

    @property
    def name(self) -> str:
        return f"{self.table}.{self.column}"


ENCRYPTED_COLUMNS = (
    # OAuth access and refresh tokens (a Fernet token of a JSON document).
    EncryptedColumn("credentials", "mailbox_id", "secret"),
    # Graph subscriptions' clientState.
    EncryptedColumn("subscriptions", "id", "client_state"),
)


@dataclass(frozen=True, slots=True)
class EncryptedValue:
    key: uuid.UUID
    token: bytes


class EncryptedColumnRepository:
    """Reads and swaps one column's values by primary key. The swap is a compare-and-set on
    the stored token: Fernet tokens carry a random IV, so a row still holding the token we
    read has not been written since (a refresh that stored new credentials meanwhile wins,
    and its value is read again)."""

    def __init__(self, session: AsyncSession, column: EncryptedColumn) -> None:
        self.session = session
        self.c = column

    async def page(self, after: uuid.UUID | None, limit: int) -> list[EncryptedValue]:
        c = self.c
        result = await self.session.execute(
            text(
                f"SELECT {c.key} AS key, {c.column} AS token FROM {c.table} "  # noqa: S608 - names from ENCRYPTED_COLUMNS
                f"WHERE {c.column} IS NOT NULL AND (CAST(:after AS uuid) IS NULL OR {c.key} > :after) "
                f"ORDER BY {c.key} LIMIT :limit"
            ),
            {"after": after, "limit": limit},
        )
        return [EncryptedValue(row.key, bytes(row.token)) for row in result.all()]

    async def get(self, key: uuid.UUID) -> bytes | None:
        c = self.c
        token = await self.session.scalar(
            text(f"SELECT {c.column} FROM {c.table} WHERE {c.key} = :key"),  # noqa: S608
            {"key": key},
        )
        return bytes(token) if token is not None else None

    async def swap(self, changes: Sequence[tuple[uuid.UUID, bytes, bytes]]) -> set[uuid.UUID]:
        """Replace each (key, old, new) whose row still holds `old`; the keys swapped."""
        if not changes:
            return set()
        c = self.c
        result = await self.session.execute(
            text(
                f"""
                UPDATE {c.table} AS t SET {c.column} = v.new
                  FROM unnest(CAST(:keys AS uuid[]), CAST(:olds AS bytea[]),
                              CAST(:news AS bytea[])) AS v(key, old, new)
                 WHERE t.{c.key} = v.key AND t.{c.column} = v.old
             RETURNING t.{c.key}
                """  # noqa: S608 - names from ENCRYPTED_COLUMNS
            ),
            {
                "keys": [k for k, _, _ in changes],
                "olds": [o for _, o, _ in changes],
                "news": [n for _, _, n in changes],
            },
        )
        return {row[0] for row in result.all()}
