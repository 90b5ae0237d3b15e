"""Client of the daemon's control socket (``spines-kr show``, join, leave, setlink; tests, labs).

Protocol: a Unix stream socket; the client sends one JSON object on one line, e.g.
``{"cmd": "show", "what": "routes"}``, and reads one JSON line back:
``{"ok": true, "data": ...}`` or ``{"ok": false, "error": "one line for a person"}``.

Entry point: ``request(path, obj, timeout) -> dict``; raises ``OSError`` when the daemon cannot be
reached (the errno says why: ENOENT or ECONNREFUSED, no daemon; EACCES, not allowed to connect),
and ``unreachable(path, error)`` turns that into one line for a person.  Importing this module
loads nothing of the daemon.
"""

from __future__ import annotations

import errno
import json
import socket

SHOW = ("status", "neighbors", "links", "routes", "topology", "groups",
        "tunnels", "sync")  # the daemon's views


def request(path: str, obj: dict, timeout: float = 10.0) -> dict:
    """Send one request to the daemon at ``path``; raise OSError when it cannot be reached."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(path)
        s.sendall(json.dumps(obj).encode() + b"\n")
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
    try:
        reply = json.loads(buf)
    except ValueError:
        raise OSError(errno.EBADMSG, f"daemon at {path} sent a malformed reply") from None
    if not isinstance(reply, dict):
        raise OSError(errno.EBADMSG, f"daemon at {path} sent a malformed reply")
    return reply


def unreachable(path: str, error: OSError) -> str:
    """Why the daemon at ``path`` could not be asked, in one line."""
    if error.errno in (errno.EACCES, errno.EPERM):
        return (f"not allowed to talk to the daemon at {path} (permission denied): the "
                f"control socket is for root, the daemon's user and its control group")
    if error.errno in (errno.ENOENT, errno.ECONNREFUSED, errno.ENOTSOCK):
        return f"no daemon at {path} ({error.strerror or error})"
    if isinstance(error, TimeoutError) or error.errno == errno.ETIMEDOUT:
        return f"the daemon at {path} did not answer in time"
    return f"cannot reach the daemon at {path}: {error.strerror or error}"
