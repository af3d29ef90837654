"""Entra ID (AADSTS) token errors → one line a user or an operator can act on.

Entra's `error_description` is several CRLF-separated lines: "AADSTS<code>: <what
happened, sometimes with a timestamp or ids of its own>", then "Trace ID: …",
"Correlation ID: …", "Timestamp: …". A status page shows `last_error` as one line, so only
the first sentence of the first line is kept, beside the code and what to do about it. The
trace and correlation ids go to the log, where support needs them.
"""

from __future__ import annotations

import re

_CODE = re.compile(r"AADSTS(\d+)")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s")

_RECONNECT = "Reconnect the mailbox (sign in to Microsoft again)."
_OPERATOR = "An operator must fix mailsync's Microsoft app registration"
# What to do, by AADSTS code; codes not listed fall back on the OAuth error.
_ADVICE: dict[int, str] = {
    50020: "Reconnect with an account of the tenant the mailbox belongs to.",
    50053: "The account is locked; wait or ask your administrator, then reconnect.",
    50055: "The password has expired; change it, then reconnect the mailbox.",
    50057: "The account is disabled; ask your administrator.",
    50076: "Multi-factor sign-in is required: reconnect the mailbox.",
    50079: "Multi-factor sign-in is required: reconnect the mailbox.",
    50173: _RECONNECT,
    53003: "Blocked by a Conditional Access policy; ask your administrator.",
    65001: "Consent is missing: the user or an administrator must grant it, then reconnect.",
    70000: _RECONNECT,
    70008: _RECONNECT,
    700082: _RECONNECT,
    700016: f"{_OPERATOR} (MICROSOFT_CLIENT_ID not found in the tenant).",
    7000215: f"{_OPERATOR} (MICROSOFT_CLIENT_SECRET is wrong).",
    7000222: f"{_OPERATOR} (MICROSOFT_CLIENT_SECRET has expired).",
    90002: "The tenant does not exist; check the mailbox's tenant id.",
}
_ADVICE_BY_ERROR = {
    "invalid_grant": _RECONNECT,
    "interaction_required": _RECONNECT,
    "login_required": _RECONNECT,
    "consent_required": _ADVICE[65001],
    "invalid_client": f"{_OPERATOR} (client id or secret).",
    "unauthorized_client": f"{_OPERATOR} (client id).",
    "temporarily_unavailable": "Microsoft's sign-in service is unavailable; retrying.",
    "server_error": "Microsoft's sign-in service failed; retrying.",
}


def aadsts_code(description: str, error_codes: object = None) -> int | None:
    if isinstance(error_codes, list) and error_codes and isinstance(error_codes[0], int):
        return error_codes[0]
    found = _CODE.search(description)
    return int(found.group(1)) if found else None


def summary(description: str) -> str:
    """The first sentence of what happened, on one line, without the AADSTS prefix."""
    first_line = description.strip().splitlines()[0] if description.strip() else ""
    first_line = _CODE.sub("", first_line, count=1).lstrip(": ").strip()
    sentence = _SENTENCE_END.split(first_line, maxsplit=1)[0]
    return " ".join(sentence.split())


def explain(error: str, description: str, error_codes: object = None) -> str:
    """ "Microsoft refused the token request (AADSTS700082): <first sentence> <advice>"."""
    code = aadsts_code(description, error_codes)
    label = f"AADSTS{code}" if code is not None else error or "unknown_error"
    parts = [f"Microsoft refused the token request ({label})"]
    what = summary(description)
    advice = _ADVICE.get(code or -1) or _ADVICE_BY_ERROR.get(error)
    line = parts[0] + (f": {what}" if what else "")
    if advice:
        line += ("" if line.endswith((".", "!", "?")) else ".") + " " + advice
    return line
