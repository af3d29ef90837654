"""Helpers shared by the Microsoft simulator tests and the Outlook provider tests."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from app.simulator.server import SimulatorServer


def unique_email(prefix: str = "user") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}@contoso.com"


def sim_client(simulator: SimulatorServer) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=simulator.base_url, verify=simulator.ssl_context(), timeout=30
    )


async def create_account(client: httpx.AsyncClient, **fields: Any) -> dict[str, Any]:
    fields.setdefault("email", unique_email())
    response = await client.post("/_sim/microsoft/accounts", json=fields)
    assert response.status_code == 201, response.text
    account: dict[str, Any] = response.json()
    return account


async def ground_truth(
    client: httpx.AsyncClient, user: str, folder: str | None = None
) -> list[dict[str, Any]]:
    params = {"folder": folder} if folder else {}
    response = await client.get(f"/_sim/microsoft/accounts/{user}/messages", params=params)
    assert response.status_code == 200, response.text
    messages: list[dict[str, Any]] = response.json()["messages"]
    return messages


def counters(simulator: SimulatorServer, counter_key: str) -> dict[str, Any]:
    # The simulator serves from a thread of its own: a snapshot taken while it adds a
    # counter may see a dict change size, and is simply taken again.
    for _ in range(100):
        try:
            snapshot = simulator.sim.core.counters.snapshot()
            break
        except RuntimeError:
            continue
    else:
        snapshot = simulator.sim.core.counters.snapshot()
    account: dict[str, Any] = snapshot["accounts"].get(counter_key, {})
    return account


@asynccontextmanager
async def faults(client: httpx.AsyncClient, **settings: Any) -> AsyncIterator[None]:
    """Switch simulator faults on for the block; the previous settings come back after."""
    previous = (await client.get("/_sim/faults")).json()
    response = await client.put("/_sim/faults", json=previous | settings)
    assert response.status_code == 200, response.text
    try:
        yield
    finally:
        await client.put("/_sim/faults", json=previous)


async def eventually(
    probe: Callable[[], Any], *, within: float = 10.0, interval: float = 0.02
) -> Any:
    """Poll `probe` (sync or async) until it returns something truthy; fail after `within` s."""
    deadline = time.monotonic() + within
    while True:
        result = probe()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(interval)


class NotificationReceiver:
    """A plain-HTTP webhook endpoint in a thread, standing in for POST /webhooks/microsoft.

    Echoes Graph's validation token as 200 text/plain (unless told not to) and records
    every notification body it is sent.
    """

    def __init__(self, *, echo_validation: bool = True, status: int = 202) -> None:
        self.echo_validation = echo_validation
        self.status = status
        # Seconds to take over the validation answer (a cold start, a slow deployment).
        self.validation_delay = 0.0
        self.validations: list[str] = []
        self.notifications: list[dict[str, Any]] = []
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.url = f"{self.base_url}/webhooks/microsoft"
        app = Starlette(routes=[Route("/webhooks/microsoft", self._endpoint, methods=["POST"])])
        config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._sock]}, daemon=True
        )

    async def _endpoint(self, request: Request) -> Response:
        token = request.query_params.get("validationToken")
        if token is not None:
            self.validations.append(token)
            if self.validation_delay:
                await asyncio.sleep(self.validation_delay)
            if not self.echo_validation:
                return Response(status_code=500)
            return PlainTextResponse(token)
        body = await request.json()
        self.notifications.extend(body["value"])
        return Response(status_code=self.status)

    def start(self) -> NotificationReceiver:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("receiver did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self._sock.close()


class SemaphoreGate:
    """A one-process stand-in for the engine's Redis gate: N slots and a shared pause."""

    def __init__(self, limit: int) -> None:
        self._slots = asyncio.Semaphore(limit)
        self._paused_until = 0.0
        # (monotonic time, seconds) of every pause asked for.
        self.pauses: list[tuple[float, float]] = []
        self.tightened = 0

    @asynccontextmanager
    async def request(self, cost: int = 1) -> AsyncIterator[None]:
        async with self._slots:
            # A pause may be extended while we wait, hence the loop.
            while (wait := self._paused_until - time.monotonic()) > 0:  # noqa: ASYNC110
                await asyncio.sleep(wait)
            yield

    async def pause(self, seconds: float) -> None:
        self.pauses.append((time.monotonic(), seconds))
        self._paused_until = max(self._paused_until, time.monotonic() + seconds)

    async def tighten(self) -> None:
        self.tightened += 1

    async def refund(self, units: int) -> None:
        """Graph has no quota units to give back."""
