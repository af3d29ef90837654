"""Microsoft Graph v1.0 mail endpoints: /me/..., /users/{id}/..., /subscriptions.

One catch-all route parses the path itself, because Graph accepts several spellings of the
same resource (`mailFolders/{id}` and `mailfolders('{id}')`, `delta` and
`microsoft.graph.delta()`), case-insensitively, and its own links use the quoted form.
"""

from __future__ import annotations

import json
import re
import time
from bisect import bisect_left
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Request
from starlette.responses import Response

from app.simulator.app import Simulator
from app.simulator.core import Throttled
from app.simulator.microsoft import attachments, delta, search, subscriptions
from app.simulator.microsoft.errors import graph_error, json_response, throttled_response
from app.simulator.microsoft.mailbox import Folder, Mailbox
from app.simulator.microsoft.resources import (
    FOLDER_PROPERTIES,
    MESSAGE_PROPERTIES,
    SelectError,
    collection_json,
    folder_resource,
    message_json,
    parse_select,
    removed_folder,
    user_resource,
)
from app.simulator.microsoft.state import APP_MAIL_ROLE, AccessToken, MicrosoftState, get_state

_QUOTED_KEY = re.compile(r"\('([^']*)'\)")
_DELTA_SEGMENTS = frozenset(
    {"delta", "delta()", "microsoft.graph.delta", "microsoft.graph.delta()"}
)
_DEFAULT_TOP = 10
_MAX_TOP = 1000
# The first clause of a $filter that may come with $orderby=receivedDateTime.
_FILTER_CLAUSE_FIRST = re.compile(r"^\s*\(?\s*receivedDateTime\s", re.IGNORECASE)
_FILTER_CLAUSE = re.compile(
    r"^\s*(receivedDateTime|isRead)\s+(ge|gt|le|lt|eq)\s+'?([^'\s]+)'?\s*$", re.IGNORECASE
)


class GraphError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


@dataclass(slots=True)
class GraphRequest:
    """What every handler needs: the caller, the target mailbox and the request's options."""

    state: MicrosoftState
    request: Request
    token: AccessToken
    mailbox: Mailbox | None
    # "me" or "users/{id}" exactly as the caller spelled it; links are built on it.
    prefix: str
    prefer: dict[str, str]

    @property
    def base(self) -> str:
        return f"{self.state.sim.base_url}/v1.0/{self.prefix}"

    @property
    def immutable_ids(self) -> bool:
        return self.prefer.get("idtype", "").lower() == "immutableid"

    def param(self, name: str) -> str | None:
        params = self.request.query_params
        value = params.get("$" + name)
        return value if value is not None else params.get(name)

    def target(self) -> Mailbox:
        assert self.mailbox is not None
        return self.mailbox


def build_graph_router(sim: Simulator) -> APIRouter:
    state = get_state(sim)
    router = APIRouter(prefix="/v1.0", tags=["microsoft graph"])

    @router.api_route("/{path:path}", methods=["GET", "POST", "PATCH", "DELETE"])
    async def graph(path: str, request: Request) -> Response:
        try:
            return await _handle(state, path, request)
        except GraphError as exc:
            return graph_error(exc.status, exc.code, exc.message)

    return router


def parse_prefer(request: Request) -> dict[str, str]:
    preferences: dict[str, str] = {}
    for header in request.headers.getlist("prefer"):
        for part in re.split(r",(?=(?:[^\"]*\"[^\"]*\")*[^\"]*$)", header):
            name, _, value = part.strip().partition("=")
            if name:
                preferences[name.strip().lower()] = value.strip().strip('"')
    return preferences


def _authenticate(state: MicrosoftState, request: Request) -> AccessToken:
    header = request.headers.get("authorization", "")
    scheme, _, raw = header.partition(" ")
    if scheme.lower() != "bearer" or not raw.strip():
        raise GraphError(401, "InvalidAuthenticationToken", "Access token is empty.")
    token = state.access_tokens.get(raw.strip())
    if token is None:
        raise GraphError(401, "InvalidAuthenticationToken", "IDX14100: JWT is not well formed.")
    if token.expires_at <= time.time():
        raise GraphError(
            401, "InvalidAuthenticationToken", "Lifetime validation failed, the token is expired."
        )
    return token


