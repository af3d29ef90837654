"""`mailsync status [--watch]`: the mailboxes and their progress, read from PostgreSQL."""

from __future__ import annotations

import asyncio
import signal

import httpx
from sqlalchemy import text

from app.config import Settings
from app.sync.runtime import Runtime
from tests.db.test_dashboard_repository import add_mailboxes
from tests.ops.support import MAILSYNC, ROOT, process_env, run


async def test_status_prints_each_mailbox_with_its_progress(
    rt: Runtime, settings: Settings
) -> None:
    await add_mailboxes(
        rt,
        [
            {"email": "olivia@contoso.com", "status": "syncing", "synced": 300, "total": 1200},
            {"email": "gus@example.com", "status": "connected", "synced": 80, "provider": "google"},
            {"email": "rita@contoso.com", "status": "auth_expired", "user": "rita"},
        ],
    )
    env = process_env(settings, COLUMNS="200")
    result = run(["status"], env)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    rows = {
        addr: next(line for line in lines if addr in line)
        for addr in ("olivia@contoso.com", "gus@example.com", "rita@contoso.com")
    }
    assert "25%" in rows["olivia@contoso.com"] and "300 / 1,200" in rows["olivia@contoso.com"]
    assert "100%" in rows["gus@example.com"] and "google" in rows["gus@example.com"]
    assert "auth_expired" in rows["rita@contoso.com"]
    # Attention first.
    assert lines.index(rows["rita@contoso.com"]) < lines.index(rows["olivia@contoso.com"])
    assert "3 of 3 mailboxes" in result.stdout

    only = run(["status", "--provider", "google"], env)
    assert "gus@example.com" in only.stdout and "olivia" not in only.stdout


def _ctrl_c_as_in_a_terminal() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


async def test_status_watch_refreshes_until_interrupted(rt: Runtime, settings: Settings) -> None:
    [mailbox_id] = await add_mailboxes(
        rt, [{"email": "wendy@contoso.com", "status": "syncing", "synced": 10, "total": 100}]
    )
    process = await asyncio.create_subprocess_exec(
        *MAILSYNC,
        "status",
        "--watch",
        "--interval",
        "0.2",
        cwd=ROOT,
        # Faulthandler: should it ever not exit, SIGABRT prints where each thread waits.
        env=process_env(
            settings,
            COLUMNS="200",
            TTY_COMPATIBLE="1",
            TTY_INTERACTIVE="1",
            PYTHONFAULTHANDLER="1",
        ),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        # As in a terminal: a test run started in the background (a shell's `&`, some CI
        # runners) ignores SIGINT, and a child inherits that, so Ctrl-C would never arrive.
        preexec_fn=_ctrl_c_as_in_a_terminal,
    )
    assert process.stdout is not None
    seen = ""

    async def until(fragment: str) -> None:
        nonlocal seen
        async with asyncio.timeout(30):
            while fragment not in seen:
                assert process.stdout is not None
                chunk = await process.stdout.read(4096)
                assert chunk, f"status --watch ended before showing {fragment!r}"
                seen += chunk.decode(errors="replace")

    try:
        await until("wendy@contoso.com")
        assert "10%" in seen and "70%" not in seen
        async with rt.sessions() as session, session.begin():
            await session.execute(
                text("UPDATE mailboxes SET messages_synced = 70 WHERE id = :id"), {"id": mailbox_id}
            )
        await until("70%")
    finally:
        process.send_signal(signal.SIGINT)
        try:
            _, raw_err = await asyncio.wait_for(process.communicate(), timeout=60)
        except TimeoutError:
            process.send_signal(signal.SIGABRT)
            _, raw_err = await asyncio.wait_for(process.communicate(), timeout=15)
            raise AssertionError(
                "status --watch did not exit within 60 s of Ctrl-C:\n" + raw_err.decode()
            ) from None
    assert process.returncode == 0, raw_err.decode()


async def test_dashboard_link_prints_a_link_that_signs_in_once(
    settings: Settings, api: httpx.AsyncClient
) -> None:
    result = run(["dashboard-link", "--subject", "oncall"], process_env(settings))
    assert result.returncode == 0, result.stderr
    link = result.stdout.strip()
    assert link.startswith(f"{settings.public_base_url}/dashboard/login?token=")
    path = link.removeprefix(settings.public_base_url)
    first = await api.get(path)
    assert first.status_code == 303 and "mailsync_dashboard=" in first.headers["set-cookie"]
    assert (await api.get(path)).status_code == 401

    without = process_env(settings)
    without["AUTH_JWT_SECRET"] = ""
    refused = run(["dashboard-link"], without)
    assert refused.returncode == 2 and "AUTH_JWT_SECRET" in refused.stderr
