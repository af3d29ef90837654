"""Connections opened ahead of the first job, and a worker that starts without PostgreSQL."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from sqlalchemy import text

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


async def test_a_connection_the_server_closed_is_never_handed_out(database_url: str) -> None:
    """PostgreSQL restarted or a backend terminated: the next users get fresh connections
    and their statements succeed, with no ping before each transaction."""
    engine = make_engine(database_url, pool_size=3)
    admin = make_engine(database_url, pool_size=1)
    try:
        pids: list[int] = []
        drivers: list[Any] = []

        async def backend_pid() -> None:
            async with engine.connect() as connection:
                drivers.append((await connection.get_raw_connection()).driver_connection)
                pids.append(
                    (await connection.execute(text("SELECT pg_backend_pid()"))).scalar_one()
                )
                await asyncio.sleep(0.05)  # hold it, so the three are different connections

        await asyncio.gather(*(backend_pid() for _ in range(3)))
        assert engine.pool.checkedin() == 3  # type: ignore[attr-defined]
        async with admin.connect() as connection:
            await connection.execute(
                text("SELECT pg_terminate_backend(pid) FROM unnest(CAST(:pids AS int[])) AS pid"),
                {"pids": pids},
            )
        # The event loop reads each closed socket while the connections idle in the pool.
        for _ in range(100):
            if all(driver.is_closed() for driver in drivers):
                break
            await asyncio.sleep(0.02)

        async def query() -> int:
            async with engine.connect() as connection:
                value: int = (
                    await connection.execute(text("SELECT pg_backend_pid()"))
                ).scalar_one()
                await asyncio.sleep(0.05)
                return value

        fresh = await asyncio.gather(*(query() for _ in range(3)))
        assert not set(fresh) & set(pids)
    finally:
        await engine.dispose()
        await admin.dispose()
