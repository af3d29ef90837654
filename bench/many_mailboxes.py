"""Many small Outlook mailboxes on one machine: connect, first sync, one change each.

    python -m bench.many_mailboxes [--mailboxes 10000] [--messages 20] [--workers 2]
        [--connections 64] [--noop-jobs 20000] [--no-prerender]

Processes as in production, on this machine: the simulator (Graph, pre-rendered), the API
(`uvicorn app.main:app`, one process), `--workers` sync workers (`arq
app.sync.worker.WorkerSettings`), PostgreSQL and Redis (database 14, flushed). Then:

0. connect with the API alone: as many probe mailboxes through `POST /mail/connect`
   before any worker runs (then removed, with their jobs): calls/s of the API process
   when it has the machine to itself;
1. connect: every mailbox through `POST /mail/connect` (`--connections` keep-alive
   connections, one request in flight each), the workers taking the first syncs
   meanwhile: connect calls/s and the CPU each process spent per connect during the
   burst, and the time until every mailbox is `connected` (first syncs, and the push
   subscriptions the workers create);
2. notify: one change per mailbox at the simulator (a category on its newest Inbox
   message), made with the simulator's notifications off; then Graph's change
   notification for each, sent to the API at once (16 connections): the API records them
   and enqueues one pass per mailbox: notify → converged mailboxes/s (every mailbox's
   change stored, no pass owed; the clock starts with the first notification), provider
   requests, PostgreSQL transactions and each process's CPU per notified pass (the
   transactions count every commit in the database meanwhile: webhooks and passes);
   `SYNC_POLL_WITHOUT_PUSH_SECONDS` is the periodic interval here, so that mailboxes whose
   first pass ended before their subscription existed have no periodic pass in this phase;
3. the workers' RSS (resident now, and peak);
4. ARQ's own ceiling in the same run: `--noop-jobs` no-op jobs through the same Redis and
   the same number of worker processes (bench/noop_worker.py, same max_jobs and poll
   delay), jobs/s; and notify → converged as a fraction of it.
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
import jwt
import orjson
from arq import create_pool
from arq.connections import RedisSettings
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from app.providers.outlook.mapper import MESSAGE_SELECT
from bench.common import free_port, scratch_database, start_simulator
from bench.cpu import CpuSample, foreign_backends
from bench.loadgen import _Connection

REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/14")
SECRET = "bench-many-mailboxes-secret-0123456789abcdef"
HOST = "127.0.0.1"
CATEGORY = "Bench"


def _rss_mib(pid: int) -> tuple[float, float]:
    """(resident now, peak) in MiB."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            values[name] = int(rest.split()[0]) / 1024
    return values.get("VmRSS", float("nan")), values.get("VmHWM", float("nan"))


async def _gather_limited(calls: list[Any], limit: int) -> list[Any]:
    slots = asyncio.Semaphore(limit)

    async def one(call: Any) -> Any:
        async with slots:
            return await call()

    return list(await asyncio.gather(*(one(c) for c in calls)))


async def _seed(sim: httpx.AsyncClient, args: argparse.Namespace) -> list[dict[str, Any]]:
    async def account() -> dict[str, Any]:
        email = f"many-{uuid.uuid4().hex[:10]}@contoso.com"
        created = await sim.post(
            "/_sim/microsoft/accounts",
            json={"email": email, "message_count": args.messages, "token_lifetime": 7200},
        )
        created.raise_for_status()
        if args.prerender:
            rendered = await sim.post(
                f"/_sim/microsoft/accounts/{email}/prerender",
                json={"select": MESSAGE_SELECT, "immutable": True},
            )
            rendered.raise_for_status()
        return dict(created.json())

    return await _gather_limited([account for _ in range(args.mailboxes)], 16)


def _connect_request(port: int, account: dict[str, Any], user: str) -> bytes:
    token = jwt.encode({"sub": user, "exp": int(time.time()) + 7200}, SECRET, algorithm="HS256")
    body = orjson.dumps(
        {
            "provider": "microsoft",
            "access_token": account["access_token"],
            "refresh_token": account["refresh_token"],
            "expires_in": account["expires_in"],
            "email": account["email"],
        }
    )
    head = (
        f"POST /mail/connect HTTP/1.1\r\nHost: {HOST}:{port}\r\n"
        f"Content-Type: application/json\r\nAuthorization: Bearer {token}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def _send_all(
    port: int, requests: list[bytes], connections: int
) -> tuple[float, dict[int, int]]:
    """Each request once, over `connections` keep-alive connections; (seconds, statuses)."""
    conns = [await _Connection.open(HOST, port) for _ in range(connections)]
    statuses: dict[int, int] = {}
    pending = iter(requests)

    async def run(conn: _Connection) -> None:
        for raw in pending:
            status = await conn.request(raw)
            statuses[status] = statuses.get(status, 0) + 1

    started = time.perf_counter()
    try:
        await asyncio.gather(*(run(c) for c in conns))
    finally:
        for conn in conns:
            conn.close()
    return time.perf_counter() - started, statuses


