"""`/dashboard`: the operator dashboard. Server-rendered (Jinja2); a few lines of JavaScript
served from /dashboard/static refresh each page's live region in place.

Routes stay thin: authenticate, read through app.dashboard.views, render. A page asked for
with `X-Dashboard-Fragment: 1` returns only its live region (what the script swaps in).
"""

from __future__ import annotations

import inspect
import logging
import re
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import parse_qs, urlencode

from fastapi import APIRouter, Depends, FastAPI, Query, Request, Response
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from app.api.deps import UnitOfWorkDep
from app.api.errors import ApiError, error_body
from app.dashboard import actions, views
from app.dashboard.auth import (
    COOKIE_PATH,
    SESSION_COOKIE,
    OperatorIdentity,
    check_csrf,
    make_session,
    operator,
    redeem_login_token,
)
from app.db.repositories.dashboard import DashboardRepository, MailboxFilter

HERE = Path(__file__).parent
templates = Jinja2Templates(directory=str(HERE / "templates"))

Operator = Annotated[OperatorIdentity, Depends(operator)]

# No inline script or style, nothing from elsewhere; no Referer (a login link's token
# must not travel to another site); never cached (pages are live and per operator).
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}

router = APIRouter(prefix="/dashboard", include_in_schema=False)


# -- template helpers -----------------------------------------------------------------


def _ago(value: datetime | None) -> str:
    if value is None:
        return "never"
    seconds = (datetime.now(UTC) - value).total_seconds()
    future = seconds < 0
    seconds = abs(seconds)
    if seconds < 1:
        return "now"
    if seconds < 60:
        text = f"{int(seconds)} s"
    elif seconds < 3600:
        text = f"{int(seconds // 60)} min"
    elif seconds < 86400:
        text = f"{int(seconds // 3600)} h"
    else:
        text = f"{int(seconds // 86400)} d"
    return f"in {text}" if future else f"{text} ago"


def _iso(value: datetime | None) -> str:
    return value.isoformat(timespec="seconds") if value else ""


def _number(value: int | float | None) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:,.1f}"
    return f"{value:,}"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _ago_ts(timestamp: float) -> str:
    return _ago(datetime.fromtimestamp(timestamp, UTC))


templates.env.filters.update(ago=_ago, ago_ts=_ago_ts, iso=_iso, number=_number, duration=_duration)


def _render(
    request: Request, identity: OperatorIdentity, page: str, context: dict[str, Any]
) -> HTMLResponse:
    fragment = request.headers.get("x-dashboard-fragment") == "1"
    settings = request.app.state.settings
    response = templates.TemplateResponse(
        request,
        f"{page}_live.html" if fragment else f"{page}.html",
        {
            "identity": identity,
            "refresh_ms": int(settings.dashboard_refresh_seconds * 1000),
            "page": page,
            **context,
        },
    )
    response.headers.update(SECURITY_HEADERS)
    response.headers["Vary"] = "X-Dashboard-Fragment, Cookie, Authorization"
    return response


def _wants_html(request: Request) -> bool:
    return "text/html" in request.headers.get("accept", "")


async def _error_page(request: Request, exc: ApiError) -> Response:
    """The dashboard's 401/403/404 as a page for browsers, as JSON for everything else."""
    if not _wants_html(request):
        return JSONResponse(error_body(exc.code, exc.message), status_code=exc.status)
    response = templates.TemplateResponse(
        request,
        "error.html",
        {"status": exc.status, "message": exc.message, "identity": None, "page": "error"},
        status_code=exc.status,
    )
    response.headers.update(SECURITY_HEADERS)
    return response


_MAX_FORM_BYTES = 4096


async def _form_field(request: Request, name: str) -> str | None:
    """One field of a urlencoded form (the dashboard's forms have one or two)."""
    body = await request.body()
    if len(body) > _MAX_FORM_BYTES:
        raise ApiError(413, "payload_too_large", "form too large")
    try:
        form = parse_qs(body.decode("utf-8", "replace"), max_num_fields=10)
    except ValueError as exc:
        raise ApiError(400, "bad_request", "not a form this dashboard sends") from exc
    values = form.get(name)
    return values[0] if values else None


# -- pages ----------------------------------------------------------------------------


@router.get("", response_class=HTMLResponse)
async def overview_page(request: Request, identity: Operator, uow: UnitOfWorkDep) -> Response:
    data = await views.overview(uow.session, uow.rt)
    return _render(request, identity, "overview", {"o": data, "windows": (1, 5, 15)})


