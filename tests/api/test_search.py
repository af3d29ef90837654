"""Filters, search and threads over keyset pages: every match exactly once, in order.

A scan budget of 100 index entries per mailbox makes rare filters answer short pages
with a cursor, which is exactly the path that must still return every match once.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from app.config import Settings
from app.main import create_app
from app.providers import registry
from app.providers.base import NormalizedMessage
from app.providers.memory import MemoryProvider
from app.sync.runtime import Runtime
from tests.conftest import bearer, run_worker
from tests.sync.helpers import connect, seeded

USER = bearer("sally")


@pytest.fixture
async def small_budget_api(settings: Settings, rt: Runtime) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings.model_copy(update={"read_scan_budget": 100}))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            yield client


async def _two_mailboxes(rt: Runtime) -> tuple[MemoryProvider, list[uuid.UUID]]:
    provider = seeded(420, streams=3, page_size=100)
    registry.override("microsoft", lambda s, h: provider)
    first = await connect(rt, provider, user="sally", email="s1@example.com", enqueue=True)
    second = await connect(rt, provider, user="sally", email="s2@example.com", enqueue=True)
    await run_worker(rt)
    return provider, [first, second]


async def _all_pages(
    api: httpx.AsyncClient, path: str, params: dict[str, Any], limit: int = 7
) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    cursor = None
    for _ in range(2000):
        query = {**params, "limit": limit, **({"cursor": cursor} if cursor else {})}
        response = await api.get(path, params=query, headers=USER)
        assert response.status_code == 200, response.text
        page = response.json()
        assert len(page["items"]) <= limit
        items += page["items"]
        cursor = page["next_cursor"]
        if cursor is None:
            return items
    raise AssertionError("pagination did not end")


def _words(m: NormalizedMessage) -> str:
    return " ".join(
        [m.subject or "", m.snippet or "", m.from_name or "", *m.to_names, *m.cc_names]
    ).lower()


def _matches(m: NormalizedMessage, f: dict[str, Any]) -> bool:
    labels = set(m.labels)
    checks = [
        all(label in labels for label in f.get("label", [])),
        "from" not in f or m.from_ == f["from"],
        "to" not in f or f["to"] in (*m.to, *m.cc, *m.bcc),
        "participant" not in f or f["participant"] in (m.from_, *m.to, *m.cc, *m.bcc),
        "unread" not in f or (not m.is_read) == (f["unread"] == "true"),
        "has_attachments" not in f or m.has_attachments == (f["has_attachments"] == "true"),
        "after" not in f or (m.received_at is not None and m.received_at >= f["_after"]),
        "before" not in f or (m.received_at is not None and m.received_at < f["_before"]),
        all(word.lower() in _words(m) for word in f.get("q", "").split()),
    ]
    return all(checks)


START = datetime(2024, 1, 1, tzinfo=UTC)
FILTERS: list[dict[str, Any]] = [
    {},
    {"label": ["INBOX"]},
    {"label": ["INBOX", "UNREAD"]},
    {"from": "sender3@example.com"},
    {"to": "cc2@example.org"},
    {"participant": "cc4@example.org"},
    {"unread": "true"},
    {"has_attachments": "true", "label": ["SENT"]},
    {"q": "subject 12"},
    {"q": "SENDER 16"},
    {"after": "2024-01-01T02:00:00Z", "before": "2024-01-01T05:00:00+00:00",
     "_after": START + timedelta(hours=2), "_before": START + timedelta(hours=5)},
    {"label": ["ARCHIVE"], "unread": "false", "has_attachments": "false", "q": "snippet",
     "after": "2024-01-01", "_after": START},
    {"from": "nobody@example.com"},
]  # fmt: skip


@pytest.mark.parametrize("flt", FILTERS)
async def test_filters_with_pagination_return_every_match_once(
    small_budget_api: httpx.AsyncClient, rt: Runtime, flt: dict[str, Any]
) -> None:
    provider, mailboxes = await _two_mailboxes(rt)
    params = {k: v for k, v in flt.items() if not k.startswith("_")}
    items = await _all_pages(small_budget_api, "/mail/messages", params)
    truth = provider.truth()
    expected = sorted(
        mid for mid, m in truth.items() if _matches(m, flt)
    )  # per mailbox: both mailboxes hold the same provider's messages
    got = [item["provider_message_id"] for item in items]
    assert len({item["id"] for item in items}) == len(items)  # no duplicates
    assert sorted(got) == sorted(expected * len(mailboxes))
    keys = [(item["received_at"] or "", int(item["id"])) for item in items]
    assert keys == sorted(keys, reverse=True)  # newest first, across pages and mailboxes


async def test_threads_page_once_each_and_open_oldest_first(
    small_budget_api: httpx.AsyncClient, rt: Runtime
) -> None:
    provider, mailboxes = await _two_mailboxes(rt)
    threads = await _all_pages(
        small_budget_api, "/mail/threads", {"mailbox_id": str(mailboxes[0])}, limit=5
    )
    truth = provider.truth()
    expected_threads = {m.thread_id for m in truth.values()}
    assert len(threads) == len(expected_threads)
    assert {t["thread_id"] for t in threads} == expected_threads
    assert sum(t["message_count"] for t in threads) == len(truth)
    lasts = [t["last_message_at"] for t in threads]
    assert lasts == sorted(lasts, reverse=True)
    sample = threads[3]
    members = [m for m in truth.values() if m.thread_id == sample["thread_id"]]
    assert sample["unread_count"] == sum(1 for m in members if not m.is_read)
    assert set(sample["labels"]) == {label for m in members for label in m.labels}
    assert {p["address"] for p in sample["participants"]} >= {m.from_ for m in members}
    detail = (
        await small_budget_api.get(
            f"/mail/threads/{sample['thread_id']}",
            params={"mailbox_id": str(mailboxes[0])},
            headers=USER,
        )
    ).json()
    received = [m["received_at"] for m in detail["items"]]
    assert len(received) == len(members) and received == sorted(received)

    # Filtered: threads with a message from sender3, each once.
    filtered = await _all_pages(
        small_budget_api, "/mail/threads", {"from": "sender3@example.com"}, limit=4
    )
    expected = {m.thread_id for m in truth.values() if m.from_ == "sender3@example.com"}
    assert len(filtered) == 2 * len(expected)
    assert {t["thread_id"] for t in filtered} == expected


async def test_bad_parameters_are_4xx(small_budget_api: httpx.AsyncClient, rt: Runtime) -> None:
    await _two_mailboxes(rt)
    for params in (
        {"after": "yesterday"},
        {"before": "2024-01-01T10:00:00"},
        {"after": "2024-02-01", "before": "2024-01-01"},
        {"unread": "maybe"},
        {"has_attachments": "2"},
        {"from": "two words"},
        {"q": " ".join(["w"] * 9)},
        {"cursor": "!!"},
        {"limit": "0"},
        {"label": ["x" * 201]},
    ):
        for path in ("/mail/messages", "/mail/threads"):
            response = await small_budget_api.get(path, params=params, headers=USER)
            assert 400 <= response.status_code < 500, (path, params, response.text)
            assert set(response.json()["error"]) == {"code", "message"}
    for path in ("/mail/messages/0", "/mail/messages/abc", "/mail/messages/99999999/body"):
        response = await small_budget_api.get(path, headers=USER)
        assert response.status_code in (404, 422), path
