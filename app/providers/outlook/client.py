"""Every Graph call: the mailbox's rate gate, a fresh token, Retry-After, classified errors."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit

import httpx

from app.metrics import PROVIDER_REQUESTS
from app.providers.base import SyncContext, ThrottledError, TransientError
from app.providers.outlook.errors import (
    THROTTLE_STATUSES,
    error_for_response,
    is_concurrency_refusal,
    parse_retry_after,
)

log = logging.getLogger(__name__)


class GraphClient:
    def __init__(
        self,
        http: httpx.AsyncClient,
        base_url: str,
        *,
        max_retries: int = 4,
        backoff_base: float = 0.5,
        backoff_cap: float = 30.0,
        max_inline_wait: float = 20.0,
    ) -> None:
        self._http = http
        self.base_url = base_url.rstrip("/")
        base = urlsplit(self.base_url)
        self._origin = (base.scheme, base.netloc)
        self._max_retries = max_retries
        self._backoff_base = backoff_base
        self._backoff_cap = backoff_cap
        # A longer Retry-After ends the job slice: the engine reschedules instead of waiting.
        self._max_inline_wait = max_inline_wait
        # Requests whose caller stopped waiting, still running until Graph answers them.
        self._abandoned: set[asyncio.Future[httpx.Response]] = set()

    async def abandon(self, grace: float = 5.0) -> None:
        """The process is going away: requests still being seen through get `grace`
        seconds to end (giving their gate slots back); the rest are cancelled, which keeps
        their slots until the requests' timeout, since Graph may still be working on them
        (a closed HTTP client would have given them back)."""
        if self._abandoned:
            await asyncio.wait(list(self._abandoned), timeout=grace)
        for exchange in list(self._abandoned):
            exchange.cancel()
        await asyncio.gather(*self._abandoned, return_exceptions=True)

    def url(self, path_or_link: str) -> str:
        if path_or_link.startswith(("https://", "http://")):
            return path_or_link
        return f"{self.base_url}/{path_or_link.lstrip('/')}"

    def is_graph_url(self, link: str) -> bool:
        """Bearer tokens go to Graph only, never to a host named in a stored cursor."""
        parts = urlsplit(link)
        return (parts.scheme, parts.netloc) == self._origin

    async def request(
        self,
        ctx: SyncContext,
        method: str,
        path_or_link: str,
        *,
        params: dict[str, str] | None = None,
        json: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        accept: frozenset[int] = frozenset(),
    ) -> httpx.Response:
        """Send one Graph request; 2xx (and statuses in `accept`) come back, the rest raise."""
        url = self.url(path_or_link)
        attempt = 0
        while True:
            # Fetched per attempt and never kept: a token may expire during a long sync.
            token = await ctx.access_token()
            request_headers = {"Authorization": f"Bearer {token}", **(headers or {})}
            sent = asyncio.Event()
            exchange = asyncio.ensure_future(
                self._exchange(ctx, method, url, params, json, request_headers, sent)
            )
            try:
                response = await asyncio.shield(exchange)
                received_at = time.monotonic()
            except asyncio.CancelledError:
                if not sent.is_set():
                    # Still waiting for a slot: nothing reached Graph, nothing to finish.
                    exchange.cancel()
                    raise
                # Graph goes on working on a request we stop waiting for, and counts it
                # against the mailbox's four: let it finish, so its slot is given back
                # when Graph is done with it rather than now.
                self._abandoned.add(exchange)
                exchange.add_done_callback(_forget(self._abandoned))
                raise
            except httpx.HTTPError as exc:
                PROVIDER_REQUESTS.labels("microsoft", "error").inc()
                raise TransientError(f"Graph request failed: {type(exc).__name__}") from exc
            PROVIDER_REQUESTS.labels("microsoft", str(response.status_code)).inc()
            if response.is_success or response.status_code in accept:
                return response
            if response.status_code not in THROTTLE_STATUSES:
                raise error_for_response(response, app_only=ctx.account.auth_mode == "application")
            retry_after = parse_retry_after(response.headers.get("Retry-After"))
            attempt += 1
            max_wait = self._max_inline_wait
            if ctx.max_wait is not None:
                max_wait = min(max_wait, ctx.max_wait)
            if retry_after is not None:
                # The exchange already told everyone sharing this mailbox's limit to wait.
                if attempt > self._max_retries or retry_after > max_wait:
                    raise error_for_response(response)
                remaining = retry_after - (time.monotonic() - received_at)
                if remaining > 0:
                    await asyncio.sleep(remaining)
            else:
                delay = self._backoff(attempt)
                if attempt > self._max_retries or delay > max_wait:
                    raise ThrottledError(
                        f"Graph kept throttling ({response.status_code})", retry_after=delay
                    )
                await asyncio.sleep(delay)
            log.info(
                "graph %s throttled (%s), retry %d/%d",
                method, response.status_code, attempt, self._max_retries,
            )  # fmt: skip

    async def _exchange(
        self,
        ctx: SyncContext,
        method: str,
        url: str,
        params: dict[str, str] | None,
        json: dict[str, Any] | None,
        headers: dict[str, str],
        sent: asyncio.Event,
    ) -> httpx.Response:
        """One request under the mailbox's gate. What a throttled answer asks of the gate is
        done here, so it is done even when nobody waits for the answer any more."""
        async with ctx.gate.request():
            sent.set()
            response = await self._http.request(
                method, url, params=params, json=json, headers=headers
            )
        if response.status_code in THROTTLE_STATUSES:
            retry_after = parse_retry_after(response.headers.get("Retry-After"))
            if retry_after is not None:
                # Everyone sharing this mailbox's limit waits, not just this worker.
                await ctx.gate.pause(retry_after)
            elif is_concurrency_refusal(response):
                # MailboxConcurrency without Retry-After: other clients of the mailbox use
                # its slots too. Fewer at once from here; the caller backs off and retries.
                await ctx.gate.tighten()
        return response

    @asynccontextmanager
    async def stream(
        self, ctx: SyncContext, path_or_link: str, *, headers: dict[str, str] | None = None
    ) -> AsyncIterator[httpx.Response]:
        """A GET whose body is read by the caller as it arrives (attachments' `$value`).

        The mailbox's concurrency slot is held until the caller is done with the body:
        Graph counts the request as in flight until then.
        """
        url = self.url(path_or_link)
        token = await ctx.access_token()
        async with ctx.gate.request():
            request = self._http.build_request(
                "GET", url, headers={"Authorization": f"Bearer {token}", **(headers or {})}
            )
            try:
                response = await self._http.send(request, stream=True)
            except httpx.HTTPError as exc:
                raise TransientError(f"Graph request failed: {type(exc).__name__}") from exc
            try:
                if not response.is_success:
                    await response.aread()
                    raise error_for_response(response)
                yield response
            finally:
                await response.aclose()

    def _backoff(self, attempt: int) -> float:
        # Full jitter: workers throttled together do not come back together.
        return random.uniform(0, min(self._backoff_cap, self._backoff_base * 2**attempt))


def _forget(
    abandoned: set[asyncio.Future[httpx.Response]],
) -> Callable[[asyncio.Future[httpx.Response]], None]:
    def done(exchange: asyncio.Future[httpx.Response]) -> None:
        abandoned.discard(exchange)
        # Nobody reads its answer any more; an error it ended with is not news.
        if not exchange.cancelled():
            exchange.exception()

    return done
