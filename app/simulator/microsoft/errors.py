"""Error bodies in the two shapes Microsoft uses: Graph's and the identity platform's."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any

from starlette.responses import Response

from app.simulator.core import Throttled


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    content = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
    return Response(content, status_code=status, media_type="application/json", headers=headers)


def graph_error(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> Response:
    request_id = str(uuid.uuid4())
    body = {
        "error": {
            "code": code,
            "message": message,
            "innerError": {
                "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S"),
                "request-id": request_id,
                "client-request-id": request_id,
            },
        }
    }
    return json_response(body, status, {"request-id": request_id, **(headers or {})})


def retry_after_value(seconds: float) -> str:
    """Graph sends whole seconds; fractions are kept so tests can run with short waits."""
    return str(int(seconds)) if float(seconds).is_integer() else f"{seconds:.3f}".rstrip("0")


def aad_error(status: int, error: str, aadsts: int, description: str) -> Response:
    trace_id, correlation_id = str(uuid.uuid4()), str(uuid.uuid4())
    now = datetime.now(UTC)
    body = {
        "error": error,
        # As Entra writes it: CRLF-separated trace, correlation id and timestamp lines.
        "error_description": (
            f"AADSTS{aadsts}: {description}\r\nTrace ID: {trace_id}\r\n"
            f"Correlation ID: {correlation_id}\r\nTimestamp: {now:%Y-%m-%d %H:%M:%SZ}"
        ),
        "error_codes": [aadsts],
        "timestamp": f"{now:%Y-%m-%d %H:%M:%SZ}",
        "trace_id": trace_id,
        "correlation_id": correlation_id,
        "error_uri": f"https://login.microsoftonline.com/error?code={aadsts}",
    }
    return json_response(body, status, {"Cache-Control": "no-store", "Pragma": "no-cache"})


def throttled_response(exc: Throttled) -> Response:
    headers = {} if exc.retry_after is None else {"Retry-After": retry_after_value(exc.retry_after)}
    if exc.status == 503:
        return graph_error(503, "ServiceUnavailable", "Service unavailable, retry later.", headers)
    if exc.reason == "too many concurrent requests":
        return graph_error(
            429,
            "ApplicationThrottled",
            "Application is over its MailboxConcurrency limit.",
            headers,
        )
    return graph_error(429, "TooManyRequests", "Please retry again later.", headers)
