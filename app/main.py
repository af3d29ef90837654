"""`uvicorn app.main:app`: the HTTP API."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.routing import APIRoute

from app.api.errors import install_error_handlers
from app.api.routes import cases, events, health, mail, mailboxes, messages, threads, webhooks
from app.config import Settings, get_settings
from app.dashboard.routes import install_dashboard
from app.logging import configure_logging
from app.providers.gmail.push import PushVerifier
from app.sync.runtime import Runtime


def _operation_id(route: APIRoute) -> str:
    # Stable, readable operationIds for the committed openapi.json.
    return f"{route.tags[0]}-{route.name}" if route.tags else route.name


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        configure_logging(settings.log_level)
        rt = await Runtime.create(settings)
        rt.activity.start()
        app.state.rt = rt
        # One verifier per process: it caches Google's push signing keys.
        app.state.push_verifier = PushVerifier(settings)
        try:
            yield
        finally:
            await rt.close()

    app = FastAPI(
        title="mailsync",
        version="0.1.0",
        description="Keeps a normalized copy of Gmail and Microsoft 365 mailboxes in PostgreSQL.",
        lifespan=lifespan,
        generate_unique_id_function=_operation_id,
    )
    app.state.settings = settings
    install_error_handlers(app)
    app.include_router(mail.router)
    app.include_router(messages.router)
    app.include_router(threads.router)
    app.include_router(mailboxes.router)
    app.include_router(cases.router)
    app.include_router(webhooks.router)
    app.include_router(health.router)
    app.include_router(events.router)
    install_dashboard(app)
    return app


def __getattr__(name: str) -> FastAPI:
    # `uvicorn app.main:app` builds the app on first access, so importing this module
    # (tests, openapi generation) never requires production settings.
    if name == "app":
        application = create_app()
        globals()["app"] = application
        return application
    raise AttributeError(name)
