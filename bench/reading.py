"""Reading the mirror: list, filter, search and thread latency on a million-message mailbox;
body fetch overhead; memory of a 50 MB attachment download.

    python -m bench.reading [--messages 1000000] [--others 100000] [--clients 50]

1. Builds one mailbox of `--messages` rows plus `--others` spread over nine more mailboxes
   of the same user (plain SQL, realistic distributions), ANALYZEs, and prints the plan
   summary (EXPLAIN ANALYZE) of each listing query.
2. Starts the API (uvicorn, two worker processes for the two cores) and, per case, runs `--clients` concurrent
   clients for `--requests` requests each: p50/p95 through the API next to the same page
   read by a bare asyncpg query (the same SQL shape a hand-written service would send),
   with the ratio.
3. Starts the simulator, connects a Microsoft mailbox through the API, and measures a body
   fetch through the API against the simulator's own answer time (cache off), then a 50 MB
   attachment download: the API process's peak RSS growth while it streams.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import date
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import jwt

from bench.common import free_port, scratch_database, start_simulator

USER = "bench-reader"
SECRET = "bench-secret-" + "x" * 32
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/14")

# One INSERT … SELECT over generate_series: 1000 senders, 40 labels, threads of ~3,
# seven years of mail, 3% unread, 18% with attachments.
_FILL = """
INSERT INTO messages (mailbox_id, provider_message_id, stream_key, generation, thread_id,
    internet_message_id, subject, from_address, to_addresses, cc_addresses, bcc_addresses,
    snippet, received_at, labels, is_read, has_attachments, from_name, to_names, cc_names,
    bcc_names, sent_at, size, importance, flagged)
SELECT $1::uuid, 'm' || $2::bigint + g, 'inbox', 1, 't' || ($2::bigint + g) / 3,
       '<' || g || '@bench>', (ARRAY['Quarterly report','Lunch on Friday?','Invoice',
       'Build failed on main','Offsite agenda','Design review notes','Weekly digest',
       'Customer escalation','Release candidate','Budget approval'])[1 + g % 10] || ' ' || g % 997,
       'sender' || (g * 7919) % 1000 || '@example.com',
       ARRAY['owner@example.com', 'peer' || (g * 31) % 500 || '@example.org'],
       CASE WHEN g % 4 = 0 THEN ARRAY['cc' || g % 300 || '@example.net'] ELSE '{}' END, '{}',
       'please find attached the latest numbers and let me know ' || md5(g::text),
       timestamptz '2019-01-01' + make_interval(secs => g::double precision * $3),
       ARRAY[(ARRAY['INBOX','SENT','ARCHIVE','Projects'])[1 + g % 4]]
         || CASE WHEN g % 33 = 0 THEN ARRAY['UNREAD'] ELSE '{}' END
         || CASE WHEN g % 40 = 0 THEN ARRAY['Label ' || g % 40] ELSE '{}' END,
       g % 33 <> 0, g % 11 < 2, 'Sender ' || (g * 7919) % 1000,
       ARRAY['Owner', 'Peer ' || (g * 31) % 500],
       CASE WHEN g % 4 = 0 THEN ARRAY['Copy ' || g % 300] ELSE '{}' END, '{}',
       timestamptz '2019-01-01' + make_interval(secs => g::double precision * $3 - 30),
       4000 + g % 90000, 'normal', g % 50 = 0
  FROM generate_series(1, $4::bigint) AS g
