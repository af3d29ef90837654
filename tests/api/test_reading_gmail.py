"""Reading a Gmail mailbox: bodies from the MIME tree, attachments by part, streamed and
decoded as they arrive; has_attachments from the tree for every message."""

from __future__ import annotations

import base64
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from app.simulator.server import SimulatorServer
from app.sync.runtime import Runtime
from tests.conftest import LiveApi, bearer, run_worker
from tests.e2e.support import Sim, connect_via_api, sim_session, unique_email


@pytest.fixture
async def sim(simulator: SimulatorServer) -> AsyncIterator[Sim]:
    async with sim_session(simulator, faults={"gmail_quota_units_per_second": 0}) as client:
        yield client


async def test_gmail_bodies_attachments_and_has_attachments(
    sim: Sim, live_api: LiveApi, sim_rt: Runtime
) -> None:
    sim_rt.settings = sim_rt.settings.model_copy(update={"gmail_quota_units_per_second": 0})
    email = unique_email("gread", "example.com")
    account = await sim.call(
        "POST", "/_sim/google/accounts", json={"email": email, "messages": 150, "seed": 5}
    )
    big = 3 * 1024 * 1024 + 7
    await sim.call(
        "POST",
        f"/_sim/google/accounts/{email}/messages",
        json={
            "subject": "zebra quarterly",
            "text": "Plain part: Grüße",
            "html": '<p>See <img src="cid:chart@g"> and the file.</p>',
            "attachments": [
                {"name": "chart.png", "content_type": "image/png", "size": 700,
                 "inline": True, "content_id": "chart@g"},
                {"name": "numbers.bin", "content_type": "application/octet-stream",
                 "size": big},
            ],
        },
    )  # fmt: skip
    mailbox_id = await connect_via_api(
        live_api,
        "gail",
        {
            "provider": "google",
            "access_token": account["access_token"],
            "refresh_token": account["refresh_token"],
            "expires_in": account["expires_in"],
            "email": email,
        },
    )
    await run_worker(sim_rt)

    # has_attachments comes from each message's MIME tree: mixed without files, related
    # with an inline image and forwarded messages all read as the simulator means them.
    truth = await sim.call("GET", f"/_sim/google/accounts/{email}/truth", params={"limit": 100000})
    async with sim_rt.sessions() as session:
        stored = {
            row[0]: row[1]
            for row in (
                await session.execute(
                    text(
                        "SELECT provider_message_id, has_attachments FROM messages "
                        "WHERE mailbox_id = :m"
                    ),
                    {"m": uuid.UUID(mailbox_id)},
                )
            ).all()
        }
    assert {m["id"]: m["hasAttachments"] for m in truth["messages"]} == stored
    assert any(stored.values()) and not all(stored.values())

    async with httpx.AsyncClient(base_url=live_api.base_url, timeout=60) as api:
        auth = bearer("gail")
        listing = (
            await api.get(
                "/mail/messages", params={"q": "zebra", "has_attachments": "true"}, headers=auth
            )
        ).json()
        [item] = listing["items"]
        assert item["size"] and item["sent_at"] and item["from_contact"]["name"] == "Sim Sender"
        plain = (
            await api.get(f"/mail/messages/{item['id']}/body?format=text", headers=auth)
        ).json()
        assert plain == {"format": "text", "content": "Plain part: Grüße"}
        attachments = (
            await api.get(f"/mail/messages/{item['id']}/attachments", headers=auth)
        ).json()["items"]
        by_name = {a["name"]: a for a in attachments}
        assert by_name["chart.png"]["inline"] is True
        assert by_name["chart.png"]["content_id"] == "chart@g"
        assert by_name["numbers.bin"]["inline"] is False
        html = (await api.get(f"/mail/messages/{item['id']}/body", headers=auth)).json()
        inline_url = (
            f"/mail/messages/{item['id']}/attachments/{by_name['chart.png']['attachment_id']}"
        )
        assert f'src="{inline_url}"' in html["content"]
        image = await api.get(inline_url, headers=auth)
        assert image.status_code == 200 and len(image.content) == 700
        # The big file: Gmail's JSON answer decoded as it streams, byte for byte.
        download = await api.get(
            f"/mail/messages/{item['id']}/attachments/{by_name['numbers.bin']['attachment_id']}",
            headers=auth,
        )
        assert download.status_code == 200 and len(download.content) == big
        expected = await _direct(sim, account, item["provider_message_id"], "numbers.bin")
        assert download.content == expected

        # A seeded message with a charset other than UTF-8 decodes to the same text.
        seeded = next(m for m in truth["messages"] if not m["hasAttachments"])
        row = (
            await api.get(
                "/mail/messages",
                params={"q": seeded["snippet"].split()[0], "limit": 500},
                headers=auth,
            )
        ).json()["items"]
        target = next(r for r in row if r["provider_message_id"] == seeded["id"])
        text_body = (
            await api.get(f"/mail/messages/{target['id']}/body?format=text", headers=auth)
        ).json()["content"]
        assert seeded["snippet"] in text_body and "Grüße aus Köln" in text_body


async def _direct(sim: Sim, account: dict[str, Any], message_id: str, name: str) -> bytes:
    """The file as Gmail itself hands it out, decoded in one piece."""
    auth = {"Authorization": f"Bearer {account['access_token']}"}
    full = await sim.call(
        "GET", f"/gmail/v1/users/me/messages/{message_id}", params={"format": "full"}, headers=auth
    )
    stack = [full["payload"]]
    while stack:
        part = stack.pop()
        if part.get("filename") == name:
            answer = await sim.call(
                "GET",
                f"/gmail/v1/users/me/messages/{message_id}/attachments/{part['body']['attachmentId']}",
                headers=auth,
            )
            return base64.urlsafe_b64decode(answer["data"])
        stack.extend(part.get("parts") or ())
    raise AssertionError(name)
