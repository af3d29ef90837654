"""The Gmail API surface: one dispatcher shared by plain requests and batch parts.

Each call is authenticated (Bearer access token, `me` or the account's own address),
admitted by the shared core (latency, random 429/503, Retry-After bookkeeping), charged
its documented quota units against the user's moving-average budget, then answered.
"""

from __future__ import annotations

import base64
import json
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote

from fastapi import APIRouter, Request, Response
from fastapi.responses import StreamingResponse

from app.simulator.app import Simulator
from app.simulator.core import AccountCounters, Throttled
from app.simulator.google.errors import (
    GmailApiError,
    bad_request,
    delegation_denied,
    not_found,
    rate_limited,
    too_many_concurrent,
    unauthenticated,
    user_rate_limited,
)
from app.simulator.google.labels import SYSTEM_LABELS, system_label_resource, user_label_resource
from app.simulator.google.mailbox import (
    HISTORY_TYPES,
    HistoryExpired,
    InvalidPageToken,
    Watch,
)
from app.simulator.google.query import QueryError, parse_query
from app.simulator.google.quota import QUOTA_UNITS
from app.simulator.google.render import (
    FORMATS,
    find_attachment,
    message_resource,
    parse_attachment_id,
)
from app.simulator.google.state import GoogleAccount, GoogleState

JSON_TYPE = "application/json; charset=UTF-8"
WATCH_DAYS_MS = 7 * 24 * 3600 * 1000
_TOPIC = re.compile(r"^projects/[^/]+/topics/[^/]+$")
_MESSAGE_ID = re.compile(r"^[0-9a-fA-F]{1,32}$")


@dataclass(slots=True)
class ApiRequest:
    method: str
    path: str
    query: list[tuple[str, str]]
    authorization: str | None
    body: bytes = b""


@dataclass(slots=True)
class ApiResponse:
    status: int
    body: dict[str, Any] | None
    headers: dict[str, str] = field(default_factory=dict)

    def content(self) -> bytes:
        return b"" if self.body is None else json.dumps(self.body).encode()


@dataclass(slots=True)
class BatchScope:
    """Parts of one batch request: accounts that already got a 429/503 in it, parts the
    per-user concurrency limit refused, and the concurrency each account holds meanwhile."""

    throttled: set[str] = field(default_factory=set)
    refused: set[int] = field(default_factory=set)
    held: dict[str, int] = field(default_factory=dict)


class _Params:
    """Query parameters with Gmail's validation messages."""

    def __init__(self, items: list[tuple[str, str]]) -> None:
        self._items = items

    def get(self, name: str) -> str | None:
        for key, value in self._items:
            if key == name:
                return value
        return None

    def all(self, name: str) -> list[str]:
        return [v for k, v in self._items if k == name]

    def int(self, name: str, default: int, *, cap: int | None = None) -> int:
        raw = self.get(name)
        if raw is None or raw == "":
            return default
        try:
            value = int(raw)
        except ValueError:
            raise bad_request(f"Invalid value at '{name}' ({raw})") from None
        if value < 0:
            raise bad_request(f"Invalid value at '{name}' ({raw})")
        if value == 0:
            return default
        return min(value, cap) if cap is not None else value

    def bool(self, name: str, default: bool) -> bool:
        raw = self.get(name)
        if raw is None:
            return default
        if raw.lower() in ("true", "1"):
            return True
        if raw.lower() in ("false", "0"):
            return False
        raise bad_request(f"Invalid value at '{name}' ({raw})")


Handler = Callable[[GoogleAccount, dict[str, str], _Params, bytes], ApiResponse]


