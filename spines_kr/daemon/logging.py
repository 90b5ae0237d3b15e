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


class _Stderr:
    """A structlog logger writing to whatever ``sys.stderr`` is at the time of the call (a
    test's capture, or the real one), never to a stream object that may since have closed."""

    def msg(self, message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    log = debug = info = warn = warning = err = error = critical = exception = fatal = msg


def setup(level: str = "info", fmt: str = "auto", log_file: str | None = None):
    if log_file:
        stream = open(log_file, "a", buffering=1, encoding="utf-8")
        factory = structlog.PrintLoggerFactory(stream)
    else:
        stream = sys.stderr
        factory = lambda *_args: _Stderr()  # noqa: E731
    tty = stream.isatty()
    console = fmt == "console" or (fmt == "auto" and tty)
    renderer = (structlog.dev.ConsoleRenderer(colors=tty) if console
                else structlog.processors.JSONRenderer())
    structlog.configure(
        processors=[structlog.processors.add_log_level,
                    structlog.processors.TimeStamper(fmt="iso", utc=True),
                    renderer],
        wrapper_class=structlog.make_filtering_bound_logger(LEVELS[level]),
        logger_factory=factory,
        cache_logger_on_first_use=False,
    )
    return structlog.get_logger()


class RateLimiter:
    """At most ``burst`` events of one key (event name, link) per ``window`` seconds; the rest
    are counted and reported once per window as a summary, so a flapping link cannot flood the
    journal.  ``allow(key, now)`` -> bool; ``summaries(now)`` -> [(key, suppressed)] to log."""

    def __init__(self, burst: int = 5, window: float = 60.0):
        self.burst, self.window = burst, window
        self._start: dict = {}
        self._count: dict = {}
        self._suppressed: dict = {}

    def allow(self, key, now: float) -> bool:
        start = self._start.get(key)
        if start is None or now - start >= self.window:
            self._start[key], self._count[key] = now, 0
        self._count[key] += 1
        if self._count[key] <= self.burst:
            return True
        self._suppressed[key] = self._suppressed.get(key, 0) + 1
        return False

    def summaries(self, now: float) -> list:
        done = [(k, n) for k, n in self._suppressed.items() if now - self._start[k] >= self.window]
        for k, _n in done:
            del self._suppressed[k]
        return done
