"""The pure webhook helpers: parsing Graph notification bodies and checking clientState."""

from __future__ import annotations

import json

import pytest

from app.providers.outlook.notifications import (
    GraphNotification,
    client_state_matches,
    parse_notifications,
)

CHANGE = {
    "subscriptionId": "7f105c7d-2dc5-4530-97cd-4e7ae6534c07",
    "subscriptionExpirationDateTime": "2026-11-29T23:00:00.000Z",
    "changeType": "created",
    "resource": "Users/ab12/Messages/AAkALgAA",
    "resourceData": {
        "@odata.type": "#Microsoft.Graph.Message",
        "@odata.id": "Users/ab12/Messages/AAkALgAA",
        "@odata.etag": 'W/"CQAAABYAAAA"',
        "id": "AAkALgAA",
    },
    "clientState": "secretClientValue",
    "tenantId": "84bd8158-6d4d-4958-8b9f-9d6445542f95",
}
LIFECYCLE = {
    "subscriptionId": "7f105c7d-2dc5-4530-97cd-4e7ae6534c07",
    "subscriptionExpirationDateTime": "2026-11-29T23:00:00.000Z",
    "tenantId": "84bd8158-6d4d-4958-8b9f-9d6445542f95",
    "clientState": "secretClientValue",
    "lifecycleEvent": "reauthorizationRequired",
}


def test_change_and_lifecycle_notifications_parse() -> None:
    change, lifecycle = parse_notifications(json.dumps({"value": [CHANGE, LIFECYCLE]}).encode())
    assert change == GraphNotification(
        subscription_id=CHANGE["subscriptionId"],  # type: ignore[arg-type]
        client_state="secretClientValue",
        change_type="created",
        resource="Users/ab12/Messages/AAkALgAA",
        resource_id="AAkALgAA",
        lifecycle_event=None,
        tenant_id="84bd8158-6d4d-4958-8b9f-9d6445542f95",
        etag='W/"CQAAABYAAAA"',
    )
    assert change.kind == "change:created"
    assert "secretClientValue" not in str(change.recorded())
    assert lifecycle.lifecycle_event == "reauthorizationRequired"
    assert lifecycle.kind == "lifecycle:reauthorizationRequired"
    assert lifecycle.change_type is None
    assert lifecycle.resource_id is None


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"not json",
        b"\xff\xfe",
        b"[]",
        b'{"value": {}}',
        b'{"value": ["x"]}',
        b'{"value": [{"changeType": "created"}]}',
        b'{"value": [{"subscriptionId": "s"}]}',
        b'{"value": [{"subscriptionId": 5, "changeType": "created"}]}',
        b'{"value": [{"subscriptionId": "s", "changeType": "created", "clientState": 1}]}',
        b'{"value": [{"subscriptionId": "s\\u0000", "changeType": "created"}]}',
        b'{"value": [{"subscriptionId": "' + b"s" * 3000 + b'", "changeType": "created"}]}',
        b'{"value": [' + b",".join([b'{"subscriptionId": "s", "changeType": "x"}'] * 1001) + b"]}",
        b"[" * 2000 + b"]" * 2000,
    ],
)
def test_malformed_bodies_raise_value_error(body: bytes) -> None:
    with pytest.raises(ValueError):
        parse_notifications(body)


def test_empty_collection_is_no_notifications() -> None:
    assert parse_notifications(b'{"value": []}') == []


def test_client_state_comparison() -> None:
    assert client_state_matches("abc", "abc")
    assert not client_state_matches("abc", "abd")
    assert not client_state_matches("abc", None)
    assert not client_state_matches("", "")
    assert not client_state_matches("abc", "ab")


def test_redeliveries_share_a_dedup_key_and_new_versions_do_not() -> None:
    def parsed(item: dict) -> GraphNotification:
        (notification,) = parse_notifications(json.dumps({"value": [item]}).encode())
        return notification

    same = parsed(CHANGE).dedup_key
    assert same is not None and same == parsed(dict(CHANGE)).dedup_key
    # Another update of the same message carries another etag: a change of its own.
    newer = {**CHANGE, "resourceData": {**CHANGE["resourceData"], "@odata.etag": 'W/"CQB"'}}
    assert parsed(newer).dedup_key != same
    assert parsed({**CHANGE, "changeType": "updated"}).dedup_key != same
    # The key never carries the clientState.
    assert parsed({**CHANGE, "clientState": "other"}).dedup_key == same
    assert parsed(LIFECYCLE).dedup_key is None


def test_exchange_lifecycle_notifications_name_the_organization() -> None:
    exchange = {k: v for k, v in LIFECYCLE.items() if k != "tenantId"}
    exchange["organizationId"] = "org-1"
    (notification,) = parse_notifications(json.dumps({"value": [exchange]}).encode())
    assert notification.tenant_id == "org-1"
