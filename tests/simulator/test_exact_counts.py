"""The counts the completion monitor reads are exact in the simulator, as the providers
document them: Gmail labels.get (messagesTotal/messagesUnread/threadsTotal/threadsUnread)
and messages.list?labelIds=, Graph folders' totalItemCount/unreadItemCount; and an
app-only token carries the roles its tenant had consented to when it was issued."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from app.simulator.server import SimulatorServer
from tests.providers.gmail.sim import GoogleSim, SimAccount, google_sim
from tests.providers.outlook.support import create_account, ground_truth, sim_client

BASE = "/gmail/v1/users/me"


@pytest.fixture
async def gsim(simulator: SimulatorServer) -> AsyncIterator[GoogleSim]:
    async with google_sim(simulator) as client:
        yield client


@pytest.fixture
async def client(simulator: SimulatorServer) -> AsyncIterator[httpx.AsyncClient]:
    async with sim_client(simulator) as c:
        yield c


async def _label(sim: GoogleSim, account: SimAccount, label_id: str) -> dict[str, Any]:
    response = await sim.http.get(f"{BASE}/labels/{label_id}", headers=account.auth)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def _listed(sim: GoogleSim, account: SimAccount, *label_ids: str) -> list[str]:
    ids: list[str] = []
    token = None
    while True:
        params: list[tuple[str, str]] = [("maxResults", "500"), ("includeSpamTrash", "true")]
        params += [("labelIds", label) for label in label_ids]
        if token:
            params.append(("pageToken", token))
        page = (await sim.http.get(f"{BASE}/messages", params=params, headers=account.auth)).json()
        ids += [m["id"] for m in page.get("messages", [])]
        token = page.get("nextPageToken")
        if not token:
            return ids


def _expected(truth: list[dict[str, Any]]) -> dict[str, tuple[int, int, int, int]]:
    messages: Counter[str] = Counter()
    unread: Counter[str] = Counter()
    threads: dict[str, set[str]] = {}
    unread_threads: dict[str, set[str]] = {}
    for message in truth:
        is_unread = "UNREAD" in message["labelIds"]
        for label in message["labelIds"]:
            messages[label] += 1
            threads.setdefault(label, set()).add(message["threadId"])
            if is_unread:
                unread[label] += 1
                unread_threads.setdefault(label, set()).add(message["threadId"])
    return {
        label: (
            messages[label],
            unread[label],
            len(threads[label]),
            len(unread_threads.get(label, ())),
        )
        for label in messages
    }


async def test_gmail_label_counts_and_listings_are_exact(gsim: GoogleSim) -> None:
    account = await gsim.create_account(messages=900)
    truth = await gsim.truth(account.email)
    # Changes of every kind, each moving some label's counts.
    await gsim.add(account.email, count=7, label_ids=["INBOX", "UNREAD", "Label_3"])
    await gsim.delete(account.email, [truth[0]["id"], truth[1]["id"]])
    await gsim.modify(account.email, [truth[2]["id"], truth[3]["id"]], add=["STARRED", "Label_1"])
    await gsim.modify(account.email, [truth[4]["id"]], remove=["INBOX"], add=["TRASH"])
    await gsim.mark(account.email, [truth[5]["id"], truth[6]["id"]], read=False)
    truth = await gsim.truth(account.email)
    expected = _expected(truth)

    listing = (await gsim.http.get(f"{BASE}/labels", headers=account.auth)).json()["labels"]
    # labels.list leaves the counts out; labels.get has them.
    assert all("messagesTotal" not in label for label in listing)
    for label in listing:
        body = await _label(gsim, account, label["id"])
        got = (
            body["messagesTotal"],
            body["messagesUnread"],
            body["threadsTotal"],
            body["threadsUnread"],
        )
        assert got == expected.get(label["id"], (0, 0, 0, 0)), label["id"]
    profile = (await gsim.http.get(f"{BASE}/profile", headers=account.auth)).json()
    assert profile["messagesTotal"] == len(truth)

    # messages.list?labelIds= lists exactly the label's members (Spam and Trash included).
    members = {m["id"] for m in truth if "Label_3" in m["labelIds"]}
    assert set(await _listed(gsim, account, "Label_3")) == members
    unread_inbox = {m["id"] for m in truth if {"INBOX", "UNREAD"} <= set(m["labelIds"])}
    assert set(await _listed(gsim, account, "INBOX", "UNREAD")) == unread_inbox
    assert set(await _listed(gsim, account)) == {m["id"] for m in truth}
    assert (await gsim.http.get(f"{BASE}/labels/Label_99", headers=account.auth)).status_code == 404


async def test_gmail_counts_requests_per_method(gsim: GoogleSim) -> None:
    account = await gsim.create_account(messages=20)
    await gsim.http.get(f"{BASE}/labels/INBOX", headers=account.auth)
    await gsim.http.get(f"{BASE}/messages", headers=account.auth)
    await gsim.http.get(f"{BASE}/messages", headers=account.auth)
    state = await gsim.account(account.email)
    assert state["counters"]["methods"] == {"users.labels.get": 1, "users.messages.list": 2}


async def test_graph_folder_counts_are_exact(client: httpx.AsyncClient) -> None:
    account = await create_account(client, message_count=600)
    user = account["user_id"]
    auth = {"Authorization": f"Bearer {account['access_token']}"}
    control = f"/_sim/microsoft/accounts/{user}"
    for path, body in [
        ("messages", {"folder": "inbox", "count": 9}),
        ("messages/delete", {"folder": "inbox", "count": 4}),
        ("messages/move", {"folder": "inbox", "count": 5, "destination": "archive"}),
        ("messages/read", {"folder": "inbox", "count": 6, "is_read": True}),
        ("messages/read", {"folder": "sentitems", "count": 3, "is_read": False}),
    ]:
        response = await client.post(f"{control}/{path}", json=body)
        assert response.status_code < 300, response.text
    truth = await ground_truth(client, user)
    totals = Counter(m["folder_id"] for m in truth)
    unread = Counter(m["folder_id"] for m in truth if not m["is_read"])

    folders: list[dict[str, Any]] = []
    link: str | None = "/v1.0/me/mailFolders/delta"
    params: dict[str, str] | None = {"$select": "id,totalItemCount,unreadItemCount"}
    while link:
        page = (await client.get(link, params=params, headers=auth)).json()
        folders += page["value"]
        link, params = page.get("@odata.nextLink"), None
    assert folders
    for folder in folders:
        assert folder["totalItemCount"] == totals.get(folder["id"], 0), folder
        assert folder["unreadItemCount"] == unread.get(folder["id"], 0), folder
    assert sum(f["totalItemCount"] for f in folders) == len(truth)


async def test_withdrawn_consent_reaches_tokens_issued_after_it(
    client: httpx.AsyncClient, simulator: SimulatorServer
) -> None:
    account = await create_account(client, message_count=3)
    tenant = account["tenant_id"]

    async def app_token() -> str:
        response = await client.post(
            f"/{tenant}/oauth2/v2.0/token",
            data={
                "grant_type": "client_credentials",
                "scope": "https://graph.microsoft.com/.default",
                "client_id": simulator.sim.client_id,
                "client_secret": simulator.sim.client_secret,
            },
        )
        assert response.status_code == 200, response.text
        token: str = response.json()["access_token"]
        return token

    async def inbox(token: str) -> httpx.Response:
        return await client.get(
            f"/v1.0/users/{account['user_id']}/mailFolders/inbox",
            headers={"Authorization": f"Bearer {token}"},
        )

    before = await app_token()
    assert (await inbox(before)).status_code == 200
    withdrawn = await client.put(
        f"/_sim/microsoft/tenants/{tenant}/consent", json={"granted": False}
    )
    assert withdrawn.json()["app_consent"] is False
    # Issued before: its roles stand until it expires. Issued after: no role, 403.
    assert (await inbox(before)).status_code == 200
    refused = await inbox(await app_token())
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "ErrorAccessDenied"
    expired = await client.post(f"/_sim/microsoft/tenants/{tenant}/app-tokens/expire")
    assert expired.json()["expired_access_tokens"] >= 1
    assert (await inbox(before)).status_code == 401
    await client.put(f"/_sim/microsoft/tenants/{tenant}/consent", json={"granted": True})
    assert (await inbox(await app_token())).status_code == 200
    assert (
        await client.put("/_sim/microsoft/tenants/nope/consent", json={"granted": True})
    ).status_code == 404
