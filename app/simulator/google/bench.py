"""`python -m app.simulator.google.bench`: server CPU per Gmail list page and per batch.

Runs the Gmail dispatcher in-process (no sockets, no TLS), so the figures are the
simulator's own cost of producing a response: a 500-id `messages.list` page and a 100-part
batch of `format=metadata` gets. "Cold" is the first touch of those messages (each one is
generated from the corpus once), "warm" a repeat (derived labels and messages cached); a
full sync lists a page cold, then gets the same ids warm.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from typing import Any

from app.simulator.app import Simulator
from app.simulator.google.batch import parse_batch, render_batch
from app.simulator.google.gmail import ApiRequest, GmailApi
from app.simulator.google.state import google_state

_HEADERS = ("From", "To", "Cc", "Bcc", "Subject", "Date", "Message-ID", "In-Reply-To")


class _Bench:
    def __init__(self, messages: int) -> None:
        sim = Simulator(base_url="https://bench")
        sim.core.faults.gmail_quota_units_per_second = 0
        state = google_state(sim)
        self.api = GmailApi(sim, state)
        self.account = state.create_account(
            "bench@example.com",
            seed=1,
            messages=messages,
            access_token_lifetime=3600,
            history_id_start=None,
        )
        self.auth = "Bearer " + state.issue_access_token(self.account).access_token

    async def list_page(self, token: str | None, spam_trash: bool) -> tuple[float, dict[str, Any]]:
        query = [("maxResults", "500"), ("includeSpamTrash", str(spam_trash).lower())]
        if token:
            query.append(("pageToken", token))
        request = ApiRequest("GET", "/gmail/v1/users/me/messages", query, self.auth)
        start = time.perf_counter()
        response = await self.api.handle(request)
        return (time.perf_counter() - start) * 1000, response.body or {}

    async def batch(self, ids: list[str]) -> float:
        params = "format=metadata" + "".join(f"&metadataHeaders={h}" for h in _HEADERS)
        body = (
            "".join(
                f"--b\r\nContent-Type: application/http\r\nContent-ID: <{n}>\r\n\r\n"
                f"GET /gmail/v1/users/me/messages/{i}?{params}\r\n\r\n"
                for n, i in enumerate(ids)
            ).encode()
            + b"--b--\r\n"
        )
        start = time.perf_counter()
        parts = parse_batch("multipart/mixed; boundary=b", body, self.auth)
        responses = [await self.api.handle(p.request) for p in parts]
        render_batch(parts, responses, "batch_bench")
        return (time.perf_counter() - start) * 1000


async def main(messages: int, rounds: int) -> None:
    bench = _Bench(messages)
    print(f"mailbox of {messages:,} seeded messages, median of {rounds} rounds")
    for spam_trash in (True, False):
        cold, warm, batches = [], [], []
        token: str | None = None
        for _ in range(rounds):
            took, page = await bench.list_page(token, spam_trash)
            cold.append(took)
            warm.append((await bench.list_page(token, spam_trash))[0])
            ids = [m["id"] for m in page.get("messages", [])]
            batches.append(await bench.batch(ids[:100]))
            token = page.get("nextPageToken")
        print(
            f"messages.list maxResults=500 includeSpamTrash={str(spam_trash).lower():5}: "
            f"cold {statistics.median(cold):6.2f} ms  warm {statistics.median(warm):6.2f} ms"
        )
        print(
            f"  then a 100-part metadata batch of listed ids: {statistics.median(batches):6.2f} ms"
        )
    oldest = [bench.account.mailbox.seeded_id(i) for i in range(100 * rounds)]
    cold_batches = [await bench.batch(oldest[n * 100 : (n + 1) * 100]) for n in range(rounds)]
    print(
        f"100-part metadata batch of never-touched ids:   {statistics.median(cold_batches):6.2f} ms"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    asyncio.run(main(args.messages, args.rounds))
