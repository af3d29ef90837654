"""Bearer JWT: HS256 with AUTH_JWT_SECRET, or RS256/ES256 verified against AUTH_JWKS_URL."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from functools import lru_cache
from typing import Annotated, Any

import jwt
from fastapi import Depends, Request

from app.api.errors import ApiError
from app.config import Settings

_ASYMMETRIC = ["RS256", "ES256"]


@lru_cache(maxsize=4)
def _jwks_client(url: str) -> jwt.PyJWKClient:
    return jwt.PyJWKClient(url, cache_keys=True, lifespan=300)


def _unauthorized(message: str) -> ApiError:
    return ApiError(401, "unauthorized", message, headers={"WWW-Authenticate": "Bearer"})


async def decode_bearer(token: str, settings: Settings) -> dict[str, Any]:
    options = {"require": ["exp", "sub"]}
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError as exc:
        raise _unauthorized("malformed bearer token") from exc
    alg = header.get("alg")
    kwargs: dict[str, Any] = {"options": options}
    if settings.auth_jwt_audience:
        kwargs["audience"] = settings.auth_jwt_audience
    else:
        kwargs["options"] = {**options, "verify_aud": False}
    if settings.auth_jwt_issuer:
        kwargs["issuer"] = settings.auth_jwt_issuer
    try:
        if alg in _ASYMMETRIC and settings.auth_jwks_url:
            client = _jwks_client(settings.auth_jwks_url)
            # PyJWKClient fetches with urllib: keep it off the event loop.
            key = await asyncio.to_thread(client.get_signing_key_from_jwt, token)
            return jwt.decode(token, key.key, algorithms=_ASYMMETRIC, **kwargs)
        if alg == "HS256" and settings.auth_jwt_secret:
            return jwt.decode(token, settings.auth_jwt_secret, algorithms=["HS256"], **kwargs)
    except jwt.ExpiredSignatureError as exc:
        raise _unauthorized("bearer token expired") from exc
    except (jwt.PyJWTError, ValueError) as exc:
        raise _unauthorized("invalid bearer token") from exc
    # "none" and any algorithm we were not configured for.
    raise _unauthorized(f"bearer token algorithm {alg!r} is not accepted")


@dataclass(frozen=True, slots=True)
class Caller:
    """Who is calling: the `sub` claim, and the roles the token grants."""

    user_id: str
    roles: frozenset[str]

    def is_operator(self, settings: Settings) -> bool:
        return settings.auth_operator_role in self.roles


def roles_of(claims: dict[str, Any], claim: str) -> frozenset[str]:
    """Entra ID issues `roles` as a list; some issuers send one space-separated string."""
    value = claims.get(claim)
    if isinstance(value, str):
        return frozenset(value.split())
    if isinstance(value, list):
        return frozenset(v for v in value if isinstance(v, str))
    return frozenset()


async def current_caller(request: Request) -> Caller:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise _unauthorized("missing bearer token")
    settings: Settings = request.app.state.settings
    claims = await decode_bearer(token.strip(), settings)
    sub = claims.get("sub")
    if not isinstance(sub, str) or not sub:
        raise _unauthorized("bearer token has no subject")
    return Caller(sub, roles_of(claims, settings.auth_roles_claim))


async def current_user(caller: Annotated[Caller, Depends(current_caller)]) -> str:
    return caller.user_id


async def current_operator(
    request: Request, caller: Annotated[Caller, Depends(current_caller)]
) -> Caller:
    settings: Settings = request.app.state.settings
    if not caller.is_operator(settings):
        raise ApiError(
            403,
            "forbidden",
            f"this needs the operator role {settings.auth_operator_role!r} "
            f"in the token's {settings.auth_roles_claim!r} claim",
        )
    return caller


CurrentCaller = Annotated[Caller, Depends(current_caller)]
CurrentUser = Annotated[str, Depends(current_user)]
Operator = Annotated[Caller, Depends(current_operator)]
