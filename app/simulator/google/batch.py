"""`POST /batch/gmail/v1`: Google's multipart/mixed batch format.

A batch body is `multipart/mixed`; each part has `Content-Type: application/http`, an
optional `Content-ID`, and an HTTP request (request line, headers, body) as its content.
The answer is `multipart/mixed` too, one `application/http` part per request in order,
each a full HTTP response whose Content-ID is `response-` + the request's. Outer headers
(Authorization) apply to every part unless the part sets its own. At most 100 parts; each
counts against quota as a request of its own.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from dataclasses import dataclass
from http import HTTPStatus
from urllib.parse import unquote_plus, urlsplit

from fastapi import APIRouter, Request, Response

from app.simulator.app import Simulator
from app.simulator.google.errors import GmailApiError, bad_request
from app.simulator.google.gmail import JSON_TYPE, ApiRequest, ApiResponse, BatchScope, GmailApi

MAX_PARTS = 100


@dataclass(slots=True)
class BatchPart:
    content_id: str | None
    request: ApiRequest


def _boundary(content_type: str) -> str:
    kind, _, params = content_type.partition(";")
    if kind.strip().lower() != "multipart/mixed":
        raise bad_request("Content-Type of a batch request must be multipart/mixed")
    for param in params.split(";"):
        key, _, value = param.strip().partition("=")
        if key.lower() == "boundary" and value:
            return value.strip('"')
    raise bad_request("multipart/mixed batch request without a boundary")


def _split_head(block: bytes) -> tuple[list[str], bytes]:
    """Header lines and the rest, tolerant of bare LF line ends."""
    for separator in (b"\r\n\r\n", b"\n\n"):
        head, found, rest = block.partition(separator)
        if found:
            return head.decode("latin-1").splitlines(), rest
    return block.decode("latin-1").splitlines(), b""


def _header_map(lines: list[str]) -> dict[str, str]:
    headers: dict[str, str] = {}
    for line in lines:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return headers


def parse_batch(content_type: str, body: bytes, outer_authorization: str | None) -> list[BatchPart]:
    delimiter = b"--" + _boundary(content_type).encode()
    chunks = body.split(delimiter)
    parts: list[BatchPart] = []
    # chunks[0] is the preamble; the chunk after the closing delimiter starts with "--".
    for chunk in chunks[1:]:
        if chunk.startswith(b"--"):
            break
        part_lines, inner = _split_head(chunk.lstrip(b"\r\n"))
        part_headers = _header_map(part_lines)
        if part_headers.get("content-type", "").split(";")[0].strip() != "application/http":
            raise bad_request("Each part of a batch request must be application/http")
        request_lines, payload = _split_head(inner.lstrip(b"\r\n"))
        if not request_lines:
            raise bad_request("Empty request in batch part")
        request_line = request_lines[0].split()
        if len(request_line) < 2:
            raise bad_request(f"Invalid request line in batch part: {request_lines[0]!r}")
        method, target = request_line[0].upper(), request_line[1]
        url = urlsplit(target)
        inner_headers = _header_map(request_lines[1:])
        parts.append(
            BatchPart(
                content_id=part_headers.get("content-id"),
                request=ApiRequest(
                    method=method,
                    path=url.path,
                    query=parse_query_string(url.query),
                    authorization=inner_headers.get("authorization", outer_authorization),
                    body=payload.rstrip(b"\r\n"),
                ),
            )
        )
    if not parts:
        raise bad_request("A batch request must contain at least one part")
    return parts


def parse_query_string(query: str) -> list[tuple[str, str]]:
    """parse_qsl without its cost for the common case of nothing to unquote."""
    pairs: list[tuple[str, str]] = []
    for item in query.split("&"):
        if not item:
            continue
        key, _, value = item.partition("=")
        if "%" in item or "+" in item:
            key, value = unquote_plus(key), unquote_plus(value)
        pairs.append((key, value))
    return pairs


def _response_content_id(content_id: str | None) -> str | None:
    if content_id is None:
        return None
    return f"<response-{content_id.strip().removeprefix('<').removesuffix('>')}>"


def render_batch(
    parts: list[BatchPart],
    responses: list[ApiResponse],
    boundary: str,
    *,
    order: list[int] | None = None,
    content_length: bool = True,
) -> bytes:
    """The multipart answer; `order` lists part indexes in the order to write them
    (Google's parts carry Content-IDs and need not follow the request's order)."""
    out: list[bytes] = []
    for index in order if order is not None else range(len(parts)):
        part, response = parts[index], responses[index]
        content = response.content()
        head = [f"--{boundary}", "Content-Type: application/http"]
        content_id = _response_content_id(part.content_id)
        if content_id:
            head.append(f"Content-ID: {content_id}")
        reason = HTTPStatus(response.status).phrase
        inner = [f"HTTP/1.1 {response.status} {reason}"]
        if response.body is not None:
            inner.append(f"Content-Type: {JSON_TYPE}")
        inner += [f"{k}: {v}" for k, v in response.headers.items()]
        if content_length:
            inner.append(f"Content-Length: {len(content)}")
        out.append(("\r\n".join(head) + "\r\n\r\n" + "\r\n".join(inner) + "\r\n\r\n").encode())
        out.append(content + b"\r\n")
    out.append(f"--{boundary}--\r\n".encode())
    return b"".join(out)


def _concurrency_scope(sim: Simulator, api: GmailApi, parts: list[BatchPart]) -> BatchScope:
    """Google splits a batch into requests it runs side by side, so every part counts
    against its user's concurrency limit at once; which parts lose is up to chance."""
    scope = BatchScope()
    by_account: dict[str, list[int]] = {}
    for n, part in enumerate(parts):
        key = api.identify(part.request)
        if key is not None:
            by_account.setdefault(key, []).append(n)
    for key, indexes in by_account.items():
        taken = api.reserve(key, len(indexes))
        scope.held[key] = taken
        scope.refused.update(sim.core.rng.sample(indexes, len(indexes) - taken))
    return scope


def batch_router(sim: Simulator, api: GmailApi) -> APIRouter:
    router = APIRouter(tags=["gmail"])

    @router.post("/batch/gmail/v1")
    async def batch(request: Request) -> Response:
        try:
            parts = parse_batch(
                request.headers.get("content-type", ""),
                await request.body(),
                request.headers.get("authorization"),
            )
            if len(parts) > MAX_PARTS:
                raise bad_request(f"A batch request cannot contain more than {MAX_PARTS} parts")
        except GmailApiError as error:
            return Response(json.dumps(error.body()), status_code=error.code, media_type=JSON_TYPE)
        faults = sim.core.faults
        scope = _concurrency_scope(sim, api, parts)
        try:
            if faults.latency_ms:
                # Google runs parts side by side; with latency on, so do we.
                responses = list(
                    await asyncio.gather(
                        *(api.handle(p.request, scope, n) for n, p in enumerate(parts))
                    )
                )
            else:
                responses = [await api.handle(p.request, scope, n) for n, p in enumerate(parts)]
        finally:
            for key, held in scope.held.items():
                api.release(key, held)
        order = list(range(len(parts)))
        if faults.gmail_batch_shuffle:
            sim.core.rng.shuffle(order)
        boundary = "batch_" + secrets.token_urlsafe(12)
        return Response(
            render_batch(
                parts,
                responses,
                boundary,
                order=order,
                content_length=faults.gmail_batch_content_length,
            ),
            media_type=f"multipart/mixed; boundary={boundary}",
        )

    return router
