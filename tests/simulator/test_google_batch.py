"""`POST /batch/gmail/v1`: Google's multipart/mixed batch format, parts counted one by one."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from email.parser import BytesParser
from email.policy import HTTP
from typing import Any

import httpx
import pytest

from app.simulator.server import SimulatorServer
from tests.providers.gmail.sim import GoogleSim, SimAccount, google_sim


@pytest.fixture
async def sim(simulator: SimulatorServer) -> AsyncIterator[GoogleSim]:
    async with google_sim(simulator) as client:
        yield client


def _batch_body(requests: list[tuple[str, str, dict[str, str]]], boundary: str = "zz") -> bytes:
    chunks = []
    for content_id, target, headers in requests:
        inner = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        chunks.append(
            f"--{boundary}\r\nContent-Type: application/http\r\nContent-ID: <{content_id}>\r\n\r\n"
            f"GET {target}\r\n{inner}\r\n"
        )
    return ("".join(chunks) + f"--{boundary}--\r\n").encode()


def _parse(response: httpx.Response) -> list[dict[str, Any]]:
    """Split a batch answer with the stdlib MIME parser: independent of the simulator's code."""
    message = BytesParser(policy=HTTP).parsebytes(
        f"Content-Type: {response.headers['content-type']}\r\n\r\n".encode() + response.content
    )
    parts = []
    for part in message.iter_parts():
        assert part.get_content_type() == "application/http"
        http = part.get_payload(decode=False)
        assert isinstance(http, str)
        head, _, body = http.partition("\r\n\r\n")
        status_line, *header_lines = head.split("\r\n")
        headers = {k.lower(): v.strip() for k, _, v in (h.partition(":") for h in header_lines)}
        parts.append(
            {
                "content_id": part["Content-ID"],
                "status": int(status_line.split()[1]),
                "headers": headers,
                "body": json.loads(body) if body.strip() else None,
            }
        )
    return parts


async def _batch(
    sim: GoogleSim, account: SimAccount | None, body: bytes, boundary: str = "zz"
) -> httpx.Response:
    headers = {"Content-Type": f"multipart/mixed; boundary={boundary}"}
    if account is not None:
        headers.update(account.auth)
    return await sim.http.post("/batch/gmail/v1", content=body, headers=headers)


async def test_batch_answers_each_part_in_order(sim: GoogleSim) -> None:
    account = await sim.create_account(messages=60)
    truth = await sim.truth(account.email)
    ids = [m["id"] for m in truth[:30]]
    requests: list[tuple[str, str, dict[str, str]]] = [
        (f"item{n}:42@example.com", f"/gmail/v1/users/me/messages/{i}?format=metadata"
         "&metadataHeaders=Subject", {})
        for n, i in enumerate(ids)
    ]  # fmt: skip
    requests.append(("missing", "/gmail/v1/users/me/messages/0123456789abcdef?format=minimal", {}))
    before = await sim.counters(account.email)
    response = await _batch(sim, account, _batch_body(requests))
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("multipart/mixed; boundary=")
    parts = _parse(response)
    assert len(parts) == 31
    for n, (part, expected) in enumerate(zip(parts, truth[:30], strict=False)):
        assert part["content_id"] == f"<response-item{n}:42@example.com>"
        assert part["status"] == 200
        assert part["headers"]["content-type"].startswith("application/json")
        assert part["body"]["id"] == expected["id"]
        assert part["body"]["payload"]["headers"] == [
            {"name": "Subject", "value": expected["subject"]}
        ]
    assert parts[30]["content_id"] == "<response-missing>"
    assert parts[30]["status"] == 404
    assert parts[30]["body"]["error"]["errors"][0]["reason"] == "notFound"
    after = await sim.counters(account.email)
    # Each part is a request of its own for counting and quota (5 units per get).
    assert after["requests"] - before["requests"] == 31
    assert after["quota_units"] - before["quota_units"] == 30 * 5 + 5


async def test_part_authorization_overrides_the_outer_one(sim: GoogleSim) -> None:
    alice = await sim.create_account(messages=5)
    bob = await sim.create_account(messages=5)
    body = _batch_body(
        [
            ("a", "/gmail/v1/users/me/profile", {}),
            ("b", "/gmail/v1/users/me/profile", bob.auth),
            ("c", "/gmail/v1/users/me/profile", {"Authorization": "Bearer nope"}),
        ]
    )
    parts = _parse(await _batch(sim, alice, body))
    assert [p["status"] for p in parts] == [200, 200, 401]
    assert parts[0]["body"]["emailAddress"] == alice.email
    assert parts[1]["body"]["emailAddress"] == bob.email
    anonymous = _parse(
        await _batch(sim, None, _batch_body([("a", "/gmail/v1/users/me/profile", {})]))
    )
    assert anonymous[0]["status"] == 401


async def test_more_than_100_parts_is_rejected(sim: GoogleSim) -> None:
    account = await sim.create_account(messages=5)
    hundred: list[tuple[str, str, dict[str, str]]] = [
        (str(n), "/gmail/v1/users/me/profile", {}) for n in range(100)
    ]
    assert (await _batch(sim, account, _batch_body(hundred))).status_code == 200
    response = await _batch(
        sim, account, _batch_body([*hundred, ("x", "/gmail/v1/users/me/profile", {})])
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == 400


async def test_malformed_batches_are_400(sim: GoogleSim) -> None:
    account = await sim.create_account(messages=5)
    not_multipart = await sim.http.post(
        "/batch/gmail/v1",
        content=b"{}",
        headers={**account.auth, "Content-Type": "application/json"},
    )
    assert not_multipart.status_code == 400
    wrong_part_type = (
        b"--zz\r\nContent-Type: text/plain\r\n\r\nGET /gmail/v1/users/me/profile\r\n\r\n--zz--\r\n"
    )
    assert (await _batch(sim, account, wrong_part_type)).status_code == 400
