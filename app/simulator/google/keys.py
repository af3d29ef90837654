"""The RS256 keys behind the simulated `oauth2/v3/certs`, and the tokens they sign.

Google signs Pub/Sub push OIDC tokens with keys published as a JWKS, each with a `kid`
in the token header; a verifier picks the key by `kid`. We publish two, as Google does
during rotation, and sign with the first.
"""

from __future__ import annotations

import base64
import hashlib
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa


def _b64url_uint(value: int) -> str:
    raw = value.to_bytes((value.bit_length() + 7) // 8, "big")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _new_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


class SigningKeys:
    def __init__(self, count: int = 2) -> None:
        self._keys: list[tuple[str, rsa.RSAPrivateKey]] = []
        for _ in range(count):
            key = _new_key()
            n = key.public_key().public_numbers().n
            kid = hashlib.sha1(n.to_bytes(256, "big"), usedforsecurity=False).hexdigest()
            self._keys.append((kid, key))
        # Never published: signs tokens whose signature must not verify.
        self._rogue = _new_key()

    @property
    def active_kid(self) -> str:
        return self._keys[0][0]

    def jwks(self) -> dict[str, Any]:
        keys = []
        for kid, key in self._keys:
            numbers = key.public_key().public_numbers()
            keys.append(
                {
                    "kty": "RSA",
                    "alg": "RS256",
                    "use": "sig",
                    "kid": kid,
                    "n": _b64url_uint(numbers.n),
                    "e": _b64url_uint(numbers.e),
                }
            )
        return {"keys": keys}

    def sign(self, claims: dict[str, Any], *, bad_signature: bool = False) -> str:
        kid, key = self._keys[0]
        signer = self._rogue if bad_signature else key
        return jwt.encode(claims, signer, algorithm="RS256", headers={"kid": kid, "typ": "JWT"})
