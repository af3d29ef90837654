"""The simulator's control client for end-to-end tests, with faults cleared around each."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from app.simulator.server import SimulatorServer
from tests.e2e.support import Sim, sim_session


@pytest.fixture
async def sim(simulator: SimulatorServer) -> AsyncIterator[Sim]:
    async with sim_session(simulator) as client:
        yield client