def _segments(path: str) -> list[str]:
    return [s for s in _QUOTED_KEY.sub(lambda m: "/" + m.group(1), path).split("/") if s]


async def _handle(state: MicrosoftState, path: str, request: Request) -> Response:
    sim = state.sim
    token = _authenticate(state, request)
    segments = _segments(path)
    if not segments:
        raise GraphError(400, "BadRequest", "Invalid request.")
    head = segments[0].lower()
    mailbox: Mailbox | None = None
    if head == "me":
        if token.app_only:
            raise GraphError(
                400, "BadRequest", "/me request is only valid with delegated authentication flow."
            )
        assert token.user_id is not None
        mailbox = state.mailboxes.get(token.user_id)
        prefix, rest = "me", segments[1:]
    elif head == "users" and len(segments) >= 2:
        mailbox = state.find_mailbox(segments[1])
        if mailbox is None:
            if len(segments) == 2:
                raise GraphError(
                    404, "Request_ResourceNotFound",
                    f"Resource '{segments[1]}' does not exist or one of its queried "
                    "reference-property objects are not present.",
                )  # fmt: skip
            raise GraphError(
                404, "ErrorInvalidUser", f"The requested user '{segments[1]}' is invalid."
            )
        _authorize(token, mailbox)
        prefix, rest = f"users/{segments[1]}", segments[2:]
    elif head == "subscriptions":
        return await subscriptions.handle(state, request, token, segments[1:])
    else:
        raise GraphError(400, "BadRequest", f"Resource not found for the segment '{segments[0]}'.")
    if mailbox is None:
        raise GraphError(404, "ErrorInvalidUser", "The requested user is invalid.")
    ctx = GraphRequest(state, request, token, mailbox, prefix, parse_prefer(request))
    try:
        async with sim.core.admit(
            mailbox.counter_key, max_concurrency=sim.core.faults.graph_max_concurrency
        ) as counters:
            kind = _request_kind(rest)
            counters.methods[kind] = counters.methods.get(kind, 0) + 1
            return await _dispatch(ctx, rest)
    except Throttled as exc:
        return throttled_response(exc)


def _request_kind(rest: list[str]) -> str:
    """What a request asked for, for the counters (tests and benchmarks count by kind):
    `folders.delta`, `folders.get`, `messages.delta`, `messages.list`, `messages.get`, ..."""
    lowered = [s.lower() for s in rest]
    if not lowered:
        return "user.get"
    if lowered[0] == "mailfolders":
        if len(lowered) == 1:
            return "folders.list"
        if lowered[1] in _DELTA_SEGMENTS:
            return "folders.delta"
        if len(lowered) == 2:
            return "folders.get"
        if lowered[2] == "messages":
            if len(lowered) == 3:
                return "messages.list"
            return "messages.delta" if lowered[3] in _DELTA_SEGMENTS else "messages.get"
        return "folders.children"
    if lowered[0] == "messages":
        if len(lowered) == 1:
            return "messages.list"
        return "attachments" if len(lowered) > 2 else "messages.get"
    return lowered[0]


def _authorize(token: AccessToken, mailbox: Mailbox) -> None:
    if token.app_only:
        if (
            token.tenant_id != mailbox.tenant_id
            or APP_MAIL_ROLE not in token.roles
            or not mailbox.app_only_granted
        ):
            raise GraphError(
                403, "ErrorAccessDenied", "Access is denied. Check credentials and try again."
            )
    elif token.user_id != mailbox.user_id:
        raise GraphError(
            403, "ErrorAccessDenied", "Access is denied. Check credentials and try again."
        )


