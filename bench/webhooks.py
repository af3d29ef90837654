"""Webhook storm: POST /webhooks/microsoft against a bare FastAPI endpoint, same load.

    python -m bench.webhooks [--connections 32] [--seconds 5] [--rounds 3] [--rate 500]
        [--mailboxes 200]

Two uvicorn processes, started the same way (one worker process each, uvicorn's defaults
for the event loop and HTTP parser): the API (`app.main:app`) and a bare FastAPI app
(`bench.bare_app`) whose endpoint reads the body and answers 202. The same load generator
(`bench.loadgen`, in this process) drives both:

- saturation: every connection sends its next request as soon as the answer arrived;
  answers/s and latency percentiles, and the webhook's ratio to the bare endpoint, in
  rounds that take turns (so a neighbour's burst on a shared machine hits both);
- a fixed rate (500 notifications/s by default), latency counted from when each request
  was due;
- then it checks that every acknowledged notification is in the webhook log.

The change notification is Graph's own shape (clientState, resourceData with its etag),
sent either as the same notification by every sender (a Graph retry storm: after the
first, duplicates) or as distinct notifications spread over `--mailboxes` mailboxes (each
one accepted and owing a pass). PostgreSQL and Redis run on this machine; the API answers a
notification only after its record has committed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from sqlalchemy import text

from app.config import Settings
from app.db.repositories.mailboxes import MailboxRepository
from app.db.repositories.subscriptions import SubscriptionRepository
from app.sync.runtime import Runtime
from bench import loadgen
from bench.common import free_port, scratch_database

REDIS_DB_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/15")
HOST = "127.0.0.1"


def _notification(subscription_id: str, client_state: str, message_id: str) -> dict[str, Any]:
    resource = f"Users/9f1c2a52-7c1e-4b7e-9d0e-3c1f0e2a1b11/Messages/{message_id}"
    return {
        "subscriptionId": subscription_id,
        "subscriptionExpirationDateTime": "2030-01-01T00:00:00.0000000-00:00",
        "changeType": "created",
        "resource": resource,
        "resourceData": {
            "@odata.type": "#Microsoft.Graph.Message",
            "@odata.id": resource,
            "@odata.etag": f'W/"CQAAABYAAAD{message_id[-8:]}"',
            "id": message_id,
        },
        "clientState": client_state,
        "tenantId": "84bd8158-6d4d-4958-8b9f-9d6445542f95",
    }


async def _seed(rt: Runtime, mailboxes: int) -> list[tuple[str, str]]:
    """Mailboxes with a live Graph subscription each: (subscription id, clientState)."""
    subscriptions = []
    async with rt.sessions() as session:
        repo = MailboxRepository(session)
        subs = SubscriptionRepository(session, rt.cipher)
        for i in range(mailboxes):
            mailbox = await repo.upsert_for_connect(
                user_id=f"bench-{i}",
                provider="microsoft",
                account_key=f"bench-{i}@contoso.com",
                email=f"bench-{i}@contoso.com",
                auth_mode="delegated",
                tenant_id=None,
                provider_user_id=None,
            )
            subscription_id = str(uuid.uuid4())
            client_state = uuid.uuid4().hex + uuid.uuid4().hex
            await subs.replace_active(
                mailbox.id,
                provider="microsoft",
                subscription_id=subscription_id,
                expires_at=datetime.now(UTC) + timedelta(days=3),
                client_state=client_state,
                resource="me/messages",
            )
            subscriptions.append((subscription_id, client_state))
        await session.commit()
    return subscriptions


def _serve(target: str, port: int, env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(  # noqa: S603 - our own modules
        [
            sys.executable,
            "-m",
            "uvicorn",
            target,
            "--host",
            HOST,
            "--port",
            str(port),
            "--no-access-log",
            "--log-level",
            "warning",
        ],
        env=env,
    )


async def _wait_ready(port: int, path: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    async with httpx.AsyncClient() as client:
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"server on {port} exited")
            try:
                await client.get(f"http://{HOST}:{port}{path}", timeout=1)
                return
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.1)


async def _recorded(rt: Runtime) -> int:
    """Notifications in the webhook log that were acknowledged (accepted or duplicate)."""
    async with rt.sessions() as session:
        return int(
            (
                await session.execute(
                    text(
                        "SELECT COALESCE(sum(count), 0) FROM webhook_notifications "
                        "WHERE outcome IN ('accepted', 'duplicate')"
                    )
                )
            ).scalar_one()
        )


async def _by_outcome(rt: Runtime) -> dict[str, int]:
    async with rt.sessions() as session:
        rows = await session.execute(
            text("SELECT outcome, sum(count) FROM webhook_notifications GROUP BY outcome")
        )
        return {outcome: int(total) for outcome, total in rows.all()}


def _line(name: str, result: loadgen.Result) -> str:
    return (
        f"{name:<38} {result.rate:>8,.0f} answers/s   p50 {1000 * result.percentile(50):6.1f} ms"
        f"   p99 {1000 * result.percentile(99):6.1f} ms   max {1000 * max(result.latencies):6.1f} ms"
        f"   statuses {dict(sorted(result.statuses.items()))}"
    )


async def run(args: argparse.Namespace) -> None:
    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} at start")
    async with scratch_database("mailsync_bench_webhooks") as url:
        env = {
            **os.environ,
            "MAILSYNC_ENV": "development",
            "DATABASE_URL": url,
            "REDIS_URL": REDIS_DB_URL,
            "LOG_LEVEL": "WARNING",
        }
        settings = Settings(_env_file=None, MAILSYNC_ENV="development", DATABASE_URL=url)  # type: ignore[call-arg]
        settings = settings.model_copy(update={"redis_url": REDIS_DB_URL})
        rt = await Runtime.create(settings)
        await rt.redis.flushdb()
        subscriptions = await _seed(rt, max(args.mailboxes, 1))
        sub_id, client_state = subscriptions[0]
        one = loadgen.encode_post(
            f"{HOST}",
            "/webhooks/microsoft",
            json.dumps(
                {"value": [_notification(sub_id, client_state, "AAMkAGI2TG93AAA=")]}
            ).encode(),
        )
        distinct = [
            loadgen.encode_post(
                HOST,
                "/webhooks/microsoft",
                json.dumps(
                    {
                        "value": [
                            _notification(
                                subscriptions[i % len(subscriptions)][0],
                                subscriptions[i % len(subscriptions)][1],
                                f"AAMkAGI2{i:012d}=",
                            )
                        ]
                    }
                ).encode(),
            )
            for i in range(20_000)
        ]
        bare_body = loadgen.encode_post(HOST, "/bare", one.split(b"\r\n\r\n", 1)[1])

        bare_port, api_port = free_port(), free_port()
        bare = _serve("bench.bare_app:app", bare_port, env)
        api = _serve("app.main:app", api_port, env)
        try:
            await _wait_ready(bare_port, "/docs", bare)
            await _wait_ready(api_port, "/healthz", api)
            c = args.connections
            # Warm both (connections, caches, the first subscription lookups).
            await loadgen.closed_loop(HOST, bare_port, [bare_body], connections=c, seconds=1)
            await loadgen.closed_loop(HOST, api_port, [one], connections=c, seconds=1)
            await loadgen.closed_loop(HOST, api_port, distinct, connections=c, seconds=1)
            before = await _recorded(rt)
            sent_ok = 0

            print(
                f"\nsaturation: {c} connections, {args.seconds:.0f} s per run, "
                f"{args.rounds} rounds (bare, one, distinct in turn)"
            )
            ratios_one: list[float] = []
            ratios_distinct: list[float] = []
            for number in range(1, args.rounds + 1):
                ceiling = await loadgen.closed_loop(
                    HOST, bare_port, [bare_body], connections=c, seconds=args.seconds
                )
                same = await loadgen.closed_loop(
                    HOST, api_port, [one], connections=c, seconds=args.seconds
                )
                spread = await loadgen.closed_loop(
                    HOST, api_port, distinct, connections=c, seconds=args.seconds
                )
                sent_ok += same.ok() + spread.ok()
                print(f"round {number} (load average {os.getloadavg()[0]:.1f})")
                print("  " + _line("bare FastAPI endpoint", ceiling))
                print("  " + _line("webhook, one notification (retries)", same))
                print("  " + _line(f"webhook, distinct ({args.mailboxes} mailboxes)", spread))
                ratios_one.append(same.rate / ceiling.rate)
                ratios_distinct.append(spread.rate / ceiling.rate)
            print(
                f"ratio to bare, one notification:   median {statistics.median(ratios_one):.3f} "
                f"({', '.join(f'{r:.3f}' for r in ratios_one)})"
            )
            print(
                f"ratio to bare, distinct:           median "
                f"{statistics.median(ratios_distinct):.3f} "
                f"({', '.join(f'{r:.3f}' for r in ratios_distinct)})"
            )

            print(
                f"\nfixed rate: {args.rate:.0f} notifications/s, {c} connections, "
                f"{args.seconds:.0f} s each (latency from when each request was due)"
            )
            fixed_bare = await loadgen.open_loop(
                HOST, bare_port, [bare_body], connections=c, rate=args.rate, seconds=args.seconds
            )
            print(_line("bare FastAPI endpoint", fixed_bare))
            fixed_same = await loadgen.open_loop(
                HOST, api_port, [one], connections=c, rate=args.rate, seconds=args.seconds
            )
            sent_ok += fixed_same.ok()
            print(_line("webhook, one notification (retries)", fixed_same))
            fixed_spread = await loadgen.open_loop(
                HOST, api_port, distinct, connections=c, rate=args.rate, seconds=args.seconds
            )
            sent_ok += fixed_spread.ok()
            print(_line(f"webhook, distinct ({args.mailboxes} mailboxes)", fixed_spread))

            recorded = await _recorded(rt) - before
            print(f"\nacknowledged notifications {sent_ok:,}; in the webhook log {recorded:,}")
            print(f"webhook log by outcome (warm-up included): {await _by_outcome(rt)}")
            print(
                "every acknowledged notification recorded: "
                + ("yes" if recorded == sent_ok else "NO")
            )
            queued = await rt.redis.zcard("arq:queue")
            print(
                f"sync jobs queued (one per mailbox at most): {queued} for {args.mailboxes} mailboxes"
            )
            print(
                f"load average at the end {os.getloadavg()[0]:.2f} "
                "(other work on this machine shares its cores with what is measured)"
            )
        finally:
            for process in (bare, api):
                process.terminate()
                process.wait(timeout=15)
            await rt.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rate", type=float, default=500.0)
    parser.add_argument("--mailboxes", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    asyncio.run(run(parser.parse_args()))
