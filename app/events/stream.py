"""The JetStream stream the publisher writes to, created or brought up to date at start-up."""

from __future__ import annotations

import dataclasses
import logging

from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import NotFoundError

from app.config import Settings

log = logging.getLogger(__name__)


def wanted(settings: Settings) -> StreamConfig:
    return StreamConfig(
        name=settings.events_stream,
        subjects=[f"{settings.events_subject_prefix}.>"],
        storage=StorageType.FILE,
        retention=RetentionPolicy.LIMITS,
        discard=DiscardPolicy.OLD,
        duplicate_window=settings.events_duplicate_window_seconds,
        max_age=settings.events_max_age_hours * 3600,
    )


async def ensure_stream(js: JetStreamContext, settings: Settings) -> StreamConfig:
    """Create the stream, or update the settings we own (subjects, duplicate window, max
    age) on an existing one, leaving the rest (limits an operator set, replicas) alone."""
    config = wanted(settings)
    try:
        info = await js.stream_info(settings.events_stream)
    except NotFoundError:
        created = await js.add_stream(config)
        log.info("created JetStream stream %s for %s", settings.events_stream, config.subjects)
        return created.config
    current = info.config
    if current.storage is not None and current.storage != StorageType.FILE:
        log.warning(
            "stream %s uses %s storage (storage cannot change after creation); wanted file",
            settings.events_stream,
            current.storage,
        )
    update = dataclasses.replace(
        current,
        subjects=config.subjects,
        duplicate_window=config.duplicate_window,
        max_age=config.max_age,
    )
    if (current.subjects, current.duplicate_window, current.max_age) != (
        update.subjects,
        update.duplicate_window,
        update.max_age,
    ):
        updated = await js.update_stream(update)
        log.info("updated JetStream stream %s", settings.events_stream)
        return updated.config
    return current
