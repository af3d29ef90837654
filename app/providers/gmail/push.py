"""Pure helpers for the `/webhooks/google` route: authenticate a Pub/Sub push, read it.

Pub/Sub signs each push with a Google OIDC token (RS256, keys at GOOGLE_PUSH_CERTS_URL):
`iss` is accounts.google.com, `aud` the audience configured on the push subscription,
`email` the subscription's service account. The body is Pub/Sub's envelope, whose
`message.data` is base64url JSON `{"emailAddress", "historyId"}`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import os
import ssl
from dataclasses import dataclass
from typing import Any

import jwt
import orjson

from app.config import Settings
from app.providers.base import ChangeHint
from app.providers.gmail.streams import STREAM_KEY

GOOGLE_ISSUERS = ("accounts.google.com", "https://accounts.google.com")
# Clock skew tolerated on exp/iat between Google and us.
LEEWAY_SECONDS = 30
# An address is at most 254 characters; Pub/Sub message ids are decimal strings.
MAX_FIELD = 512


class PushAuthError(Exception):
    """Refuse the push: 401 (no, bad or expired token), 403 (not for us), 503 (no keys)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(frozen=True, slots=True)
class GmailPush:
    email_address: str
    history_id: int
    # Pub/Sub's id for the delivery (not a Gmail message id); redeliveries repeat it.
    message_id: str

    @property
    def dedup_key(self) -> str:
        """Equal for every redelivery of this push."""
        return "pubsub:" + hashlib.sha256(self.message_id.encode()).hexdigest()[:32]

    @property
    def hint(self) -> ChangeHint:
        """A push says the mailbox's history moved: the one history stream, from its cursor."""
        return ChangeHint(stream=STREAM_KEY)

    def recorded(self) -> dict[str, Any]:
        """What the audit log keeps of it."""
        return {"history_id": str(self.history_id), "message_id": self.message_id}


def _plausible(value: str) -> bool:
    # PostgreSQL text cannot hold NUL; nothing Google sends is this long.
    return len(value) <= MAX_FIELD and "\x00" not in value


def _trust() -> ssl.SSLContext | None:
    # PyJWKClient fetches with urllib, which ignores SSL_CERT_FILE; honour it (and
    # REQUESTS_CA_BUNDLE) the way httpx and requests do.
    cafile = os.environ.get("SSL_CERT_FILE") or os.environ.get("REQUESTS_CA_BUNDLE")
    return ssl.create_default_context(cafile=cafile) if cafile else None


class PushVerifier:
    def __init__(self, settings: Settings) -> None:
        self._audience = settings.google_push_audience
        self._service_account = settings.google_push_service_account
        self._jwks = jwt.PyJWKClient(
            settings.google_push_certs_url,
            cache_jwk_set=True,
            lifespan=3600,
            timeout=10,
            ssl_context=_trust(),
        )

    @property
    def configured(self) -> bool:
        """Both GOOGLE_PUSH_AUDIENCE and GOOGLE_PUSH_SERVICE_ACCOUNT are set."""
        return bool(self._audience and self._service_account)

    async def verify(self, authorization: str | None) -> dict[str, Any]:
        """The token's claims when the push really comes from our subscription."""
        scheme, _, token = (authorization or "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise PushAuthError(401, "missing bearer token")
        if not self._audience or not self._service_account:
            # Fail closed: without both we cannot tell our pushes from anyone's.
            raise PushAuthError(
                403, "GOOGLE_PUSH_AUDIENCE and GOOGLE_PUSH_SERVICE_ACCOUNT must be set"
            )
        try:
            # Blocking only when the key set is fetched (first use, expiry, unknown kid).
            signing_key = await asyncio.to_thread(self._jwks.get_signing_key_from_jwt, token)
        except jwt.PyJWKClientConnectionError as exc:
            raise PushAuthError(503, f"Google signing keys unavailable: {exc}") from exc
        except (jwt.PyJWKClientError, jwt.InvalidTokenError) as exc:
            raise PushAuthError(401, f"token not signed by a known Google key: {exc}") from exc
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                signing_key.key,
                algorithms=["RS256"],
                issuer=GOOGLE_ISSUERS,
                leeway=LEEWAY_SECONDS,
                options={"verify_aud": False, "require": ["exp", "iat", "iss", "aud"]},
            )
        except jwt.ExpiredSignatureError as exc:
            raise PushAuthError(401, "token expired") from exc
        except jwt.InvalidTokenError as exc:
            raise PushAuthError(401, f"invalid token: {exc}") from exc
        audiences = claims["aud"] if isinstance(claims["aud"], list) else [claims["aud"]]
        if self._audience not in audiences:
            raise PushAuthError(403, "token audience is not this service")
        if claims.get("email") != self._service_account:
            raise PushAuthError(403, "token is not from the configured push service account")
        if claims.get("email_verified") is not True:
            raise PushAuthError(403, "token email is not verified")
        return claims


def _b64decode(data: str) -> bytes:
    # Gmail documents base64url; Pub/Sub itself uses standard base64. Accept both.
    normalized = data.replace("+", "-").replace("/", "_").rstrip("=")
    return base64.urlsafe_b64decode(normalized + "=" * (-len(normalized) % 4))


def decode_push(body: bytes) -> GmailPush:
    """The Gmail notification inside a Pub/Sub push body; ValueError when malformed."""
    try:
        # orjson refuses invalid UTF-8 and nesting deeper than 1024 levels (no RecursionError).
        envelope = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise ValueError("push body is not JSON") from None
    message = envelope.get("message") if isinstance(envelope, dict) else None
    if not isinstance(message, dict):
        raise ValueError("push envelope has no message")
    data = message.get("data")
    message_id = message.get("messageId") or message.get("message_id")
    if not isinstance(data, str) or not data:
        raise ValueError("push message has no data")
    if not isinstance(message_id, str) or not message_id or not _plausible(message_id):
        raise ValueError("push message has no messageId")
    try:
        payload = orjson.loads(_b64decode(data))
    except (binascii.Error, ValueError):
        raise ValueError("push data is not base64 JSON") from None
    if not isinstance(payload, dict):
        raise ValueError("push data is not a JSON object")
    email = payload.get("emailAddress")
    history = payload.get("historyId")
    if not isinstance(email, str) or "@" not in email or not _plausible(email):
        raise ValueError("push data has no emailAddress")
    # A JSON number in what Gmail sends, a string in its documentation: take both.
    if isinstance(history, bool) or not isinstance(history, int | str):
        raise ValueError("push data has no historyId")
    # Gmail's history ids are unsigned 64-bit; twenty digits is no history id of Gmail's.
    if not str(history).isdigit() or len(str(history)) > 20 or int(history) <= 0:
        raise ValueError("push data historyId is not a positive integer")
    return GmailPush(email_address=email.lower(), history_id=int(history), message_id=message_id)
