"""Our (table, protocol, priority) slot of the kernel's routes, held by one live daemon.

Two daemons writing the same slot would each take the other's routes for their own stale ones,
sweep them, and fight forever.  So a daemon that routes in the kernel holds its slot: it listens
on an abstract Unix socket named after it, ``@spines-kr/slot/<table>/<protocol>/<priority>``.
Abstract sockets belong to the network namespace (so do the routes) and vanish with the process
that holds them, also after a crash: no stale lock files.  A second daemon's bind fails; it then
connects and reads the holder's one-line description (its pid, port and logical ID; the pid
from SO_PEERCRED when the holder does not answer in time) to name it in its refusal.

Entry points: ``SlotLock(table, protocol, priority, description)``, ``acquire()`` (raises
``SlotTaken``), ``fileno()``/``on_readable()`` (answer who holds it), ``close()``.
"""

from __future__ import annotations

import json
import socket
import struct

ANSWER_TIMEOUT = 1.0


class SlotTaken(Exception):
    """The slot is held by a live daemon; the message names it."""


def slot_name(table: int, protocol: int, priority: int) -> bytes:
    return f"\0spines-kr/slot/{table}/{protocol}/{priority}".encode()


class SlotLock:
    def __init__(self, table: int, protocol: int, priority: int, description: dict) -> None:
        self.table, self.protocol, self.priority = table, protocol, priority
        self.description = description
        self.sock: socket.socket | None = None

    def acquire(self) -> None:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            s.bind(slot_name(self.table, self.protocol, self.priority))
        except OSError as e:
            s.close()
            if e.errno != 98:  # EADDRINUSE
                raise
            raise SlotTaken(self._refusal()) from None
        s.listen(8)
        s.setblocking(False)
        self.sock = s

    def _refusal(self) -> str:
        holder = self._holder()
        who = "another spines-kr daemon"
        if holder:
            who += f" (pid {holder.get('pid', '?')}"
            if holder.get("port"):
                who += f", port {holder['port']}, logical ID {holder.get('logical_id', '?')}"
            who += ")"
        return (f"table {self.table}, protocol {self.protocol}, priority {self.priority} is "
                f"held by {who} in this network namespace: give this overlay its own table "
                f"(--table) or route_priority")

    def _holder(self) -> dict:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            s.settimeout(ANSWER_TIMEOUT)
            s.connect(slot_name(self.table, self.protocol, self.priority))
            pid = struct.unpack("3i", s.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                   struct.calcsize("3i")))[0]
            try:
                line = s.recv(4096)
                found = json.loads(line) if line else {}
                if isinstance(found, dict):
                    return {"pid": pid, **found}
            except (OSError, ValueError):
                pass
            return {"pid": pid}
        except OSError:
            return {}
        finally:
            s.close()

    def fileno(self) -> int:
        return self.sock.fileno()

    def on_readable(self) -> None:
        """Someone asks who holds the slot: one line, then close."""
        for _ in range(8):
            try:
                conn, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            with conn:
                try:
                    conn.setblocking(False)
                    conn.send(json.dumps(self.description).encode() + b"\n")
                except OSError:
                    pass

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None
