"""Partitioned backfills: one large mailbox over several worker processes.

    python -m bench.partitions [--messages 100000] [--latency-ms 100] [--workers 2]
        [--layout inbox_only | default] [--gmail-messages 20000] [--rss 100000,1000000]
        [--only outlook,gmail,rss]

Everything runs as in production: the simulator, and `--workers` ARQ worker processes
(`arq app.sync.worker.WorkerSettings`), with the mailbox connected through the service
call the API uses; the clock runs from connect to `connected`. Each figure is printed
against a ceiling measured in the same run:

- outlook: `--messages` in ONE folder (the simulator's `inbox_only` layout; `--layout
  default` spreads them over the folders, Inbox 64%) with `--latency-ms` per request,
  against the lower of (a) four concurrent requests' worth of 1000-message pages (Graph's
  per-mailbox limit) and (b) the same processes with no latency (the machine's CPU bound);
  then the no-latency run against asyncpg COPY of the same rows into an index-free table
  (PostgreSQL alone), and the same no-latency run with partitioning off (one delta chain
  per folder, as before), each against its own COPY.
- gmail: `--gmail-messages` under the simulator's 250 units/s per-user quota, against the
  quota ceiling (messages.get costs 5 units), partitioned.
- rss: each worker's peak RSS for mailboxes of the sizes in `--rss` (flat means a worker's
  memory does not grow with the mailbox).

Every run prints the machine's load when it starts, how busy the machine was while it ran,
the CPU each process spent per 1000 messages (workers, PostgreSQL, simulator), and when the
first and the last page committed after connect (PostgreSQL's clock): the machine is
shared, and the no-latency figures are CPU-bound. Each COPY ceiling is the best of three
runs.

The simulator shares the machine's cores with what is measured: a Microsoft mailbox is
pre-rendered before the clock starts (as bench.provider_sync does).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import text

from app.config import Settings
from app.providers.outlook.mapper import MESSAGE_SELECT
from app.sync.queue import enqueue_sync
from app.sync.runtime import Runtime
from bench.common import connect_account, scratch_database, start_simulator
from bench.cpu import CpuSample, foreign_backends
from bench.provider_sync import _ALIASES, _copy_ceiling, _create_account, _peak_rss_mib, _stop

REDIS_DB_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/12")
GRAPH_CONCURRENCY = 4
GRAPH_PAGE = 1000


async def sync_once(
    provider: str,
    messages: int,
    *,
    latency_ms: float,
    workers: int,
    overrides: dict[str, str],
    quota: float = 250.0,
    copy: bool = False,
    layout: str = "default",
) -> dict[str, Any]:
    """Connect one mailbox and wait for `connected`; what it took."""
    workdir = Path(tempfile.mkdtemp(prefix="mailsync-bench-partitions-"))
    sim_process, sim_env = start_simulator(workdir)
    procs: list[asyncio.subprocess.Process] = []
    try:
        async with scratch_database() as url:
            env = {
                **os.environ,
                **sim_env,
                "MAILSYNC_ENV": "development",
                "DATABASE_URL": url,
                "REDIS_URL": REDIS_DB_URL,
                "PUBLIC_BASE_URL": "http://127.0.0.1:9",
                "GMAIL_QUOTA_UNITS_PER_SECOND": str(quota),
                "SYNC_SLICE_PAGES": "1000",
                "SYNC_SLICE_SECONDS": "20",
                "LOG_LEVEL": "WARNING",
                "EVENTS_ENABLED": "false",
                "WORKER_METRICS_PORT": "0",
                **overrides,
            }
            settings = Settings(_env_file=None, **{k: v for k, v in env.items() if k in _ALIASES})
            rt = await Runtime.create(settings)
            await rt.redis.flushdb()
            sim = httpx.AsyncClient(
                base_url=sim_env["GMAIL_BASE_URL"], verify=sim_env["SSL_CERT_FILE"]
            )
            faults = {"latency_ms": latency_ms, "gmail_quota_units_per_second": quota}
            (await sim.put("/_sim/faults", json=faults)).raise_for_status()
            account = await _create_account(sim, provider, messages, layout)
            if provider == "microsoft":
                response = await sim.post(
                    f"/_sim/microsoft/accounts/{account['email']}/prerender",
                    json={"select": MESSAGE_SELECT, "immutable": True},
                    timeout=600,
                )
                response.raise_for_status()
            for _ in range(workers):
                procs.append(
                    await asyncio.create_subprocess_exec(
                        sys.executable,
                        "-m",
                        "arq",
                        "app.sync.worker.WorkerSettings",
                        env=env,
                        stdout=asyncio.subprocess.DEVNULL,
                        # ARQ logs every job: kept beside the run's simulator state.
                        stderr=(workdir / f"worker{len(procs)}.log").open("wb"),
                    )
                )
            while True:
                if await rt.redis.exists("arq:queue:health-check"):
                    break
                await asyncio.sleep(0.05)
            await asyncio.sleep(1.0)  # every worker polling
            processes: dict[str, int | None] = {f"worker{i}": p.pid for i, p in enumerate(procs)}
            processes["simulator"] = sim_process.pid
            load = os.getloadavg()[0]
            cpu_before = CpuSample.take(processes)
            started = time.perf_counter()
            async with rt.sessions() as session:
                clock_start = await _clock(session)
            mailbox_id = await connect_account(rt, provider, account)
            await enqueue_sync(rt.redis, mailbox_id)
            while True:
                await asyncio.sleep(0.05)
                async with rt.sessions() as session:
                    row = (
                        await session.execute(
                            text(
                                "SELECT status, messages_synced, last_error "
                                "FROM mailboxes WHERE id = :id"
                            ),
                            {"id": mailbox_id},
                        )
                    ).one()
                if row[0] == "connected":
                    break
                if row[0] in ("error", "auth_expired"):
                    raise RuntimeError(f"sync failed: {row[2]}")
                if any(p.returncode is not None for p in procs):
                    raise RuntimeError("a worker exited")
            elapsed = time.perf_counter() - started
            cpu = CpuSample.take(processes).since(cpu_before, await foreign_backends(url))
            rss = [_peak_rss_mib(p.pid) for p in procs]
            counters = (await sim.get("/_sim/counters")).json()["totals"]
            async with rt.sessions() as session:
                phases = await _phases(session, mailbox_id, clock_start)
                largest = (
                    await session.execute(
                        text(
                            "SELECT max(n) FROM (SELECT count(*) AS n FROM messages "
                            "WHERE mailbox_id = :id GROUP BY stream_key) s"
                        ),
                        {"id": mailbox_id},
                    )
                ).scalar_one()
            result = {
                "synced": int(row[1]),
                "elapsed": elapsed,
                "rate": int(row[1]) / elapsed,
                "rss": rss,
                "counters": counters,
                "largest_stream": int(largest or 0),
                "load": load,
                "cpu": cpu,
                "phases": phases,
            }
            if copy:
                result["copy"] = await _copy_ceiling(url, mailbox_id)
            await sim.aclose()
            await rt.close()
            for p in procs:
                await _stop(p)
            return result
    finally:
        for p in procs:
            await _stop(p)
        sim_process.terminate()
        sim_process.wait(timeout=10)


async def _clock(session: Any) -> datetime:
    return (await session.execute(text("SELECT clock_timestamp()"))).scalar_one()


async def _phases(session: Any, mailbox_id: Any, start: datetime) -> tuple[float, float, float]:
    """Seconds from connect to the first page's transaction, to the last's, and to now
    (PostgreSQL's clock: a row's updated_at is its transaction's start)."""
    first, last = (
        await session.execute(
            text("SELECT min(updated_at), max(updated_at) FROM messages WHERE mailbox_id = :id"),
            {"id": mailbox_id},
        )
    ).one()
    end = await _clock(session)
    return tuple((t - start).total_seconds() for t in (first, last, end))  # type: ignore[return-value]


def _timeline(result: dict[str, Any]) -> str:
    first, last, end = result["phases"]
    return (
        f"first page {first:.2f} s after connect, last page {last:.2f} s, connected seen "
        f"{end:.2f} s (pages alone {result['synced'] / max(last - first, 1e-9):,.0f} msg/s)"
    )


def _line(label: str, value: str) -> None:
    print(f"{label:<38}{value}", flush=True)


def _machine(result: dict[str, Any]) -> str:
    """Load at the start, how busy the machine was, CPU per 1000 messages per process."""
    cpu, per = result["cpu"], 1000 * 1000 / max(result["synced"], 1)
    workers = [cpu[k] * per for k in sorted(cpu) if k.startswith("worker")]
    return (
        f"load {result['load']:.2f} at start, machine {100 * cpu['utilization']:.0f}% busy; "
        f"CPU/1000 msg: workers {' + '.join(f'{w:.0f}' for w in workers)} ms, "
        f"PostgreSQL {cpu['postgres'] * per:.0f} ms, simulator {cpu['simulator'] * per:.0f} ms"
    )


def _counters(result: dict[str, Any]) -> str:
    c = result["counters"]
    return (
        f"{c['requests']:,} requests, {c['throttled']} throttled, "
        f"{c['retry_after_violations']} Retry-After violations, peak concurrency "
        f"{c['concurrency_peak']}"
    )


async def outlook(args: argparse.Namespace) -> None:
    partitioned = {
        "BACKFILL_PARTITION_THRESHOLD": str(args.threshold),
        "BACKFILL_PARTITION_SIZE": str(args.size),
    }
    print(
        f"-- outlook: {args.messages:,} messages, layout {args.layout}, "
        f"{args.workers} worker processes",
        flush=True,
    )
    same = {"workers": args.workers, "layout": args.layout}
    slow = await sync_once(
        "microsoft", args.messages, latency_ms=args.latency_ms, overrides=partitioned, **same
    )
    _line("largest folder", f"{slow['largest_stream']:,} messages")
    _line(
        f"with {args.latency_ms:.0f} ms/request",
        f"{slow['rate']:,.0f} msg/s ({slow['elapsed']:.1f} s; {_counters(slow)})",
    )
    _line("", _machine(slow))
    _line("", _timeline(slow))
    fast = await sync_once(
        "microsoft", args.messages, latency_ms=0, overrides=partitioned, copy=True, **same
    )
    off = {"BACKFILL_PARTITION_THRESHOLD": "0"}
    chain = await sync_once(
        "microsoft", args.messages, latency_ms=0, overrides=off, copy=True, **same
    )
    requests_bound = GRAPH_CONCURRENCY * GRAPH_PAGE / (args.latency_ms / 1000)
    _line("(a) 4 concurrent requests' pages", f"{requests_bound:,.0f} msg/s")
    # Not only message pages take the four slots: folders, counts, the live cursor, the
    # received range, the other folders' delta rounds.
    kinds = slow["counters"].get("methods") or {}
    _line(
        "requests by kind, 100 ms run",
        ", ".join(f"{k} {v}" for k, v in sorted(kinds.items(), key=lambda kv: -kv[1])),
    )
    floor = slow["counters"]["requests"] * args.latency_ms / 1000 / GRAPH_CONCURRENCY
    _line(
        "its requests, 4 at a time, at least",
        f"{floor:.2f} s ({slow['synced'] / floor:,.0f} msg/s at most)",
    )
    _line("(b) same processes, no latency", f"{fast['rate']:,.0f} msg/s ({fast['elapsed']:.1f} s)")
    _line("", _machine(fast))
    _line("", _timeline(fast))
    _line(
        f"{args.latency_ms:.0f} ms/request / min(a, b)",
        f"{slow['rate'] / min(requests_bound, fast['rate']):.3f}",
    )
    _line(
        "no latency, partitioned / COPY",
        f"{fast['rate'] / fast['copy']:.3f} ({fast['rate']:,.0f} / {fast['copy']:,.0f} msg/s)",
    )
    _line(
        "no latency, partitioning off / COPY",
        f"{chain['rate'] / chain['copy']:.3f} ({chain['rate']:,.0f} / {chain['copy']:,.0f} msg/s; "
        f"{chain['elapsed']:.1f} s)",
    )
    _line("", _machine(chain))
    _line(
        "worker peak RSS",
        ", ".join(f"{r:.0f} MiB" for r in slow["rss"] + fast["rss"]),
    )


async def gmail(args: argparse.Namespace) -> None:
    print(f"-- gmail: {args.gmail_messages:,} messages, quota 250 units/s", flush=True)
    result = await sync_once(
        "google",
        args.gmail_messages,
        latency_ms=0,
        workers=args.workers,
        overrides={
            "BACKFILL_PARTITION_THRESHOLD": str(min(args.threshold, args.gmail_messages // 2)),
            "BACKFILL_PARTITION_SIZE": str(args.size),
        },
    )
    ceiling = 250.0 / 5
    _line("throughput", f"{result['rate']:,.1f} msg/s ({result['elapsed']:.1f} s)")
    _line("quota ceiling", f"{ceiling:.1f} msg/s (250 units/s / 5 units)")
    _line("fraction of ceiling", f"{result['rate'] / ceiling:.3f} ({_counters(result)})")
    _line("", _machine(result))


async def rss(args: argparse.Namespace) -> None:
    print(
        f"-- rss: worker peak RSS by mailbox size, layout {args.layout}, {args.workers} workers",
        flush=True,
    )
    for size in (int(s) for s in args.rss.split(",")):
        result = await sync_once(
            "microsoft",
            size,
            latency_ms=0,
            workers=args.workers,
            layout=args.layout,
            overrides={
                "BACKFILL_PARTITION_THRESHOLD": str(args.threshold),
                "BACKFILL_PARTITION_SIZE": str(args.size),
            },
        )
        _line(
            f"{size:,} messages",
            ", ".join(f"{r:.0f} MiB" for r in result["rss"])
            + f" ({result['rate']:,.0f} msg/s, largest folder {result['largest_stream']:,})",
        )
        _line("", _machine(result))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--latency-ms", type=float, default=100.0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threshold", type=int, default=20_000)
    parser.add_argument("--size", type=int, default=20_000)
    parser.add_argument("--gmail-messages", type=int, default=20_000)
    parser.add_argument("--rss", default="100000,1000000")
    parser.add_argument(
        "--layout",
        choices=["inbox_only", "default"],
        default="inbox_only",
        help="Outlook mailboxes: every message in the Inbox, or spread over the folders",
    )
    parser.add_argument("--only", default="outlook,gmail,rss")
    parsed = parser.parse_args()

    async def main() -> None:
        wanted = set(parsed.only.split(","))
        load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
        print(f"machine: {os.cpu_count()} cores, load {load} (1, 5, 15 min)", flush=True)
        for name, part in (("outlook", outlook), ("gmail", gmail), ("rss", rss)):
            if name in wanted:
                await part(parsed)

    asyncio.run(main())
