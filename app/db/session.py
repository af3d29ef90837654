"""The async engine and session factory. Transactions belong to the caller (request or job)."""

from __future__ import annotations

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


def make_engine(database_url: str, *, pool_size: int = 10) -> AsyncEngine:
    return create_async_engine(
        database_url,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_pre_ping=True,
        # asyncpg caches prepared statements per connection; the default size is fine.
        connect_args={"server_settings": {"lock_timeout": LOCK_TIMEOUT_MS}},
    )


def make_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False, autoflush=False)
