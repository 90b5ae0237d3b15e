"""Structured logs: dotted event names with key=value fields (structlog).

JSON lines when the output is not a terminal (journald, log shippers, lab log files), readable
console lines on a terminal; ``log_format`` forces one.  ``-lf FILE`` appends to a file.
"""

from __future__ import annotations

import logging
import sys

import structlog

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
          "error": logging.ERROR}


def setup(level: str = "info", fmt: str = "auto", log_file: str | None = None):
    stream = open(log_file, "a", buffering=1, encoding="utf-8") if log_file else sys.stderr
    console = fmt == "console" or (fmt == "auto" and stream.isatty())
    renderer = (structlog.dev.ConsoleRenderer(colors=stream.isatty()) if console
                else structlog.processors.JSONRenderer())
    structlog.configure(
        processors=[structlog.processors.add_log_level,
                    structlog.processors.TimeStamper(fmt="iso", utc=True),
                    renderer],
        wrapper_class=structlog.make_filtering_bound_logger(LEVELS[level]),
        logger_factory=structlog.PrintLoggerFactory(stream),
        cache_logger_on_first_use=False,
    )
    return structlog.get_logger()
