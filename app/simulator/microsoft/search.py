"""`$search` on messages: the KQL subset Graph documents for mail, with its limits.

Graph ("Use the $search query parameter"): the value is KQL in double quotes; property
restrictions `from:`, `to:`, `cc:`, `bcc:`, `participants:` (from, to, cc and bcc),
`recipients:` (to, cc, bcc), `subject:`, `body:`, `hasAttachments:`, `received`/`sent` with
`:`, `=`, `>=`, `<=`, `>`, `<` and a date or date-time; free text searches the default
properties (from, subject, body); AND, OR, NOT and parentheses. Results are sorted by the
date the message was sent, newest first, and one search returns at most 1,000 of them,
however they are paged. `$search` is refused with `$orderby`, `$filter`, `$skip` and
`$count`; the nextLink carries a `$skiptoken`.

A search for an address that only planted messages hold (app/simulator/contacts.py) reads
those keys instead of every message of the mailbox.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from app.simulator.corpus import GeneratedMessage
from app.simulator.microsoft.mailbox import ALWAYS_READ, Folder, Mailbox

RESULT_CAP = 1000
_TOKEN = re.compile(r'\s*(\(|\)|"[^"]*"|[^\s()"]+(?:"[^"]*")?)')
_RESTRICTION = re.compile(r"^([A-Za-z]+)(:|>=|<=|<>|=|>|<)(.*)$", re.DOTALL)
_ADDRESS_PROPERTIES = {
    "from": ("from",),
    "to": ("to",),
    "cc": ("cc",),
    "bcc": ("bcc",),
    "participants": ("from", "to", "cc", "bcc"),
    "recipients": ("to", "cc", "bcc"),
}
_DATE_PROPERTIES = frozenset({"received", "sent"})
_TEXT_PROPERTIES = frozenset({"subject", "body", "hasattachment", "hasattachments"})


class SearchError(ValueError):
    """A $search Graph would refuse (400)."""


@dataclass(frozen=True, slots=True)
class Doc:
    """What a search looks at in one message."""

    key: int
    sender: tuple[str, str]  # (name, address)
    to: tuple[str, ...]
    cc: tuple[str, ...]
    subject: str
    body: str
    received: datetime
    has_attachments: bool

    def addresses(self, roles: tuple[str, ...]) -> Iterator[str]:
        for role in roles:
            if role == "from":
                yield self.sender[1]
            elif role == "to":
                yield from self.to
            elif role == "cc":
                yield from self.cc


Test = Callable[[Doc], bool]


@dataclass(frozen=True, slots=True)
class Node:
    """A parsed query: `test` decides a message; `addresses` (for an address restriction)
    and `bounds` (received >=/<) let a search narrow the messages it reads."""

    test: Test
    kind: str = "term"  # term | and | or | not
    children: tuple[Node, ...] = ()
    address: str | None = None
    lower: datetime | None = None  # received >= lower
    upper: datetime | None = None  # received < upper


def _unquote(value: str) -> str:
    return value[1:-1] if len(value) >= 2 and value[0] == value[-1] == '"' else value


def _moment(value: str) -> tuple[datetime, timedelta]:
    """A KQL date or date-time (UTC unless it says otherwise) and the span it names."""
    text = _unquote(value).strip()
    try:
        if "T" in text or " " in text:
            moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
            span = timedelta(seconds=1)
        else:
            moment = datetime.fromisoformat(text)
            span = timedelta(days=1)
    except ValueError:
        raise SearchError(f"Syntax error: '{text}' is not a date.") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment, span


def _address_test(roles: tuple[str, ...], value: str) -> Test:
    needle = _unquote(value).lower()

    def test(doc: Doc) -> bool:
        for address in doc.addresses(roles):
            if address.lower() == needle:
                return True
        return "from" in roles and "@" not in needle and needle in doc.sender[0].lower()

    return test


def _date_node(prop: str, op: str, value: str) -> Node:
    moment, span = _moment(value)
    lower: datetime | None
    upper: datetime | None
    if op in (":", "="):
        lower, upper = moment, moment + span
    elif op == ">=":
        lower, upper = moment, None
    elif op == ">":
        lower, upper = moment + span, None
    elif op == "<":
        lower, upper = None, moment
    elif op == "<=":
        lower, upper = None, moment + span
    else:
        raise SearchError(f"Syntax error: '{op}' cannot compare dates.")

    def test(doc: Doc) -> bool:
        # The simulator sends every message the moment it is received.
        return (lower is None or doc.received >= lower) and (upper is None or doc.received < upper)

    if prop == "received":
        return Node(test, lower=lower, upper=upper)
    return Node(test)


def _text_test(prop: str | None, value: str) -> Test:
    needle = _unquote(value).lower()
    if prop in ("hasattachment", "hasattachments"):
        wanted = needle in ("true", "yes", "1")
        return lambda doc: doc.has_attachments == wanted
    if prop == "subject":
        return lambda doc: needle in doc.subject.lower()
    if prop == "body":
        return lambda doc: needle in doc.body.lower()
    return lambda doc: (
        needle in doc.subject.lower()
        or needle in doc.body.lower()
        or needle in doc.sender[0].lower()
        or needle in doc.sender[1].lower()
    )


def _term(token: str) -> Node:
    match = _RESTRICTION.match(token)
    if match is None or not match.group(3):
        return Node(_text_test(None, token))
    prop, op, value = match.group(1).lower(), match.group(2), match.group(3)
    if prop in _DATE_PROPERTIES:
        return _date_node(prop, op, value)
    if op != ":" and op != "=":
        raise SearchError(f"Syntax error: '{op}' is not valid for '{prop}'.")
    if prop in _ADDRESS_PROPERTIES:
        roles = _ADDRESS_PROPERTIES[prop]
        address = _unquote(value).lower()
        return Node(_address_test(roles, value), address=address if "@" in address else None)
    if prop in _TEXT_PROPERTIES:
        return Node(_text_test(prop, value))
    # Not a property Graph searches on messages: its words are searched as text.
    return Node(_text_test(None, token))


class _Parser:
    """KQL: OR binds loosest, then AND (explicit or implied between terms), then NOT."""

    def __init__(self, text: str) -> None:
        self.tokens = [t for t in _TOKEN.findall(text) if t]
        self.position = 0

    def peek(self) -> str | None:
        return self.tokens[self.position] if self.position < len(self.tokens) else None

    def take(self) -> str:
        token = self.tokens[self.position]
        self.position += 1
        return token

    def parse(self) -> Node:
        node = self.either()
        if self.peek() is not None:
            raise SearchError(f"Syntax error: unexpected '{self.peek()}'.")
        return node

    def either(self) -> Node:
        parts = [self.both()]
        while self.peek() == "OR":
            self.take()
            parts.append(self.both())
        if len(parts) == 1:
            return parts[0]
        tests = [p.test for p in parts]
        return Node(lambda doc: any(t(doc) for t in tests), kind="or", children=tuple(parts))

    def both(self) -> Node:
        parts = [self.negated()]
        while self.peek() not in (None, ")", "OR"):
            if self.peek() == "AND":
                self.take()
            parts.append(self.negated())
        if len(parts) == 1:
            return parts[0]
        tests = [p.test for p in parts]
        return Node(lambda doc: all(t(doc) for t in tests), kind="and", children=tuple(parts))

    def negated(self) -> Node:
        if self.peek() == "NOT":
            self.take()
            inner = self.negated()
            return Node(lambda doc: not inner.test(doc), kind="not", children=(inner,))
        return self.atom()

    def atom(self) -> Node:
        word = self.peek()
        if word is None or word in (")", "AND", "OR"):
            raise SearchError("Syntax error: a search term is missing.")
        self.take()
        if word == "(":
            node = self.either()
            if self.peek() != ")":
                raise SearchError("Syntax error: ')' is missing.")
            self.take()
            return node
        return _term(word)


def parse(raw: str) -> Node:
    text = raw.strip()
    if len(text) < 2 or text[0] != '"' or text[-1] != '"':
        # Graph wants the whole $search value in double quotes for messages.
        raise SearchError(
            "Syntax error: character '" + (text[:1] or " ") + "' is not valid at position 0 "
            "in '" + text + "'; enclose the search in double quotes."
        )
    inner = text[1:-1].replace('\\"', '"')
    return _Parser(inner).parse()


def _bounds(node: Node) -> tuple[datetime | None, datetime | None]:
    """received bounds every match satisfies (from the top-level conjunction)."""
    parts = node.children if node.kind == "and" else (node,)
    lower = upper = None
    for part in parts:
        if part.kind != "term":
            continue
        if part.lower is not None and (lower is None or part.lower > lower):
            lower = part.lower
        if part.upper is not None and (upper is None or part.upper < upper):
            upper = part.upper
    return lower, upper


def _addresses(node: Node, mailbox: Mailbox) -> set[str] | None:
    """Planted-only addresses one of which every match must hold, or None (any message)."""
    if node.kind == "term":
        if node.address is not None and mailbox.planting.only_planted(node.address):
            return {node.address}
        return None
    if node.kind == "or":
        found: set[str] = set()
        for child in node.children:
            branch = _addresses(child, mailbox)
            if branch is None:
                return None
            found |= branch
        return found
    if node.kind == "and":
        narrowest = [a for a in (_addresses(c, mailbox) for c in node.children) if a is not None]
        return min(narrowest, key=len) if narrowest else None
    return None


def _first_key_at(mailbox: Mailbox, moment: datetime) -> int:
    """Seeded and added messages are received in key order: the first key at or after."""
    lo, hi = 0, mailbox.next_key
    while lo < hi:
        mid = (lo + hi) // 2
        if mailbox.received_at(mid) < moment:
            lo = mid + 1
        else:
            hi = mid
    return lo


def _doc(mailbox: Mailbox, key: int) -> Doc:
    generated: GeneratedMessage = mailbox.content(key)
    state = mailbox.state(key)
    if mailbox.origin_of(key, state) in ALWAYS_READ:
        sender = (mailbox.display_name, mailbox.email)
    else:
        sender = (generated.from_name, generated.from_address)
    return Doc(
        key=key,
        sender=sender,
        to=generated.to,
        cc=generated.cc,
        subject=generated.subject,
        body=generated.snippet,
        received=generated.received_at,
        has_attachments=generated.has_attachments,
    )


def _candidates(mailbox: Mailbox, folder: Folder | None, node: Node) -> Iterable[int]:
    lower, upper = _bounds(node)
    low = _first_key_at(mailbox, lower) if lower is not None else 0
    high = _first_key_at(mailbox, upper) if upper is not None else mailbox.next_key
    addresses = _addresses(node, mailbox)
    if addresses is not None:
        keys: set[int] = set()
        for address in addresses:
            keys.update(mailbox.planting.keys_between(address, low, high))
        # Messages delivered through the control API may carry any address.
        keys.update(k for k in mailbox.added if low <= k < high)
        ordered: Iterable[int] = sorted(keys, reverse=True)
    else:
        ordered = range(high - 1, low - 1, -1)
    for key in ordered:
        if not mailbox.exists(key):
            continue
        if folder is not None and mailbox.placement(key)[0] != folder.index:
            continue
        yield key


def search(mailbox: Mailbox, folder: Folder | None, raw: str) -> list[int]:
    """Keys of the matching messages, newest sent first, at most RESULT_CAP of them."""
    node = parse(raw)
    docs = [_doc(mailbox, key) for key in _candidates(mailbox, folder, node)]
    matches = [doc for doc in docs if node.test(doc)]
    matches.sort(key=lambda doc: (doc.received, doc.key), reverse=True)
    return [doc.key for doc in matches[:RESULT_CAP]]


@dataclass(frozen=True, slots=True)
class SearchToken:
    """$skiptoken of a search: the offset into the capped result list, and which search."""

    offset: int
    fingerprint: str

    def encode(self) -> str:
        raw = json.dumps([1, self.offset, self.fingerprint]).encode()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    @classmethod
    def decode(cls, value: str) -> SearchToken:
        try:
            version, offset, fingerprint = json.loads(
                base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
            )
        except (binascii.Error, ValueError, TypeError):
            raise SearchError("The skip token is malformed.") from None
        if version != 1:
            raise SearchError("The skip token is malformed.")
        return cls(int(offset), str(fingerprint))


def fingerprint(mailbox: Mailbox, folder: Folder | None, raw: str, select: str | None) -> str:
    text = f"{mailbox.tag.hex()}|{folder.index if folder else -1}|{raw}|{select or ''}"
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()
