"""What every process did lately, summed across processes, for the operator dashboard.

Prometheus holds the long view of each process; the dashboard needs the last 1/5/15
minutes summed over every worker and API process without a Prometheus server. So each
process adds its counts to ten-second buckets in Redis (a hash per bucket, expiring after
the longest window), flushed once a second from memory: the hot paths only add to a
dict. Losing them loses nothing but the figures of the last minutes, and they never hold
a token or a message: names and numbers only.

Recent errors of a mailbox (its last few, with when and what) live beside them in a short
capped list per mailbox; `last_error` in PostgreSQL stays the truth.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

BUCKET_SECONDS = 10
WINDOWS_MINUTES = (1, 5, 15)
_KEEP_SECONDS = max(WINDOWS_MINUTES) * 60 + 2 * BUCKET_SECONDS
_PREFIX = "mailsync:activity:"
_ERRORS_PREFIX = "mailsync:errors:"
ERRORS_KEPT = 20
_ERRORS_TTL_SECONDS = 7 * 24 * 3600

# The names processes add to (one place, so the dashboard and writers agree).
MESSAGES_WRITTEN = "messages_written"
PAGES_WRITTEN = "pages_written"
WEBHOOKS_ACCEPTED = "webhooks_accepted"
WEBHOOKS_REFUSED = "webhooks_refused"
TOKEN_REFRESHES = "token_refreshes"  # noqa: S105 - a counter name
TOKEN_REFRESH_FAILURES = "token_refresh_failures"  # noqa: S105
THROTTLED = "throttled"
SYNC_ERRORS = "sync_errors"


def _bucket(now: float) -> int:
    return int(now // BUCKET_SECONDS)


@dataclass(frozen=True, slots=True)
class RecentError:
    at: float
    kind: str
    message: str


class Activity:
    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        # bucket -> counts: a flush that comes late still files counts where they happened.
        self._pending: dict[int, Counter[str]] = {}
        self._task: asyncio.Task[None] | None = None

    def add(self, name: str, amount: int = 1) -> None:
        """Count something now; it reaches Redis with the next flush."""
        bucket = _bucket(time.time())
        counts = self._pending.get(bucket)
        if counts is None:
            counts = self._pending[bucket] = Counter()
        counts[name] += amount

    async def flush(self) -> None:
        if not self._pending:
            return
        pending, self._pending = self._pending, {}
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for bucket, counts in pending.items():
                    key = f"{_PREFIX}{bucket}"
                    for name, amount in counts.items():
                        pipe.hincrby(key, name, amount)
                    pipe.expire(key, _KEEP_SECONDS)
                await pipe.execute()
        except (RedisError, OSError) as exc:
            log.debug("activity flush failed (%s); these figures are lost", exc)

    def start(self, interval: float = 1.0) -> None:
        async def loop() -> None:
            while True:
                await asyncio.sleep(interval)
                await self.flush()

        if self._task is None:
            self._task = asyncio.create_task(loop(), name="activity-flush")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self.flush()

    async def windows(self) -> dict[int, dict[str, int]]:
        """Sums over the last 1, 5 and 15 minutes: {minutes: {name: count}}."""
        now = _bucket(time.time())
        count = max(WINDOWS_MINUTES) * 60 // BUCKET_SECONDS
        async with self._redis.pipeline(transaction=False) as pipe:
            for offset in range(count):
                pipe.hgetall(f"{_PREFIX}{now - offset}")
            buckets: list[dict[bytes, bytes]] = await pipe.execute()
        result: dict[int, dict[str, int]] = {}
        for minutes in WINDOWS_MINUTES:
            totals: Counter[str] = Counter()
            for bucket in buckets[: minutes * 60 // BUCKET_SECONDS]:
                for name, value in bucket.items():
                    totals[name.decode()] += int(value)
            result[minutes] = dict(totals)
        return result

    async def record_error(self, mailbox_id: uuid.UUID, kind: str, message: str) -> None:
        """Keep a mailbox's last few errors (best effort)."""
        self.add(SYNC_ERRORS)
        key = f"{_ERRORS_PREFIX}{mailbox_id}"
        entry = json.dumps({"at": time.time(), "kind": kind, "message": message[:500]})
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.lpush(key, entry)
                pipe.ltrim(key, 0, ERRORS_KEPT - 1)
                pipe.expire(key, _ERRORS_TTL_SECONDS)
                await pipe.execute()
        except (RedisError, OSError) as exc:
            log.debug("recent error of %s not kept: %s", mailbox_id, exc)

    async def recent_errors(
        self, mailbox_id: uuid.UUID, limit: int = ERRORS_KEPT
    ) -> list[RecentError]:
        # redis-py types its commands for both clients; this one is async.
        raw: list[bytes] = await self._redis.lrange(  # type: ignore[misc]
            f"{_ERRORS_PREFIX}{mailbox_id}", 0, limit - 1
        )
        errors = []
        for item in raw:
            data: dict[str, Any] = json.loads(item)
            errors.append(RecentError(float(data["at"]), str(data["kind"]), str(data["message"])))
        return errors
