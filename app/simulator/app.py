"""The simulator's ASGI app: both providers' routers plus the shared control API."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fastapi import APIRouter, FastAPI
from fastapi.responses import JSONResponse

from app.simulator.core import FaultSettings, SimulatorCore


@dataclass
class Simulator:
    """Everything one simulator process holds. Provider packages hang their state off `extra`."""

    base_url: str
    core: SimulatorCore = field(default_factory=SimulatorCore)
    # Accepted OAuth clients (both providers); anything else gets invalid_client.
    client_id: str = "sim-client-id"
    client_secret: str = "sim-client-secret"  # noqa: S105 - a simulator credential, not a secret
    extra: dict[str, Any] = field(default_factory=dict)


def _control_router(sim: Simulator) -> APIRouter:
    router = APIRouter(prefix="/_sim", tags=["control"])

    @router.get("/faults")
    async def get_faults() -> FaultSettings:
        return sim.core.faults

    @router.put("/faults")
    async def put_faults(faults: FaultSettings) -> FaultSettings:
        sim.core.set_faults(faults)
        return sim.core.faults

    @router.get("/counters")
    async def get_counters() -> dict[str, Any]:
        return sim.core.counters.snapshot()

    @router.post("/counters/reset")
    async def reset_counters() -> dict[str, str]:
        sim.core.reset_counters()
        return {"status": "reset"}

    return router


def create_simulator_app(sim: Simulator) -> FastAPI:
    # Imported here so each provider package can import `Simulator` from this module.
    from app.simulator.google import build_routers as google_routers
    from app.simulator.microsoft import build_routers as microsoft_routers

    app = FastAPI(title="mailsync provider simulator", docs_url="/_sim/docs", openapi_url=None)
    app.state.sim = sim
    app.include_router(_control_router(sim))
    for router in (*microsoft_routers(sim), *google_routers(sim)):
        app.include_router(router)

    @app.get("/_sim/healthz")
    async def healthz() -> JSONResponse:
        return JSONResponse({"status": "ok"})

    return app
