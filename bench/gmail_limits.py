"""A Gmail full sync under both per-user limits: quota units and concurrent requests.

    python -m bench.gmail_limits [--messages 20000] [--quota 250] [--concurrency 50]
        [--jitter 0.5] [--latency-ms 0]

Real Gmail refuses batch parts above a per-user concurrency limit it does not publish
("Too many concurrent requests for user", 429, no Retry-After), large batches often and
50-part batches sometimes, on top of the 250 units/s quota. The simulator plays both
(`gmail_user_concurrency` ± `gmail_user_concurrency_jitter`); one worker process syncs the
mailbox through the real queue, and this script checks the result row by row against the
simulator's ground truth, then prints how close to the quota ceiling the sync ran and how
many batch parts Gmail refused.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import text

from app.config import Settings
from app.sync.queue import enqueue_sync
from app.sync.runtime import Runtime
from app.sync.states import MailboxStatus
from bench.common import connect_account, scratch_database, start_simulator

REDIS_DB_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/14")
_ALIASES = {f.alias for f in Settings.model_fields.values() if f.alias}


async def _truth(sim: httpx.AsyncClient, email: str) -> dict[str, dict[str, Any]]:
    names = {}
    token = (await sim.post(f"/_sim/google/accounts/{email}/tokens")).json()["access_token"]
    labels = await sim.get(
        "/gmail/v1/users/me/labels", headers={"Authorization": f"Bearer {token}"}
    )
    names = {label["id"]: label["name"] for label in labels.json()["labels"]}
    truth: dict[str, dict[str, Any]] = {}
    offset = 0
    while True:
        page = (
            await sim.get(
                f"/_sim/google/accounts/{email}/truth",
                params={"offset": offset, "limit": 10_000},
                timeout=120,
            )
        ).json()["messages"]
        for message in page:
            message["labels"] = sorted(names.get(x, x) for x in message["labelIds"])
            truth[message["id"]] = message
        if len(page) < 10_000:
            return truth
        offset += len(page)


async def _compare(rt: Runtime, mailbox_id: uuid.UUID, truth: dict[str, dict[str, Any]]) -> str:
    async with rt.sessions() as session:
        rows = (
            await session.execute(
                text(
                    "SELECT provider_message_id, labels, is_read, thread_id, internet_message_id "
                    "FROM messages WHERE mailbox_id = :id"
                ),
                {"id": mailbox_id},
            )
        ).all()
    stored = {row[0]: row for row in rows}
    missing = set(truth) - set(stored)
    extra = set(stored) - set(truth)
    wrong = [
        mid
        for mid, row in stored.items()
        if mid in truth
        and (
            sorted(row[1]) != truth[mid]["labels"]
            or row[2] != truth[mid]["isRead"]
            or row[3] != truth[mid]["threadId"]
            or row[4] != truth[mid]["internetMessageId"]
        )
    ]
    if not (missing or extra or wrong) and len(rows) == len(truth):
        return f"exact ({len(rows):,} rows = {len(truth):,} messages at Gmail)"
    return f"NOT exact: {len(missing)} missing, {len(extra)} extra, {len(wrong)} differ"


async def run(args: argparse.Namespace) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="mailsync-bench-"))
    sim_process, sim_env = start_simulator(workdir)
    worker: asyncio.subprocess.Process | None = None
    try:
        async with scratch_database() as url:
            env = {
                **os.environ,
                **sim_env,
                "MAILSYNC_ENV": "development",
                "DATABASE_URL": url,
                "REDIS_URL": REDIS_DB_URL,
                "PUBLIC_BASE_URL": "http://127.0.0.1:9",  # no webhooks in a benchmark
                "GMAIL_QUOTA_UNITS_PER_SECOND": str(args.quota),
                "SYNC_SLICE_PAGES": "1000",
                "LOG_LEVEL": "WARNING",
            }
            settings = Settings(_env_file=None, **{k: v for k, v in env.items() if k in _ALIASES})
            rt = await Runtime.create(settings)
            await rt.redis.flushdb()
            sim = httpx.AsyncClient(
                base_url=sim_env["GMAIL_BASE_URL"], verify=sim_env["SSL_CERT_FILE"], timeout=60
            )
            faults = {
                "latency_ms": args.latency_ms,
                "gmail_quota_units_per_second": args.quota,
                "gmail_user_concurrency": args.concurrency,
                "gmail_user_concurrency_jitter": args.jitter,
                "seed": 5,
            }
            (await sim.put("/_sim/faults", json=faults)).raise_for_status()
            email = f"bench-{uuid.uuid4().hex[:6]}@example.com"
            print(f"seeding a {args.messages:,}-message Gmail mailbox ...", flush=True)
            account = (
                await sim.post(
                    "/_sim/google/accounts",
                    json={"email": email, "messages": args.messages, "seed": 3},
                    timeout=600,
                )
            ).json()
            worker = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "arq", "app.sync.worker.WorkerSettings", env=env,
                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
            )  # fmt: skip
            while not await rt.redis.exists("arq:queue:health-check"):
                if worker.returncode is not None:
                    raise RuntimeError("worker exited during start-up")
                await asyncio.sleep(0.05)
            (await sim.post("/_sim/counters/reset")).raise_for_status()
            started = time.perf_counter()
            mailbox_id = await connect_account(rt, "google", {**account, "email": email})
            await enqueue_sync(rt.redis, mailbox_id)
            status = ""
            while status != MailboxStatus.CONNECTED:
                await asyncio.sleep(0.1)
                async with rt.sessions() as session:
                    status, last_error = (
                        await session.execute(
                            text("SELECT status, last_error FROM mailboxes WHERE id = :id"),
                            {"id": mailbox_id},
                        )
                    ).one()
                if status in (MailboxStatus.ERROR, MailboxStatus.AUTH_EXPIRED):
                    raise RuntimeError(f"sync failed: {last_error}")
                if worker.returncode is not None:
                    raise RuntimeError("worker exited")
            elapsed = time.perf_counter() - started
            counters = (await sim.get("/_sim/counters")).json()["accounts"][f"google:{email}"]
            verdict = await _compare(rt, mailbox_id, await _truth(sim, email))
            units = counters["quota_units"]
            print(f"messages                 {args.messages:,} in {elapsed:.1f} s")
            print(f"result                   {verdict}")
            print(
                f"Gmail limits             {args.quota:g} units/s per user; "
                f"{args.concurrency} concurrent requests ±{args.jitter:.0%}"
            )
            if args.quota:
                ceiling = args.quota * elapsed
                print(
                    f"quota fraction           {units / ceiling:.3f} "
                    f"({units:,} units used of {ceiling:,.0f} allowed in the run)"
                )
                print(
                    f"messages/s vs ceiling    {args.messages / elapsed:.1f} of "
                    f"{args.quota / 5:.1f} ({args.messages / elapsed / (args.quota / 5):.3f})"
                )
            print(
                f"requests                 {counters['requests']:,} (batch parts counted one by one)"
            )
            print(
                f"failed parts             {counters['concurrency_refused']:,} refused for "
                f"concurrency ({100 * counters['concurrency_refused'] / max(counters['requests'], 1):.2f}%), "
                f"{counters['throttled'] - counters['concurrency_refused']} refused for quota"
            )
            print(f"retry-after violations   {counters['retry_after_violations']}")
            await sim.aclose()
            await rt.close()
    finally:
        if worker is not None and worker.returncode is None:
            worker.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(worker.wait(), timeout=30)
            except TimeoutError:
                worker.kill()
        sim_process.terminate()
        sim_process.wait(timeout=10)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--quota", type=float, default=250.0, help="units per user per second")
    parser.add_argument("--concurrency", type=int, default=50, help="Gmail's per-user limit")
    parser.add_argument("--jitter", type=float, default=0.5, help="how much that limit varies")
    parser.add_argument("--latency-ms", type=float, default=0.0)
    asyncio.run(run(parser.parse_args()))
