"""The subset of Gmail's search syntax (`q`) the simulator understands.

Supported: `after:`/`before:`/`newer:`/`older:` (YYYY/MM/DD or epoch seconds),
`from:`/`to:`/`subject:`, `in:` (inbox, sent, drafts, spam, trash, starred, anywhere),
`is:` (unread, read, starred, important), `label:`, `category:`, `has:attachment`, bare
words (subject or snippet), each negatable with a leading `-`. Unknown operators search as
text, as Gmail does.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable, Mapping
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


def _subject(needle: str) -> Callable[[Searchable], bool]:
    return lambda m: needle in m.subject.lower()


@dataclass(frozen=True, slots=True)
class Query:
    terms: tuple[_Term, ...]
    # `in:anywhere`, `in:spam`, `in:trash` lift the default SPAM/TRASH exclusion.
    includes_spam_trash: bool

    @property
    def needs_message(self) -> bool:
        return any(t.test is not None for t in self.terms)

    def matches(self, labels: frozenset[str], message: Callable[[], Searchable]) -> bool:
        return all(t.matches(labels, message) for t in self.terms)


def parse_query(q: str, user_labels: Mapping[str, str]) -> Query | None:
    """Parse `q`; `user_labels` maps lower-cased label names to ids. None for an empty query."""
    try:
        words = shlex.split(q)
    except ValueError as exc:
        raise QueryError(f"Invalid query: {exc}") from exc
    terms: list[_Term] = []
    spam_trash = False
    for word in words:
        negate = word.startswith("-") and len(word) > 1
        token = word[1:] if negate else word
        op, sep, value = token.partition(":")
        op = op.lower()
        if not sep or not value:
            terms.append(_Term(negate, test=_contains(token)))
            continue
        lowered = value.lower()
        if op in ("after", "newer"):
            after = _epoch_ms(value)
            terms.append(_Term(negate, test=_at_or_after(after)))
        elif op in ("before", "older"):
            before = _epoch_ms(value)
            terms.append(_Term(negate, test=_before(before)))
        elif op == "from":
            terms.append(_Term(negate, test=_from(lowered)))
        elif op == "to":
            terms.append(_Term(negate, test=_to(lowered)))
        elif op == "subject":
            terms.append(_Term(negate, test=_subject(lowered)))
        elif op == "has" and lowered in ("attachment", "attachments"):
            terms.append(_Term(negate, test=lambda m: m.has_attachments))
        elif op == "in" and lowered in ("anywhere", "all"):
            spam_trash = True
        elif op in ("in", "is") and lowered in _IN:
            spam_trash = spam_trash or lowered in ("spam", "trash")
            terms.append(_Term(negate, label=_IN[lowered]))
        elif op == "is" and lowered == "read":
            terms.append(_Term(not negate, label="UNREAD"))
        elif op == "category" and lowered in _CATEGORY:
            terms.append(_Term(negate, label=_CATEGORY[lowered]))
        elif op == "label":
            label = user_labels.get(lowered) or value.upper()
            spam_trash = spam_trash or label in ("SPAM", "TRASH")
            terms.append(_Term(negate, label=label))
        else:
            terms.append(_Term(negate, test=_contains(token)))
    if not terms and not spam_trash:
        return None
    return Query(tuple(terms), spam_trash)