async def _dispatch(ctx: GraphRequest, rest: list[str]) -> Response:
    method = ctx.request.method
    lowered = [s.lower() for s in rest]
    if method != "GET":
        raise GraphError(405, "Request_BadRequest", "The HTTP method is not supported here.")
    if not rest:
        return json_response(
            {"@odata.context": f"{ctx.state.sim.base_url}/v1.0/$metadata#users/$entity"}
            | user_resource(ctx.target())
        )
    if lowered[0] == "mailfolders":
        return await _mail_folders(ctx, rest[1:])
    if lowered[0] == "messages":
        if len(rest) == 1:
            return _list_messages(ctx, None)
        if lowered[1] in _DELTA_SEGMENTS:
            raise GraphError(
                400, "BadRequest",
                "Change tracking is not supported against 'microsoft.graph.message' outside a "
                "mailFolder; use /mailFolders/{id}/messages/delta.",
            )  # fmt: skip
        if len(rest) == 2:
            return _get_message(ctx, rest[1])
        if lowered[2] == "attachments" and len(rest) in (3, 4, 5):
            return _attachments(ctx, rest[1], rest[3:])
    raise GraphError(400, "BadRequest", f"Resource not found for the segment '{rest[0]}'.")


def _message_key(ctx: GraphRequest, ref: str) -> int:
    key = ctx.target().resolve_message(ref)
    if key is None:
        raise GraphError(
            404, "ErrorItemNotFound", "The specified object was not found in the store."
        )
    return key


def _attachments(ctx: GraphRequest, ref: str, rest: list[str]) -> Response:
    mailbox = ctx.target()
    key = _message_key(ctx, ref)
    specs = mailbox.content_spec(key).attachments
    try:
        select = attachments.parse_select(ctx.param("select"))
    except attachments.AttachmentSelectError as exc:
        raise GraphError(400, "RequestBroker--ParseUri", str(exc)) from exc
    if not rest:
        body = {
            "@odata.context": f"{ctx.state.sim.base_url}/v1.0/$metadata#users('{mailbox.user_id}')/messages('{ref}')/attachments",
            "value": [attachments.attachment_resource(mailbox, key, a, select) for a in specs],
        }
        return json_response(body)
    parsed = attachments.parse_attachment_id(mailbox, rest[0])
    if parsed is None or parsed[0] != key or parsed[1] >= len(specs):
        raise GraphError(
            404, "ErrorItemNotFound", "The specified object was not found in the store."
        )
    spec = specs[parsed[1]]
    if len(rest) == 1:
        return json_response(attachments.attachment_resource(mailbox, key, spec, select))
    if rest[1].lower() == "$value":
        return attachments.value_response(spec)
    raise GraphError(400, "BadRequest", f"Resource not found for the segment '{rest[1]}'.")


def _folder(ctx: GraphRequest, ref: str) -> Folder:
    folder = ctx.target().folder(ref)
    if folder is None:
        raise GraphError(
            404, "ErrorItemNotFound", "The specified object was not found in the store."
        )
    return folder


async def _mail_folders(ctx: GraphRequest, rest: list[str]) -> Response:
    mailbox = ctx.target()
    lowered = [s.lower() for s in rest]
    if not rest:
        return _folder_collection(ctx, mailbox.folders[0], "mailFolders")
    if lowered[0] in _DELTA_SEGMENTS and len(rest) == 1:
        return _folder_delta(ctx)
    stale = mailbox.folder(rest[0], deleted=True)
    if (
        stale is not None
        and stale.deleted
        and lowered[1:2] == ["messages"]
        and lowered[2:3]
        and lowered[2] in _DELTA_SEGMENTS
        and (ctx.param("skiptoken") or ctx.param("deltatoken"))
    ):
        return await _message_delta(ctx, stale)
    folder = _folder(ctx, rest[0])
    if len(rest) == 1:
        select = _select(ctx, FOLDER_PROPERTIES, "microsoft.graph.mailFolder")
        context = f"{ctx.state.sim.base_url}/v1.0/$metadata#users('{mailbox.user_id}')/mailFolders/$entity"
        return json_response({"@odata.context": context} | folder_resource(mailbox, folder, select))
    if lowered[1] == "childfolders" and len(rest) == 2:
        return _folder_collection(ctx, folder, f"mailFolders('{folder.id}')/childFolders")
    if lowered[1] == "messages":
        if len(rest) == 2:
            return _list_messages(ctx, folder)
        if lowered[2] in _DELTA_SEGMENTS and len(rest) == 3:
            return await _message_delta(ctx, folder)
        if len(rest) == 3:
            return _get_message(ctx, rest[2], folder)
    raise GraphError(400, "BadRequest", f"Resource not found for the segment '{rest[-1]}'.")


