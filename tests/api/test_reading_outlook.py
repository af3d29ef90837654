"""Reading an Outlook mailbox through the API: one message, bodies, attachments, errors.

The mailbox is synced by the real worker from the Graph simulator; bodies and attachments
are then fetched from the simulator at request time.
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote, unquote

import httpx
import pytest
from sqlalchemy import text

from app.simulator.server import SimulatorServer
from app.sync.runtime import Runtime
from tests.conftest import LiveApi, bearer, run_worker
from tests.e2e.support import Sim, connect_via_api, sim_session, unique_email

HOSTILE = (
    "<html><head><script>steal()</script><style>p{}</style></head>"
    '<body onload="steal()"><p onclick="x()">Hello <b>there</b></p>'
    '<a href="javascript:alert(1)">click</a> <a href="https://example.org/ok">ok</a>'
    '<img src="https://tracker.example.net/pixel.gif?u=1"><img src="cid:chart@sim">'
    '<form action="https://evil.example"><input name="password"></form>'
    '<iframe src="https://evil.example"></iframe><svg onload="x()"></svg></body></html>'
)
NAMES = ["../../etc/passwd", 'quote"d\r\nX-Evil: 1.txt', "Grüße, résumé.pdf", "a\\b/c.txt"]


@pytest.fixture
async def sim(simulator: SimulatorServer) -> AsyncIterator[Sim]:
    async with sim_session(simulator) as client:
        yield client


@pytest.fixture
async def reader(live_api: LiveApi) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=live_api.base_url, timeout=60) as client:
        yield client


async def _synced_mailbox(
    sim: Sim, live_api: LiveApi, rt: Runtime, user: str
) -> tuple[dict[str, Any], str]:
    account = await sim.call(
        "POST",
        "/_sim/microsoft/accounts",
        json={"email": unique_email("reader"), "message_count": 60},
    )
    email = account["email"]
    await sim.call(
        "POST",
        f"/_sim/microsoft/accounts/{email}/messages",
        json={
            "folder": "inbox",
            "subject": "hostile",
            "html": HOSTILE,
            "attachments": [
                {"name": "chart.png", "content_type": "image/png", "size": 900,
                 "inline": True, "content_id": "chart@sim"},
                *({"name": n, "content_type": "text/plain", "size": 1000 + i}
                  for i, n in enumerate(NAMES)),
            ],
        },
    )  # fmt: skip
    await sim.call("POST", f"/_sim/microsoft/accounts/{email}/messages", json={"incomplete": True})
    await sim.call(
        "POST",
        f"/_sim/microsoft/accounts/{email}/messages",
        json={"subject": "odd", "quirks": {"set": {"isRead": "true"}}},
    )
    body = {
        "provider": "microsoft",
        "access_token": account["access_token"],
        "refresh_token": account["refresh_token"],
        "expires_in": account["expires_in"],
        "email": email,
    }
    mailbox_id = await connect_via_api(live_api, user, body)
    await run_worker(rt)
    return account, mailbox_id


async def _find(reader: httpx.AsyncClient, user: str, **params: Any) -> dict[str, Any]:
    response = await reader.get("/mail/messages", params=params, headers=bearer(user))
    assert response.status_code == 200, response.text
    [item] = response.json()["items"]
    return dict(item)


async def test_message_body_and_attachments(
    sim: Sim, live_api: LiveApi, sim_rt: Runtime, reader: httpx.AsyncClient
) -> None:
    account, mailbox_id = await _synced_mailbox(sim, live_api, sim_rt, "rita")
    auth = bearer("rita")
    hostile = await _find(reader, "rita", q="hostile", mailbox_id=mailbox_id)
    assert hostile["has_attachments"] is True
    detail = (await reader.get(f"/mail/messages/{hostile['id']}", headers=auth)).json()
    assert detail["subject"] == "hostile" and detail["stream"] and detail["synced_at"]
    assert detail["from_contact"]["address"] == detail["from"]
    assert detail["from_contact"]["name"]
    assert detail["importance"] == "normal" and detail["flagged"] is False
    assert detail["sent_at"] is not None

    # Hostile HTML comes out inert; remote images only when asked for.
    html = (await reader.get(f"/mail/messages/{hostile['id']}/body", headers=auth)).json()
    assert html["format"] == "html"
    content = html["content"]
    for bad in ("<script", "steal()", "onload", "onclick", "javascript:", "<form", "<input",
                "<iframe", "<svg", "tracker.example.net", "<style"):  # fmt: skip
        assert bad not in content, bad
    assert "Hello <b>there</b>" in content and 'href="https://example.org/ok"' in content
    attachments = (
        await reader.get(f"/mail/messages/{hostile['id']}/attachments", headers=auth)
    ).json()["items"]
    [inline] = [a for a in attachments if a["inline"]]
    assert inline["content_id"] == "chart@sim"
    assert f'src="/mail/messages/{hostile["id"]}/attachments/{inline["attachment_id"]}"' in content
    remote = (
        await reader.get(
            f"/mail/messages/{hostile['id']}/body",
            params={"allow_remote_images": "true"},
            headers=auth,
        )
    ).json()["content"]
    assert "https://tracker.example.net/pixel.gif" in remote and "<script" not in remote
    plain = (
        await reader.get(f"/mail/messages/{hostile['id']}/body?format=text", headers=auth)
    ).json()
    assert plain["format"] == "text" and "Hello" in plain["content"]
    assert "<" not in plain["content"]

    # Files with hostile names download intact under a safe Content-Disposition.
    files = [a for a in attachments if not a["inline"]]
    assert sorted(a["name"] for a in files) == sorted(NAMES)
    for a in files:
        response = await reader.get(
            f"/mail/messages/{hostile['id']}/attachments/{a['attachment_id']}", headers=auth
        )
        assert response.status_code == 200
        assert response.headers["x-content-type-options"] == "nosniff"
        disposition = response.headers["content-disposition"]
        assert "\r" not in disposition and "\n" not in disposition
        assert disposition.startswith("attachment; filename=")
        ascii_name = disposition.split('filename="')[1].split('"')[0]
        assert "/" not in ascii_name and "\\" not in ascii_name and '"' not in ascii_name
        assert not ascii_name.startswith(".")
        exact = unquote(disposition.split("filename*=UTF-8''")[1])
        assert "/" not in exact and "\r" not in exact
        index = NAMES.index(a["name"])
        assert len(response.content) == a["size"] == 1000 + index
        # The same bytes as Graph's own $value.
        provider_id = base64.urlsafe_b64decode(a["attachment_id"] + "==").decode()
        direct = await sim.client.get(
            f"/v1.0/me/messages/{hostile['provider_message_id']}/attachments/"
            f"{quote(provider_id, safe='')}/$value",
            headers={"Authorization": f"Bearer {account['access_token']}"},
        )
        assert direct.status_code == 200 and response.content == direct.content
    [accented] = [a for a in files if a["name"].startswith("Grüße")]
    response = await reader.get(
        f"/mail/messages/{hostile['id']}/attachments/{accented['attachment_id']}", headers=auth
    )
    assert "filename*=UTF-8''Gr%C3%BC%C3%9Fe" in response.headers["content-disposition"]

    # Its conversation, as a thread, oldest first; the thread list holds it once.
    thread = (
        await reader.get(
            f"/mail/threads/{hostile['thread_id']}", params={"mailbox_id": mailbox_id}, headers=auth
        )
    ).json()
    assert hostile["id"] in [m["id"] for m in thread["items"]]
    received = [m["received_at"] or "" for m in thread["items"]]
    assert received == sorted(received)
    threads = (
        await reader.get(
            "/mail/threads", params={"mailbox_id": mailbox_id, "limit": 200}, headers=auth
        )
    ).json()
    truth = (await sim.call("GET", f"/_sim/microsoft/accounts/{account['email']}/messages"))[
        "messages"
    ]
    conversations = {m["conversation_id"] for m in truth}
    assert sorted(t["thread_id"] for t in threads["items"]) == sorted(conversations)
    assert sum(t["message_count"] for t in threads["items"]) == len(truth)

    # Isolation: another user sees none of it.
    other = bearer("mallory")
    for path in (
        f"/mail/messages/{hostile['id']}",
        f"/mail/messages/{hostile['id']}/body",
        f"/mail/messages/{hostile['id']}/attachments",
        f"/mail/messages/{hostile['id']}/attachments/{files[0]['attachment_id']}",
        f"/mail/mailboxes/{mailbox_id}",
        f"/mail/threads/{hostile['thread_id']}",
    ):
        response = await reader.get(path, headers=other)
        assert response.status_code == 404, path
        assert response.json()["error"]["code"] == "not_found"


async def test_incomplete_and_malformed_items_are_stored(
    sim: Sim, live_api: LiveApi, sim_rt: Runtime, reader: httpx.AsyncClient
) -> None:
    _, mailbox_id = await _synced_mailbox(sim, live_api, sim_rt, "ines")
    async with sim_rt.sessions() as session:
        rows = (
            await session.execute(
                text(
                    "SELECT subject, from_address, from_name, to_addresses, to_names, "
                    "received_at, is_read FROM messages WHERE mailbox_id = :m "
                    "AND (subject = '' OR subject = 'odd')"
                ),
                {"m": uuid.UUID(mailbox_id)},
            )
        ).all()
    by_subject = {row.subject: row for row in rows}
    draft = by_subject[""]
    assert draft.from_address is None and draft.from_name is None
    assert draft.to_addresses == ["someone@example.com"] and draft.to_names in ([], [""])
    assert draft.received_at is None
    # The boolean sent as a string is not taken for true; the item is still stored.
    assert by_subject["odd"].is_read is False
    listed = await _find(reader, "ines", q="odd", mailbox_id=mailbox_id)
    assert listed["is_read"] is False
    # The undated draft is listed last, and still listed.
    everything = []
    cursor = None
    while True:
        params: dict[str, Any] = {"mailbox_id": mailbox_id, "limit": 25}
        if cursor:
            params["cursor"] = cursor
        page = (await reader.get("/mail/messages", params=params, headers=bearer("ines"))).json()
        everything += page["items"]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert everything[-1]["subject"] == "" and everything[-1]["received_at"] is None
    assert len({m["id"] for m in everything}) == len(everything) == 63


async def test_provider_errors_map_to_http(
    sim: Sim, live_api: LiveApi, sim_rt: Runtime, reader: httpx.AsyncClient
) -> None:
    account, mailbox_id = await _synced_mailbox(sim, live_api, sim_rt, "erin")
    auth = bearer("erin")
    target = await _find(reader, "erin", q="hostile", mailbox_id=mailbox_id)

    # Throttled for longer than a person should wait: 503 with Retry-After, quickly.
    await sim.call("PUT", "/_sim/faults", json={"throttle_rate": 1.0, "retry_after_seconds": 30})
    response = await reader.get(f"/mail/messages/{target['id']}/body", headers=auth)
    assert response.status_code == 503, response.text
    assert int(response.headers["retry-after"]) >= 10
    assert response.json()["error"]["code"] == "throttled"
    await sim.call("PUT", "/_sim/faults", json={})
    async with sim_rt.sessions() as session, session.begin():
        await sim_rt.redis.delete(f"gate:{mailbox_id}:pause")

    # Gone at the provider (not synced yet): 404.
    await sim.call(
        "POST",
        f"/_sim/microsoft/accounts/{account['email']}/messages/delete",
        json={"ids": [target["provider_message_id"]]},
    )
    response = await reader.get(f"/mail/messages/{target['id']}/body", headers=auth)
    assert response.status_code == 404 and response.json()["error"]["code"] == "gone"

    # An expired grant: 409 with the reconnect message.
    async with sim_rt.sessions() as session, session.begin():
        await session.execute(
            text(
                "UPDATE mailboxes SET status = 'auth_expired', last_error = 'AADSTS70008' "
                "WHERE id = :m"
            ),
            {"m": uuid.UUID(mailbox_id)},
        )
    response = await reader.get(f"/mail/messages/{target['id']}/attachments", headers=auth)
    assert response.status_code == 409
    error = response.json()["error"]
    assert error["code"] == "auth_expired" and "reconnect" in error["message"]