def _notification(port: int, subscription: dict[str, Any], user_id: str, message_id: str) -> bytes:
    """Graph's change notification for one message, as Graph posts it."""
    resource = f"Users/{user_id}/Messages/{message_id}"
    body = orjson.dumps(
        {
            "value": [
                {
                    "subscriptionId": subscription["id"],
                    "subscriptionExpirationDateTime": subscription["expirationDateTime"],
                    "changeType": "updated",
                    "resource": resource,
                    "resourceData": {
                        "@odata.type": "#Microsoft.Graph.Message",
                        "@odata.id": resource,
                        "@odata.etag": 'W/"CQAAABYAAABench"',
                        "id": message_id,
                    },
                    "clientState": subscription["clientState"],
                    "tenantId": "84bd8158-6d4d-4958-8b9f-9d6445542f95",
                }
            ]
        }
    )
    head = (
        f"POST /webhooks/microsoft HTTP/1.1\r\nHost: {HOST}:{port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def _scalar(engine: Any, sql: str, **params: Any) -> Any:
    async with engine.connect() as conn:
        return (await conn.execute(text(sql), params)).scalar_one()


async def _wait_until(engine: Any, sql: str, target: int, *, within: float, **params: Any) -> float:
    started = time.perf_counter()
    while True:
        value = int(await _scalar(engine, sql, **params))
        if value >= target:
            return time.perf_counter() - started
        if time.perf_counter() - started > within:
            raise RuntimeError(f"timed out at {value}/{target}: {sql}")
        await asyncio.sleep(0.25)


async def _start(command: list[str], env: dict[str, str], log: Path) -> asyncio.subprocess.Process:
    with log.open("ab") as out:
        return await asyncio.create_subprocess_exec(*command, env=env, stdout=out, stderr=out)


async def _stop(process: asyncio.subprocess.Process | None) -> None:
    if process is not None and process.returncode is None:
        process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), timeout=30)
        except TimeoutError:
            process.kill()


def _probe(i: int) -> dict[str, Any]:
    token = f"probe-{i}"
    return {
        "access_token": token,
        "refresh_token": token,
        "expires_in": 3600,
        "email": f"{token}@contoso.com",
    }


def _per(cpu: dict[str, float], count: int) -> str:
    """CPU per unit of work by process, in ms, and how busy the machine was."""
    workers = sum(v for k, v in cpu.items() if k.startswith("worker"))
    parts = [
        f"API {1000 * cpu['api'] / count:.1f}",
        f"workers {1000 * workers / count:.1f}",
        f"PostgreSQL {1000 * cpu['postgres'] / count:.1f}",
        f"simulator {1000 * cpu['simulator'] / count:.1f}",
    ]
    return f"{', '.join(parts)} ms (machine {100 * cpu['utilization']:.0f}% busy)"


async def _noop_ceiling(env: dict[str, str], workers: int, jobs: int, log: Path) -> float:
    redis = await create_pool(RedisSettings.from_dsn(REDIS_URL), default_queue_name="bench:noop")
    processes = [
        await _start([sys.executable, "-m", "arq", "bench.noop_worker.NoopSettings"], env, log)
        for _ in range(workers)
    ]
    try:
        await asyncio.sleep(2)  # the workers poll the queue
        for start in range(0, jobs, 500):
            await asyncio.gather(
                *(
                    redis.enqueue_job("noop", str(i), _job_id=f"noop:{i}")
                    for i in range(start, min(jobs, start + 500))
                )
            )
        started = time.perf_counter()
        # Another process's progress: polling is the only way to see it.
        while await redis.zcard("bench:noop"):  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        return jobs / (time.perf_counter() - started)
    finally:
        for process in processes:
            await _stop(process)
        await redis.aclose()


