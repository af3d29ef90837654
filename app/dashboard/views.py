"""What each dashboard page shows, assembled from the repositories, Redis and the rules of
app.sync; the routes render it, `mailsync status` prints it."""

from __future__ import annotations

import logging
import math
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime

from arq.constants import default_queue_name
from redis.exceptions import RedisError
from sqlalchemy.ext.asyncio import AsyncSession

from app.db.repositories.dashboard import (
    DashboardRepository,
    MailboxFilter,
    MailboxRow,
    NotificationRow,
    OutboxState,
    StatusCount,
    StreamRow,
)
from app.sync.activity import RecentError
from app.sync.mailboxes import percent
from app.sync.runtime import Runtime

log = logging.getLogger(__name__)

PROVIDERS = ("microsoft", "google")
# Attention first: the order of the mailbox list and of the overview's status table.
STATUS_ORDER = ("error", "auth_expired", "syncing", "pending", "connected", "disconnected")
PAGE_SIZE = 50

# What an operator can do about a mailbox in each status.
ADVICE = {
    "auth_expired": (
        "The provider refused the stored grant (revoked, expired or consent withdrawn). "
        "Nothing syncs until the user reconnects the mailbox: POST /mail/connect with new "
        "tokens for the same account."
    ),
    "error": (
        "A permanent provider error, or repeated failures. Retries continue on the sync "
        "interval; fix the cause shown below, then use Sync now."
    ),
    "disconnected": "Disconnected: nothing syncs. The user reconnects through POST /mail/connect.",
}


@dataclass(frozen=True, slots=True)
class MailboxView:
    row: MailboxRow
    percent: int

    @property
    def id(self) -> uuid.UUID:
        return self.row.id

    @property
    def advice(self) -> str | None:
        return ADVICE.get(self.row.status)

    @property
    def syncing_now(self) -> bool:
        lease = self.row.lease_expires_at
        return lease is not None and lease > datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class Rate:
    count: int
    minutes: int

    @property
    def per_second(self) -> float:
        return self.count / (self.minutes * 60)


@dataclass
class Overview:
    counts: list[StatusCount]
    by_status: dict[str, dict[str, int]]
    providers: tuple[str, ...]
    statuses: tuple[str, ...]
    mailboxes_total: int
    messages_stored: int
    windows: dict[int, dict[str, int]]
    queue_ready: int | None
    queue_deferred: int | None
    outbox: OutboxState
    redis_ok: bool = True

    def rate(self, name: str, minutes: int) -> Rate:
        return Rate(self.windows.get(minutes, {}).get(name, 0), minutes)

    @property
    def outbox_lag_seconds(self) -> float | None:
        oldest = self.outbox.oldest_unpublished_at
        if not self.outbox.has_publisher:
            return None
        if oldest is None:
            return 0.0
        return max(0.0, (datetime.now(UTC) - oldest).total_seconds())


@dataclass
class MailboxPage:
    items: list[MailboxView]
    total: int
    page: int
    pages: int
    flt: MailboxFilter


@dataclass
class MailboxDetail:
    mailbox: MailboxView
    streams: list[StreamRow]
    notifications: list[NotificationRow]
    errors: list[RecentError] = field(default_factory=list)


def mailbox_view(row: MailboxRow) -> MailboxView:
    return MailboxView(row=row, percent=percent(row))


async def overview(session: AsyncSession, rt: Runtime) -> Overview:
    repo = DashboardRepository(session)
    counts = await repo.counts()
    by_status: dict[str, dict[str, int]] = {}
    for c in counts:
        by_status.setdefault(c.status, {})[c.provider] = c.mailboxes
    statuses = tuple(s for s in STATUS_ORDER if s in by_status) + tuple(
        sorted(s for s in by_status if s not in STATUS_ORDER)
    )
    providers = tuple(PROVIDERS) + tuple(sorted({c.provider for c in counts} - set(PROVIDERS)))
    outbox = await repo.outbox_state()
    result = Overview(
        counts=counts,
        by_status=by_status,
        providers=providers,
        statuses=statuses,
        mailboxes_total=sum(c.mailboxes for c in counts),
        messages_stored=sum(c.messages for c in counts),
        windows={},
        queue_ready=None,
        queue_deferred=None,
        outbox=outbox,
    )
    try:
        result.windows = await rt.activity.windows()
        now_ms = int(time.time() * 1000)
        async with rt.redis.pipeline(transaction=False) as pipe:
            pipe.zcount(default_queue_name, "-inf", now_ms)
            pipe.zcount(default_queue_name, f"({now_ms}", "+inf")
            ready, deferred = await pipe.execute()
        result.queue_ready, result.queue_deferred = int(ready), int(deferred)
    except (RedisError, OSError) as exc:
        # The page still shows what PostgreSQL knows.
        log.warning("dashboard: Redis unavailable: %s", exc.__class__.__name__)
        result.redis_ok = False
    return result


async def mailbox_page(session: AsyncSession, flt: MailboxFilter, page: int) -> MailboxPage:
    page = max(page, 1)
    rows, total = await DashboardRepository(session).list_mailboxes(
        flt, status_order=STATUS_ORDER, limit=PAGE_SIZE, offset=(page - 1) * PAGE_SIZE
    )
    return MailboxPage(
        items=[mailbox_view(r) for r in rows],
        total=total,
        page=page,
        pages=max(1, math.ceil(total / PAGE_SIZE)),
        flt=flt,
    )


async def mailbox_detail(
    session: AsyncSession, rt: Runtime, mailbox_id: uuid.UUID
) -> MailboxDetail | None:
    repo = DashboardRepository(session)
    row = await repo.mailbox(mailbox_id)
    if row is None:
        return None
    detail = MailboxDetail(
        mailbox=mailbox_view(row),
        streams=await repo.streams(mailbox_id),
        notifications=await repo.recent_notifications(mailbox_id),
    )
    try:
        detail.errors = await rt.activity.recent_errors(mailbox_id)
    except (RedisError, OSError) as exc:
        log.warning("dashboard: recent errors unavailable: %s", exc.__class__.__name__)
    return detail
