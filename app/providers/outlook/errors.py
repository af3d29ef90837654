"""Graph answers → the engine's error taxonomy, decided in this one place."""

from __future__ import annotations

from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

import httpx

from app.providers.base import (
    AccessDenied,
    AccessTokenRejected,
    CursorInvalidError,
    PermanentError,
    ProviderError,
    ThrottledError,
    TransientError,
)

# Graph throttles with 429; 503 and 504 come with Retry-After under load too.
THROTTLE_STATUSES = frozenset({429, 503, 504})
# Delta-query state errors: the token is dead, start the round again without it.
CURSOR_INVALID_CODES = frozenset({"syncstatenotfound", "resyncrequired", "syncstateinvalid"})
# What Graph answers an app-only token whose application may not read the mailbox: its
# admin consent was withdrawn (a token minted since carries no Mail.Read role), or an
# application access policy leaves the mailbox out.
ACCESS_DENIED_CODES = frozenset(
    {"erroraccessdenied", "accessdenied", "authorization_requestdenied"}
)
APP_ACCESS_DENIED = (
    "Graph refused the application access to this mailbox ({code}): the tenant's admin "
    "consent to Mail.Read was withdrawn, or an application access policy leaves the mailbox "
    "out; a tenant administrator must grant it again, then reconnect the mailbox"
)


class GraphRequestError(PermanentError):
    """A 4xx Graph will keep refusing; keeps status and code for callers that can recover."""

    def __init__(self, status: int, code: str | None, message: str) -> None:
        super().__init__(f"Graph answered {status} {code or ''}: {message}".replace("  ", " "))
        self.status = status
        self.code = code
        self.graph_message = message


def graph_error_detail(response: httpx.Response) -> tuple[str | None, str]:
    """(error.code, error.message) from a Graph error body, tolerating any shape."""
    try:
        body = response.json()
    except ValueError:
        return None, response.text[:200]
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        return None, str(body)[:200]
    code = error.get("code")
    return (str(code) if code is not None else None), str(error.get("message", ""))[:500]


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header: delta-seconds (fractions allowed) or an HTTP date."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return max(0.0, (moment - datetime.now(UTC)).total_seconds())


def is_concurrency_refusal(response: httpx.Response) -> bool:
    """A 429 for the mailbox's concurrent-request limit ("...MailboxConcurrency limit"),
    which Graph sends with or without Retry-After."""
    if response.status_code != 429:
        return False
    _, message = graph_error_detail(response)
    return "concurrency" in message.lower()


def error_for_response(response: httpx.Response, *, app_only: bool = False) -> ProviderError:
    status = response.status_code
    code, message = graph_error_detail(response)
    if status == 401:
        return AccessTokenRejected(f"Graph rejected the access token ({code or 401})")
    if status == 403 and app_only and (code or "").lower() in ACCESS_DENIED_CODES:
        return AccessDenied(APP_ACCESS_DENIED.format(code=f"403 {code}"))
    if status == 410 or (code or "").lower() in CURSOR_INVALID_CODES:
        return CursorInvalidError(f"Graph delta state is gone ({code or status}): {message}")
    if status in THROTTLE_STATUSES:
        return ThrottledError(
            f"Graph throttled the request ({status} {code or ''})".strip(),
            retry_after=parse_retry_after(response.headers.get("Retry-After")),
        )
    if status >= 500:
        return TransientError(f"Graph server error {status} {code or ''}: {message}".strip())
    return GraphRequestError(status, code, message)
