"""Where real Gmail is harsh: the per-user concurrency limit, batch answers out of order
and without Content-Length, several change types in one history record, unsigned pushes."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from email.parser import BytesParser
from email.policy import HTTP
from typing import Any

import httpx
import pytest

from app.simulator.server import SimulatorServer
from tests.providers.gmail.sim import GoogleSim, SimAccount, google_sim
from tests.simulator.test_google_push import _settled, push_receiver

HISTORY = "/gmail/v1/users/me/history"


@pytest.fixture
async def sim(simulator: SimulatorServer) -> AsyncIterator[GoogleSim]:
    async with google_sim(simulator) as client:
        yield client


async def _batch_of_gets(sim: GoogleSim, account: SimAccount, ids: list[str]) -> httpx.Response:
    chunks = [
        f"--zz\r\nContent-Type: application/http\r\nContent-ID: <{n}>\r\n\r\n"
        f"GET /gmail/v1/users/me/messages/{i}?format=minimal\r\n\r\n"
        for n, i in enumerate(ids)
    ]
    body = ("".join(chunks) + "--zz--\r\n").encode()
    headers = {**account.auth, "Content-Type": "multipart/mixed; boundary=zz"}
    return await sim.http.post("/batch/gmail/v1", content=body, headers=headers)


def _raw_parts(response: httpx.Response) -> list[tuple[str, str, bytes]]:
    """(Content-ID, inner head, inner body) per part, by the stdlib MIME parser."""
    message = BytesParser(policy=HTTP).parsebytes(
        f"Content-Type: {response.headers['content-type']}\r\n\r\n".encode() + response.content
    )
    parts = []
    for part in message.iter_parts():
        payload = part.get_payload(decode=False)
        assert isinstance(payload, str)
        head, _, body = payload.partition("\r\n\r\n")
        parts.append((str(part["Content-ID"]), head, body.encode()))
    return parts


def _status(head: str) -> int:
    return int(head.split("\r\n", 1)[0].split()[1])


async def test_concurrency_limit_refuses_the_excess_parts_of_a_batch(sim: GoogleSim) -> None:
    account = await sim.create_account(messages=120)
    ids = [m["id"] for m in (await sim.truth(account.email))[:100]]
    async with sim.faults(
        gmail_user_concurrency=20, gmail_user_concurrency_jitter=0, gmail_quota_units_per_second=0
    ):
        response = await _batch_of_gets(sim, account, ids)
        small = await _batch_of_gets(sim, account, ids[:20])
    assert response.status_code == 200  # the batch itself is fine; parts are refused
    parts = _raw_parts(response)
    statuses = [_status(head) for _, head, _ in parts]
    assert statuses.count(200) == 20 and statuses.count(429) == 80
    # Which parts lose is up to Gmail, not the last ones of the request.
    refused_ids = {cid for (cid, head, _) in parts if _status(head) == 429}
    assert refused_ids != {f"<response-{n}>" for n in range(20, 100)}
    [refusal] = {body for (_, head, body) in parts if _status(head) == 429}
    error = json.loads(refusal)["error"]
    assert error["code"] == 429 and error["status"] == "RESOURCE_EXHAUSTED"
    assert error["message"] == "Too many concurrent requests for user."
    assert error["errors"][0]["reason"] == "rateLimitExceeded"
    assert all("retry-after" not in head.lower() for _, head, _ in parts)
    # Within the limit, every part is answered.
    assert [_status(head) for _, head, _ in _raw_parts(small)] == [200] * 20
    counters = await sim.counters(account.email)
    assert counters["concurrency_refused"] == 80
    # Refused parts never ran: they cost no quota and are no Retry-After violation.
    assert counters["quota_units"] == 40 * 5
    assert counters["retry_after_violations"] == 0


async def test_concurrency_limit_varies_so_50_part_batches_fail_only_sometimes(
    sim: GoogleSim,
) -> None:
    account = await sim.create_account(messages=120)
    ids = [m["id"] for m in (await sim.truth(account.email))[:100]]
    outcomes: dict[int, list[int]] = {25: [], 50: [], 100: []}
    async with sim.faults(
        gmail_user_concurrency=50,
        gmail_user_concurrency_jitter=0.5,
        gmail_quota_units_per_second=0,
        seed=11,
    ):
        for size, refused in outcomes.items():
            for _ in range(12):
                parts = _raw_parts(await _batch_of_gets(sim, account, ids[:size]))
                refused.append(sum(_status(head) == 429 for _, head, _ in parts))
    assert sum(outcomes[25]) == 0
    assert 0 < sum(1 for n in outcomes[50] if n) < 12
    assert all(n > 0 for n in outcomes[100])


async def test_single_requests_count_against_the_limit_too(sim: GoogleSim) -> None:
    account = await sim.create_account(messages=20)
    async with (
        sim.faults(
            gmail_user_concurrency=2,
            gmail_user_concurrency_jitter=0,
            gmail_quota_units_per_second=0,
            latency_ms=300,
        ),
        httpx.AsyncClient(base_url=sim.server.base_url, verify=sim.server.ssl_context()) as http,
    ):
        responses = await asyncio.gather(
            *(http.get("/gmail/v1/users/me/profile", headers=account.auth) for _ in range(5))
        )
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200, 200, 429, 429, 429]


async def test_batch_answers_out_of_order_and_without_content_length(sim: GoogleSim) -> None:
    account = await sim.create_account(messages=40)
    ids = [m["id"] for m in (await sim.truth(account.email))[:30]]
    async with sim.faults(
        gmail_batch_shuffle=True, gmail_batch_content_length=False, gmail_quota_units_per_second=0
    ):
        parts = _raw_parts(await _batch_of_gets(sim, account, ids))
    order = [int(cid.removeprefix("<response-").removesuffix(">")) for cid, _, _ in parts]
    assert sorted(order) == list(range(30)) and order != list(range(30))
    for cid, head, body in parts:
        assert "content-length" not in head.lower()
        n = int(cid.removeprefix("<response-").removesuffix(">"))
        assert json.loads(body)["id"] == ids[n]


async def _history(sim: GoogleSim, account: SimAccount, **params: Any) -> list[dict[str, Any]]:
    response = await sim.http.get(HISTORY, params=params, headers=account.auth)
    assert response.status_code == 200, response.text
    records: list[dict[str, Any]] = response.json().get("history", [])
    return records


async def test_one_history_record_holds_several_messages_and_change_types(
    sim: GoogleSim,
) -> None:
    account = await sim.create_account(messages=30)
    truth = await sim.truth(account.email)
    kept, gone = truth[3]["id"], truth[4]["id"]
    result = await sim.http.post(
        f"/_sim/google/accounts/{account.email}/history/record",
        json={
            "operations": [
                {"op": "add", "count": 2, "label_ids": ["INBOX", "UNREAD"]},
                {"op": "modify", "ids": ["new:0", kept], "add_label_ids": ["STARRED"],
                 "remove_label_ids": ["UNREAD"]},
                {"op": "delete", "ids": ["new:1", gone]},
            ]
        },
    )  # fmt: skip
    assert result.status_code == 201, result.text
    first, second = result.json()["added"]
    [record] = await _history(sim, account, startHistoryId=account.history_id)
    added = [e["message"]["id"] for e in record["messagesAdded"]]
    assert added == [first, second]
    assert {e["message"]["id"] for e in record["labelsAdded"]} == {first, kept}
    assert {e["message"]["id"] for e in record["messagesDeleted"]} == {second, gone}
    assert {m["id"] for m in record["messages"]} == {first, second, kept, gone}
    # A type filter keeps only its lists; the record keeps its one id.
    [only_deleted] = await _history(
        sim, account, startHistoryId=account.history_id, historyTypes="messageDeleted"
    )
    assert only_deleted["id"] == record["id"]
    assert set(only_deleted) == {"id", "messages", "messagesDeleted"}
    current = {m["id"] for m in await sim.truth(account.email)}
    assert first in current and kept in current
    assert second not in current and gone not in current


async def test_pushes_can_come_unsigned(sim: GoogleSim) -> None:
    account = await sim.create_account(messages=5)
    minted = await sim.mint_push(account.email, 12345, unsigned=True)
    assert minted["authorization"] is None
    assert minted["body"]["message"]["data"]
    async with push_receiver() as (endpoint, received):
        try:
            config = await sim.set_push(endpoint=endpoint, authenticated=False)
            assert config["authenticated"] is False
            watch = await sim.http.post(
                "/gmail/v1/users/me/watch",
                json={"topicName": "projects/p/topics/t"},
                headers=account.auth,
            )
            assert watch.status_code == 200
            await sim.add(account.email)
            async with asyncio.timeout(10):
                request_line, headers, body = await received.get()
        finally:
            await sim.set_push()
    assert request_line.startswith("POST /webhooks/google")
    assert "authorization" not in headers
    assert json.loads(body)["message"]["data"]
    # The simulator records the answer just after our receiver sent it.
    [delivery] = await _settled(sim, account.email)
    assert delivery["authorization"] is None and delivery["status"] == "delivered"
