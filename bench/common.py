"""Shared set-up for benchmarks: a scratch database, migrated, dropped afterwards."""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
from alembic import command
from alembic.config import Config
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

from app.cli import ALEMBIC_INI
from app.sync import mailboxes as service
from app.sync.cases.states import MailboxScope
from app.sync.runtime import Runtime

ADMIN_URL = os.environ.get(
    "BENCH_PG_ADMIN_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
)


async def _admin(sql: str) -> None:
    engine = create_async_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    async with engine.connect() as conn:
        await conn.execute(text(sql))
    await engine.dispose()


@asynccontextmanager
async def scratch_database(prefix: str = "mailsync_bench") -> AsyncIterator[str]:
    name = f"{prefix}_{secrets.token_hex(3)}"
    await _admin(f'CREATE DATABASE "{name}"')
    url = ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    config = Config(str(ALEMBIC_INI))
    config.set_main_option("sqlalchemy.url", url)
    import asyncio

    await asyncio.to_thread(command.upgrade, config, "head")
    try:
        yield url
    finally:
        await _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_simulator(workdir: Path) -> tuple[subprocess.Popen[bytes], dict[str, str]]:
    env_file = workdir / "sim.env"
    port = free_port()
    process = subprocess.Popen(  # noqa: S603 - our own module
        [
            sys.executable,
            "-m",
            "app.simulator",
            "--port",
            str(port),
            "--state-dir",
            str(workdir),
            "--env-file",
            str(env_file),
        ],
        stdout=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while not env_file.exists():
        if time.monotonic() > deadline or process.poll() is not None:
            raise RuntimeError("simulator did not start")
        time.sleep(0.05)
    env = dict(line.split("=", 1) for line in env_file.read_text().splitlines() if "=" in line)
    env = {k: v.strip("'") for k, v in env.items()}
    base = env["GMAIL_BASE_URL"]
    while True:
        try:
            httpx.get(f"{base}/_sim/healthz", verify=env["SSL_CERT_FILE"], timeout=1)
            break
        except httpx.HTTPError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    return process, env


class Tx:
    """The unit of work the API hands the services: a session and the jobs it would enqueue
    after commit (a benchmark enqueues what it needs itself)."""

    def __init__(self, session: AsyncSession, rt: Runtime) -> None:
        self.session, self.rt = session, rt
        self.jobs: list[Callable[[], Awaitable[object]]] = []

    def after_commit(self, action: Callable[[], Awaitable[object]]) -> None:
        self.jobs.append(action)


async def connect_account(
    rt: Runtime,
    provider: str,
    account: dict[str, Any],
    *,
    user_id: str = "bench",
    scope: MailboxScope = MailboxScope.FULL,
) -> uuid.UUID:
    """A simulator account connected through the service call `POST /mail/connect` makes,
    committed; no job is enqueued."""
    async with rt.sessions() as session:
        mailbox = await service.connect(
            Tx(session, rt),
            service.ConnectCommand(
                user_id=user_id,
                provider="google" if provider == "google" else "microsoft",
                auth_mode="delegated",
                email=account["email"],
                access_token=account["access_token"],
                refresh_token=account["refresh_token"],
                expires_in=int(account["expires_in"]),
                scope=scope,
            ),
        )
        await session.commit()
    return mailbox.id
