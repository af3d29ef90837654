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
from hashlib import blake2b as _blake2b
from typing import Any, NamedTuple

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


_ADDRESSES = tuple(address for _, address in _PEOPLE)
_PERSON_DOMAINS = tuple(address.split("@")[1] for _, address in _PEOPLE)
_PEOPLE_COUNT = len(_PEOPLE)
# Reply subjects built once per topic rather than concatenated per message.
_REPLY_SUBJECTS = {topic: "Re: " + topic for topic in _TOPICS}
_EPOCH_TS = int(EPOCH.timestamp())
_new_tuple = tuple.__new__
_BACK_BY_DRAW = tuple(_THREAD_BACK[draw % len(_THREAD_BACK)] for draw in range(256))


@lru_cache(maxsize=4096)
def _first_draw(seed: int, index: int) -> int:
    # Thread chains revisit the last few indexes: keep their first draw. Kept small because
    # evicting entries that went cold long ago costs more than recomputing them.
    return _draws(seed, index)[0]


@lru_cache(maxsize=4096)
def _subject(seed: int, thread: int) -> str:
    return _TOPICS[_draws(seed, thread, b"t")[0] % len(_TOPICS)]


def thread_index(seed: int, index: int, first_draw: int | None = None) -> int:
    """The first message of message `index`'s thread: follow replies to the root.

    Bounded to MAX_THREAD_SPAN messages back so callers can store the distance in a byte.
    """
    # Once per generated message: the reply distance of a message comes from a 256-entry
    # table (the same `draw % len(_THREAD_BACK)`), and the walk stays inline.
    if index <= 3:
        return index
    back = _BACK_BY_DRAW
    current = index - back[_first_draw(seed, index) if first_draw is None else first_draw]
    while current != index and index - current < MAX_THREAD_SPAN:
        parent = current if current <= 3 else current - back[_first_draw(seed, current)]
        if parent == current or index - parent >= MAX_THREAD_SPAN:
            return current
        current = parent
    return current


def stable_id(*parts: object, length: int = 16) -> str:
    """A deterministic hex id; providers shape it into their own id formats."""
    digest = hashlib.blake2b("|".join(map(str, parts)).encode(), digest_size=16).hexdigest()
    return digest[:length]


def generate_fields(seed: int, index: int, total: int, owner: str) -> tuple[Any, ...]:
    """`generate`'s fields as a plain tuple, `received_at` as integer UTC epoch seconds.

    Renderers of cold pages use this: formatting a date from seconds needs no datetime.
    """
    # Hot path (a cold 1000-message page generates 1000 of these): unrolled, no generators.
    d = _blake2b(b"%d:%d" % (seed, index), digest_size=40).digest()  # == _draws(seed, index)
    thread = thread_index(seed, index, d[0])
    subject = _subject(seed, thread)
    if thread != index:
        subject = _REPLY_SUBJECTS[subject]
    person = ((d[1] << 8) | d[2]) % _PEOPLE_COUNT
    from_name, from_address = _PEOPLE[person]
    addresses = _ADDRESSES
    count = _PEOPLE_COUNT
    to_count = (0, 0, 1, 2)[d[4] % 4]
    if to_count == 0:
        to: tuple[str, ...] = (owner,)
    elif to_count == 1:
        to = (owner, addresses[((d[5] << 8) | d[6]) % count])
    else:
        to = (
            owner,
            addresses[((d[5] << 8) | d[6]) % count],
            addresses[((d[7] << 8) | d[8]) % count],
        )
    cc_count = (0, 0, 0, 1, 2)[d[11] % 5]
    if cc_count == 0:
        cc: tuple[str, ...] = ()
    elif cc_count == 1:
        cc = (addresses[((d[12] << 8) | d[13]) % count],)
    else:
        cc = (
            addresses[((d[12] << 8) | d[13]) % count],
            addresses[((d[14] << 8) | d[15]) % count],
        )
    # Spread over years, newest last, with jitter so order is realistic but not strict.
    jitter = ((d[18] << 8) | d[19]) / 65536
    offset = int((index + jitter) / max(total, 1) * SPAN_SECONDS)
    return (
        index,
        thread,
        subject,
        from_name,
        from_address,
        to,
        cc,
        _EPOCH_TS + offset,
        # Old mail is read; the newest few percent are often unread.
        total - index > total * 0.03 or d[20] < 128,
        d[21] < 46,  # ~18% have attachments
        CATEGORIES[d[23] % len(CATEGORIES)] if d[22] < 26 else None,  # ~10%
        _SNIPPETS[d[24]],
        f"<{d[32:40].hex()}@{_PERSON_DOMAINS[person]}>",
        ((d[25] << 8) | d[26]) % 100,
    )


def generate(seed: int, index: int, total: int, owner: str) -> GeneratedMessage:
    """Message `index` of a mailbox of `total` messages; higher indexes are newer."""
    fields = generate_fields(seed, index, total, owner)
    # tuple.__new__ skips the NamedTuple's Python-level __new__ (~0.5 µs a message).
    return _new_tuple(
        GeneratedMessage,
        (*fields[:7], datetime.fromtimestamp(fields[7], UTC), *fields[8:]),
    )