@router.get("/mailboxes", response_class=HTMLResponse)
async def mailboxes_page(
    request: Request,
    identity: Operator,
    uow: UnitOfWorkDep,
    status: Annotated[str | None, Query(max_length=40)] = None,
    provider: Annotated[str | None, Query(max_length=40)] = None,
    user: Annotated[str | None, Query(max_length=300)] = None,
    q: Annotated[str | None, Query(max_length=300)] = None,
    page: Annotated[int, Query(ge=1, le=100_000)] = 1,
) -> Response:
    flt = MailboxFilter(
        status=status or None, provider=provider or None, user_id=user or None, search=q or None
    )
    data = await views.mailbox_page(uow.session, flt, page)
    query = {
        k: v for k, v in (("status", status), ("provider", provider), ("user", user), ("q", q)) if v
    }

    def page_url(n: int) -> str:
        return "/dashboard/mailboxes?" + urlencode({**query, "page": n})

    return _render(
        request,
        identity,
        "mailboxes",
        {
            "data": data,
            "statuses": views.STATUS_ORDER,
            "providers": views.PROVIDERS,
            "page_url": page_url,
        },
    )


@router.get("/mailboxes/{mailbox_id}", response_class=HTMLResponse)
async def mailbox_page(
    request: Request,
    mailbox_id: uuid.UUID,
    identity: Operator,
    uow: UnitOfWorkDep,
    done: Annotated[str | None, Query(max_length=40)] = None,
) -> Response:
    detail = await views.mailbox_detail(uow.session, uow.rt, mailbox_id)
    if detail is None:
        raise ApiError(404, "not_found", "mailbox not found")
    performed = actions.ACTIONS.get(done) if done else None
    return _render(
        request,
        identity,
        "mailbox",
        {
            "d": detail,
            "m": detail.mailbox,
            "actions": actions.available(detail.mailbox),
            "performed": performed,
        },
    )


@router.post("/mailboxes/{mailbox_id}/actions/{name}")
async def mailbox_action(
    request: Request, mailbox_id: uuid.UUID, name: str, identity: Operator, uow: UnitOfWorkDep
) -> Response:
    check_csrf(request, identity, await _form_field(request, "csrf"))
    action = actions.ACTIONS.get(name)
    if action is None:
        raise ApiError(404, "not_found", f"no action {name!r}")
    row = await DashboardRepository(uow.session).mailbox(mailbox_id)
    if row is None:
        raise ApiError(404, "not_found", "mailbox not found")
    if not action.applies(views.mailbox_view(row, [])):
        raise ApiError(409, "conflict", f"{action.label} does not apply to a {row.status} mailbox")
    try:
        await action.run(uow, mailbox_id)
    except actions.Refused as exc:
        raise ApiError(409, "conflict", str(exc)) from exc
    await uow.commit()
    return RedirectResponse(f"/dashboard/mailboxes/{mailbox_id}?done={name}", status_code=303)


# -- signing in and out ---------------------------------------------------------------


@router.get("/login")
async def login(request: Request, token: Annotated[str, Query(max_length=8192)]) -> Response:
    identity = await redeem_login_token(request, token)
    settings = request.app.state.settings
    value, _ = make_session(
        request.app.state.rt.cipher, identity.subject, settings.dashboard_session_hours
    )
    # The redirect drops the token from the address bar and the history entry.
    response = RedirectResponse("/dashboard", status_code=303)
    response.set_cookie(
        SESSION_COOKIE,
        value,
        max_age=int(settings.dashboard_session_hours * 3600),
        path=COOKIE_PATH,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https" or settings.public_base_url.startswith("https://"),
    )
    response.headers.update(SECURITY_HEADERS)
    return response


@router.post("/logout")
async def logout(request: Request, identity: Operator) -> Response:
    check_csrf(request, identity, await _form_field(request, "csrf"))
    response = RedirectResponse("/dashboard/signed-out", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path=COOKIE_PATH)
    return response


@router.get("/signed-out", response_class=HTMLResponse)
async def signed_out(request: Request) -> Response:
    return await _error_page(request, ApiError(401, "unauthorized", "Signed out."))


_LOGIN_TOKEN = re.compile(r"(/dashboard/login\?(?:[^ ]*&)?token=)[^& ]+")


class _RedactLoginTokens(logging.Filter):
    """Access logs print request paths; a login link's token never reaches a log line."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(
                _LOGIN_TOKEN.sub(r"\1[redacted]", a) if isinstance(a, str) else a
                for a in record.args
            )
        return True


def install_dashboard(app: FastAPI) -> None:
    access = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, _RedactLoginTokens) for f in access.filters):
        access.addFilter(_RedactLoginTokens())
    app.include_router(router)
    app.mount(
        "/dashboard/static", StaticFiles(directory=str(HERE / "static")), name="dashboard-static"
    )

    previous = app.exception_handlers.get(ApiError)

    async def dashboard_errors(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        if request.url.path.startswith("/dashboard") and exc.status in (
            400,
            401,
            403,
            404,
            409,
            413,
        ):
            return await _error_page(request, exc)
        assert previous is not None
        result = previous(request, exc)
        return await result if inspect.isawaitable(result) else result

    app.add_exception_handler(ApiError, dashboard_errors)
