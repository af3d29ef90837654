"""Request-scoped dependencies. The request owns the transaction; jobs leave after commit."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Annotated

from fastapi import Depends, Request
from redis.exceptions import RedisError
from sqlalchemy.ext.asyncio import AsyncSession

from app.sync.runtime import Runtime

log = logging.getLogger(__name__)


class UnitOfWork:
    """A session plus the jobs to enqueue once its transaction has committed.

    A worker must never see a job for a row that was never committed, and a rolled-back
    request must enqueue nothing.
    """

    def __init__(self, session: AsyncSession, rt: Runtime) -> None:
        self.session = session
        self.rt = rt
        self._after_commit: list[Callable[[], Awaitable[object]]] = []

    def after_commit(self, action: Callable[[], Awaitable[object]]) -> None:
        self._after_commit.append(action)

    async def commit(self) -> None:
        await self.session.commit()
        actions, self._after_commit = self._after_commit, []
        for action in actions:
            try:
                await action()
            except (RedisError, OSError) as exc:
                # PostgreSQL already holds the work (next_sync_at, sync_requested_at); the
                # scheduler enqueues it once Redis is back. The caller's request succeeded.
                log.warning("enqueue after commit failed (%s); the scheduler will retry", exc)


def get_runtime(request: Request) -> Runtime:
    rt: Runtime = request.app.state.rt
    return rt


async def get_uow(request: Request) -> AsyncIterator[UnitOfWork]:
    rt = get_runtime(request)
    async with rt.sessions() as session:
        uow = UnitOfWork(session, rt)
        try:
            yield uow
        finally:
            if session.in_transaction():
                await session.rollback()


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]
UnitOfWorkDep = Annotated[UnitOfWork, Depends(get_uow)]
