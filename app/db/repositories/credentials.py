"""Encrypted credentials. Plaintext exists only in memory, inside a job that is using it."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from app.crypto import TokenCipher


@dataclass(frozen=True, slots=True)
class StoredCredential:
    access_token: str
    refresh_token: str | None
    expires_at: datetime | None
    version: int

    def __repr__(self) -> str:  # never let a token reach a log line through repr()
        return f"StoredCredential(expires_at={self.expires_at!r}, version={self.version})"


class CredentialRepository:
    def __init__(self, session: AsyncSession, cipher: TokenCipher) -> None:
        self.session = session
        self.cipher = cipher

    async def put(
        self,
        mailbox_id: uuid.UUID,
        *,
        access_token: str,
        refresh_token: str | None,
        expires_at: datetime | None,
    ) -> None:
        secret = self.cipher.encrypt_json(
            {"access_token": access_token, "refresh_token": refresh_token}
        )
        await self.session.execute(
            text(
                """
                INSERT INTO credentials (mailbox_id, secret, access_expires_at)
                VALUES (:id, :secret, :expires_at)
                ON CONFLICT (mailbox_id) DO UPDATE
                   SET secret = EXCLUDED.secret, access_expires_at = EXCLUDED.access_expires_at,
                       version = credentials.version + 1, updated_at = now()
                """
            ),
            {"id": mailbox_id, "secret": secret, "expires_at": expires_at},
        )

    async def get(
        self, mailbox_id: uuid.UUID, *, for_update: bool = False
    ) -> StoredCredential | None:
        """`for_update` serializes refreshes of one mailbox across workers: the second
        waiter then reads the token the first one stored instead of spending a refresh token
        that the provider may already have rotated."""
        lock = " FOR UPDATE" if for_update else ""
        result = await self.session.execute(
            text(
                "SELECT secret, access_expires_at, version FROM credentials "  # noqa: S608
                f"WHERE mailbox_id = :id{lock}"
            ),
            {"id": mailbox_id},
        )
        row = result.one_or_none()
        if row is None:
            return None
        document = self.cipher.decrypt_json(row[0])
        return StoredCredential(
            access_token=document["access_token"],
            refresh_token=document.get("refresh_token"),
            expires_at=row[1],
            version=int(row[2]),
        )

    async def delete(self, mailbox_id: uuid.UUID) -> None:
        await self.session.execute(
            text("DELETE FROM credentials WHERE mailbox_id = :id"), {"id": mailbox_id}
        )