async def run(args: argparse.Namespace) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="mailsync-many-"))
    log = workdir / "processes.log"
    sim_process, sim_env = start_simulator(workdir)
    api: asyncio.subprocess.Process | None = None
    workers: list[asyncio.subprocess.Process] = []
    try:
        async with scratch_database() as url:
            port = free_port()
            env = {
                **os.environ,
                **sim_env,
                "MAILSYNC_ENV": "development",
                "DATABASE_URL": url,
                "REDIS_URL": REDIS_URL,
                "AUTH_JWT_SECRET": SECRET,
                "PUBLIC_BASE_URL": f"http://{HOST}:{port}",
                "EVENTS_ENABLED": "false",
                # A first pass that completes before its subscription exists schedules the
                # next at the polling interval; the same interval for both keeps periodic
                # passes out of the notify phase (it measures notified passes).
                "SYNC_POLL_WITHOUT_PUSH_SECONDS": "900",
                "LOG_LEVEL": "WARNING",
            }
            redis = await create_pool(RedisSettings.from_dsn(REDIS_URL))
            await redis.flushdb()
            sim = httpx.AsyncClient(
                base_url=sim_env["GMAIL_BASE_URL"], verify=sim_env["SSL_CERT_FILE"], timeout=600
            )
            print(
                f"seeding {args.mailboxes:,} mailboxes of {args.messages} messages ...", flush=True
            )
            seeding = time.perf_counter()
            accounts = await _seed(sim, args)
            print(f"seeded in {time.perf_counter() - seeding:.0f} s", flush=True)
            engine = create_async_engine(url)

            api = await _start(
                [sys.executable, "-m", "uvicorn", "app.main:app", "--host", HOST, "--port",
                 str(port), "--no-access-log", "--log-level", "warning"],
                env, log,
            )  # fmt: skip
            async with httpx.AsyncClient() as client:
                while True:
                    try:
                        if (await client.get(f"http://{HOST}:{port}/healthz")).status_code == 200:
                            break
                    except httpx.HTTPError:
                        await asyncio.sleep(0.1)
            # 0. connect, the API alone: the same calls before any worker runs (probe
            # mailboxes, removed with their queued jobs before the workers start).
            probes = [
                _connect_request(port, _probe(i), f"probe-{i}") for i in range(args.mailboxes)
            ]
            alone_seconds, alone_statuses = await _send_all(port, probes, args.connections)
            if set(alone_statuses) != {202}:
                raise RuntimeError(f"connect answered {alone_statuses}")
            async with engine.begin() as conn:
                await conn.execute(text("DELETE FROM mailboxes WHERE user_id LIKE 'probe-%'"))
            await redis.flushdb()
            profile = (
                ["-m", "cProfile", "-o", str(Path(args.profile) / "worker-{}.prof")]
                if args.profile
                else []
            )
            workers = [
                await _start(
                    [
                        sys.executable,
                        *[part.format(i) for part in profile],
                        "-m",
                        "arq",
                        "app.sync.worker.WorkerSettings",
                    ],
                    env,
                    log,
                )
                for i in range(args.workers)
            ]
            while not await redis.exists("arq:queue:health-check"):  # noqa: ASYNC110
                await asyncio.sleep(0.05)

            # 1. connect
            requests = [_connect_request(port, a, f"user-{i}") for i, a in enumerate(accounts)]
            (await sim.post("/_sim/counters/reset")).raise_for_status()
            processes: dict[str, int | None] = {
                "api": api.pid,
                "simulator": sim_process.pid,
                **{f"worker{i}": w.pid for i, w in enumerate(workers)},
            }
            cpu_before = CpuSample.take(processes)
            connect_started = time.perf_counter()
            connect_seconds, statuses = await _send_all(port, requests, args.connections)
            connect_cpu = CpuSample.take(processes).since(cpu_before, await foreign_backends(url))
            if set(statuses) != {202}:
                raise RuntimeError(f"connect answered {statuses}")
            await _wait_until(
                engine,
                "SELECT count(*) FROM mailboxes WHERE status = 'connected'",
                args.mailboxes,
                within=3600,
            )
            all_connected = time.perf_counter() - connect_started
            await _wait_until(
                engine,
                "SELECT count(*) FROM subscriptions WHERE status = 'active'",
                args.mailboxes,
                within=3600,
            )
            subscribed = time.perf_counter() - connect_started
            first = (await sim.get("/_sim/counters")).json()["totals"]
            print(f"mailboxes                {args.mailboxes:,} x {args.messages} messages, "
                  f"{args.workers} workers, 1 API process")  # fmt: skip
            print(f"connect                  {args.mailboxes / connect_seconds:,.0f} calls/s "
                  f"({args.connections} connections)")  # fmt: skip
            print(f"                         {_per(connect_cpu, args.mailboxes)} per connect "
                  "while the burst lasted")  # fmt: skip
            print(f"connect, API alone       {args.mailboxes / alone_seconds:,.0f} calls/s (the "
                  "same burst before any worker ran)")  # fmt: skip
            print(f"all connected            {all_connected:.1f} s after the first connect "
                  f"({args.mailboxes / all_connected:,.0f} mailboxes/s)")  # fmt: skip
            print(f"all subscribed           {subscribed:.1f} s after the first connect")
            print(f"first sync requests      {first['requests'] / args.mailboxes:.1f} per mailbox "
                  f"(subscriptions included; {first['throttled']} throttled, "
                  f"{first['retry_after_violations']} Retry-After violations)")  # fmt: skip
            print(f"                         {first['methods']}")

            # 2. notify: one change per mailbox, made quietly at the simulator; then Graph's
            # change notifications for them, sent at once (the simulator, busy serving the
            # passes on this machine's cores, would otherwise set the pace of both).
            await asyncio.sleep(2)  # let the connect phase's last jobs end
            quiet = {"drop_change_notifications": True}
            (await sim.put("/_sim/microsoft/settings", json=quiet)).raise_for_status()

            async def change(account: dict[str, Any]) -> str:
                response = await sim.post(
                    f"/_sim/microsoft/accounts/{account['email']}/messages/categories",
                    json={"folder": "inbox", "count": 1, "categories": [CATEGORY]},
                )
                response.raise_for_status()
                return str(response.json()["ids"][0])

            changed_ids = await _gather_limited([lambda a=a: change(a) for a in accounts], 32)
            quiet = {"drop_change_notifications": False}
            (await sim.put("/_sim/microsoft/settings", json=quiet)).raise_for_status()
            subscriptions = {
                s["userId"]: s for s in (await sim.get("/_sim/microsoft/subscriptions")).json()
            }
            notifications = [
                _notification(port, subscriptions[a["user_id"]], a["user_id"], message_id)
                for a, message_id in zip(accounts, changed_ids, strict=True)
            ]
            (await sim.post("/_sim/counters/reset")).raise_for_status()
            commits_before = int(
                await _scalar(
                    engine,
                    "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()",
                )
            )
            cpu_before = CpuSample.take(processes)
            started = time.perf_counter()
            sent_seconds, statuses = await _send_all(port, notifications, 16)
            if set(statuses) != {202}:
                raise RuntimeError(f"webhook answered {statuses}")
            await _wait_until(
                engine,
                "SELECT count(DISTINCT mailbox_id) FROM messages "
                "WHERE labels @> ARRAY[CAST(:category AS text)]",
                args.mailboxes,
                within=3600,
                category=CATEGORY,
            )
            await _wait_until(
                engine,
                "SELECT count(*) FROM mailboxes WHERE pending_since IS NULL "
                "AND lease_owner IS NULL",
                args.mailboxes,
                within=3600,
            )
            converged = time.perf_counter() - started
            pass_cpu = CpuSample.take(processes).since(cpu_before, await foreign_backends(url))
            commits = (
                int(
                    await _scalar(
                        engine,
                        "SELECT xact_commit FROM pg_stat_database "
                        "WHERE datname = current_database()",
                    )
                )
                - commits_before
            )
            notified = (await sim.get("/_sim/counters")).json()["totals"]
            accepted = int(
                await _scalar(
                    engine,
                    "SELECT count(*) FROM webhook_notifications WHERE outcome = 'accepted' "
                    "AND kind LIKE 'change:%'",
                )
            )
            print(f"notifications            {accepted:,} accepted, sent in {sent_seconds:.1f} s "
                  f"({args.mailboxes / sent_seconds:,.0f}/s)")  # fmt: skip
            rate = args.mailboxes / converged
            print(f"notify -> converged      {converged:.1f} s, {rate:,.0f} mailboxes/s")
            print(f"requests per pass        {notified['requests'] / args.mailboxes:.2f} "
                  f"({notified['methods']})")  # fmt: skip
            print(f"transactions per pass    {commits / args.mailboxes:.2f} "
                  "(every commit meanwhile: webhook groups, passes, scheduler)")  # fmt: skip
            print(f"CPU per notified pass    {_per(pass_cpu, args.mailboxes)} "
                  "(the notification's request included)")  # fmt: skip
            for i, worker in enumerate(workers):
                rss, peak = _rss_mib(worker.pid)
                print(f"worker {i} RSS             {rss:.0f} MiB now, {peak:.0f} MiB peak")

            # 4. the queue's own ceiling, same Redis, same number of worker processes
            for worker in workers:
                await _stop(worker)
            workers = []
            ceiling = await _noop_ceiling(env, args.workers, args.noop_jobs, log)
            print(f"ARQ no-op ceiling        {ceiling:,.0f} jobs/s ({args.workers} workers)")
            print(f"notify -> converged      {rate / ceiling:.3f} of the ceiling")
            await sim.aclose()
            await redis.aclose()
            await engine.dispose()
            await _stop(api)
    finally:
        for worker in workers:
            await _stop(worker)
        await _stop(api)
        sim_process.terminate()
        sim_process.wait(timeout=10)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--mailboxes", type=int, default=10_000)
    parser.add_argument("--messages", type=int, default=20)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--noop-jobs", type=int, default=20_000)
    parser.add_argument(
        "--profile", help="a directory: run the sync workers under cProfile, one file each"
    )
    parser.add_argument(
        "--no-prerender",
        dest="prerender",
        action="store_false",
        help="let the simulator generate every message while the clock runs",
    )
    asyncio.run(run(parser.parse_args()))
