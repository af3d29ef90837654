"""GmailProvider.fetch_page against the simulator: full sync, history, cursor rules."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from app.config import Settings
from app.providers.base import (
    AccessTokenRejected,
    CursorInvalidError,
    Page,
    aiter_pages,
)
from app.providers.gmail.provider import GmailProvider
from app.simulator.server import SimulatorServer
from tests.providers.gmail.conftest import FAST_RETRY, Harness, MakeHarness, Store
from tests.providers.gmail.sim import GoogleSim


async def _label_names(sim: GoogleSim, h: Harness) -> dict[str, str]:
    response = await sim.http.get("/gmail/v1/users/me/labels", headers=h.account.auth)
    return {x["id"]: x["name"] for x in response.json()["labels"] if x["type"] == "user"}


async def _assert_matches_truth(sim: GoogleSim, h: Harness, store: Store) -> None:
    truth = await sim.truth(h.account.email)
    names = await _label_names(sim, h)
    assert set(store.messages) == {m["id"] for m in truth}
    for expected in truth:
        got = store.messages[expected["id"]]
        assert got.thread_id == expected["threadId"]
        assert sorted(got.labels) == sorted(names.get(x, x) for x in expected["labelIds"])
        assert got.is_read == expected["isRead"]
        assert got.subject == expected["subject"]
        assert got.internet_message_id == expected["internetMessageId"]
        assert got.has_attachments == expected["hasAttachments"]
        assert got.from_ == expected["from"].split("<")[-1].rstrip(">").lower()
        assert got.to == [a.lower() for a in expected["to"]]
        assert got.received_at == datetime.fromtimestamp(int(expected["internalDate"]) / 1000, UTC)


async def _sync(h: Harness, store: Store, cursor: dict[str, Any] | None = None) -> list[Page]:
    pages = [p async for p in aiter_pages(h.provider, h.ctx, h.stream, cursor)]
    for page in pages:
        store.apply(page)
    return pages


async def test_full_sync_equals_ground_truth(sim: GoogleSim, harness: MakeHarness) -> None:
    h = await harness(messages=1100, quota=False)
    streams = await h.provider.list_streams(h.ctx)
    assert [(s.key, s.name, s.total_estimate) for s in streams] == [
        ("mailbox", h.account.email, 1100)
    ]
    store = Store()
    async with sim.faults(gmail_quota_units_per_second=0):
        pages = await _sync(h, store)
    # Three listing pages of up to 500, then one history read that finds nothing.
    assert [len(p.upserts) for p in pages] == [500, 500, 100, 0]
    assert [p.cursor["phase"] for p in pages] == ["full", "full", "history", "history"]
    assert pages[0].cursor["page_token"] and pages[0].total_estimate == 1100
    assert [p.full_sync_complete for p in pages] == [False, False, True, False]
    assert [p.caught_up for p in pages] == [False, False, False, True]
    # The history phase starts at the id recorded before listing, as a decimal string.
    assert pages[2].cursor["history_id"] == str(h.account.history_id)
    assert pages[3].cursor["history_id"] == str(h.account.history_id)
    await _assert_matches_truth(sim, h, store)
    # A fresh token was asked for every request, never kept.
    assert len(h.token_calls) == h.gate.requests


async def test_changes_during_full_sync_are_picked_up_by_history(
    sim: GoogleSim, harness: MakeHarness
) -> None:
    h = await harness(messages=1200, quota=False)
    store = Store()
    truth = await sim.truth(h.account.email)
    async with sim.faults(gmail_quota_units_per_second=0):
        first = await h.provider.fetch_page(h.ctx, h.stream, None)
        store.apply(first)
        listed = [m.provider_message_id for m in first.upserts]
        unlisted = truth[-1]["id"]  # the oldest message: listed on the last page
        added = await sim.add(h.account.email, label_ids=["INBOX", "UNREAD", "Label_2"])
        await sim.delete(h.account.email, [listed[3], unlisted])
        await sim.modify(h.account.email, [listed[10]], add=["STARRED"], remove=["INBOX"])
        await sim.mark(h.account.email, [listed[11]], read=False)
        rest = await _sync(h, store, first.cursor)
    assert rest[-1].caught_up
    assert added[0]["id"] in store.messages
    assert store.messages[added[0]["id"]].labels == ["INBOX", "UNREAD", "Green category"]
    assert listed[3] not in store.messages and unlisted not in store.messages
    await _assert_matches_truth(sim, h, store)


async def test_history_of_all_four_types(sim: GoogleSim, harness: MakeHarness) -> None:
    h = await harness(messages=80, history_id_start=9_999_999_950)
    store = Store()
    pages = await _sync(h, store)
    cursor = pages[-1].cursor
    truth = await sim.truth(h.account.email)
    reply = await sim.add(h.account.email, reply_to=truth[0]["id"], label_ids=["INBOX", "UNREAD"])
    await sim.delete(h.account.email, [truth[1]["id"]])
    await sim.modify(h.account.email, [truth[2]["id"]], add=["Label_3", "STARRED"])
    read_target = truth[3]["id"]
    await sim.mark(h.account.email, [read_target], read=False)
    await sim.mark(h.account.email, [read_target], read=True)
    # Added then deleted within the same page: never upserted.
    ephemeral = await sim.add(h.account.email)
    await sim.delete(h.account.email, [ephemeral[0]["id"]])
    for _ in range(20):  # push the history id across 10**10
        await sim.modify(h.account.email, [truth[4]["id"]], add=["STARRED"])
        await sim.modify(h.account.email, [truth[4]["id"]], remove=["STARRED"])

    page = await h.provider.fetch_page(h.ctx, h.stream, cursor)
    assert page.caught_up and not page.full_sync_complete
    assert [m.provider_message_id for m in page.upserts] == [reply[0]["id"]]
    assert page.upserts[0].thread_id == truth[0]["threadId"]
    assert sorted(page.deletes) == sorted([truth[1]["id"], ephemeral[0]["id"]])
    changes = {c.provider_message_id: c for c in page.label_changes}
    assert sorted(changes[truth[2]["id"]].add) == ["Orange category", "STARRED"]
    assert changes[truth[2]["id"]].remove == ()
    # Unread then read again: the net change is a removal of UNREAD.
    assert changes[read_target].add == () and changes[read_target].remove == ("UNREAD",)
    assert changes[truth[4]["id"]].add == () and changes[truth[4]["id"]].remove == ("STARRED",)
    new_id = int(page.cursor["history_id"])
    assert new_id >= 10**10 > int(cursor["history_id"])
    assert page.cursor["history_id"] == (await sim.account(h.account.email))["history_id"]
    store.apply(page)
    await _assert_matches_truth(sim, h, store)

    # Nothing new: caught up, and the cursor does not move.
    again = await h.provider.fetch_page(h.ctx, h.stream, page.cursor)
    assert again.caught_up and again.cursor == page.cursor and not again.upserts


async def test_history_pages_resume_after_the_last_record(
    sim: GoogleSim, harness: MakeHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    h = await harness(messages=30)
    store = Store()
    cursor = (await _sync(h, store))[-1].cursor
    truth = await sim.truth(h.account.email)
    for message in truth[:7]:
        await sim.modify(h.account.email, [message["id"]], add=["STARRED"])
    monkeypatch.setattr("app.providers.gmail.provider.HISTORY_PAGE_SIZE", 3)
    pages = await _sync(h, store, cursor)
    assert [len(p.label_changes) for p in pages] == [3, 3, 1]
    assert [p.caught_up for p in pages] == [False, False, True]
    ids = [int(p.cursor["history_id"]) for p in pages]
    assert ids == sorted(ids) and "page_token" not in pages[0].cursor
    await _assert_matches_truth(sim, h, store)


async def test_message_deleted_between_list_and_get_is_skipped(
    sim: GoogleSim, gmail_settings: Settings, simulator: SimulatorServer, harness: MakeHarness
) -> None:
    account = await sim.create_account(messages=40)
    truth = await sim.truth(account.email)
    victim = truth[5]["id"]
    deleted: list[str] = []

    async def delete_before_batch(request: httpx.Request) -> None:
        if request.url.path == "/batch/gmail/v1" and not deleted:
            deleted.append(victim)
            await sim.delete(account.email, [victim])

    async with httpx.AsyncClient(
        verify=simulator.ssl_context(), event_hooks={"request": [delete_before_batch]}
    ) as hooked:
        provider = GmailProvider(gmail_settings, hooked, retry=FAST_RETRY)
        h = await harness(account=account)
        h.provider = provider
        page = await provider.fetch_page(h.ctx, h.stream, None)
    assert deleted == [victim]
    ids = [m.provider_message_id for m in page.upserts]
    assert victim not in ids
    assert ids == [m["id"] for m in truth if m["id"] != victim]
    assert page.full_sync_complete


async def test_expired_history_is_cursor_invalid(sim: GoogleSim, harness: MakeHarness) -> None:
    h = await harness(messages=20)
    cursor = (await _sync(h, Store()))[-1].cursor
    truth = await sim.truth(h.account.email)
    await sim.mark(h.account.email, [truth[0]["id"]], read=False)
    await sim.expire_history(h.account.email)
    with pytest.raises(CursorInvalidError):
        await h.provider.fetch_page(h.ctx, h.stream, cursor)
    # A cursor nobody can read is dead too.
    with pytest.raises(CursorInvalidError):
        await h.provider.fetch_page(h.ctx, h.stream, {"phase": "history", "history_id": "x"})


async def test_rejected_access_token_is_reported_not_retried(
    sim: GoogleSim, harness: MakeHarness
) -> None:
    h = await harness(messages=10)
    await sim.expire_tokens(h.account.email)
    with pytest.raises(AccessTokenRejected):
        await h.provider.fetch_page(h.ctx, h.stream, None)
    assert h.gate.requests == 1


async def test_quota_on_completes_with_few_429s(sim: GoogleSim, harness: MakeHarness) -> None:
    h = await harness(messages=180)
    assert h.gate.rate == 250  # the documented per-user limit, on in the simulator too
    store = Store()
    pages = await _sync(h, store)
    assert pages[-1].caught_up
    counters = await sim.counters(h.account.email)
    # 180 gets (900 units) + lists: well over the 250-unit burst, so the gate paced us.
    assert counters["quota_units"] >= 900
    assert counters["throttled"] <= 2
    assert counters["retry_after_violations"] == 0
    await _assert_matches_truth(sim, h, store)


async def test_random_throttling_and_outages_are_retried(
    sim: GoogleSim, harness: MakeHarness
) -> None:
    h = await harness(messages=60, quota=False)
    store = Store()
    async with sim.faults(
        gmail_quota_units_per_second=0,
        throttle_rate=0.05,
        unavailable_rate=0.05,
        # Long enough that the simulator's violation window ([grace, 1 s - grace]) exists.
        retry_after_seconds=1.0,
        seed=7,
    ):
        pages = await _sync(h, store)
    assert pages[-1].caught_up
    counters = await sim.counters(h.account.email)
    assert counters["throttled"] > 0
    assert counters["retry_after_violations"] == 0
    assert h.gate.pauses  # the whole mailbox was told to wait
    await _assert_matches_truth(sim, h, store)


async def test_recent_is_the_newest_messages_of_the_mailbox(
    sim: GoogleSim, harness: MakeHarness
) -> None:
    h = await harness(messages=300, quota=False)
    async with sim.faults(gmail_quota_units_per_second=0):
        recent = await h.provider.recent(h.ctx, [h.stream], 25)
        store = Store()
        await _sync(h, store)
    truth = await sim.truth(h.account.email)
    newest = sorted(truth, key=lambda m: int(m["internalDate"]), reverse=True)[:25]
    assert list(recent) == ["mailbox"]
    assert set(recent["mailbox"].provider_message_id) == {m["id"] for m in newest}
    # The same normalized messages the full sync stores.
    for message in recent["mailbox"]:
        assert store.messages[message.provider_message_id] == message
