"""The async engine and session factory. Transactions belong to the caller (request or job)."""

from __future__ import annotations

import asyncio
from typing import Any

from sqlalchemy import event, exc, text
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
    engine = create_async_engine(
        database_url,
        pool_size=pool_size,
        max_overflow=pool_size,
        # asyncpg caches prepared statements per connection; the default size is fine.
        connect_args={"server_settings": {"lock_timeout": LOCK_TIMEOUT_MS}},
    )
    event.listen(engine.sync_engine.pool, "checkout", _drop_closed)
    return engine


def _drop_closed(dbapi_connection: Any, record: Any, proxy: Any) -> None:
    """Hand out no pooled connection that PostgreSQL has closed (a restart, a terminated
    backend): the pool discards it and checks out another.

    SQLAlchemy's `pool_pre_ping` asks the server instead, and on asyncpg that is three round
    trips (BEGIN, an empty query, ROLLBACK) before every transaction, which made it most of
    the statements of a short pass. An idle pooled connection is read by the event loop, so
    a backend that went away has already marked it closed; a statement on a connection lost
    since fails like any other and its request or job is answered or retried as such.
    """
    driver = record.driver_connection
    if driver is not None and driver.is_closed():
        raise exc.DisconnectionError("the pooled connection was closed by the server")


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
