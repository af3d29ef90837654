"""Case mail: how a contact's history is found, in requests, seconds and rows per second.

    python -m bench.cases [--messages 200000] [--contact 2500] [--latency-ms 100]
        [--quota 250] [--mirror 1000000] [--mirror-contact 5000]
        [--only outlook|gmail|mirror|index] [--index-variants]

- **Outlook, cases-only.** A mailbox of `--messages` whose contact took part in `--contact`
  of them over its last five years (of seven). After the mailbox's own first pass, the
  contact's search runs (Graph `$search`, windows cut at the 1,000-result cap) with
  `--latency-ms` per request: requests used against the minimum (the pages the results
  need if there were no cap), and the time against that minimum's time.
- **Gmail, cases-only.** The same mailbox on Gmail under `--quota` units per second:
  the search's quota units per second as a fraction of the quota (the ceiling), and its
  messages per second against the ceiling's (5 units a metadata get, 5 a listing of 500).
- **Full mirror.** `--mirror` stored messages (and 200,000 in a second mailbox with the
  same contact, so the index serves more than one mailbox), `--mirror-contact` of them
  with the contact: the time to link them by the query, rows/s, and the plan; the same
  query without the participants index for comparison. Also the cost a page pays in a
  mailbox that belongs to no case.
- `--index-variants`: 1000-message page upserts with no participants index, the GIN index
  the migration creates, the same lower-cased through a function, and a participants table
  (how migration 0011 chose).

The simulator runs as its own process; the searches run in this process through the same
slices a worker runs. Figures print as ratios to a ceiling measured in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import text

from app.config import Settings
from app.db.repositories.cases import CaseEntryRepository
from app.db.repositories.messages import MessageRepository
from app.db.session import make_engine, make_sessionmaker
from app.providers.base import MessageBatch
from app.providers.gmail.quota import QUOTA_UNITS
from app.providers.gmail.search import SEARCH_PAGE_SIZE as GMAIL_PAGE
from app.providers.memory import make_message
from app.providers.outlook.search import SEARCH_PAGE_SIZE as GRAPH_PAGE
from app.sync.cases import service as cases
from app.sync.cases.runner import CaseSearchRunner, Outcome
from app.sync.cases.states import MailboxScope
from app.sync.engine import Outcome as SyncOutcome
from app.sync.engine import SyncEngine
from app.sync.runtime import Runtime
from bench.common import Tx, connect_account, scratch_database, start_simulator

REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
CONTACT = "counsel@lawfirm.example"
_ALIASES = {f.alias for f in Settings.model_fields.values() if f.alias}


async def _connect(rt: Runtime, provider: str, account: dict[str, Any]) -> uuid.UUID:
    return await connect_account(rt, provider, account, scope=MailboxScope.CASES)


async def _first_pass(rt: Runtime, mailbox_id: uuid.UUID) -> None:
    engine = SyncEngine(rt, owner="bench")
    while (await engine.run_slice(mailbox_id)).outcome is SyncOutcome.CONTINUE:
        pass


async def _case_entry(rt: Runtime, mailbox_id: uuid.UUID, case_id: str) -> int:
    async with rt.sessions() as session:
        tx = Tx(session, rt)
        spec = cases.CaseSpec(case_id, None, [mailbox_id], [CONTACT], None)
        await cases.put_case(tx, "bench", spec)
        await session.commit()
    async with rt.sessions() as session:
        entry_id = (
            await session.execute(
                text("SELECT id FROM case_searches WHERE mailbox_id = :id"), {"id": mailbox_id}
            )
        ).scalar_one()
    return int(entry_id)


async def _search(rt: Runtime, entry_id: int) -> float:
    runner = CaseSearchRunner(rt, owner="bench")
    started = time.perf_counter()
    while True:
        result = await runner.run_slice(entry_id)
        if result.outcome is Outcome.COMPLETE:
            return time.perf_counter() - started
        if result.outcome is not Outcome.CONTINUE:
            raise RuntimeError(f"search stopped: {result.outcome} {result.message}")


async def _account(sim: httpx.AsyncClient, provider: str, messages: int, contact: int) -> Any:
    planted = [{"address": CONTACT, "count": contact, "first": 2 / 7}]
    if provider == "google":
        email = f"bench-{uuid.uuid4().hex[:6]}@example.com"
        body = {"email": email, "messages": messages, "seed": 3, "contacts": planted}
        response = await sim.post("/_sim/google/accounts", json=body, timeout=600)
    else:
        email = f"bench-{uuid.uuid4().hex[:6]}@contoso.com"
        body = {"email": email, "message_count": messages, "seed": 3, "contacts": planted}
        response = await sim.post("/_sim/microsoft/accounts", json=body, timeout=600)
    response.raise_for_status()
    return response.json()


async def _counters(sim: httpx.AsyncClient, key: str) -> dict[str, Any]:
    snapshot = (await sim.get("/_sim/counters")).json()
    return dict(snapshot["accounts"].get(key, {}))


async def _entry(rt: Runtime, entry_id: int) -> Any:
    async with rt.sessions() as session:
        return await CaseEntryRepository(session).get(entry_id)


async def bench_outlook(rt: Runtime, sim: httpx.AsyncClient, args: argparse.Namespace) -> None:
    print(f"\n== Outlook, cases-only: {args.messages:,} messages, a contact's {args.contact:,}")
    account = await _account(sim, "microsoft", args.messages, args.contact)
    mailbox_id = await _connect(rt, "microsoft", account)
    await sim.put("/_sim/faults", json={})
    await _first_pass(rt, mailbox_id)  # the delta enumeration, kept nothing: not measured
    entry_id = await _case_entry(rt, mailbox_id, "outlook")
    await sim.put("/_sim/faults", json={"latency_ms": args.latency_ms})
    before = await _counters(sim, account["counter_key"])
    elapsed = await _search(rt, entry_id)
    after = await _counters(sim, account["counter_key"])
    await sim.put("/_sim/faults", json={})
    entry = await _entry(rt, entry_id)
    requests = after["requests"] - before.get("requests", 0)
    minimum = math.ceil(args.contact / GRAPH_PAGE)
    capped = entry.plan["capped"]
    floor = minimum * args.latency_ms / 1000
    print(f"linked                   {entry.found:,} of {args.contact:,}")
    print(f"requests                 {requests} ({entry.requests} of them $search pages)")
    print(f"minimum (no cap)         {minimum} pages of {GRAPH_PAGE}")
    print(f"requests / minimum       {requests / minimum:.2f} ({capped} windows reached the cap)")
    print(f"bound (2 x pages + cap)  {2 * minimum + capped}")
    print(f"time                     {elapsed:.2f} s with {args.latency_ms:.0f} ms per request")
    print(f"minimum's time           {floor:.2f} s ({minimum} requests x latency)")
    print(f"time / minimum's time    {elapsed / max(floor, 1e-9):.2f}")
    print(f"messages/s               {entry.found / elapsed:,.0f}")


async def bench_gmail(rt: Runtime, sim: httpx.AsyncClient, args: argparse.Namespace) -> None:
    print(
        f"\n== Gmail, cases-only: {args.messages:,} messages, a contact's {args.contact:,}, "
        f"quota {args.quota:g} units/s"
    )
    account = await _account(sim, "google", args.messages, args.contact)
    await sim.put("/_sim/faults", json={"gmail_quota_units_per_second": 0})
    mailbox_id = await _connect(rt, "google", account)
    await _first_pass(rt, mailbox_id)  # follows history from now: a few units
    entry_id = await _case_entry(rt, mailbox_id, "gmail")
    await sim.put("/_sim/faults", json={"gmail_quota_units_per_second": args.quota})
    # The quota bucket starts full, as a user's does after a quiet second.
    await asyncio.sleep(1.0)
    before = await _counters(sim, account["counter_key"])
    elapsed = await _search(rt, entry_id)
    after = await _counters(sim, account["counter_key"])
    await sim.put("/_sim/faults", json={})
    entry = await _entry(rt, entry_id)
    units = after["quota_units"] - before.get("quota_units", 0)
    throttled = after["throttled"] - before.get("throttled", 0)
    requests = after["requests"] - before.get("requests", 0)
    per_message = (
        QUOTA_UNITS["users.messages.get"] + QUOTA_UNITS["users.messages.list"] / GMAIL_PAGE
    )
    ceiling = args.quota / per_message
    rate = entry.found / elapsed
    print(f"linked                   {entry.found:,} of {args.contact:,}")
    print(f"time                     {elapsed:.1f} s")
    print(f"quota units spent        {units:,} ({units / elapsed:,.1f} units/s)")
    print(f"fraction of quota        {units / elapsed / args.quota:.3f}")
    print(
        f"messages/s               {rate:,.1f} (ceiling {ceiling:,.1f}: fraction {rate / ceiling:.3f})"
    )
    print(f"requests                 {requests} ({throttled} refused for quota)")


async def _seed_mirror(
    url: str, mailbox: uuid.UUID, other: uuid.UUID, args: argparse.Namespace
) -> None:
    """Rows as the upsert writes them, straight from SQL: `--mirror` in one mailbox (every
    n-th with the contact) and 200,000 in another (5,000 with the contact)."""
    engine = make_engine(url)
    async with engine.begin() as conn:
        for mailbox_id, user in ((mailbox, "bench"), (other, "other")):
            await conn.execute(
                text(
                    "INSERT INTO mailboxes (id, user_id, provider, account_key, auth_mode, status, "
                    "connected_at, scope) VALUES (:id, :user, 'microsoft', :key, 'delegated', "
                    "'connected', now(), 'full')"
                ),
                {"id": mailbox_id, "user": user, "key": f"{mailbox_id}@example.com"},
            )
        await conn.execute(text("DROP INDEX ix_messages_participants"))
    for mailbox_id, total, contact in (
        (mailbox, args.mirror, args.mirror_contact),
        (other, 200_000, 5_000),
    ):
        step = total // contact
        for start in range(0, total, 100_000):
            async with engine.begin() as conn:
                await conn.execute(
                    text(
                        """
                        INSERT INTO messages (mailbox_id, provider_message_id, stream_key,
                            generation, thread_id, subject, from_address, to_addresses,
                            cc_addresses, bcc_addresses, snippet, received_at, labels, is_read,
                            has_attachments)
                        SELECT :mailbox, 'm' || i, 'inbox', 1, 't' || (i / 3), 'Subject ' || i,
                               CASE WHEN i % :step = 0 AND i % 3 = 0 THEN :contact
                                    ELSE 'person' || (i % 9973) || '@example.com' END,
                               ARRAY['owner@example.com', 'person' || (i % 7919) || '@example.org']
                                 || CASE WHEN i % :step = 0 AND i % 3 = 1
                                         THEN ARRAY[CAST(:contact AS text)] ELSE '{}' END,
                               CASE WHEN i % :step = 0 AND i % 3 = 2
                                    THEN ARRAY[CAST(:contact AS text)]
                                    ELSE ARRAY['cc' || (i % 4099) || '@example.net'] END,
                               '{}', 'snippet of message ' || i,
                               timestamptz '2019-01-01' + i * interval '3 minutes',
                               ARRAY['INBOX'], true, false
                          FROM generate_series(:start, :stop - 1) AS i
                        """
                    ),
                    {
                        "mailbox": mailbox_id,
                        "step": step,
                        "contact": CONTACT,
                        "start": start,
                        "stop": min(start + 100_000, total),
                    },
                )
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "CREATE INDEX ix_messages_participants ON messages USING gin "
                "((ARRAY[from_address] || to_addresses || cc_addresses || bcc_addresses))"
            )
        )
    autocommit = engine.execution_options(isolation_level="AUTOCOMMIT")
    async with autocommit.connect() as conn:
        await conn.execute(text("VACUUM ANALYZE messages"))
    await engine.dispose()


_LINK_QUERY = """
    SELECT m.provider_message_id FROM messages m
     WHERE m.mailbox_id = :mailbox
       AND (ARRAY[m.from_address] || m.to_addresses || m.cc_addresses || m.bcc_addresses)
           @> ARRAY[CAST(:contact AS text)]
