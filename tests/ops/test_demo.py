"""`mailsync demo`: everything starts, both mailboxes converge on the simulator's truth
through the public API and push notifications, and Ctrl-C leaves no process behind."""

from __future__ import annotations

import asyncio
import re
import secrets
import signal
import ssl
import uuid
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from app.config import Settings
from tests.conftest import PG_ADMIN_URL
from tests.ops.support import (
    MAILSYNC,
    ROOT,
    alive,
    descendants,
    free_port,
    marked_env,
    process_env,
    survivors,
)

OUTLOOK = 2000
GMAIL = 200
CHANGES = 8


async def test_demo_converges_then_stops_everything(
    events_settings: Settings, tmp_path: Path
) -> None:
    settings = events_settings
    name = f"mailsync_demo_test_{secrets.token_hex(3)}"
    database_url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    port = free_port()
    env = process_env(settings, DATABASE_URL=database_url, PORT=str(port))
    for key in ("AUTH_JWT_SECRET", "PUBLIC_BASE_URL", "WORKER_METRICS_PORT"):
        env.pop(key, None)  # the demo makes its own
    env, marker = marked_env(env)
    demo = await asyncio.create_subprocess_exec(
        *MAILSYNC, "demo",
        "--outlook-messages", str(OUTLOOK), "--gmail-messages", str(GMAIL),
        "--trickle-interval", "0.3", "--trickle-changes", str(CHANGES),
        "--state-dir", str(tmp_path),
        cwd=ROOT, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    started: set[int] = set()
    engine = create_async_engine(database_url)
    try:
        banner = await read_banner(demo)
        dashboard = re.search(r"^Dashboard: (\S+)$", banner, re.M)
        assert dashboard, banner
        assert banner.count("Dashboard: ") == 1
        assert dashboard.group(1).startswith(f"http://127.0.0.1:{port}/dashboard/login?token=")
        simulator = re.search(r"Simulator: (\S+) \(CA (\S+)\)", banner)
        bearer = re.search(r"^  (eyJ\S+)$", banner, re.M)
        assert simulator and bearer, banner
        started = descendants(demo.pid)
        assert len(started) >= 3  # simulator, API, worker

        async with (
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as api,
            httpx.AsyncClient(
                base_url=simulator.group(1),
                verify=ssl.create_default_context(cafile=simulator.group(2)),
            ) as sim,
        ):
            # The bearer token is the demo user's, not an operator's.
            mine = await api.get(
                "/mail/status", headers={"Authorization": f"Bearer {bearer.group(1)}"}
            )
            assert mine.status_code == 200
            assert {m["provider"] for m in mine.json()["mailboxes"]} == {"microsoft", "google"}
            refused = await api.get(
                "/dashboard", headers={"Authorization": f"Bearer {bearer.group(1)}"}
            )
            assert refused.status_code == 403
            # The login link signs the operator in, once.
            login = await api.get(dashboard.group(1))
            assert login.status_code == 303 and "mailsync_dashboard=" in login.headers["set-cookie"]
            assert (await api.get(dashboard.group(1))).status_code == 401

            mailboxes = {m["provider"]: m for m in mine.json()["mailboxes"]}
            await converged(engine, sim, api, bearer.group(1), mailboxes)
            async with engine.connect() as conn:
                pushes = dict(
                    (await conn.execute(text(
                        "SELECT provider, count(*) FROM webhook_notifications GROUP BY provider"
                    ))).all()
                )  # fmt: skip
            # The trickle's changes came through both providers' push notifications.
            assert pushes.get("microsoft", 0) >= 1 and pushes.get("google", 0) >= 1, pushes
            # And the demo's publisher sent what changed on to JetStream.
            async with asyncio.timeout(60):
                while True:
                    async with engine.connect() as conn:
                        published = await conn.scalar(
                            text(
                                "SELECT count(*) FROM outbox_events WHERE published_at IS NOT NULL"
                            )
                        )
                    if published:
                        break
                    await asyncio.sleep(0.2)
    finally:
        started |= descendants(demo.pid)
        if demo.returncode is None:
            demo.send_signal(signal.SIGINT)
        tail = await asyncio.wait_for(demo.communicate(), timeout=60)
        await engine.dispose()
        admin = create_async_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
        async with admin.connect() as conn:
            await conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        await admin.dispose()
    assert demo.returncode == 0, tail[0].decode(errors="replace")[-3000:]
    left = {pid for pid in started if alive(pid)} | set(survivors(marker))
    assert not left, f"processes left behind: {left}"


async def read_banner(demo: asyncio.subprocess.Process) -> str:
    assert demo.stdout is not None
    lines: list[str] = []
    async with asyncio.timeout(120):
        while True:
            raw = await demo.stdout.readline()
            assert raw, "demo exited early:\n" + "".join(lines)
            lines.append(raw.decode())
            if raw.startswith(b"  Ctrl-C stops everything."):
                return "".join(lines)


async def converged(
    engine: Any, sim: httpx.AsyncClient, api: httpx.AsyncClient, bearer: str,
    mailboxes: dict[str, dict[str, Any]],
) -> None:  # fmt: skip
    """Both mailboxes connected, the trickle done, and the store equal to the provider."""
    outlook, gmail = mailboxes["microsoft"], mailboxes["google"]
    last_seen: list[Any] = []
    try:
        async with asyncio.timeout(150):
            await _converge(
                engine, sim, api, bearer, outlook, gmail, lambda state: last_seen.append(state)
            )
    except TimeoutError:
        raise AssertionError(f"not converged: {last_seen[-1:]}") from None


async def _converge(
    engine: Any, sim: httpx.AsyncClient, api: httpx.AsyncClient, bearer: str,
    outlook: dict[str, Any], gmail: dict[str, Any], note: Any,
) -> None:  # fmt: skip
    headers = {"Authorization": f"Bearer {bearer}"}
    while True:
        status = (await api.get("/mail/status", headers=headers)).json()
        connected = all(m["status"] == "connected" for m in status["mailboxes"])
        outlook_truth = await sim.get(f"/_sim/microsoft/accounts/{outlook['email']}/messages")
        gmail_truth = await sim.get(
            f"/_sim/google/accounts/{gmail['email']}/truth", params={"limit": 100_000}
        )
        truth_outlook = {m["id"] for m in outlook_truth.json()["messages"]}
        truth_gmail = {m["id"] for m in gmail_truth.json()["messages"]}
        stored_outlook = await stored(engine, outlook["mailbox_id"])
        stored_gmail = await stored(engine, gmail["mailbox_id"])
        note(
            (
                connected,
                len(truth_outlook),
                len(stored_outlook),
                len(truth_gmail),
                len(stored_gmail),
            )
        )
        trickled = len(truth_outlook) > OUTLOOK
        if (
            connected
            and trickled
            and truth_outlook == stored_outlook
            and truth_gmail == stored_gmail
        ):
            # Quiet for a moment: no change still on its way.
            await asyncio.sleep(1.5)
            if await stored(engine, outlook["mailbox_id"]) == truth_outlook:
                return
        await asyncio.sleep(0.5)


async def stored(engine: Any, mailbox_id: str) -> set[str]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            text("SELECT provider_message_id FROM messages WHERE mailbox_id = :id"),
            {"id": uuid.UUID(mailbox_id)},
        )
        return {r[0] for r in rows.all()}
