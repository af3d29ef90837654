"""How many message gets one Gmail user takes at once, learned from its refusals.

Gmail limits how many requests it works on at once per user, shared by every client of
that user, and does not say how many: batch parts above the limit come back 429 "Too many
concurrent requests for user". Large batches fail often, 50-part batches sometimes, and
the limit moves with what the user's other clients are doing. So the batch size and the
number of batches in flight are kept per mailbox and adjusted additively-increase /
multiplicatively-decrease, as TCP does with a window it cannot see: a refusal shrinks them
to a little under what Gmail just accepted, every clean batch grows the size by one back
towards its ceiling, and only at the ceiling does concurrency grow again.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

# Below this a batch saves nothing over single requests; Gmail's own floor is one.
MIN_BATCH = 1
# Clean batches at the ceiling size before one more batch may fly alongside.
_CLEAN_BEFORE_MORE_CONCURRENCY = 10
_SHRINK = 0.75


@dataclass(slots=True)
class BatchPacing:
    max_size: int
    max_concurrency: int
    size: int
    concurrency: int
    clean: int = 0

    @classmethod
    def start(cls, max_size: int, max_concurrency: int) -> BatchPacing:
        return cls(max_size, max_concurrency, max_size, max_concurrency)

    def refused(self, sent: int, refused: int) -> None:
        """A batch of `sent` parts of which Gmail refused `refused` for concurrency."""
        accepted = sent - refused
        self.size = max(MIN_BATCH, min(self.size - 1, int(accepted * _SHRINK)))
        self.concurrency = max(1, self.concurrency // 2)
        self.clean = 0

    def accepted(self, sent: int) -> None:
        """A batch Gmail answered without a concurrency refusal."""
        if sent < self.size:
            # A short tail batch says nothing about a full one.
            return
        if self.size < self.max_size:
            self.size += 1
            return
        self.clean += 1
        if self.clean >= _CLEAN_BEFORE_MORE_CONCURRENCY and self.concurrency < self.max_concurrency:
            self.concurrency += 1
            self.clean = 0


class PacingBook:
    """Pacing per mailbox, bounded: a worker serving many mailboxes forgets the least
    recently synced (which then starts again from the ceiling)."""

    def __init__(self, max_size: int, max_concurrency: int, *, capacity: int = 4096) -> None:
        self._max_size = max_size
        self._max_concurrency = max_concurrency
        self._capacity = capacity
        self._book: OrderedDict[str, BatchPacing] = OrderedDict()

    def of(self, mailbox_id: str) -> BatchPacing:
        pacing = self._book.pop(mailbox_id, None)
        if pacing is None:
            pacing = BatchPacing.start(self._max_size, self._max_concurrency)
        self._book[mailbox_id] = pacing
        while len(self._book) > self._capacity:
            self._book.popitem(last=False)
        return pacing
