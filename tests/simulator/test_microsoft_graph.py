"""Simulated Graph v1.0: authentication, authorization, folders, message listing."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from app.simulator.server import SimulatorServer
from tests.providers.outlook.support import create_account, ground_truth, sim_client


@pytest.fixture
async def client(simulator: SimulatorServer) -> AsyncIterator[httpx.AsyncClient]:
    async with sim_client(simulator) as c:
        yield c


def auth(account: dict[str, Any]) -> dict[str, str]:
    return {"Authorization": f"Bearer {account['access_token']}"}


async def app_token(client: httpx.AsyncClient, simulator: SimulatorServer, tenant: str) -> str:
    response = await client.post(
        f"/{tenant}/oauth2/v2.0/token",
        data={
            "grant_type": "client_credentials",
            "scope": "https://graph.microsoft.com/.default",
            "client_id": simulator.sim.client_id,
            "client_secret": simulator.sim.client_secret,
        },
    )
    token: str = response.json()["access_token"]
    return token


async def test_bearer_token_is_required_and_checked(client: httpx.AsyncClient) -> None:
    account = await create_account(client, message_count=3)
    missing = await client.get("/v1.0/me")
    assert missing.status_code == 401
    assert missing.json()["error"]["code"] == "InvalidAuthenticationToken"
    unknown = await client.get("/v1.0/me", headers={"Authorization": "Bearer nope"})
    assert unknown.status_code == 401

    assert (await client.get("/v1.0/me", headers=auth(account))).status_code == 200
    await client.post(f"/_sim/microsoft/accounts/{account['user_id']}/access-tokens/expire")
    expired = await client.get("/v1.0/me", headers=auth(account))
    assert expired.status_code == 401
    assert "expired" in expired.json()["error"]["message"]


async def test_a_delegated_token_reaches_only_its_own_mailbox(client: httpx.AsyncClient) -> None:
    alice = await create_account(client, message_count=3)
    bob = await create_account(client, message_count=3)
    mine = await client.get(f"/v1.0/users/{alice['user_id']}/mailFolders", headers=auth(alice))
    assert mine.status_code == 200
    theirs = await client.get(f"/v1.0/users/{bob['email']}/mailFolders", headers=auth(alice))
    assert theirs.status_code == 403
    assert theirs.json()["error"]["code"] == "ErrorAccessDenied"


async def test_app_only_token_uses_users_path_and_needs_the_grant(
    client: httpx.AsyncClient, simulator: SimulatorServer
) -> None:
    account = await create_account(client, message_count=20, app_only_granted=False)
    token = {"Authorization": f"Bearer {await app_token(client, simulator, account['tenant_id'])}"}
    me = await client.get("/v1.0/me", headers=token)
    assert me.status_code == 400
    denied = await client.get(f"/v1.0/users/{account['user_id']}/messages", headers=token)
    assert denied.status_code == 403
    await client.patch(
        f"/_sim/microsoft/accounts/{account['user_id']}", json={"app_only_granted": True}
    )
    allowed = await client.get(f"/v1.0/users/{account['email']}/messages", headers=token)
    assert allowed.status_code == 200
    assert len(allowed.json()["value"]) == 10
    unknown = await client.get("/v1.0/users/nobody@contoso.com/messages", headers=token)
    assert unknown.status_code == 404


async def test_mail_folders_page_and_nest(client: httpx.AsyncClient) -> None:
    account = await create_account(client, message_count=400)
    first = await client.get("/v1.0/me/mailFolders", params={"$top": 4}, headers=auth(account))
    assert first.status_code == 200
    folders = first.json()["value"]
    link = first.json()["@odata.nextLink"]
    while link:
        page = (await client.get(link, headers=auth(account))).json()
        folders += page["value"]
        link = page.get("@odata.nextLink")
    names = [f["displayName"] for f in folders]
    assert {"Inbox", "Sent Items", "Drafts", "Deleted Items", "Archive", "Junk Email"} <= set(names)
    assert len(names) == len(set(names)) == 10
    for folder in folders:
        assert {"childFolderCount", "totalItemCount", "unreadItemCount", "parentFolderId"} <= set(
            folder
        )

    inbox = (await client.get("/v1.0/me/mailFolders/Inbox", headers=auth(account))).json()
    assert inbox["childFolderCount"] == 1
    children = await client.get(
        f"/v1.0/me/mailFolders('{inbox['id']}')/childFolders", headers=auth(account)
    )
    (team,) = children.json()["value"]
    assert team["parentFolderId"] == inbox["id"]
    truth = await ground_truth(client, account["user_id"], inbox["id"])
    assert inbox["totalItemCount"] == len(truth)
    assert inbox["unreadItemCount"] == sum(not m["is_read"] for m in truth)

    total = sum(f["totalItemCount"] for f in folders) + team["totalItemCount"]
    leads = await client.get(
        f"/v1.0/me/mailFolders/{team['id']}/childFolders", headers=auth(account)
    )
    total += sum(f["totalItemCount"] for f in leads.json()["value"])
    assert total == 400

    missing = await client.get("/v1.0/me/mailFolders/AQMkADnope", headers=auth(account))
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "ErrorItemNotFound"


async def test_message_listing_top_select_filter_orderby_search(client: httpx.AsyncClient) -> None:
    account = await create_account(client, message_count=300)
    headers = auth(account)
    listing = await client.get(
        "/v1.0/me/messages",
        params={"$top": 50, "$select": "subject,receivedDateTime"},
        headers=headers,
    )
    body = listing.json()
    assert len(body["value"]) == 50
    assert set(body["value"][0]) == {
        "@odata.type",
        "@odata.etag",
        "id",
        "subject",
        "receivedDateTime",
    }
    received = [m["receivedDateTime"] for m in body["value"]]
    assert received == sorted(received, reverse=True)
    second = (await client.get(body["@odata.nextLink"], headers=headers)).json()
    assert second["value"][0]["receivedDateTime"] <= received[-1]
    assert {m["id"] for m in second["value"]}.isdisjoint(m["id"] for m in body["value"])

    cutoff = received[20]
    filtered = await client.get(
        "/v1.0/me/messages",
        params={
            "$filter": f"receivedDateTime ge {cutoff}",
            "$top": 1000,
            "$select": "receivedDateTime",
        },
        headers=headers,
    )
    dates = [m["receivedDateTime"] for m in filtered.json()["value"]]
    assert dates and all(d >= cutoff for d in dates)
    # Everything received at or after the cutoff was on the first page of 50.
    assert len(dates) == sum(d >= cutoff for d in received)

    ascending = await client.get(
        "/v1.0/me/messages",
        params={"$orderby": "receivedDateTime asc", "$top": 5, "$select": "receivedDateTime"},
        headers=headers,
    )
    oldest = [m["receivedDateTime"] for m in ascending.json()["value"]]
    assert oldest == sorted(oldest)

    subject = (await ground_truth(client, account["user_id"]))[0]["subject"].removeprefix("Re: ")
    found = await client.get(
        "/v1.0/me/messages", params={"$search": f'"{subject}"', "$top": 1000}, headers=headers
    )
    assert found.json()["value"]
    assert all(subject in m["subject"] for m in found.json()["value"])

    for bad in ({"$top": 1001}, {"$select": "nope"}, {"$search": "x", "$filter": "isRead eq true"}):
        response = await client.get("/v1.0/me/messages", params=bad, headers=headers)
        assert response.status_code == 400, bad


async def test_rest_id_changes_on_move_immutable_id_does_not(client: httpx.AsyncClient) -> None:
    account = await create_account(client, message_count=50)
    headers = auth(account)
    message = (await ground_truth(client, account["user_id"], "inbox"))[0]
    before = await client.get(f"/v1.0/me/messages/{message['rest_id']}", headers=headers)
    assert before.status_code == 200
    await client.post(
        f"/_sim/microsoft/accounts/{account['user_id']}/messages/move",
        json={"ids": [message["id"]], "destination": "archive"},
    )
    stale = await client.get(f"/v1.0/me/messages/{message['rest_id']}", headers=headers)
    assert stale.status_code == 404
    immutable = await client.get(
        f"/v1.0/me/messages/{message['id']}",
        headers=headers | {"Prefer": 'IdType="ImmutableId"'},
    )
    assert immutable.status_code == 200
    assert immutable.json()["id"] == message["id"]
    archive = (await client.get("/v1.0/me/mailFolders/archive", headers=headers)).json()
    assert immutable.json()["parentFolderId"] == archive["id"]
