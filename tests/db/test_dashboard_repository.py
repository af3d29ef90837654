"""The dashboard's reads: filters, search, attention-first order, pagination, outbox lag."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import text

from app.dashboard.views import PAGE_SIZE, STATUS_ORDER, mailbox_page, overview
from app.db.repositories.dashboard import MailboxFilter
from app.sync.runtime import Runtime


async def add_mailboxes(rt: Runtime, rows: list[dict[str, Any]]) -> list[uuid.UUID]:
    ids = []
    async with rt.sessions() as session, session.begin():
        for n, row in enumerate(rows):
            mailbox_id = uuid.uuid4()
            ids.append(mailbox_id)
            values = {
                "id": mailbox_id,
                "user_id": row.get("user", "alice"),
                "provider": row.get("provider", "microsoft"),
                "email": row.get("email", f"box{n}@example.com"),
                "status": row.get("status", "connected"),
                "synced": row.get("synced", 10),
                "total": row.get("total"),
            }
            await session.execute(
                text(
                    "INSERT INTO mailboxes (id, user_id, provider, account_key, email, auth_mode, "
                    "status, messages_synced, messages_total_estimate) VALUES (:id, :user_id, "
                    ":provider, :email, :email, 'delegated', :status, :synced, :total)"
                ),
                values,
            )
    return ids


async def test_filters_search_and_attention_first_order(rt: Runtime) -> None:
    await add_mailboxes(
        rt,
        [
            {"email": "zed@contoso.com", "status": "connected"},
            {"email": "amy@contoso.com", "status": "auth_expired", "user": "bob"},
            {"email": "bea@example.org", "status": "error", "provider": "google"},
            {"email": "cat_1@contoso.com", "status": "syncing", "synced": 30, "total": 120},
            {"email": "cat21@contoso.com", "status": "disconnected"},
        ],
    )
    async with rt.sessions() as session:
        page = await mailbox_page(session, MailboxFilter(), 1)
        assert [m.row.email for m in page.items] == [
            "bea@example.org",
            "amy@contoso.com",
            "cat_1@contoso.com",
            "zed@contoso.com",
            "cat21@contoso.com",
        ]
        assert page.total == 5 and page.pages == 1
        syncing = next(m for m in page.items if m.row.status == "syncing")
        assert syncing.percent == 25
        assert next(m for m in page.items if m.row.status == "connected").percent == 100

        async def emails(**kwargs: Any) -> list[str]:
            result = await mailbox_page(session, MailboxFilter(**kwargs), 1)
            return sorted(m.row.email or "" for m in result.items)

        assert await emails(status="error") == ["bea@example.org"]
        assert await emails(provider="google") == ["bea@example.org"]
        assert await emails(user_id="bob") == ["amy@contoso.com"]
        assert await emails(search="CONTOSO") == [
            "amy@contoso.com",
            "cat21@contoso.com",
            "cat_1@contoso.com",
            "zed@contoso.com",
        ]
        # `_` and `%` in a search are characters, not wildcards.
        assert await emails(search="cat_") == ["cat_1@contoso.com"]
        assert await emails(search="%") == []
        assert await emails(status="connected", search="amy") == []


async def test_pages_of_fifty_and_the_count_past_the_end(rt: Runtime) -> None:
    await add_mailboxes(rt, [{"email": f"user{n:03d}@example.com"} for n in range(PAGE_SIZE + 7)])
    async with rt.sessions() as session:
        first = await mailbox_page(session, MailboxFilter(), 1)
        second = await mailbox_page(session, MailboxFilter(), 2)
        beyond = await mailbox_page(session, MailboxFilter(), 9)
    assert len(first.items) == PAGE_SIZE and len(second.items) == 7
    assert first.pages == second.pages == 2 and first.total == PAGE_SIZE + 7
    assert first.items[0].row.email == "user000@example.com"
    assert second.items[-1].row.email == f"user{PAGE_SIZE + 6:03d}@example.com"
    assert {m.id for m in first.items}.isdisjoint(m.id for m in second.items)
    assert beyond.items == [] and beyond.total == PAGE_SIZE + 7


async def test_overview_counts_by_status_and_provider(rt: Runtime) -> None:
    await add_mailboxes(
        rt,
        [
            {"status": "connected", "synced": 100},
            {"status": "connected", "synced": 50, "provider": "google"},
            {"status": "error", "synced": 7, "provider": "google"},
        ],
    )
    async with rt.sessions() as session:
        data = await overview(session, rt)
    assert data.mailboxes_total == 3 and data.messages_stored == 157
    assert data.by_status == {"connected": {"microsoft": 1, "google": 1}, "error": {"google": 1}}
    assert data.statuses == ("error", "connected")
    assert set(STATUS_ORDER) >= set(data.statuses)
    assert data.queue_ready == 0 and data.redis_ok


async def test_outbox_lag_appears_once_a_publisher_has_published(rt: Runtime) -> None:
    [mailbox_id] = await add_mailboxes(rt, [{}])

    async def event(created: float, published: float | None) -> None:
        async with rt.sessions() as session, session.begin():
            await session.execute(
                text(
                    "INSERT INTO outbox_events (mailbox_id, kind, payload, created_at, published_at) "
                    "VALUES (:id, 'messages.changed', '{}', now() - make_interval(secs => :created), "
                    "now() - make_interval(secs => :published))"
                ),
                {"id": mailbox_id, "created": created, "published": published},
            )

    async def state() -> Any:
        async with rt.sessions() as session:
            return await overview(session, rt)

    await event(600.0, None)
    nobody = await state()
    assert not nobody.has_publisher and nobody.outbox.unpublished == 1
    assert nobody.outbox_lag_seconds is None  # nothing publishes: no lag to speak of

    async with rt.sessions() as session, session.begin():
        await session.execute(text("UPDATE outbox_events SET published_at = now()"))
    await event(30.0, None)
    await event(20.0, None)
    behind = await state()
    assert behind.has_publisher and behind.outbox.unpublished == 2
    assert behind.outbox_lag_seconds is not None and 25 <= behind.outbox_lag_seconds < 60


async def test_a_page_that_spans_two_statuses(rt: Runtime) -> None:
    await add_mailboxes(
        rt,
        [{"email": f"ok{n:02d}@example.com", "status": "connected"} for n in range(40)]
        + [{"email": f"bad{n:02d}@example.com", "status": "error"} for n in range(30)],
    )
    async with rt.sessions() as session:
        first = await mailbox_page(session, MailboxFilter(), 1)
        second = await mailbox_page(session, MailboxFilter(), 2)
    assert [m.row.email for m in first.items] == [f"bad{n:02d}@example.com" for n in range(30)] + [
        f"ok{n:02d}@example.com" for n in range(20)
    ]
    assert [m.row.email for m in second.items] == [f"ok{n:02d}@example.com" for n in range(20, 40)]
    assert first.total == second.total == 70