def _select(ctx: GraphRequest, allowed: frozenset[str], type_name: str) -> tuple[str, ...] | None:
    try:
        return parse_select(ctx.param("select"), allowed, type_name)
    except SelectError as exc:
        raise GraphError(400, "RequestBroker--ParseUri", str(exc)) from exc


def _int_param(ctx: GraphRequest, name: str, default: int, low: int, high: int) -> int:
    raw = ctx.param(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise GraphError(400, "BadRequest", f"Invalid value '{raw}' for ${name}.") from None
    if not low <= value <= high:
        raise GraphError(400, "ErrorInvalidArgument", f"${name} must be between {low} and {high}.")
    return value


def _page_size(ctx: GraphRequest, default: int, maximum: int) -> tuple[int, dict[str, str]]:
    raw = ctx.prefer.get("odata.maxpagesize")
    if raw is None:
        return default, {}
    try:
        wanted = int(raw)
    except ValueError:
        return default, {}
    applied = max(1, min(wanted, maximum))
    return applied, {"Preference-Applied": f"odata.maxpagesize={applied}"}


def _link(base: str, params: dict[str, str]) -> str:
    return base + "?" + urlencode(params, safe="$'(),", quote_via=quote)


def _folder_collection(ctx: GraphRequest, parent: Folder, path: str) -> Response:
    mailbox = ctx.target()
    top = _int_param(ctx, "top", _DEFAULT_TOP, 1, _MAX_TOP)
    skip = _int_param(ctx, "skip", 0, 0, 1_000_000)
    select = _select(ctx, FOLDER_PROPERTIES, "microsoft.graph.mailFolder")
    children = sorted(
        (mailbox.folders[i] for i in parent.children if not mailbox.folders[i].deleted),
        key=lambda f: f.display_name,
    )
    chunk = children[skip : skip + top]
    body: dict[str, Any] = {
        "@odata.context": f"{ctx.state.sim.base_url}/v1.0/$metadata#users('{mailbox.user_id}')/mailFolders",
        "value": [folder_resource(mailbox, f, select) for f in chunk],
    }
    if skip + top < len(children):
        params = {"$top": str(top), "$skip": str(skip + top)}
        if ctx.param("select"):
            params["$select"] = ctx.param("select") or ""
        body["@odata.nextLink"] = _link(f"{ctx.base}/{path}", params)
    return json_response(body)


def _folder_delta(ctx: GraphRequest) -> Response:
    mailbox = ctx.target()
    page_size, applied = _page_size(ctx, delta.DEFAULT_PAGE_SIZE, delta.MAX_PAGE_SIZE)
    token = _delta_token(ctx, mailbox, -1)
    if token is None:
        token = delta.DeltaToken(
            delta.ENUMERATE, -1, mailbox.seq, mailbox.seq, 0, ctx.param("select") or ""
        )
    select = _parse_token_select(token.select, FOLDER_PROPERTIES, "microsoft.graph.mailFolder")
    if token.kind == delta.ENUMERATE:
        candidates = [f for f in mailbox.folders[1:] if not f.deleted]
    else:
        # The round's first page pins its upper bound, so later pages see the same set.
        until = token.until if token.until >= token.since else mailbox.seq
        token = delta.DeltaToken(token.kind, -1, token.since, until, token.position, token.select)
        # Newest first: a folder created inside a folder created in the same round comes
        # before its parent; Exchange does not promise parents first either.
        candidates = [
            f for f in reversed(mailbox.folders[1:]) if token.since < f.changed_seq <= until
        ]
    chunk = candidates[token.position : token.position + page_size]
    body: dict[str, Any] = {
        "@odata.context": f"{ctx.state.sim.base_url}/v1.0/$metadata#Collection(mailFolder)",
        "value": [
            removed_folder(f) if f.deleted else folder_resource(mailbox, f, select) for f in chunk
        ],
    }
    link = f"{ctx.base}/mailFolders/delta"
    end = token.position + page_size
    if end < len(candidates):
        nxt = delta.DeltaToken(token.kind, -1, token.since, token.until, end, token.select)
        body["@odata.nextLink"] = _link(link, {"$skiptoken": nxt.encode(mailbox.tag)})
    else:
        since = token.until if token.kind == delta.CHANGES else token.since
        done = delta.DeltaToken(delta.CHANGES, -1, since, -1, 0, token.select)
        body["@odata.deltaLink"] = _link(link, {"$deltatoken": done.encode(mailbox.tag)})
    return json_response(body, headers=applied)


def _delta_token(ctx: GraphRequest, mailbox: Mailbox, folder_index: int) -> delta.DeltaToken | None:
    raw = ctx.param("skiptoken") or ctx.param("deltatoken")
    if raw is None:
        return None
    try:
        token = delta.DeltaToken.decode(raw, mailbox.tag)
    except delta.TokenError as exc:
        raise GraphError(400, "BadRequest", str(exc)) from exc
    if token.folder != folder_index:
        raise GraphError(400, "BadRequest", "The state token does not belong to this collection.")
    return token


def _parse_token_select(
    raw: str, allowed: frozenset[str], type_name: str
) -> tuple[str, ...] | None:
    try:
        return parse_select(raw, allowed, type_name)
    except SelectError as exc:
        raise GraphError(400, "RequestBroker--ParseUri", str(exc)) from exc


async def _message_delta(ctx: GraphRequest, folder: Folder) -> Response:
    mailbox = ctx.target()
    if folder.deleted:
        # A round (or a deltaLink) on a folder deleted since: the sync state has no folder.
        raise GraphError(
            404, "ErrorSyncFolderNotFound", "The folder to be synchronized could not be found."
        )
    page_size, applied = _page_size(ctx, delta.DEFAULT_PAGE_SIZE, delta.MAX_PAGE_SIZE)
    link = f"{ctx.base}/mailFolders('{folder.id}')/messages/delta"
    context = f"{ctx.state.sim.base_url}/v1.0/$metadata#Collection(message)"
    if (ctx.param("deltatoken") or "").lower() == "latest" and ctx.param("skiptoken") is None:
        # No items, only a deltaLink from this moment: later rounds carry what changes after.
        select_raw = ctx.param("select") or ""
        _parse_token_select(select_raw, MESSAGE_PROPERTIES, "microsoft.graph.message")
        latest = delta.DeltaToken(delta.CHANGES, folder.index, mailbox.seq, -1, 0, select_raw)
        links = {"@odata.deltaLink": _link(link, {"$deltatoken": latest.encode(mailbox.tag)})}
        return Response(collection_json(context, [], links), media_type="application/json")
    token = _delta_token(ctx, mailbox, folder.index)
    if token is None:
        # Query options of the first request are carried inside every later token.
        select_raw = ctx.param("select") or ""
        _parse_token_select(select_raw, MESSAGE_PROPERTIES, "microsoft.graph.message")
        token = delta.start_token(mailbox, folder, select_raw)
    select = _parse_token_select(token.select, MESSAGE_PROPERTIES, "microsoft.graph.message")
    try:
        result = await delta.page(
            mailbox, folder, token, page_size=page_size, immutable=ctx.immutable_ids, select=select
        )
    except delta.TokenExpired as exc:
        raise GraphError(
            410, exc.code,
            "The sync state for this delta token was not found or has expired; start a new "
            "synchronization round without a token.",
        ) from exc  # fmt: skip
    links = {}
    if result.next_token is not None:
        links["@odata.nextLink"] = _link(
            link, {"$skiptoken": result.next_token.encode(mailbox.tag)}
        )
    elif result.delta_token is not None:
        links["@odata.deltaLink"] = _link(
            link, {"$deltatoken": result.delta_token.encode(mailbox.tag)}
        )
    return Response(
        collection_json(context, result.items, links),
        media_type="application/json",
        headers=applied,
    )


def _get_message(ctx: GraphRequest, ref: str, folder: Folder | None = None) -> Response:
    mailbox = ctx.target()
    key = mailbox.resolve_message(ref)
    if key is None:
        raise GraphError(
            404, "ErrorItemNotFound", "The specified object was not found in the store."
        )
    state = mailbox.state(key)
    if folder is not None and state.folder != folder.index:
        raise GraphError(
            404, "ErrorItemNotFound", "The specified object was not found in the store."
        )
    select = _select(ctx, MESSAGE_PROPERTIES, "microsoft.graph.message")
    encoded = message_json(mailbox, key, state, immutable=ctx.immutable_ids, select=select)
    if select is None or "body" in select or "uniqueBody" in select:
        # Bodies come from the message's content, in the form the Prefer header asks for
        # (HTML unless outlook.body-content-type="text").
        wanted = ctx.prefer.get("outlook.body-content-type", "html").lower()
        resource = json.loads(encoded)
        body = attachments.body_resource(mailbox.content_spec(key), wanted)
        for name in ("body", "uniqueBody"):
            if name in resource:
                resource[name] = body
        encoded = json.dumps(resource, ensure_ascii=False)
    context = f"{ctx.state.sim.base_url}/v1.0/$metadata#users('{mailbox.user_id}')/messages/$entity"
    content = '{"@odata.context":' + json.dumps(context) + "," + encoded[1:]
    return Response(content.encode(), media_type="application/json")


# -- messages listing ---------------------------------------------------------------------


@dataclass(slots=True)
class _Filter:
    received_from: datetime | None = None  # inclusive
    received_before: datetime | None = None  # exclusive
    received_after: datetime | None = None  # exclusive (gt)
    received_until: datetime | None = None  # inclusive (le)
    is_read: bool | None = None


def _parse_filter(raw: str | None) -> _Filter:
    result = _Filter()
    if not raw:
        return result
    for clause in re.split(r"\s+and\s+", raw.strip(), flags=re.IGNORECASE):
        match = _FILTER_CLAUSE.match(clause)
        if match is None:
            raise GraphError(
                400, "ErrorInvalidUrlQueryFilter",
                "The query filter contains one or more invalid nodes; only receivedDateTime "
                "(ge, gt, le, lt) and isRead (eq) are supported here.",
            )  # fmt: skip
        field_name, op, value = match.group(1).lower(), match.group(2).lower(), match.group(3)
        if field_name == "isread":
            if op != "eq" or value.lower() not in ("true", "false"):
                raise GraphError(
                    400, "ErrorInvalidUrlQueryFilter", "isRead supports eq true|false."
                )
            result.is_read = value.lower() == "true"
            continue
        try:
            moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise GraphError(
                400, "ErrorInvalidUrlQueryFilter", f"Invalid date '{value}'."
            ) from None
        if moment.tzinfo is None:
            raise GraphError(
                400, "ErrorInvalidUrlQueryFilter", f"Date '{value}' needs a time zone."
            )
        if op == "ge":
            result.received_from = moment
        elif op == "gt":
            result.received_after = moment
        elif op == "lt":
            result.received_before = moment
        elif op == "le":
            result.received_until = moment
        else:
            raise GraphError(
                400, "ErrorInvalidUrlQueryFilter", "receivedDateTime supports ge, gt, le, lt."
            )
    return result


def _first_key_after(mailbox: Mailbox, moment: datetime, *, inclusive: bool) -> int:
    """Seeded and added messages are received in key order, so a date bounds a key range.

    The first key received at or after `moment` (inclusive) or strictly after it.
    """
    lo, hi = 0, mailbox.next_key
    while lo < hi:
        mid = (lo + hi) // 2
        received = mailbox.received_at(mid)
        if received < moment or (not inclusive and received == moment):
            lo = mid + 1
        else:
            hi = mid
    return lo


def _key_bounds(mailbox: Mailbox, flt: _Filter) -> tuple[int, int]:
    """[low, high) keys whose receivedDateTime can satisfy the filter."""
    low, high = 0, mailbox.next_key
    if flt.received_from is not None:
        low = max(low, _first_key_after(mailbox, flt.received_from, inclusive=True))
    if flt.received_after is not None:
        low = max(low, _first_key_after(mailbox, flt.received_after, inclusive=False))
    if flt.received_before is not None:
        high = min(high, _first_key_after(mailbox, flt.received_before, inclusive=True))
    if flt.received_until is not None:
        high = min(high, _first_key_after(mailbox, flt.received_until, inclusive=False))
    return low, high


def _bounded_desc(keys: Iterator[int], low: int, high: int) -> Iterator[int]:
    for key in keys:
        if key >= high:
            continue
        if key < low:
            return
        yield key


def _folder_keys_between(
    mailbox: Mailbox, folder: Folder, low: int, high: int, *, ascending: bool
) -> Iterator[int]:
    """The folder's current messages among keys [low, high), in key (received) order."""
    keys = range(low, high) if ascending else range(high - 1, low - 1, -1)
    index = folder.index
    for key in keys:
        if mailbox.placement(key)[0] == index:
            yield key


def _list_messages(ctx: GraphRequest, folder: Folder | None) -> Response:
    if ctx.param("search") is not None:
        return _search_messages(ctx, folder)
    mailbox = ctx.target()
    top = _int_param(ctx, "top", _DEFAULT_TOP, 1, _MAX_TOP)
    skip = _int_param(ctx, "skip", 0, 0, 10_000_000)
    select = _select(ctx, MESSAGE_PROPERTIES, "microsoft.graph.message")
    raw_filter, orderby = ctx.param("filter"), (ctx.param("orderby") or "").strip().lower()
    if orderby not in ("", "receiveddatetime desc", "receiveddatetime", "receiveddatetime asc"):
        raise GraphError(
            400, "ErrorInvalidUrlQuery", "Only $orderby=receivedDateTime is supported."
        )
    if orderby and raw_filter and not _FILTER_CLAUSE_FIRST.match(raw_filter):
        # Graph: a property in $orderby must also be in $filter, and first there.
        raise GraphError(
            400,
            "InefficientFilter",
            "The restriction or sort order is too complex for this operation.",
        )
    flt = _parse_filter(raw_filter)
    low, high = _key_bounds(mailbox, flt)
    ascending = orderby in ("receiveddatetime", "receiveddatetime asc")
    in_range: Iterator[int]
    matched = 0
    position: tuple[Any, ...] | None = None
    if folder is not None and (low > 0 or high < mailbox.next_key):
        # A received-time window of a folder: walk the window's keys, not the whole folder.
        # $skip means "after this many", counted from the window's start; when the previous
        # page of the same listing stopped there and nothing changed since, the walk
        # resumes at its key instead of counting the skipped ones again (the same items).
        position = (folder.index, low, high, ascending, flt.is_read)
        start, end = low, high
        resume = mailbox.list_positions.get((*position, skip)) if skip else None
        if resume is not None and resume[0] == mailbox.seq:
            start, end = (resume[1], high) if ascending else (low, resume[1] + 1)
            matched = skip
        in_range = _folder_keys_between(mailbox, folder, start, end, ascending=ascending)
    else:
        keys = mailbox.members(folder) if folder is not None else mailbox.all_keys_desc()
        in_range = _bounded_desc(keys, low, high)
        if ascending:
            in_range = iter(sorted(in_range))
    items: list[str] = []
    more = False
    stopped_at = -1
    # Seeded messages never changed are served as pre-rendered, when the mailbox was
    # pre-rendered for this $select (as the delta enumeration serves them).
    stored = (
        mailbox.prerendered.get((folder.index, ctx.immutable_ids, select))
        if folder is not None and flt.is_read is None
        else None
    )
    for key in in_range:
        if stored is not None and key not in mailbox.overlay:
            assert folder is not None
            matched += 1
            if matched <= skip:
                continue
            if len(items) == top:
                more, stopped_at = True, key
                break
            slot = bisect_left(folder.seed, key)
            if slot < len(folder.seed) and folder.seed[slot] == key:
                items.append(stored[slot])
                continue
            items.append(
                message_json(
                    mailbox, key, mailbox.state(key), immutable=ctx.immutable_ids, select=select
                )
            )
            continue
        state = mailbox.state(key)
        if flt.is_read is not None and state.is_read != flt.is_read:
            continue
        matched += 1
        if matched <= skip:
            continue
        if len(items) == top:
            more, stopped_at = True, key
            break
        items.append(message_json(mailbox, key, state, immutable=ctx.immutable_ids, select=select))
    path = f"mailFolders('{folder.id}')/messages" if folder is not None else "messages"
    links = {}
    if more and position is not None:
        mailbox.list_positions[(*position, skip + top)] = (mailbox.seq, stopped_at)
        while len(mailbox.list_positions) > _LIST_POSITIONS:
            mailbox.list_positions.popitem(last=False)
    if more:
        params = {k: v for k, v in ctx.request.query_params.items() if k.lstrip("$") != "skip"}
        params["$skip"] = str(skip + top)
        links["@odata.nextLink"] = _link(f"{ctx.base}/{path}", params)
    context = f"{ctx.state.sim.base_url}/v1.0/$metadata#users('{mailbox.user_id}')/messages"
    return Response(collection_json(context, items, links), media_type="application/json")


# Listing positions kept per mailbox (a backfill's windows each need one at a time).
_LIST_POSITIONS = 256

# Graph refuses these beside $search (app/simulator/microsoft/search.py).
_NOT_WITH_SEARCH = (("orderby", "$orderBy"), ("filter", "$filter"), ("skip", "$skip"))


def _search_messages(ctx: GraphRequest, folder: Folder | None) -> Response:
    mailbox = ctx.target()
    for name, spelled in _NOT_WITH_SEARCH:
        if ctx.param(name) is not None:
            raise GraphError(
                400,
                "BadRequest",
                f"The query parameter '{spelled}' is not supported with '$search'.",
            )
    count = ctx.param("count")
    if count is not None and count.lower() != "false":
        raise GraphError(
            400, "BadRequest", "The query parameter '$count' is not supported with '$search'."
        )
    top = _int_param(ctx, "top", _DEFAULT_TOP, 1, _MAX_TOP)
    select = _select(ctx, MESSAGE_PROPERTIES, "microsoft.graph.message")
    raw = ctx.param("search") or ""
    fingerprint = search.fingerprint(mailbox, folder, raw, ctx.param("select"))
    offset = 0
    try:
        token = ctx.param("skiptoken")
        if token is not None:
            decoded = search.SearchToken.decode(token)
            if decoded.fingerprint != fingerprint:
                raise search.SearchError("The skip token does not belong to this search.")
            offset = decoded.offset
        keys = search.search(mailbox, folder, raw)
    except search.SearchError as exc:
        raise GraphError(400, "BadRequest", str(exc)) from None
    items = [
        message_json(mailbox, key, mailbox.state(key), immutable=ctx.immutable_ids, select=select)
        for key in keys[offset : offset + top]
    ]
    path = f"mailFolders('{folder.id}')/messages" if folder is not None else "messages"
    links = {}
    if offset + top < len(keys):
        params = {k: v for k, v in ctx.request.query_params.items() if k.lstrip("$") != "skiptoken"}
        params["$skiptoken"] = search.SearchToken(offset + top, fingerprint).encode()
        links["@odata.nextLink"] = _link(f"{ctx.base}/{path}", params)
    context = f"{ctx.state.sim.base_url}/v1.0/$metadata#users('{mailbox.user_id}')/messages"
    return Response(collection_json(context, items, links), media_type="application/json")
