"""Every Gmail and Google OAuth answer is classified here, and only here.

Google's error envelope is `{"error": {"code", "message", "errors": [{"reason", ...}],
"status"}}`; `reason` tells a per-user quota refusal (userRateLimitExceeded, sent as 429
or, by older endpoints, 403) from a permission problem with the same status code.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

from app.providers.base import (
    AccessTokenRejected,
    AuthExpiredError,
    CursorInvalidError,
    MessageGone,
    PermanentError,
    ProviderError,
    ThrottledError,
    TransientError,
)

RATE_LIMIT_REASONS = frozenset({"rateLimitExceeded", "userRateLimitExceeded"})
_CONCURRENCY_MESSAGE = "too many concurrent requests"
# "User-rate limit exceeded.  Retry after 2024-05-01T12:00:00.123Z"
_RETRY_AFTER_IN_MESSAGE = re.compile(r"Retry after (\d{4}-\d\d-\d\dT[0-9:.]+(?:Z|[+-]\d\d:\d\d))")


class MessageNotFound(MessageGone):
    """A message id Gmail no longer knows (deleted since it was listed)."""


class ConcurrencyLimited(ThrottledError):
    """Gmail's per-user concurrency limit: "Too many concurrent requests for user" (429,
    reason rateLimitExceeded, no Retry-After). Nothing is wrong with the quota: fewer
    requests at once, after a short backoff, is the cure."""


def google_error(body: bytes) -> tuple[str, str]:
    """(reason, message) of a Google error body; empty strings when it has none."""
    try:
        parsed: Any = json.loads(body)
    except ValueError:
        return "", ""
    error = parsed.get("error") if isinstance(parsed, dict) else None
    if not isinstance(error, dict):
        return "", ""
    message = str(error.get("message") or "")
    details = error.get("errors")
    reason = ""
    if isinstance(details, list) and details and isinstance(details[0], dict):
        reason = str(details[0].get("reason") or "")
    return reason or str(error.get("status") or ""), message


def retry_after_seconds(
    headers: Mapping[str, str], message: str, *, now: datetime | None = None
) -> float | None:
    """How long Google asked us to wait, or None when it did not say.

    The quota message names the instant ("Retry after <RFC 3339>"), which is finer than
    the whole seconds of a Retry-After header, so it wins when both are present.
    """
    now = now or datetime.now(UTC)
    found = _RETRY_AFTER_IN_MESSAGE.search(message)
    if found is not None:
        try:
            when = datetime.fromisoformat(found.group(1).replace("Z", "+00:00"))
        except ValueError:
            when = None
        if when is not None:
            return max(0.0, (when - now).total_seconds())
    header = headers.get("retry-after")
    if header is None:
        return None
    header = header.strip()
    if header.isdigit():
        return float(header)
    try:
        return max(0.0, (parsedate_to_datetime(header) - now).total_seconds())
    except (TypeError, ValueError):
        return None


def classify(
    status: int, headers: Mapping[str, str], body: bytes, *, operation: str
) -> ProviderError:
    """The ProviderError for a non-2xx Gmail answer to `operation` (e.g. users.history.list)."""
    reason, message = google_error(body)
    detail = f"Gmail {operation}: HTTP {status}" + (f" {reason}" if reason else "")
    if status == 401:
        return AccessTokenRejected(detail)
    if status in (429, 403) and _CONCURRENCY_MESSAGE in message.lower():
        return ConcurrencyLimited(f"{detail}: {message}")
    if status == 429 or (status == 403 and reason in RATE_LIMIT_REASONS):
        # Gmail names the instant to retry only in the message; no Retry-After header.
        return ThrottledError(detail, retry_after=retry_after_seconds(headers, message))
    if status == 404 and operation == "users.history.list":
        return CursorInvalidError(f"{detail}: startHistoryId is no longer available")
    if status == 404:
        return MessageNotFound(detail)
    if status == 503:
        return ThrottledError(detail, retry_after=retry_after_seconds(headers, message))
    if status >= 500:
        return TransientError(detail, retry_after=retry_after_seconds(headers, message))
    return PermanentError(f"{detail}: {message}" if message else detail)


def classify_token_error(status: int, body: bytes) -> ProviderError:
    """The ProviderError for a refused refresh at Google's token endpoint (RFC 6749 body)."""
    try:
        parsed: Any = json.loads(body)
    except ValueError:
        parsed = None
    if not isinstance(parsed, dict):
        parsed = {}
    error = str(parsed.get("error") or "")
    description = str(parsed.get("error_description") or "")
    detail = f"{error}: {description}" if description else error or f"HTTP {status}"
    if error == "invalid_grant":
        # Revoked, expired or unknown grant: shown to the user, so Google's own words.
        return AuthExpiredError(f"Google refused the refresh token ({detail})")
    if status == 429:
        return ThrottledError(f"Google token endpoint throttled ({detail})")
    if status >= 500:
        return TransientError(f"Google token endpoint failed ({detail})")
    # invalid_client, unauthorized_client...: our OAuth client, not the user's grant.
    return PermanentError(f"Google token endpoint refused the request ({detail})")


def is_retryable(error: ProviderError) -> bool:
    """Worth another try inside the client: throttling, 5xx and network trouble."""
    return isinstance(error, TransientError)
