"""The daemon's client sessions: libspines 5.7's session server, a part of the daemon's loop.

Spec: the client <-> daemon protocol of libspines 5.7 (``wire.session``; Spines' source:
``daemon/session.c``, ``daemon/multicast.c`` Join_Group/Leave_Group, ``libspines/spines_lib.c``;
notes in ``../shared/libspines-protocol.md``).  A C program linked with Spines' own library, or
the Python client (``spines_kr.client``), connects here exactly as to a Spines daemon.

Endpoints (overlay port P): IPC control ``ipc_path`` (``/tmp/spines<P>``, ``-ud``) and IPC data
``ipc_path + "data"``, mode 0660, group ``control_group`` (who may use the control socket may use
these); TCP data P+7 and control P+9, on 127.0.0.1 unless ``remote_sessions`` opens them to every
address (Spines' ``Remote_Connections``); on loopback, a TCP port another process holds only
costs the TCP endpoints (logged ``sessions.no_tcp``; clients use IPC), with ``remote_sessions``
it is refused.  No UDP session port (P+8): libspines 5.7's UDP_CONNECT cannot work on 64-bit
Linux whatever the daemon does (it reconnects to 0.0.0.0), so a LINKS asking for it is refused.
Stale socket files are replaced; a path a live process answers on, or that is not a socket, is
refused (``SessionsUnavailable``).

Data model:
    _Control    a control channel: accepted, given a random 4-byte token, waiting (at most
                HANDSHAKE_TIMEOUT) for the data channel that echoes it; then the session's channel
                for TRACEROUTE/EDISTANCE/MEMBERSHIP replies (written without blocking, bounded).
    _Session    one data channel = one session: id (1, 2, ...), virtual port (40001 up, wrapping
                in 40000..59999; BIND replaces it), handshake state (endian word, token, LINKS),
                the client's byte order, its options (loop: on, delivery: 1 = drop), its groups,
                an input buffer (frames are reassembled from the stream; many are parsed per
                wakeup) and an output queue of encoded frames (at most QUEUE_LIMIT messages,
                Spines' 27,000, and QUEUE_BYTES; written with one ``sendmsg`` of many frames,
                never blocking: a slow or dead client stalls nothing but itself).
    indexes     sessions by id, by virtual port; group -> joined sessions (in join order).
Delivery (``deliver``): unicast -> the session bound to ``dst_port``; multicast -> every session
joined to the group (the sender's own only while its loop option is on, the default); anycast ->
the first joined session (Spines: one).  A group's ``dst_port`` is not looked at (as Spines).
A session's groups are joined on the node through ``commands.join(group, joined,
origin="session:<id>")`` (refcounted by origin) and left when it closes; a join the node refuses
(a link-local group, ``max_own_groups``) closes the session.  TRACEROUTE answers the nodes after
this one on the path (this node alone when it is the destination), MEMBERSHIP the reachable
member nodes, EDISTANCE each node's hops to its farthest member; all with (hops, path cost), in
a ``spines_trace`` laid out for this host's C ``long``.

Errors are signalled to a libspines client the only way it understands, by closing the session,
and always logged with the reason (rate-limited) and counted: a malformed frame
(``sessions.malformed``), a BIND to a port in use, protocol options not served (the
intrusion-tolerant links, routing other than minimum weight, the intrusion-tolerance options,
UDP_CONNECT, the daemon-side flooder), a full queue with delivery option 2 or 3.  SETLINK and
ADD_NEIGHBOR act only with ``accept_link_commands`` (``-m``; ADD_NEIGHBOR makes a link or a
tunnel through ``commands``); without it they are logged and counted, not closed: Spines
ignores them silently too.  Nothing a client sends can stop the loop or another
session.

Streams (Spines' RELIABLE_STREAM_SESSION; ``dataplane.streams`` drives them once attached as
``streams``, else CONNECT/LISTEN/ACCEPT close the session as not served).  A session becomes a
stream by its first CONNECT, LISTEN or ACCEPT (the LINKS frame cannot tell: libspines' socket
type stays in the library).  What of libspines 5.7's stream wire is served, byte for byte:
CONNECT (cmd.dest, cmd.dest_port) answered, once the other end accepted, by the 16-byte
``ses_hello_packet`` that ``spines_connect`` reads; LISTEN (no reply); a connect request
delivered to the listener as a 24-byte message from the connecting (node, port), which
``spines_accept`` hands back in ACCEPT on a new session, answered by the hello too; data frames
with their 8-byte ``rel_udp_pkt_add`` (up to 50,000 bytes: the frame may be 8 bytes longer than
a datagram's, ``wire.session.MAX_STREAM_FRAME``); raw bytes back (``spines_recv`` is ``recv``);
the client's close is the stream's orderly end, the peer's end is EOF on the data channel
(``shutdown(SHUT_WR)``: a half-closed stream still carries the other way).  What does not work
is libspines' own: on 64-bit Linux ``spines_accept`` opens its new session at a garbage daemon
address (it reads the wrapper struct that ``spines_socket`` keeps as a plain sockaddr), so an
unmodified C program can connect and send but cannot accept; a C program that opens the
accepting session itself, or the Python client, can.  spines-kr's additions, which libspines
never sends or reads: ABORT (type 40, an RST) and a stream-end notice on the control channel
(orderly, refused, reset, timed out), written once just before the data channel's EOF.  A
stream session's reader follows its stream's ``send_room()`` (the client blocks in its socket),
not the data links' back-pressure; stream bytes leave the output queue counted as consumed by
the stream (its window opens) only once written into the client's socket.

Entry points: ``Sessions(loop, commands, cfg, log, send)``; ``open()`` (raises
``SessionsUnavailable`` with one line), ``close()``; ``deliver(message) -> int``; ``groups()``;
``counters`` (dict, keys ``sessions.*``); ``status()``; ``sessions()`` (one dict per session);
for the stream driver ``stream_write``, ``stream_reading``, ``stream_shutdown``,
``stream_close``, ``stream_end``, ``stream_request``, ``stream_refuse``.
"""

