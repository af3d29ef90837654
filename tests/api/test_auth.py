"""Bearer tokens: only valid, unexpired, correctly signed tokens with a subject get in."""

from __future__ import annotations

import base64
import http.server
import json
import threading
import time

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from app.api.auth import decode_bearer
from app.api.errors import ApiError
from app.config import Settings
from tests.conftest import JWT_SECRET, bearer


def _b64(data: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")


async def test_missing_token(api: httpx.AsyncClient) -> None:
    response = await api.get("/mail/status")
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "unauthorized"
    assert response.headers["www-authenticate"] == "Bearer"


async def test_expired_token(api: httpx.AsyncClient) -> None:
    response = await api.get("/mail/status", headers=bearer("alice", expires_in=-10))
    assert response.status_code == 401
    assert "expired" in response.json()["error"]["message"]


async def test_alg_none_token(api: httpx.AsyncClient) -> None:
    token = f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64({'sub': 'alice', 'exp': int(time.time()) + 60})}."
    response = await api.get("/mail/status", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 401


async def test_wrong_secret_and_garbage(api: httpx.AsyncClient) -> None:
    forged = jwt.encode(
        {"sub": "alice", "exp": int(time.time()) + 60}, "not-the-secret" * 4, algorithm="HS256"
    )
    for header in (f"Bearer {forged}", "Bearer not.a.jwt", "Basic YWxpY2U6cHc=", "Bearer "):
        response = await api.get("/mail/status", headers={"Authorization": header})
        assert response.status_code == 401, header


async def test_token_without_subject(api: httpx.AsyncClient) -> None:
    token = jwt.encode({"exp": int(time.time()) + 60}, JWT_SECRET, algorithm="HS256")
    response = await api.get("/mail/status", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 401


async def test_valid_token(api: httpx.AsyncClient) -> None:
    response = await api.get("/mail/status", headers=bearer("alice"))
    assert response.status_code == 200
    assert response.json() == {"user_id": "alice", "mailboxes": []}


async def test_jwks_rs256_and_es256(settings: Settings) -> None:
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    jwks = {
        "keys": [
            {
                **json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(rsa_key.public_key())),
                "kid": "r1",
                "alg": "RS256",
                "use": "sig",
            },
            {
                **json.loads(jwt.algorithms.ECAlgorithm.to_jwk(ec_key.public_key())),
                "kid": "e1",
                "alg": "ES256",
                "use": "sig",
            },
        ]
    }
    body = json.dumps(jwks).encode()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/jwks.json"
    jwks_settings = settings.model_copy(
        update={
            "auth_jwks_url": url,
            "auth_jwt_audience": "mailsync",
            "auth_jwt_issuer": "https://issuer.example/",
        }
    )
    try:
        await _check_jwks(jwks_settings, rsa_key, ec_key)
    finally:
        server.shutdown()


async def _check_jwks(jwks_settings: Settings, rsa_key, ec_key) -> None:  # type: ignore[no-untyped-def]
    claims = {
        "sub": "bob",
        "exp": int(time.time()) + 60,
        "aud": "mailsync",
        "iss": "https://issuer.example/",
    }
    for key, alg, kid in ((rsa_key, "RS256", "r1"), (ec_key, "ES256", "e1")):
        token = jwt.encode(claims, key, algorithm=alg, headers={"kid": kid})
        assert (await decode_bearer(token, jwks_settings))["sub"] == "bob"
    wrong_audience = jwt.encode(
        {**claims, "aud": "other"}, rsa_key, algorithm="RS256", headers={"kid": "r1"}
    )
    with pytest.raises(ApiError) as refused:
        await decode_bearer(wrong_audience, jwks_settings)
    assert refused.value.status == 401
    # An HS256 token signed with a public key as secret (key confusion) is refused.
    hs = jwt.encode(claims, "x" * 40, algorithm="HS256")
    no_secret = jwks_settings.model_copy(update={"auth_jwt_secret": ""})
    with pytest.raises(ApiError) as refused:
        await decode_bearer(hs, no_secret)
    assert refused.value.status == 401
