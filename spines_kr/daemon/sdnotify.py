"""systemd's notify protocol, without libsystemd (sd_notify(3), "Type=notify").

One datagram per message on the AF_UNIX socket named by $NOTIFY_SOCKET (a leading "@" means
the abstract namespace): ``READY=1`` once the daemon has loaded its config, probed the kernel
and opened its sockets; ``STATUS=...`` lines with neighbor and route counts; ``RELOADING=1``
while a SIGHUP reload runs; ``STOPPING=1`` at exit; ``WATCHDOG=1`` every half of
$WATCHDOG_USEC when the unit sets WatchdogSec (and $WATCHDOG_PID, when set, names us).

Without $NOTIFY_SOCKET every call is a no-op, so the daemon runs the same in a lab or a shell.
"""

from __future__ import annotations

import os
import socket


class Notifier:
    def __init__(self, environ=os.environ):
        path = environ.get("NOTIFY_SOCKET", "")
        self.address = "\0" + path[1:] if path.startswith("@") else path
        self.watchdog_s: float | None = None
        usec = environ.get("WATCHDOG_USEC")
        pid = environ.get("WATCHDOG_PID")
        if usec and usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            self.watchdog_s = int(usec) / 1e6
        self._sock: socket.socket | None = None

    @property
    def enabled(self) -> bool:
        return bool(self.address)

    def send(self, *lines: str) -> bool:
        if not self.address:
            return False
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto("\n".join(lines).encode(), self.address)
            return True
        except OSError:
            return False  # systemd went away or the socket is wrong: never fatal

    def ready(self, status: str) -> bool:
        return self.send("READY=1", f"STATUS={status}")

    def status(self, status: str) -> bool:
        return self.send(f"STATUS={status}")

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
