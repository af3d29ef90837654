"""`mailsync rotate-keys`: re-encrypt every stored secret under the first key of
TOKEN_ENCRYPTION_KEYS, so the keys after it can be dropped.

Safe while workers and the API run: each batch is a short transaction that swaps a value
only if the row still holds the token that was read (compare-and-set, no row locks held
while encrypting), so a token refresh that stores new credentials meanwhile is never
overwritten: its row is read again and rotated if it needs it (a process that already has
the new key first wrote it under that key). Resumable: a row under the first key is left as
it is, so a second run only does what the first did not. A value no configured key opens
is reported by id and left untouched; the run then exits non-zero.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.crypto import SecretDecryptionError, TokenCipher
from app.db.repositories.encrypted import (
    ENCRYPTED_COLUMNS,
    EncryptedColumn,
    EncryptedColumnRepository,
)

# Rows re-read after losing a compare-and-set before giving up on one (a row rewritten
# that often during one run is being written under an old key by some process).
MAX_RACES_PER_ROW = 5
# Whole passes over the tables: the second finds what processes with an old first key
# wrote during the first.
MAX_PASSES = 3


@dataclass
class ColumnReport:
    column: str
    scanned: int = 0
    rotated: int = 0
    current: int = 0
    # Rows written by someone else between our read and our swap (read again).
    raced: int = 0
    failed: list[uuid.UUID] = field(default_factory=list)

    def line(self) -> str:
        return (
            f"{self.column}: {self.scanned} scanned, {self.rotated} re-encrypted, "
            f"{self.current} already under the first key, {self.raced} changed meanwhile "
            f"(read again), {len(self.failed)} undecryptable"
        )


@dataclass
class RotationResult:
    passes: list[list[ColumnReport]] = field(default_factory=list)
    # Values still not under the first key after the last pass (not counting failures).
    behind: int = 0

    @property
    def failed(self) -> list[tuple[str, uuid.UUID]]:
        seen: dict[tuple[str, uuid.UUID], None] = {}
        for reports in self.passes:
            for report in reports:
                for key in report.failed:
                    seen[(report.column, key)] = None
        return list(seen)

    @property
    def ok(self) -> bool:
        return not self.failed and self.behind == 0


class KeyRotation:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        cipher: TokenCipher,
        *,
        batch_size: int = 500,
        progress: Callable[[str], None] = lambda line: None,
    ) -> None:
        self._sessions = sessions
        self._cipher = cipher
        self._batch = batch_size
        self._progress = progress

    async def run(self) -> RotationResult:
        result = RotationResult()
        for number in range(1, MAX_PASSES + 1):
            reports = [await self._rotate(column) for column in ENCRYPTED_COLUMNS]
            result.passes.append(reports)
            for report in reports:
                self._progress(f"pass {number}: {report.line()}")
            if not any(r.rotated for r in reports):
                break
        result.behind = await self._count_behind()
        return result

    async def _count_behind(self) -> int:
        """Values that a configured key opens but that are not under the first key."""
        behind = 0
        for column in ENCRYPTED_COLUMNS:
            after: uuid.UUID | None = None
            while True:
                async with self._sessions() as session:
                    values = await EncryptedColumnRepository(session, column).page(
                        after, self._batch
                    )
                if not values:
                    break
                after = values[-1].key
                for value in values:
                    if not self._cipher.is_current(value.token) and self._cipher.opens(value.token):
                        behind += 1
        return behind

    async def _rotate(self, column: EncryptedColumn) -> ColumnReport:
        report = ColumnReport(column.name)
        after: uuid.UUID | None = None
        while True:
            async with self._sessions() as session:
                values = await EncryptedColumnRepository(session, column).page(after, self._batch)
            if not values:
                return report
            after = values[-1].key
            report.scanned += len(values)
            changes = []
            for value in values:
                new = self._reencrypt(value.key, value.token, report)
                if new is not None:
                    changes.append((value.key, value.token, new))
            async with self._sessions() as session:
                swapped = await EncryptedColumnRepository(session, column).swap(changes)
                await session.commit()
            report.rotated += len(swapped)
            for key, _, _ in changes:
                if key not in swapped:
                    await self._retry(column, key, report)
            self._progress(f"  {column.name}: {report.scanned} scanned so far")

    def _reencrypt(self, key: uuid.UUID, token: bytes, report: ColumnReport) -> bytes | None:
        """The token under the first key; None when it already is (or cannot be)."""
        if self._cipher.is_current(token):
            report.current += 1
            return None
        try:
            return self._cipher.rotate(token)
        except SecretDecryptionError:
            report.failed.append(key)
            return None

    async def _retry(self, column: EncryptedColumn, key: uuid.UUID, report: ColumnReport) -> None:
        for _ in range(MAX_RACES_PER_ROW):
            report.raced += 1
            async with self._sessions() as session:
                repo = EncryptedColumnRepository(session, column)
                token = await repo.get(key)
                if token is None:  # deleted meanwhile (a disconnect): nothing to rotate
                    return
                if self._cipher.is_current(token):
                    report.current += 1
                    return
                try:
                    new = self._cipher.rotate(token)
                except SecretDecryptionError:
                    report.failed.append(key)
                    return
                swapped = await repo.swap([(key, token, new)])
                await session.commit()
            if swapped:
                report.rotated += 1
                return
