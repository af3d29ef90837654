"""How fast the simulator serves pages, over HTTPS from a separate process.

    python -m bench.simulator [--messages 100000]

The simulator must never be what a sync benchmark measures. This prints pages/s and
milliseconds per page for: Graph `messages/delta` pages of 1000 (a full enumeration of the
Inbox), Gmail `messages.list` pages of 500, and Gmail batches of 100 `format=metadata` gets.
One client, one request at a time: the figures are per-page latency, not a load test.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
import uuid
from pathlib import Path

import httpx

from app.providers.gmail.batch import encode_batch
from bench.common import start_simulator

METADATA = "&".join(
    f"metadataHeaders={h}" for h in ("From", "To", "Cc", "Bcc", "Subject", "Date", "Message-ID")
)


def report(label: str, pages: int, elapsed: float) -> None:
    print(
        f"{label:<40} {pages / elapsed:>8.1f} pages/s  {1000 * elapsed / pages:>7.2f} ms/page  ({pages} pages)"
    )


async def graph(sim: httpx.AsyncClient, messages: int) -> None:
    email = f"bench-{uuid.uuid4().hex[:6]}@contoso.com"
    account = (
        await sim.post(
            "/_sim/microsoft/accounts",
            json={"email": email, "message_count": messages},
            timeout=600,
        )
    ).json()
    headers = {
        "Authorization": f"Bearer {account['access_token']}",
        "Prefer": 'odata.maxpagesize=1000, IdType="ImmutableId"',
    }
    url: str | None = "/v1.0/me/mailFolders/inbox/messages/delta"
    params: dict[str, str] | None = {
        "$select": "id,conversationId,internetMessageId,subject,from,toRecipients,ccRecipients,"
        "bccRecipients,bodyPreview,receivedDateTime,isRead,hasAttachments,categories,parentFolderId"
    }
    pages = 0
    started = time.perf_counter()
    while url is not None:
        response = await sim.get(url, params=params, headers=headers)
        response.raise_for_status()
        body = response.json()
        params = None
        pages += 1
        url = body.get("@odata.nextLink")
    report("Graph delta page (1000 messages)", pages, time.perf_counter() - started)


async def gmail(sim: httpx.AsyncClient, messages: int) -> None:
    email = f"bench-{uuid.uuid4().hex[:6]}@example.com"
    account = (
        await sim.post(
            "/_sim/google/accounts", json={"email": email, "messages": messages}, timeout=600
        )
    ).json()
    auth = {"Authorization": f"Bearer {account['access_token']}"}
    token: str | None = None
    ids: list[str] = []
    pages = 0
    started = time.perf_counter()
    while True:
        params = {
            "maxResults": "500",
            "includeSpamTrash": "true",
            **({"pageToken": token} if token else {}),
        }
        body = (await sim.get("/gmail/v1/users/me/messages", params=params, headers=auth)).json()
        ids.extend(m["id"] for m in body.get("messages", []))
        pages += 1
        token = body.get("nextPageToken")
        if not token:
            break
    report("Gmail messages.list page (500 ids)", pages, time.perf_counter() - started)

    batches = 0
    started = time.perf_counter()
    for i in range(0, min(len(ids), 20_000), 100):
        paths = [
            f"/gmail/v1/users/me/messages/{mid}?format=metadata&{METADATA}"
            for mid in ids[i : i + 100]
        ]
        content_type, payload = encode_batch(paths)
        response = await sim.post(
            "/batch/gmail/v1", content=payload, headers={**auth, "Content-Type": content_type}
        )
        response.raise_for_status()
        batches += 1
    report("Gmail batch (100 metadata gets)", batches, time.perf_counter() - started)


async def main(messages: int) -> None:
    process, env = start_simulator(Path(tempfile.mkdtemp(prefix="mailsync-simbench-")))
    try:
        async with httpx.AsyncClient(
            base_url=env["GMAIL_BASE_URL"], verify=env["SSL_CERT_FILE"], timeout=60
        ) as sim:
            (
                await sim.put("/_sim/faults", json={"gmail_quota_units_per_second": 0})
            ).raise_for_status()
            await graph(sim, messages)
            await gmail(sim, messages)
    finally:
        process.terminate()
        process.wait(timeout=10)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=100_000)
    asyncio.run(main(parser.parse_args().messages))
