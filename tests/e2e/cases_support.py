"""Case plumbing for end-to-end tests: the /cases API over HTTP, entries and links as stored."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import orjson
from sqlalchemy import text

from app.sync.runtime import Runtime
from tests.conftest import LiveApi, bearer

CONTACT = "counsel@lawfirm.example"
OTHER = "adjuster@insurer.example"


async def call(
    live_api: LiveApi, user: str, method: str, path: str, **kwargs: Any
) -> httpx.Response:
    async with httpx.AsyncClient(base_url=live_api.base_url, timeout=30) as client:
        return await client.request(method, path, headers=bearer(user), **kwargs)


async def put_case(live_api: LiveApi, user: str, case_id: str, **body: Any) -> dict[str, Any]:
    response = await call(live_api, user, "PUT", f"/cases/{case_id}", json=body)
    assert response.status_code in (200, 201), response.text
    return dict(response.json())


async def get_case(live_api: LiveApi, user: str, case_id: str) -> dict[str, Any]:
    response = await call(live_api, user, "GET", f"/cases/{case_id}")
    assert response.status_code == 200, response.text
    return dict(response.json())


async def case_message_ids(
    live_api: LiveApi, user: str, case_id: str, *, limit: int = 500
) -> list[str]:
    """Every page of GET /cases/{id}/messages, checking the order on the way."""
    found: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"limit": limit}
        if cursor:
            params["cursor"] = cursor
        response = await call(live_api, user, "GET", f"/cases/{case_id}/messages", params=params)
        assert response.status_code == 200, response.text
        body = response.json()
        found += body["items"]
        cursor = body["next_cursor"]
        if cursor is None:
            break
    received = [m["received_at"] for m in found]
    assert received == sorted(received, reverse=True)
    ids = [m["provider_message_id"] for m in found]
    assert len(ids) == len(set(ids))
    return ids


def entry_of(case: dict[str, Any], mailbox_id: str, email: str) -> dict[str, Any]:
    [mailbox] = [m for m in case["mailboxes"] if m["mailbox_id"] == mailbox_id]
    [entry] = [c for c in mailbox["contacts"] if c["email"] == email]
    return dict(entry)


async def entry_rows(rt: Runtime, mailbox_id: str) -> dict[str, dict[str, Any]]:
    async with rt.sessions() as session:
        rows = await session.execute(
            text("SELECT * FROM case_searches WHERE mailbox_id = :id"),
            {"id": uuid.UUID(mailbox_id)},
        )
        return {r.email: dict(r._mapping) for r in rows.all()}


async def links(rt: Runtime, mailbox_id: str) -> set[tuple[str, str]]:
    """(contact, provider message id) of every link in the mailbox."""
    async with rt.sessions() as session:
        rows = await session.execute(
            text("SELECT email, provider_message_id FROM case_links WHERE mailbox_id = :id"),
            {"id": uuid.UUID(mailbox_id)},
        )
        return {(r[0], r[1]) for r in rows.all()}


async def stored_ids(rt: Runtime, mailbox_id: str) -> set[str]:
    async with rt.sessions() as session:
        rows = await session.execute(
            text("SELECT provider_message_id FROM messages WHERE mailbox_id = :id"),
            {"id": uuid.UUID(mailbox_id)},
        )
        return {r[0] for r in rows.all()}


async def case_events(rt: Runtime, mailbox_id: str) -> list[dict[str, Any]]:
    async with rt.sessions() as session:
        rows = await session.execute(
            text(
                "SELECT kind, payload FROM outbox_events WHERE mailbox_id = :id "
                "AND kind LIKE 'case.%' ORDER BY id"
            ),
            {"id": uuid.UUID(mailbox_id)},
        )
        return [{"kind": r.kind, "payload": orjson.loads(r.payload)} for r in rows.all()]


async def message_events(rt: Runtime, mailbox_id: str) -> tuple[list[str], list[str]]:
    """(ids announced as received, ids announced as deleted) by the mailbox's outbox."""
    async with rt.sessions() as session:
        rows = await session.execute(
            text(
                "SELECT payload FROM outbox_events WHERE mailbox_id = :id "
                "AND kind = 'messages.changed' ORDER BY position"
            ),
            {"id": uuid.UUID(mailbox_id)},
        )
        received: list[str] = []
        deleted: list[str] = []
        for (payload,) in rows.all():
            body = orjson.loads(payload)
            received += (body.get("received") or {}).get("provider_message_id", [])
            deleted += body.get("deleted", [])
        return received, deleted


def linked_by_events(events: list[dict[str, Any]], case_id: str) -> list[str]:
    return [
        m["provider_message_id"]
        for e in events
        if e["kind"] == "case.message_linked" and e["payload"]["case_id"] == case_id
        for m in e["payload"]["messages"]
    ]
