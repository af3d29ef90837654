"""The Gmail API over HTTP: quota gate, fresh token, classification and retries per call.

Every request passes the mailbox's RateGate with its documented quota cost, asks the
SyncContext for a token at send time, and is classified by `errors.classify`. Throttling
(429, 403 rate-limit reasons, 503) pauses the whole mailbox for the wait Google named and
is retried with exponential backoff and jitter; 5xx and network errors are retried the
same way; after `max_attempts` the error goes to the engine. A 401 is never retried here:
the engine refreshes the token once and calls again.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar
from urllib.parse import quote, urlencode

import httpx
import orjson

from app.config import Settings
from app.metrics import PROVIDER_REQUESTS
from app.providers.base import ProviderError, SyncContext, ThrottledError, TransientError
from app.providers.gmail.batch import decode_batch, encode_batch
from app.providers.gmail.errors import (
    ConcurrencyLimited,
    MessageNotFound,
    classify,
    is_retryable,
)
from app.providers.gmail.pacing import BatchPacing, PacingBook
from app.providers.gmail.quota import QUOTA_UNITS

T = TypeVar("T")
JSON = dict[str, Any]
FetchStrategy = Literal["batch", "concurrent"]
HISTORY_TYPES = ("messageAdded", "messageDeleted", "labelAdded", "labelRemoved")
# Google: "Sending batches larger than 50 requests is not recommended." 50 gets are also
# 250 units, one second of a user's quota: the largest batch a quota gate can admit.
MAX_BATCH = 50
USER = "me"


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_attempts: int = 5
    backoff_base: float = 1.0
    backoff_cap: float = 32.0
    # Parts refused for Gmail's per-user concurrency limit come back sooner: nothing is
    # exhausted, fewer are sent at once.
    concurrency_backoff_base: float = 0.1
    concurrency_backoff_cap: float = 8.0


@dataclass(slots=True)
class _BatchOutcome:
    done: dict[str, JSON | None] = field(default_factory=dict)
    retry: list[str] = field(default_factory=list)
    error: ProviderError | None = None
    # Parts Gmail refused for its per-user concurrency limit.
    refused: int = 0


async def _all(coroutines: Iterable[Coroutine[Any, Any, T]]) -> list[T]:
    """Run side by side; on the first failure cancel the rest and raise that failure."""
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(c) for c in coroutines]
    except ExceptionGroup as failures:
        first = failures.exceptions[0]
        raise first from None
    return [task.result() for task in tasks]


class GmailClient:
    def __init__(
        self,
        settings: Settings,
        http: httpx.AsyncClient,
        *,
        retry: RetryPolicy | None = None,
        fetch_strategy: FetchStrategy = "batch",
        batch_concurrency: int | None = None,
        get_concurrency: int = 10,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._http = http
        self._base = settings.gmail_base_url.rstrip("/")
        self._retry = retry or RetryPolicy()
        self._strategy = fetch_strategy
        per_second = settings.gmail_quota_units_per_second
        per_get = QUOTA_UNITS["users.messages.get"]
        self._batch_size = (
            max(1, min(MAX_BATCH, int(per_second // per_get))) if per_second else MAX_BATCH
        )
        # Under a quota the bucket paces batches anyway (one of 50 a second), and a second
        # batch in flight when the first is refused arrives after the Retry-After was
        # issued; one at a time keeps every request honest. Without a quota, overlap.
        self._batch_concurrency = batch_concurrency or (1 if per_second else 3)
        # Those are ceilings: what a mailbox takes at once is learned per mailbox.
        self._pacing = PacingBook(self._batch_size, self._batch_concurrency)
        self._get_concurrency = get_concurrency
        self._sleep = sleep

    # -- plumbing --------------------------------------------------------------------

    def _url(self, path: str) -> str:
        return f"{self._base}/gmail/v1/users/{USER}/{path}"

    async def _once(
        self,
        ctx: SyncContext,
        operation: str,
        method: str,
        path: str,
        params: Sequence[tuple[str, str]] | None = None,
        body: JSON | None = None,
    ) -> JSON | None:
        async with ctx.gate.request(cost=QUOTA_UNITS[operation]):
            token = await ctx.access_token()
            try:
                response = await self._http.request(
                    method,
                    self._url(path),
                    params=list(params or ()),
                    json=body,
                    headers={"Authorization": f"Bearer {token}", "Accept": "application/json"},
                )
            except httpx.HTTPError as exc:
                PROVIDER_REQUESTS.labels("google", "error").inc()
                raise TransientError(f"Gmail {operation}: {type(exc).__name__}") from exc
        PROVIDER_REQUESTS.labels("google", str(response.status_code)).inc()
        if response.is_success:
            parsed: JSON | None = orjson.loads(response.content) if response.content else None
            return parsed
        raise classify(
            response.status_code, response.headers, response.content, operation=operation
        )

    def _delay(self, error: TransientError, attempt: int) -> float:
        if error.retry_after is not None:
            # Google named the wait; add a little so a fleet does not return in lockstep.
            return error.retry_after * random.uniform(1.0, 1.1) + random.uniform(0.01, 0.05)
        ceiling = min(self._retry.backoff_cap, self._retry.backoff_base * 2**attempt)
        return ceiling / 2 + random.uniform(0, ceiling / 2)

    def _concurrency_delay(self, refusals: int) -> float:
        ceiling = min(
            self._retry.concurrency_backoff_cap,
            self._retry.concurrency_backoff_base * 2**refusals,
        )
        return ceiling / 2 + random.uniform(0, ceiling / 2)

    def pacing(self, ctx: SyncContext) -> BatchPacing:
        """What this mailbox has been found to take at once (batch size, batches in flight)."""
        return self._pacing.of(ctx.account.mailbox_id)

    async def _back_off(self, ctx: SyncContext, error: ProviderError, attempt: int) -> None:
        assert isinstance(error, TransientError)
        if isinstance(error, ConcurrencyLimited):
            # Not a quota matter: the rest of the mailbox's requests need not stop.
            await self._sleep(self._concurrency_delay(attempt))
            return
        delay = self._delay(error, attempt)
        if ctx.max_wait is not None and delay > ctx.max_wait:
            # Someone is waiting for this answer: say how long instead of making them wait.
            raise ThrottledError(str(error), retry_after=delay) from error
        if isinstance(error, ThrottledError):
            # Every worker of this mailbox stops, not only this coroutine.
            await ctx.gate.pause(delay)
        await self._sleep(delay)

    async def _call(
        self,
        ctx: SyncContext,
        operation: str,
        method: str,
        path: str,
        params: Sequence[tuple[str, str]] | None = None,
        body: JSON | None = None,
    ) -> JSON | None:
        attempt = 0
        while True:
            try:
                return await self._once(ctx, operation, method, path, params, body)
            except ProviderError as error:
                attempt += 1
                if not is_retryable(error) or attempt >= self._retry.max_attempts:
                    raise
                await self._back_off(ctx, error, attempt - 1)

    async def _json(
        self,
        ctx: SyncContext,
        operation: str,
        method: str,
        path: str,
        params: Sequence[tuple[str, str]] | None = None,
        body: JSON | None = None,
    ) -> JSON:
        result = await self._call(ctx, operation, method, path, params, body)
        return result or {}

    # -- Gmail methods ---------------------------------------------------------------

    async def get_profile(self, ctx: SyncContext) -> JSON:
        return await self._json(ctx, "users.getProfile", "GET", "profile")

    async def list_labels(self, ctx: SyncContext) -> JSON:
        return await self._json(ctx, "users.labels.list", "GET", "labels")

    async def get_label(self, ctx: SyncContext, label_id: str) -> JSON:
        # Only labels.get carries a label's counts; labels.list leaves them out.
        return await self._json(ctx, "users.labels.get", "GET", f"labels/{quote(label_id)}")

    async def list_messages(
        self,
        ctx: SyncContext,
        *,
        page_token: str | None,
        max_results: int,
        label_ids: Sequence[str] = (),
        q: str | None = None,
    ) -> JSON:
        # includeSpamTrash: the copy holds every message with its labels, so a message
        # moving to Trash (a label change in history) is an update, not a disappearance.
        params = [("maxResults", str(max_results)), ("includeSpamTrash", "true")]
        params += [("labelIds", label_id) for label_id in label_ids]
        if q:
            params.append(("q", q))
        if page_token:
            params.append(("pageToken", page_token))
        return await self._json(ctx, "users.messages.list", "GET", "messages", params)

    async def list_history(
        self, ctx: SyncContext, *, start_history_id: int, page_token: str | None, max_results: int
    ) -> JSON:
        params = [("startHistoryId", str(start_history_id)), ("maxResults", str(max_results))]
        params += [("historyTypes", t) for t in HISTORY_TYPES]
        if page_token:
            params.append(("pageToken", page_token))
        return await self._json(ctx, "users.history.list", "GET", "history", params)

    async def watch(self, ctx: SyncContext, topic_name: str) -> JSON:
        return await self._json(ctx, "users.watch", "POST", "watch", body={"topicName": topic_name})

    async def stop(self, ctx: SyncContext) -> None:
        await self._call(ctx, "users.stop", "POST", "stop")

    async def get_message(self, ctx: SyncContext, message_id: str, fmt: str = "full") -> JSON:
        """One message; MessageNotFound when Gmail no longer has it."""
        path = f"messages/{quote(message_id, safe='')}"
        return await self._json(ctx, "users.messages.get", "GET", path, [("format", fmt)])

    async def get_attachment(self, ctx: SyncContext, message_id: str, attachment_id: str) -> JSON:
        """`{"size", "data"}` in one piece: for bodies Gmail sent by id, not for files."""
        path = f"messages/{quote(message_id, safe='')}/attachments/{quote(attachment_id, safe='')}"
        return await self._json(ctx, "users.messages.attachments.get", "GET", path)

    @asynccontextmanager
    async def stream_attachment(
        self, ctx: SyncContext, message_id: str, attachment_id: str
    ) -> AsyncIterator[httpx.Response]:
        """attachments.get with the response body left unread, for incremental decoding."""
        operation = "users.messages.attachments.get"
        path = f"messages/{quote(message_id, safe='')}/attachments/{quote(attachment_id, safe='')}"
        async with ctx.gate.request(cost=QUOTA_UNITS[operation]):
            token = await ctx.access_token()
            request = self._http.build_request(
                "GET",
                self._url(path),
                headers={"Authorization": f"Bearer {token}", "Accept": "application/json"},
            )
            try:
                response = await self._http.send(request, stream=True)
            except httpx.HTTPError as exc:
                raise TransientError(f"Gmail {operation}: {type(exc).__name__}") from exc
            try:
                if not response.is_success:
                    body = await response.aread()
                    raise classify(
                        response.status_code, response.headers, body, operation=operation
                    )
                yield response
            finally:
                await response.aclose()

    async def get_messages(
        self,
        ctx: SyncContext,
        ids: Sequence[str],
        metadata_headers: Sequence[str] = (),
        *,
        fmt: str = "metadata",
    ) -> dict[str, JSON | None]:
        """`fmt` (metadata: only `metadata_headers`) for each id; None for ids Gmail no
        longer has."""
        params = [("format", fmt)]
        if fmt == "metadata":
            params += [("metadataHeaders", h) for h in metadata_headers]
        unique = list(dict.fromkeys(ids))
        if not unique:
            return {}
        if self._strategy == "concurrent":
            return await self._get_concurrently(ctx, unique, params)
        return await self._get_batched(ctx, unique, params)

    # -- fetching many messages --------------------------------------------------------

    async def _get_concurrently(
        self, ctx: SyncContext, ids: list[str], params: list[tuple[str, str]]
    ) -> dict[str, JSON | None]:
        slots = asyncio.Semaphore(self._get_concurrency)

        async def one(message_id: str) -> tuple[str, JSON | None]:
            async with slots:
                try:
                    path = f"messages/{quote(message_id)}"
                    return message_id, await self._call(
                        ctx, "users.messages.get", "GET", path, params
                    )
                except MessageNotFound:
                    return message_id, None

        return dict(await _all(one(i) for i in ids))

    async def _get_batched(
        self, ctx: SyncContext, ids: list[str], params: list[tuple[str, str]]
    ) -> dict[str, JSON | None]:
        """Every id's answer. Parts Gmail answered are kept whatever happens to the others;
        only the refused or failed parts are sent again, in batches sized to what this
        mailbox was found to take at once. A round that fetched nothing counts as a failed
        attempt; a round that fetched something starts the count again."""
        results: dict[str, JSON | None] = {}
        pending = ids
        query = urlencode(params)
        pacing = self.pacing(ctx)
        stalled = 0
        refusals = 0
        resume_at = 0.0

        async def run(chunk: list[str], slots: asyncio.Semaphore) -> _BatchOutcome:
            nonlocal resume_at
            async with slots:
                outcome = await self._batch_once(ctx, chunk, query)
                if outcome.refused:
                    pacing.refused(len(chunk), outcome.refused)
                    # Gmail charges nothing for parts it refused: neither does the gate, so
                    # the quota is not left unused while they are sent again.
                    await ctx.gate.refund(QUOTA_UNITS["users.messages.get"] * outcome.refused)
                elif outcome.error is None:
                    pacing.accepted(len(chunk))
                if isinstance(outcome.error, ThrottledError) and not isinstance(
                    outcome.error, ConcurrencyLimited
                ):
                    # Before the slot is free: the chunks still queued must wait too.
                    delay = self._delay(outcome.error, stalled)
                    resume_at = max(resume_at, time.monotonic() + delay)
                    await ctx.gate.pause(delay)
            return outcome

        while pending:
            size = pacing.size
            chunks = [pending[i : i + size] for i in range(0, len(pending), size)]
            slots = asyncio.Semaphore(pacing.concurrency)
            outcomes = await _all(run(chunk, slots) for chunk in chunks)
            pending, error, refused = [], None, False
            progress = False
            for outcome in outcomes:
                results.update(outcome.done)
                progress = progress or bool(outcome.done)
                refused = refused or bool(outcome.refused)
                pending += outcome.retry
                if outcome.error is not None and (error is None or _precedes(outcome.error, error)):
                    error = outcome.error
            if not pending:
                break
            assert error is not None
            stalled = 0 if progress else stalled + 1
            if stalled >= self._retry.max_attempts:
                raise error
            if isinstance(error, ConcurrencyLimited):
                await self._sleep(self._concurrency_delay(refusals))
            elif isinstance(error, ThrottledError):
                await self._sleep(max(0.0, resume_at - time.monotonic()))
            else:
                await self._back_off(ctx, error, max(stalled - 1, 0))
            refusals = refusals + 1 if refused else 0
        return results

    async def _batch_once(self, ctx: SyncContext, chunk: list[str], query: str) -> _BatchOutcome:
        operation = "users.messages.get"
        paths = [f"/gmail/v1/users/{USER}/messages/{quote(i)}?{query}" for i in chunk]
        content_type, body = encode_batch(paths)
        async with ctx.gate.request(cost=QUOTA_UNITS[operation] * len(chunk)):
            token = await ctx.access_token()
            try:
                response = await self._http.post(
                    f"{self._base}/batch/gmail/v1",
                    content=body,
                    headers={"Authorization": f"Bearer {token}", "Content-Type": content_type},
                )
            except httpx.HTTPError as exc:
                PROVIDER_REQUESTS.labels("google", "error").inc()
                error = TransientError(f"Gmail batch: {type(exc).__name__}")
                return _BatchOutcome(retry=list(chunk), error=error)
        PROVIDER_REQUESTS.labels("google", str(response.status_code)).inc()
        if not response.is_success:
            failure = classify(
                response.status_code, response.headers, response.content, operation="batch"
            )
            if is_retryable(failure):
                refused = len(chunk) if isinstance(failure, ConcurrencyLimited) else 0
                return _BatchOutcome(retry=list(chunk), error=failure, refused=refused)
            raise failure
        # Parts are matched by Content-ID: Google answers them in any order.
        parts = decode_batch(response.headers.get("content-type", ""), response.content)
        outcome = _BatchOutcome()
        for n, message_id in enumerate(chunk):
            part = parts.get(n)
            if part is None:
                outcome.retry.append(message_id)
                outcome.error = outcome.error or TransientError("Gmail batch: a part went missing")
                continue
            if 200 <= part.status < 300:
                outcome.done[message_id] = orjson.loads(part.body)
                continue
            failure = classify(part.status, part.headers, part.body, operation=operation)
            if isinstance(failure, MessageNotFound):
                outcome.done[message_id] = None
            elif is_retryable(failure):
                outcome.retry.append(message_id)
                if isinstance(failure, ConcurrencyLimited):
                    outcome.refused += 1
                if outcome.error is None or _precedes(failure, outcome.error):
                    outcome.error = failure
            else:
                raise failure
        return outcome


def _precedes(error: ProviderError, current: ProviderError) -> bool:
    """Which of a batch's failures decides the wait: a quota refusal (it names a wait)
    over a concurrency refusal, and the longer wait over the shorter."""
    if isinstance(current, ConcurrencyLimited) and not isinstance(error, ConcurrencyLimited):
        return True
    return _wait_of(error) > _wait_of(current)


def _wait_of(error: ProviderError) -> float:
    return (error.retry_after or 0.0) if isinstance(error, TransientError) else 0.0
