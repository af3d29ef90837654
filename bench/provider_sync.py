"""End-to-end sync speed: connect → `connected`, with the real worker process and the simulator.

    python -m bench.provider_sync --provider microsoft --messages 100000 [--latency-ms 100]
        [--no-prerender]
    python -m bench.provider_sync --provider google --messages 20000 [--quota 250 | --quota 0]
    python -m bench.provider_sync --provider microsoft --messages 100000 --events on
        [--publisher beside | niced | after]

The simulator and one worker (`arq app.sync.worker.WorkerSettings`) run as separate
processes, as in production; this script connects the mailbox through the same service
call the API uses and watches PostgreSQL. It prints messages/s, the worker's peak RSS, the
simulator's request/throttle counters and, for comparison, the machine's ceiling: asyncpg
COPY of the same rows into a scratch table (the best of three runs).

The simulator shares this machine's cores with what is measured, while Microsoft's
servers do not: before the clock starts, a Microsoft mailbox is pre-rendered (the
simulator keeps every seeded message's JSON for our `$select`, as Exchange keeps messages
in storage). `--no-prerender` makes it generate each message while the clock runs.

`--events on`: pages write their events, and a `mailsync publisher` process publishes them
to NATS JetStream; it prints the commit → ack lag of every outbox row and how long the
outbox took to empty after `connected`. Where the publisher runs: `beside` the worker from
the start (production on one machine; the plain figure), `niced` (the same at nice 19: it
takes only CPU nothing else wants, as if it had a core of its own, and lags meanwhile), or
`after` (started once the mailbox is connected: the backfill pays only for writing its
events).
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

import asyncpg
import httpx
from sqlalchemy import text

from app.config import Settings
from app.providers.outlook.mapper import MESSAGE_SELECT
from app.sync.queue import enqueue_subscription, enqueue_sync
from app.sync.runtime import Runtime
from bench.common import connect_account, scratch_database, start_simulator
from bench.cpu import CpuSample, foreign_backends

REDIS_DB_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/14")


def _peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def _create_account(
    sim: httpx.AsyncClient, provider: str, messages: int, layout: str = "default"
) -> dict[str, Any]:
    """A seeded account; `layout` (Microsoft): "default" or "inbox_only" (one folder)."""
    email = (
        f"bench-{uuid.uuid4().hex[:6]}@{'example.com' if provider == 'google' else 'contoso.com'}"
    )
    if provider == "google":
        body: dict[str, Any] = {"email": email, "messages": messages, "seed": 3}
        response = await sim.post("/_sim/google/accounts", json=body, timeout=600)
    else:
        body = {"email": email, "message_count": messages, "seed": 3, "layout": layout}
        response = await sim.post("/_sim/microsoft/accounts", json=body, timeout=600)
    response.raise_for_status()
    return dict(response.json())


async def _copy_ceiling(url: str, mailbox_id: uuid.UUID, rounds: int = 3) -> float:
    """COPY the synced rows into an index-free scratch table: what PostgreSQL alone can take.

    The best of `rounds` runs, each into a fresh table: right after a sync, autovacuum and
    the checkpointer work on the new rows, and one run alone has read anywhere from half to
    all of the machine's COPY rate."""
    conn = await asyncpg.connect(url.replace("postgresql+asyncpg", "postgresql"))
    try:
        rows = await conn.fetch(
            "SELECT mailbox_id, provider_message_id, stream_key, generation, thread_id, internet_message_id, "
            "subject, from_address, to_addresses, cc_addresses, bcc_addresses, snippet, received_at, labels, "
            "is_read, has_attachments FROM messages WHERE mailbox_id = $1",
            mailbox_id,
        )
        records = [tuple(r) for r in rows]
        columns = list(rows[0].keys())
        best = 0.0
        for round_ in range(rounds):
            table = f"copy_ceiling_{round_}"
            await conn.execute(f"CREATE TABLE {table} (LIKE messages INCLUDING DEFAULTS)")
            started = time.perf_counter()
            for i in range(0, len(records), 1000):
                await conn.copy_records_to_table(
                    table, records=records[i : i + 1000], columns=columns
                )
            best = max(best, len(records) / (time.perf_counter() - started))
            await conn.execute(f"DROP TABLE {table}")
        return best
    finally:
        await conn.close()


