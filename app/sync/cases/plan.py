"""A contact's search as declared state: time windows still to search, newest first.

The plan is saved with every page it consumes (the page's messages, links and the plan
commit together), so a slice that dies, a job that runs twice or a search that resumes
after a reconnect hours later starts exactly where the last commit left it.

A provider with a result cap (Graph: 1,000 per `$search`) cannot say how many messages a
window holds; a window whose results reach the cap is cut in two and both halves are
searched. The cut is not at the middle of the time span: the capped answer already shows
where the window's newest results lie, so it is cut where the newest SPLIT_SHARE of those
results begin. The newer half then holds about that many (under the cap: one request) and
the older half the rest; for mail spread over years this needs about two requests per
thousand results (a midpoint bisection needs more, and many more when mail is bunched).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

from app.providers.base import Cursor, SearchPage, SearchWindow

SPLIT_SHARE = 0.8


def _epoch(moment: datetime) -> int:
    return int(moment.timestamp())


def _moment(seconds: int | None) -> datetime | None:
    return None if seconds is None else datetime.fromtimestamp(seconds, UTC)


@dataclass(slots=True)
class PlanWindow:
    """Messages received in [start, end) (epoch seconds; None is open)."""

    start: int | None = None
    end: int | None = None
    # The next page of this window's search; None: its first page.
    cursor: Cursor | None = None
    # Results this window's search returned so far, and when they were received (only
    # needed to cut the window should it reach the cap).
    results: int = 0
    received: list[int] = field(default_factory=list)

    def as_search(self) -> SearchWindow:
        return SearchWindow(_moment(self.start), _moment(self.end))

    def restart(self) -> None:
        self.cursor, self.results, self.received = None, 0, []

    def dump(self) -> dict[str, Any]:
        return {
            "start": self.start,
            "end": self.end,
            "cursor": self.cursor,
            "results": self.results,
            "received": self.received,
        }

    @classmethod
    def load(cls, data: dict[str, Any]) -> PlanWindow:
        return cls(
            start=data.get("start"),
            end=data.get("end"),
            cursor=data.get("cursor"),
            results=int(data.get("results") or 0),
            received=[int(x) for x in data.get("received") or ()],
        )


@dataclass(slots=True)
class SearchPlan:
    # A stack: the last window is searched next (the newest, so recent mail shows first).
    windows: list[PlanWindow]
    # Windows that reached the cap and were cut; windows of one second that reached it
    # (Graph's search returns their first 1,000 results only).
    capped: int = 0
    unsplittable: int = 0

    @classmethod
    def fresh(cls, since: date | None) -> SearchPlan:
        start = None
        if since is not None:
            start = _epoch(datetime(since.year, since.month, since.day, tzinfo=UTC))
        return cls([PlanWindow(start=start)])

    @classmethod
    def load(cls, data: dict[str, Any] | None, since: date | None) -> SearchPlan:
        if not data:
            return cls.fresh(since)
        return cls(
            [PlanWindow.load(w) for w in data.get("windows") or ()],
            capped=int(data.get("capped") or 0),
            unsplittable=int(data.get("unsplittable") or 0),
        )

    def dump(self) -> dict[str, Any]:
        return {
            "windows": [w.dump() for w in self.windows],
            "capped": self.capped,
            "unsplittable": self.unsplittable,
        }

    @property
    def done(self) -> bool:
        return not self.windows

    @property
    def current(self) -> PlanWindow:
        return self.windows[-1]

    def record(self, page: SearchPage, cap: int | None) -> None:
        """Account for one page of the current window: follow its next page, cut it in two
        when it reached the cap, or retire it."""
        window = self.windows[-1]
        window.results += page.results
        if cap is not None:
            window.received.extend(_epoch(moment) for moment in page.received)
        if cap is not None and window.results >= cap:
            self.windows.pop()
            self.capped += 1
            cut = split_point(window.start, window.end, window.received)
            if cut is None:
                # One second holds more than the cap: its first `cap` results are all
                # the provider will ever return for it.
                self.unsplittable += 1
                return
            # Newer half on top: searched next.
            self.windows.append(PlanWindow(start=window.start, end=cut))
            self.windows.append(PlanWindow(start=cut, end=window.end))
            return
        if page.cursor is not None:
            window.cursor = page.cursor
            return
        self.windows.pop()


def split_point(start: int | None, end: int | None, received: Iterable[int]) -> int | None:
    """Where to cut a capped window [start, end), or None when it spans one second."""
    newest_first = sorted(received, reverse=True)

    def inside(moment: int | None) -> bool:
        return (
            moment is not None
            and (start is None or moment > start)
            and (end is None or moment < end)
        )

    candidates: list[int | None] = []
    if newest_first:
        share = min(len(newest_first) - 1, int(len(newest_first) * SPLIT_SHARE))
        candidates += [newest_first[share], newest_first[0]]
    if start is not None and end is not None:
        candidates.append((start + end) // 2)
    if start is not None:
        candidates.append(start + 1)
    for moment in candidates:
        if inside(moment):
            return moment
    return None
