"""Renew a lease while the work it guards runs, whatever that work waits on.

A slow fetch or a Retry-After pause never loses a live worker its lease, so leases can be
short and a dead worker's work is taken over within about one lease period. A lease found
gone stops the work early: its next fenced write would be refused anyway.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from app.db.session import AsyncSession
from app.sync.runtime import Runtime

log = logging.getLogger(__name__)


async def renew_while_running(
    rt: Runtime,
    renew: Callable[[AsyncSession], Awaitable[bool]],
    *,
    what: str,
    lost: asyncio.Event,
    task: asyncio.Task[Any] | None = None,
) -> None:
    """Call `renew` (one transaction; False: the lease is gone) every third of the lease
    period until cancelled. When the lease is gone, set `lost` and cancel `task`."""
    interval = max(0.5, rt.settings.lease_seconds / 3)
    while True:
        await asyncio.sleep(interval)
        try:
            async with rt.sessions() as session, session.begin():
                held = await renew(session)
        except Exception as exc:
            # PostgreSQL unreachable: the fenced writes will tell; the lease may lapse.
            log.warning("%s: lease heartbeat failed: %s", what, exc)
            continue
        if not held:
            lost.set()
            if task is not None:
                task.cancel()
            return
