"""NATS subjects: `{prefix}.user.{user_token}.{type}`.

A user id may hold anything the identity provider puts in `sub`: dots, `*`, `>`, spaces,
non-ASCII. Each would break the subject or, worse, widen it (`a.b` would be two tokens, so
`{prefix}.user.a.>` would receive user `a.b`'s events). `user_token` encodes the id as
exactly one token of NATS's recommended characters, injectively, and leaves the common ids
(letters, digits, `-`) readable:

    alice          -> alice
    a.b            -> a_2Eb
    x y            -> x_20y
    ü              -> _C3_BC
    a_b            -> a_5Fb      (the escape character escapes itself)

Every other byte of the id's UTF-8 becomes `_` and two upper-case hex digits, so no two ids
share a token and a token never holds `.`, `*`, `>`, whitespace or a leading `$`.
"""

from __future__ import annotations

import string

_PLAIN = frozenset((string.ascii_letters + string.digits + "-").encode())


def user_token(user_id: str) -> str:
    if not user_id:
        # Not an id the API accepts (`sub` must be non-empty); still one valid token.
        return "_"
    raw = user_id.encode()
    if all(b in _PLAIN for b in raw):
        return user_id
    return "".join(chr(b) if b in _PLAIN else f"_{b:02X}" for b in raw)


def decode_user_token(token: str) -> str:
    """The inverse of `user_token` (for operators reading subjects)."""
    if token == "_":  # noqa: S105 - the empty id's token, not a secret
        return ""
    out = bytearray()
    i = 0
    while i < len(token):
        if token[i] == "_":
            out.append(int(token[i + 1 : i + 3], 16))
            i += 3
        else:
            out.append(ord(token[i]))
            i += 1
    return out.decode()


def subject(prefix: str, user_id: str, event_type: str) -> str:
    return f"{prefix}.user.{user_token(user_id)}.{event_type}"


def user_filter(prefix: str, user_id: str) -> str:
    """Every event of one user, and nobody else's."""
    return f"{prefix}.user.{user_token(user_id)}.>"
