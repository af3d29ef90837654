"""Deterministic, realistic message content computed from (seed, index) alone.

Nothing is stored: message `i` of a mailbox seeded with `s` is the same every time it is
asked for, so a simulated mailbox of a million messages costs memory only for what was
mutated since it was seeded.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

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


@dataclass(frozen=True, slots=True)
class GeneratedMessage:
    index: int
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


def _person(rng: random.Random) -> tuple[str, str]:
    first, last = rng.choice(_FIRST), rng.choice(_LAST)
    address = f"{first.lower()}.{last.lower()}@{rng.choice(_DOMAINS)}"
    return f"{first} {last}", address


def stable_id(*parts: object, length: int = 16) -> str:
    """A deterministic hex id; providers shape it into their own id formats."""
    digest = hashlib.blake2b("|".join(map(str, parts)).encode(), digest_size=16).hexdigest()
    return digest[:length]


def generate(seed: int, index: int, total: int, owner: str) -> GeneratedMessage:
    """Message `index` of a mailbox of `total` messages; higher indexes are newer."""
    rng = random.Random(seed * 1_000_003 + index)
    # Threads of 1-4 messages: consecutive indexes often share a thread.
    thread_index = index - rng.choice((0, 0, 0, 1, 1, 2, 3)) if index > 3 else index
    thread_rng = random.Random(seed * 7_919 + thread_index)
    subject = thread_rng.choice(_TOPICS)
    if thread_index != index:
        subject = "Re: " + subject
    from_name, from_address = _person(rng)
    to = (owner, *tuple(_person(rng)[1] for _ in range(rng.choice((0, 0, 1, 2)))))
    cc = tuple(_person(rng)[1] for _ in range(rng.choice((0, 0, 0, 1, 2))))
    # Spread over years, newest last, with jitter so order is realistic but not strict.
    fraction = (index + rng.random()) / max(total, 1)
    received_at = EPOCH + timedelta(seconds=int(fraction * SPAN_SECONDS))
    age_rank = total - index
    snippet = " ".join(rng.choice(_SNIPPET_WORDS) for _ in range(rng.randint(8, 18)))
    return GeneratedMessage(
        index=index,
        thread_index=thread_index,
        subject=subject,
        from_name=from_name,
        from_address=from_address,
        to=to,
        cc=cc,
        received_at=received_at,
        # Old mail is read; the newest few percent are often unread.
        is_read=age_rank > total * 0.03 or rng.random() < 0.5,
        has_attachments=rng.random() < 0.18,
        category=rng.choice(CATEGORIES) if rng.random() < 0.1 else None,
        snippet=snippet,
        internet_message_id=f"<{stable_id(seed, index, 'mid')}@{from_address.split('@')[1]}>",
        bucket=rng.randrange(100),
    )