from __future__ import annotations

import collections
import errno
import grp as grp_db
import ipaddress
import itertools
import os
import socket
import stat
from typing import ClassVar

from spines_kr.daemon.logging import RateLimiter
from spines_kr.dataplane.message import (
    INTRUSION_TOL_LINKS,
    RELIABLE_LINKS,
    SOFT_REALTIME_LINKS,
    STREAM_SEGMENT,
    UDP_LINKS,
    Message,
    is_anycast,
    is_multicast,
)
from spines_kr.wire import session as wire

QUEUE_LIMIT = 27_000  # messages towards one client (Spines: 3 * MAX_BUFF_SESS)
QUEUE_BYTES = 64 << 20  # and bytes: 27,000 messages of 50,000 bytes would be 1.35 GB
CTRL_LIMIT = 64 << 10  # unread replies on a control channel before the session is closed
READ_SIZE = 256 << 10  # bytes read from one session per wakeup
MAX_IOV = 512  # frames per sendmsg
ACCEPT_BATCH = 64
HANDSHAKE_TIMEOUT = 10.0  # s from accept to LINKS (data) or to the data channel (control)
ACCEPT_PAUSE = 0.1  # s a listener rests after running out of file descriptors
PORT_LO, PORT_HI = 40000, 59999  # virtual ports given to sessions that do not bind
SESS_DATA_OFFSET, SESS_CTRL_OFFSET = 7, 9  # TCP ports: overlay port + these (Spines' link.h)
UNIX_PATH_MAX = 107  # sun_path without its NUL

ENDIAN, TOKEN, LINKS, READY = range(4)
LINK_NAMES = {RELIABLE_LINKS: "RELIABLE_LINKS", SOFT_REALTIME_LINKS: "SOFT_REALTIME_LINKS",
              INTRUSION_TOL_LINKS: "INTRUSION_TOL_LINKS"}
ROUTING_NAMES = {0x100: "IT_PRIORITY_ROUTING", 0x200: "IT_RELIABLE_ROUTING",
                 0x300: "SOURCE_BASED_ROUTING"}

COUNTERS = (
    "sessions.backpressure_on", "sessions.backpressure_off",
    "sessions.accepted", "sessions.closed", "sessions.messages_in", "sessions.messages_out",
    "sessions.bytes_in", "sessions.bytes_out", "sessions.malformed",
    "sessions.dropped.queue_full", "sessions.dropped.no_session", "sessions.dropped.too_big",
    "sessions.dropped.no_control", "sessions.closed.queue_full",
    "sessions.refused.too_many_sessions", "sessions.refused.bind_in_use",
    "sessions.refused.unsupported", "sessions.refused.join", "sessions.refused.setlink",
    "sessions.ignored.add_neighbor", "sessions.add_neighbor", "sessions.handshake_timeout", "sessions.send_errors",
    "sessions.errors", "sessions.accept_errors", "sessions.streams",
)


class SessionsUnavailable(OSError):
    """The session endpoints cannot be opened; ``str()`` is one line for a person (an OSError,
    so that a caller that handles socket errors handles this too)."""


class _Control:
    __slots__ = ("fd", "out", "session", "sock", "timer", "token", "writing")

    def __init__(self, sock: socket.socket, token: bytes) -> None:
        self.sock, self.fd, self.token = sock, sock.fileno(), token
        self.timer = self.session = None
        self.out = b""
        self.writing = False


class _Session:
    __slots__ = ("buf", "close_pending", "closed", "ctrl", "delivery", "dropped", "eof_in", "fd",
                 "flush_pending", "groups", "id", "link", "listening", "loop", "msgs_in",
                 "msgs_out", "order", "out", "out_bytes", "out_off", "paused", "peer", "port",
                 "reading", "routing", "shut_pending", "sock", "told", "state", "stream", "timer",
                 "transport", "writing")

    def __init__(self, sid: int, sock: socket.socket, transport: str, peer: str, port: int):
        self.id, self.sock, self.fd = sid, sock, sock.fileno()
        self.transport, self.peer, self.port = transport, peer, port
        self.ctrl: _Control | None = None
        self.state = ENDIAN
        self.buf = b""
        self.order = wire.NATIVE
        self.link = UDP_LINKS
        self.routing = 0
        self.loop = True  # Spines: multicast_loopback = 1
        self.delivery = 1  # Spines: deliver_flag = 1, drop when the queue is full
        self.groups: set[int] = set()
        self.out: collections.deque = collections.deque()
        self.out_bytes = self.out_off = 0
        self.writing = self.flush_pending = self.closed = False
        self.timer = None
        self.msgs_in = self.msgs_out = self.dropped = 0
        self.stream = None  # the stream connection (dataplane.streams) once connected/accepted
        self.listening = False  # a stream listener
        self.reading = True  # its reader is registered with the loop
        self.paused = False  # a stream's sending buffer is full: not read
        self.eof_in = False  # the client ended its stream (EOF): not read any more
        self.shut_pending = self.close_pending = False  # after the output queue drains
        self.told = False  # the stream's end was told on the control channel

    def to_json(self) -> dict:
        return {"id": self.id, "port": self.port, "transport": self.transport, "peer": self.peer,
                "state": ("endian", "token", "links", "ready")[self.state],
                "groups": [str(ipaddress.IPv4Address(g)) for g in sorted(self.groups)],
                "loop": self.loop, "delivery": self.delivery, "queued": len(self.out),
                "messages_in": self.msgs_in, "messages_out": self.msgs_out,
                "dropped": self.dropped,
                **({"stream": "listening"} if self.listening else {}),
                **({"stream": "connected"} if self.stream is not None else {})}


def _ip(a: int) -> str:
    return str(ipaddress.IPv4Address(a & 0xFFFFFFFF))


