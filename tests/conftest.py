"""Shared fixtures: a provider simulator, a private PostgreSQL database and Redis db per run."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from app.simulator.server import SimulatorServer


@pytest.fixture(scope="session")
def simulator() -> Iterator[SimulatorServer]:
    """One HTTPS simulator for the whole run; tests seed their own accounts in it."""
    server = SimulatorServer().start()
    try:
        yield server
    finally:
        server.stop()
