"""GraphClient's retry and error classification, with scripted Graph answers."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import httpx
import pytest

from app.providers.base import (
    AccessTokenRejected,
    Account,
    CursorInvalidError,
    PermanentError,
    SyncContext,
    ThrottledError,
    TransientError,
)
from app.providers.outlook.client import GraphClient
from app.providers.outlook.errors import GraphRequestError, parse_retry_after
from tests.providers.outlook.support import SemaphoreGate

BASE = "https://graph.test/v1.0"


def graph(
    responses: list[httpx.Response],
) -> tuple[GraphClient, SyncContext, SemaphoreGate, list[str]]:
    tokens_used: list[str] = []
    script = iter(responses)

    def handler(request: httpx.Request) -> httpx.Response:
        tokens_used.append(request.headers["Authorization"])
        return next(script)

    counter = iter(range(1000))

    async def token() -> str:
        return f"token-{next(counter)}"

    gate = SemaphoreGate(4)
    client = GraphClient(
        httpx.AsyncClient(transport=httpx.MockTransport(handler)), BASE, backoff_base=0.001
    )
    ctx = SyncContext(Account(provider="microsoft", mailbox_id="m"), token, gate)
    return client, ctx, gate, tokens_used


def error(status: int, code: str, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.Response(status, json={"error": {"code": code, "message": code}}, headers=headers)


async def test_retry_after_pauses_the_gate_and_each_attempt_gets_a_fresh_token() -> None:
    client, ctx, gate, tokens = graph(
        [error(429, "TooManyRequests", {"Retry-After": "0.01"}), httpx.Response(200, json={})]
    )
    response = await client.request(ctx, "GET", "me")
    assert response.status_code == 200
    assert [seconds for _, seconds in gate.pauses] == [0.01]
    assert tokens == ["Bearer token-0", "Bearer token-1"]


async def test_throttling_without_retry_after_backs_off_then_gives_up() -> None:
    client, ctx, gate, tokens = graph([error(503, "ServiceUnavailable")] * 5)
    with pytest.raises(ThrottledError) as raised:
        await client.request(ctx, "GET", "me")
    assert raised.value.retry_after is not None
    assert len(tokens) == 5
    assert gate.pauses == []


async def test_a_long_retry_after_is_handed_to_the_engine() -> None:
    client, ctx, gate, tokens = graph([error(429, "TooManyRequests", {"Retry-After": "120"})])
    with pytest.raises(ThrottledError) as raised:
        await client.request(ctx, "GET", "me")
    assert raised.value.retry_after == 120
    assert [seconds for _, seconds in gate.pauses] == [120]
    assert len(tokens) == 1


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        (error(401, "InvalidAuthenticationToken"), AccessTokenRejected),
        (error(410, "syncStateNotFound"), CursorInvalidError),
        (error(400, "resyncRequired"), CursorInvalidError),
        (error(500, "generalException"), TransientError),
        (error(502, "BadGateway"), TransientError),
        (error(403, "ErrorAccessDenied"), PermanentError),
        (error(404, "ErrorItemNotFound"), GraphRequestError),
        (httpx.Response(400, text="<html>bad</html>"), PermanentError),
    ],
)
async def test_status_classification(response: httpx.Response, expected: type[Exception]) -> None:
    client, ctx, _, _ = graph([response])
    with pytest.raises(expected):
        await client.request(ctx, "GET", "me")


async def test_network_errors_are_transient() -> None:
    def fail(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    async def token() -> str:
        return "t"

    client = GraphClient(httpx.AsyncClient(transport=httpx.MockTransport(fail)), BASE)
    ctx = SyncContext(Account(provider="microsoft", mailbox_id="m"), token, SemaphoreGate(1))
    with pytest.raises(TransientError):
        await client.request(ctx, "GET", "me")


@pytest.mark.parametrize(
    ("value", "check"),
    [
        ("3", lambda s: s == 3.0),
        ("0.25", lambda s: s == 0.25),
        (None, lambda s: s is None),
        ("soon", lambda s: s is None),
    ],
)
def test_retry_after_parsing(value: str | None, check: Callable[[float | None], bool]) -> None:
    assert check(parse_retry_after(value))


def test_retry_after_http_date() -> None:
    # Built when the test runs: a date computed at collection time would age.
    value = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    seconds = parse_retry_after(value)
    assert seconds is not None and 25 < seconds <= 30


def test_only_graph_links_are_followed() -> None:
    client = GraphClient(httpx.AsyncClient(), BASE)
    assert client.is_graph_url(f"{BASE}/me/mailFolders('x')/messages/delta?$deltatoken=a")
    assert not client.is_graph_url("https://elsewhere.test/v1.0/me")
    assert client.url("me/messages") == f"{BASE}/me/messages"