class Sessions:
    def __init__(self, loop, commands, cfg, log, send) -> None:
        self.loop, self.commands, self.cfg, self.log, self.send = loop, commands, cfg, log, send
        self.counters: dict[str, int] = dict.fromkeys(COUNTERS, 0)
        self.my_id = 0
        self.max_sessions = cfg.max_sessions
        self._listeners: list[tuple[socket.socket, str, str]] = []  # (sock, kind, transport)
        self._files: dict[str, tuple[int, int]] = {}  # socket path -> (st_dev, st_ino) we made
        self._sessions: dict[int, _Session] = {}
        self._pressure = False  # the reliable data links are backed up: reliable sessions wait
        self.streams = None  # dataplane.streams: CONNECT/LISTEN/ACCEPT served once attached
        self._by_port: dict[int, _Session] = {}
        self._members: dict[int, dict[int, _Session]] = {}
        self._pending: dict[bytes, _Control] = {}
        self._ids = itertools.count(1)
        self._last_port = PORT_LO
        self._limit = RateLimiter(burst=10, window=60.0)
        self.endpoints: dict[str, str | None] = {}

    # --- lifecycle ----------------------------------------------------------------------------

    def open(self) -> None:
        """Listen on the IPC and TCP endpoints; SessionsUnavailable (one line) when one cannot
        be had.  Nothing is left open after a failure."""
        cfg = self.cfg
        self.my_id = int(self.commands.logical_id())
        path = cfg.ipc_path or f"/tmp/spines{cfg.port}"
        data_path = path + "data"
        if len(os.fsencode(data_path)) > UNIX_PATH_MAX:
            raise SessionsUnavailable(f"ipc_path {path}: too long for a Unix socket with its "
                                      f"'data' suffix ({UNIX_PATH_MAX} bytes at most)")
        try:
            gid = -1
            if cfg.control_group:
                try:
                    gid = grp_db.getgrnam(cfg.control_group).gr_gid
                except KeyError:
                    raise SessionsUnavailable(f"control_group {cfg.control_group}: no such "
                                              f"group") from None
            for p, kind in ((path, "ctrl"), (data_path, "data")):
                self._listeners.append((self._unix_listener(p, gid), kind, "ipc"))
            self.endpoints = {"ipc": path, "ipc_data": data_path, "tcp_data": None,
                              "tcp_control": None}
            self._open_tcp()
        except BaseException:
            self._close_listeners()
            raise
        for sock, kind, transport in self._listeners:
            self._listen(sock, kind, transport)
        self.log.info("sessions.listening", **{k: v for k, v in self.endpoints.items() if v},
                      max_sessions=self.max_sessions)

    def _open_tcp(self) -> None:
        cfg = self.cfg
        remote = cfg.remote_sessions
        host = "0.0.0.0" if remote else "127.0.0.1"
        ports = [(cfg.port + SESS_DATA_OFFSET, "data"), (cfg.port + SESS_CTRL_OFFSET, "ctrl")]
        if ports[-1][0] > 65535:
            why = (f"overlay port {cfg.port} leaves no room for the TCP session ports "
                   f"P+{SESS_DATA_OFFSET} and P+{SESS_CTRL_OFFSET}")
            if remote:
                raise SessionsUnavailable(f"remote_sessions: {why}")
            self.log.warning("sessions.no_tcp", reason=why, hint="clients connect over IPC")
            return
        opened = []
        try:
            for port, kind in ports:
                opened.append((self._tcp_listener(host, port, kind), kind, "tcp"))
        except SessionsUnavailable as e:
            for sock, _, _ in opened:
                sock.close()
            if remote:
                raise
            self.log.warning("sessions.no_tcp", reason=str(e), hint="clients connect over IPC")
            return
        self._listeners.extend(opened)
        self.endpoints["tcp_data"] = f"{host}:{ports[0][0]}"
        self.endpoints["tcp_control"] = f"{host}:{ports[1][0]}"

    def _unix_listener(self, path: str, gid: int) -> socket.socket:
        self._clear_stale(path)
        directory = os.path.dirname(path) or "."
        os.makedirs(directory, mode=0o755, exist_ok=True)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            sock.bind(path)
            st = os.stat(path)
            self._files[path] = (st.st_dev, st.st_ino)
            os.chmod(path, 0o660)
            if gid != -1:
                os.chown(path, -1, gid)
            sock.listen(128)
        except OSError as e:
            sock.close()
            raise SessionsUnavailable(f"session socket {path}: {e.strerror or e}") from None
        return sock

    @staticmethod
    def _clear_stale(path: str) -> None:
        """Remove a socket file no process listens on; refuse one that answers, or a file that
        is not a socket."""
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(st.st_mode):
            raise SessionsUnavailable(f"session socket {path} exists and is not a socket: not "
                                      f"replacing it")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            probe.settimeout(0.5)
            probe.connect(path)
        except (ConnectionRefusedError, FileNotFoundError):
            os.unlink(path)  # stale: left by a daemon that died
            return
        except OSError:
            pass  # it exists and did not refuse: taken to be alive
        finally:
            probe.close()
        raise SessionsUnavailable(f"session socket {path} is in use by a live process (another "
                                  f"daemon?): give this daemon its own ipc_path (-ud)")

    def _tcp_listener(self, host: str, port: int, kind: str) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
            sock.listen(128)
        except OSError as e:
            sock.close()
            what = "data" if kind == "data" else "control"
            raise SessionsUnavailable(f"TCP session {what} port {host}:{port}: "
                                      f"{e.strerror or e}") from None
        return sock

    def _listen(self, sock: socket.socket, kind: str, transport: str) -> None:
        sock.setblocking(False)
        self.loop.add_reader(sock.fileno(), lambda: self._accept(sock, kind, transport))

    def close(self) -> None:
        """Close every session (leaving their groups), the listeners, and remove the IPC files
        (those still ours)."""
        for s in list(self._sessions.values()):
            self._close(s, "daemon_stopping", "the daemon is stopping", quiet=True)
        for c in list(self._pending.values()):
            self._close_control(c)
        self._close_listeners()

    def _close_listeners(self) -> None:
        for sock, _, _ in self._listeners:
            if sock.fileno() >= 0:
                try:
                    self.loop.remove_reader(sock.fileno())
                except (KeyError, ValueError):
                    pass
                sock.close()
        self._listeners.clear()
        for path, ident in self._files.items():
            try:
                st = os.lstat(path)
                if (st.st_dev, st.st_ino) == ident:  # not a successor's socket
                    os.unlink(path)
            except OSError:
                pass
        self._files.clear()

    # --- views ----------------------------------------------------------------------------------

    def groups(self) -> set[int]:
        """The groups local sessions joined."""
        return set(self._members)

    def status(self) -> dict:
        ready = sum(1 for s in self._sessions.values() if s.state == READY)
        return {"sessions": ready, "handshaking": len(self._sessions) - ready + len(self._pending),
                "max_sessions": self.max_sessions, "groups": len(self._members),
                "queued": sum(len(s.out) for s in self._sessions.values()),
                "endpoints": dict(self.endpoints),
                **({"streams": self.streams.status()} if self.streams is not None else {})}

    def sessions(self) -> list[dict]:
        return [s.to_json() for s in self._sessions.values()]

    # --- accepting --------------------------------------------------------------------------------

    def _accept(self, lsock: socket.socket, kind: str, transport: str) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                sock, addr = lsock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                self.counters["sessions.accept_errors"] += 1
                if e.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    # The connection waits in the backlog; rest instead of spinning on it.
                    self._warn("sessions.accept_failed", "accept", error=e.strerror,
                               action=f"listener paused {ACCEPT_PAUSE} s")
                    fd = lsock.fileno()
                    self.loop.remove_reader(fd)
                    self.loop.call_later(ACCEPT_PAUSE, self._resume, lsock, kind, transport)
                return
            sock.setblocking(False)
            if transport == "tcp":
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                peer = f"{addr[0]}:{addr[1]}"
            else:
                peer = "ipc"
            if kind == "ctrl":
                self._new_control(sock)
            else:
                self._new_session(sock, transport, peer)

    def _resume(self, lsock: socket.socket, kind: str, transport: str) -> None:
        if lsock.fileno() >= 0 and any(l[0] is lsock for l in self._listeners):
            self._listen(lsock, kind, transport)

    def _new_control(self, sock: socket.socket) -> None:
        if len(self._pending) >= self.max_sessions:
            self.counters["sessions.refused.too_many_sessions"] += 1
            self._warn("session.refused", "too_many_pending", reason="too many control channels "
                       "waiting for their data channel", limit=self.max_sessions)
            sock.close()
            return
        token = os.urandom(wire.TOKEN_LEN)
        while token in self._pending:
            token = os.urandom(wire.TOKEN_LEN)
        c = _Control(sock, token)
        try:
            sock.send(token)  # 4 bytes into an empty buffer: never short
        except OSError:
            sock.close()
            return
        self._pending[token] = c
        c.timer = self.loop.call_later(HANDSHAKE_TIMEOUT, self._control_expired, c)
        self.loop.add_reader(c.fd, lambda: self._on_control(c))

    def _control_expired(self, c: _Control) -> None:
        c.timer = None
        if self._pending.get(c.token) is c:
            self.counters["sessions.handshake_timeout"] += 1
            self._close_control(c)

    def _new_session(self, sock: socket.socket, transport: str, peer: str) -> None:
        if len(self._sessions) >= self.max_sessions:
            self.counters["sessions.refused.too_many_sessions"] += 1
            self._warn("session.refused", "too_many_sessions", transport=transport,
                       reason=f"{len(self._sessions)} sessions, the limit (max_sessions)",
                       limit=self.max_sessions)
            sock.close()
            return
        port = self._next_port()
        s = _Session(next(self._ids), sock, transport, peer, port)
        try:
            sock.send(wire.endian_word(wire.NATIVE))
        except OSError:
            sock.close()
            return
        self._sessions[s.id] = s
        self._by_port[port] = s
        self.counters["sessions.accepted"] += 1
        s.timer = self.loop.call_later(HANDSHAKE_TIMEOUT, self._session_expired, s)
        self.loop.add_reader(s.fd, lambda: self._on_data(s))

    def _session_expired(self, s: _Session) -> None:
        s.timer = None
        if not s.closed and s.state != READY:
            self.counters["sessions.handshake_timeout"] += 1
            self._close(s, "handshake_timeout", f"no handshake within {HANDSHAKE_TIMEOUT:g} s")

    def _next_port(self) -> int:
        """The next free virtual port after the last one given, wrapping in 40000..59999
        (max_sessions is below the 20,000 ports, so there always is one)."""
        p = self._last_port
        for _ in range(PORT_HI - PORT_LO + 1):
            p = p + 1 if p < PORT_HI else PORT_LO
            if p not in self._by_port:
                break
        self._last_port = p
        return p

    # --- reading ----------------------------------------------------------------------------------

    def _on_control(self, c: _Control) -> None:
        """A control channel is only written to; input is discarded, EOF closes it."""
        try:
            data = c.sock.recv(4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._close_control(c)

    def _on_data(self, s: _Session) -> None:
        size = READ_SIZE
        if s.stream is not None:  # a stream's client is read only while its buffer has room
            room = self.streams.room(s)  # (what is read counts, frame headers included)
            size = min(READ_SIZE, room - len(s.buf))
            if size <= 0 and room >= self.streams.params.snd_buf:
                size = wire.MAX_STREAM_FRAME  # (a frame larger than the whole buffer)
            if size <= 0:
                s.paused = True
                self._update_reading(s)
                return
        try:
            chunk = s.sock.recv(size)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:
            self._close(s, "read_error", f"read error: {e.strerror or e}")
            return
        if not chunk:
            if s.stream is not None and not s.buf:  # the client's end of stream: a FIN
                s.eof_in = True
                self._update_reading(s)
                self.streams.client_eof(s)
                return
            if s.buf:
                self._close(s, "eof_mid_frame", f"client closed the session in the middle of a "
                                                f"frame ({len(s.buf)} bytes unfinished, dropped)")
            else:
                self._close(s, "client_closed", "client closed the session", quiet=True)
            return
        data = s.buf + chunk if s.buf else chunk
        pos = 0
        try:
            if s.state < LINKS:
                pos = self._handshake(s, data)
                if s.state < LINKS:  # the endian word or the token is not all there yet
                    s.buf = data[pos:]
                    return
            order = s.order
            limit = wire.MAX_STREAM_FRAME if s.stream is not None else wire.MAX_FRAME
            while not s.closed:
                f = wire.next_frame(data, pos, order, limit)
                if f is None:
                    break
                header, start, end = f
                self._frame(s, header, data[start:end])
                pos = end
        except wire.DecodeError as e:
            self.counters["sessions.malformed"] += 1
            self._close(s, "malformed", f"malformed frame: {e}", level="warning")
            return
        except Exception as e:  # noqa: BLE001 - a client's input must not stop the loop
            self.counters["sessions.errors"] += 1
            self._close(s, "error", f"internal error on its input: {type(e).__name__}: {e}",
                        level="error")
            return
        if not s.closed:
            s.buf = data[pos:]

    def _handshake(self, s: _Session, data: bytes) -> int:
        """The client's endian word and control token; returns where frames start."""
        pos = 0
        if s.state == ENDIAN:
            if len(data) < 4:
                return 0
            s.order = wire.order_of(data[:4])
            s.state, pos = TOKEN, 4
        if s.state == TOKEN:
            if len(data) - pos < wire.TOKEN_LEN:
                return pos
            token = data[pos:pos + wire.TOKEN_LEN]
            pos += wire.TOKEN_LEN
            c = self._pending.pop(token, None)
            if c is None:
                raise wire.DecodeError("token", "the token matches no control channel waiting "
                                                "(connect the control channel first)")
            if c.timer is not None:
                c.timer.cancel()
                c.timer = None
            c.session, s.ctrl = s, c
            s.state = LINKS
        return pos

    def _frame(self, s: _Session, header: wire.Header, body: bytes) -> None:
        if not header.is_command:
            if s.state != READY:
                raise wire.DecodeError("handshake", "a data frame before LINKS")
            if header.len != len(body):
                raise wire.DecodeError("len", f"data header says {header.len} bytes, the frame "
                                              f"holds {len(body)}")
            if s.stream is not None or s.listening:
                data = wire.stream_payload(body)
                s.msgs_in += 1
                self.counters["sessions.bytes_in"] += len(data)
                self.streams.client_data(s, data)
                return
            s.msgs_in += 1
            self.counters["sessions.messages_in"] += 1
            self.counters["sessions.bytes_in"] += len(body)
            msg = Message(self.my_id, s.port, header.dest, header.dest_port, body, header.ttl,
                          s.link, s.routing, s.id)
            try:
                self.send(msg)
            except Exception as e:  # noqa: BLE001 - forwarding's fault, not the client's
                self.counters["sessions.send_errors"] += 1
                self._warn("session.send_failed", "send", session=s.id,
                           error=f"{type(e).__name__}: {e}")
            return
        cmd = wire.decode_command(body, s.order)
        if s.state != READY:
            if not isinstance(cmd, wire.Links):
                raise wire.DecodeError("handshake", f"{type(cmd).__name__} before LINKS")
            self._links(s, cmd)
            return
        handler = self._HANDLERS.get(type(cmd))
        if handler is None:
            raise wire.DecodeError("handshake", f"{type(cmd).__name__} after the handshake")
        handler(self, s, cmd)

    def backpressure(self, on: bool) -> None:
        """The reliable data links are backed up (``dataplane.links``): stop reading the
        sessions that send over them, so that their clients block in the socket's own flow
        control, and resume when the links drain.  Nothing is dropped."""
        if on == self._pressure:
            return
        self._pressure = on
        self.counters["sessions.backpressure_on" if on else "sessions.backpressure_off"] += 1
        for s in list(self._sessions.values()):
            self._update_reading(s)
        if self.streams is not None:  # (streams wait for the links on their own)
            self.streams.pressure(on)

    def _update_reading(self, s: _Session) -> None:
        """The session's reader follows what it waits for: a stream its buffer's room, a
        reliable datagram session the data links' back-pressure."""
        if s.closed:
            return
        if s.stream is not None or s.listening:
            want = not s.eof_in and not s.paused
        else:
            want = not (self._pressure and s.state == READY and s.link == RELIABLE_LINKS)
        if want and not s.reading:
            self.loop.add_reader(s.fd, lambda: self._on_data(s))
        elif not want and s.reading:
            self.loop.remove_reader(s.fd)
        s.reading = want

    # --- commands ---------------------------------------------------------------------------------

    def _links(self, s: _Session, cmd: wire.Links) -> None:
        why = None
        if cmd.udp_addr != -1 or cmd.udp_port != -1:
            why = ("UDP_CONNECT sessions are not served (no UDP session port): connect over "
                   "IPC or TCP")
        elif cmd.link not in (UDP_LINKS, RELIABLE_LINKS, SOFT_REALTIME_LINKS):
            name = LINK_NAMES.get(cmd.link, f"link protocol {cmd.link}")
            why = (f"{name} is not supported yet (UDP_LINKS, RELIABLE_LINKS and "
                   f"SOFT_REALTIME_LINKS only)")
        elif cmd.routing != 0:
            name = ROUTING_NAMES.get(cmd.routing, f"routing 0x{cmd.routing:x}")
            why = f"{name} is not supported yet (MIN_WEIGHT_ROUTING only)"
        elif cmd.session not in (0, 0x1000):
            why = f"session semantics 0x{cmd.session:x} are not supported"
        if why is not None:
            self._refuse(s, "unsupported", why)
            return
        s.link, s.routing, s.state = cmd.link, cmd.routing >> 8, READY
        self._update_reading(s)  # (off while the reliable links are backed up)
        if s.timer is not None:
            s.timer.cancel()
            s.timer = None
        self.log.debug("session.opened", session=s.id, port=s.port, transport=s.transport,
                       peer=s.peer)
        self._enqueue(s, wire.IdReply(s.id, s.port, self.my_id).encode(wire.NATIVE), force=True)

    def _bind(self, s: _Session, cmd: wire.Bind) -> None:
        port = cmd.port
        if port == s.port:
            return
        if port == 0:
            self._refuse(s, "unsupported", "bind to virtual port 0")
            return
        holder = self._by_port.get(port)
        if holder is not None:
            self.counters["sessions.refused.bind_in_use"] += 1
            self._close(s, "bind_in_use", f"bind to virtual port {port}: in use by session "
                                          f"{holder.id}", level="warning")
            return
        if self._by_port.get(s.port) is s:
            del self._by_port[s.port]
        s.port = port
        self._by_port[port] = s

    def _join(self, s: _Session, cmd) -> None:
        g = cmd.group
        joined = isinstance(cmd, wire.Join)
        if not (is_multicast(g) or is_anycast(g)):
            self._refuse(s, "join", f"{'join' if joined else 'leave'} {_ip(g)}: not a multicast "
                                    f"(224.0.0.0/4) or anycast (240.0.0.0/4) group")
            return
        if joined == (g in s.groups):
            return
        origin = f"session:{s.id}"
        if joined:
            try:
                self.commands.join(_ip(g), True, origin=origin)
            except ValueError as e:
                self._refuse(s, "join", f"join {_ip(g)}: {e}")
                return
            s.groups.add(g)
            self._members.setdefault(g, {})[s.id] = s
        else:
            self._leave(s, g)

    def _leave(self, s: _Session, g: int) -> None:
        s.groups.discard(g)
        members = self._members.get(g)
        if members is not None:
            members.pop(s.id, None)
            if not members:
                del self._members[g]
        try:
            self.commands.join(_ip(g), False, origin=f"session:{s.id}")
        except ValueError as e:
            self._warn("session.leave_failed", "leave", session=s.id, group=_ip(g), error=str(e))

    def _loop_option(self, s: _Session, cmd: wire.Loop) -> None:
        s.loop = cmd.on

    def _delivery(self, s: _Session, cmd: wire.Delivery) -> None:
        flag = cmd.flag & 0xFFFF
        if 1 <= flag <= 3:  # others are ignored, as Spines does
            s.delivery = flag

    def _add_neighbor(self, s: _Session, cmd: wire.AddNeighbor) -> None:
        """libspines' ADD_NEIGHBOR: a link to that neighbor (direct, or a tunnel per the
        ``tunnel`` setting; ``Commands.neighbor``), as ``spines-kr neighbor add`` does.  It
        changes the overlay, so, like SETLINK, only with -m (accept_link_commands); a refusal
        is logged and counted (no effect, as in Spines 5.7) and the session stays open."""
        neighbor = _ip(cmd.address)
        if not self.cfg.accept_link_commands:
            self.counters["sessions.ignored.add_neighbor"] += 1
            self._warn("session.add_neighbor_ignored", "add_neighbor", session=s.id,
                       neighbor=neighbor, reason="this daemon was not started with -m "
                       "(accept_link_commands): give neighbors with -a or neighbor add")
            return
        try:
            result = self.commands.neighbor("add", neighbor, None, origin=f"session:{s.id}")
        except ValueError as e:
            self.counters["sessions.ignored.add_neighbor"] += 1
            self._warn("session.add_neighbor_ignored", "add_neighbor", session=s.id,
                       neighbor=neighbor, reason=str(e))
            return
        self.counters["sessions.add_neighbor"] += 1
        self.log.info("session.add_neighbor", session=s.id, neighbor=neighbor,
                      result=result)

    def _setlink(self, s: _Session, cmd: wire.SetLink) -> None:
        source, dest = _ip(cmd.remote), _ip(cmd.local)
        if not self.cfg.accept_link_commands:
            self.counters["sessions.refused.setlink"] += 1
            self._warn("session.setlink_refused", "setlink", session=s.id, source=source,
                       dest=dest, reason="this daemon was not started with -m "
                                         "(accept_link_commands)")
            return
        req = {"cmd": "setlink", "bandwidth_kbps": cmd.bandwidth / 1000,
               "latency_ms": cmd.latency, "loss_pct": cmd.loss / 10_000,
               "burst_pct": cmd.burst / 10_000, "source": source, "dest": dest}
        try:
            pending = self.commands.setlink(req)
        except ValueError as e:
            self.counters["sessions.refused.setlink"] += 1
            self._warn("session.setlink_refused", "setlink", session=s.id, source=source,
                       dest=dest, reason=str(e))
            return
        pending.then(lambda result: self.log.info("session.setlink", session=s.id,
                                                  source=source, dest=dest, result=result))

    def _query(self, s: _Session, cmd) -> None:
        if isinstance(cmd, wire.Traceroute):
            entries = self._traceroute(cmd.dest)
        elif isinstance(cmd, wire.EDistance):
            entries = list(self.commands.edistance(cmd.group))
        else:
            entries = self._membership(cmd.group)
        reply = wire.TraceReply(tuple(entries[:wire.MAX_COUNT]), self.my_id, s.port)
        self._control_write(s, reply.encode(wire.NATIVE))

    def _traceroute(self, dst: int) -> list[tuple[int, int, int]]:
        """Spines' TRACEROUTE: the nodes after this one on the path to ``dst`` (a node, or the
        nearest member of a group) with hops and cost from here; this node alone when it is
        ``dst``; nothing when unreachable."""
        path = list(self.commands.traceroute(dst))
        return path if len(path) <= 1 else path[1:]

    def _membership(self, group: int) -> list[tuple[int, int, int]]:
        """Spines' MEMBERSHIP: the member nodes reachable from here, with hops and cost."""
        out = []
        for m in self.commands.members(group):
            if m == self.my_id:
                out.append((m, 0, 0))
                continue
            path = self.commands.traceroute(m)
            if path:
                out.append((m, path[-1][1], path[-1][2]))
        return out

    # --- stream sessions (dataplane.streams) -------------------------------------------------

    def _stream_cmd(self, s: _Session, cmd) -> None:
        if self.streams is None:
            self._unsupported(s, cmd)
            return
        if isinstance(cmd, wire.Abort):
            self.streams.abort(s)
            return
        if s.stream is not None or (s.listening and not isinstance(cmd, wire.Listen)):
            self.stream_refuse(s, f"{type(cmd).__name__.lower()} on a session that is a stream "
                                  f"already")
            return
        self.counters["sessions.streams"] += 1
        if isinstance(cmd, wire.Connect):
            if not cmd.port or is_multicast(cmd.address) or is_anycast(cmd.address):
                self.stream_refuse(s, f"connect to {_ip(cmd.address)}:{cmd.port}: a stream "
                                      f"connects to a node and a port")
                return
            self.streams.connect(s, cmd.address, cmd.port)
        elif isinstance(cmd, wire.Listen):
            self.streams.listen(s)
        else:
            self.streams.accept(s, cmd)

    def stream_refuse(self, s: _Session, why: str) -> None:
        self._refuse(s, "unsupported", why)

    def stream_write(self, s: _Session, data: bytes) -> None:
        """Stream bytes (or its hello) to the client: raw, as ``spines_recv`` reads them."""
        if not s.closed:
            self.counters["sessions.bytes_out"] += len(data)
            self._enqueue(s, data, force=True)

    def stream_reading(self, s: _Session, on: bool) -> None:
        if s.paused == on:
            s.paused = not on
            self._update_reading(s)

    def stream_shutdown(self, s: _Session) -> None:
        """The peer ended its stream: EOF to the client once what is queued is written (it
        may still send: a half-closed stream)."""
        s.shut_pending = True
        if not s.out and not s.closed:
            self._flush(s)

    def stream_close(self, s: _Session, reason: str) -> None:
        """The stream ended in order: close the session once its output is written."""
        s.close_pending = True
        s.shut_pending = True
        if not s.closed:
            if not s.out:
                self._close(s, reason, "the stream ended", quiet=True)

    def stream_end(self, s: _Session, code: int, why: str) -> None:
        """The stream ended in error: a notice on the control channel, then close."""
        self._tell(s, code)
        self._close(s, "stream_error", why)

    def stream_request(self, s: _Session, peer: int, peer_port: int, port: int,
                       payload: bytes) -> None:
        """A connect request for a listener: delivered as a message from the connecting end
        (what ``spines_accept`` reads and hands back)."""
        frame = wire.frame(wire.NATIVE, (peer, self.my_id, 0, peer_port & 0xFFFF, port & 0xFFFF,
                                         len(payload), 0, 0, 1, 0, 0, 0), payload)
        self._enqueue(s, frame, force=True)

    def _unsupported(self, s: _Session, cmd) -> None:
        name = type(cmd).__name__
        if isinstance(cmd, (wire.Connect, wire.Listen, wire.Accept, wire.Abort)):
            why = f"{name}: stream sessions (connect/listen/accept) are not supported yet"
        elif isinstance(cmd, (wire.FloodSend, wire.FloodRecv)):
            why = f"{name}: the daemon-side flooder is not supported (use spines-kr flood)"
        else:
            why = f"{name}: intrusion-tolerant dissemination options are not supported yet"
        self._refuse(s, "unsupported", why)

    _HANDLERS: ClassVar[dict] = {
        wire.Bind: _bind, wire.Join: _join, wire.Leave: _join, wire.Loop: _loop_option,
        wire.Delivery: _delivery, wire.AddNeighbor: _add_neighbor, wire.SetLink: _setlink,
        wire.Traceroute: _query, wire.EDistance: _query, wire.Membership: _query,
        wire.Connect: _stream_cmd, wire.Listen: _stream_cmd, wire.Accept: _stream_cmd,
        wire.Abort: _stream_cmd,
        wire.FloodSend: _unsupported, wire.FloodRecv: _unsupported,
        wire.SetDissem: _unsupported, wire.Priority: _unsupported,
        wire.Expiration: _unsupported, wire.DisjointPaths: _unsupported,
    }

    # --- delivering -------------------------------------------------------------------------------

    def deliver(self, msg: Message) -> int:
        """Hand ``msg`` to the local sessions it is for; how many took it."""
        if msg.link & STREAM_SEGMENT:
            return self.streams.receive(msg) if self.streams is not None else 0
        dst = msg.dst
        group = is_multicast(dst) or is_anycast(dst)
        if group:
            members = self._members.get(dst)
            targets = list(members.values()) if members else []
        else:
            s = self._by_port.get(msg.dst_port)
            targets = [s] if s is not None and s.state == READY else []
        if not targets:
            self.counters["sessions.dropped.no_session"] += 1
            return 0
        payload = msg.payload
        if len(payload) > wire.MAX_MESSAGE:  # a client could not take it (u16 length)
            self.counters["sessions.dropped.too_big"] += 1
            return 0
        frame = wire.frame(wire.NATIVE, (msg.src, dst, 0, msg.src_port & 0xFFFF,
                                         msg.dst_port & 0xFFFF, len(payload), 0,
                                         msg.session & 0xFFFF, 1, 0, msg.ttl & 0xFF,
                                         msg.routing & 0xFF), payload)
        n = 0
        own = group and msg.src == self.my_id and msg.session  # loop: groups only
        for s in targets:
            if own and s.id == msg.session and not s.loop:
                continue
            if s.state == READY and self._enqueue(s, frame):
                n += 1
            if group and is_anycast(dst):
                break  # one member session (Spines: the first it finds)
        if n:
            self.counters["sessions.messages_out"] += n
            self.counters["sessions.bytes_out"] += n * len(payload)
        return n

    def _enqueue(self, s: _Session, frame: bytes, force: bool = False) -> bool:
        if not force and (len(s.out) >= QUEUE_LIMIT or s.out_bytes + len(frame) > QUEUE_BYTES):
            if s.delivery == 1:
                s.dropped += 1
                self.counters["sessions.dropped.queue_full"] += 1
                self._warn("session.queue_full", ("queue_full", s.id), session=s.id,
                           queued=len(s.out), action="dropped (delivery option 1)")
                return False
            self.counters["sessions.closed.queue_full"] += 1
            self._close(s, "queue_full", f"{len(s.out)} messages queued towards the client "
                                         f"(delivery option {s.delivery}: close)", level="warning")
            return False
        s.out.append(frame)
        s.out_bytes += len(frame)
        if not s.flush_pending and not s.writing:
            s.flush_pending = True
            self.loop.call_soon(self._flush, s)
        return True

    def _flush(self, s: _Session) -> None:
        """Write queued frames without blocking, many per ``sendmsg``; wait for the socket to be
        writable when it is full."""
        s.flush_pending = False
        if s.closed:
            return
        q = s.out
        while q:
            off = s.out_off
            bufs = [memoryview(q[0])[off:] if off else q[0]]
            bufs.extend(itertools.islice(q, 1, MAX_IOV))
            want = sum(len(b) for b in bufs)
            try:
                n = s.sock.sendmsg(bufs)
            except (BlockingIOError, InterruptedError):
                n = 0
            except OSError as e:
                self._close(s, "write_error", f"write error: {e.strerror or e}")
                return
            sent = n
            while sent and q:
                left = len(q[0]) - off
                if sent >= left:
                    sent -= left
                    s.out_bytes -= len(q.popleft())
                    s.msgs_out += 1
                    off = 0
                else:
                    off += sent
                    sent = 0
            s.out_off = off
            if n and s.stream is not None:
                self.streams.written(s, n)  # (the window opens; may queue or close)
                if s.closed:
                    return
            if n < want:  # the socket is full: wait until it is writable
                if not s.writing:
                    s.writing = True
                    self.loop.add_writer(s.fd, lambda: self._flush(s))
                return
        if s.writing:
            s.writing = False
            self.loop.remove_writer(s.fd)
        if s.shut_pending or s.close_pending:
            self._tell(s, wire.STREAM_CLOSED)  # (before the EOF: the client reads it after)
        if s.close_pending:
            self._close(s, "stream_closed", "the stream ended", quiet=True)
        elif s.shut_pending:
            s.shut_pending = False
            try:
                s.sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass

    def _tell(self, s: _Session, code: int) -> None:
        """How the stream ended, once, on the control channel (``wire.session.stream_end``)."""
        if not s.told:
            s.told = True
            self._control_write(s, wire.stream_end(code))

    def _control_write(self, s: _Session, data: bytes) -> None:
        c = s.ctrl
        if c is None:
            self.counters["sessions.dropped.no_control"] += 1
            return
        if len(c.out) + len(data) > CTRL_LIMIT:
            self._close(s, "control_unread", "its control channel is not read (replies pile "
                                             "up)", level="warning")
            return
        c.out += data
        self._control_flush(c)

    def _control_flush(self, c: _Control) -> None:
        try:
            n = c.sock.send(c.out) if c.out else 0
        except (BlockingIOError, InterruptedError):
            n = 0
        except OSError:
            s = c.session
            self._close_control(c)
            if s is not None:
                s.ctrl = None
            return
        c.out = c.out[n:]
        if c.out and not c.writing:
            c.writing = True
            self.loop.add_writer(c.fd, lambda: self._control_flush(c))
        elif not c.out and c.writing:
            c.writing = False
            self.loop.remove_writer(c.fd)

    # --- closing ----------------------------------------------------------------------------------

    def _refuse(self, s: _Session, key: str, why: str) -> None:
        self.counters[f"sessions.refused.{key}"] += 1
        self._close(s, key, why, level="warning")

    def _close(self, s: _Session, reason: str, detail: str, level: str = "info",
               quiet: bool = False) -> None:
        """Close a session: logged first (the log says why before the client sees the end),
        then its sockets, its port and its groups."""
        if s.closed:
            return
        s.closed = True
        self.counters["sessions.closed"] += 1
        fields = {"session": s.id, "port": s.port, "transport": s.transport,
                  "reason": reason, "detail": detail, "messages_in": s.msgs_in,
                  "messages_out": s.msgs_out}
        if s.out:
            fields["unsent"] = len(s.out)
        if quiet:
            self.log.debug("session.closed", **fields)
        else:
            self._log(level, "session.closed", reason, **fields)
        if s.reading:
            self.loop.remove_reader(s.fd)
            s.reading = False
        if s.writing:
            self.loop.remove_writer(s.fd)
            s.writing = False
        if s.timer is not None:
            s.timer.cancel()
            s.timer = None
        self._sessions.pop(s.id, None)
        if self._by_port.get(s.port) is s:
            del self._by_port[s.port]
        if self.streams is not None and (s.stream is not None or s.listening):
            self.streams.session_closed(s)
        for g in list(s.groups):
            self._leave(s, g)
        s.out.clear()
        s.out_bytes = 0
        s.buf = b""
        s.sock.close()
        if s.ctrl is not None:
            self._close_control(s.ctrl)
            s.ctrl = None

    def _close_control(self, c: _Control) -> None:
        if self._pending.get(c.token) is c:
            del self._pending[c.token]
        if c.timer is not None:
            c.timer.cancel()
            c.timer = None
        if c.fd >= 0 and c.sock.fileno() >= 0:
            self.loop.remove_reader(c.fd)
            if c.writing:
                self.loop.remove_writer(c.fd)
                c.writing = False
            c.sock.close()
        if c.session is not None and c.session.ctrl is c:
            c.session.ctrl = None

    # --- logs -------------------------------------------------------------------------------------

    def _log(self, level: str, event: str, key, **fields) -> None:
        if self._limit.allow((event, key), self.loop.time()):
            getattr(self.log, level)(event, **fields)

    def _warn(self, event: str, key, **fields) -> None:
        self._log("warning", event, key, **fields)
