"""The daemon's local control socket: ``spines-kr show ...``, join, leave, setlink, neighbor.

Protocol (client: ``spines_kr.ctl``): one JSON object on one line, e.g.
``{"cmd": "show", "what": "routes"}``; one JSON line back: ``{"ok": true, "data": ...}`` or
``{"ok": false, "error": "one line for a person"}``.  A malformed request gets an error reply;
the daemon carries on.

Permissions: the socket is created mode 0660, owned by the daemon's user (root, or systemd's
dynamic user) and group ``control_group`` when set, in a directory only root (or that user) can
write (/run/spines-kr by default): who may connect may read every view; setlink, join, leave and
neighbor (``{"cmd": "neighbor", "op": "add"|"remove", "address", "tunnel"}``) are further checked by the peer's credentials (SO_PEERCRED): root, the daemon's own user, or a
member of ``control_group``.

Entry points: ``ControlServer(loop, commands, path, group)`` (``open()`` refuses a path where
another live daemon answers, replaces a stale socket file), ``close()``; ``answer(commands,
line, may_change)`` -> reply dict or ``Pending`` (never raises: a request is input from outside).
"""

from __future__ import annotations

import grp as grp_db
import json
import os
import socket
import struct

from spines_kr.ctl import SHOW, request  # noqa: F401 - request: the client, for old callers
from spines_kr.daemon.commands import Pending
from spines_kr.daemon.server import RequestServer

MAX_REQUEST = 64 * 1024
MUTATING = ("setlink", "join", "leave", "neighbor")


class ControlInUse(Exception):
    """Another live daemon listens on the control socket path."""


class ControlServer:
    def __init__(self, loop, commands, path: str, group: str | None = None) -> None:
        self.loop, self.commands, self.path, self.group = loop, commands, path, group
        self.server: RequestServer | None = None

    def open(self) -> None:
        os.makedirs(os.path.dirname(self.path) or ".", mode=0o755, exist_ok=True)
        if os.path.exists(self.path) or os.path.islink(self.path):
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                probe.settimeout(0.5)
                probe.connect(self.path)
            except OSError:
                os.unlink(self.path)  # stale: left by a daemon that died
            else:
                raise ControlInUse(f"control socket {self.path} is in use by another live "
                                   f"daemon: give this one its own (--control-socket)")
            finally:
                probe.close()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            sock.bind(self.path)
            os.chmod(self.path, 0o660)
            if self.group:
                os.chown(self.path, -1, grp_db.getgrnam(self.group).gr_gid)
            sock.listen(16)
        except BaseException:
            sock.close()
            raise
        self.server = RequestServer(
            self.loop, sock, self._handle, terminator=b"\n", max_request=MAX_REQUEST,
            timeout=5.0, too_long=_line({"ok": False, "error": "request too long"}),
            too_slow=_line({"ok": False, "error": "request too slow"}))

    def _handle(self, line: bytes, conn: socket.socket):
        reply = answer(self.commands, line, may_change=_may_change(conn, self.group))
        if isinstance(reply, Pending):
            out = Pending()
            reply.then(lambda value: out.resolve(_line(value)))
            return out
        return _line(reply)

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass


def _line(reply: dict) -> bytes:
    return json.dumps(reply).encode() + b"\n"


def _may_change(conn: socket.socket, group: str | None) -> bool:
    """Whether the peer may change things (setlink, join, leave): root, the daemon's own user,
    or a member of ``control_group``.  Anyone who can connect may read."""
    try:
        pid, uid, gid = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                             struct.calcsize("3i")))
    except (OSError, AttributeError):
        return False
    if uid in (0, os.geteuid()):
        return True
    if not group:
        return False
    try:
        wanted = grp_db.getgrnam(group).gr_gid
    except KeyError:
        return False
    return gid == wanted or wanted in _supplementary_groups(pid)


def _supplementary_groups(pid: int) -> set[int]:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("Groups:"):
                    return {int(g) for g in line.split()[1:]}
    except OSError:
        pass
    return set()


def answer(commands, line: bytes, may_change: bool = True):
    """The reply to one request line (a dict, or a Pending of one); never raises."""
    try:
        req = json.loads(line)
        if not isinstance(req, dict):
            raise ValueError
    except (ValueError, RecursionError):
        return {"ok": False, "error": "malformed request: expected one JSON object per line"}
    try:
        return _dispatch(commands, req, may_change)
    except (ValueError, TypeError, OverflowError, KeyError, AttributeError) as e:
        return {"ok": False, "error": f"bad request: {type(e).__name__}: {e}"}


def _dispatch(commands, req: dict, may_change: bool):
    cmd = req.get("cmd")
    if cmd in MUTATING and not may_change:
        return {"ok": False, "error": f"{cmd}: permission denied (root, the daemon's user or "
                                     f"the control group only)"}
    if cmd == "ping":
        return {"ok": True, "data": "pong"}
    if cmd == "show":
        what = req.get("what")
        if what not in SHOW:
            return {"ok": False, "error": f"show: unknown view {what!r} (one of {', '.join(SHOW)})"}
        return {"ok": True, "data": commands.view(what)}
    if cmd == "setlink":
        try:
            pending = commands.setlink(req)
        except ValueError as e:
            return {"ok": False, "error": str(e)}
        out = Pending()
        pending.then(lambda data: out.resolve({"ok": True, "data": data}))
        return out
    if cmd in ("join", "leave"):
        try:
            return {"ok": True, "data": commands.join(str(req.get("group", "")), cmd == "join")}
        except ValueError as e:
            return {"ok": False, "error": f"{cmd}: {e}"}
    if cmd == "neighbor":
        try:
            tunnel = req.get("tunnel")
            return {"ok": True, "data": commands.neighbor(
                str(req.get("op", "")), str(req.get("address", "")),
                str(tunnel) if tunnel is not None else None)}
        except ValueError as e:
            return {"ok": False, "error": f"neighbor: {e}"}
    return {"ok": False, "error": f"unknown command {cmd!r}"}

