"""A first sync stores the newest messages before any folder enumeration starts."""

from __future__ import annotations

import uuid
from typing import Any

import orjson
from sqlalchemy import text

from app.providers import registry
from app.providers.base import PermanentError, StreamInfo
from app.providers.memory import MemoryProvider
from app.sync.engine import Outcome, SyncEngine
from app.sync.runtime import Runtime
from tests.sync.helpers import connect, mailbox_row, seeded, stored_ids, stored_state, truth_state


async def _connected(
    rt: Runtime, recent_first: int, provider: MemoryProvider
) -> tuple[MemoryProvider, uuid.UUID]:
    """A mailbox of `provider`, connected with SYNC_RECENT_FIRST = `recent_first`."""
    rt.settings = rt.settings.model_copy(update={"sync_recent_first": recent_first})
    registry.override("microsoft", lambda s, h: provider)
    return provider, await connect(rt, provider)


def _newest(provider: Any, count: int) -> set[str]:
    messages = sorted(provider.truth().values(), key=lambda m: m.received_at, reverse=True)
    return {m.provider_message_id for m in messages[:count]}


async def test_newest_messages_are_stored_before_the_backfill_starts(rt: Runtime) -> None:
    provider, mailbox_id = await _connected(rt, 20, seeded(300, page_size=25, streams=3))
    newest = _newest(provider, 20)
    seen_at_first_page: list[set[str]] = []
    fetches: list[str] = []

    async def before_first_page(stream: StreamInfo, cursor: Any) -> None:
        fetches.append(stream.key)
        if len(fetches) == 1:  # folders start together: only the very first fetch looks
            seen_at_first_page.append(set(await stored_ids(rt, mailbox_id)))

    provider.faults.before_page = before_first_page
    assert (await SyncEngine(rt, "w").run_slice(mailbox_id)).outcome is Outcome.DONE
    assert seen_at_first_page == [newest]
    ids = await stored_ids(rt, mailbox_id)
    assert len(ids) == len(set(ids)) == 300
    assert await stored_state(rt, mailbox_id) == truth_state(provider)
    assert (await mailbox_row(rt, mailbox_id))["messages_synced"] == 300

    # Only a first sync does it.
    provider.delete("inbox", next(iter(newest)))
    assert (await SyncEngine(rt, "w").run_slice(mailbox_id)).outcome is Outcome.DONE
    assert provider.recent_calls == 1
    assert await stored_state(rt, mailbox_id) == truth_state(provider)


async def test_a_recent_message_gone_before_the_enumeration_does_not_survive_it(
    rt: Runtime,
) -> None:
    provider, mailbox_id = await _connected(rt, 10, seeded(120, page_size=25, streams=2))
    doomed = sorted(_newest(provider, 10))[0]
    stream = next(key for key, messages in provider.streams.items() if doomed in messages)

    def vanish_before_first_page(info: StreamInfo, cursor: Any) -> None:
        # Deleted after the first view stored it, before any enumeration saw the folder;
        # the provider will never report it, so only the sweep can remove it.
        provider.streams[stream].pop(doomed, None)

    provider.faults.before_page = vanish_before_first_page
    assert (await SyncEngine(rt, "w").run_slice(mailbox_id)).outcome is Outcome.DONE
    ids = await stored_ids(rt, mailbox_id)
    assert doomed not in ids and len(ids) == len(set(ids)) == 119
    assert await stored_state(rt, mailbox_id) == truth_state(provider)
    assert (await mailbox_row(rt, mailbox_id))["messages_synced"] == 119


async def test_switched_off_it_fetches_nothing_extra(rt: Runtime) -> None:
    provider, mailbox_id = await _connected(rt, 0, seeded(60, page_size=25))
    assert (await SyncEngine(rt, "w").run_slice(mailbox_id)).outcome is Outcome.DONE
    assert provider.recent_calls == 0
    async with rt.sessions() as session:
        events = (
            await session.execute(
                text("SELECT payload FROM outbox_events WHERE mailbox_id = :id"),
                {"id": mailbox_id},
            )
        ).scalars()
        assert not any(orjson.loads(payload).get("recent") for payload in events)


async def test_a_mailbox_no_larger_than_the_newest_page_skips_it(rt: Runtime) -> None:
    provider, mailbox_id = await _connected(rt, 60, seeded(60, page_size=25, streams=2))
    assert (await SyncEngine(rt, "w").run_slice(mailbox_id)).outcome is Outcome.DONE
    assert provider.recent_calls == 0
    assert await stored_state(rt, mailbox_id) == truth_state(provider)


async def test_one_message_more_than_the_newest_page_is_shown_newest_first(
    rt: Runtime,
) -> None:
    provider, mailbox_id = await _connected(rt, 60, seeded(61, page_size=25, streams=2))
    assert (await SyncEngine(rt, "w").run_slice(mailbox_id)).outcome is Outcome.DONE
    assert provider.recent_calls == 1
    assert await stored_state(rt, mailbox_id) == truth_state(provider)


async def test_a_refused_listing_only_costs_the_head_start(rt: Runtime) -> None:
    provider, mailbox_id = await _connected(rt, 20, seeded(80, page_size=25))
    provider.faults.recent_error = PermanentError("400 ErrorInvalidUrlQuery")
    assert (await SyncEngine(rt, "w").run_slice(mailbox_id)).outcome is Outcome.DONE
    assert provider.recent_calls == 1
    assert await stored_state(rt, mailbox_id) == truth_state(provider)
    assert (await mailbox_row(rt, mailbox_id))["status"] == "connected"
