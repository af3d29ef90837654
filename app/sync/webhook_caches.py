"""What a webhook process remembers between groups, so a storm does not repeat work:
Graph subscriptions (their mailbox and encrypted clientState), a keyed hash of each
clientState, and which mailboxes' sync jobs it saw to. Each is bounded, and a stale entry
never makes a notification count for more than it is (see each class)."""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from app.crypto import SecretDecryptionError, TokenCipher

log = logging.getLogger(__name__)

# Graph subscriptions whose mailbox and clientState are kept without asking again.
SUBSCRIPTION_TTL_SECONDS = 30.0
SUBSCRIPTION_CACHE = 100_000
# Subscriptions whose clientState hash is cached.
CLIENT_STATE_CACHE = 50_000
# A job this process enqueued is trusted to be queued for at most this long (the
# scheduler re-enqueues a mailbox that is owed a pass within its 5 s tick anyway).
ENQUEUED_TTL_SECONDS = 10.0
ENQUEUED_MEMO = 100_000


@dataclass(frozen=True, slots=True)
class Subscription:
    mailbox_id: uuid.UUID
    client_state: bytes | None
    fetched: float


class SubscriptionCache:
    """Graph subscription id → its mailbox and encrypted clientState, kept a short while so
    a storm does not look each one up again. A stale entry does no harm: a subscription is
    deleted only when its mailbox is disconnected (and the write records those as
    `unknown_subscription`), and a replaced one still maps for an hour."""

    def __init__(self) -> None:
        self._entries: dict[str, Subscription] = {}

    def get(self, subscription_id: str) -> Subscription | None:
        entry = self._entries.get(subscription_id)
        if entry is None or time.monotonic() - entry.fetched > SUBSCRIPTION_TTL_SECONDS:
            return None
        return entry

    def put(self, found: dict[str, tuple[uuid.UUID, bytes | None]]) -> dict[str, Subscription]:
        now = time.monotonic()
        entries = {}
        for subscription_id, (mailbox_id, client_state) in found.items():
            entry = Subscription(mailbox_id, client_state, now)
            self._entries.pop(subscription_id, None)
            self._entries[subscription_id] = entries[subscription_id] = entry
        while len(self._entries) > SUBSCRIPTION_CACHE:
            self._entries.pop(next(iter(self._entries)))
        return entries


class EnqueuedJobs:
    """When this process last saw to it that a mailbox's sync job was queued (database
    time). Until a slice of the mailbox starts after that, the job is still waiting."""

    def __init__(self) -> None:
        self._at: dict[uuid.UUID, datetime] = {}

    def needed(
        self, mailbox_id: uuid.UUID, sync_started_at: datetime | None, now: datetime
    ) -> bool:
        at = self._at.get(mailbox_id)
        if at is None or (now - at).total_seconds() > ENQUEUED_TTL_SECONDS:
            return True
        return sync_started_at is not None and sync_started_at >= at

    def record(self, mailbox_ids: Sequence[uuid.UUID], now: datetime) -> None:
        for mailbox_id in mailbox_ids:
            self._at.pop(mailbox_id, None)
            self._at[mailbox_id] = now
        while len(self._at) > ENQUEUED_MEMO:
            self._at.pop(next(iter(self._at)))


class ClientStateCheck:
    def __init__(self, cipher: TokenCipher) -> None:
        self._cipher = cipher
        self._key = os.urandom(32)
        self._digests: dict[bytes, bytes] = {}

    def _digest(self, value: str) -> bytes:
        # Keyed BLAKE2b: a MAC in one C call (hmac.new costs several times as much).
        return hashlib.blake2b(value.encode(), key=self._key, digest_size=32).digest()

    def matches(self, encrypted: bytes | None, presented: str | None) -> bool:
        """Constant-time; a subscription without a clientState never matches."""
        if not encrypted or presented is None:
            return False
        expected = self._digests.get(encrypted)
        if expected is None:
            try:
                secret = self._cipher.decrypt(encrypted)
            except SecretDecryptionError:
                log.error(
                    "a subscription's clientState cannot be decrypted with the configured keys"
                )
                return False
            if not secret:
                return False
            expected = self._digest(secret)
            if len(self._digests) >= CLIENT_STATE_CACHE:
                # Evict the oldest entry (dicts keep insertion order).
                self._digests.pop(next(iter(self._digests)))
            self._digests[encrypted] = expected
        return hmac.compare_digest(expected, self._digest(presented))