def _rfc3339(seconds: float) -> str:
    stamp = datetime.fromtimestamp(seconds, UTC)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{stamp.microsecond // 1000:03d}Z"


def _json_body(body: bytes) -> dict[str, Any]:
    try:
        parsed = json.loads(body or b"{}")
    except ValueError:
        raise bad_request("Invalid JSON payload received.") from None
    if not isinstance(parsed, dict):
        raise bad_request("Invalid JSON payload received.")
    return parsed


class GmailApi:
    def __init__(self, sim: Simulator, state: GoogleState) -> None:
        self.sim = sim
        self.state = state
        # Requests and batch parts Gmail is working on, per user (counter key).
        self._in_flight: dict[str, int] = {}
        # (HTTP method, collection, has an id segment) -> (quota method name, handler)
        self._routes: dict[tuple[str, str, bool], tuple[str, Handler]] = {
            ("GET", "profile", False): ("users.getProfile", self._profile),
            ("GET", "labels", False): ("users.labels.list", self._labels_list),
            ("POST", "labels", False): ("users.labels.create", self._labels_create),
            ("GET", "labels", True): ("users.labels.get", self._labels_get),
            ("PATCH", "labels", True): ("users.labels.patch", self._labels_update),
            ("PUT", "labels", True): ("users.labels.update", self._labels_update),
            ("GET", "messages", False): ("users.messages.list", self._messages_list),
            ("GET", "messages", True): ("users.messages.get", self._messages_get),
            ("GET", "history", False): ("users.history.list", self._history_list),
            ("POST", "watch", False): ("users.watch", self._watch),
            ("POST", "stop", False): ("users.stop", self._stop),
        }

    # -- dispatch --------------------------------------------------------------------

    def identify(self, request: ApiRequest) -> str | None:
        """The counter key of the account a request acts for; None when it would fail."""
        try:
            _, _, params = self._route(request)
            return self._authenticate(request.authorization, params["user"]).counter_key
        except GmailApiError:
            return None

    def reserve(self, key: str, wanted: int) -> int:
        """How many of `wanted` requests Gmail takes on now for this user; the rest are
        refused for the per-user concurrency limit. The taken ones stay held until
        `release`."""
        faults = self.sim.core.faults
        if not faults.gmail_user_concurrency:
            return wanted
        jitter = faults.gmail_user_concurrency_jitter
        limit = max(
            1,
            round(
                faults.gmail_user_concurrency * self.sim.core.rng.uniform(1 - jitter, 1 + jitter)
            ),
        )
        taken = max(0, min(wanted, limit - self._in_flight.get(key, 0)))
        self._in_flight[key] = self._in_flight.get(key, 0) + taken
        return taken

    def release(self, key: str, count: int) -> None:
        left = self._in_flight.get(key, 0) - count
        if left > 0:
            self._in_flight[key] = left
        else:
            self._in_flight.pop(key, None)

    def refuse_concurrent(self, key: str) -> ApiResponse:
        counters = self.sim.core.counters.for_account(key)
        counters.requests += 1
        counters.throttled += 1
        counters.concurrency_refused += 1
        refused = too_many_concurrent()
        return ApiResponse(refused.code, refused.body(), refused.headers)

    async def handle(
        self, request: ApiRequest, batch: BatchScope | None = None, part: int = 0
    ) -> ApiResponse:
        try:
            method_name, handler, params = self._route(request)
            account = self._authenticate(request.authorization, params["user"])
        except GmailApiError as error:
            return ApiResponse(error.code, error.body(), error.headers)
        key = account.counter_key
        if batch is not None and part in batch.refused:
            return self.refuse_concurrent(key)
        held = 0
        if batch is None:
            held = self.reserve(key, 1)
            if not held:
                return self.refuse_concurrent(key)
        try:
            return await self._admitted(account, method_name, handler, params, request, batch)
        finally:
            self.release(key, held)

    async def _admitted(
        self,
        account: GoogleAccount,
        method_name: str,
        handler: Handler,
        params: dict[str, str],
        request: ApiRequest,
        batch: BatchScope | None,
    ) -> ApiResponse:
        key = account.counter_key
        counters = self.sim.core.counters.for_account(key)
        violations = counters.retry_after_violations
        try:
            async with self.sim.core.admit(key):
                self._spend(account, method_name, counters)
                return handler(account, params, _Params(request.query), request.body)
        except Throttled as throttled:
            limited = rate_limited(throttled.status, throttled.retry_after)
            response = ApiResponse(limited.code, limited.body(), limited.headers)
        except GmailApiError as refused:
            response = ApiResponse(refused.code, refused.body(), refused.headers)
        finally:
            if batch is not None and key in batch.throttled:
                # A sibling part's Retry-After reached the client with this very answer;
                # parts sent alongside it are not the client ignoring it.
                counters.retry_after_violations = violations
        if batch is not None and response.status in (429, 503):
            batch.throttled.add(key)
        return response

    def _route(self, request: ApiRequest) -> tuple[str, Handler, dict[str, str]]:
        segments = request.path.split("/")
        # ["", "gmail", "v1", "users", <user>, <collection>, <id>?]
        if len(segments) in (6, 7) and segments[1:4] == ["gmail", "v1", "users"]:
            route = self._routes.get((request.method, segments[5], len(segments) == 7))
            if route is not None and all(segments[4:]):
                params = {"user": unquote(segments[4])}
                if len(segments) == 7:
                    params["id"] = unquote(segments[6])
                return route[0], route[1], params
        raise GmailApiError(404, "notFound", f"Method not found: {request.method} {request.path}")

    def _authenticate(self, authorization: str | None, user_id: str) -> GoogleAccount:
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise unauthenticated()
        account = self.state.account_for_access_token(token.strip())
        if account is None:
            raise unauthenticated()
        if user_id != "me" and user_id.lower() != account.email:
            raise delegation_denied(user_id)
        return account

    def _spend(self, account: GoogleAccount, method_name: str, counters: AccountCounters) -> None:
        cost = QUOTA_UNITS[method_name]
        rate = self.sim.core.faults.gmail_quota_units_per_second
        if rate > 0:
            wait = account.quota.take(cost, rate)
            if wait > 0:
                counters.throttled += 1
                self.sim.core.told_to_wait(account.counter_key, wait)
                faults = self.sim.core.faults
                raise user_rate_limited(
                    _rfc3339(time.time() + wait),
                    wait,
                    status=faults.gmail_quota_status,
                    reason=faults.gmail_quota_reason,
                    header=faults.gmail_quota_retry_after_header,
                )
        counters.quota_units += cost
        counters.methods[method_name] = counters.methods.get(method_name, 0) + 1

    # -- users -----------------------------------------------------------------------

    def _profile(
        self, account: GoogleAccount, params: dict[str, str], query: _Params, body: bytes
    ) -> ApiResponse:
        mailbox = account.mailbox
        return ApiResponse(
            200,
            {
                "emailAddress": account.email,
                "messagesTotal": mailbox.messages_total,
                "threadsTotal": mailbox.threads_total,
                "historyId": str(mailbox.history_id),
            },
        )

    # -- labels ----------------------------------------------------------------------

    def _labels_list(
        self, account: GoogleAccount, params: dict[str, str], query: _Params, body: bytes
    ) -> ApiResponse:
        labels = [system_label_resource(label) for label in SYSTEM_LABELS]
        labels += [user_label_resource(i, n) for i, n in account.mailbox.user_labels.items()]
        return ApiResponse(200, {"labels": labels})

    def _labels_get(
        self, account: GoogleAccount, params: dict[str, str], query: _Params, body: bytes
    ) -> ApiResponse:
        # Only labels.get carries a label's counts (labels.list leaves them out), exact.
        label_id = params["id"]
        mailbox = account.mailbox
        if label_id in SYSTEM_LABELS:
            resource = system_label_resource(label_id)
        else:
            name = mailbox.user_labels.get(label_id)
            if name is None:
                raise not_found()
            resource = user_label_resource(label_id, name)
        counts = mailbox.label_counts(label_id)
        resource.update(
            messagesTotal=counts.messages_total,
            messagesUnread=counts.messages_unread,
            threadsTotal=counts.threads_total,
            threadsUnread=counts.threads_unread,
        )
        return ApiResponse(200, resource)

    def _labels_create(
        self, account: GoogleAccount, params: dict[str, str], query: _Params, body: bytes
    ) -> ApiResponse:
        name = str(_json_body(body).get("name") or "").strip()
        if not name:
            raise bad_request("Invalid label name")
        mailbox = account.mailbox
        taken = {n.lower() for n in mailbox.user_labels.values()} | {
            s.lower() for s in SYSTEM_LABELS
        }
        if name.lower() in taken:
            raise GmailApiError(409, "duplicate", "Label name exists or conflicts")
        label_id = mailbox.create_label(name)
        return ApiResponse(200, user_label_resource(label_id, name))

    def _labels_update(
        self, account: GoogleAccount, params: dict[str, str], query: _Params, body: bytes
    ) -> ApiResponse:
        label_id = params["id"]
        mailbox = account.mailbox
        if label_id in SYSTEM_LABELS:
            raise bad_request("Invalid label: system labels cannot be renamed")
        if label_id not in mailbox.user_labels:
            raise not_found()
        name = str(_json_body(body).get("name") or "").strip()
        if name:
            mailbox.user_labels[label_id] = name
        return ApiResponse(200, user_label_resource(label_id, mailbox.user_labels[label_id]))

    # -- messages --------------------------------------------------------------------

    def _messages_list(
        self, account: GoogleAccount, params: dict[str, str], query: _Params, body: bytes
    ) -> ApiResponse:
        mailbox = account.mailbox
        max_results = query.int("maxResults", 100, cap=500)
        q = query.get("q")
        try:
            parsed = parse_query(q, mailbox.label_names()) if q else None
        except QueryError as exc:
            raise bad_request(str(exc)) from None
        try:
            page = mailbox.list_messages(
                max_results=max_results,
                page_token=query.get("pageToken") or None,
                label_ids=frozenset(query.all("labelIds")),
                include_spam_trash=query.bool("includeSpamTrash", False),
                query=parsed,
                estimate_key=repr(
                    (sorted(query.all("labelIds")), query.get("includeSpamTrash"), q)
                ),
            )
        except InvalidPageToken:
            raise bad_request("Invalid pageToken") from None
        result: dict[str, Any] = {}
        if page.messages:
            result["messages"] = [{"id": i, "threadId": t} for i, t in page.messages]
        if page.next_page_token:
            result["nextPageToken"] = page.next_page_token
        result["resultSizeEstimate"] = page.result_size_estimate
        return ApiResponse(200, result)

    def _messages_get(
        self, account: GoogleAccount, params: dict[str, str], query: _Params, body: bytes
    ) -> ApiResponse:
        message_id = params["id"]
        if not _MESSAGE_ID.match(message_id):
            raise bad_request("Invalid id value")
        fmt = (query.get("format") or "full").lower()
        if fmt not in FORMATS:
            raise bad_request(f"Invalid value at 'format' ({fmt})")
        view = account.mailbox.view(message_id.lower())
        if view is None:
            raise not_found()
        resource = message_resource(view, fmt, account.email, query.all("metadataHeaders"))
        return ApiResponse(200, resource)

    # -- history ---------------------------------------------------------------------

    def _history_list(
        self, account: GoogleAccount, params: dict[str, str], query: _Params, body: bytes
    ) -> ApiResponse:
        raw_start = query.get("startHistoryId")
        if not raw_start:
            raise bad_request("Missing required parameter: startHistoryId", "required")
        try:
            start = int(raw_start)
        except ValueError:
            raise bad_request(f"Invalid value at 'start_history_id' ({raw_start})") from None
        types = query.all("historyTypes")
        for history_type in types:
            if history_type not in HISTORY_TYPES:
                raise bad_request(f"Invalid value at 'history_types' ({history_type})")
        mailbox = account.mailbox
        try:
            records, next_token = mailbox.history_page(
                start,
                types=frozenset(types) if types else None,
                label_id=query.get("labelId") or None,
                max_results=query.int("maxResults", 100, cap=500),
                page_token=query.get("pageToken") or None,
            )
        except HistoryExpired:
            raise not_found() from None
        except InvalidPageToken:
            raise bad_request("Invalid pageToken") from None
        result: dict[str, Any] = {}
        if records:
            result["history"] = records
        if next_token:
            result["nextPageToken"] = next_token
        result["historyId"] = str(mailbox.history_id)
        return ApiResponse(200, result)

    # -- push ------------------------------------------------------------------------

    def _watch(
        self, account: GoogleAccount, params: dict[str, str], query: _Params, body: bytes
    ) -> ApiResponse:
        request = _json_body(body)
        topic = request.get("topicName")
        if not isinstance(topic, str) or not _TOPIC.match(topic):
            raise bad_request(
                "Invalid topicName does not match projects/SOME_PROJECT/topics/SOME_TOPIC"
            )
        label_ids = request.get("labelIds") or []
        if not isinstance(label_ids, list) or not all(isinstance(x, str) for x in label_ids):
            raise bad_request("Invalid value at 'label_ids'")
        behavior = str(
            request.get("labelFilterBehavior") or request.get("labelFilterAction") or "include"
        ).lower()
        if behavior not in ("include", "exclude"):
            raise bad_request(f"Invalid value at 'label_filter_behavior' ({behavior})")
        expiration = int(time.time() * 1000) + WATCH_DAYS_MS
        mailbox = account.mailbox
        mailbox.watch = Watch(topic, frozenset(label_ids), behavior, expiration)
        return ApiResponse(
            200, {"historyId": str(mailbox.history_id), "expiration": str(expiration)}
        )

    def _stop(
        self, account: GoogleAccount, params: dict[str, str], query: _Params, body: bytes
    ) -> ApiResponse:
        account.mailbox.watch = None
        return ApiResponse(204, None)


_ATTACHMENT_PATH = re.compile(r"^/gmail/v1/users/([^/]+)/messages/([^/]+)/attachments/([^/]+)$")


async def _attachment(api: GmailApi, request: Request, match: re.Match[str]) -> Response:
    """users.messages.attachments.get: `{"size", "data"}`, the data base64url (padded),
    streamed as it is encoded so a 50 MB file costs the simulator a chunk at a time."""
    user, message_id, attachment_id = (unquote(g) for g in match.groups())
    try:
        account = api._authenticate(request.headers.get("authorization"), user)
    except GmailApiError as error:
        return Response(json.dumps(error.body()), error.code, error.headers, media_type=JSON_TYPE)
    key = account.counter_key
    counters = api.sim.core.counters.for_account(key)
    try:
        async with api.sim.core.admit(key):
            api._spend(account, "users.messages.attachments.get", counters)
            view = account.mailbox.view(message_id.lower())
            parsed = parse_attachment_id(attachment_id)
            if view is None or parsed is None or parsed[0] != view.id:
                raise not_found()
            spec = find_attachment(view, parsed[1])
            if spec is None:
                raise not_found()
    except Throttled as throttled:
        limited = rate_limited(throttled.status, throttled.retry_after)
        return Response(
            json.dumps(limited.body()), limited.code, limited.headers, media_type=JSON_TYPE
        )
    except GmailApiError as refused:
        return Response(
            json.dumps(refused.body()), refused.code, refused.headers, media_type=JSON_TYPE
        )

    def body() -> Iterator[bytes]:
        yield b'{\n  "size": %d,\n  "data": "' % spec.size
        pending = b""
        for chunk in spec.chunks():
            pending += chunk
            usable = len(pending) - len(pending) % 3
            yield base64.urlsafe_b64encode(pending[:usable])
            pending = pending[usable:]
        yield base64.urlsafe_b64encode(pending) + b'"\n}\n'

    return StreamingResponse(body(), media_type=JSON_TYPE)


def gmail_router(api: GmailApi) -> APIRouter:
    router = APIRouter(tags=["gmail"])

    @router.api_route("/gmail/v1/{path:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE"])
    async def gmail(request: Request, path: str) -> Response:
        match = _ATTACHMENT_PATH.match(request.url.path)
        if match is not None and request.method == "GET":
            return await _attachment(api, request, match)
        response = await api.handle(
            ApiRequest(
                method=request.method,
                path=request.url.path,
                query=list(request.query_params.multi_items()),
                authorization=request.headers.get("authorization"),
                body=await request.body(),
            )
        )
        return Response(
            content=response.content(),
            status_code=response.status,
            headers=response.headers,
            media_type=JSON_TYPE if response.body is not None else None,
        )

    return router
