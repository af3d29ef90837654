"""The publisher process: the publish loop, plus its own /healthz, /readyz and /metrics."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections.abc import Iterator

import uvicorn
from fastapi import FastAPI, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from app.config import Settings
from app.events.publisher import Publisher, install_signal_handlers
from app.logging import configure_logging

log = logging.getLogger(__name__)


def health_app(publisher: Publisher) -> FastAPI:
    app = FastAPI(title="mailsync publisher", openapi_url=None, docs_url=None, redoc_url=None)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        lag = publisher.lag
        oldest = lag.oldest_unpublished_at if lag else None
        body = {
            "status": "ready" if publisher.ready else "unavailable",
            "checks": {
                "postgres": "ok" if publisher.database_ok else "unavailable",
                "nats": "ok" if publisher.nats_connected else "unavailable",
                "stream": "ok" if publisher.stream_ready else "unavailable",
            },
            "outbox": {
                "unpublished_rows": lag.unpublished if lag else None,
                "oldest_unpublished_age_seconds": (
                    round(max(0.0, time.time() - oldest.timestamp()), 3) if oldest else 0.0
                ),
            },
            "last_error": publisher.last_error,
        }
        return JSONResponse(body, status_code=200 if publisher.ready else 503)

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return app


# Collections start after this many net allocations of tracked objects (CPython: 700).
_GC_THRESHOLDS = (10_000, 10, 100)


def _tune_the_collector() -> None:
    """A round decodes its rows' payloads (a dozen lists and a thousand-odd strings per
    page) and builds an event from each message: with CPython's default thresholds the
    collector ran every few hundred events, walking the round's live payloads each time.
    None of it is cyclic garbage; reference counting frees it when the round ends."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*_GC_THRESHOLDS)


class _HealthServer(uvicorn.Server):
    """uvicorn without its signal handling: SIGTERM belongs to the publish loop, which
    finishes its round before the process exits."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def run(settings: Settings, *, host: str, port: int) -> int:
    configure_logging(settings.log_level)
    if not settings.events_enabled:
        log.warning("EVENTS_ENABLED is false: nothing to publish; exiting")
        return 0
    publisher = Publisher(settings)
    _tune_the_collector()
    server: _HealthServer | None = None
    serving: asyncio.Task[None] | None = None
    if port:
        config = uvicorn.Config(
            health_app(publisher),
            host=host,
            port=port,
            log_level="warning",
            access_log=False,
            lifespan="off",
        )
        server = _HealthServer(config)
        serving = asyncio.create_task(server.serve())
    install_signal_handlers(publisher, [server] if server else [])
    try:
        await publisher.run()
    finally:
        if server is not None and serving is not None:
            server.should_exit = True
            await asyncio.gather(serving, return_exceptions=True)
        await publisher.close()
    log.info("publisher stopped")
    return 0
