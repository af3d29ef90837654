"""The async engine and session factory. Transactions belong to the caller (request or job)."""

from __future__ import annotations

import asyncio

from sqlalchemy import text
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

# No statement waits longer than this for a row lock. Nothing holds one that long in normal
# operation; a wait that long is a stuck peer, or a cycle PostgreSQL cannot see (a page
# transaction waits in the engine for the previous page of its stream to commit), and
# ends in an error the job retries instead of a hang.
LOCK_TIMEOUT_MS = "30000"

# Session.info key: whether transactions in this session write the outbox (EVENTS_ENABLED).
WRITES_EVENTS = "mailsync.writes_events"


def make_engine(database_url: str, *, pool_size: int = 10) -> AsyncEngine:
    return create_async_engine(
        database_url,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_pre_ping=True,
        # asyncpg caches prepared statements per connection; the default size is fine.
        connect_args={"server_settings": {"lock_timeout": LOCK_TIMEOUT_MS}},
    )


def make_sessionmaker(
    engine: AsyncEngine, *, events: bool = True
) -> async_sessionmaker[AsyncSession]:
    """`events=False` (EVENTS_ENABLED=false): the outbox repository writes nothing in these
    sessions, whichever change would raise an event (app/db/repositories/outbox.py)."""
    return async_sessionmaker(
        engine, expire_on_commit=False, autoflush=False, info={WRITES_EVENTS: events}
    )


async def open_connections(engine: AsyncEngine, count: int) -> None:
    """Fill the pool with `count` open connections (each costs its first user ~40 ms)."""

    async def one() -> None:
        async with engine.connect() as connection:
            await connection.execute(text("SELECT 1"))

    # Concurrent, so each holds a different connection.
    await asyncio.gather(*(one() for _ in range(count)))
