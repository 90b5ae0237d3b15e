"""Open a socket inside a named network namespace without moving the process there.

Entry point: ``socket_in_netns(name, family, type, proto)``.

A socket belongs to the network namespace that was current when it was created and stays there.
So the calling thread switches into ``/var/run/netns/<name>`` (the file ``ip netns add`` bind
mounts) with ``setns(2)``, creates the socket, and switches back to the namespace it was in.  Only
the calling thread moves (setns acts on the thread), and only for the duration of ``socket()``.
"""

from __future__ import annotations

import errno
import functools
import os
import socket

CLONE_NEWNET = 0x40000000
NETNS_RUN_DIR = "/var/run/netns"


class NetnsError(OSError):
    """A namespace could not be entered (missing, or not permitted)."""


@functools.cache
def _libc():
    import ctypes  # only for a named namespace: the daemon itself never needs it

    return ctypes, ctypes.CDLL(None, use_errno=True)


def setns(fd: int) -> int:
    """setns(2) into the network namespace ``fd``; 0, or the errno (also in a forked child)."""
    ctypes, libc = _libc()
    return 0 if libc.setns(fd, CLONE_NEWNET) == 0 else ctypes.get_errno()


def _setns(fd: int, what: str) -> None:
    err = setns(fd)
    if err:
        raise NetnsError(err, f"setns into {what}: {os.strerror(err)}")


def which(program: str) -> str | None:
    """``shutil.which`` without importing shutil (it loads bz2 and lzma: 0.6 MB)."""
    for d in os.environ.get("PATH", os.defpath).split(os.pathsep):
        path = os.path.join(d or ".", program)
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    return None


def socket_in_netns(name: str | None, family: int, type: int, proto: int = 0) -> socket.socket:
    """Return ``socket.socket(family, type, proto)`` created in network namespace ``name``.

    ``name=None`` means the current namespace.  Raises ``NetnsError`` when the namespace does not
    exist or cannot be entered.
    """
    if name is None:
        return socket.socket(family, type, proto)
    if not name or "/" in name or name in (".", ".."):
        raise NetnsError(errno.EINVAL, f"invalid network namespace name {name!r}")
    path = os.path.join(NETNS_RUN_DIR, name)
    try:
        target = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise NetnsError(errno.ENOENT, f"network namespace {name!r} does not exist ({path})") from None
    try:
        home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            _setns(target, f"network namespace {name!r}")
            try:
                return socket.socket(family, type, proto)
            finally:
                _setns(home, "the original network namespace")
        finally:
            os.close(home)
    finally:
        os.close(target)
