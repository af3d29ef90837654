"""`python -m tests.providers.gmail.bench_fetch_strategies`: full-sync throughput of the
Gmail provider with batch gets vs concurrent single gets, quota on (250 units/s).

Prints messages per second, quota units per second actually spent, 429s and Retry-After
violations the simulator counted, for each strategy, with and without network latency.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
import uuid

import httpx

from app.providers.base import Account, StreamInfo, SyncContext, aiter_pages
from app.providers.gmail.client import FetchStrategy
from app.simulator.server import SimulatorServer


async def _run(
    server: SimulatorServer, strategy: FetchStrategy, messages: int, latency_ms: float
) -> str:
    from app.config import Settings
    from app.providers.gmail.provider import GmailProvider
    from tests.providers.gmail.conftest import BucketGate

    settings = Settings(_env_file=None)
    async with httpx.AsyncClient(verify=server.ssl_context(), timeout=60) as http:
        await http.put(
            f"{server.base_url}/_sim/faults",
            json={"latency_ms": latency_ms, "gmail_quota_units_per_second": 250},
        )
        email = f"bench-{uuid.uuid4().hex[:8]}@example.com"
        created = await http.post(
            f"{server.base_url}/_sim/google/accounts",
            json={"email": email, "seed": 5, "messages": messages},
        )
        token = created.json()["access_token"]
        provider = GmailProvider(settings, http, fetch_strategy=strategy)
        gate = BucketGate(provider.limits())

        async def access_token() -> str:
            return token

        ctx = SyncContext(Account("google", "bench", email), access_token, gate)
        stream = StreamInfo(key="mailbox", name=email)
        start = time.monotonic()
        synced = 0
        async for page in aiter_pages(provider, ctx, stream, None):
            synced += len(page.upserts)
        took = time.monotonic() - start
        counters = (await http.get(f"{server.base_url}/_sim/google/accounts/{email}")).json()[
            "counters"
        ]
    return (
        f"{strategy:10} latency {latency_ms:4.0f} ms: {synced} messages in {took:5.1f} s = "
        f"{synced / took:5.1f} msg/s, {counters['quota_units'] / took:5.1f} units/s, "
        f"{counters['requests']} requests, {counters['throttled']} x 429, "
        f"{counters['retry_after_violations']} Retry-After violations"
    )


async def main(messages: int) -> None:
    server = SimulatorServer().start()
    try:
        for name, value in server.env().items():
            os.environ[name] = value
        os.environ["MAILSYNC_ENV"] = "test"
        strategies: tuple[FetchStrategy, ...] = ("batch", "concurrent")
        for latency in (0.0, 80.0):
            for strategy in strategies:
                print(await _run(server, strategy, messages, latency), flush=True)
    finally:
        server.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=1000)
    asyncio.run(main(parser.parse_args().messages))
