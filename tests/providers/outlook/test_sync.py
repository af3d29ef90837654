"""OutlookProvider against the simulator: streams, full enumeration, deltas, dead cursors."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime
from typing import Any

import httpx
import pytest

from app.providers.base import (
    AccessTokenRejected,
    CursorInvalidError,
    NormalizedMessage,
    Page,
    StreamGoneError,
    StreamInfo,
    aiter_pages,
)
from app.providers.outlook.provider import OutlookProvider
from app.simulator.server import SimulatorServer
from tests.providers.outlook.conftest import Mailbox
from tests.providers.outlook.support import counters, create_account, faults, ground_truth

Connect = Callable[..., Mailbox]


async def sync_stream(
    mailbox: Mailbox, stream: StreamInfo, cursor: dict[str, Any] | None = None
) -> tuple[list[Page], dict[str, Any]]:
    pages = [p async for p in aiter_pages(mailbox.provider, mailbox.ctx, stream, cursor)]
    return pages, pages[-1].cursor


async def full_sync(mailbox: Mailbox) -> tuple[list[StreamInfo], dict[str, list[Page]]]:
    """Every folder at once, as the engine's workers would, through one shared gate."""
    streams = list(await mailbox.provider.list_streams(mailbox.ctx))
    results = await asyncio.gather(*(sync_stream(mailbox, s) for s in streams))
    return streams, {s.key: pages for s, (pages, _) in zip(streams, results, strict=True)}


def expected_labels(stream: StreamInfo, truth: dict[str, Any]) -> list[str]:
    labels = list(stream.labels)
    if truth["well_known_name"] == "drafts" or truth["folder"] == "Drafts":
        labels = list(dict.fromkeys(labels))
    if not truth["is_read"]:
        labels.append("UNREAD")
    return labels + truth["categories"]


def assert_matches(message: NormalizedMessage, stream: StreamInfo, truth: dict[str, Any]) -> None:
    assert message.subject == truth["subject"]
    assert message.thread_id == truth["conversation_id"]
    assert message.internet_message_id == truth["internet_message_id"]
    assert message.from_ == truth["from"]
    assert message.to == truth["to"]
    assert message.cc == truth["cc"]
    assert message.is_read == truth["is_read"]
    assert message.has_attachments == truth["has_attachments"]
    assert message.received_at == datetime.fromisoformat(
        truth["received_at"].replace("Z", "+00:00")
    )
    assert message.received_at is not None and message.received_at.tzinfo is not None
    assert message.labels == expected_labels(stream, truth)
    assert message.snippet


async def test_streams_cover_every_folder_with_labels(
    client: httpx.AsyncClient, connect: Connect
) -> None:
    mailbox = connect(await create_account(client, message_count=300))
    streams = await mailbox.provider.list_streams(mailbox.ctx)
    by_name = {s.name: s for s in streams}
    assert by_name["Inbox"].labels == ("INBOX",)
    assert by_name["Sent Items"].labels == ("SENT",)
    assert by_name["Drafts"].labels == ("DRAFT",)
    assert by_name["Deleted Items"].labels == ("TRASH",)
    assert by_name["Junk Email"].labels == ("SPAM",)
    assert by_name["Archive"].labels == ("ARCHIVE",)
    # Nested user folders are labelled with their place in the tree.
    assert by_name["Team"].labels == ("INBOX/Team",)
    assert by_name["Leads"].labels == ("INBOX/Team/Leads",)
    assert by_name["Projects"].labels == ("Projects",)
    assert len(streams) == len(by_name) == 12
    assert sum(s.total_estimate or 0 for s in streams) == 300


async def test_folders_are_tracked_with_folder_delta(
    client: httpx.AsyncClient, connect: Connect, sent_requests: list[tuple[float, str]]
) -> None:
    mailbox = connect(await create_account(client, message_count=50))
    first = await mailbox.provider.list_streams(mailbox.ctx)
    assert any("/mailFolders/delta" in url for _, url in sent_requests)
    sent_requests.clear()
    again = await mailbox.provider.list_streams(mailbox.ctx)
    # Known mailbox: one folder-delta request from the stored deltaLink, nothing else.
    assert len(sent_requests) == 1 and "deltatoken" in sent_requests[0][1].lower()
    assert {s.key: s.labels for s in again} == {s.key: s.labels for s in first}


