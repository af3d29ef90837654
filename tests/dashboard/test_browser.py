"""The dashboard in a real browser: it loads clean, updates live, acts, and keeps others out."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

from playwright.async_api import Browser, Page
from sqlalchemy import text

from app.sync.runtime import Runtime
from tests.conftest import LiveApi, bearer, run_worker
from tests.dashboard.conftest import Console, refreshed
from tests.e2e.support import Sim, connect_via_api, unique_email


async def outlook_account(sim: Sim, count: int) -> dict[str, Any]:
    return dict(
        await sim.call(
            "POST",
            "/_sim/microsoft/accounts",
            json={"email": unique_email("dash"), "message_count": count},
        )
    )


def connect_body(account: dict[str, Any]) -> dict[str, Any]:
    return {
        "provider": "microsoft",
        "access_token": account["access_token"],
        "refresh_token": account["refresh_token"],
        "expires_in": account["expires_in"],
        "email": account["email"],
    }


async def test_pages_load_without_console_errors_and_the_overview_is_captured(
    operator_page: tuple[Page, Console],
    sim: Sim,
    dashboard_api: LiveApi,
    worker_rt: Runtime,
    artifacts: Path,
) -> None:
    page, console = operator_page
    account = await outlook_account(sim, 1200)
    mailbox_id = await connect_via_api(dashboard_api, "olivia", connect_body(account))
    await run_worker(worker_rt)
    await worker_rt.activity.flush()

    await page.goto("/dashboard")
    await refreshed(page)
    assert await page.locator("[data-metric=mailboxes]").inner_text() == "1"
    assert await page.locator("[data-metric=messages]").inner_text() == "1,200"
    assert "connected" in await page.locator("#by-status").inner_text()
    throughput = await page.locator("#activity td[data-window='15']").first.inner_text()
    assert float(throughput.replace(",", "")) > 0
    await page.screenshot(path=str(artifacts / "dashboard-overview.png"), full_page=True)

    await page.goto("/dashboard/mailboxes")
    await refreshed(page)
    row = page.locator(f"tr[data-mailbox='{mailbox_id}']")
    assert account["email"] in await row.inner_text()
    assert await row.locator("progress").get_attribute("aria-valuenow") == "100"

    await row.locator("a").first.click()
    await page.wait_for_url(f"**/dashboard/mailboxes/{mailbox_id}")
    await refreshed(page)
    streams = await page.locator("#streams tbody tr").count()
    assert streams >= 5  # the simulator's folders
    assert "Inbox" in await page.locator("#streams").inner_text()
    assert (await page.locator("#in-sync").inner_text()).startswith("yes")
    await page.screenshot(path=str(artifacts / "dashboard-mailbox.png"), full_page=True)
    assert console.errors == []


async def test_progress_rises_to_100_percent_without_a_reload(
    operator_page: tuple[Page, Console],
    sim: Sim,
    dashboard_api: LiveApi,
    worker_rt: Runtime,
) -> None:
    page, console = operator_page
    account = await outlook_account(sim, 6000)
    # Slow enough to watch: every Graph request takes 0.4 s.
    await sim.call("PUT", "/_sim/faults", json={"latency_ms": 400})
    mailbox_id = await connect_via_api(dashboard_api, "paula", connect_body(account))
    await page.goto(f"/dashboard/mailboxes/{mailbox_id}")
    await page.evaluate("window.__sameDocument = true")

    worker = asyncio.create_task(run_worker(worker_rt, max_seconds=120))
    seen: list[int] = []
    try:
        async with asyncio.timeout(90):
            while not seen or seen[-1] < 100:
                value = await page.get_attribute("#progress", "aria-valuenow")
                if value is not None and (not seen or int(value) != seen[-1]):
                    seen.append(int(value))
                await asyncio.sleep(0.05)
    finally:
        await worker
    assert seen[-1] == 100
    assert any(0 < v < 100 for v in seen), seen
    assert seen == sorted(seen), seen
    assert await page.evaluate("window.__sameDocument") is True
    assert await page.locator("#status").inner_text() == "connected"
    assert console.errors == []


async def test_sync_now_starts_a_sync(
    operator_page: tuple[Page, Console],
    sim: Sim,
    dashboard_api: LiveApi,
    worker_rt: Runtime,
) -> None:
    page, console = operator_page
    account = await outlook_account(sim, 300)
    mailbox_id = await connect_via_api(dashboard_api, "sam", connect_body(account))
    await run_worker(worker_rt)
    before = await last_synced_at(worker_rt, mailbox_id)
    assert before is not None
    # Mail arrives, but nobody tells us (no notification): only a sync would find it.
    await sim.call("DELETE", f"/_sim/microsoft/subscriptions/{await subscription_of(sim, account)}")
    await sim.call(
        "POST",
        f"/_sim/microsoft/accounts/{account['email']}/messages",
        json={"folder": "inbox", "count": 4},
    )

    await page.goto(f"/dashboard/mailboxes/{mailbox_id}")
    await page.get_by_role("button", name="Sync now").click()
    await page.wait_for_url(f"**/dashboard/mailboxes/{mailbox_id}?done=sync")
    assert "Sync requested" in await page.locator(".banner").inner_text()
    assert await worker_rt.redis.keys(f"arq:job:sync:{mailbox_id}:now*")

    await run_worker(worker_rt)
    assert (await last_synced_at(worker_rt, mailbox_id) or before) > before
    await refreshed(page, times=2)  # the first may have left before the sync ended
    assert "304 messages" in await page.locator(".summary").inner_text()
    assert console.errors == []


async def test_an_auth_expired_mailbox_shows_its_error_and_what_to_do(
    operator_page: tuple[Page, Console],
    sim: Sim,
    dashboard_api: LiveApi,
    worker_rt: Runtime,
    artifacts: Path,
) -> None:
    page, console = operator_page
    account = await outlook_account(sim, 50)
    await sim.call(
        "POST", f"/_sim/microsoft/accounts/{account['email']}/revoke", json={"access_tokens": True}
    )
    mailbox_id = await connect_via_api(dashboard_api, "rita", connect_body(account))
    await run_worker(worker_rt)

    await page.goto("/dashboard/mailboxes?status=auth_expired")
    row = page.locator(f"tr[data-mailbox='{mailbox_id}']")
    assert "AADSTS" in await row.locator(".error-cell").inner_text()
    await row.locator("a").first.click()
    await page.wait_for_url(f"**/dashboard/mailboxes/{mailbox_id}")
    assert await page.locator("#status").inner_text() == "auth_expired"
    assert "AADSTS" in await page.locator("#last-error").inner_text()
    advice = await page.locator("#advice").inner_text()
    assert "reconnect" in advice.lower() and "/mail/connect" in advice
    # Nothing to sync until the user reconnects: no Sync now; disconnecting still is possible.
    assert await page.get_by_role("button", name="Sync now").count() == 0
    assert await page.get_by_role("button", name="Disconnect").count() == 1
    assert "AuthExpiredError" in await page.locator("#errors").inner_text()
    await page.screenshot(path=str(artifacts / "dashboard-auth-expired.png"), full_page=True)
    assert console.errors == []


async def test_disconnect_asks_first(
    operator_page: tuple[Page, Console],
    sim: Sim,
    dashboard_api: LiveApi,
    worker_rt: Runtime,
) -> None:
    page, _ = operator_page
    account = await outlook_account(sim, 20)
    mailbox_id = await connect_via_api(dashboard_api, "dora", connect_body(account))
    await page.goto(f"/dashboard/mailboxes/{mailbox_id}")
    questions: list[str] = []

    async def answer(dialog: Any, accept: bool) -> None:
        questions.append(dialog.message)
        await (dialog.accept() if accept else dialog.dismiss())

    page.once("dialog", lambda d: asyncio.ensure_future(answer(d, False)))
    await page.get_by_role("button", name="Disconnect").click()
    await page.wait_for_timeout(300)
    assert questions and "Disconnect this mailbox?" in questions[0]
    assert await status_of(worker_rt, mailbox_id) != "disconnected"

    page.once("dialog", lambda d: asyncio.ensure_future(answer(d, True)))
    await page.get_by_role("button", name="Disconnect").click()
    await page.wait_for_url(f"**/dashboard/mailboxes/{mailbox_id}?done=disconnect")
    assert await status_of(worker_rt, mailbox_id) == "disconnected"
    assert await page.locator("#status").inner_text() == "disconnected"


async def test_a_token_without_the_operator_role_gets_403(
    browser: Browser, dashboard_api: LiveApi
) -> None:
    context = await browser.new_context(
        base_url=dashboard_api.base_url, extra_http_headers=bearer("alice")
    )
    try:
        page = await context.new_page()
        response = await page.goto("/dashboard")
        assert response is not None and response.status == 403
        assert "Operators only" in await page.locator("h1").inner_text()
        allowed = await context.new_page()
        await allowed.set_extra_http_headers(bearer("ops", roles=["mailsync.operator"]))
        ok = await allowed.goto("/dashboard")
        assert ok is not None and ok.status == 200
    finally:
        await context.close()


async def last_synced_at(rt: Runtime, mailbox_id: str) -> Any:
    async with rt.sessions() as session:
        return await session.scalar(
            text("SELECT last_synced_at FROM mailboxes WHERE id = :id"),
            {"id": uuid.UUID(mailbox_id)},
        )


async def status_of(rt: Runtime, mailbox_id: str) -> Any:
    async with rt.sessions() as session:
        return await session.scalar(
            text("SELECT status FROM mailboxes WHERE id = :id"), {"id": uuid.UUID(mailbox_id)}
        )


async def subscription_of(sim: Sim, account: dict[str, Any]) -> str:
    [subscription] = [
        s
        for s in await sim.call("GET", "/_sim/microsoft/subscriptions")
        if s["userId"] == account["user_id"]
    ]
    return str(subscription["id"])
