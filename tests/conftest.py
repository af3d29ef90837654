"""Shared fixtures: a private PostgreSQL database and Redis db per run, the API, workers,
and an HTTPS provider simulator. Nothing depends on leftovers from earlier runs."""

from __future__ import annotations

import os

# Before app imports: the worker module reads settings when it is imported.
os.environ.setdefault("MAILSYNC_ENV", "test")

import asyncio
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import jwt
import pytest
from alembic import command
from alembic.config import Config
from arq.connections import RedisSettings, create_pool
from arq.worker import Worker
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from app.cli import ALEMBIC_INI
from app.config import Settings
from app.main import create_app
from app.providers import registry
from app.simulator.server import SimulatorServer
from app.sync.runtime import Runtime
from app.sync.worker import WorkerSettings

PG_ADMIN_URL = os.environ.get(
    "TEST_PG_ADMIN_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
)
REDIS_BASE = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379")
JWT_SECRET = "test-secret-" + "x" * 32
PUSH_AUDIENCE = "https://mailsync.test/webhooks/google"
TABLES = (
    "outbox_events, message_tombstones, resnapshots, webhook_notifications, subscriptions, "
    "messages, sync_cursors, credentials, mailboxes, monitor_repairs, case_links, cases"
)


@pytest.fixture(scope="session")
def simulator() -> Iterator[SimulatorServer]:
    """One HTTPS simulator for the whole run; tests seed their own accounts in it."""
    server = SimulatorServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    name = f"mailsync_test_{os.getpid()}_{secrets.token_hex(3)}"

    async def admin(sql: str) -> None:
        engine = create_async_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
        async with engine.connect() as conn:
            await conn.execute(text(sql))
        await engine.dispose()

    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    config = Config(str(ALEMBIC_INI))
    config.set_main_option("sqlalchemy.url", url)
    command.upgrade(config, "head")
    # Migrations are safe to run twice.
    command.upgrade(config, "head")
    try:
        yield url
    finally:
        asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="session")
def redis_url() -> str:
    # A database index of our own (1-8, or TEST_REDIS_DB when runs share a machine; the
    # benchmarks use 14), flushed before every test.
    index = os.environ.get("TEST_REDIS_DB") or str(1 + os.getpid() % 8)
    return f"{REDIS_BASE}/{index}"


@pytest.fixture
def settings(database_url: str, redis_url: str) -> Settings:
    return Settings(
        _env_file=None,  # type: ignore[call-arg]
        **{
            "MAILSYNC_ENV": "test",
            "DATABASE_URL": database_url,
            "REDIS_URL": redis_url,
            "AUTH_JWT_SECRET": JWT_SECRET,
            "TOKEN_ENCRYPTION_KEYS": "",
            "SYNC_SLICE_PAGES": "1000",
            "LEASE_SECONDS": "30",
        },
    )


@pytest.fixture
async def rt(settings: Settings) -> AsyncIterator[Runtime]:
    runtime = await Runtime.create(settings)
    await runtime.redis.flushdb()
    async with runtime.engine.begin() as conn:
        await conn.execute(text(f"TRUNCATE {TABLES} CASCADE"))
    try:
        yield runtime
    finally:
        await runtime.close()


@pytest.fixture(autouse=True)
def _restore_providers() -> Iterator[None]:
    yield
    registry.override("microsoft", None)
    registry.override("google", None)


def bearer(user: str, *, expires_in: int = 3600, **claims: Any) -> dict[str, str]:
    token = jwt.encode(
        {"sub": user, "exp": int(time.time()) + expires_in, **claims}, JWT_SECRET, algorithm="HS256"
    )
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
async def api(settings: Settings, rt: Runtime) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://mailsync.test"
        ) as client:
            yield client


async def run_worker(rt: Runtime, *, max_seconds: float = 60.0, owner: str | None = None) -> Worker:
    """Run a real ARQ worker (burst mode: until the queue is empty) in this event loop."""

    async def startup(ctx: dict[str, Any]) -> None:
        ctx["rt"] = rt
        ctx["worker_id"] = owner or f"test-worker-{uuid.uuid4().hex[:6]}"

    worker = Worker(
        functions=WorkerSettings.functions,
        # The worker closes its pool when it stops; give it one of its own.
        redis_pool=await create_pool(RedisSettings.from_dsn(rt.settings.redis_url)),
        burst=True,
        poll_delay=0.02,
        on_startup=startup,
        handle_signals=False,
        max_jobs=10,
        keep_result=0,
    )
    try:
        await asyncio.wait_for(worker.async_run(), timeout=max_seconds)
    finally:
        await worker.close()
    return worker


@pytest.fixture(scope="module")
def fuzz_client(database_url: str, redis_url: str) -> Iterator[Any]:
    """A synchronous client (its own event loop in a thread), for property-based tests."""
    from fastapi.testclient import TestClient

    fuzz_settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        **{
            "MAILSYNC_ENV": "test",
            "DATABASE_URL": database_url,
            "REDIS_URL": redis_url,
            "AUTH_JWT_SECRET": JWT_SECRET,
        },
    )
    with TestClient(create_app(fuzz_settings), raise_server_exceptions=False) as client:
        yield client


@pytest.fixture
def sim_settings(
    settings: Settings, simulator: SimulatorServer, monkeypatch: pytest.MonkeyPatch
) -> Settings:
    """Settings that point every provider URL at the simulator (and trust its CA)."""
    env = simulator.env()
    # httpx and MSAL (requests) read these from the environment.
    monkeypatch.setenv("SSL_CERT_FILE", env["SSL_CERT_FILE"])
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", env["REQUESTS_CA_BUNDLE"])
    overrides = {
        key: value
        for key, value in env.items()
        if key not in ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE")
    }
    overrides["GOOGLE_PUSH_AUDIENCE"] = PUSH_AUDIENCE
    merged = {
        **{
            f.alias: getattr(settings, name) for name, f in Settings.model_fields.items() if f.alias
        },
        **overrides,
    }
    return Settings(_env_file=None, **merged)  # type: ignore[call-arg]


class LiveApi:
    """The real API on a real port, so the simulator can call our webhooks."""

    def __init__(self, settings: Settings) -> None:
        import socket
        import threading

        import uvicorn

        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.settings = settings.model_copy(update={"public_base_url": self.base_url})
        config = uvicorn.Config(create_app(self.settings), log_level="warning", access_log=False)
        self.server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self._sock]}, daemon=True
        )

    def start(self) -> LiveApi:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            assert time.monotonic() < deadline, "API did not start"
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self._thread.join(timeout=10)


@pytest.fixture
async def live_api(sim_settings: Settings, rt: Runtime) -> AsyncIterator[LiveApi]:
    server = LiveApi(sim_settings).start()
    try:
        yield server
    finally:
        await asyncio.to_thread(server.stop)


@pytest.fixture
async def sim_rt(live_api: LiveApi, rt: Runtime) -> AsyncIterator[Runtime]:
    """A worker runtime wired to the simulator, with PUBLIC_BASE_URL at the live API."""
    runtime = await Runtime.create(live_api.settings)
    try:
        yield runtime
    finally:
        await runtime.close()
