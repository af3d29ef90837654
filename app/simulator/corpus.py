"""Deterministic, realistic message content computed from (seed, index) alone.

Nothing is stored: message `i` of a mailbox seeded with `s` is the same every time it is
asked for, so a simulated mailbox of a million messages costs memory only for what was
mutated since it was seeded.
"""

from __future__ import annotations

import hashlib
import random
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import NamedTuple

_FIRST = [
    "Ada",
    "Alan",
    "Grace",
    "Linus",
    "Margaret",
    "Ken",
    "Barbara",
    "Dennis",
    "Radia",
    "Donald",
    "Frances",
    "Edsger",
    "Hedy",
    "Tim",
    "Katherine",
    "Vint",
    "Shafi",
    "John",
    "Leslie",
    "Sophie",
    "Annie",
    "Guido",
    "Yukihiro",
    "Bjarne",
    "Anders",
    "Rob",
    "Joan",
    "Niklaus",
    "Jean",
    "Carol",
    "Ivan",
    "Lynn",
    "Fernando",
    "Mary",
    "Steve",
    "Evelyn",
    "Martin",
    "Ruth",
    "Claude",
]
_LAST = [
    "Lovelace",
    "Turing",
    "Hopper",
    "Torvalds",
    "Hamilton",
    "Thompson",
    "Liskov",
    "Ritchie",
    "Perlman",
    "Knuth",
    "Allen",
    "Dijkstra",
    "Lamarr",
    "Berners-Lee",
    "Johnson",
    "Cerf",
    "Goldwasser",
    "McCarthy",
    "Lamport",
    "Wilson",
    "Easley",
    "Rossum",
    "Matsumoto",
    "Stroustrup",
    "Hejlsberg",
    "Pike",
    "Clarke",
    "Wirth",
    "Sammet",
    "Sutherland",
    "Conway",
    "Corbato",
    "Shaw",
    "Wozniak",
    "Boyd",
    "Hellman",
    "Bernard",
    "Shannon",
    "Kahan",
    "Fox",
]
_DOMAINS = ("example.com", "example.org", "contoso.com", "fabrikam.net", "acme.io", "initech.biz")
_TOPICS = (
    "Quarterly report",
    "Lunch on Friday?",
    "Re: contract draft",
    "Invoice",
    "Build failed on main",
    "Offsite agenda",
    "Your order has shipped",
    "Design review notes",
    "Welcome aboard",
    "Meeting moved to 3pm",
    "Security alert",
    "Travel itinerary",
    "Weekly digest",
    "Customer escalation",
    "Hiring loop feedback",
    "Release candidate",
    "Budget approval",
    "Conference talk accepted",
    "Password reset",
    "Happy birthday!",
)
_SNIPPET_WORDS = [
    "please",
    "find",
    "attached",
    "the",
    "latest",
    "numbers",
    "and",
    "let",
    "me",
    "know",
    "if",
    "anything",
    "looks",
    "off",
    "before",
    "we",
    "send",
    "it",
    "to",
    "the",
    "wider",
    "team",
    "tomorrow",
    "morning",
    "thanks",
    "again",
    "for",
    "the",
    "quick",
    "turnaround",
    "on",
    "this",
    "one",
    "we",
    "should",
    "sync",
    "about",
    "next",
    "steps",
    "when",
    "you",
    "have",
    "a",
    "minute",
]
CATEGORIES = (
    "Blue category",
    "Green category",
    "Orange category",
    "Purple category",
    "Red category",
)

EPOCH = datetime(2019, 1, 1, tzinfo=UTC)
SPAN_SECONDS = int(timedelta(days=365 * 7).total_seconds())


class GeneratedMessage(NamedTuple):
    position: int
    thread_index: int
    subject: str
    from_name: str
    from_address: str
    to: tuple[str, ...]
    cc: tuple[str, ...]
    received_at: datetime
    is_read: bool
    has_attachments: bool
    category: str | None
    snippet: str
    internet_message_id: str
    # 0..99, used by providers to spread messages over folders/labels deterministically.
    bucket: int


