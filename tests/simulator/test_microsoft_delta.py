"""Simulated messages/delta: paging, maxpagesize, @removed, replay, expiry, pre-render."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from app.simulator.microsoft.state import get_state
from app.simulator.server import SimulatorServer
from tests.providers.outlook.support import create_account, ground_truth, sim_client

IMMUTABLE = 'IdType="ImmutableId"'


@pytest.fixture
async def client(simulator: SimulatorServer) -> AsyncIterator[httpx.AsyncClient]:
    async with sim_client(simulator) as c:
        yield c


def headers(account: dict[str, Any], *prefer: str) -> dict[str, str]:
    result = {"Authorization": f"Bearer {account['access_token']}"}
    if prefer:
        result["Prefer"] = ", ".join(prefer)
    return result


async def round_trip(
    client: httpx.AsyncClient, url: str, hdrs: dict[str, str], params: dict[str, str] | None = None
) -> tuple[list[list[dict[str, Any]]], str]:
    """Follow nextLinks to the deltaLink: (pages of items, deltaLink)."""
    pages = []
    response = await client.get(url, headers=hdrs, params=params)
    while True:
        assert response.status_code == 200, response.text
        body = response.json()
        pages.append(body["value"])
        if "@odata.deltaLink" in body:
            assert "$deltatoken=" in body["@odata.deltaLink"]
            return pages, body["@odata.deltaLink"]
        assert "$skiptoken=" in body["@odata.nextLink"]
        response = await client.get(body["@odata.nextLink"], headers=hdrs)


async def test_default_page_size_is_10_and_maxpagesize_is_capped_at_1000(
    client: httpx.AsyncClient,
) -> None:
    account = await create_account(client, message_count=2500)
    url = "/v1.0/me/mailFolders/inbox/messages/delta"
    default = await client.get(url, headers=headers(account))
    assert len(default.json()["value"]) == 10
    assert "preference-applied" not in default.headers

    small = await client.get(url, headers=headers(account, "odata.maxpagesize=7"))
    assert len(small.json()["value"]) == 7
    assert small.headers["preference-applied"] == "odata.maxpagesize=7"

    huge = await client.get(url, headers=headers(account, "odata.maxpagesize=5000", IMMUTABLE))
    assert len(huge.json()["value"]) == 1000
    assert huge.headers["preference-applied"] == "odata.maxpagesize=1000"


async def test_full_round_matches_ground_truth_and_honours_select(
    client: httpx.AsyncClient,
) -> None:
    account = await create_account(client, message_count=700)
    hdrs = headers(account, "odata.maxpagesize=100", IMMUTABLE)
    pages, _ = await round_trip(
        client,
        "/v1.0/me/mailFolders/inbox/messages/delta",
        hdrs,
        {"$select": "subject,isRead,categories,from"},
    )
    items = [m for page in pages for m in page]
    assert all(len(page) <= 100 for page in pages)
    truth = {m["id"]: m for m in await ground_truth(client, account["user_id"], "inbox")}
    assert [m["id"] for m in items if m["id"] in truth] == [m["id"] for m in items]
    assert {m["id"] for m in items} == set(truth)
    assert len(items) == len(truth)
    for item in items:
        assert set(item) == {
            "@odata.type",
            "@odata.etag",
            "id",
            "subject",
            "isRead",
            "categories",
            "from",
        }
        expected = truth[item["id"]]
        assert item["subject"] == expected["subject"]
        assert item["isRead"] == expected["is_read"]
        assert item["categories"] == expected["categories"]


async def test_changes_after_a_round_delete_move_read_and_new_mail(
    client: httpx.AsyncClient,
) -> None:
    account = await create_account(client, message_count=200)
    user = account["user_id"]
    hdrs = headers(account, "odata.maxpagesize=1000", IMMUTABLE)
    _, inbox_link = await round_trip(client, "/v1.0/me/mailFolders/inbox/messages/delta", hdrs)
    _, archive_link = await round_trip(client, "/v1.0/me/mailFolders/archive/messages/delta", hdrs)
    nothing = (await client.get(inbox_link, headers=hdrs)).json()
    assert nothing["value"] == []

    inbox = await ground_truth(client, user, "inbox")
    deleted, moved, toggled = inbox[0], inbox[1], inbox[2]
    await client.post(
        f"/_sim/microsoft/accounts/{user}/messages/delete", json={"ids": [deleted["id"]]}
    )
    await client.post(
        f"/_sim/microsoft/accounts/{user}/messages/move",
        json={"ids": [moved["id"]], "destination": "archive"},
    )
    await client.post(
        f"/_sim/microsoft/accounts/{user}/messages/read",
        json={"ids": [toggled["id"]], "is_read": not toggled["is_read"]},
    )
    added = (
        await client.post(f"/_sim/microsoft/accounts/{user}/messages", json={"folder": "inbox"})
    ).json()["ids"][0]

    pages, next_inbox_link = await round_trip(client, inbox_link, hdrs)
    changes = {m["id"]: m for page in pages for m in page}
    assert changes[deleted["id"]]["@removed"] == {"reason": "deleted"}
    assert changes[moved["id"]]["@removed"] == {"reason": "deleted"}
    assert changes[toggled["id"]]["isRead"] is (not toggled["is_read"])
    assert "@removed" not in changes[added]
    assert len(changes) == 4

    # ImmutableId: the moved message shows up in Archive under the same id.
    pages, _ = await round_trip(client, archive_link, hdrs)
    (arrived,) = [m for page in pages for m in page]
    assert arrived["id"] == moved["id"]
    assert "@removed" not in arrived

    # Replaying a deltaLink is harmless: the same changes come back.
    replay_pages, _ = await round_trip(client, inbox_link, hdrs)
    assert replay_pages == (await round_trip(client, inbox_link, hdrs))[0]
    assert {m["id"] for p in replay_pages for m in p} == set(changes)
    assert (await client.get(next_inbox_link, headers=hdrs)).json()["value"] == []


async def test_rest_ids_change_on_move_so_old_folder_reports_the_old_id(
    client: httpx.AsyncClient,
) -> None:
    account = await create_account(client, message_count=100)
    user = account["user_id"]
    hdrs = headers(account, "odata.maxpagesize=1000")
    _, inbox_link = await round_trip(client, "/v1.0/me/mailFolders/inbox/messages/delta", hdrs)
    _, archive_link = await round_trip(client, "/v1.0/me/mailFolders/archive/messages/delta", hdrs)
    message = (await ground_truth(client, user, "inbox"))[0]
    await client.post(
        f"/_sim/microsoft/accounts/{user}/messages/move",
        json={"ids": [message["id"]], "destination": "archive"},
    )
    removed = [m for p in (await round_trip(client, inbox_link, hdrs))[0] for m in p]
    assert removed == [
        {
            "@odata.type": "#microsoft.graph.message",
            "id": message["rest_id"],
            "@removed": {"reason": "deleted"},
        }
    ]
    arrived = [m for p in (await round_trip(client, archive_link, hdrs))[0] for m in p]
    assert len(arrived) == 1
    assert arrived[0]["id"] != message["rest_id"]
    (now,) = [m for m in await ground_truth(client, user, "archive") if m["id"] == message["id"]]
    assert arrived[0]["id"] == now["rest_id"]


async def test_replaying_a_next_link_returns_the_same_page(client: httpx.AsyncClient) -> None:
    account = await create_account(client, message_count=300)
    hdrs = headers(account, "odata.maxpagesize=25", IMMUTABLE)
    first = (await client.get("/v1.0/me/mailFolders/inbox/messages/delta", headers=hdrs)).json()
    link = first["@odata.nextLink"]
    once = await client.get(link, headers=hdrs)
    twice = await client.get(link, headers=hdrs)
    assert once.content == twice.content
    assert {m["id"] for m in once.json()["value"]}.isdisjoint(m["id"] for m in first["value"])


@pytest.mark.parametrize("code", ["syncStateNotFound", "resyncRequired"])
async def test_expired_sync_state_is_410_and_a_fresh_round_works(
    client: httpx.AsyncClient, code: str
) -> None:
    account = await create_account(client, message_count=120)
    user = account["user_id"]
    hdrs = headers(account, "odata.maxpagesize=10", IMMUTABLE)
    first = (await client.get("/v1.0/me/mailFolders/inbox/messages/delta", headers=hdrs)).json()
    _, delta_link = await round_trip(client, "/v1.0/me/mailFolders/sentitems/messages/delta", hdrs)

    await client.post(
        f"/_sim/microsoft/accounts/{user}/delta/expire", json={"folder": "inbox", "code": code}
    )
    gone = await client.get(first["@odata.nextLink"], headers=hdrs)
    assert gone.status_code == 410
    assert gone.json()["error"]["code"] == code
    # Only the named folder's state was dropped.
    assert (await client.get(delta_link, headers=hdrs)).status_code == 200

    pages, _ = await round_trip(client, "/v1.0/me/mailFolders/inbox/messages/delta", hdrs)
    assert sum(len(p) for p in pages) == len(await ground_truth(client, user, "inbox"))

    await client.post(f"/_sim/microsoft/accounts/{user}/delta/expire", json={})
    assert (await client.get(delta_link, headers=hdrs)).status_code == 410


async def test_a_token_from_another_mailbox_or_folder_is_rejected(
    client: httpx.AsyncClient,
) -> None:
    alice = await create_account(client, message_count=30)
    bob = await create_account(client, message_count=30)
    hdrs = headers(alice, "odata.maxpagesize=5")
    link = (await client.get("/v1.0/me/mailFolders/inbox/messages/delta", headers=hdrs)).json()[
        "@odata.nextLink"
    ]
    token = link.split("$skiptoken=")[1]
    other_folder = await client.get(
        "/v1.0/me/mailFolders/archive/messages/delta", params={"$skiptoken": token}, headers=hdrs
    )
    assert other_folder.status_code == 400
    other_mailbox = await client.get(
        "/v1.0/me/mailFolders/inbox/messages/delta",
        params={"$skiptoken": token},
        headers=headers(bob),
    )
    assert other_mailbox.status_code == 400


async def enumerate_folders(
    client: httpx.AsyncClient, account: dict[str, Any], hdrs: dict[str, str], select: str | None
) -> dict[str, list[bytes]]:
    """Every folder's full round as the raw bytes of its pages."""
    folders = (await client.get(f"/_sim/microsoft/accounts/{account['user_id']}")).json()
    params = {"$select": select} if select is not None else None
    result = {}
    for folder in folders["folders"]:
        url = f"/v1.0/me/mailFolders/{folder['id']}/messages/delta"
        response = await client.get(url, headers=hdrs, params=params)
        pages = []
        while True:
            assert response.status_code == 200, response.text
            pages.append(response.content)
            link = response.json().get("@odata.nextLink")
            if link is None:
                break
            response = await client.get(link, headers=hdrs)
        result[folder["well_known_name"] or folder["display_name"]] = pages
    return result


