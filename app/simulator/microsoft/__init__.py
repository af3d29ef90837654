"""Simulated Microsoft identity platform and Graph mail, faithful to their public docs.

Routers: the identity endpoints MSAL uses (`/{tenant}/v2.0/.well-known/openid-configuration`,
`/{tenant}/oauth2/v2.0/token`), Graph v1.0 (`/v1.0/...`) and the control API
(`/_sim/microsoft/...`). State lives in `sim.extra["microsoft"]` (see `state.py`).
"""

from __future__ import annotations

from fastapi import APIRouter

from app.simulator.app import Simulator
from app.simulator.microsoft.control import build_control_router
from app.simulator.microsoft.graph import build_graph_router
from app.simulator.microsoft.identity import build_identity_router
from app.simulator.microsoft.state import get_state


def build_routers(sim: Simulator) -> list[APIRouter]:
    get_state(sim)
    # Control first: its fixed paths must win over the identity routes' {tenant} segment.
    return [build_control_router(sim), build_graph_router(sim), build_identity_router(sim)]