async def test_full_enumeration_equals_ground_truth(
    client: httpx.AsyncClient, connect: Connect
) -> None:
    sim_account = await create_account(client, message_count=2500)
    mailbox = connect(sim_account)
    streams, pages = await full_sync(mailbox)
    truth = await ground_truth(client, sim_account["user_id"])
    by_id = {m["id"]: m for m in truth}
    seen: set[str] = set()
    for stream in streams:
        stream_pages = pages[stream.key]
        assert stream_pages[-1].caught_up and stream_pages[-1].full_sync_complete
        assert not any(p.full_sync_complete for p in stream_pages[:-1])
        assert all(len(p.upserts) <= 1000 for p in stream_pages)
        assert "delta_link" in stream_pages[-1].cursor
        for page in stream_pages:
            assert page.deletes == []
            for message in page.upserts:
                expected = by_id[message.provider_message_id]
                assert expected["folder_id"] == stream.key
                assert_matches(message, stream, expected)
                seen.add(message.provider_message_id)
    assert seen == set(by_id)
    # The Inbox (about 64% of 2500) needed more than one 1000-message page.
    inbox = next(s for s in streams if s.labels == ("INBOX",))
    assert len(pages[inbox.key]) >= 2


async def test_changes_after_the_delta_link(client: httpx.AsyncClient, connect: Connect) -> None:
    sim_account = await create_account(client, message_count=400)
    user = sim_account["user_id"]
    mailbox = connect(sim_account)
    streams = {s.labels[0]: s for s in await mailbox.provider.list_streams(mailbox.ctx)}
    _, inbox_cursor = await sync_stream(mailbox, streams["INBOX"])
    _, archive_cursor = await sync_stream(mailbox, streams["ARCHIVE"])

    inbox = await ground_truth(client, user, "inbox")
    deleted, moved, toggled, tagged = inbox[0], inbox[1], inbox[2], inbox[3]
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
    await client.post(
        f"/_sim/microsoft/accounts/{user}/messages/categories",
        json={"ids": [tagged["id"]], "categories": ["Red category"]},
    )
    added = (
        await client.post(
            f"/_sim/microsoft/accounts/{user}/messages",
            json={
                "folder": "inbox",
                "subject": "Fresh mail",
                "from_address": "New.Sender@Fabrikam.net",
            },
        )
    ).json()["ids"][0]

    pages, _ = await sync_stream(mailbox, streams["INBOX"], inbox_cursor)
    assert pages[-1].caught_up and not pages[-1].full_sync_complete
    deletes = {d for p in pages for d in p.deletes}
    upserts = {m.provider_message_id: m for p in pages for m in p.upserts}
    assert deletes == {deleted["id"], moved["id"]}
    assert set(upserts) == {toggled["id"], tagged["id"], added}
    assert ("UNREAD" in upserts[toggled["id"]].labels) is toggled["is_read"]
    assert upserts[tagged["id"]].labels[-1] == "Red category"
    assert upserts[added].subject == "Fresh mail"
    assert upserts[added].from_ == "new.sender@fabrikam.net"
    assert upserts[added].labels == ["INBOX", "UNREAD"]

    pages, _ = await sync_stream(mailbox, streams["ARCHIVE"], archive_cursor)
    (arrived,) = [m for p in pages for m in p.upserts]
    # ImmutableId: the same id in its new folder, labelled for it.
    assert arrived.provider_message_id == moved["id"]
    assert arrived.labels[0] == "ARCHIVE"


async def test_expired_delta_state_raises_cursor_invalid_then_restarts(
    client: httpx.AsyncClient, connect: Connect
) -> None:
    sim_account = await create_account(client, message_count=150)
    mailbox = connect(sim_account)
    inbox = next(
        s for s in await mailbox.provider.list_streams(mailbox.ctx) if s.labels == ("INBOX",)
    )
    _, cursor = await sync_stream(mailbox, inbox)
    await client.post(f"/_sim/microsoft/accounts/{sim_account['user_id']}/delta/expire", json={})
    with pytest.raises(CursorInvalidError):
        await mailbox.provider.fetch_page(mailbox.ctx, inbox, cursor)
    pages, _ = await sync_stream(mailbox, inbox, None)
    assert pages[-1].full_sync_complete
    assert sum(len(p.upserts) for p in pages) == len(
        await ground_truth(client, sim_account["user_id"], "inbox")
    )


async def test_a_vanished_folder_is_a_stream_gone(
    client: httpx.AsyncClient, connect: Connect
) -> None:
    mailbox = connect(await create_account(client, message_count=20))
    gone = StreamInfo(key="AQMkADdeleted-folder", name="Old", labels=("Old",))
    with pytest.raises(StreamGoneError, match="ErrorItemNotFound"):
        await mailbox.provider.fetch_page(mailbox.ctx, gone, None)


async def test_a_cursor_pointing_elsewhere_is_refused(
    client: httpx.AsyncClient, connect: Connect
) -> None:
    mailbox = connect(await create_account(client, message_count=5))
    stream = StreamInfo(key="inbox", name="Inbox", labels=("INBOX",))
    with pytest.raises(CursorInvalidError):
        await mailbox.provider.fetch_page(
            mailbox.ctx, stream, {"delta_link": "https://attacker.example/v1.0/me/messages"}
        )
    with pytest.raises(CursorInvalidError):
        await mailbox.provider.fetch_page(mailbox.ctx, stream, {"page": 3})


