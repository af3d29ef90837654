"""Liveness, readiness (PostgreSQL and Redis answer) and Prometheus metrics."""

from __future__ import annotations

import asyncio
import logging

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text

from app.api.deps import RuntimeDep
from app.metrics import MAILBOXES

log = logging.getLogger(__name__)

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(rt: RuntimeDep) -> JSONResponse:
    checks: dict[str, str] = {}

    async def database() -> None:
        async with rt.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    async def redis() -> None:
        await rt.redis.ping()

    for name, check in (("postgres", database), ("redis", redis)):
        try:
            await asyncio.wait_for(check(), timeout=2.0)
            checks[name] = "ok"
        except Exception as exc:
            log.warning("readiness: %s unavailable: %s", name, exc.__class__.__name__)
            checks[name] = "unavailable"
    ready = all(v == "ok" for v in checks.values())
    return JSONResponse(
        {"status": "ready" if ready else "unavailable", "checks": checks},
        status_code=200 if ready else 503,
    )


@router.get("/metrics", response_class=Response)
async def metrics(rt: RuntimeDep) -> Response:
    try:
        async with rt.engine.connect() as conn:
            rows = (
                await conn.execute(
                    text("SELECT provider, status, count(*) FROM mailboxes GROUP BY 1, 2")
                )
            ).all()
        MAILBOXES.clear()
        for provider, status, count in rows:
            MAILBOXES.labels(provider=provider, status=status).set(count)
    except Exception as exc:  # metrics must answer even when the database does not
        log.warning("metrics: mailbox gauge unavailable: %s", exc.__class__.__name__)
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
