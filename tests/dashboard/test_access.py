"""Who gets in: operators by bearer or by a one-time login link; nobody else; CSRF-safe actions."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime

import httpx
from sqlalchemy import text

from app.config import Settings
from app.dashboard.auth import SESSION_COOKIE, mint_login_token
from app.db.repositories.subscriptions import SubscriptionRepository
from app.providers import registry
from app.sync.runtime import Runtime
from tests.conftest import bearer, run_worker
from tests.sync.helpers import connect, seeded

OPERATOR = bearer("ops", roles=["mailsync.operator"])
HTML = {"Accept": "text/html"}


async def test_without_credentials_the_dashboard_is_401_and_says_how_to_sign_in(
    api: httpx.AsyncClient,
) -> None:
    for path in ("/dashboard", "/dashboard/mailboxes", f"/dashboard/mailboxes/{uuid.uuid4()}"):
        response = await api.get(path)
        assert response.status_code == 401, path
        assert response.json()["error"]["code"] == "unauthorized"
    page = await api.get("/dashboard", headers=HTML)
    assert page.status_code == 401
    assert "text/html" in page.headers["content-type"]
    assert "operator" in page.text


async def test_a_users_own_token_without_the_operator_role_is_403(api: httpx.AsyncClient) -> None:
    for headers in (
        bearer("alice"),
        bearer("alice", roles=["mailsync.reader"]),
        bearer("alice", roles="something mailsync.operatorx"),
    ):
        response = await api.get("/dashboard", headers=headers)
        assert response.status_code == 403
        assert response.json()["error"]["code"] == "forbidden"
    # A forged token (wrong key) is not an operator either: 401.
    forged = {"Authorization": "Bearer " + OPERATOR["Authorization"].split()[1][:-3] + "abc"}
    assert (await api.get("/dashboard", headers=forged)).status_code == 401


async def test_the_roles_claim_and_role_follow_the_settings(
    settings: Settings, rt: Runtime
) -> None:
    from app.main import create_app

    custom = settings.model_copy(update={"auth_roles_claim": "groups", "auth_operator_role": "ops"})
    app = create_app(custom)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://mailsync.test"
        ) as client,
    ):
        grouped = bearer("eve", groups="staff ops")
        assert (await client.get("/dashboard", headers=grouped)).status_code == 200
        assert (await client.get("/dashboard", headers=OPERATOR)).status_code == 403


async def test_a_login_link_works_once_and_becomes_a_session_cookie(
    api: httpx.AsyncClient, settings: Settings
) -> None:
    token = mint_login_token(settings, "ops")
    first = await api.get(f"/dashboard/login?token={token}")
    assert first.status_code == 303
    assert first.headers["location"] == "/dashboard"
    cookie = first.headers["set-cookie"]
    assert cookie.startswith(f"{SESSION_COOKIE}=")
    for attribute in ("HttpOnly", "Path=/dashboard", "SameSite=strict"):
        assert attribute.lower() in cookie.lower(), cookie
    assert first.headers["referrer-policy"] == "no-referrer"
    session = first.cookies[SESSION_COOKIE]
    api.cookies.clear()  # every request below says which cookie it sends
    # The token is nowhere in the cookie: it is an encrypted session of our own.
    assert token not in cookie

    page = await api.get("/dashboard", cookies={SESSION_COOKIE: session})
    assert page.status_code == 200 and "ops" in page.text

    assert (await api.get("/dashboard")).status_code == 401
    again = await api.get(f"/dashboard/login?token={token}")
    assert again.status_code == 401
    assert "already used" in again.json()["error"]["message"]

    # A login token must be an operator's, and must carry a jti.
    assert (
        await api.get("/dashboard/login?token=" + bearer("alice")["Authorization"][7:])
    ).status_code == 403
    no_jti = bearer("ops", roles=["mailsync.operator"])["Authorization"][7:]
    assert (await api.get(f"/dashboard/login?token={no_jti}")).status_code == 401
    # Entra ID's unique token id is `uti`: such a token is a login token too, once.
    entra = bearer("ops", roles=["mailsync.operator"], uti="AbC123")["Authorization"][7:]
    assert (await api.get(f"/dashboard/login?token={entra}")).status_code == 303
    assert (await api.get(f"/dashboard/login?token={entra}")).status_code == 401
    api.cookies.clear()
    # A tampered cookie is no session.
    tampered = session[:-4] + ("AAAA" if not session.endswith("AAAA") else "BBBB")
    assert (await api.get("/dashboard", cookies={SESSION_COOKIE: tampered})).status_code == 401


async def _signed_in(api: httpx.AsyncClient, settings: Settings) -> tuple[str, str]:
    response = await api.get(f"/dashboard/login?token={mint_login_token(settings, 'ops')}")
    session = response.cookies[SESSION_COOKIE]
    api.cookies.clear()
    return session, ""


async def _csrf_of(api: httpx.AsyncClient, session: str, mailbox_id: uuid.UUID) -> str:
    page = await api.get(f"/dashboard/mailboxes/{mailbox_id}", cookies={SESSION_COOKIE: session})
    assert page.status_code == 200
    match = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert match is not None
    return match.group(1)


async def test_actions_need_the_sessions_csrf_token_and_our_origin(
    api: httpx.AsyncClient, rt: Runtime, settings: Settings
) -> None:
    provider = seeded(30)
    registry.override("microsoft", lambda s, h: provider)
    mailbox_id = await connect(rt, provider, user="alice", email="alice@contoso.com")
    session, _ = await _signed_in(api, settings)
    csrf = await _csrf_of(api, session, mailbox_id)
    url = f"/dashboard/mailboxes/{mailbox_id}/actions/sync"
    form = {"content-type": "application/x-www-form-urlencoded"}
    cookies = {SESSION_COOKIE: session}

    missing = await api.post(url, content=b"", headers=form, cookies=cookies)
    wrong = await api.post(url, content=b"csrf=nope", headers=form, cookies=cookies)
    foreign = await api.post(
        url,
        content=f"csrf={csrf}".encode(),
        headers={**form, "origin": "https://evil.example"},
        cookies=cookies,
    )
    assert [r.status_code for r in (missing, wrong, foreign)] == [403, 403, 403]
    assert not await rt.redis.keys("arq:job:sync:*:now*")

    ok = await api.post(
        url,
        content=f"csrf={csrf}".encode(),
        headers={**form, "origin": "http://mailsync.test"},
        cookies=cookies,
    )
    assert ok.status_code == 303
    assert ok.headers["location"] == f"/dashboard/mailboxes/{mailbox_id}?done=sync"
    [job] = await rt.redis.keys(f"arq:job:sync:{mailbox_id}:now*")
    assert job
    done = await api.get(ok.headers["location"], cookies=cookies)
    assert "Sync requested" in done.text

    # A bearer token cannot be sent by another site: no CSRF token needed.
    by_bearer = await api.post(url, content=b"", headers={**form, **OPERATOR})
    assert by_bearer.status_code == 303
    # Odd bodies are 4xx, never a 500.
    many = "&".join(f"f{n}=1" for n in range(20)).encode()
    assert (await api.post(url, content=many, headers={**form, **OPERATOR})).status_code == 400
    huge = b"csrf=" + b"x" * 10_000
    assert (await api.post(url, content=huge, headers={**form, **OPERATOR})).status_code == 413
    # Unknown actions and mailboxes are 404s.
    assert (
        await api.post(f"/dashboard/mailboxes/{mailbox_id}/actions/explode", headers=OPERATOR)
    ).status_code == 404
    assert (
        await api.post(f"/dashboard/mailboxes/{uuid.uuid4()}/actions/sync", headers=OPERATOR)
    ).status_code == 404


async def test_disconnect_from_the_dashboard_parks_the_mailbox(
    api: httpx.AsyncClient, rt: Runtime
) -> None:
    provider = seeded(30)
    registry.override("microsoft", lambda s, h: provider)
    mailbox_id = await connect(rt, provider, user="alice", email="alice@contoso.com", enqueue=True)
    await run_worker(rt)
    response = await api.post(
        f"/dashboard/mailboxes/{mailbox_id}/actions/disconnect", headers=OPERATOR
    )
    assert response.status_code == 303
    async with rt.sessions() as session:
        status = await session.scalar(
            text("SELECT status FROM mailboxes WHERE id = :id"), {"id": mailbox_id}
        )
    assert status == "disconnected"
    # Sync now no longer applies, and the page no longer offers it.
    page = await api.get(f"/dashboard/mailboxes/{mailbox_id}", headers=OPERATOR)
    assert 'data-action="sync"' not in page.text and 'data-action="disconnect"' not in page.text
    refused = await api.post(f"/dashboard/mailboxes/{mailbox_id}/actions/sync", headers=OPERATOR)
    assert refused.status_code == 409


async def test_a_mailbox_page_never_shows_a_token_or_secret(
    api: httpx.AsyncClient, rt: Runtime
) -> None:
    provider = seeded(40)
    registry.override("microsoft", lambda s, h: provider)
    mailbox_id = await connect(rt, provider, user="alice", email="alice@contoso.com", enqueue=True)
    await run_worker(rt)
    async with rt.sessions() as session:
        cred = (
            await session.execute(
                text("SELECT secret FROM credentials WHERE mailbox_id = :id"), {"id": mailbox_id}
            )
        ).scalar_one()
        cursors = (
            (
                await session.execute(
                    text("SELECT cursor FROM sync_cursors WHERE mailbox_id = :id"),
                    {"id": mailbox_id},
                )
            )
            .scalars()
            .all()
        )
    secrets_ = rt.cipher.decrypt_json(cred)
    client_state = "client-state-" + uuid.uuid4().hex
    async with rt.sessions() as session, session.begin():
        await SubscriptionRepository(session, rt.cipher).replace_active(
            mailbox_id,
            provider="microsoft",
            subscription_id="sub-1",
            expires_at=datetime.now(UTC),
            client_state=client_state,
            resource="me/messages",
        )
    page = await api.get(f"/dashboard/mailboxes/{mailbox_id}", headers=OPERATOR)
    assert page.status_code == 200
    body = page.text
    assert "alice@contoso.com" in body
    for secret in (secrets_["access_token"], secrets_["refresh_token"], client_state):
        assert secret and secret not in body
    # Cursors show their kind, never their value.
    for cursor in cursors:
        for value in (cursor or {}).values():
            if isinstance(value, str) and len(value) > 12:
                assert value not in body
    assert page.headers["cache-control"] == "no-store"
    assert "script-src 'self'" in page.headers["content-security-policy"]


def test_access_logs_never_carry_a_login_token() -> None:
    import logging

    from app.dashboard.routes import _RedactLoginTokens

    record = logging.LogRecord(
        "uvicorn.access",
        logging.INFO,
        __file__,
        1,
        '%s - "%s %s HTTP/%s" %d',
        ("127.0.0.1:5000", "GET", "/dashboard/login?token=eyJhbGciOi.secret.sig&x=1", "1.1", 303),
        None,
    )
    assert _RedactLoginTokens().filter(record)
    line = record.getMessage()
    assert "eyJ" not in line and "secret" not in line
    assert "/dashboard/login?token=[redacted]&x=1" in line


async def test_pause_resume_and_resync_from_the_dashboard(
    api: httpx.AsyncClient, rt: Runtime
) -> None:
    provider = seeded(30)
    registry.override("microsoft", lambda s, h: provider)
    mailbox_id = await connect(rt, provider, user="alice", email="alice@contoso.com", enqueue=True)
    await run_worker(rt)
    page_url = f"/dashboard/mailboxes/{mailbox_id}"

    async def offered() -> set[str]:
        page = await api.get(page_url, headers=OPERATOR)
        return set(re.findall(r'data-action="([a-z]+)"', page.text))

    assert await offered() == {"sync", "resync", "pause", "disconnect"}
    paused = await api.post(f"{page_url}/actions/pause", headers=OPERATOR)
    assert paused.status_code == 303
    assert await offered() == {"resume", "disconnect"}
    assert 'id="paused"' in (await api.get(page_url, headers=OPERATOR)).text
    # The service refuses to sync a paused mailbox: a 409, not a queued job.
    assert (await api.post(f"{page_url}/actions/sync", headers=OPERATOR)).status_code == 409
    assert not await rt.redis.keys(f"arq:job:sync:{mailbox_id}:now*")

    resumed = await api.post(f"{page_url}/actions/resume", headers=OPERATOR)
    assert resumed.status_code == 303
    assert await rt.redis.keys(f"arq:job:sync:{mailbox_id}:resume*")
    assert await offered() == {"sync", "resync", "pause", "disconnect"}

    resync = await api.post(f"{page_url}/actions/resync", headers=OPERATOR)
    assert resync.status_code == 303
    assert await rt.redis.keys(f"arq:job:sync:{mailbox_id}:resync*")
    assert "enumerated again" in (await api.get(resync.headers["location"], headers=OPERATOR)).text
