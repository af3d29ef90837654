"""`uvicorn app.main:app`: the HTTP API."""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.routing import APIRoute

from app.api.errors import install_error_handlers
from app.api.routes import (
    cases,
    events,
    health,
    mail,
    mailboxes,
    messages,
    threads,
    webhook_log,
    webhooks,
)
from app.config import Settings, get_settings
from app.dashboard.routes import install_dashboard
from app.logging import configure_logging
from app.providers.gmail.push import PushVerifier
from app.sync.runtime import Runtime
from app.sync.webhook_intake import WebhookIntake
from app.sync.webhook_log import OncePerInterval


def _operation_id(route: APIRoute) -> str:
    # Stable, readable operationIds for the committed openapi.json.
    return f"{route.tags[0]}-{route.name}" if route.tags else route.name


# Collections start after this many net allocations of tracked objects (CPython's default:
# 700, 10, 10). See `_tune_the_collector`.
_GC_THRESHOLDS = (10_000, 10, 100)


def _tune_the_collector() -> None:
    """The API process holds a large, long-lived heap (FastAPI, pydantic, SQLAlchemy,
    asyncpg and the app), and a webhook storm allocates fast: with the default thresholds
    the collector runs every few requests, and its full passes walk that whole heap while
    every request in flight waits (README, "Push": the figures). Freezing what exists at
    start-up takes it out of every collection; rarer collections of what requests leave
    behind cost little memory, since reference counting frees almost all of it."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*_GC_THRESHOLDS)


def create_app(settings: Settings | None = None, *, tune_collector: bool = False) -> FastAPI:
    """`tune_collector`: for the served process (`uvicorn app.main:app`, `mailsync api`);
    tests build many apps in one process and leave its collector alone."""
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        configure_logging(settings.log_level)
        rt = await Runtime.create(settings)
        rt.activity.start()
        app.state.rt = rt
        # One verifier per process: it caches Google's push signing keys.
        app.state.push_verifier = PushVerifier(settings)
        # One intake per process: it records webhook requests in groups (group commit).
        intake = WebhookIntake(rt)
        await intake.start()
        app.state.webhook_intake = intake
        if tune_collector:
            _tune_the_collector()
        try:
            yield
        finally:
            await intake.stop()
            await rt.close()

    app = FastAPI(
        title="mailsync",
        version="0.1.0",
        description="Keeps a normalized copy of Gmail and Microsoft 365 mailboxes in PostgreSQL.",
        lifespan=lifespan,
        generate_unique_id_function=_operation_id,
    )
    app.state.settings = settings
    # Refused pushes repeat as fast as a sender likes: say what to fix once a minute.
    app.state.unsigned_push_log = OncePerInterval(logging.getLogger("app.api.routes.webhooks"))
    app.state.refused_push_log = OncePerInterval(logging.getLogger("app.api.routes.webhooks"))
    install_error_handlers(app)
    # Webhook storms are the hottest path: their routes are matched first.
    app.include_router(webhooks.router)
    app.include_router(mail.router)
    app.include_router(messages.router)
    app.include_router(threads.router)
    app.include_router(mailboxes.router)
    app.include_router(cases.router)
    app.include_router(webhook_log.router)
    app.include_router(health.router)
    app.include_router(events.router)
    install_dashboard(app)
    return app


def __getattr__(name: str) -> FastAPI:
    # `uvicorn app.main:app` builds the app on first access, so importing this module
    # (tests, openapi generation) never requires production settings.
    if name == "app":
        application = create_app(tune_collector=True)
        globals()["app"] = application
        return application
    raise AttributeError(name)
