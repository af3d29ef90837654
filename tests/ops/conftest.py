"""Process tests that start a publisher get a JetStream stream of their own (deleted after)."""

from tests.events.conftest import events_settings

__all__ = ["events_settings"]
