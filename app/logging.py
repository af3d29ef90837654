"""Plain, greppable log lines; tokens never reach them (repr()s of credential types hide them)."""

from __future__ import annotations

import logging

from app.config import get_settings


def configure_logging(level: str | None = None) -> None:
    # From the settings, so a `.env` file sets it as well as the environment.
    level = (level or get_settings().log_level).upper()
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # arq's CLI gives its logger a handler of its own; do not print its lines twice.
    arq_logger = logging.getLogger("arq")
    if arq_logger.handlers:
        arq_logger.propagate = False
    # httpx logs full request URLs at INFO; Graph delta links carry state tokens.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("httpcore").setLevel(logging.WARNING)
