"""The webhook audit log keeps `WEBHOOK_LOG_RETENTION_HOURS` (a worker cron prunes it).

Refusals are already bounded per minute (app/sync/webhook_log.py); this bounds the rest.
Deletes go in small batches, each its own transaction, so the cron never holds locks for
long or bloats one transaction, and a run stops after a bounded amount of work (the next
run continues).
"""

from __future__ import annotations

import logging
from typing import Any

from app.db.repositories.notifications import NotificationRepository
from app.sync.runtime import Runtime

log = logging.getLogger(__name__)

PRUNE_BATCH = 5000
PRUNE_BATCHES_PER_RUN = 200


async def prune_webhook_log(ctx: dict[str, Any]) -> int:
    rt: Runtime = ctx["rt"]
    keep_seconds = rt.settings.webhook_log_retention_hours * 3600
    deleted = 0
    for _ in range(PRUNE_BATCHES_PER_RUN):
        async with rt.sessions() as session:
            count = await NotificationRepository(session).prune(keep_seconds, PRUNE_BATCH)
            await session.commit()
        deleted += count
        if count < PRUNE_BATCH:
            break
    if deleted:
        log.info("webhook log: %d rows older than %.0f h pruned", deleted, keep_seconds / 3600)
    return deleted
