"""Fold one page of Gmail history records into the changes a Page carries.

Records come oldest first, each with any of messagesAdded, messagesDeleted, labelsAdded,
labelsRemoved. Per message only the net effect matters: a deletion is final (Gmail ids
never come back); an addition means "fetch its current state", which already includes
any later label edit; label edits on their own are applied as a partial update.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class _LabelDelta:
    add: dict[str, None] = field(default_factory=dict)
    remove: dict[str, None] = field(default_factory=dict)

    def added(self, labels: Iterable[str]) -> None:
        for label in labels:
            self.remove.pop(label, None)
            self.add[label] = None

    def removed(self, labels: Iterable[str]) -> None:
        for label in labels:
            self.add.pop(label, None)
            self.remove[label] = None


_FETCH = "fetch"
_DELETED = "deleted"


@dataclass(slots=True)
class HistoryFold:
    fetch: list[str]
    deletes: list[str]
    # message id -> (label ids added, label ids removed), net over the page
    label_changes: dict[str, tuple[tuple[str, ...], tuple[str, ...]]]


def _message_id(entry: Mapping[str, Any]) -> str | None:
    message = entry.get("message")
    if isinstance(message, Mapping) and isinstance(message.get("id"), str):
        return str(message["id"])
    return None


def fold_history(records: Iterable[Mapping[str, Any]]) -> HistoryFold:
    state: dict[str, str | _LabelDelta] = {}
    for record in records:
        for entry in record.get("messagesAdded") or ():
            message_id = _message_id(entry)
            if message_id is not None and state.get(message_id) != _DELETED:
                state[message_id] = _FETCH
        for key in ("labelsAdded", "labelsRemoved"):
            for entry in record.get(key) or ():
                message_id = _message_id(entry)
                if message_id is None:
                    continue
                current = state.get(message_id)
                if current in (_FETCH, _DELETED):
                    continue
                delta = current if isinstance(current, _LabelDelta) else _LabelDelta()
                state[message_id] = delta
                labels = [x for x in entry.get("labelIds") or () if isinstance(x, str)]
                if key == "labelsAdded":
                    delta.added(labels)
                else:
                    delta.removed(labels)
        for entry in record.get("messagesDeleted") or ():
            message_id = _message_id(entry)
            if message_id is not None:
                state[message_id] = _DELETED
    fold = HistoryFold(fetch=[], deletes=[], label_changes={})
    for message_id, outcome in state.items():
        if outcome == _FETCH:
            fold.fetch.append(message_id)
        elif outcome == _DELETED:
            fold.deletes.append(message_id)
        elif isinstance(outcome, _LabelDelta) and (outcome.add or outcome.remove):
            fold.label_changes[message_id] = (tuple(outcome.add), tuple(outcome.remove))
    return fold
