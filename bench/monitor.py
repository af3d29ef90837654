"""What the completion monitor costs, next to what it saves, measured in one run.

    python -m bench.monitor [--messages 20000] [--lose 0.05] [--mailboxes 100000]

1. Per provider, a mailbox of `--messages` is synced in this process (engine slices against
   the simulator process), then `--lose` of its stored rows vanish behind mailsync's back
   and a row the provider never had appears. The monitor suspects, a pass runs, the monitor
   confirms and repairs (Graph: the affected folders enumerated again; Gmail: ids listed,
   only the missing fetched). Printed: requests (and Gmail quota units) and seconds of the
   repair, as ratios to the full sync of the same mailbox in the same run: the ceiling a
   repair that re-downloads everything would cost.
2. The monitor's cron at scale: `--mailboxes` connected mailboxes in PostgreSQL, one tick
   (schedule first checks, lapsed push channels, due checks, overdue syncs, enqueueing the
   due ones), next to a sequential scan of the same table in the same run.

Redis: BENCH_REDIS_URL (default redis://127.0.0.1:6379/9), flushed before use.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import text

from app.config import Settings
from app.sync.engine import Outcome, SyncEngine
from app.sync.monitor import CompletionMonitor
from app.sync.monitor import Outcome as Check
from app.sync.runtime import Runtime
from bench.common import connect_account, scratch_database, start_simulator

REDIS_DB_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/9")
_ALIASES = {f.alias for f in Settings.model_fields.values() if f.alias}


async def _sql(rt: Runtime, sql: str, **params: Any) -> Any:
    async with rt.sessions() as session, session.begin():
        return await session.execute(text(sql), params)


async def _sync_until_done(rt: Runtime, mailbox_id: uuid.UUID) -> None:
    while True:
        result = await SyncEngine(rt, "bench").run_slice(mailbox_id)
        if result.outcome in (Outcome.DONE, Outcome.DONE_AGAIN):
            return
        if result.outcome is not Outcome.CONTINUE:
            raise RuntimeError(f"sync stopped: {result.outcome} {result.message}")


async def _check(rt: Runtime, mailbox_id: uuid.UUID) -> Check:
    await _sql(rt, "UPDATE mailboxes SET next_verify_at = now() WHERE id = :id", id=mailbox_id)
    return await CompletionMonitor(rt, "bench").verify(mailbox_id)


async def _totals(sim: httpx.AsyncClient) -> dict[str, Any]:
    return dict((await sim.get("/_sim/counters")).json()["totals"])


async def _provider_round(
    rt: Runtime,
    sim: httpx.AsyncClient,
    provider: str,
    messages: int,
    lose: float,
    *,
    one_folder: bool = False,
) -> None:
    email = (
        f"bench-{uuid.uuid4().hex[:6]}@{'example.com' if provider == 'google' else 'contoso.com'}"
    )
    if provider == "google":
        body: dict[str, Any] = {"email": email, "messages": messages, "seed": 3}
        response = await sim.post("/_sim/google/accounts", json=body, timeout=600)
    else:
        body = {"email": email, "message_count": messages, "seed": 3}
        response = await sim.post("/_sim/microsoft/accounts", json=body, timeout=600)
    response.raise_for_status()
    account = response.json()
    mailbox_id = await connect_account(
        rt, provider, {**account, "email": email}, user_id=f"bench-{provider}"
    )

    (await sim.post("/_sim/counters/reset")).raise_for_status()
    started = time.perf_counter()
    await _sync_until_done(rt, mailbox_id)
    full_seconds = time.perf_counter() - started
    full = await _totals(sim)

    lost = int(messages * lose)
    # Spread over the mailbox, or all from its largest stream.
    stream = (
        await _sql(
            rt,
            "SELECT stream_key FROM messages WHERE mailbox_id = :id GROUP BY stream_key "
            "ORDER BY count(*) DESC LIMIT 1",
            id=mailbox_id,
        )
    ).scalar_one()
    await _sql(
        rt,
        "DELETE FROM messages WHERE mailbox_id = :id AND provider_message_id IN ("
        " SELECT provider_message_id FROM messages WHERE mailbox_id = :id"
        " AND (NOT :one OR stream_key = :stream) ORDER BY md5(provider_message_id) LIMIT :n)",
        id=mailbox_id,
        n=lost,
        one=one_folder,
        stream=stream,
    )
    await _sql(
        rt,
        "INSERT INTO messages (mailbox_id, provider_message_id, stream_key, generation, "
        "to_addresses, cc_addresses, bcc_addresses, labels, is_read, has_attachments) "
        "VALUES (:id, '00000000deadbeef', :stream, 1, '{}', '{}', '{}', '{}', true, false)",
        id=mailbox_id,
        stream=stream,
    )
    assert await _check(rt, mailbox_id) is Check.SUSPECT
    await _sync_until_done(rt, mailbox_id)

    (await sim.post("/_sim/counters/reset")).raise_for_status()
    started = time.perf_counter()
    assert await _check(rt, mailbox_id) is Check.REPAIRING
    await _sync_until_done(rt, mailbox_id)  # Graph's rebuild; for Gmail, an ordinary pass
    repair_seconds = time.perf_counter() - started
    repair = await _totals(sim)
    assert await _check(rt, mailbox_id) is Check.VERIFIED
    stored = (
        await _sql(rt, "SELECT count(*) FROM messages WHERE mailbox_id = :id", id=mailbox_id)
    ).scalar_one()
    assert stored == messages, (stored, messages)
    repairs = (
        await _sql(
            rt,
            "SELECT scope_kind, method, count(*) FROM monitor_repairs WHERE mailbox_id = :id "
            "GROUP BY 1, 2",
            id=mailbox_id,
        )
    ).all()

    where = "from its largest folder" if one_folder else "spread over the mailbox"
    print(
        f"\n{provider}: {messages:,} messages, {lost:,} stored rows lost ({where}) + 1 foreign row"
    )
    print(f"  repairs                  {', '.join(f'{n} {k} by {m}' for k, m, n in repairs)}")
    print(
        f"  full sync (ceiling)      {full['requests']:,} requests, {full['quota_units']:,} "
        f"units, {full_seconds:.2f} s"
    )
    print(
        f"  confirm + repair         {repair['requests']:,} requests, "
        f"{repair['quota_units']:,} units, {repair_seconds:.2f} s"
    )
    print(
        f"  ratio to the full sync   requests {repair['requests'] / full['requests']:.3f}, "
        + (
            f"units {repair['quota_units'] / full['quota_units']:.3f}, "
            if full["quota_units"]
            else ""
        )
        + f"time {repair_seconds / full_seconds:.3f}"
    )


async def _tick_at_scale(rt: Runtime, mailboxes: int) -> None:
    await _sql(
        rt,
        """
        INSERT INTO mailboxes (id, user_id, provider, account_key, auth_mode, status,
                               connected_at, last_synced_at, next_sync_at, next_verify_at,
                               push_state, updated_at)
        SELECT gen_random_uuid(), 'u' || g, 'google', 'a' || g, 'delegated', 'connected',
               now() - interval '2 days', now() - random() * interval '100 seconds',
               now() + random() * interval '900 seconds',
               now() - interval '15 seconds' + random() * interval '3600 seconds',
               'active', now()
          FROM generate_series(1, :n) AS g
        """,
        n=mailboxes,
    )
    await _sql(
        rt,
        """
        INSERT INTO subscriptions (id, mailbox_id, provider, subscription_id, expires_at, status)
        SELECT gen_random_uuid(), id, 'google', 'watch:' || id, now() + interval '6 days',
               'active'
          FROM mailboxes WHERE user_id LIKE 'u%'
        """,
    )
    await _sql(rt, "ANALYZE")
    monitor = CompletionMonitor(rt, "bench")
    ticks, scans = [], []
    due = 0
    for _ in range(5):
        started = time.perf_counter()
        result = await monitor.tick(sweep=True)
        ticks.append(time.perf_counter() - started)
        due = max(due, result["due"])
        started = time.perf_counter()
        await _sql(rt, "SELECT count(*) FROM mailboxes WHERE status = 'connected'")
        scans.append(time.perf_counter() - started)
    # What any tick must do at least: read the table once and enqueue the due checks.
    enqueues = []
    for _ in range(5):
        ids = [f"bench:{uuid.uuid4().hex}" for _ in range(due)]
        started = time.perf_counter()
        for job_id in ids:
            await rt.redis.enqueue_job("noop", _job_id=job_id, _queue_name="bench:ceiling")
        enqueues.append(time.perf_counter() - started)
        await rt.redis.delete("bench:ceiling", *(f"arq:job:{i}" for i in ids))
    tick, scan, enqueue = (statistics.median(x) for x in (ticks, scans, enqueues))
    ceiling = scan + enqueue
    print(f"\nmonitor cron with {mailboxes:,} connected mailboxes (median of 5 ticks each)")
    print(f"  tick with sweep          {tick * 1000:.1f} ms ({due} checks due and enqueued)")
    print(
        f"  ceiling                  {ceiling * 1000:.1f} ms (a sequential scan of the "
        f"table {scan * 1000:.1f} ms + {due} ARQ enqueues {enqueue * 1000:.1f} ms)"
    )
    print(f"  ratio                    {tick / ceiling:.2f}")


async def run(args: argparse.Namespace) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="mailsync-bench-"))
    sim_process, sim_env = start_simulator(workdir)
    os.environ["SSL_CERT_FILE"] = sim_env["SSL_CERT_FILE"]
    os.environ["REQUESTS_CA_BUNDLE"] = sim_env["REQUESTS_CA_BUNDLE"]
    try:
        async with scratch_database() as url:
            env = {
                **sim_env,
                "MAILSYNC_ENV": "development",
                "DATABASE_URL": url,
                "REDIS_URL": REDIS_DB_URL,
                "PUBLIC_BASE_URL": "http://127.0.0.1:9",
                "GMAIL_QUOTA_UNITS_PER_SECOND": "0",
                "SYNC_SLICE_PAGES": "1000",
                "SYNC_RECENT_FIRST": "0",
                "LOG_LEVEL": "WARNING",
            }
            settings = Settings(_env_file=None, **{k: v for k, v in env.items() if k in _ALIASES})
            rt = await Runtime.create(settings)
            await rt.redis.flushdb()
            sim = httpx.AsyncClient(
                base_url=sim_env["GMAIL_BASE_URL"], verify=sim_env["SSL_CERT_FILE"], timeout=60
            )
            try:
                # Quota off: units are still counted; the wait for them is not what we measure.
                await sim.put("/_sim/faults", json={"gmail_quota_units_per_second": 0})
                print("machine shared with whatever else runs; compare ratios, not seconds")
                await _provider_round(rt, sim, "google", args.messages, args.lose)
                for one_folder in (False, True):
                    await _provider_round(
                        rt, sim, "microsoft", args.messages, args.lose, one_folder=one_folder
                    )
                await _tick_at_scale(rt, args.mailboxes)
            finally:
                await sim.aclose()
                await rt.redis.flushdb()
                await rt.close()
    finally:
        sim_process.terminate()
        sim_process.wait(timeout=10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--lose", type=float, default=0.05)
    parser.add_argument("--mailboxes", type=int, default=100_000)
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
