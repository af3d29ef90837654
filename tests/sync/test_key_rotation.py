"""`mailsync rotate-keys`: every secret ends under the first key, in batches, resumably,
without losing a refresh that races it; undecryptable rows are reported, never dropped."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from cryptography.fernet import Fernet
from sqlalchemy import text

from app import cli
from app.config import get_settings
from app.crypto import SecretDecryptionError, TokenCipher
from app.db.repositories.credentials import CredentialRepository
from app.db.repositories.mailboxes import MailboxRepository
from app.db.repositories.subscriptions import SubscriptionRepository
from app.sync.key_rotation import KeyRotation
from app.sync.runtime import Runtime

OLD = Fernet.generate_key().decode()
NEW = Fernet.generate_key().decode()
old_cipher = TokenCipher([OLD])
rotating = TokenCipher([NEW, OLD])
new_only = TokenCipher([NEW])


async def _seed(rt: Runtime, count: int) -> list[uuid.UUID]:
    ids = []
    async with rt.sessions() as session:
        for i in range(count):
            mailbox = await MailboxRepository(session).upsert_for_connect(
                user_id=f"u{i}",
                provider="microsoft",
                account_key=f"u{i}@contoso.com",
                email=f"u{i}@contoso.com",
                auth_mode="delegated",
                tenant_id=None,
                provider_user_id=None,
            )
            await CredentialRepository(session, old_cipher).put(
                mailbox.id,
                access_token=f"access-{i}",
                refresh_token=f"refresh-{i}",
                expires_at=datetime.now(UTC) + timedelta(hours=1),
            )
            await SubscriptionRepository(session, old_cipher).replace_active(
                mailbox.id,
                provider="microsoft",
                subscription_id=f"sub-{i}",
                expires_at=datetime.now(UTC) + timedelta(days=2),
                client_state=f"state-{i}",
                resource="me/messages",
            )
            ids.append(mailbox.id)
        await session.commit()
    return ids


async def _secrets(rt: Runtime, cipher: TokenCipher, ids: list[uuid.UUID]) -> list[tuple[str, str]]:
    out = []
    async with rt.sessions() as session:
        for mailbox_id in ids:
            cred = await CredentialRepository(session, cipher).get(mailbox_id)
            sub = await SubscriptionRepository(session, cipher).active_for(mailbox_id)
            assert cred is not None and sub is not None and cred.refresh_token
            out.append((cred.refresh_token, sub.client_state or ""))
    return out


async def test_rotation_moves_every_secret_to_the_first_key(rt: Runtime) -> None:
    ids = await _seed(rt, 23)
    lines: list[str] = []
    result = await KeyRotation(rt.sessions, rotating, batch_size=5, progress=lines.append).run()
    assert result.ok
    first = result.passes[0]
    assert [(r.column, r.scanned, r.rotated, r.current) for r in first] == [
        ("credentials.secret", 23, 23, 0),
        ("subscriptions.client_state", 23, 23, 0),
    ]
    assert any("23 re-encrypted" in line for line in lines)
    # The old key can go: everything opens with the new one alone.
    assert await _secrets(rt, new_only, ids) == [(f"refresh-{i}", f"state-{i}") for i in range(23)]
    with pytest.raises(SecretDecryptionError):
        await _secrets(rt, old_cipher, ids[:1])
    # Resumable and idempotent: a second run finds nothing to do.
    again = await KeyRotation(rt.sessions, rotating, batch_size=5).run()
    assert again.ok and [(r.rotated, r.current) for r in again.passes[0]] == [(0, 23), (0, 23)]


async def test_an_undecryptable_row_is_reported_not_dropped(rt: Runtime) -> None:
    ids = await _seed(rt, 4)
    stranger = TokenCipher([Fernet.generate_key().decode()])
    broken = stranger.encrypt_json({"access_token": "a", "refresh_token": "r"})
    async with rt.engine.begin() as conn:
        await conn.execute(
            text("UPDATE credentials SET secret = :s WHERE mailbox_id = :id"),
            {"s": broken, "id": ids[2]},
        )
    result = await KeyRotation(rt.sessions, rotating, batch_size=3).run()
    assert not result.ok
    assert result.failed == [("credentials.secret", ids[2])]
    async with rt.sessions() as session:
        kept = await session.scalar(
            text("SELECT secret FROM credentials WHERE mailbox_id = :id"), {"id": ids[2]}
        )
    assert bytes(kept) == broken
    others = [i for i in ids if i != ids[2]]
    assert [r for r, _ in await _secrets(rt, new_only, others)] == [
        "refresh-0",
        "refresh-1",
        "refresh-3",
    ]


async def _wait_for_lock_wait(rt: Runtime, table: str) -> None:
    async with asyncio.timeout(10):
        while True:
            async with rt.sessions() as session:
                waiting = await session.scalar(
                    text(
                        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                        "AND wait_event_type = 'Lock' AND query LIKE :q"
                    ),
                    {"q": f"%UPDATE {table}%"},
                )
            if waiting:
                return
            await asyncio.sleep(0.02)


async def test_a_refresh_racing_the_rotation_keeps_its_new_refresh_token(rt: Runtime) -> None:
    ids = await _seed(rt, 6)
    racing = ids[3]
    # A worker still configured with the old key alone refreshes mailbox 3 exactly while
    # the rotation swaps its batch: it holds the credential row lock (as TokenSource does).
    async with rt.sessions() as refresh, refresh.begin():
        repo = CredentialRepository(refresh, old_cipher)
        assert await repo.get(racing, for_update=True) is not None
        rotation = asyncio.create_task(KeyRotation(rt.sessions, rotating, batch_size=10).run())
        await _wait_for_lock_wait(rt, "credentials")
        await repo.put(
            racing,
            access_token="fresh-access",
            refresh_token="rotated-by-the-provider",
            expires_at=datetime.now(UTC) + timedelta(hours=1),
        )
    result = await rotation
    assert result.ok
    assert result.passes[0][0].raced >= 1
    secrets = await _secrets(rt, new_only, ids)
    assert secrets[3][0] == "rotated-by-the-provider"
    assert [r for r, _ in secrets[:3] + secrets[4:]] == [f"refresh-{i}" for i in (0, 1, 2, 4, 5)]


async def test_the_command_prints_counts_and_exit_codes(
    rt: Runtime, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    ids = await _seed(rt, 3)
    monkeypatch.setenv("DATABASE_URL", rt.settings.database_url)
    monkeypatch.setenv("MAILSYNC_ENV", "test")
    monkeypatch.setenv("TOKEN_ENCRYPTION_KEYS", f"{NEW},{OLD}")
    get_settings.cache_clear()
    try:
        assert await asyncio.to_thread(cli.main, ["rotate-keys", "--batch-size", "2"]) == 0
        out = capsys.readouterr().out
        assert "credentials.secret: 3 scanned, 3 re-encrypted" in out
        assert "the other keys can be removed" in out

        # An old key dropped too early: the rows it encrypted are reported by id.
        async with rt.sessions() as session:
            await CredentialRepository(session, old_cipher).put(
                ids[1], access_token="a", refresh_token="r", expires_at=None
            )
            await session.commit()
        monkeypatch.setenv("TOKEN_ENCRYPTION_KEYS", NEW)
        get_settings.cache_clear()
        assert await asyncio.to_thread(cli.main, ["rotate-keys"]) == 1
        err = capsys.readouterr().err
        assert f"credentials.secret of row {ids[1]}" in err
    finally:
        get_settings.cache_clear()
