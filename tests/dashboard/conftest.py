"""Real headless Chromium (Debian's package, driven by Playwright) against the live API."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser, BrowserContext, ConsoleMessage, Page, async_playwright

from app.config import Settings
from app.dashboard.auth import mint_login_token
from app.simulator.server import SimulatorServer
from app.sync.runtime import Runtime
from tests.conftest import LiveApi
from tests.e2e.support import Sim, sim_session

CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
ARTIFACTS = Path(os.environ.get("ARTIFACTS_DIR", Path(__file__).resolve().parents[2] / "artifacts"))


@pytest.fixture(scope="session")
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            # CI runs as root, where Chromium's sandbox cannot start.
            args=["--no-sandbox"],
        )
        try:
            yield launched
        finally:
            await launched.close()


@pytest.fixture
def artifacts() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS


@pytest.fixture
async def dashboard_api(sim_settings: Settings, rt: Runtime) -> AsyncIterator[LiveApi]:
    """The API on a real port, refreshing dashboard pages every 0.3 s."""
    server = LiveApi(sim_settings.model_copy(update={"dashboard_refresh_seconds": 0.3})).start()
    try:
        yield server
    finally:
        import asyncio

        await asyncio.to_thread(server.stop)


@pytest.fixture
async def worker_rt(dashboard_api: LiveApi) -> AsyncIterator[Runtime]:
    """A worker's runtime: the simulator's providers, webhooks at the live API."""
    runtime = await Runtime.create(dashboard_api.settings)
    try:
        yield runtime
    finally:
        await runtime.close()


@pytest.fixture
async def sim(simulator: SimulatorServer) -> AsyncIterator[Sim]:
    async with sim_session(simulator) as client:
        yield client


class Console:
    """Everything the page reported as an error: console errors and uncaught exceptions."""

    def __init__(self, page: Page) -> None:
        self.errors: list[str] = []
        page.on("console", self._console)
        page.on("pageerror", lambda exc: self.errors.append(f"pageerror: {exc}"))

    def _console(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            self.errors.append(message.text)


@pytest.fixture
async def operator_page(
    browser: Browser, dashboard_api: LiveApi
) -> AsyncIterator[tuple[Page, Console]]:
    """A browser signed in the way an operator is: a one-time login link."""
    context: BrowserContext = await browser.new_context(
        base_url=dashboard_api.base_url, viewport={"width": 1400, "height": 1000}
    )
    page = await context.new_page()
    console = Console(page)
    token = mint_login_token(dashboard_api.settings, "ops")
    response = await page.goto(f"/dashboard/login?token={token}")
    assert response is not None and response.ok
    assert page.url == f"{dashboard_api.base_url}/dashboard"
    try:
        yield page, console
    finally:
        await context.close()


async def refreshed(page: Page, times: int = 1) -> None:
    """Wait until the live region was swapped in place `times` more times."""
    for _ in range(times):
        before: Any = await page.get_attribute("[data-live]", "data-refreshed-at") or ""
        await page.wait_for_function(
            "before => (document.querySelector('[data-live]').dataset.refreshedAt || '') !== before",
            arg=before,
            timeout=10_000,
        )
