"""Upsert throughput of the messages repository: messages/s for 1000-message pages.

    python -m bench.upsert [--messages 100000] [--page 1000]

Prints: first write (insert), an identical replay (no-op by design), a changed replay
(labels/read state), and the machine's ceiling (asyncpg COPY of the same rows).

Then what events cost the page transaction: the first write of two fresh mailboxes, page by
page in turn, one without and one with its outbox row (the page's events, built and written
as the sync engine does), on one connection; per page: wall time, this process's CPU and
the PostgreSQL backend's CPU.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import statistics
import time
import uuid
from itertools import repeat
from pathlib import Path

import asyncpg
from sqlalchemy import text

from app.db.repositories.messages import MessageRepository
from app.db.repositories.outbox import OutboxRepository
from app.db.session import make_engine, make_sessionmaker
from app.events.changes import MESSAGES_CHANGED, PageChanges
from app.providers.base import MessageBatch
from app.providers.memory import make_message
from bench.common import scratch_database

_TICK = os.sysconf("SC_CLK_TCK")


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


async def _mailbox(conn: object, mailbox_id: uuid.UUID) -> None:
    await conn.execute(  # type: ignore[attr-defined]
        text(
            "INSERT INTO mailboxes (id, user_id, provider, account_key, auth_mode, status) "
            "VALUES (:id, 'bench', 'microsoft', :key, 'delegated', 'syncing')"
        ),
        {"id": mailbox_id, "key": f"{mailbox_id}@example.com"},
    )


async def outbox_cost(url: str, total: int, page: int) -> None:
    """The page transaction without and with its events, page by page in turn."""
    engine = make_engine(url, pool_size=1)
    sessions = make_sessionmaker(engine)
    off, on = uuid.uuid4(), uuid.uuid4()
    async with engine.begin() as conn:
        await _mailbox(conn, off)
        await _mailbox(conn, on)
        backend = int((await conn.execute(text("SELECT pg_backend_pid()"))).scalar_one())
    # As the worker runs (app/sync/worker.py): a page's garbage is not collected mid-page.
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 10, 100)
    costs: dict[bool, list[tuple[float, float, float]]] = {False: [], True: []}
    payload_bytes: list[int] = []
    for start in range(0, total, page):
        ids = range(start, min(start + page, total))
        for events in (False, True):
            batch = MessageBatch.of(make_message(i) for i in ids)
            wall, cpu, pg = time.perf_counter(), time.process_time(), _cpu_seconds(backend)
            async with sessions() as session, session.begin():
                mailbox_id = on if events else off
                written = await MessageRepository(session).upsert_page(
                    mailbox_id, "inbox", 1, batch
                )
                if events:
                    changes = PageChanges("inbox")
                    changes.upserted(written)
                    payload = changes.payload()
                    assert payload is not None
                    outbox = OutboxRepository(session)
                    await outbox.add(mailbox_id, MESSAGES_CHANGED, payload)
            costs[events].append(
                (
                    time.perf_counter() - wall,
                    time.process_time() - cpu,
                    _cpu_seconds(backend) - pg,
                )
            )
    async with engine.connect() as conn:
        payload_bytes = list(
            (await conn.execute(text("SELECT octet_length(payload) FROM outbox_events"))).scalars()
        )
    await engine.dispose()

    def per_page(events: bool, i: int) -> float:
        return 1000 * sum(c[i] for c in costs[events]) / len(costs[events])

    print(f"events' cost per {page}-message first-write page (mean of {len(costs[True])}):")
    for label, i in (("wall", 0), ("this process CPU", 1), ("PostgreSQL CPU", 2)):
        print(
            f"  {label:<18} off {per_page(False, i):6.2f} ms   on {per_page(True, i):6.2f} ms"
            f"   +{per_page(True, i) - per_page(False, i):5.2f} ms"
        )
    walls = [c[0] for c in costs[True]], [c[0] for c in costs[False]]
    print(
        f"  wall, median       off {1000 * statistics.median(walls[1]):6.2f} ms   "
        f"on {1000 * statistics.median(walls[0]):6.2f} ms"
    )
    print(f"  outbox row         {statistics.mean(payload_bytes) / 1024:.0f} KiB per page")


async def main(total: int, page: int) -> None:
    async with scratch_database() as url:
        engine = make_engine(url)
        sessions = make_sessionmaker(engine)
        mailbox_id = uuid.uuid4()
        async with engine.begin() as conn:
            await conn.execute(
                text(
                    "INSERT INTO mailboxes (id, user_id, provider, account_key, auth_mode, status) "
                    "VALUES (:id, 'bench', 'microsoft', 'bench@example.com', 'delegated', 'syncing')"
                ),
                {"id": mailbox_id},
            )
        pages = [
            MessageBatch.of(make_message(i) for i in range(s, min(s + page, total)))
            for s in range(0, total, page)
        ]

        async def run(label: str, batches: list) -> None:
            started = time.perf_counter()
            for batch in batches:
                async with sessions() as session, session.begin():
                    await MessageRepository(session).upsert_page(mailbox_id, "inbox", 1, batch)
            elapsed = time.perf_counter() - started
            print(
                f"{label:<28} {total / elapsed:>10,.0f} messages/s  ({elapsed:.2f} s for {total:,})"
            )

        await run("upsert, first write", pages)
        await run("upsert, identical replay", pages)
        for batch in pages:
            batch.is_read[:] = [not read for read in batch.is_read]
            batch.labels[:] = [[*labels, "Follow-up"] for labels in batch.labels]
        await run("upsert, changed replay", pages)

        # The ceiling: COPY of the same rows into a scratch table, one page per COPY.
        conn = await asyncpg.connect(url.replace("postgresql+asyncpg", "postgresql"))
        await conn.execute("CREATE TABLE copy_ceiling (LIKE messages INCLUDING DEFAULTS)")
        columns = [
            "mailbox_id",
            "provider_message_id",
            "stream_key",
            "generation",
            "thread_id",
            "internet_message_id",
            "subject",
            "from_address",
            "to_addresses",
            "cc_addresses",
            "bcc_addresses",
            "snippet",
            "received_at",
            "labels",
            "is_read",
            "has_attachments",
        ]
        started = time.perf_counter()
        for batch in pages:
            records = list(
                zip(
                    repeat(mailbox_id),
                    batch.provider_message_id,
                    repeat("inbox"),
                    repeat(1),
                    batch.thread_id,
                    batch.internet_message_id,
                    batch.subject,
                    batch.from_,
                    batch.to,
                    batch.cc,
                    batch.bcc,
                    batch.snippet,
                    batch.received_at,
                    batch.labels,
                    batch.is_read,
                    batch.has_attachments,
                    strict=False,
                )
            )
            await conn.copy_records_to_table("copy_ceiling", records=records, columns=columns)
        elapsed = time.perf_counter() - started
        print(
            f"{'COPY ceiling (no indexes)':<28} {total / elapsed:>10,.0f} messages/s  ({elapsed:.2f} s)"
        )
        await conn.close()
        await engine.dispose()
        await outbox_cost(url, total, page)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--page", type=int, default=1000)
    args = parser.parse_args()
    asyncio.run(main(args.messages, args.page))
