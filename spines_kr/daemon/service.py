"""The daemon as a systemd service: readiness, status, watchdog, reload notifications.

Data model (``Service``): the notifier (``daemon.sdnotify``), the last STATUS= line sent, and a
heartbeat timer every ``HEARTBEAT_S`` (at most half of WatchdogSec) that sends STATUS= when the
line changed, logs the summaries of rate-limited log lines, and feeds the watchdog -- only
while ``healthy()`` says the daemon's work really runs (the engine ticked within ``STALL_S``,
no kernel job stuck for ``WORKER_STALL_S``); otherwise it logs ``daemon.stalled`` and lets
systemd restart the service.

Entry points: ``Service(loop, log, log_limit, status_line, healthy)``, ``ready()``,
``start()`` (the heartbeat), ``reloading()``, ``stopping()``, ``close()``.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from spines_kr.daemon.sdnotify import Notifier

HEARTBEAT_S = 2.0  # STATUS= updates; WATCHDOG=1 at least twice per WatchdogSec


class Service:
    def __init__(self, loop, log, log_limit, status_line: Callable[[], str],
                 healthy: Callable[[], tuple[bool, str]]) -> None:
        self.loop = loop
        self.log = log
        self.log_limit = log_limit
        self.status_line = status_line
        self.healthy = healthy
        self.notify = Notifier()
        self._last_status = ""

    def ready(self) -> None:
        self.notify.ready(self.status_line())

    def reloading(self) -> None:
        self.notify.send("RELOADING=1",
                         f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}")

    def stopping(self) -> None:
        self.notify.send("STOPPING=1")

    def start(self) -> None:
        self._heartbeat()

    def _heartbeat(self) -> None:
        loop = self.loop
        for (event, key), n in self.log_limit.summaries(loop.time()):
            self.log.warning("log.suppressed", suppressed_event=event, key=str(key), count=n,
                             window_s=self.log_limit.window)
        status = self.status_line()
        if status != self._last_status:
            self.notify.status(status)
            self._last_status = status
        if self.notify.watchdog_s:
            ok, why = self.healthy()
            if ok:
                self.notify.watchdog()
            else:
                self.log.error("daemon.stalled", reason=why, action="watchdog not fed")
        period = HEARTBEAT_S if not self.notify.watchdog_s else min(HEARTBEAT_S,
                                                                   self.notify.watchdog_s / 2)
        loop.call_later(period, self._heartbeat)

    def close(self) -> None:
        self.notify.close()
