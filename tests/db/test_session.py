"""Connections opened ahead of the first job, and a worker that starts without PostgreSQL."""

from __future__ import annotations

import logging

import pytest

from app.config import Settings
from app.db.session import make_engine, open_connections
from app.sync import worker
from app.sync.runtime import Runtime


async def test_open_connections_leaves_them_idle_in_the_pool(database_url: str) -> None:
    engine = make_engine(database_url, pool_size=5)
    try:
        await open_connections(engine, 3)
        assert engine.pool.checkedin() == 3  # type: ignore[attr-defined]
        # The next three users find a connection waiting; nobody opens a fourth.
        async with engine.connect(), engine.connect(), engine.connect():
            assert engine.pool.checkedout() == 3  # type: ignore[attr-defined]
        assert engine.pool.checkedin() == 3  # type: ignore[attr-defined]
    finally:
        await engine.dispose()


async def test_a_worker_starts_while_postgresql_is_unreachable(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    unreachable = settings.model_copy(
        update={"database_url": "postgresql+asyncpg://postgres@127.0.0.1:9/nowhere"}
    )
    rt = await Runtime.create(unreachable)
    try:
        with caplog.at_level(logging.WARNING, logger="app.sync.worker"):
            await worker._open_database_connections(rt)
        assert "no database connections opened at start-up" in caplog.text
    finally:
        await rt.close()
