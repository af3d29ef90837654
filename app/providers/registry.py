"""Which MailProvider serves which provider name; tests register fakes through the same door."""

from __future__ import annotations

from collections.abc import Callable

import httpx

from app.config import Settings
from app.providers.base import MailProvider, ProviderName

ProviderFactory = Callable[[Settings, httpx.AsyncClient], MailProvider]

_overrides: dict[str, ProviderFactory] = {}


def override(name: ProviderName, factory: ProviderFactory | None) -> None:
    """Replace a provider (tests, demos); None restores the real one."""
    if factory is None:
        _overrides.pop(name, None)
    else:
        _overrides[name] = factory


def import_providers() -> None:
    """Import every provider now: a worker does it at start-up, so a mailbox's first sync
    does not wait ~0.2 s for MSAL's import (the modules load lazily everywhere else)."""
    import app.providers.gmail.provider
    import app.providers.outlook.provider  # noqa: F401


def build_provider(name: ProviderName, settings: Settings, http: httpx.AsyncClient) -> MailProvider:
    if name in _overrides:
        return _overrides[name](settings, http)
    if name == "microsoft":
        from app.providers.outlook.provider import OutlookProvider

        return OutlookProvider(settings, http)
    if name == "google":
        from app.providers.gmail.provider import GmailProvider

        return GmailProvider(settings, http)
    raise ValueError(f"unknown provider {name!r}")
