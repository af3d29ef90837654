"""Whatever a client sends, the answer is a JSON error with a 4xx, or a success: never a 500."""

from __future__ import annotations

import base64
import contextlib
import json
from typing import Any

import httpx
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.providers.gmail.push import GmailPush, decode_push
from tests.conftest import bearer

json_scalars = (
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40)
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=12,
)
connect_like = st.fixed_dictionaries(
    {},
    optional={
        "provider": st.sampled_from(["google", "microsoft", "yahoo", ""]) | json_values,
        "auth": st.sampled_from(["delegated", "application", "x"]) | json_values,
        "access_token": st.text(max_size=30) | json_values,
        "refresh_token": st.text(max_size=30) | json_values,
        "expires_in": st.integers(min_value=-(2**70), max_value=2**70) | json_values,
        "email": st.emails() | st.text(max_size=30),
        "tenant_id": st.text(max_size=20),
        "user_id": st.text(max_size=20),
        "mailbox_id": st.uuids().map(str) | st.text(max_size=40),
        "purge": json_values,
    },
)
FUZZ = settings(
    max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def _assert_sane(response: Any) -> None:
    assert response.status_code < 500, (response.status_code, response.text)
    if response.status_code >= 400:
        assert set(response.json()["error"]) == {"code", "message"}


@FUZZ
@given(body=connect_like | json_values)
def test_fuzzed_bodies_never_500(fuzz_client: TestClient, body: Any) -> None:
    headers = bearer("fuzzer")
    for path in ("/mail/connect", "/mail/disconnect"):
        _assert_sane(
            fuzz_client.post(
                path,
                content=json.dumps(body),
                headers={**headers, "content-type": "application/json"},
            )
        )


@FUZZ
@given(raw=st.binary(max_size=200))
def test_fuzzed_bytes_never_500(fuzz_client: TestClient, raw: bytes) -> None:
    headers = bearer("fuzzer")
    for path in ("/mail/connect", "/mail/disconnect", "/webhooks/microsoft", "/webhooks/google"):
        _assert_sane(
            fuzz_client.post(
                path, content=raw, headers={**headers, "content-type": "application/json"}
            )
        )


@FUZZ
@given(
    params=st.dictionaries(
        st.sampled_from(["mailbox_id", "limit", "cursor", "other"]),
        st.text(max_size=60),
        max_size=3,
    ),
    auth=st.text(max_size=60),
)
def test_fuzzed_queries_and_headers_never_500(
    fuzz_client: TestClient, params: dict[str, str], auth: str
) -> None:
    _assert_sane(fuzz_client.get("/mail/messages", params=params, headers=bearer("fuzzer")))
    try:
        headers = {"Authorization": auth}
        _assert_sane(fuzz_client.get("/mail/status", headers=headers))
    except UnicodeEncodeError:
        pass  # not a header any HTTP client can send


# Graph's notification fields, each with a value of any JSON type.
graph_item = st.fixed_dictionaries(
    {},
    optional={
        key: st.text(max_size=20) | json_values
        for key in (
            "subscriptionId",
            "clientState",
            "changeType",
            "lifecycleEvent",
            "resource",
            "tenantId",
            "organizationId",
            "subscriptionExpirationDateTime",
        )
    }
    | {
        "resourceData": st.fixed_dictionaries(
            {}, optional={"id": json_values, "@odata.etag": json_values}
        )
        | json_values
    },
)


@FUZZ
@given(
    document=st.fixed_dictionaries({"value": st.lists(graph_item, max_size=4)})
    | st.fixed_dictionaries({"value": json_values})
    | json_values,
    validation=st.none() | st.text(max_size=30),
)
def test_fuzzed_graph_notifications_never_500(
    fuzz_client: TestClient, document: Any, validation: str | None
) -> None:
    params = {"validationToken": validation} if validation is not None else {}
    _assert_sane(
        fuzz_client.post("/webhooks/microsoft", params=params, content=json.dumps(document))
    )


def _b64(data: bytes, urlsafe: bool) -> str:
    return (base64.urlsafe_b64encode if urlsafe else base64.b64encode)(data).decode()


@FUZZ
@given(
    payload=st.fixed_dictionaries(
        {}, optional={"emailAddress": st.emails() | json_values, "historyId": json_values}
    )
    | json_values,
    message=st.fixed_dictionaries(
        {}, optional={"messageId": json_values | st.text(max_size=20), "attributes": json_values}
    ),
    raw_data=st.none() | st.binary(max_size=60),
    urlsafe=st.booleans(),
)
def test_fuzzed_push_envelopes_decode_or_raise_value_error(
    payload: Any, message: dict[str, Any], raw_data: bytes | None, urlsafe: bool
) -> None:
    data = raw_data if raw_data is not None else json.dumps(payload).encode()
    envelope = {"message": {**message, "data": _b64(data, urlsafe)}, "subscription": "s"}
    try:
        push = decode_push(json.dumps(envelope).encode())
    except ValueError:
        return
    assert isinstance(push, GmailPush) and push.history_id > 0 and "@" in push.email_address


read_params = st.dictionaries(
    st.sampled_from(
        ["mailbox_id", "limit", "cursor", "label", "from", "to", "participant", "after",
         "before", "unread", "has_attachments", "q", "format", "allow_remote_images"]
    ),
    st.text(max_size=60) | st.sampled_from(["true", "false", "2024-01-01", "2024-01-01T00:00:00Z"]),
    max_size=5,
)  # fmt: skip


@FUZZ
@given(params=read_params, ident=st.text(max_size=30) | st.integers().map(str))
def test_fuzzed_read_parameters_never_500(
    fuzz_client: TestClient, params: dict[str, str], ident: str
) -> None:
    headers = bearer("fuzzer")
    paths = ["/mail/messages", "/mail/threads"]
    if ident and "/" not in ident and "?" not in ident and "#" not in ident:
        paths += [
            f"/mail/messages/{ident}",
            f"/mail/messages/{ident}/body",
            f"/mail/messages/{ident}/attachments",
            f"/mail/messages/{ident}/attachments/{ident}",
            f"/mail/threads/{ident}",
            f"/mail/mailboxes/{ident}",
        ]
    for path in paths:
        # A path httpx refuses to send is not one any client can send.
        with contextlib.suppress(UnicodeEncodeError, httpx.InvalidURL):
            _assert_sane(fuzz_client.get(path, params=params, headers=headers))
