"""Encryption of secrets at rest (Fernet; MultiFernet for key rotation)."""

from __future__ import annotations

import base64
import hashlib
import json
import logging
from typing import Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

log = logging.getLogger(__name__)

# Development only: a fixed key so the API and the worker of a local setup agree without
# configuration. Settings refuse to start outside development without real keys.
_DEVELOPMENT_KEY = base64.urlsafe_b64encode(hashlib.sha256(b"mailsync-development-only").digest())


class SecretDecryptionError(Exception):
    """No configured key opens this secret (a retired key, or tampering)."""


class TokenCipher:
    """The first key encrypts; every key decrypts, so keys rotate without a migration."""

    def __init__(self, keys: list[str]) -> None:
        if not keys:
            log.warning("TOKEN_ENCRYPTION_KEYS is empty: using the development key")
            fernets = [Fernet(_DEVELOPMENT_KEY)]
        else:
            fernets = [Fernet(k.encode()) for k in keys]
        self._primary = fernets[0]
        self._fernet = MultiFernet(fernets)

    def encrypt(self, plaintext: str) -> bytes:
        return self._fernet.encrypt(plaintext.encode())

    def decrypt(self, token: bytes) -> str:
        try:
            return self._fernet.decrypt(bytes(token)).decode()
        except InvalidToken as exc:
            raise SecretDecryptionError(
                "secret cannot be decrypted with the configured keys"
            ) from exc

    def encrypt_json(self, document: dict[str, Any]) -> bytes:
        return self.encrypt(json.dumps(document, separators=(",", ":")))

    def decrypt_json(self, token: bytes) -> dict[str, Any]:
        result: dict[str, Any] = json.loads(self.decrypt(token))
        return result

    def rotate(self, token: bytes) -> bytes:
        """Re-encrypt with the current primary key (the first of TOKEN_ENCRYPTION_KEYS)."""
        try:
            return self._fernet.rotate(bytes(token))
        except InvalidToken as exc:
            raise SecretDecryptionError(
                "secret cannot be decrypted with the configured keys"
            ) from exc

    def opens(self, token: bytes) -> bool:
        """Some configured key decrypts it."""
        try:
            self._fernet.decrypt(bytes(token))
        except InvalidToken:
            return False
        return True

    def is_current(self, token: bytes) -> bool:
        """Encrypted under the primary key (the first key opens it)."""
        try:
            self._primary.decrypt(bytes(token))
        except InvalidToken:
            return False
        return True
