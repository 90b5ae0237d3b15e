"""Logs of the daemon: the set-up (``spines_kr.log``: dotted event names, JSON lines or console
lines) and a rate limit per event and key, so a flapping link cannot flood the journal.

Entry points: ``setup(level, fmt, log_file) -> logger``, ``RateLimiter``.
"""

from __future__ import annotations

from spines_kr.log import LEVELS, configure

__all__ = ["LEVELS", "setup", "RateLimiter"]


def setup(level: str = "info", fmt: str = "auto", log_file: str | None = None):
    return configure(level, fmt, log_file)


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
