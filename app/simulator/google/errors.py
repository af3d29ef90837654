"""Google's JSON error envelope, as the Gmail API and the batch endpoint answer it.

Every Google API error has the same shape: `{"error": {"code", "message", "errors":
[{"message", "domain", "reason"}], "status"}}`, where `reason` is the legacy machine code
clients branch on (rateLimitExceeded, userRateLimitExceeded, notFound, authError...) and
`status` the gRPC-style one.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

_STATUS_NAMES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ALREADY_EXISTS",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
}


class GmailApiError(Exception):
    """An error answer of the Gmail API; `response()` renders Google's envelope."""

    def __init__(
        self,
        code: int,
        reason: str,
        message: str,
        *,
        domain: str = "global",
        headers: Mapping[str, str] | None = None,
        extra: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.domain = domain
        self.headers = dict(headers or {})
        self.extra = dict(extra or {})

    def body(self) -> dict[str, Any]:
        detail: dict[str, Any] = {
            "message": self.message,
            "domain": self.domain,
            "reason": self.reason,
            **self.extra,
        }
        return {
            "error": {
                "code": self.code,
                "message": self.message,
                "errors": [detail],
                "status": _STATUS_NAMES.get(self.code, "UNKNOWN"),
            }
        }


def _retry_after_header(seconds: float) -> str:
    # Retry-After carries whole seconds; never round a wait down to an early return.
    return str(max(1, math.ceil(seconds)))


def bad_request(message: str, reason: str = "invalidArgument") -> GmailApiError:
    return GmailApiError(400, reason, message)


def not_found() -> GmailApiError:
    return GmailApiError(404, "notFound", "Requested entity was not found.")


def unauthenticated() -> GmailApiError:
    return GmailApiError(
        401,
        "authError",
        "Request had invalid authentication credentials. Expected OAuth 2 access token, "
        "login cookie or other valid authentication credential. "
        "See https://developers.google.com/identity/sign-in/web/devconsole-project.",
        extra={"location": "Authorization", "locationType": "header"},
        headers={"WWW-Authenticate": 'Bearer realm="https://accounts.google.com/"'},
    )


def delegation_denied(user_id: str) -> GmailApiError:
    return GmailApiError(403, "forbidden", f"Delegation denied for {user_id}")


def rate_limited(status: int, retry_after: float | None) -> GmailApiError:
    """The random 429/503 of the shared fault switches."""
    header = {} if retry_after is None else {"Retry-After": _retry_after_header(retry_after)}
    if status == 503:
        return GmailApiError(503, "backendError", "Backend Error", headers=header)
    return GmailApiError(
        429, "rateLimitExceeded", "Rate Limit Exceeded", domain="usageLimits", headers=header
    )


def user_rate_limited(
    retry_at_rfc3339: str,
    retry_after: float,
    *,
    status: int = 429,
    reason: str = "rateLimitExceeded",
    header: bool = False,
) -> GmailApiError:
    """The per-user quota refusal. Gmail names the instant to come back only in the
    message, two spaces included; 429 or 403, rateLimitExceeded or userRateLimitExceeded,
    depending on the endpoint and the day."""
    return GmailApiError(
        status,
        reason,
        f"User-rate limit exceeded.  Retry after {retry_at_rfc3339}",
        domain="usageLimits",
        headers={"Retry-After": _retry_after_header(retry_after)} if header else None,
    )


def too_many_concurrent() -> GmailApiError:
    """The per-user concurrency limit: no Retry-After, no time in the message."""
    return GmailApiError(429, "rateLimitExceeded", "Too many concurrent requests for user.")
