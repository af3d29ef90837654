"""Gmail profile, labels, messages.list and messages.get as the simulator serves them."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest

from app.simulator.server import SimulatorServer
from tests.providers.gmail.sim import GoogleSim, SimAccount, google_sim

BASE = "/gmail/v1/users/me"


@pytest.fixture
async def sim(simulator: SimulatorServer) -> AsyncIterator[GoogleSim]:
    async with google_sim(simulator) as client:
        yield client


@pytest.fixture
async def big(sim: GoogleSim) -> SimAccount:
    return await sim.create_account(messages=1200)


async def _list_all(sim: GoogleSim, account: SimAccount, **params: Any) -> list[str]:
    ids: list[str] = []
    token = None
    while True:
        query = {**params, **({"pageToken": token} if token else {})}
        page = (await sim.http.get(f"{BASE}/messages", params=query, headers=account.auth)).json()
        ids += [m["id"] for m in page.get("messages", [])]
        token = page.get("nextPageToken")
        if not token:
            return ids


async def test_profile(sim: GoogleSim, big: SimAccount) -> None:
    profile = (await sim.http.get(f"{BASE}/profile", headers=big.auth)).json()
    assert profile["emailAddress"] == big.email
    assert profile["messagesTotal"] == 1200
    assert 0 < profile["threadsTotal"] < 1200
    assert profile["historyId"] == str(big.history_id)
    # The account's address works as userId too.
    by_email = await sim.http.get(f"/gmail/v1/users/{big.email}/profile", headers=big.auth)
    assert by_email.json() == profile


async def test_list_pages_newest_first_with_cap_and_estimate(
    sim: GoogleSim, big: SimAccount
) -> None:
    truth = await sim.truth(big.email)
    first = (
        await sim.http.get(
            f"{BASE}/messages",
            params={"maxResults": 1000, "includeSpamTrash": "true"},
            headers=big.auth,
        )
    ).json()
    assert len(first["messages"]) == 500  # maxResults is capped at 500
    assert set(first["messages"][0]) == {"id", "threadId"}
    assert first["resultSizeEstimate"] == 1200
    assert first["nextPageToken"]
    default = (await sim.http.get(f"{BASE}/messages", headers=big.auth)).json()
    assert len(default["messages"]) == 100
    everything = await _list_all(sim, big, maxResults=500, includeSpamTrash="true")
    assert everything == [m["id"] for m in truth]
    dates = [int(m["internalDate"]) for m in truth]
    assert dates == sorted(dates, reverse=True)


async def test_spam_and_trash_are_excluded_by_default(sim: GoogleSim, big: SimAccount) -> None:
    truth = await sim.truth(big.email)
    hidden = {m["id"] for m in truth if {"SPAM", "TRASH"} & set(m["labelIds"])}
    assert hidden
    listed = await _list_all(sim, big, maxResults=500)
    assert listed == [m["id"] for m in truth if m["id"] not in hidden]


async def test_label_ids_filter_is_an_and(sim: GoogleSim, big: SimAccount) -> None:
    truth = await sim.truth(big.email)
    expected = [m["id"] for m in truth if {"INBOX", "UNREAD"} <= set(m["labelIds"])]
    assert expected
    listed = await _list_all(sim, big, labelIds=["INBOX", "UNREAD"], maxResults=500)
    assert listed == expected
    user_label = [m["id"] for m in truth if "Label_2" in m["labelIds"]]
    assert await _list_all(sim, big, labelIds="Label_2", includeSpamTrash="true") == user_label


async def test_search_query_basics(sim: GoogleSim, big: SimAccount) -> None:
    truth = [m for m in await sim.truth(big.email) if not {"SPAM", "TRASH"} & set(m["labelIds"])]
    unread = await _list_all(sim, big, q="is:unread", maxResults=500)
    assert unread == [m["id"] for m in truth if not m["isRead"]]
    sent = await _list_all(sim, big, q="in:sent", maxResults=500)
    assert sent == [m["id"] for m in truth if "SENT" in m["labelIds"]]
    sender = truth[3]["from"].split("<")[-1].rstrip(">")
    by_sender = await _list_all(sim, big, q=f"from:{sender}", maxResults=500)
    assert by_sender == [m["id"] for m in truth if sender in m["from"]]
    middle = datetime.fromtimestamp(int(truth[600]["internalDate"]) / 1000, UTC)
    day = middle.strftime("%Y/%m/%d")
    day_start = int(datetime.strptime(day, "%Y/%m/%d").replace(tzinfo=UTC).timestamp() * 1000)
    after = await _list_all(sim, big, q=f"after:{day}", maxResults=500)
    assert after == [m["id"] for m in truth if int(m["internalDate"]) >= day_start]
    before = await _list_all(sim, big, q=f"before:{day} -is:unread", maxResults=500)
    assert before == [m["id"] for m in truth if int(m["internalDate"]) < day_start and m["isRead"]]
    bad = await sim.http.get(f"{BASE}/messages", params={"q": "after:yesterday"}, headers=big.auth)
    assert bad.status_code == 400


async def test_get_formats(sim: GoogleSim, big: SimAccount) -> None:
    truth = await sim.truth(big.email)
    plain = next(m for m in truth if not m["hasAttachments"] and "SENT" not in m["labelIds"])
    attached = next(m for m in truth if m["hasAttachments"])

    async def get(message_id: str, **params: Any) -> dict[str, Any]:
        response = await sim.http.get(
            f"{BASE}/messages/{message_id}", params=params, headers=big.auth
        )
        assert response.status_code == 200
        result: dict[str, Any] = response.json()
        return result

    minimal = await get(plain["id"], format="minimal")
    assert "payload" not in minimal
    assert minimal["labelIds"] == plain["labelIds"]
    assert minimal["threadId"] == plain["threadId"]
    assert minimal["internalDate"] == plain["internalDate"]
    assert minimal["historyId"] == plain["historyId"]
    assert minimal["snippet"] == plain["snippet"] and minimal["sizeEstimate"] > 0

    metadata = await get(plain["id"], format="metadata", metadataHeaders=["subject", "FROM"])
    headers = {h["name"]: h["value"] for h in metadata["payload"]["headers"]}
    assert headers == {"Subject": plain["subject"], "From": plain["from"]}
    assert metadata["payload"]["mimeType"] in (
        "multipart/alternative",
        "multipart/mixed",
        "multipart/related",
        "text/plain",
    )
    every_header = await get(plain["id"], format="metadata")
    names = {h["name"] for h in every_header["payload"]["headers"]}
    assert {"Date", "Message-ID", "Subject", "From", "To"} <= names
    assert "parts" not in every_header["payload"]

    with_attachment = await get(attached["id"], format="metadata", metadataHeaders="Subject")
    assert with_attachment["payload"]["mimeType"] == "multipart/mixed"
    full = await get(attached["id"], format="full")
    attachment = full["payload"]["parts"][1]
    assert attachment["filename"] or attachment["mimeType"] == "message/rfc822"
    assert attachment["body"]["attachmentId"] and attachment["body"]["size"] > 0
    # Gmail's attachment ids change from one read to the next.
    again = await get(attached["id"], format="full")
    assert (
        again["payload"]["parts"][1]["body"]["attachmentId"] != attachment["body"]["attachmentId"]
    )
    text = full["payload"]["parts"][0]["parts"][0]
    assert text["mimeType"] == "text/plain"
    content_type = next(h["value"] for h in text["headers"] if h["name"] == "Content-Type")
    charset = content_type.split('charset="')[1].rstrip('"')
    decoded = base64.urlsafe_b64decode(text["body"]["data"]).decode(charset)
    assert attached["snippet"] in decoded and "Grüße aus Köln" in decoded

    raw = await get(plain["id"], format="raw")
    assert f"Subject: {plain['subject']}" in base64.urlsafe_b64decode(raw["raw"]).decode()


async def test_get_errors(sim: GoogleSim, big: SimAccount) -> None:
    missing = await sim.http.get(f"{BASE}/messages/0123456789abcdef", headers=big.auth)
    assert missing.status_code == 404
    error = missing.json()["error"]
    assert error["status"] == "NOT_FOUND" and error["errors"][0]["reason"] == "notFound"
    malformed = await sim.http.get(f"{BASE}/messages/not-an-id!", headers=big.auth)
    assert malformed.status_code == 400
    bad_format = await sim.http.get(
        f"{BASE}/messages/0123456789abcdef", params={"format": "html"}, headers=big.auth
    )
    assert bad_format.status_code == 400


async def test_auth_and_delegation(sim: GoogleSim, big: SimAccount) -> None:
    anonymous = await sim.http.get(f"{BASE}/profile")
    assert anonymous.status_code == 401
    assert anonymous.json()["error"]["errors"][0]["reason"] == "authError"
    other = await sim.http.get("/gmail/v1/users/someone@else.test/profile", headers=big.auth)
    assert other.status_code == 403
    assert "Delegation denied" in other.json()["error"]["message"]


async def test_labels(sim: GoogleSim) -> None:
    account = await sim.create_account(messages=10)
    labels = (await sim.http.get(f"{BASE}/labels", headers=account.auth)).json()["labels"]
    by_id = {label["id"]: label for label in labels}
    for system in ("INBOX", "SENT", "DRAFT", "SPAM", "TRASH", "UNREAD", "STARRED", "IMPORTANT",
                   "CATEGORY_PERSONAL", "CATEGORY_SOCIAL", "CATEGORY_PROMOTIONS",
                   "CATEGORY_UPDATES", "CATEGORY_FORUMS", "CHAT"):  # fmt: skip
        assert by_id[system]["type"] == "system"
    assert by_id["Label_1"] == {
        "id": "Label_1",
        "name": "Blue category",
        "type": "user",
        "messageListVisibility": "show",
        "labelListVisibility": "labelShow",
    }
    created = await sim.http.post(f"{BASE}/labels", json={"name": "Receipts"}, headers=account.auth)
    assert created.status_code == 200
    new_id = created.json()["id"]
    assert new_id.startswith("Label_") and new_id not in by_id
    duplicate = await sim.http.post(
        f"{BASE}/labels", json={"name": "receipts"}, headers=account.auth
    )
    assert duplicate.status_code == 409
    renamed = await sim.http.patch(
        f"{BASE}/labels/{new_id}", json={"name": "Bills"}, headers=account.auth
    )
    assert renamed.json()["name"] == "Bills"
    fetched = await sim.http.get(f"{BASE}/labels/{new_id}", headers=account.auth)
    assert fetched.json()["name"] == "Bills"