# Replies reach 0-3 messages back: consecutive indexes often share a thread.
_THREAD_BACK = (0, 0, 0, 1, 1, 2, 3)
MAX_THREAD_SPAN = 250
_SNIPPETS = tuple(
    " ".join(_r.choice(_SNIPPET_WORDS) for _ in range(_r.randint(8, 18)))
    for _r in [random.Random(20190101)]
    for _ in range(256)
)


def _draws(seed: int, index: int, salt: bytes = b"") -> bytes:
    """40 independent-looking bytes for (seed, index): every random choice of a message.

    One hash instead of seeding a Mersenne Twister per message: generating content is what
    a large simulated mailbox spends its CPU on.
    """
    return hashlib.blake2b(b"%d:%d%s" % (seed, index, salt), digest_size=40).digest()


# Every (name, address) a generated message can use, built once.
_PEOPLE = tuple(
    (f"{f} {l_}", f"{f.lower()}.{l_.lower()}@{domain}")
    for f in _FIRST
    for l_ in _LAST
    for domain in _DOMAINS
)


def _person(high: int, low: int) -> tuple[str, str]:
    return _PEOPLE[((high << 8) | low) % len(_PEOPLE)]


def _parent(seed: int, index: int, first_draw: int | None = None) -> int:
    """The message `index` replies to (itself when it starts a thread)."""
    if index <= 3:
        return index
    draw = _first_draw(seed, index) if first_draw is None else first_draw
    return index - _THREAD_BACK[draw % len(_THREAD_BACK)]


@lru_cache(maxsize=65_536)
def _first_draw(seed: int, index: int) -> int:
    # Thread chains revisit recent indexes: keep their first draw.
    return _draws(seed, index)[0]


@lru_cache(maxsize=16_384)
def _subject(seed: int, thread: int) -> str:
    return _TOPICS[_draws(seed, thread, b"t")[0] % len(_TOPICS)]


def thread_index(seed: int, index: int, first_draw: int | None = None) -> int:
    """The first message of message `index`'s thread: follow replies to the root.

    Bounded to MAX_THREAD_SPAN messages back so callers can store the distance in a byte.
    """
    current = _parent(seed, index, first_draw)
    while current != index and index - current < MAX_THREAD_SPAN:
        parent = _parent(seed, current)
        if parent == current or index - parent >= MAX_THREAD_SPAN:
            return current
        current = parent
    return current


def stable_id(*parts: object, length: int = 16) -> str:
    """A deterministic hex id; providers shape it into their own id formats."""
    digest = hashlib.blake2b("|".join(map(str, parts)).encode(), digest_size=16).hexdigest()
    return digest[:length]


def generate(seed: int, index: int, total: int, owner: str) -> GeneratedMessage:
    """Message `index` of a mailbox of `total` messages; higher indexes are newer."""
    d = _draws(seed, index)
    thread = thread_index(seed, index, d[0])
    subject = _subject(seed, thread)
    if thread != index:
        subject = "Re: " + subject
    from_name, from_address = _person(d[1], d[2])
    to = (
        owner,
        *(_person(d[5 + 2 * k], d[6 + 2 * k])[1] for k in range((0, 0, 1, 2)[d[4] % 4])),
    )
    cc = tuple(_person(d[12 + 2 * k], d[13 + 2 * k])[1] for k in range((0, 0, 0, 1, 2)[d[11] % 5]))
    # Spread over years, newest last, with jitter so order is realistic but not strict.
    jitter = ((d[18] << 8) | d[19]) / 65536
    received_at = EPOCH + timedelta(seconds=int((index + jitter) / max(total, 1) * SPAN_SECONDS))
    age_rank = total - index
    return GeneratedMessage(
        position=index,
        thread_index=thread,
        subject=subject,
        from_name=from_name,
        from_address=from_address,
        to=to,
        cc=cc,
        received_at=received_at,
        # Old mail is read; the newest few percent are often unread.
        is_read=age_rank > total * 0.03 or d[20] < 128,
        has_attachments=d[21] < 46,  # ~18%
        category=CATEGORIES[d[23] % len(CATEGORIES)] if d[22] < 26 else None,  # ~10%
        snippet=_SNIPPETS[d[24]],
        internet_message_id=f"<{d[32:40].hex()}@{from_address.split('@')[1]}>",
        bucket=((d[25] << 8) | d[26]) % 100,
    )
