"""Dashboard latency with many mailboxes: the overview and the mailboxes page.

    python -m bench.dashboard [--mailboxes 10000] [--requests 300]

A scratch database gets N mailboxes across both providers and every status (three streams
each, a webhook log and an outbox with a publisher behind), the real API runs as its own
process (uvicorn, as in production), and this script asks for each page in turn over one
keep-alive connection, as the dashboard's live refresh does. It prints p50/p95/p99 per page
against the 100 ms budget, the CPU the API process and its PostgreSQL backends spent per
request (what other work on the machine does not inflate), and the floor: `/healthz` over
the same connection (the HTTP round trip alone on this machine).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import jwt
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from bench.common import free_port, scratch_database

REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/14")
BUDGET_MS = 100.0

PAGES = {
    "overview": "/dashboard",
    "overview (live fragment)": "/dashboard#fragment",
    "mailboxes, page 1": "/dashboard/mailboxes",
    "mailboxes, page 1 (live fragment)": "/dashboard/mailboxes#fragment",
    "mailboxes, page 150": "/dashboard/mailboxes?page=150",
    "mailboxes, status=error": "/dashboard/mailboxes?status=error",
    "mailboxes, provider+status": "/dashboard/mailboxes?provider=google&status=syncing",
    "mailboxes, search": "/dashboard/mailboxes?q=user0042",
    "mailboxes, one user": "/dashboard/mailboxes?user=tenant-17",
}

SEED = """
INSERT INTO mailboxes (id, user_id, provider, account_key, email, auth_mode, status, phase,
                       messages_synced, messages_total_estimate, last_synced_at, last_error,
                       last_error_at, next_sync_at, created_at)
SELECT gen_random_uuid(), 'tenant-' || (n % 500), CASE WHEN n % 3 = 0 THEN 'google' ELSE 'microsoft' END,
       'user' || lpad(n::text, 5, '0') || '@example.com', 'user' || lpad(n::text, 5, '0') || '@example.com',
       'delegated',
       (ARRAY['connected','connected','connected','connected','connected','connected','syncing',
              'pending','error','auth_expired','disconnected'])[1 + n % 11],
       (ARRAY['idle','idle','idle','idle','idle','idle','backfill','backfill',NULL,NULL,NULL])[1 + n % 11],
       (n * 37) % 50000, 50000, now() - make_interval(secs => n % 900),
       CASE WHEN n % 11 IN (8, 9) THEN 'ProviderError: something the provider said' END,
       CASE WHEN n % 11 IN (8, 9) THEN now() END,
       now() + interval '10 minutes', now() - make_interval(secs => n)
  FROM generate_series(1, :count) AS n
"""

STREAMS = """
INSERT INTO sync_cursors (mailbox_id, stream_key, name, labels, cursor, mode, generation,
                          caught_up, total_estimate, enumerated)
SELECT m.id, s.key, s.key, ARRAY[upper(s.key)], '{"delta_link": "https://graph/x"}'::jsonb,
       CASE WHEN m.status = 'syncing' THEN 'full' ELSE 'incremental' END, 1,
       m.status <> 'syncing', 10000, 5000
  FROM mailboxes m, (VALUES ('inbox'), ('sentitems'), ('archive')) AS s(key)
"""

NOTIFICATIONS = """
INSERT INTO webhook_notifications (provider, mailbox_id, kind, payload, received_at)
SELECT m.provider, m.id, 'change:created', '{}'::jsonb, now() - make_interval(secs => g)
  FROM (SELECT id, provider FROM mailboxes ORDER BY id LIMIT 2000) m, generate_series(1, 25) g
"""

OUTBOX = """
INSERT INTO outbox_events (mailbox_id, kind, payload, created_at, published_at)
SELECT m.id, 'messages.changed', convert_to('{"upserted": []}', 'UTF8'),
       now() - make_interval(secs => g),
       CASE WHEN g > 30 THEN now() - make_interval(secs => g - 1) END
  FROM (SELECT id FROM mailboxes ORDER BY id LIMIT 1000) m, generate_series(1, 50) g