async def test_expired_access_token_is_rejected_and_a_refresh_fixes_it(
    client: httpx.AsyncClient, connect: Connect
) -> None:
    sim_account = await create_account(client, message_count=10)
    mailbox = connect(sim_account)
    await client.post(f"/_sim/microsoft/accounts/{sim_account['user_id']}/access-tokens/expire")
    with pytest.raises(AccessTokenRejected):
        await mailbox.provider.list_streams(mailbox.ctx)
    await mailbox.refresh()
    assert len(await mailbox.provider.list_streams(mailbox.ctx)) == 12


async def test_throttled_parallel_sync_completes_within_the_limits(
    client: httpx.AsyncClient,
    connect: Connect,
    simulator: SimulatorServer,
    sent_requests: list[tuple[float, str]],
) -> None:
    sim_account = await create_account(client, message_count=3000)
    mailbox = connect(sim_account)
    streams = await mailbox.provider.list_streams(mailbox.ctx)
    # Four streams at once on a busy machine: requests sent before the 429 was read may
    # reach the simulator a little late; the client's own clock (below) is exact.
    async with faults(
        client,
        throttle_rate=0.2,
        retry_after_seconds=1.0,
        retry_after_grace_ms=300,
        latency_ms=15,
        seed=7,
    ):
        results = await asyncio.gather(*(sync_stream(mailbox, s) for s in streams))
    pages = [p for stream_pages, _ in results for p in stream_pages]
    assert sum(len(stream_pages) for stream_pages, _ in results) > len(streams)
    assert len({m.provider_message_id for p in pages for m in p.upserts}) == 3000
    assert all(stream_pages[-1].full_sync_complete for stream_pages, _ in results)

    stats = counters(simulator, sim_account["counter_key"])
    assert stats["throttled"] > 0
    assert stats["concurrency_peak"] <= 4
    assert stats["retry_after_violations"] == 0
    # Every 429 paused the whole mailbox for its Retry-After, and no request was started
    # by any worker while a pause was running.
    assert len(mailbox.gate.pauses) == stats["throttled"]
    for paused_at, seconds in mailbox.gate.pauses:
        assert seconds == pytest.approx(1.0)
        started = [t for t, _ in sent_requests if paused_at < t < paused_at + seconds - 0.001]
        assert started == []


async def test_app_only_mailbox_goes_through_users_path(
    client: httpx.AsyncClient, connect: Connect, provider: OutlookProvider
) -> None:
    sim_account = await create_account(client, message_count=120)
    mailbox = connect(sim_account, app_only=True)
    await mailbox.refresh()
    assert mailbox.refresh_token is None
    streams = await provider.list_streams(mailbox.ctx)
    inbox = next(s for s in streams if s.labels == ("INBOX",))
    pages, cursor = await sync_stream(mailbox, inbox)
    assert f"/users/{sim_account['user_id']}/" in cursor["delta_link"]
    truth = await ground_truth(client, sim_account["user_id"], "inbox")
    assert {m.provider_message_id for p in pages for m in p.upserts} == {m["id"] for m in truth}


async def test_recent_lists_the_newest_messages_by_folder(
    client: httpx.AsyncClient, connect: Connect
) -> None:
    sim_account = await create_account(client, message_count=600)
    mailbox = connect(sim_account)
    streams = list(await mailbox.provider.list_streams(mailbox.ctx))
    recent = await mailbox.provider.recent(mailbox.ctx, streams, 50)
    truth = await ground_truth(client, sim_account["user_id"])
    newest = sorted(truth, key=lambda m: m["received_at"], reverse=True)[:50]
    assert sum(len(batch) for batch in recent.values()) == 50
    by_key = {s.key: s for s in streams}
    by_id = {m["id"]: m for m in truth}
    for key, batch in recent.items():
        for message in batch:
            expected = by_id[message.provider_message_id]
            assert expected["folder_id"] == key
            assert_matches(message, by_key[key], expected)
    assert {m for batch in recent.values() for m in batch.provider_message_id} == {
        m["id"] for m in newest
    }
    # The ids are the ones the delta enumeration hands out (ImmutableId), so the backfill
    # confirms these rows instead of adding copies.
    inbox = next(s for s in streams if s.labels == ("INBOX",))
    pages, _ = await sync_stream(mailbox, inbox)
    enumerated = {m for page in pages for m in page.upserts.provider_message_id}
    assert set(recent[inbox.key].provider_message_id) <= enumerated
