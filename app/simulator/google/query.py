"""The subset of Gmail's search syntax (`q`) the simulator understands.

Supported: `after:`/`before:`/`newer:`/`older:` (YYYY/MM/DD or epoch seconds),
`from:`/`to:`/`cc:`/`bcc:`/`subject:`, `in:` (inbox, sent, drafts, spam, trash, starred,
anywhere), `is:` (unread, read, starred, important), `label:`, `category:`,
`has:attachment`, bare words (subject or snippet), each negatable with a leading `-`;
`OR` (upper case) between terms, parentheses to group, `{a b}` for "a OR b". As in Gmail,
OR binds tighter than the implied AND between terms: `a b OR c` is `a AND (b OR c)`.
Unknown operators search as text, as Gmail does.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

_IN = {
    "inbox": "INBOX",
    "sent": "SENT",
    "draft": "DRAFT",
    "drafts": "DRAFT",
    "spam": "SPAM",
    "trash": "TRASH",
    "starred": "STARRED",
    "important": "IMPORTANT",
    "unread": "UNREAD",
}
_CATEGORY = {
    "primary": "CATEGORY_PERSONAL",
    "personal": "CATEGORY_PERSONAL",
    "social": "CATEGORY_SOCIAL",
    "promotions": "CATEGORY_PROMOTIONS",
    "updates": "CATEGORY_UPDATES",
    "forums": "CATEGORY_FORUMS",
}


class QueryError(ValueError):
    pass


class Searchable(Protocol):
    """What a text term looks at; MessageView satisfies it."""

    internal_ms: int
    subject: str
    snippet: str
    from_header: str
    to: tuple[str, ...]
    cc: tuple[str, ...]
    has_attachments: bool


@dataclass(frozen=True, slots=True)
class _Term:
    negate: bool
    # Label terms look at label ids only; the rest need the message itself.
    label: str | None = None
    test: Callable[[Searchable], bool] | None = None

    def matches(self, labels: frozenset[str], message: Callable[[], Searchable]) -> bool:
        if self.label is not None:
            hit = self.label in labels
        else:
            assert self.test is not None
            hit = self.test(message())
        return hit != self.negate


def _epoch_ms(value: str) -> int:
    if value.isdigit():
        return int(value) * 1000
    for fmt in ("%Y/%m/%d", "%Y-%m-%d", "%m/%d/%Y"):
        try:
            return int(datetime.strptime(value, fmt).replace(tzinfo=UTC).timestamp() * 1000)
        except ValueError:
            continue
    raise QueryError(f"Invalid date in query: {value}")


def _contains(text: str) -> Callable[[Searchable], bool]:
    needle = text.lower()
    return lambda m: needle in m.subject.lower() or needle in m.snippet.lower()


def _at_or_after(ms: int) -> Callable[[Searchable], bool]:
    return lambda m: m.internal_ms >= ms


def _before(ms: int) -> Callable[[Searchable], bool]:
    return lambda m: m.internal_ms < ms


def _from(needle: str) -> Callable[[Searchable], bool]:
    return lambda m: needle in m.from_header.lower()


def _to(needle: str) -> Callable[[Searchable], bool]:
    return lambda m: any(needle in address.lower() for address in m.to)


def _cc(needle: str) -> Callable[[Searchable], bool]:
    return lambda m: any(needle in address.lower() for address in m.cc)


def _never(m: Searchable) -> bool:
    # The simulator's mail carries no Bcc header (only a sender's copy would).
    return False


def _subject(needle: str) -> Callable[[Searchable], bool]:
    return lambda m: needle in m.subject.lower()


@dataclass(frozen=True, slots=True)
class _Node:
    """A term, or AND / OR / NOT of nodes. `address`: an exact address a `from:`/`to:`/
    `cc:`/`bcc:` term asks for (lets a listing read only the messages that hold it)."""

    kind: str  # term | and | or | not
    term: _Term | None = None
    children: tuple[_Node, ...] = ()
    address: str | None = None

    def matches(self, labels: frozenset[str], message: Callable[[], Searchable]) -> bool:
        if self.kind == "term":
            assert self.term is not None
            return self.term.matches(labels, message)
        if self.kind == "and":
            return all(c.matches(labels, message) for c in self.children)
        if self.kind == "or":
            return any(c.matches(labels, message) for c in self.children)
        return not self.children[0].matches(labels, message)

    def needs_message(self) -> bool:
        if self.kind == "term":
            assert self.term is not None
            return self.term.test is not None
        return any(c.needs_message() for c in self.children)

    def addresses(self) -> set[str] | None:
        """Addresses one of which every match holds, or None (no such promise)."""
        if self.kind == "term":
            negated = self.term is not None and self.term.negate
            return {self.address} if self.address is not None and not negated else None
        if self.kind == "or":
            found: set[str] = set()
            for child in self.children:
                branch = child.addresses()
                if branch is None:
                    return None
                found |= branch
            return found
        if self.kind == "and":
            known = [a for a in (c.addresses() for c in self.children) if a is not None]
            return min(known, key=len) if known else None
        return None


@dataclass(frozen=True, slots=True)
class Query:
    root: _Node
    # `in:anywhere`, `in:spam`, `in:trash` lift the default SPAM/TRASH exclusion.
    includes_spam_trash: bool

    @property
    def needs_message(self) -> bool:
        return self.root.needs_message()

    def matches(self, labels: frozenset[str], message: Callable[[], Searchable]) -> bool:
        return self.root.matches(labels, message)

    def addresses(self) -> set[str] | None:
        return self.root.addresses()


def _tokens(q: str) -> list[str]:
    lexer = shlex.shlex(q, posix=True, punctuation_chars="(){}")
    lexer.whitespace_split = True
    try:
        return list(lexer)
    except ValueError as exc:
        raise QueryError(f"Invalid query: {exc}") from exc


class _Parser:
    def __init__(self, words: Sequence[str], user_labels: Mapping[str, str]) -> None:
        self.words = list(words)
        self.position = 0
        self.user_labels = user_labels
        self.spam_trash = False

    def peek(self) -> str | None:
        return self.words[self.position] if self.position < len(self.words) else None

    def take(self) -> str:
        word = self.words[self.position]
        self.position += 1
        return word

    def conjunction(self, closing: str | None) -> list[_Node]:
        nodes: list[_Node] = []
        while self.peek() is not None and self.peek() != closing:
            if self.peek() in (")", "}"):
                raise QueryError(f"Invalid query: unexpected {self.peek()}")
            node = self.disjunction()
            if node is not None:
                nodes.append(node)
        return nodes

    def disjunction(self) -> _Node | None:
        parts = [self.unary()]
        while self.peek() == "OR":
            self.take()
            if self.peek() is None:
                break
            parts.append(self.unary())
        present = [p for p in parts if p is not None]
        if not present:
            return None
        if len(present) == 1:
            return present[0]
        return _Node("or", children=tuple(present))

    def unary(self) -> _Node | None:
        word = self.take()
        negate = False
        if word == "-" and self.peek() in ("(", "{"):
            negate, word = True, self.take()
        if word in ("(", "{"):
            closing = ")" if word == "(" else "}"
            inner = self.conjunction(closing)
            if self.peek() != closing:
                raise QueryError(f"Invalid query: missing {closing}")
            self.take()
            if not inner:
                return None
            group = _Node("and" if word == "(" else "or", children=tuple(inner))
            if len(inner) == 1:
                group = inner[0]
            return _Node("not", children=(group,)) if negate else group
        return self.term(word)

    def term(self, word: str) -> _Node | None:
        negate = word.startswith("-") and len(word) > 1
        token = word[1:] if negate else word
        op, sep, value = token.partition(":")
        op = op.lower()
        if not sep or not value:
            return _Node("term", _Term(negate, test=_contains(token)))
        lowered = value.lower()
        exact = lowered if "@" in lowered else None
        if op in ("after", "newer"):
            return _Node("term", _Term(negate, test=_at_or_after(_epoch_ms(value))))
        if op in ("before", "older"):
            return _Node("term", _Term(negate, test=_before(_epoch_ms(value))))
        if op == "from":
            return _Node("term", _Term(negate, test=_from(lowered)), address=exact)
        if op == "to":
            return _Node("term", _Term(negate, test=_to(lowered)), address=exact)
        if op == "cc":
            return _Node("term", _Term(negate, test=_cc(lowered)), address=exact)
        if op == "bcc":
            return _Node("term", _Term(negate, test=_never), address=exact)
        if op == "subject":
            return _Node("term", _Term(negate, test=_subject(lowered)))
        if op == "has" and lowered in ("attachment", "attachments"):
            return _Node("term", _Term(negate, test=lambda m: m.has_attachments))
        if op == "in" and lowered in ("anywhere", "all"):
            self.spam_trash = True
            return None
        if op in ("in", "is") and lowered in _IN:
            self.spam_trash = self.spam_trash or lowered in ("spam", "trash")
            return _Node("term", _Term(negate, label=_IN[lowered]))
        if op == "is" and lowered == "read":
            return _Node("term", _Term(not negate, label="UNREAD"))
        if op == "category" and lowered in _CATEGORY:
            return _Node("term", _Term(negate, label=_CATEGORY[lowered]))
        if op == "label":
            label = self.user_labels.get(lowered) or value.upper()
            self.spam_trash = self.spam_trash or label in ("SPAM", "TRASH")
            return _Node("term", _Term(negate, label=label))
        return _Node("term", _Term(negate, test=_contains(token)))


def parse_query(q: str, user_labels: Mapping[str, str]) -> Query | None:
    """Parse `q`; `user_labels` maps lower-cased label names to ids. None for an empty query."""
    parser = _Parser(_tokens(q), user_labels)
    nodes = parser.conjunction(None)
    if not nodes:
        return Query(_Node("and"), True) if parser.spam_trash else None
    root = nodes[0] if len(nodes) == 1 else _Node("and", children=tuple(nodes))
    return Query(root, parser.spam_trash)
