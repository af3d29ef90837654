"""The simulator's control client for end-to-end tests, with faults cleared around each."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from app.simulator.server import SimulatorServer
from tests.e2e.support import Sim


@pytest.fixture
async def sim(simulator: SimulatorServer) -> AsyncIterator[Sim]:
    client = Sim(simulator)
    await client.call("PUT", "/_sim/faults", json={})
    try:
        yield client
    finally:
        await client.call("PUT", "/_sim/faults", json={})
        await client.close()