"""


async def seed(database_url: str, count: int) -> None:
    engine = create_async_engine(database_url)
    async with engine.begin() as conn:
        await conn.execute(text(SEED), {"count": count})
        await conn.execute(text(STREAMS))
        await conn.execute(text(NOTIFICATIONS))
        await conn.execute(text(OUTBOX))
    async with engine.connect() as conn:
        await conn.execute(text("COMMIT"))
        await conn.execute(text("VACUUM ANALYZE"))
        counts = {
            table: (await conn.execute(text(f"SELECT count(*) FROM {table}"))).scalar_one()  # noqa: S608
            for table in ("mailboxes", "sync_cursors", "webhook_notifications", "outbox_events")
        }
    await engine.dispose()
    print("seeded: " + ", ".join(f"{k} {v:,}" for k, v in counts.items()))


def start_api(database_url: str, secret: str, port: int, log: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "MAILSYNC_ENV": "development",
        "DATABASE_URL": database_url,
        "REDIS_URL": REDIS_URL,
        "AUTH_JWT_SECRET": secret,
        "LOG_LEVEL": "WARNING",
    }
    with log.open("wb") as out:
        return subprocess.Popen(  # noqa: S603 - our own app
            [sys.executable, "-m", "uvicorn", "app.main:app", "--port", str(port),
             "--no-access-log", "--log-level", "warning"],
            env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip


_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:  # a backend that has just exited
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICK


async def backend_pids(database_url: str) -> list[int]:
    """The PostgreSQL backends serving the API (the scratch database is the API's alone)."""
    name = database_url.rsplit("/", 1)[1]
    engine = create_async_engine(database_url.rsplit("/", 1)[0] + "/postgres")
    async with engine.connect() as conn:
        rows = await conn.execute(
            text("SELECT pid FROM pg_stat_activity WHERE datname = :name"), {"name": name}
        )
        pids = [int(r[0]) for r in rows.all()]
    await engine.dispose()
    return pids


async def measure(
    client: httpx.AsyncClient, path: str, requests: int, api_pid: int, database_url: str
) -> tuple[list[float], float]:
    """Wall times (ms) of `requests` requests, and the CPU (ms) the API process and its
    PostgreSQL backends spent per request: what the machine's load does not inflate."""
    url, _, fragment = path.partition("#")
    headers = {"X-Dashboard-Fragment": "1"} if fragment else {}
    for _ in range(10):  # warm the connection pool, prepared statements and templates
        (await client.get(url, headers=headers)).raise_for_status()
    pids = [api_pid, *await backend_pids(database_url)]
    before = sum(cpu_seconds(p) for p in pids)
    timings = []
    for _ in range(requests):
        started = time.perf_counter()
        response = await client.get(url, headers=headers)
        timings.append((time.perf_counter() - started) * 1000)
        response.raise_for_status()
    cpu = (sum(cpu_seconds(p) for p in pids) - before) * 1000 / requests
    return timings, cpu


def quantile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[int(q * 100) - 1]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mailboxes", type=int, default=10_000)
    parser.add_argument("--requests", type=int, default=300)
    args = parser.parse_args()
    secret = secrets.token_urlsafe(48)
    token = jwt.encode(
        {"sub": "bench", "exp": int(time.time()) + 3600, "roles": ["mailsync.operator"]},
        secret,
        algorithm="HS256",
    )
    async with scratch_database("mailsync_bench_dashboard") as database_url:
        await seed(database_url, args.mailboxes)
        port = free_port()
        log = Path(tempfile.mkdtemp(prefix="mailsync-bench-")) / "api.log"
        api = start_api(database_url, secret, port, log)
        try:
            async with httpx.AsyncClient(
                base_url=f"http://127.0.0.1:{port}",
                headers={"Authorization": f"Bearer {token}"},
                timeout=30,
            ) as client:
                deadline = time.monotonic() + 120
                while True:
                    try:
                        if (await client.get("/readyz")).status_code == 200:
                            break
                    except httpx.HTTPError:
                        pass
                    if time.monotonic() > deadline or api.poll() is not None:
                        raise RuntimeError(f"API did not start; see {log}")
                    await asyncio.sleep(0.1)
                floor, floor_cpu = await measure(
                    client, "/healthz", args.requests, api.pid, database_url
                )
                load = os.getloadavg()[0]
                print(
                    f"\n{args.mailboxes:,} mailboxes, {args.requests} sequential requests per page "
                    f"over one keep-alive connection; budget p95 {BUDGET_MS:.0f} ms; "
                    f"machine load {load:.1f} on {os.cpu_count()} cores"
                )
                print(
                    f"{'page':36} {'p50 ms':>7} {'p95 ms':>7} {'p99 ms':>7} "
                    f"{'p95/budget':>10} {'CPU ms/req':>10}"
                )
                print(
                    f"{'/healthz (the HTTP floor)':36} {quantile(floor, 0.5):7.1f} "
                    f"{quantile(floor, 0.95):7.1f} {quantile(floor, 0.99):7.1f} {'':10} "
                    f"{floor_cpu:10.1f}"
                )
                for name, path in PAGES.items():
                    timings, cpu = await measure(client, path, args.requests, api.pid, database_url)
                    p95 = quantile(timings, 0.95)
                    print(
                        f"{name:36} {quantile(timings, 0.5):7.1f} {p95:7.1f} "
                        f"{quantile(timings, 0.99):7.1f} {p95 / BUDGET_MS:10.2f} {cpu:10.1f}"
                    )
                print(
                    "CPU ms/req: the API process and its PostgreSQL backends per request, "
                    "which the machine's load does not inflate"
                )
        finally:
            api.terminate()
            api.wait(timeout=15)


if __name__ == "__main__":
    asyncio.run(main())
