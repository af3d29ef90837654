"""/cases: the shape of a case, whose it is, and every bad input a 4xx with the error shape."""

from __future__ import annotations

import json
import uuid
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import bearer

A = "counsel@lawfirm.example"
B = "adjuster@insurer.example"


async def connect(api: httpx.AsyncClient, user: str, email: str, **extra: Any) -> dict[str, Any]:
    response = await api.post(
        "/mail/connect",
        json={
            "provider": "microsoft",
            "access_token": "at-" + uuid.uuid4().hex,
            "refresh_token": "rt-" + uuid.uuid4().hex,
            "expires_in": 3600,
            "email": email,
            **extra,
        },
        headers=bearer(user),
    )
    assert response.status_code == 202, response.text
    return dict(response.json())


def error(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, (response.status_code, response.text)
    body = response.json()
    assert set(body["error"]) == {"code", "message"}
    return str(body["error"]["code"])


async def test_connect_takes_a_scope_and_keeps_it(api: httpx.AsyncClient) -> None:
    full = await connect(api, "ann", "ann@contoso.example")
    assert full["scope"] == "full"  # the connect contract is unchanged by default
    cases = await connect(api, "ann", "ann.cases@contoso.example", scope="cases")
    assert cases["scope"] == "cases"
    again = await connect(api, "ann", "ann.cases@contoso.example", scope="cases")
    assert again["mailbox_id"] == cases["mailbox_id"]
    status = (await api.get("/mail/status", headers=bearer("ann"))).json()
    assert {m["mailbox_id"]: m["scope"] for m in status["mailboxes"]} == {
        full["mailbox_id"]: "full",
        cases["mailbox_id"]: "cases",
    }
    switched = await api.post(
        "/mail/connect",
        json={
            "provider": "microsoft",
            "access_token": "a",
            "refresh_token": "r",
            "expires_in": 3600,
            "email": "ann@contoso.example",
            "scope": "cases",
        },
        headers=bearer("ann"),
    )
    assert error(switched, 409) == "scope_conflict"
    bad = await api.post(
        "/mail/connect",
        json={"provider": "microsoft", "auth": "delegated", "scope": "some"},
        headers=bearer("ann"),
    )
    error(bad, 422)


async def test_a_case_is_created_read_changed_and_owned(api: httpx.AsyncClient) -> None:
    mailbox = (await connect(api, "olga", "olga@contoso.example"))["mailbox_id"]
    body = {"title": "Smith v. Jones", "mailbox_ids": [mailbox], "contacts": [A, A.upper(), B]}
    created = await api.put("/cases/smith:v-jones_2024.1", json=body, headers=bearer("olga"))
    assert created.status_code == 201, created.text
    case = created.json()
    assert case["case_id"] == "smith:v-jones_2024.1"
    assert case["title"] == "Smith v. Jones"
    assert case["contacts"] == [A, B]  # lower-cased, once each
    assert case["status"] == "pending"
    [entries] = case["mailboxes"]
    assert entries["mailbox_id"] == mailbox
    assert [(c["email"], c["status"], c["found"], c["linked"]) for c in entries["contacts"]] == [
        (A, "pending", 0, 0),
        (B, "pending", 0, 0),
    ]
    updated = await api.put(
        "/cases/smith:v-jones_2024.1",
        json={"mailbox_ids": [mailbox], "contacts": [B], "since": "2023-02-01"},
        headers=bearer("olga"),
    )
    assert updated.status_code == 200
    assert updated.json()["contacts"] == [B]
    assert updated.json()["since"] == "2023-02-01"
    added = await api.post(
        "/cases/smith:v-jones_2024.1/contacts", json={"email": A}, headers=bearer("olga")
    )
    assert added.status_code == 200 and added.json()["contacts"] == [B, A]
    listed = await api.get("/cases/smith:v-jones_2024.1/messages", headers=bearer("olga"))
    assert listed.json() == {"items": [], "next_cursor": None}

    # Another user sees none of it, and cannot reach it by any route.
    for method, path, payload in (
        ("GET", "/cases/smith:v-jones_2024.1", None),
        ("GET", "/cases/smith:v-jones_2024.1/messages", None),
        ("POST", "/cases/smith:v-jones_2024.1/contacts", {"email": A}),
        ("DELETE", f"/cases/smith:v-jones_2024.1/contacts/{A}", None),
        ("DELETE", "/cases/smith:v-jones_2024.1", None),
    ):
        response = await api.request(method, path, json=payload, headers=bearer("mallory"))
        error(response, 404)
    # Nor use her mailbox in a case of theirs; the same case id is theirs to have.
    theirs = await api.put(
        "/cases/smith:v-jones_2024.1",
        json={"mailbox_ids": [mailbox], "contacts": [A]},
        headers=bearer("mallory"),
    )
    assert error(theirs, 404) == "mailbox_not_found"
    own = await api.put(
        "/cases/smith:v-jones_2024.1", json={"mailbox_ids": [], "contacts": [A]},
        headers=bearer("mallory"),
    )  # fmt: skip
    assert own.status_code == 201
    assert own.json()["status"] == "complete"  # no mailbox: nothing to find
    mine = await api.get("/cases/smith:v-jones_2024.1", headers=bearer("olga"))
    assert mine.json()["contacts"] == [B, A]
    assert (await api.get("/cases/anything")).status_code == 401


@pytest.mark.parametrize(
    ("path", "body", "status"),
    [
        ("/cases/c1", {"mailbox_ids": [], "contacts": ["not-an-address"]}, 422),
        ("/cases/c1", {"mailbox_ids": [], "contacts": [f"p{i}@x.example" for i in range(10_000)]}, 422),
        ("/cases/" + "x" * 10_240, {"mailbox_ids": [], "contacts": [A]}, 422),
        ("/cases/" + "x" * 201, {"mailbox_ids": [], "contacts": [A]}, 422),
        ("/cases/a%20b", {"mailbox_ids": [], "contacts": [A]}, 422),
        ("/cases/a$b", {"mailbox_ids": [], "contacts": [A]}, 422),
        ("/cases/c1", {"mailbox_ids": [str(uuid.uuid4())], "contacts": [A]}, 404),
        ("/cases/c1", {"mailbox_ids": ["nope"], "contacts": [A]}, 422),
        ("/cases/c1", {"mailbox_ids": []}, 422),
        ("/cases/c1", {"mailbox_ids": [], "contacts": [A], "owner": "someone"}, 422),
        ("/cases/c1", {"mailbox_ids": [], "contacts": [A], "since": "last week"}, 422),
        ("/cases/c1", {"mailbox_ids": [], "contacts": [A], "title": "t" * 501}, 422),
        ("/cases/c1", [A], 422),
    ],
)  # fmt: skip
async def test_bad_case_input_is_a_4xx(
    api: httpx.AsyncClient, path: str, body: Any, status: int
) -> None:
    error(await api.put(path, json=body, headers=bearer("vic")), status)


async def test_bad_contact_and_listing_input_is_a_4xx(api: httpx.AsyncClient) -> None:
    await api.put("/cases/c2", json={"mailbox_ids": [], "contacts": [A]}, headers=bearer("val"))
    headers = bearer("val")
    error(await api.post("/cases/c2/contacts", json={"email": "x"}, headers=headers), 422)
    error(await api.post("/cases/c2/contacts", json={}, headers=headers), 422)
    error(await api.post("/cases/none/contacts", json={"email": A}, headers=headers), 404)
    error(await api.delete("/cases/c2/contacts/not-an-address", headers=headers), 422)
    error(await api.delete(f"/cases/c2/contacts/{B}", headers=headers), 404)
    error(await api.get("/cases/c2/messages?cursor=garbage", headers=headers), 400)
    error(await api.get("/cases/c2/messages?limit=0", headers=headers), 422)
    error(await api.get("/cases/c2/messages?limit=501", headers=headers), 422)
    error(await api.get("/cases/missing/messages", headers=headers), 404)


async def test_a_case_holds_at_most_1000_contacts(api: httpx.AsyncClient) -> None:
    contacts = [f"person{i}@firm.example" for i in range(1000)]
    full = await api.put(
        "/cases/big", json={"mailbox_ids": [], "contacts": contacts}, headers=bearer("wes")
    )
    assert full.status_code == 201
    more = await api.post("/cases/big/contacts", json={"email": A}, headers=bearer("wes"))
    assert error(more, 409) == "too_many_contacts"
    known = await api.post(
        "/cases/big/contacts", json={"email": contacts[5]}, headers=bearer("wes")
    )
    assert known.status_code == 200  # adding one it has is no change


case_like = st.fixed_dictionaries(
    {},
    optional={
        "title": st.none() | st.text(max_size=20) | st.integers(),
        "mailbox_ids": st.lists(st.uuids().map(str) | st.text(max_size=10), max_size=3)
        | st.text(max_size=10),
        "contacts": st.lists(st.emails() | st.text(max_size=20), max_size=3) | st.none(),
        "since": st.dates().map(str) | st.text(max_size=12) | st.integers(),
    },
)


@settings(
    max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    case_id=st.text(max_size=30),
    body=case_like,
    cursor=st.text(max_size=40),
)
def test_fuzzed_case_requests_never_500(
    fuzz_client: TestClient, case_id: str, body: Any, cursor: str
) -> None:
    headers = {**bearer("fuzzer"), "content-type": "application/json"}
    path = "/cases/" + quote(case_id, safe="")
    for response in (
        fuzz_client.put(path, content=json.dumps(body), headers=headers),
        fuzz_client.get(f"{path}/messages", params={"cursor": cursor}, headers=headers),
        fuzz_client.post(f"{path}/contacts", content=json.dumps(body), headers=headers),
    ):
        assert response.status_code < 500, (response.status_code, response.text)
        if response.status_code >= 400:
            assert set(response.json()["error"]) == {"code", "message"}