"""

CASES: dict[str, dict[str, Any]] = {
    "plain list": {},
    "label=INBOX": {"label": "INBOX"},
    "label=Label 0 (rare)": {"label": "Label 0"},
    "from (one sender)": {"from": "sender7@example.com"},
    "to (any recipient)": {"to": "cc5@example.net"},
    "participant": {"participant": "peer9@example.org"},
    "after/before (a month)": {"after": "2022-03-01", "before": "2022-04-01"},
    "unread": {"unread": "true"},
    "has_attachments": {"has_attachments": "true"},
    "q (two words)": {"q": "invoice 17"},
    "threads": {"_threads": True},
}


def _bare_sql(case: dict[str, Any]) -> tuple[str, list[Any]]:
    """What a hand-written service would send for the same page."""
    where, args = ["mailbox_id = $1"], []
    n = 2

    def arg(value: Any) -> str:
        nonlocal n
        args.append(value)
        n += 1
        return f"${n - 1}"

    if "label" in case:
        where.append(f"labels @> ARRAY[{arg(case['label'])}]::text[]")
    if "from" in case:
        where.append(f"from_address = {arg(case['from'])}")
    if "to" in case:
        p = arg(case["to"])
        where.append(
            f"({p} = ANY(to_addresses) OR {p} = ANY(cc_addresses) OR {p} = ANY(bcc_addresses))"
        )
    if "participant" in case:
        p = arg(case["participant"])
        where.append(f"(from_address = {p} OR {p} = ANY(to_addresses) OR {p} = ANY(cc_addresses))")
    if "after" in case:
        where.append(f"received_at >= {arg(date.fromisoformat(case['after']))}::date")
    if "before" in case:
        where.append(f"received_at < {arg(date.fromisoformat(case['before']))}::date")
    if "unread" in case:
        where.append("NOT is_read")
    if "has_attachments" in case:
        where.append("has_attachments")
    for word in case.get("q", "").split():
        where.append(f"concat_ws(' ', subject, snippet, from_name) ILIKE {arg('%' + word + '%')}")
    order = "ORDER BY COALESCE(received_at, '-infinity'::timestamptz) DESC, id DESC LIMIT 50"
    if case.get("_threads"):
        # The newest 50 threads: messages with no newer message in their thread.
        where.append(
            "NOT EXISTS (SELECT 1 FROM messages t WHERE t.mailbox_id = messages.mailbox_id "
            "AND t.thread_id = messages.thread_id AND t.received_at > messages.received_at)"
        )
    return f"SELECT * FROM messages WHERE {' AND '.join(where)} {order}", args  # noqa: S608


def _pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


async def _load(clients: int, requests: int, call: Callable[[], Awaitable[None]]) -> list[float]:
    samples: list[float] = []

    async def client() -> None:
        for _ in range(requests):
            started = time.perf_counter()
            await call()
            samples.append(time.perf_counter() - started)

    await asyncio.gather(*(client() for _ in range(clients)))
    return samples


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _api(url: str, port: int, extra: dict[str, str], workers: int = 2) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "MAILSYNC_ENV": "test",
        "DATABASE_URL": url,
        "REDIS_URL": REDIS_URL,
        "AUTH_JWT_SECRET": SECRET,
        **extra,
    }
    return subprocess.Popen(  # noqa: S603 - our own app
        # Two workers for two cores (the bare queries use PostgreSQL's processes on both);
        # keep-alive longer than a case, so no pooled connection is closed under a client.
        [sys.executable, "-m", "uvicorn", "app.main:app", "--port", str(port), "--log-level",
         "warning", "--no-access-log", "--workers", str(workers), "--timeout-keep-alive", "600"],
        env=env,
    )  # fmt: skip


async def _wait_up(base: str) -> None:
    async with httpx.AsyncClient() as client:
        for _ in range(300):
            try:
                if (await client.get(f"{base}/healthz")).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.1)
    raise RuntimeError("API did not start")


async def main(args: argparse.Namespace) -> None:
    token = jwt.encode({"sub": USER, "exp": int(time.time()) + 7200}, SECRET, algorithm="HS256")
    auth = {"Authorization": f"Bearer {token}"}
    async with scratch_database("mailsync_read") as url:
        dsn = url.replace("postgresql+asyncpg", "postgresql")
        conn = await asyncpg.connect(dsn)
        big = uuid.uuid4()
        mailboxes = [big] + [uuid.uuid4() for _ in range(9)]
        for n, mid in enumerate(mailboxes):
            await conn.execute(
                "INSERT INTO mailboxes (id, user_id, provider, account_key, auth_mode, status) "
                "VALUES ($1, $2, 'microsoft', $3, 'delegated', 'connected')",
                mid, USER, f"box{n}@example.com",
            )  # fmt: skip
        started = time.perf_counter()
        span = 7 * 365 * 86400 / args.messages
        await conn.execute(_FILL, big, 0, span, args.messages)
        for n, mid in enumerate(mailboxes[1:]):
            count = args.others // 9
            await conn.execute(_FILL, mid, 10_000_000 * (n + 1), 7 * 365 * 86400 / count, count)
        await conn.execute("VACUUM ANALYZE messages")
        print(
            f"built {args.messages:,} + {args.others:,} messages in {time.perf_counter() - started:.0f} s"
        )

        port = free_port()
        api = _api(url, port, {"READ_SCAN_BUDGET": str(args.budget)})
        base = f"http://127.0.0.1:{port}"
        pool = None
        try:
            pool = await asyncpg.create_pool(dsn, min_size=1, max_size=args.clients)
            await _wait_up(base)
            print(f"\n{args.clients} concurrent clients x {args.requests} requests, limit 50; ms")
            print(
                f"{'case':<26}{'API p50':>9}{'p95':>8}{'bare p50':>10}{'p95':>8}{'ratio p50':>11}"
            )
            async with httpx.AsyncClient(base_url=base, headers=auth, timeout=120,
                                         limits=httpx.Limits(max_connections=args.clients)) as client:  # fmt: skip
                for name, case in CASES.items():
                    params = {k: v for k, v in case.items() if not k.startswith("_")}
                    path = "/mail/threads" if case.get("_threads") else "/mail/messages"
                    params["mailbox_id"] = str(big)

                    async def through_api(
                        path: str = path, params: dict[str, Any] = params
                    ) -> None:
                        response = await client.get(path, params=params)
                        assert response.status_code == 200, response.text

                    sql, sql_args = _bare_sql(case)

                    async def bare(sql: str = sql, sql_args: list[Any] = sql_args) -> None:
                        assert pool is not None
                        async with pool.acquire() as c:
                            await c.fetch(sql, big, *sql_args)

                    await through_api()
                    api_times = await _load(args.clients, args.requests, through_api)
                    bare_times = await _load(args.clients, args.requests, bare)
                    a50, a95 = _pct(api_times, 0.5), _pct(api_times, 0.95)
                    b50, b95 = _pct(bare_times, 0.5), _pct(bare_times, 0.95)
                    print(
                        f"{name:<26}{a50:>9.1f}{a95:>8.1f}{b50:>10.1f}{b95:>8.1f}{a50 / b50:>11.2f}"
                    )
            print("\nplans (EXPLAIN ANALYZE of the bare queries):")
            for name, case in CASES.items():
                sql, sql_args = _bare_sql(case)
                plan = await conn.fetch("EXPLAIN (ANALYZE, COSTS OFF) " + sql, big, *sql_args)
                lines = [r[0] for r in plan]
                nodes = [ln.strip().split("  ")[0] for ln in lines if "->" in ln or ln is lines[0]]
                print(
                    f"  {name:<24} {lines[-1].strip():<28} {' / '.join(n[:60] for n in nodes[:3])}"
                )
        finally:
            api.terminate()
            api.wait()
            if pool is not None:
                await pool.close()
            await conn.close()
        await _content(url, args)


async def _content(url: str, args: argparse.Namespace) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="mailsync-read-"))
    sim, env = start_simulator(workdir)
    port = free_port()
    # One worker: its RSS is the API process's memory for the download.
    api = _api(url, port, {**env, "BODY_CACHE_SECONDS": "0"}, workers=1)
    base = f"http://127.0.0.1:{port}"
    verify = env["SSL_CERT_FILE"]
    try:
        await _wait_up(base)
        token = jwt.encode(
            {"sub": "content", "exp": int(time.time()) + 3600}, SECRET, algorithm="HS256"
        )
        auth = {"Authorization": f"Bearer {token}"}
        async with httpx.AsyncClient(base_url=env["GRAPH_BASE_URL"].rsplit("/v1.0", 1)[0],
                                     verify=verify, timeout=120) as simc, \
                httpx.AsyncClient(base_url=base, headers=auth, timeout=300) as client:  # fmt: skip
            account = (await simc.post("/_sim/microsoft/accounts",
                                       json={"email": "reader@contoso.com", "message_count": 10})).json()  # fmt: skip
            size = 50 * 1024 * 1024
            added = (await simc.post("/_sim/microsoft/accounts/reader@contoso.com/messages",
                                     json={"html": "<p>" + "body text " * 2000 + "</p>",
                                           "attachments": [{"name": "big.bin", "size": size}]})).json()  # fmt: skip
            provider_id = added["ids"][0]
            connect = await client.post("/mail/connect", json={
                "provider": "microsoft", "access_token": account["access_token"],
                "refresh_token": account["refresh_token"], "expires_in": account["expires_in"],
                "email": "reader@contoso.com"})  # fmt: skip
            mailbox_id = connect.json()["mailbox_id"]
            conn = await asyncpg.connect(url.replace("postgresql+asyncpg", "postgresql"))
            message_id = await conn.fetchval(
                "INSERT INTO messages (mailbox_id, provider_message_id, stream_key, generation, "
                "to_addresses, cc_addresses, bcc_addresses, labels, is_read, has_attachments) "
                "VALUES ($1, $2, 'inbox', 1, '{}', '{}', '{}', '{}', true, true) RETURNING id",
                uuid.UUID(mailbox_id), provider_id,
            )  # fmt: skip
            await conn.close()
            sim_auth = {"Authorization": f"Bearer {account['access_token']}",
                        "Prefer": 'outlook.body-content-type="html"'}  # fmt: skip
            direct, through = [], []
            for _ in range(args.body_requests):
                t = time.perf_counter()
                r = await simc.get(
                    f"/v1.0/me/messages/{provider_id}", params={"$select": "body"}, headers=sim_auth
                )
                direct.append(time.perf_counter() - t)
                assert r.status_code == 200
                t = time.perf_counter()
                r = await client.get(f"/mail/messages/{message_id}/body")
                through.append(time.perf_counter() - t)
                assert r.status_code == 200, r.text
            d50, t50 = statistics.median(direct) * 1000, statistics.median(through) * 1000
            print(
                f"\nbody fetch (HTML, ~20 KB, cache off), {args.body_requests} sequential requests:"
            )
            print(
                f"  simulator direct p50 {d50:.1f} ms; through the API p50 {t50:.1f} ms; added {t50 - d50:.1f} ms"
            )
            listing = (await client.get(f"/mail/messages/{message_id}/attachments")).json()
            attachment = listing["items"][0]["attachment_id"]
            pid = api.pid
            baseline = _rss_kib(pid)
            peak = baseline
            received = 0
            t = time.perf_counter()
            async with client.stream(
                "GET", f"/mail/messages/{message_id}/attachments/{attachment}"
            ) as r:
                assert r.status_code == 200
                async for chunk in r.aiter_raw():
                    received += len(chunk)
                    peak = max(peak, _rss_kib(pid))
            elapsed = time.perf_counter() - t
            print(f"\n50 MB attachment download: {received:,} bytes in {elapsed:.1f} s "
                  f"({received / elapsed / 1e6:.0f} MB/s)")  # fmt: skip
            print(f"  API RSS before {baseline / 1024:.0f} MiB, peak {peak / 1024:.0f} MiB: "
                  f"growth {(peak - baseline) / 1024:.1f} MiB (ceiling 20 MiB: ratio "
                  f"{(peak - baseline) / 1024 / 20:.2f})")  # fmt: skip
    finally:
        api.terminate()
        api.wait()
        sim.terminate()
        sim.wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--others", type=int, default=100_000)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--requests", type=int, default=10)
    parser.add_argument("--budget", type=int, default=20_000)
    parser.add_argument("--body-requests", type=int, default=30)
    asyncio.run(main(parser.parse_args()))
