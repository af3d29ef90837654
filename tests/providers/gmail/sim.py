"""A thin client for the Google simulator's control API, shared by the simulator's and the
Gmail provider's tests."""

from __future__ import annotations

import itertools
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx

from app.simulator.server import SimulatorServer

_seq = itertools.count(1)
_COUNTERS = (
    "requests",
    "throttled",
    "token_refreshes",
    "concurrency_peak",
    "retry_after_violations",
    "in_flight",
    "quota_units",
)


@dataclass(frozen=True)
class SimAccount:
    email: str
    access_token: str
    refresh_token: str
    history_id: int

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.access_token}"}


class GoogleSim:
    def __init__(self, server: SimulatorServer, http: httpx.AsyncClient) -> None:
        self.server = server
        self.http = http

    async def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = await self.http.request(method, path, **kwargs)
        response.raise_for_status()
        return response.json()

    async def create_account(
        self, *, messages: int = 40, seed: int | None = None, **extra: Any
    ) -> SimAccount:
        n = next(_seq)
        email = f"user{n}-{uuid.uuid4().hex[:6]}@gmail-sim.test"
        body = {"email": email, "seed": n if seed is None else seed, "messages": messages, **extra}
        data = await self._json("POST", "/_sim/google/accounts", json=body)
        return SimAccount(
            email, data["access_token"], data["refresh_token"], int(data["history_id"])
        )

    async def account(self, email: str) -> dict[str, Any]:
        result: dict[str, Any] = await self._json("GET", f"/_sim/google/accounts/{email}")
        return result

    async def counters(self, email: str) -> dict[str, int]:
        """The account's request counters (zeros before its first Gmail request)."""
        zeros = dict.fromkeys(_COUNTERS, 0)
        return {**zeros, **((await self.account(email))["counters"] or {})}

    async def add(self, email: str, **body: Any) -> list[dict[str, Any]]:
        data = await self._json("POST", f"/_sim/google/accounts/{email}/messages", json=body)
        messages: list[dict[str, Any]] = data["messages"]
        return messages

    async def delete(self, email: str, ids: list[str]) -> dict[str, Any]:
        path = f"/_sim/google/accounts/{email}/messages/delete"
        result: dict[str, Any] = await self._json("POST", path, json={"ids": ids})
        return result

    async def modify(
        self, email: str, ids: list[str], add: Sequence[str] = (), remove: Sequence[str] = ()
    ) -> dict[str, Any]:
        body = {"ids": ids, "add_label_ids": list(add), "remove_label_ids": list(remove)}
        path = f"/_sim/google/accounts/{email}/messages/modify"
        result: dict[str, Any] = await self._json("POST", path, json=body)
        return result

    async def mark(self, email: str, ids: list[str], *, read: bool) -> dict[str, Any]:
        path = f"/_sim/google/accounts/{email}/messages/mark"
        result: dict[str, Any] = await self._json("POST", path, json={"ids": ids, "read": read})
        return result

    async def truth(self, email: str) -> list[dict[str, Any]]:
        data = await self._json("GET", f"/_sim/google/accounts/{email}/truth")
        messages: list[dict[str, Any]] = data["messages"]
        return messages

    async def expire_history(self, email: str) -> None:
        await self._json("POST", f"/_sim/google/accounts/{email}/history/expire")

    async def revoke(self, email: str) -> None:
        await self._json("POST", f"/_sim/google/accounts/{email}/revoke")

    async def expire_tokens(self, email: str) -> None:
        await self._json("POST", f"/_sim/google/accounts/{email}/tokens/expire")

    async def set_push(self, **config: Any) -> dict[str, Any]:
        result: dict[str, Any] = await self._json("PUT", "/_sim/google/push", json=config)
        return result

    async def deliveries(self, email: str) -> list[dict[str, Any]]:
        data = await self._json("GET", "/_sim/google/push/deliveries", params={"email": email})
        deliveries: list[dict[str, Any]] = data["deliveries"]
        return deliveries

    async def mint_push(self, email: str, history_id: int, **options: Any) -> dict[str, Any]:
        body = {"email": email, "history_id": history_id, **options}
        result: dict[str, Any] = await self._json("POST", "/_sim/google/push/mint", json=body)
        return result

    @asynccontextmanager
    async def faults(self, **changes: Any) -> AsyncIterator[None]:
        """Change fault switches for the block; the shared simulator gets its old ones back."""
        before = await self._json("GET", "/_sim/faults")
        await self._json("PUT", "/_sim/faults", json={**before, **changes})
        try:
            yield
        finally:
            await self._json("PUT", "/_sim/faults", json=before)


@asynccontextmanager
async def google_sim(server: SimulatorServer) -> AsyncIterator[GoogleSim]:
    async with httpx.AsyncClient(
        base_url=server.base_url, verify=server.ssl_context(), timeout=30.0
    ) as http:
        yield GoogleSim(server, http)
