"""A contact's search plan: windows newest first, cut where a capped answer's results lie."""

from __future__ import annotations

import random
from datetime import UTC, date, datetime

from app.providers.base import SearchPage
from app.sync.cases.plan import SearchPlan, split_point

CAP = 1000


def _page(received: list[int], cursor: dict[str, str] | None = None) -> SearchPage:
    return SearchPage(
        results=len(received),
        received=[datetime.fromtimestamp(t, UTC) for t in received],
        cursor=cursor,
    )


def simulate(times: list[int], page_size: int, cap: int = CAP) -> tuple[SearchPlan, int, set[int]]:
    """Run a plan against a provider that answers like Graph: newest first, capped."""
    plan = SearchPlan.fresh(None)
    requests, seen = 0, set()
    while not plan.done:
        window = plan.current
        matching = sorted(
            (t for t in times if (window.start is None or t >= window.start)
             and (window.end is None or t < window.end)),
            reverse=True,
        )[:cap]  # fmt: skip
        offset = int(window.cursor["offset"]) if window.cursor else 0
        chunk = matching[offset : offset + page_size]
        more = offset + page_size < len(matching)
        requests += 1
        seen.update(chunk)
        plan.record(_page(chunk, {"offset": str(offset + page_size)} if more else None), cap)
        plan = SearchPlan.load(plan.dump(), None)  # every page is a checkpoint
    return plan, requests, seen


def test_mail_over_years_costs_at_most_two_requests_per_page_plus_the_capped_windows() -> None:
    rng = random.Random(3)
    start = int(datetime(2020, 1, 1, tzinfo=UTC).timestamp())
    times = sorted({start + rng.randrange(5 * 365 * 86400) for _ in range(2500)})
    plan, requests, seen = simulate(times, page_size=1000)
    assert seen == set(times)
    assert plan.capped >= 1 and plan.unsplittable == 0
    assert requests <= 2 * 3 + plan.capped


def test_bunched_mail_and_small_pages_still_converge() -> None:
    rng = random.Random(5)
    base = int(datetime(2023, 6, 1, tzinfo=UTC).timestamp())
    times = sorted({base + rng.randrange(3600) for _ in range(3000)})  # one busy hour
    times += [base - 10 * 365 * 86400 + i for i in range(5)]  # and a little, long ago
    plan, _, seen = simulate(times, page_size=250)
    assert seen == set(times)
    assert plan.unsplittable == 0


def test_a_second_holding_more_than_the_cap_is_taken_as_the_provider_gives_it() -> None:
    times = [1_700_000_000] * 1500 + [1_600_000_000 + i for i in range(10)]
    plan, _, seen = simulate(times, page_size=1000)
    assert plan.unsplittable == 1
    assert seen == set(times)


def test_split_points_stay_inside_and_move_forward() -> None:
    assert split_point(100, 200, [150] * 10) == 150
    assert split_point(100, 200, [100] * 10) == 150  # midpoint when results sit on the edge
    assert split_point(None, None, [5, 5, 5]) == 5
    assert split_point(5, None, [5, 5, 5]) == 6
    assert split_point(5, 6, [5, 5]) is None


def test_since_opens_the_first_window_at_midnight_utc() -> None:
    plan = SearchPlan.fresh(date(2021, 3, 4))
    assert plan.current.as_search().start == datetime(2021, 3, 4, tzinfo=UTC)
    assert plan.current.as_search().end is None
