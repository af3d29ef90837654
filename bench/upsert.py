"""Upsert throughput of the messages repository: messages/s for 1000-message pages.

    python bench/upsert.py [--messages 100000] [--page 1000]

Prints: first write (insert), an identical replay (no-op by design), a changed replay
(labels/read state), and the machine's ceiling (asyncpg COPY of the same rows).
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from itertools import repeat

import asyncpg
from sqlalchemy import text

from app.db.repositories.messages import MessageRepository
from app.db.session import make_engine, make_sessionmaker
from app.providers.base import MessageBatch
from app.providers.memory import make_message
from bench.common import scratch_database


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


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--page", type=int, default=1000)
    args = parser.parse_args()
    asyncio.run(main(args.messages, args.page))
