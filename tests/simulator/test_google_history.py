"""users.history.list: the four record types, filters, paging, and 404 for too-old ids."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from app.simulator.server import SimulatorServer
from tests.providers.gmail.sim import GoogleSim, SimAccount, google_sim

HISTORY = "/gmail/v1/users/me/history"


@pytest.fixture
async def sim(simulator: SimulatorServer) -> AsyncIterator[GoogleSim]:
    async with google_sim(simulator) as client:
        yield client


async def _history(sim: GoogleSim, account: SimAccount, **params: Any) -> dict[str, Any]:
    response = await sim.http.get(HISTORY, params=params, headers=account.auth)
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


async def test_all_four_record_types(sim: GoogleSim) -> None:
    account = await sim.create_account(messages=30)
    truth = await sim.truth(account.email)
    start = account.history_id
    added = (await sim.add(account.email, label_ids=["INBOX", "UNREAD"]))[0]
    read_target = added  # delivered unread
    await sim.mark(account.email, [read_target["id"]], read=True)
    # A message with neither label yet (which one depends on the account's seed).
    target = next(
        m
        for m in truth[5:]
        if m is not truth[7] and not {"STARRED", "Label_3"} & set(m["labelIds"])
    )
    await sim.modify(account.email, [target["id"]], add=["STARRED", "Label_3"])
    await sim.delete(account.email, [truth[7]["id"]])

    result = await _history(sim, account, startHistoryId=start)
    records = result["history"]
    assert result["historyId"] == (await sim.account(account.email))["history_id"]
    assert [int(r["id"]) for r in records] == sorted(int(r["id"]) for r in records)
    assert all(int(r["id"]) > start for r in records)
    assert len(records) == 4
    add_rec, read_rec, label_rec, delete_rec = records
    assert add_rec["messagesAdded"][0]["message"] == {
        "id": added["id"],
        "threadId": added["threadId"],
        "labelIds": ["INBOX", "UNREAD"],
    }
    assert add_rec["messages"] == [{"id": added["id"], "threadId": added["threadId"]}]
    assert read_rec["labelsRemoved"][0]["labelIds"] == ["UNREAD"]
    assert read_rec["labelsRemoved"][0]["message"]["id"] == read_target["id"]
    assert "UNREAD" not in read_rec["labelsRemoved"][0]["message"]["labelIds"]
    assert sorted(label_rec["labelsAdded"][0]["labelIds"]) == ["Label_3", "STARRED"]
    assert delete_rec["messagesDeleted"][0]["message"]["id"] == truth[7]["id"]

    only_deletes = await _history(sim, account, startHistoryId=start, historyTypes="messageDeleted")
    assert [r["id"] for r in only_deletes["history"]] == [delete_rec["id"]]
    two_types = await _history(
        sim, account, startHistoryId=start, historyTypes=["messageAdded", "labelRemoved"]
    )
    assert [r["id"] for r in two_types["history"]] == [add_rec["id"], read_rec["id"]]
    starred = await _history(sim, account, startHistoryId=start, labelId="STARRED")
    assert [r["id"] for r in starred["history"]] == [label_rec["id"]]
    # Nothing after the newest record: no "history" key, the current historyId.
    caught_up = await _history(sim, account, startHistoryId=result["historyId"])
    assert "history" not in caught_up and caught_up["historyId"] == result["historyId"]


async def test_paging_and_ids_past_a_digit_boundary(sim: GoogleSim) -> None:
    account = await sim.create_account(messages=30, history_id_start=9_999_999_990)
    truth = await sim.truth(account.email)
    for message in truth[:8]:
        await sim.modify(account.email, [message["id"]], add=["STARRED"])
    records: list[dict[str, Any]] = []
    token = None
    pages = 0
    while True:
        params: dict[str, Any] = {"startHistoryId": account.history_id, "maxResults": 3}
        if token:
            params["pageToken"] = token
        page = await _history(sim, account, **params)
        pages += 1
        records += page.get("history", [])
        token = page.get("nextPageToken")
        if not token:
            break
    assert pages == 3
    ids = [r["id"] for r in records]
    assert len(ids) == 8
    # Increasing as integers, but not as strings once they reach 10**10.
    assert [int(i) for i in ids] == sorted(int(i) for i in ids)
    assert int(ids[-1]) >= 10**10
    assert ids != sorted(ids)


async def test_too_old_start_history_id_is_404(sim: GoogleSim) -> None:
    account = await sim.create_account(messages=20)
    truth = await sim.truth(account.email)
    await sim.mark(account.email, [truth[0]["id"]], read=False)
    await sim.expire_history(account.email)
    response = await sim.http.get(
        HISTORY, params={"startHistoryId": account.history_id}, headers=account.auth
    )
    assert response.status_code == 404
    assert response.json()["error"]["errors"][0]["reason"] == "notFound"
    # The current id is still a valid place to start from.
    current = (await sim.account(account.email))["history_id"]
    assert "history" not in await _history(sim, account, startHistoryId=current)


async def test_retention_fault_expires_old_records(sim: GoogleSim) -> None:
    account = await sim.create_account(messages=20)
    truth = await sim.truth(account.email)
    async with sim.faults(gmail_history_retention=2):
        for message in truth[:4]:
            await sim.modify(account.email, [message["id"]], add=["STARRED"])
        too_old = await sim.http.get(
            HISTORY, params={"startHistoryId": account.history_id}, headers=account.auth
        )
        assert too_old.status_code == 404


async def test_bad_requests(sim: GoogleSim) -> None:
    account = await sim.create_account(messages=5)
    missing = await sim.http.get(HISTORY, headers=account.auth)
    assert missing.status_code == 400
    bad_type = await sim.http.get(
        HISTORY,
        params={"startHistoryId": account.history_id, "historyTypes": "messageChanged"},
        headers=account.auth,
    )
    assert bad_type.status_code == 400
    not_a_number = await sim.http.get(
        HISTORY, params={"startHistoryId": "abc"}, headers=account.auth
    )
    assert not_a_number.status_code == 400