"""


async def bench_mirror(rt: Runtime, url: str, args: argparse.Namespace) -> None:
    print(
        f"\n== Full mirror: {args.mirror:,} stored messages, a contact's {args.mirror_contact:,} "
        "(and 200,000 in another mailbox, 5,000 with the contact)"
    )
    mailbox, other = uuid.uuid4(), uuid.uuid4()
    started = time.perf_counter()
    await _seed_mirror(url, mailbox, other, args)
    print(f"seeded                   in {time.perf_counter() - started:.0f} s (not measured)")
    async with rt.sessions() as session:
        tx = Tx(session, rt)
        await cases.put_case(
            tx, "bench", cases.CaseSpec("mirror", None, [mailbox], [CONTACT], None)
        )
        await session.commit()
        entry_id = (
            await session.execute(
                text("SELECT id FROM case_searches WHERE mailbox_id = :id"), {"id": mailbox}
            )
        ).scalar_one()
    elapsed = await _search(rt, int(entry_id))
    entry = await _entry(rt, int(entry_id))
    print(f"linked                   {entry.found:,} messages in {elapsed * 1000:.0f} ms")
    print(f"rows/s                   {entry.found / elapsed:,.0f}")
    async with rt.sessions() as session:
        plan = (
            (
                await session.execute(
                    text(f"EXPLAIN (ANALYZE, BUFFERS, SUMMARY) {_LINK_QUERY}"),
                    {"mailbox": mailbox, "contact": CONTACT},
                )
            )
            .scalars()
            .all()
        )
        print(
            "plan of the query        "
            + "\n                         ".join(
                line for line in plan if "Scan" in line or "Execution" in line or "Recheck" in line
            )
        )
        await session.execute(text("SET LOCAL enable_bitmapscan = off"))
        await session.execute(text("SET LOCAL enable_indexscan = off"))
        t0 = time.perf_counter()
        rows = (
            await session.execute(text(_LINK_QUERY), {"mailbox": mailbox, "contact": CONTACT})
        ).all()
        scan = time.perf_counter() - t0
    print(
        f"without the index        {len(rows):,} rows in {scan * 1000:.0f} ms (a scan of the mailbox)"
    )

    # What a page pays to know whether its mailbox is in a case: the fence statement
    # answers it (RETURNING EXISTS ...), so compare the fence with and without it.
    timings = {}
    fence = "UPDATE mailboxes SET updated_at = now() WHERE id = :id"
    probe = " RETURNING EXISTS (SELECT 1 FROM case_mailboxes WHERE mailbox_id = :id)"
    async with rt.sessions() as session:
        for label, statement in (
            ("without", text(fence)),
            ("with", text(fence + probe)),
        ) * 2:
            t0 = time.perf_counter()
            for _ in range(500):
                await session.execute(statement, {"id": other})
            timings[label] = (time.perf_counter() - t0) / 500
        await session.rollback()
    print(
        f"a page's case probe      {(timings['with'] - timings['without']) * 1000:+.3f} ms "
        f"(the fence {timings['without'] * 1000:.3f} ms, with the probe "
        f"{timings['with'] * 1000:.3f} ms)"
    )


VARIANTS: dict[str, list[str]] = {
    "no participants index": [],
    "GIN (migration 0011)": [
        "CREATE INDEX ix_p ON messages USING gin "
        "((ARRAY[from_address] || to_addresses || cc_addresses || bcc_addresses))"
    ],
    "GIN, lower() in a function": [
        "CREATE FUNCTION mp(f text, t text[], c text[], b text[]) RETURNS text[] LANGUAGE sql "
        "IMMUTABLE PARALLEL SAFE AS $$ SELECT string_to_array(lower(array_to_string("
        "ARRAY[f] || t || c || b, E'\\x1f')), E'\\x1f') $$",
        "CREATE INDEX ix_p ON messages USING gin "
        "(mp(from_address, to_addresses, cc_addresses, bcc_addresses))",
    ],
    "participants table": [
        "CREATE TABLE mp_t (mailbox_id uuid, address text, provider_message_id text, "
        "PRIMARY KEY (mailbox_id, address, provider_message_id))"
    ],
}


async def bench_index_variants(url: str, total: int = 60_000, rounds: int = 3) -> None:
    print(f"\n== Participants index variants: first write of {total:,} messages, 1000 a page")
    engine = make_engine(url)
    sessions = make_sessionmaker(engine)
    pages = [
        MessageBatch.of(make_message(i) for i in range(s, min(s + 1000, total)))
        for s in range(0, total, 1000)
    ]
    rates: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for _ in range(rounds):
        for name, ddl in VARIANTS.items():
            async with engine.begin() as conn:
                for statement in (
                    "DROP INDEX IF EXISTS ix_messages_participants",
                    "DROP INDEX IF EXISTS ix_p",
                    "DROP FUNCTION IF EXISTS mp",
                    "DROP TABLE IF EXISTS mp_t",
                    "TRUNCATE messages",
                    *ddl,
                ):
                    await conn.execute(text(statement))
            mailbox = uuid.uuid4()
            started = time.perf_counter()
            for page in pages:
                async with sessions() as session, session.begin():
                    await MessageRepository(session).upsert_page(mailbox, "inbox", 1, page)
                    if name == "participants table":
                        pairs = {
                            (address, mid)
                            for mid, sender, to, cc, bcc in zip(
                                page.provider_message_id, page.from_, page.to, page.cc,
                                page.bcc, strict=True,
                            )
                            for address in (sender, *to, *cc, *bcc)
                            if address
                        }  # fmt: skip
                        await session.execute(
                            text(
                                "INSERT INTO mp_t SELECT :m, a, p FROM unnest("
                                "CAST(:addresses AS text[]), CAST(:ids AS text[])) AS x(a, p) "
                                "ON CONFLICT DO NOTHING"
                            ),
                            {
                                "m": mailbox,
                                "addresses": [a for a, _ in pairs],
                                "ids": [p for _, p in pairs],
                            },
                        )
            rates[name].append(total / (time.perf_counter() - started))
    base = sorted(rates["no participants index"])[rounds // 2]
    for name, runs in rates.items():
        median = sorted(runs)[rounds // 2]
        print(f"{name:<28} {median:>9,.0f} msg/s (median of {rounds}), {median / base:.2f} of none")
    await engine.dispose()


async def main(args: argparse.Namespace) -> None:
    load = os.getloadavg()
    print(f"machine: {os.cpu_count()} cores, load average {load[0]:.1f} (other work beside)")
    async with scratch_database("mailsync_bench_cases") as url:
        if args.only == "index" or args.index_variants:
            await bench_index_variants(url)
            if args.only == "index":
                return
        workdir = Path(tempfile.mkdtemp(prefix="mailsync-bench-cases-"))
        sim_process, sim_env = start_simulator(workdir)
        try:
            env = {
                **sim_env,
                "MAILSYNC_ENV": "development",
                "DATABASE_URL": url,
                "REDIS_URL": REDIS_URL,
                "PUBLIC_BASE_URL": "http://127.0.0.1:9",
                "GMAIL_QUOTA_UNITS_PER_SECOND": str(args.quota),
                "SYNC_SLICE_PAGES": "1000",
                "LOG_LEVEL": "WARNING",
            }
            os.environ["SSL_CERT_FILE"] = sim_env["SSL_CERT_FILE"]
            os.environ["REQUESTS_CA_BUNDLE"] = sim_env["REQUESTS_CA_BUNDLE"]
            settings = Settings(_env_file=None, **{k: v for k, v in env.items() if k in _ALIASES})
            rt = await Runtime.create(settings)
            await rt.redis.flushdb()
            sim = httpx.AsyncClient(
                base_url=sim_env["GMAIL_BASE_URL"], verify=sim_env["SSL_CERT_FILE"], timeout=600
            )
            try:
                if args.only in (None, "outlook"):
                    await bench_outlook(rt, sim, args)
                if args.only in (None, "gmail"):
                    await bench_gmail(rt, sim, args)
                if args.only in (None, "mirror"):
                    await bench_mirror(rt, url, args)
            finally:
                await sim.aclose()
                await rt.close()
        finally:
            sim_process.terminate()
            sim_process.wait(timeout=10)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--contact", type=int, default=2_500)
    parser.add_argument("--latency-ms", type=float, default=100.0)
    parser.add_argument("--quota", type=float, default=250.0)
    parser.add_argument("--mirror", type=int, default=1_000_000)
    parser.add_argument("--mirror-contact", type=int, default=5_000)
    parser.add_argument("--only", choices=["outlook", "gmail", "mirror", "index"])
    parser.add_argument("--index-variants", action="store_true")
    asyncio.run(main(parser.parse_args()))
