"""What the completion monitor compares: the provider's count of a scope (a stream, a
label) next to the store's, and which differences are worth a second look."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from app.db.repositories.monitor import Counted, Residual
from app.providers.base import ScopeCount


@dataclass(frozen=True, slots=True)
class Gap:
    """A scope whose stored counts differ from the provider's."""

    scope: ScopeCount
    stored: Counted

    @property
    def key(self) -> str:
        return f"{self.scope.kind}:{self.scope.key}"

    @property
    def delta(self) -> list[int | None]:
        """provider minus stored: total, and unread when the provider counts it."""
        unread = None if self.scope.unread is None else self.scope.unread - self.stored.unread
        return [self.scope.total - self.stored.total, unread]

    @property
    def observed(self) -> list[int | None]:
        """What confirms a difference: the same delta over the same provider counts. Mail
        that keeps arriving moves the provider's count, so it is never taken for a loss."""
        return [*self.delta, self.scope.total, self.scope.unread]


def differences(
    scopes: Iterable[ScopeCount],
    streams: dict[str, Counted],
    labels: dict[str, Counted],
    residuals: dict[tuple[str, str], Residual],
) -> list[Gap]:
    gaps = []
    for scope in scopes:
        stored = (streams if scope.kind == "stream" else labels).get(scope.key, Counted(0, 0))
        gap = Gap(scope, stored)
        total, unread = gap.delta
        if total == 0 and not unread:
            continue
        residual = residuals.get((scope.kind, scope.key))
        if residual is not None and residual.total == total and residual.unread == unread:
            continue
        gaps.append(gap)
    return gaps