async def run(args: argparse.Namespace) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="mailsync-bench-"))
    sim_process, sim_env = start_simulator(workdir)
    worker: asyncio.subprocess.Process | None = None
    publisher: asyncio.subprocess.Process | None = None
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
                "SYNC_SLICE_SECONDS": "20",
                "LOG_LEVEL": "WARNING",
                "EVENTS_ENABLED": "true" if args.events == "on" else "false",
                "NATS_URL": os.environ.get("NATS_URL", "nats://127.0.0.1:4222"),
                "EVENTS_STREAM": f"BENCH_SYNC_{uuid.uuid4().hex[:6]}",
                "EVENTS_SUBJECT_PREFIX": f"benchsync{uuid.uuid4().hex[:6]}",
                "EVENTS_PUBLISHER_PORT": "0",
            }
            settings = Settings(_env_file=None, **{k: v for k, v in env.items() if k in _ALIASES})
            rt = await Runtime.create(settings)
            await rt.redis.flushdb()
            sim = httpx.AsyncClient(
                base_url=sim_env["GMAIL_BASE_URL"], verify=sim_env["SSL_CERT_FILE"]
            )
            faults = {"latency_ms": args.latency_ms, "gmail_quota_units_per_second": args.quota}
            (await sim.put("/_sim/faults", json=faults)).raise_for_status()
            print(f"seeding a {args.messages:,}-message {args.provider} mailbox ...", flush=True)
            account = await _create_account(sim, args.provider, args.messages)
            if args.provider == "microsoft" and args.prerender:
                # Exchange reads stored messages; the simulator otherwise generates each one
                # on this machine's cores, next to the worker and PostgreSQL being measured.
                response = await sim.post(
                    f"/_sim/microsoft/accounts/{account['email']}/prerender",
                    json={"select": MESSAGE_SELECT, "immutable": True},
                    timeout=600,
                )
                response.raise_for_status()

            worker = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "arq",
                "app.sync.worker.WorkerSettings",
                env=env,
                stdout=asyncio.subprocess.DEVNULL,
            )
            if args.events == "on" and args.publisher != "after":
                publisher = await _start_publisher(env, niced=args.publisher == "niced")
            # A production worker is running before anyone connects: start the clock when
            # this one is ready (ARQ writes its health-check key once it polls the queue).
            while not await rt.redis.exists("arq:queue:health-check"):
                if worker.returncode is not None:
                    raise RuntimeError("worker exited during start-up")
                await asyncio.sleep(0.05)
            processes = {
                "worker": worker.pid,
                "simulator": sim_process.pid,
                "publisher": publisher.pid if publisher else None,
            }
            cpu_before = CpuSample.take(processes)
            started = time.perf_counter()
            mailbox_id = await connect_account(rt, args.provider, account)
            await enqueue_sync(rt.redis, mailbox_id)
            await enqueue_subscription(rt.redis, mailbox_id)
            status = ""
            first_visible: float | None = None
            while status != "connected":
                await asyncio.sleep(0.05)
                async with rt.sessions() as session:
                    row = (
                        await session.execute(
                            text(
                                "SELECT status, messages_synced, last_error FROM mailboxes WHERE id = :id"
                            ),
                            {"id": mailbox_id},
                        )
                    ).one()
                status = row[0]
                if first_visible is None and row[1]:
                    first_visible = time.perf_counter() - started
                if status in ("error", "auth_expired"):
                    raise RuntimeError(f"sync failed: {row[2]}")
                if worker.returncode is not None:
                    raise RuntimeError("worker exited")
            elapsed = time.perf_counter() - started
            cpu_after = CpuSample.take(processes)
            cpu = cpu_after.since(cpu_before, await foreign_backends(url))
            rss = _peak_rss_mib(worker.pid)
            counters = (await sim.get("/_sim/counters")).json()["totals"]
            synced = int(row[1])
            rate = synced / elapsed
            print(f"provider                 {args.provider}")
            print(f"messages synced          {synced:,} in {elapsed:.1f} s")
            print(f"first messages visible   {first_visible or elapsed:.2f} s after connect")
            print(f"throughput               {rate:,.0f} messages/s (connect → connected)")
            print(f"simulator latency        {args.latency_ms} ms per request")
            if args.provider == "microsoft":
                print(
                    "simulator messages       "
                    + (
                        "pre-rendered (served from memory)"
                        if args.prerender
                        else "generated per request"
                    )
                )
            print(
                f"requests                 {counters['requests']:,} ({counters['throttled']} throttled, "
                f"{100 * counters['throttled'] / max(counters['requests'], 1):.2f}%)"
            )
            print(f"retry-after violations   {counters['retry_after_violations']}")
            print(f"peak concurrency         {counters['concurrency_peak']}")
            print(f"worker peak RSS          {rss:.0f} MiB")
            per_thousand = 1000 * 1000 / max(synced, 1)
            events_cpu = (
                f"publisher {cpu['publisher'] * per_thousand:.0f} ms, "
                f"NATS {cpu['nats'] * per_thousand:.0f} ms, "
                if publisher is not None
                else ""
            )
            print(
                "CPU per 1000 messages    "
                f"worker {cpu['worker'] * per_thousand:.0f} ms, "
                f"PostgreSQL {cpu['postgres'] * per_thousand:.0f} ms, "
                f"{events_cpu}"
                f"simulator {cpu['simulator'] * per_thousand:.0f} ms "
                f"(machine {100 * cpu['utilization']:.0f}% busy, {os.cpu_count()} cores)"
            )
            if args.provider == "google" and args.quota:
                ceiling = args.quota / 5  # messages.get (metadata) costs 5 units
                print(
                    f"quota ceiling            {ceiling:.1f} messages/s ({args.quota} units/s ÷ 5 units)"
                )
                print(f"fraction of ceiling      {rate / ceiling:.3f}")
            else:
                copy_rate = await _copy_ceiling(url, mailbox_id)
                print(f"COPY ceiling             {copy_rate:,.0f} messages/s")
                print(f"ratio to COPY            {rate / copy_rate:.3f}")
            if args.events == "on":
                if publisher is None:
                    publisher = await _start_publisher(env, niced=False)
                    print(f"publisher                started after connected ({args.publisher})")
                else:
                    where = "beside the worker" + (
                        " at nice 19" if args.publisher == "niced" else ""
                    )
                    print(f"publisher                {where}, from the start")
                drain_started = time.perf_counter()
                drained_before = CpuSample.take({"publisher": publisher.pid})
                async with rt.sessions() as session:
                    while (
                        await session.execute(
                            text("SELECT count(*) FROM outbox_events WHERE published_at IS NULL")
                        )
                    ).scalar_one():
                        await session.rollback()
                        await asyncio.sleep(0.05)
                    drained = time.perf_counter() - drain_started
                    drain_cpu = CpuSample.take({"publisher": publisher.pid}).since(
                        drained_before, await foreign_backends(url)
                    )
                    lags = sorted(
                        (
                            await session.execute(
                                text(
                                    "SELECT extract(epoch FROM published_at - created_at) "
                                    "FROM outbox_events WHERE mailbox_id = :id"
                                ),
                                {"id": mailbox_id},
                            )
                        ).scalars()
                    )
                    events = (
                        await session.execute(
                            text("SELECT count(*) FROM outbox_events WHERE mailbox_id = :id"),
                            {"id": mailbox_id},
                        )
                    ).scalar_one()
                print(f"outbox empty             {drained:.2f} s after connected")
                if args.publisher == "after":
                    per = 1000 * 1000 / max(synced, 1)
                    print(
                        "CPU per 1000 events      "
                        f"publisher {drain_cpu['publisher'] * per:.0f} ms, "
                        f"NATS {drain_cpu['nats'] * per:.0f} ms, "
                        f"PostgreSQL {drain_cpu['postgres'] * per:.0f} ms (draining alone; "
                        f"{synced / max(drained, 1e-9):,.0f} events/s)"
                    )
                print(
                    f"commit -> ack lag        p50 {1000 * lags[len(lags) // 2]:.0f} ms, "
                    f"p95 {1000 * lags[int(len(lags) * 0.95)]:.0f} ms, "
                    f"max {1000 * lags[-1]:.0f} ms ({events} outbox rows)"
                )
                publisher.send_signal(signal.SIGTERM)
                await publisher.wait()
                publisher = None
                import nats

                nc = await nats.connect(env["NATS_URL"])
                await nc.jetstream().delete_stream(env["EVENTS_STREAM"])
                await nc.close()
            await sim.aclose()
            await rt.close()
            # Before its database is dropped, or its scheduler logs the missing database.
            await _stop(worker)
    finally:
        await _stop(worker)
        if publisher is not None and publisher.returncode is None:
            publisher.kill()
        sim_process.terminate()
        sim_process.wait(timeout=10)


