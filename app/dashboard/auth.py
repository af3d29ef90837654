"""Who may see the dashboard: operators, by bearer token or by a browser session.

- A bearer JWT (the API's own verification and role rule, app.api.auth) whose roles claim
  (`AUTH_ROLES_CLAIM`) holds `AUTH_OPERATOR_ROLE`. A valid token without the role is a 403.
- A session cookie, made by `GET /dashboard/login?token=<JWT>` from an operator token that
  carries a `jti`: the token works once (its id is remembered in Redis until it expires),
  so a login link that leaked through a browser history or a proxy log is already spent.
  The cookie is the session encrypted and authenticated with the token cipher (Fernet), so
  it needs no server-side store; it is HttpOnly, SameSite=Strict and scoped to /dashboard.
- Actions (POST) made with the cookie must carry the session's CSRF token and, when the
  browser sends one, a same-origin `Origin`. With a bearer token there is nothing to forge.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
import uuid
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit

import jwt
from cryptography.fernet import InvalidToken
from fastapi import Request

from app.api.auth import Caller, decode_bearer, roles_of
from app.api.errors import ApiError
from app.config import Settings
from app.crypto import SecretDecryptionError, TokenCipher

SESSION_COOKIE = "mailsync_dashboard"
COOKIE_PATH = "/dashboard"
_SESSION_PURPOSE = "mailsync-dashboard-session"
_USED_LOGIN_PREFIX = "mailsync:dashboard-login:"
# A login link is for now, not for later.
MAX_LOGIN_TOKEN_SECONDS = 24 * 3600


@dataclass(frozen=True, slots=True)
class OperatorIdentity:
    subject: str
    via: Literal["bearer", "cookie"]
    # The session's CSRF token (cookie sessions only).
    csrf: str | None = None


def _forbidden(settings: Settings) -> ApiError:
    # The same words as the API's operator routes (app.api.auth.current_operator).
    return ApiError(
        403,
        "forbidden",
        f"this needs the operator role {settings.auth_operator_role!r} "
        f"in the token's {settings.auth_roles_claim!r} claim",
    )


def _unauthorized(message: str) -> ApiError:
    return ApiError(401, "unauthorized", message)


async def operator_from_bearer(
    token: str, settings: Settings
) -> tuple[OperatorIdentity, dict[str, Any]]:
    claims = await decode_bearer(token, settings)
    sub = claims.get("sub")
    if not isinstance(sub, str) or not sub:
        raise _unauthorized("bearer token has no subject")
    if not Caller(sub, roles_of(claims, settings.auth_roles_claim)).is_operator(settings):
        raise _forbidden(settings)
    return OperatorIdentity(subject=sub, via="bearer"), claims


# -- sessions -------------------------------------------------------------------------


def make_session(cipher: TokenCipher, subject: str, hours: float) -> tuple[str, OperatorIdentity]:
    csrf = secrets.token_urlsafe(24)
    document = {
        "purpose": _SESSION_PURPOSE,
        "sub": subject,
        "exp": int(time.time() + hours * 3600),
        "csrf": csrf,
    }
    value = cipher.encrypt_json(document).decode()
    return value, OperatorIdentity(subject=subject, via="cookie", csrf=csrf)


def read_session(cipher: TokenCipher, value: str) -> OperatorIdentity | None:
    try:
        document = cipher.decrypt_json(value.encode())
    except (SecretDecryptionError, InvalidToken, ValueError, json.JSONDecodeError):
        return None
    if document.get("purpose") != _SESSION_PURPOSE:
        return None
    if not isinstance(document.get("exp"), int) or document["exp"] < time.time():
        return None
    subject, csrf = document.get("sub"), document.get("csrf")
    if not isinstance(subject, str) or not isinstance(csrf, str):
        return None
    return OperatorIdentity(subject=subject, via="cookie", csrf=csrf)


async def operator(request: Request) -> OperatorIdentity:
    """The dependency every dashboard route takes."""
    settings: Settings = request.app.state.settings
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        bearer, _claims = await operator_from_bearer(token.strip(), settings)
        return bearer
    cookie = request.cookies.get(SESSION_COOKIE)
    if cookie:
        session = read_session(request.app.state.rt.cipher, cookie)
        if session is not None:
            return session
        raise _unauthorized("the dashboard session has expired; sign in again")
    raise _unauthorized("sign in with an operator token (see the README: Dashboard)")


# -- one-time login tokens ------------------------------------------------------------


def mint_login_token(
    settings: Settings, subject: str, *, seconds: int = 3600, extra: dict[str, Any] | None = None
) -> str:
    """A one-time operator login token, signed with AUTH_JWT_SECRET (development, the demo).
    With a JWKS-only setup, the identity provider issues such tokens instead."""
    if not settings.auth_jwt_secret:
        raise RuntimeError("minting a login token needs AUTH_JWT_SECRET")
    now = int(time.time())
    claims: dict[str, Any] = {
        "sub": subject,
        "iat": now,
        "exp": now + seconds,
        "jti": uuid.uuid4().hex,
        **(extra or {}),
    }
    claims[settings.auth_roles_claim] = [settings.auth_operator_role]
    if settings.auth_jwt_audience:
        claims["aud"] = settings.auth_jwt_audience
    if settings.auth_jwt_issuer:
        claims["iss"] = settings.auth_jwt_issuer
    return jwt.encode(claims, settings.auth_jwt_secret, algorithm="HS256")


async def redeem_login_token(request: Request, token: str) -> OperatorIdentity:
    """Check an operator token for a login link and spend it; raises ApiError."""
    settings: Settings = request.app.state.settings
    identity, claims = await operator_from_bearer(token, settings)
    # `jti` (RFC 7519); Entra ID names its unique token id `uti`.
    jti, exp = claims.get("jti") or claims.get("uti"), claims.get("exp")
    if not isinstance(jti, str) or not jti:
        raise _unauthorized("a login token must carry a jti (it can be used only once)")
    remaining = int(exp) - int(time.time()) if isinstance(exp, int | float) else 0
    if remaining > MAX_LOGIN_TOKEN_SECONDS:
        raise _unauthorized("a login token must expire within a day")
    # Only a digest of the id: the store never learns anything about the token itself.
    key = _USED_LOGIN_PREFIX + hashlib.sha256(f"{identity.subject}\0{jti}".encode()).hexdigest()
    fresh = await request.app.state.rt.redis.set(key, b"1", nx=True, ex=max(remaining, 1))
    if not fresh:
        raise _unauthorized("this login link was already used; ask for a new one")
    return identity


def check_csrf(request: Request, identity: OperatorIdentity, submitted: str | None) -> None:
    """Cookie sessions only: the form's token must be the session's, from our own origin."""
    if identity.via == "bearer":
        return
    origin = request.headers.get("origin")
    if origin and origin != "null":
        expected = urlsplit(str(request.base_url))
        given = urlsplit(origin)
        if (given.scheme, given.netloc) != (expected.scheme, expected.netloc):
            raise ApiError(403, "forbidden", "cross-origin request refused")
    if not submitted or identity.csrf is None or not hmac.compare_digest(submitted, identity.csrf):
        raise ApiError(403, "forbidden", "missing or wrong CSRF token; reload the page")
