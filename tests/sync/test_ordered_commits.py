"""A stream's next page writes while the previous one commits; cursors still commit in order."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from sqlalchemy import text

from app.db.repositories.cursors import CursorRepository
from app.db.repositories.messages import MessageRepository
from app.providers import registry
from app.providers.base import LabelChange, MessageBatch, Page
from app.providers.memory import MemoryProvider, make_message
from app.sync.engine import PAGES_IN_FLIGHT, Outcome, SyncEngine, _Writing
from app.sync.runtime import Runtime
from tests.sync.helpers import connect, seeded, stored_ids, stored_state, truth_state


def _page(*ids: int, deletes: tuple[str, ...] = (), sweep: bool = False) -> Page:
    return Page(
        upserts=MessageBatch.of(make_message(i) for i in ids),
        deletes=list(deletes),
        full_sync_complete=sweep,
    )


def _can_overlap(earlier: Page, later: Page) -> bool:
    return _Writing.start(earlier, None).allows(later)  # type: ignore[arg-type]


def test_only_disjoint_pages_without_a_sweep_overlap() -> None:
    assert _can_overlap(_page(1, 2), _page(3, 4))
    # The same message in both pages: the later write would wait on the earlier's row.
    assert not _can_overlap(_page(1, 2), _page(2, 3))
    # The earlier page deletes or relabels a message the later one writes.
    assert not _can_overlap(_page(1, deletes=("msg-0000003",)), _page(3))
    relabel = _page(1)
    relabel.label_changes.append(LabelChange("msg-0000004", add=("STARRED",)))
    assert not _can_overlap(relabel, _page(4))
    # A sweep deletes rows no page names; nothing may write beside it.
    assert not _can_overlap(_page(1, sweep=True), _page(2))
    # Nothing to write early: just wait.
    assert not _can_overlap(_page(1), _page())


async def _one_folder_of_eight_pages(rt: Runtime) -> tuple[MemoryProvider, uuid.UUID]:
    rt.settings = rt.settings.model_copy(update={"sync_recent_first": 0})  # pages only
    provider = seeded(200, page_size=25, streams=1)
    registry.override("microsoft", lambda s, h: provider)
    return provider, await connect(rt, provider)


async def _stored_cursor(rt: Runtime, mailbox_id: uuid.UUID, stream: str) -> Any:
    async with rt.sessions() as session:
        return (
            await session.execute(
                text("SELECT cursor FROM sync_cursors WHERE mailbox_id = :id AND stream_key = :k"),
                {"id": mailbox_id, "k": stream},
            )
        ).scalar_one()


async def test_next_page_writes_before_the_previous_commits_and_cursors_stay_in_order(
    rt: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    provider, mailbox_id = await _one_folder_of_eight_pages(rt)
    events: list[tuple[str, Any]] = []
    upsert, save = MessageRepository.upsert_page, CursorRepository.save

    async def recording_upsert(self: Any, *args: Any) -> Any:
        if args[-1]:
            events.append(("write", args[-1].provider_message_id[0]))
        return await upsert(self, *args)

    async def slow_save(self: Any, mailbox: Any, stream: str, **kwargs: Any) -> None:
        # A slow commit: plenty of time for the next page to start writing meanwhile.
        await asyncio.sleep(0.05)
        await save(self, mailbox, stream, **kwargs)
        events.append(("cursor", kwargs["cursor"].get("offset")))

    monkeypatch.setattr(MessageRepository, "upsert_page", recording_upsert)
    monkeypatch.setattr(CursorRepository, "save", slow_save)

    assert (await SyncEngine(rt, "w").run_slice(mailbox_id)).outcome is Outcome.DONE

    writes = [i for i, (kind, _) in enumerate(events) if kind == "write"]
    cursors = [i for i, (kind, _) in enumerate(events) if kind == "cursor"]
    # Page k+1 started writing before page k's cursor was stored, for every k.
    assert all(writes[k + 1] < cursors[k] for k in range(len(writes) - 1))
    # ... but never more than PAGES_IN_FLIGHT pages of the stream had a transaction open.
    open_pages, most = 0, 0
    for kind, _ in events:
        open_pages += 1 if kind == "write" else -1
        most = max(most, open_pages)
    assert most == PAGES_IN_FLIGHT
    # ... and the cursors were stored strictly in page order.
    offsets = [offset for kind, offset in events if kind == "cursor" and offset is not None]
    assert offsets == sorted(offsets) == list(range(25, 200, 25))
    ids = await stored_ids(rt, mailbox_id)
    assert len(ids) == len(set(ids)) == 200
    assert await stored_state(rt, mailbox_id) == truth_state(provider)


async def test_a_failed_commit_takes_the_pages_written_beside_it_down_too(
    rt: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    provider, mailbox_id = await _one_folder_of_eight_pages(rt)
    save = CursorRepository.save
    later_page_wrote = asyncio.Event()
    upsert = MessageRepository.upsert_page

    async def recording_upsert(self: Any, *args: Any) -> Any:
        result = await upsert(self, *args)
        if args[-1] and args[-1].provider_message_id[0] == "msg-0000100":  # the fifth page
            later_page_wrote.set()
        return result

    async def failing_save(self: Any, mailbox: Any, stream: str, **kwargs: Any) -> None:
        if kwargs["cursor"].get("offset") == 100:  # the fourth page's commit
            # Fail only once the fifth page has written its rows in its own transaction.
            await asyncio.wait_for(later_page_wrote.wait(), timeout=10)
            raise ConnectionResetError("connection to PostgreSQL lost")
        await save(self, mailbox, stream, **kwargs)

    monkeypatch.setattr(MessageRepository, "upsert_page", recording_upsert)
    monkeypatch.setattr(CursorRepository, "save", failing_save)
    result = await SyncEngine(rt, "w").run_slice(mailbox_id)
    assert result.outcome is Outcome.RETRY_LATER

    # Three pages landed; the fourth failed and those after it, already written, rolled back.
    assert len(await stored_ids(rt, mailbox_id)) == 75
    stored = await _stored_cursor(rt, mailbox_id, "inbox")
    assert stored["offset"] == 75

    monkeypatch.setattr(CursorRepository, "save", save)
    assert (await SyncEngine(rt, "w2").run_slice(mailbox_id)).outcome is Outcome.DONE
    ids = await stored_ids(rt, mailbox_id)
    assert len(ids) == len(set(ids)) == 200
    assert await stored_state(rt, mailbox_id) == truth_state(provider)