_ALIASES = {f.alias for f in Settings.model_fields.values() if f.alias}


async def _stop(worker: asyncio.subprocess.Process | None) -> None:
    if worker is not None and worker.returncode is None:
        worker.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(worker.wait(), timeout=30)
        except TimeoutError:
            worker.kill()


async def _start_publisher(env: dict[str, str], *, niced: bool) -> asyncio.subprocess.Process:
    """A `mailsync publisher` process, once it has created the stream and is listening."""
    command = [sys.executable, "-m", "app.cli", "publisher"]
    process = await asyncio.create_subprocess_exec(
        *(["nice", "-n", "19", *command] if niced else command), env=env
    )
    import nats
    from nats.js.errors import NotFoundError

    nc = await nats.connect(env["NATS_URL"])
    try:
        async with asyncio.timeout(30):
            while True:
                try:
                    await nc.jetstream().stream_info(env["EVENTS_STREAM"])
                    break
                except NotFoundError:
                    await asyncio.sleep(0.05)
    finally:
        await nc.close()
    await asyncio.sleep(0.5)  # LISTEN set up after the stream
    return process


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--provider", choices=["microsoft", "google"], required=True)
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument(
        "--events",
        choices=["on", "off"],
        default="off",
        help="on: pages write their events and a publisher process publishes them",
    )
    parser.add_argument(
        "--publisher",
        choices=["beside", "niced", "after"],
        default="beside",
        help="with --events on: beside the worker (plain), at nice 19, or started after connected",
    )
    parser.add_argument(
        "--quota", type=float, default=250.0, help="Gmail units per user per second (0 = off)"
    )
    parser.add_argument(
        "--no-prerender",
        dest="prerender",
        action="store_false",
        help="Microsoft: let the simulator generate every message while the clock runs",
    )
    asyncio.run(run(parser.parse_args()))
