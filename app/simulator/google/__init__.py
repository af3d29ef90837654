"""Simulated google endpoints (filled in by the google simulator work)."""

from __future__ import annotations

from fastapi import APIRouter

from app.simulator.app import Simulator


def build_routers(sim: Simulator) -> list[APIRouter]:
    return []
