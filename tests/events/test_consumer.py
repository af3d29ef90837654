"""A consumer that subscribes before a mailbox is connected ends with a copy equal to the
provider's mailbox, from events alone: through a backfill, mutations and a dead cursor."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from app.config import Settings
from app.simulator.server import SimulatorServer
from app.sync.runtime import Runtime
from tests.conftest import LiveApi, run_worker
from tests.e2e.support import (
    Sim,
    connect_via_api,
    sim_session,
    unique_email,
    wait_for_notifications,
)
from tests.e2e.test_outlook import expected_labels
from tests.events.support import Consumer, published, stored

_EVENT_SETTINGS = (
    "nats_url",
    "events_stream",
    "events_subject_prefix",
    "events_publisher_port",
    "events_poll_seconds",
)


@pytest.fixture
async def sim(simulator: SimulatorServer) -> AsyncIterator[Sim]:
    async with sim_session(simulator) as client:
        yield client


@pytest.fixture
def worker_rt(sim_rt: Runtime, events_settings: Settings) -> Runtime:
    sim_rt.settings = sim_rt.settings.model_copy(
        update={name: getattr(events_settings, name) for name in _EVENT_SETTINGS}
    )
    return sim_rt


async def _truth(sim: Sim, email: str) -> dict[str, dict[str, Any]]:
    body = await sim.call("GET", f"/_sim/microsoft/accounts/{email}/messages")
    return {
        m["id"]: {
            "labels": expected_labels(m),
            "is_read": m["is_read"],
            "subject": m["subject"],
            "thread_id": m["conversation_id"],
        }
        for m in body["messages"]
    }


async def _settle(consumer: Consumer, rt: Runtime) -> None:
    await published(rt)
    await consumer.drain()


async def test_a_consumer_subscribed_before_connect_mirrors_the_mailbox(
    sim: Sim,
    live_api: LiveApi,
    worker_rt: Runtime,
    consumer: Consumer,
    publisher_running: Any,
) -> None:
    account = await sim.call(
        "POST",
        "/_sim/microsoft/accounts",
        json={"email": unique_email("events"), "message_count": 600},
    )
    email = account["email"]
    body = {
        "provider": "microsoft",
        "access_token": account["access_token"],
        "refresh_token": account["refresh_token"],
        "expires_in": account["expires_in"],
        "email": email,
    }
    async with publisher_running():
        mailbox_id = await connect_via_api(live_api, "ella", body)
        await run_worker(worker_rt, max_seconds=120)
        await _settle(consumer, worker_rt)
        assert consumer.messages(mailbox_id) == await _truth(sim, email)
        # The newest-first view and the enumeration that confirms it: one email.received
        # each, and no email.updated for a message that did not change.
        assert set(consumer.count("email.received").values()) == {1}
        assert len(consumer.count("email.received")) == 600
        assert consumer.count("email.updated") == {}
        assert [e["type"] for e in consumer.lifecycle] == ["mailbox.connected"]

        # Add, delete, move, read, relabel at the provider; Graph notifies; one sync.
        calls = [
            ("messages", {"folder": "inbox", "count": 7}),
            ("messages/delete", {"folder": "inbox", "count": 3}),
            ("messages/move", {"folder": "inbox", "count": 4, "destination": "archive"}),
            ("messages/read", {"folder": "inbox", "count": 5, "is_read": False}),
            ("messages/categories", {"folder": "inbox", "count": 2, "categories": ["Red"]}),
        ]
        for path, args in calls:
            await sim.call("POST", f"/_sim/microsoft/accounts/{email}/{path}", json=args)
        # Bounds for a loaded machine; every wait is for a condition.
        await wait_for_notifications(worker_rt, mailbox_id, "change:%", within=60)
        await run_worker(worker_rt, max_seconds=120)
        await _settle(consumer, worker_rt)
        assert consumer.messages(mailbox_id) == await _truth(sim, email)

        # A dead delta link on the inbox: the folder is rebuilt; the copy still matches.
        await sim.call(
            "POST",
            f"/_sim/microsoft/accounts/{email}/messages/delete",
            json={"folder": "inbox", "count": 5},
        )
        await sim.call(
            "POST",
            f"/_sim/microsoft/accounts/{email}/messages",
            json={"folder": "inbox", "count": 6},
        )
        await sim.call(
            "POST", f"/_sim/microsoft/accounts/{email}/delta/expire", json={"folder": "inbox"}
        )
        from app.sync.engine import SyncEngine

        await SyncEngine(worker_rt, "w").run_slice(uuid.UUID(mailbox_id))
        await _settle(consumer, worker_rt)

    truth = await _truth(sim, email)
    assert consumer.messages(mailbox_id) == truth == await stored(worker_rt, mailbox_id)
    # After de-duplication no message was received twice (a move keeps its id: it is an
    # update, or a deletion and a return, never a second first arrival... unless it did
    # leave the mailbox for a while, which none of these did).
    received = consumer.count("email.received")
    assert max(received.values()) == 1, [k for k, v in received.items() if v > 1]
    # Every event once: distinct ids, each stored once by JetStream.
    ids = [r.msg_id for r in consumer.events]
    assert len(ids) == len(set(ids))
    assert all(r.msg_id == r.event["event_id"] for r in consumer.events)
    # In commit order: within the mailbox, versions never go back in stream order.
    versions = [r.event["version"] for r in consumer.events if "version" in r.event]
    assert versions == sorted(versions)
