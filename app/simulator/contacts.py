"""Planted correspondents: an address that takes part in a chosen number of seeded messages.

A generated mailbox's people are drawn from the corpus' 9,360 addresses, each in a handful
of messages; a case needs a contact with thousands ("2,500 messages over five years"). A
planted contact is placed into `count` seeded messages picked deterministically from a span
of the mailbox (as fractions of its time range: 0 is the oldest message, 1 the newest), as
the sender, a To or a Cc recipient. Nothing else about those messages changes; the
simulators serve them through their ordinary paths (delta, listing, get, search).

The planted messages of an address are kept sorted by key, which both simulators use to
answer a search for an address no generated message can contain without scanning.
"""

from __future__ import annotations

import hashlib
import random
from array import array
from bisect import bisect_left
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from pydantic import BaseModel, Field, model_validator

from app.simulator import corpus
from app.simulator.corpus import GeneratedMessage

FROM, TO, CC = "from", "to", "cc"
_CORPUS_ADDRESSES = frozenset(corpus._ADDRESSES)


class PlantedContact(BaseModel):
    address: str = Field(min_length=3, max_length=320)
    count: int = Field(ge=1, le=1_000_000)
    first: float = Field(default=0.0, ge=0.0, le=1.0)
    last: float = Field(default=1.0, ge=0.0, le=1.0)

    @model_validator(mode="after")
    def _span(self) -> PlantedContact:
        if self.first >= self.last:
            raise ValueError("first must be below last")
        return self


def _rng(seed: int, address: str) -> random.Random:
    digest = hashlib.blake2b(f"{seed}:{address}".encode(), digest_size=8).digest()
    return random.Random(int.from_bytes(digest, "big"))


@dataclass
class Planting:
    """Which seeded messages each planted address takes part in, and how."""

    owner: str
    # address -> sorted keys
    keys: dict[str, array] = field(default_factory=dict)
    # key -> [(address, role)]
    roles: dict[int, list[tuple[str, str]]] = field(default_factory=dict)

    @classmethod
    def plan(
        cls, seed: int, total: int, owner: str, contacts: Iterable[PlantedContact]
    ) -> Planting:
        planting = cls(owner=owner.lower())
        for contact in contacts:
            address = contact.address.lower()
            low, high = int(contact.first * total), int(contact.last * total)
            span = range(low, max(low, high))
            if contact.count > len(span):
                raise ValueError(
                    f"{address}: {contact.count} messages do not fit in {len(span)} messages"
                )
            rng = _rng(seed, address)
            chosen = sorted(rng.sample(span, contact.count))
            planting.keys[address] = array("I", chosen)
            for key in chosen:
                role = rng.choices((FROM, TO, CC), weights=(50, 35, 15))[0]
                planting.roles.setdefault(key, []).append((address, role))
        return planting

    def __bool__(self) -> bool:
        return bool(self.keys)

    def apply(self, key: int, message: GeneratedMessage, *, owner_sent: bool) -> GeneratedMessage:
        """The message with its planted correspondents; `owner_sent`: the owner wrote it, so
        a correspondent planted as its sender is a recipient instead."""
        roles = self.roles.get(key)
        if not roles:
            return message
        from_name, from_address = message.from_name, message.from_address
        to, cc = message.to, message.cc
        for address, role in roles:
            if role == FROM and owner_sent:
                role = TO
            if role == FROM:
                from_name, from_address = display_name(address), address
            elif role == TO:
                to = (*to, address)
            else:
                cc = (*cc, address)
        return message._replace(from_name=from_name, from_address=from_address, to=to, cc=cc)

    def only_planted(self, address: str) -> bool:
        """No generated message can hold this address: its planted keys are all of them."""
        address = address.lower()
        return address in self.keys and address not in _CORPUS_ADDRESSES and address != self.owner

    def keys_between(self, address: str, low: int, high: int) -> Iterator[int]:
        """Planted keys of `address` in [low, high), newest first."""
        keys = self.keys.get(address.lower())
        if keys is None:
            return iter(())
        start, stop = bisect_left(keys, low), bisect_left(keys, high)
        return (keys[i] for i in range(stop - 1, start - 1, -1))


def display_name(address: str) -> str:
    return address.split("@")[0].replace(".", " ").replace("-", " ").title()
