"""Connect → worker → status connected → messages listed, all through HTTP."""

from __future__ import annotations

import httpx

from app.providers import registry
from app.providers.memory import MemoryProvider, make_message
from app.sync.runtime import Runtime
from tests.conftest import bearer, run_worker


def seeded(count: int, *, page_size: int = 40) -> MemoryProvider:
    provider = MemoryProvider("microsoft", page_size=page_size)
    provider.add_stream("inbox", labels=["INBOX"])
    provider.add_stream("sent", labels=["SENT"])
    for i in range(count):
        provider.put("inbox" if i % 3 else "sent", make_message(i, read=i % 5 != 0))
    return provider


async def test_connect_sync_status_and_list(api: httpx.AsyncClient, rt: Runtime) -> None:
    provider = seeded(250)
    registry.override("microsoft", lambda s, h: provider)
    access, refresh, ttl = provider.issue_grant()
    headers = bearer("alice")

    response = await api.post(
        "/mail/connect",
        json={
            "provider": "microsoft",
            "access_token": access,
            "refresh_token": refresh,
            "expires_in": ttl,
            "email": "Alice@Example.com",
        },
        headers=headers,
    )
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["status"] == "pending" and body["email"] == "alice@example.com"

    status = (await api.get("/mail/status", headers=headers)).json()
    assert status["mailboxes"][0]["status"] == "pending"

    await run_worker(rt)

    status = (await api.get("/mail/status", headers=headers)).json()
    [mailbox] = status["mailboxes"]
    assert mailbox["status"] == "connected", mailbox
    assert mailbox["progress"] == {
        "messages_synced": 250,
        "messages_total_estimate": 250,
        "percent": 100,
    }
    assert mailbox["last_synced_at"] is not None and mailbox["last_error"] is None

    seen: list[dict] = []
    cursor = None
    while True:
        params = {"mailbox_id": body["mailbox_id"], "limit": 100}
        if cursor:
            params["cursor"] = cursor
        page = (await api.get("/mail/messages", params=params, headers=headers)).json()
        seen.extend(page["items"])
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert len(seen) == 250
    assert len({m["provider_message_id"] for m in seen}) == 250
    dates = [m["received_at"] for m in seen]
    assert dates == sorted(dates, reverse=True)
    first = next(m for m in seen if m["provider_message_id"] == "msg-0000005")
    assert first["from"] == "sender5@example.com"
    assert set(first["labels"]) == {"INBOX", "UNREAD"} and first["is_read"] is False

    # Another user sees nothing of alice's mailbox.
    other = bearer("mallory")
    assert (await api.get("/mail/status", headers=other)).json()["mailboxes"] == []
    response = await api.get(
        "/mail/messages", params={"mailbox_id": body["mailbox_id"]}, headers=other
    )
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"
