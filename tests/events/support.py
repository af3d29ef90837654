"""A downstream consumer built from events alone, the way the contract tells one to."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import orjson
from nats.aio.client import Client as NATS
from nats.js.api import ConsumerConfig, DeliverPolicy

from app.config import Settings
from app.db.repositories.outbox import OutboxRepository
from app.events import contract
from app.sync.runtime import Runtime


@dataclass
class Received:
    seq: int
    subject: str
    msg_id: str | None
    event: dict[str, Any]


@dataclass
class Consumer:
    """Applies events by the contract's rule: per message, keep the highest `version` seen
    (deletions included, as tombstones) and drop an event whose version is not higher."""

    nc: NATS
    settings: Settings
    sub: Any = None
    events: list[Received] = field(default_factory=list)
    # (mailbox_id, provider_message_id) -> (version, state or None when deleted)
    state: dict[tuple[str, str], tuple[int, dict[str, Any] | None]] = field(default_factory=dict)
    lifecycle: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    async def start(
        cls,
        nc: NATS,
        settings: Settings,
        *,
        subject: str | None = None,
        config: ConsumerConfig | None = None,
    ) -> Consumer:
        c = cls(nc, settings)
        js = nc.jetstream()
        config = config or ConsumerConfig(deliver_policy=DeliverPolicy.ALL)
        # An ephemeral consumer lapses after 5 idle seconds by default; tests idle longer.
        config.inactive_threshold = 300.0
        c.sub = await js.pull_subscribe(
            subject or f"{settings.events_subject_prefix}.>",
            stream=settings.events_stream,
            config=config,
        )
        return c

    async def drain(self, *, within: float = 60.0) -> int:
        """Fetch and apply events until JetStream has nothing left for this consumer: none
        pending delivery and none delivered but unacknowledged (a fetch that ends empty is
        not enough on a loaded machine: the server may not have sent them yet)."""
        got = 0
        deadline = time.monotonic() + within
        while True:
            try:
                msgs = await self.sub.fetch(500, timeout=0.3)
            except TimeoutError:
                info = await self.sub.consumer_info()
                if info.num_pending == 0 and info.num_ack_pending == 0:
                    return got
                assert time.monotonic() < deadline, (
                    f"{info.num_pending} events still pending, {info.num_ack_pending} unacked"
                )
                continue
            for msg in msgs:
                await msg.ack()
                event = orjson.loads(msg.data)
                contract.parse(msg.data)  # every published event is valid by the contract
                self.events.append(
                    Received(
                        msg.metadata.sequence.stream,
                        msg.subject,
                        (msg.headers or {}).get("Nats-Msg-Id"),
                        event,
                    )
                )
                self.apply(event)
                got += 1

    def apply(self, event: dict[str, Any]) -> None:
        kind = event["type"]
        if not kind.startswith("email."):
            self.lifecycle.append(event)
            return
        key = (event["mailbox_id"], event["provider_message_id"])
        version = event["version"]
        current = self.state.get(key)
        if current is not None and current[0] >= version:
            return
        if kind == "email.deleted":
            self.state[key] = (version, None)
        else:
            self.state[key] = (
                version,
                {
                    "labels": sorted(event["labels"]),
                    "is_read": event["is_read"],
                    "subject": event["subject"],
                    "thread_id": event["provider_thread_id"],
                },
            )

    def messages(self, mailbox_id: uuid.UUID | str) -> dict[str, dict[str, Any]]:
        mid = str(mailbox_id)
        return {
            key[1]: value[1]
            for key, value in self.state.items()
            if key[0] == mid and value[1] is not None
        }

    def count(self, event_type: str) -> Counter[str]:
        return Counter(
            r.event["provider_message_id"] for r in self.events if r.event["type"] == event_type
        )

    def types(self) -> list[str]:
        return [r.event["type"] for r in self.events]

    async def close(self) -> None:
        if self.sub is not None:
            await self.sub.unsubscribe()


async def published(rt: Runtime, *, within: float = 60.0) -> None:
    """Until the outbox holds no unpublished row."""
    deadline = time.monotonic() + within
    while True:
        async with rt.sessions() as session:
            lag = await OutboxRepository(session).lag()
        if lag.unpublished == 0:
            return
        assert time.monotonic() < deadline, f"{lag.unpublished} outbox rows still unpublished"
        await asyncio.sleep(0.05)


async def stored(rt: Runtime, mailbox_id: uuid.UUID | str) -> dict[str, dict[str, Any]]:
    from sqlalchemy import text

    async with rt.sessions() as session:
        rows = await session.execute(
            text(
                "SELECT provider_message_id, labels, is_read, subject, thread_id "
                "FROM messages WHERE mailbox_id = :id"
            ),
            {"id": uuid.UUID(str(mailbox_id))},
        )
        return {
            r[0]: {"labels": sorted(r[1]), "is_read": r[2], "subject": r[3], "thread_id": r[4]}
            for r in rows.all()
        }
