"""What the demo does once the processes run: seed the simulator with two mailboxes, connect
them through the public API as a frontend would, then keep mail changing at the providers,
whose push notifications bring the changes to mailsync's webhooks."""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
import ssl
from collections import deque
from dataclasses import dataclass
from typing import Any

import httpx

log = logging.getLogger(__name__)

OUTLOOK_EMAIL = "megan.bowen@contoso.com"
GMAIL_EMAIL = "alex.wilber@example.com"

_SUBJECTS = (
    "Quarterly numbers",
    "Lunch on Thursday?",
    "Re: contract draft",
    "Your order has shipped",
    "Standup notes",
    "Invitation: design review",
    "Fwd: travel plans",
    "Build failed on main",
)


@dataclass
class Account:
    provider: str
    email: str
    tokens: dict[str, Any]


class SimulatorControl:
    """The simulator's control API (`/_sim/...`)."""

    def __init__(self, base_url: str, ca_file: str) -> None:
        self.base_url = base_url
        self.client = httpx.AsyncClient(
            base_url=base_url, verify=ssl.create_default_context(cafile=ca_file), timeout=120
        )

    async def call(self, method: str, path: str, **kwargs: Any) -> Any:
        response = await self.client.request(method, path, **kwargs)
        response.raise_for_status()
        return response.json()

    async def healthy(self) -> bool:
        try:
            await self.call("GET", "/_sim/healthz")
        except httpx.HTTPError:
            return False
        return True

    async def create_outlook(self, email: str, messages: int) -> Account:
        body = await self.call(
            "POST", "/_sim/microsoft/accounts", json={"email": email, "message_count": messages}
        )
        return Account("microsoft", email, body)

    async def create_gmail(self, email: str, messages: int) -> Account:
        body = await self.call(
            "POST", "/_sim/google/accounts", json={"email": email, "messages": messages, "seed": 7}
        )
        return Account("google", email, body)

    async def push_to(self, endpoint: str, audience: str) -> None:
        """Gmail's Pub/Sub push subscription: where the simulator delivers notifications."""
        await self.call(
            "PUT", "/_sim/google/push", json={"endpoint": endpoint, "audience": audience}
        )

    async def aclose(self) -> None:
        await self.client.aclose()


async def connect(api: httpx.AsyncClient, bearer: str, account: Account) -> str:
    """POST /mail/connect, exactly as a frontend does after its OAuth flow."""
    tokens = account.tokens
    response = await api.post(
        "/mail/connect",
        headers={"Authorization": f"Bearer {bearer}"},
        json={
            "provider": account.provider,
            "access_token": tokens["access_token"],
            "refresh_token": tokens["refresh_token"],
            "expires_in": tokens["expires_in"],
            "email": account.email,
        },
    )
    response.raise_for_status()
    return str(response.json()["mailbox_id"])


class Trickle:
    """Small, realistic changes at both providers: new mail, reads, moves, label changes,
    deletions. The simulator notifies mailsync of each (Graph change notifications, Gmail
    Pub/Sub pushes); nothing here talks to mailsync."""

    def __init__(self, sim: SimulatorControl, outlook: Account, gmail: Account) -> None:
        self.sim = sim
        self.outlook = outlook
        self.gmail = gmail
        self.changes = 0
        self._rng = random.Random(20)
        self._gmail_recent: deque[str] = deque(maxlen=50)
        self._steps = itertools.cycle(
            (
                self._outlook_new_mail,
                self._gmail_new_mail,
                self._outlook_read,
                self._gmail_read,
                self._outlook_move,
                self._gmail_label,
                self._outlook_new_mail,
                self._gmail_delete,
            )
        )

    async def step(self) -> str:
        change = next(self._steps)
        description = await change()
        self.changes += 1
        return description

    async def run(self, interval: float, limit: int = 0) -> None:
        while not limit or self.changes < limit:
            try:
                description = await self.step()
                log.debug("trickle: %s", description)
            except httpx.HTTPError as exc:
                log.warning("trickle: simulator call failed: %s", exc)
            await asyncio.sleep(interval)

    def _outlook(self, path: str) -> str:
        return f"/_sim/microsoft/accounts/{self.outlook.email}/{path}"

    def _google(self, path: str) -> str:
        return f"/_sim/google/accounts/{self.gmail.email}/{path}"

    async def _outlook_new_mail(self) -> str:
        count = self._rng.randint(1, 3)
        await self.sim.call(
            "POST",
            self._outlook("messages"),
            json={"folder": "inbox", "count": count, "subject": self._rng.choice(_SUBJECTS)},
        )
        return f"outlook: {count} new in Inbox"

    async def _outlook_read(self) -> str:
        await self.sim.call("POST", self._outlook("messages/read"), json={"folder": "inbox"})
        return "outlook: newest Inbox message read"

    async def _outlook_move(self) -> str:
        await self.sim.call(
            "POST",
            self._outlook("messages/move"),
            json={"folder": "inbox", "destination": "archive"},
        )
        return "outlook: newest Inbox message archived"

    async def _gmail_new_mail(self) -> str:
        body = await self.sim.call(
            "POST", self._google("messages"), json={"subject": self._rng.choice(_SUBJECTS)}
        )
        self._gmail_recent.extend(m["id"] for m in body["messages"])
        return "gmail: 1 new in INBOX"

    async def _gmail_read(self) -> str:
        if not self._gmail_recent:
            return await self._gmail_new_mail()
        await self.sim.call(
            "POST",
            self._google("messages/mark"),
            json={"ids": [self._gmail_recent[-1]], "read": True},
        )
        return "gmail: newest message read"

    async def _gmail_label(self) -> str:
        if not self._gmail_recent:
            return await self._gmail_new_mail()
        await self.sim.call(
            "POST",
            self._google("messages/modify"),
            json={"ids": [self._gmail_recent[-1]], "add_label_ids": ["STARRED"]},
        )
        return "gmail: newest message starred"

    async def _gmail_delete(self) -> str:
        if len(self._gmail_recent) < 2:
            return await self._gmail_new_mail()
        victim = self._gmail_recent.popleft()
        await self.sim.call("POST", self._google("messages/delete"), json={"ids": [victim]})
        return "gmail: a message deleted"
