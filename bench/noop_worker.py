"""An ARQ worker whose only job does nothing: the queue's own ceiling (bench/many_mailboxes.py
runs it with the same Redis, process count, max_jobs and poll delay as the sync workers)."""

from __future__ import annotations

import os
from typing import Any, ClassVar

from arq.connections import RedisSettings
from arq.worker import func

from app.sync.worker import WorkerSettings


async def noop(ctx: dict[str, Any], mailbox_id: str) -> str:
    return mailbox_id


class NoopSettings:
    functions: ClassVar[list[Any]] = [func(noop, name="noop", keep_result=0)]
    redis_settings = RedisSettings.from_dsn(os.environ["REDIS_URL"])
    queue_name = "bench:noop"
    max_jobs = WorkerSettings.max_jobs
    poll_delay = WorkerSettings.poll_delay
    keep_result = 0