def items_of(pages: list[bytes]) -> list[dict[str, Any]]:
    return [m for page in pages for m in json.loads(page)["value"]]


async def prerender(
    client: httpx.AsyncClient, account: dict[str, Any], **body: Any
) -> dict[str, Any]:
    response = await client.post(
        f"/_sim/microsoft/accounts/{account['user_id']}/prerender", json=body
    )
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


async def test_prerender_counts_every_seeded_message_and_its_bytes(
    client: httpx.AsyncClient,
) -> None:
    account = await create_account(client, message_count=250)
    hdrs = headers(account, "odata.maxpagesize=1000", IMMUTABLE)
    done = await prerender(client, account, select="subject,from,toRecipients")
    pages = await enumerate_folders(client, account, hdrs, "subject,from,toRecipients")
    items = [m for folder in pages.values() for m in items_of(folder)]
    assert done["messages"] == len(items) == 250
    assert done["bytes"] == sum(
        len(json.dumps(m, separators=(",", ":"), ensure_ascii=False).encode()) for m in items
    )


@pytest.mark.parametrize(
    ("select", "immutable"),
    [
        ("Subject, isRead,categories,from,parentFolderId,changeKey", True),
        (None, True),
        (None, False),
        ("id,webLink,conversationIndex,isDraft,sender,lastModifiedDateTime", False),
    ],
)
async def test_prerendered_pages_are_byte_identical_and_follow_mutations(
    client: httpx.AsyncClient, simulator: SimulatorServer, select: str | None, immutable: bool
) -> None:
    account = await create_account(client, message_count=400)
    user = account["user_id"]
    prefer = ["odata.maxpagesize=60", *([IMMUTABLE] if immutable else [])]
    hdrs = headers(account, *prefer)
    control = f"/_sim/microsoft/accounts/{user}/messages"

    async def mutate(path: str, body: dict[str, Any]) -> None:
        response = await client.post(control + path, json=body)
        assert response.is_success, response.text

    # Mutated before the prerender: these must keep coming from their overlay state.
    await mutate("/move", {"folder": "inbox", "count": 3, "destination": "archive"})
    await mutate("/read", {"folder": "sentitems", "count": 2, "is_read": False})
    await mutate("/categories", {"folder": "archive", "count": 4, "categories": ["Red category"]})
    await mutate("/delete", {"folder": "deleteditems", "count": 1})
    await mutate("", {"folder": "inbox", "count": 2})
    rendered = await enumerate_folders(client, account, hdrs, select)

    done = await prerender(client, account, select=select, immutable=immutable)
    assert done["messages"] == 400
    mailbox = get_state(simulator.sim).mailboxes[user]
    assert len(mailbox.prerendered) == len(mailbox.folders)
    assert await enumerate_folders(client, account, hdrs, select) == rendered

    # Mutated after it: the enumeration shows the change, and equals one rendered without it.
    moved, toggled, deleted = (await ground_truth(client, user, "inbox"))[5:8]
    await mutate("/move", {"ids": [moved["id"]], "destination": "junkemail"})
    await mutate("/read", {"ids": [toggled["id"]], "is_read": not toggled["is_read"]})
    await mutate("/delete", {"ids": [deleted["id"]]})
    after = await enumerate_folders(client, account, hdrs, select)
    mailbox.prerendered.clear()
    assert await enumerate_folders(client, account, hdrs, select) == after

    id_field = "id" if immutable else "rest_id"
    for name in ("inbox", "junkemail"):
        truth = await ground_truth(client, user, name)
        assert sorted(m["id"] for m in items_of(after[name])) == sorted(m[id_field] for m in truth)
    assert moved[id_field] not in {m["id"] for m in items_of(after["inbox"])}
    assert deleted[id_field] not in {m["id"] for m in items_of(after["inbox"])}
    (now,) = [m for m in items_of(after["inbox"]) if m["id"] == toggled[id_field]]
    if "isRead" in now:
        assert now["isRead"] is (not toggled["is_read"])


async def test_prerender_rejects_a_bad_select_and_an_unknown_user(
    client: httpx.AsyncClient,
) -> None:
    account = await create_account(client, message_count=10)
    bad = await client.post(
        f"/_sim/microsoft/accounts/{account['user_id']}/prerender",
        json={"select": "subject,nonsense"},
    )
    assert bad.status_code == 400
    assert "nonsense" in bad.json()["detail"]
    unknown = await client.post(
        "/_sim/microsoft/accounts/nobody@contoso.com/prerender", json={"select": "subject"}
    )
    assert unknown.status_code == 404
