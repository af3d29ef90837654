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

from app.db.repositories.cursors import CursorRepository
from app.db.repositories.dashboard import (
    DashboardRepository,
    MailboxFilter,
    MailboxRow,
    NotificationRow,
    StatusCount,
    StreamRow,
)
from app.db.repositories.outbox import OutboxLag, OutboxRepository
from app.sync import states
from app.sync.activity import RecentError
from app.sync.runtime import Runtime
from app.sync.states import MailboxStatus, StreamProgress

log = logging.getLogger(__name__)

PROVIDERS = ("microsoft", "google")
S = MailboxStatus
# Attention first: the order of the mailbox list and of the overview's status table.
STATUS_ORDER: tuple[str, ...] = tuple(
    str(s) for s in (S.ERROR, S.AUTH_EXPIRED, S.SYNCING, S.PENDING, S.CONNECTED, S.DISCONNECTED)
)
PAGE_SIZE = 50

# What an operator can do about a mailbox in each status.
ADVICE: dict[str, str] = {
    S.AUTH_EXPIRED: (
        "The provider refused the stored grant (revoked, expired or consent withdrawn). "
        "Nothing syncs until the user reconnects the mailbox: POST /mail/connect with new "
        "tokens for the same account."
    ),
    S.ERROR: (
        "A permanent provider error, or repeated failures. Retries continue on the sync "
        "interval; fix the cause shown below, then use Sync now."
    ),
    S.DISCONNECTED: "Disconnected: nothing syncs. The user reconnects through POST /mail/connect.",
}


@dataclass(frozen=True, slots=True)
class MailboxView:
    """A mailbox row and what its streams say, worked out once (a page renders each value
    more than once)."""

    row: MailboxRow
    percent: int
    in_sync: bool
    streams_behind: int
    parked: bool

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
    outbox: OutboxLag
    redis_ok: bool = True

    def rate(self, name: str, minutes: int) -> Rate:
        return Rate(self.windows.get(minutes, {}).get(name, 0), minutes)

    @property
    def has_publisher(self) -> bool:
        """Some event was ever published: the lag means something (else nothing reads it)."""
        return self.outbox.last_published_at is not None

    @property
    def outbox_lag_seconds(self) -> float | None:
        oldest = self.outbox.oldest_unpublished_at
        if not self.has_publisher:
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


def mailbox_view(row: MailboxRow, streams: list[StreamProgress]) -> MailboxView:
    return MailboxView(
        row=row,
        percent=states.percent(
            row.status,
            streams,
            messages_synced=row.messages_synced,
            total_estimate=row.messages_total_estimate,
        ),
        in_sync=states.in_sync(row.status, streams, owed=row.pending_since is not None),
        streams_behind=states.streams_behind(streams),
        parked=MailboxStatus(row.status) in states.PARKED,
    )


async def _views(session: AsyncSession, rows: list[MailboxRow]) -> list[MailboxView]:
    progress = await CursorRepository(session).progress([r.id for r in rows])
    return [mailbox_view(r, progress.get(r.id, [])) for r in rows]


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
    outbox = await OutboxRepository(session).lag()
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
        items=await _views(session, rows),
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
        mailbox=(await _views(session, [row]))[0],
        streams=await repo.streams(mailbox_id),
        notifications=await repo.recent_notifications(mailbox_id),
    )
    try:
        detail.errors = await rt.activity.recent_errors(mailbox_id)
    except (RedisError, OSError) as exc:
        log.warning("dashboard: recent errors unavailable: %s", exc.__class__.__name__)
    return detail
