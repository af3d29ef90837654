"""Simulated Google endpoints: OAuth token + JWKS, the Gmail API (with batch), Pub/Sub push.

State hangs off `sim.extra["google"]` (`state.google_state(sim)`); the control API under
`/_sim/google` seeds accounts and changes mailboxes. docs/google.md describes both.
"""

from __future__ import annotations

from fastapi import APIRouter

from app.simulator.app import Simulator
from app.simulator.google.batch import batch_router
from app.simulator.google.control import control_router
from app.simulator.google.gmail import GmailApi, gmail_router
from app.simulator.google.oauth import oauth_router
from app.simulator.google.state import google_state


def build_routers(sim: Simulator) -> list[APIRouter]:
    state = google_state(sim)
    api = GmailApi(sim, state)
    return [
        oauth_router(sim, state),
        gmail_router(api),
        batch_router(sim, api),
        control_router(sim, state),
    ]
