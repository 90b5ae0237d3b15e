"""The Python client of a spines-kr daemon (or of a Spines 5.7 daemon: it speaks libspines'
protocol byte for byte, ``wire.session``): a socket-like object with Spines' semantics, constant
names and values, so that Python applications send and receive messages across the overlay as C
programs linked with libspines do.

    from spines_kr import client
    with client.socket("/tmp/spines8100") as s:      # or ("127.0.0.1", 8100) over TCP, or None
        s.bind(8400)                                   # the virtual port (else one from 40001 up)
        s.setsockopt(0, client.SPINES_ADD_MEMBERSHIP, "225.1.1.1")   # or s.join("225.1.1.1")
        s.sendto(b"hello", ("10.0.0.3", 8400))         # a node's logical ID or a group
        data, (sender, port) = s.recvfrom()

Data model: ``SpinesSocket`` holds a session's two stream connections to the daemon (data:
frames both ways; control: the daemon's replies to TRACEROUTE, EDISTANCE and MEMBERSHIP), the
daemon's byte order, the session id, the node's address and the virtual port (``getsockname``),
the TTLs and routing bits stamped on each message.  Reads never run ahead of what is asked:
``recvfrom`` reads exactly one frame, so ``fileno()`` is ready for a selector whenever a message
waits; ``recv_batch`` reads in bulk and returns every whole message, keeping only an unfinished
one.  ``spines_kr.client.aio`` is the asyncio flavour.

Errors: ``SpinesError`` (an ``OSError``) when the daemon cannot be reached or closes the session
(the only way a libspines daemon says no: a BIND to a port in use, an option it does not serve);
``bind``, ``join`` and ``leave`` wait for the daemon to have taken the request (a MEMBERSHIP
round trip on the control channel), so such a refusal surfaces at the call that caused it.
``ValueError`` for arguments libspines refuses itself (a message over 50,000 bytes, port 0).

Daemon address (``daemon``): None -> /tmp/spines8100 (IPC); a path -> IPC at that path (data at
path + "data"); an int P -> IPC at /tmp/spines<P>; (host, P) -> TCP, data at P+7 and control at
P+9 (Spines' session ports).  UDP_CONNECT sessions are not offered (libspines 5.7 cannot use
them on 64-bit Linux; spines-kr does not serve them).

Reliable streams (Spines' RELIABLE_STREAM_SESSION, ``SOCK_STREAM``): ``StreamSocket`` (made by
``stream_socket()``) is one session used the libspines way (CONNECT, LISTEN, ACCEPT, data
frames with their ``rel_udp_pkt_add``, raw bytes back after a 16-byte hello), with socket
semantics: ``connect`` waits for the other end's accept, ``listen``/``accept`` (a new session
per connection, as ``spines_accept``), ``send``/``sendall``/``recv`` (``b""`` at the peer's
orderly end), ``shutdown(SHUT_WR)`` (half-close: the peer reads EOF, this end still reads),
``close`` (orderly: everything sent arrives, then EOF), ``abort`` (an RST: the peer's
``recv`` raises ``ConnectionResetError``).  A refused connect raises
``ConnectionRefusedError``, a peer that stopped answering ``TimeoutError`` (from the
daemon's stream-end notice on the control channel, a spines-kr extension).  Streams run over
RELIABLE_LINKS by default (hop-by-hop recovery under the end-to-end one).

Constants: Spines' names and values (libspines/spines_lib.h, 5.7).  ``SPINES_ADD_MEMBERSHIP``
and friends are the kernel's IP_* option numbers, as in Spines; the unprefixed names
(``ADD_MEMBERSHIP``...) are aliases.
"""

from __future__ import annotations

import errno
import ipaddress
import random
import socket as _socket
import struct

from spines_kr.wire import session as wire

# link protocols (protocol & 0xF)
UDP_LINKS = 0x0
RELIABLE_LINKS = 0x1
SOFT_REALTIME_LINKS = 0x2
INTRUSION_TOL_LINKS = 0x8
UDP_CONNECT = 0x10
# dissemination (protocol & 0xF00)
MIN_WEIGHT_ROUTING = 0x000
IT_PRIORITY_ROUTING = 0x100
IT_RELIABLE_ROUTING = 0x200
SOURCE_BASED_ROUTING = 0x300
ROUTING_BITS_SHIFT = 8
# session semantics (protocol & 0xF000)
RELIABLE_STREAM_SESSION = 0x0000
RELIABLE_DGRAM_SESSION_NO_BACKPRESSURE = 0x1000
RELIABLE_DGRAM_SESSION_WITH_BACKPRESSURE = 0x2000

AF_SPINES = PF_SPINES = _socket.AF_INET
SOCK_DGRAM = _socket.SOCK_DGRAM
SOCK_STREAM = _socket.SOCK_STREAM

# options of spines_setsockopt
SPINES_ADD_MEMBERSHIP = ADD_MEMBERSHIP = _socket.IP_ADD_MEMBERSHIP
SPINES_DROP_MEMBERSHIP = DROP_MEMBERSHIP = _socket.IP_DROP_MEMBERSHIP
SPINES_MULTICAST_LOOP = MULTICAST_LOOP = _socket.IP_MULTICAST_LOOP
SPINES_IP_TTL = IP_TTL = _socket.IP_TTL
SPINES_IP_MULTICAST_TTL = IP_MULTICAST_TTL = _socket.IP_MULTICAST_TTL
SPINES_ADD_NEIGHBOR = ADD_NEIGHBOR = 51
SPINES_TRACEROUTE = TRACEROUTE = 61
SPINES_EDISTANCE = EDISTANCE = 62
SPINES_MEMBERSHIP = MEMBERSHIP = 63
SPINES_SET_DELIVERY = SET_DELIVERY = 64
SPINES_SET_PRIORITY = SET_PRIORITY = 71
SPINES_SET_EXPIRATION = SET_EXPIRATION = 72
SPINES_DISJOINT_PATHS = DISJOINT_PATHS = 73

DEFAULT_SPINES_PORT = 8100
SPINES_UNIX_SOCKET_PATH = "/tmp/spines"
SPINES_UNIX_DATA_SUFFIX = "data"
MAX_SPINES_CLIENT_MSG = wire.MAX_MESSAGE
MAX_COUNT = wire.MAX_COUNT
SPINES_TTL_MAX = wire.TTL_MAX
SESS_PORT, SESS_CTRL_PORT = 7, 9  # TCP session ports: daemon port + these
DEFAULT_TIMEOUT = 10.0  # s for the handshake and the daemon's replies
READ_SIZE = 256 << 10


class SpinesError(OSError):
    """The daemon cannot be reached, refused the session, or closed it."""


def endpoints(daemon=None) -> tuple[int, object, object, str]:
    """(family, control address, data address, description) of a daemon address."""
    if daemon is None:
        daemon = DEFAULT_SPINES_PORT
    if isinstance(daemon, bool):
        raise ValueError(f"not a daemon address: {daemon!r}")
    if isinstance(daemon, int):
        daemon = f"{SPINES_UNIX_SOCKET_PATH}{daemon}"
    if isinstance(daemon, (str, bytes)):
        path = daemon.decode() if isinstance(daemon, bytes) else daemon
        if not path:
            raise ValueError("empty IPC path")
        return _socket.AF_UNIX, path, path + SPINES_UNIX_DATA_SUFFIX, path
    if isinstance(daemon, tuple) and len(daemon) == 2:
        host, port = daemon
        if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535 - 9:
            raise ValueError(f"not a daemon port: {port!r}")
        return (_socket.AF_INET, (host, port + SESS_CTRL_PORT), (host, port + SESS_PORT),
                f"{host}:{port}")
    raise ValueError(f"not a daemon address (a path, a port or (host, port)): {daemon!r}")


def address(host) -> int:
    """An IPv4 address (dotted string, int, or ip_mreq / in_addr bytes) as an integer."""
    if isinstance(host, bool):
        raise ValueError(f"not an address: {host!r}")
    if isinstance(host, int):
        if not 0 <= host <= 0xFFFFFFFF:
            raise ValueError(f"not an IPv4 address: {host!r}")
        return host
    if isinstance(host, (bytes, bytearray)) and len(host) in (4, 8):
        return int.from_bytes(host[:4], "big")  # in_addr / ip_mreq: network order
    if isinstance(host, ipaddress.IPv4Address):
        return int(host)
    if isinstance(host, str):
        try:
            return int(ipaddress.IPv4Address(host))
        except ValueError:
            try:
                return int(ipaddress.IPv4Address(_socket.gethostbyname(host)))
            except OSError:
                raise ValueError(f"not an IPv4 address or a known host name: {host!r}") from None
    raise ValueError(f"not an IPv4 address: {host!r}")


def ip(a: int) -> str:
    return str(ipaddress.IPv4Address(a & 0xFFFFFFFF))


def destination(addr) -> tuple[int, int]:
    """A message destination (host, port) as (address, port); libspines refuses port 0."""
    if not isinstance(addr, tuple) or len(addr) != 2:
        raise ValueError(f"a destination is (address, port), not {addr!r}")
    port = addr[1]
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise ValueError(f"destination port {port!r}: 1..65535 (libspines cannot send to 0)")
    return address(addr[0]), port


def is_group(a: int) -> bool:
    return (a & 0xE0000000) == 0xE0000000


def links_frame(protocol: int) -> bytes:
    """The LINKS frame of a session with ``protocol`` (checked as libspines does)."""
    if protocol & UDP_CONNECT:
        raise ValueError("UDP_CONNECT sessions are not offered (libspines 5.7 cannot use them "
                         "on 64-bit Linux; spines-kr serves none): use the default session")
    routing, link = protocol & 0xF00, protocol & 0xF
    if routing in (IT_PRIORITY_ROUTING, IT_RELIABLE_ROUTING) and link != INTRUSION_TOL_LINKS:
        raise ValueError("intrusion-tolerant dissemination needs INTRUSION_TOL_LINKS")
    if routing == SOURCE_BASED_ROUTING and link not in (UDP_LINKS, SOFT_REALTIME_LINKS):
        raise ValueError("source-based routing runs over UDP or soft-real-time links only")
    if protocol & 0xF000 == RELIABLE_DGRAM_SESSION_WITH_BACKPRESSURE:
        raise ValueError("RELIABLE_DGRAM_SESSION_WITH_BACKPRESSURE is not available")
    return wire.Links.for_protocol(protocol, random.getrandbits(31)).encode(wire.NATIVE)


def option_command(optname: int, value) -> wire.Command:
    """The command frame of a ``setsockopt`` that goes to the daemon (not the TTLs)."""
    if optname == SPINES_ADD_MEMBERSHIP:
        return wire.Join(address(value))
    if optname == SPINES_DROP_MEMBERSHIP:
        return wire.Leave(address(value))
    if optname == SPINES_MULTICAST_LOOP:
        return wire.Loop(1 if value else 0)
    if optname == SPINES_TRACEROUTE:
        return wire.Traceroute(address(value))
    if optname == SPINES_EDISTANCE:
        return wire.EDistance(address(value))
    if optname == SPINES_MEMBERSHIP:
        return wire.Membership(address(value))
    if optname == SPINES_ADD_NEIGHBOR:
        return wire.AddNeighbor(address(value))
    if optname == SPINES_SET_DELIVERY:
        return wire.Delivery(int(value) & 0xFFFF)
    if optname == SPINES_SET_PRIORITY:
        return wire.Priority(int(value) & 0xFFFF)
    if optname == SPINES_DISJOINT_PATHS:
        return wire.DisjointPaths(int(value) & 0xFFFF)
    if optname == SPINES_SET_EXPIRATION:
        sec, usec = value
        return wire.Expiration(int(sec) & 0xFFFFFFFF, int(usec) & 0xFFFFFFFF)
    raise ValueError(f"unknown Spines option {optname}")


QUERIES = (SPINES_TRACEROUTE, SPINES_EDISTANCE, SPINES_MEMBERSHIP)
CONFIRM = wire.Membership(0).encode(wire.NATIVE)  # a harmless query: its reply is a barrier


def entries(reply: wire.TraceReply) -> list[tuple[str, int, int]]:
    return [(ip(a), d, c) for a, d, c in reply.entries]


def _closed(what: str) -> SpinesError:
    return SpinesError(errno.ECONNRESET, f"the daemon closed the session ({what})")


class _Options:
    """What the blocking and the asyncio session share of ``setsockopt``: the options
    libspines keeps in the socket itself (the TTLs stamped on each message)."""

    _ttl: int
    _mcast_ttl: int

    def _local_option(self, optname: int, value) -> bool:
        if optname == SPINES_IP_TTL:
            self._ttl = _ttl(value)
        elif optname == SPINES_IP_MULTICAST_TTL:
            self._mcast_ttl = _ttl(value)
        else:
            return False
        return True


def membership_change(optname: int, cmd) -> str | None:
    """"join G" / "leave G" for a membership option (what the daemon then confirms)."""
    if optname not in (SPINES_ADD_MEMBERSHIP, SPINES_DROP_MEMBERSHIP):
        return None
    return f"{'join' if optname == SPINES_ADD_MEMBERSHIP else 'leave'} {ip(cmd.group)}"


class SpinesSocket(_Options):
    """One session with a daemon (``spines_socket(PF_SPINES, SOCK_DGRAM, protocol, daemon)``)."""

    def __init__(self, daemon=None, protocol: int = UDP_LINKS, *,
                 timeout: float | None = DEFAULT_TIMEOUT) -> None:
        family, ctrl_addr, data_addr, self.daemon = endpoints(daemon)
        links = links_frame(protocol)
        self.daemon_address = daemon
        self.protocol = protocol
        self._routing = (protocol >> ROUTING_BITS_SHIFT) & 0xF
        self._ttl = self._mcast_ttl = SPINES_TTL_MAX
        self._rbuf = bytearray()
        self._ctrl = self._data = None
        self._order = wire.NATIVE
        self._timeout = timeout
        self.connected_to: tuple[int, int] | None = None
        try:
            self._ctrl = self._connect(family, ctrl_addr, timeout)
            token = self._exact(self._ctrl, wire.TOKEN_LEN, "handshake: no control token")
            self._data = self._connect(family, data_addr, timeout)
            self._data.sendall(wire.endian_word(wire.NATIVE) + token + links)
            self._order = wire.order_of(self._exact(self._data, 4, "handshake: no endian word"))
            header, body = self._read_frame(self._data, "handshake: no session identity")
            ident = wire.IdReply.decode(header, body, self._order)
        except wire.DecodeError as e:
            self.close()
            raise SpinesError(errno.EPROTO, f"{self.daemon} does not speak libspines: {e}") from None
        except TimeoutError:
            self.close()
            raise SpinesError(errno.ETIMEDOUT, f"the daemon at {self.daemon} did not answer the "
                                               f"handshake in time") from None
        except OSError as e:
            reached = self._data is not None  # both channels connected: the daemon said no
            self.close()
            if reached and e.errno in (errno.ECONNRESET, errno.EPIPE):
                raise SpinesError(errno.ECONNRESET, f"the daemon at {self.daemon} closed the "
                                  f"session at once (too many sessions, or options it does not "
                                  f"serve: see its log)") from None
            raise SpinesError(e.errno, f"no spines daemon at {self.daemon} "
                                       f"({e.strerror or e})") from None
        self.session_id, self.port, self.node = ident.sess_id, ident.port, ident.address

    # --- plumbing ---------------------------------------------------------------------------

    @staticmethod
    def _connect(family: int, addr, timeout) -> _socket.socket:
        s = _socket.socket(family, _socket.SOCK_STREAM | _socket.SOCK_CLOEXEC)
        try:
            s.settimeout(timeout)
            if family == _socket.AF_INET:
                s.setsockopt(_socket.IPPROTO_TCP, _socket.TCP_NODELAY, 1)
            s.connect(addr)
        except BaseException:
            s.close()
            raise
        return s

    @staticmethod
    def _exact(sock: _socket.socket, n: int, what: str) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            chunk = sock.recv(n - len(buf))
            if not chunk:
                raise _closed(what)
            buf += chunk
        return bytes(buf)

    def _read_frame(self, sock, what: str) -> tuple[wire.Header, bytes]:
        head = self._exact(sock, 4 + wire.HEADER_LEN, what)
        f = wire.next_frame(head, 0, self._order)  # checks the length
        if f is None:
            (length,) = struct.unpack(self._order + "i", head[:4])
            body = self._exact(sock, length - wire.HEADER_LEN, what)
            f = wire.next_frame(head + body, 0, self._order)
            return f[0], body
        return f[0], b""

    def _take(self) -> wire.Received | None:
        """The first whole message in the read buffer, or None."""
        f = wire.next_frame(self._rbuf, 0, self._order)
        if f is None:
            return None
        header, start, end = f
        msg = wire.Received.decode(header, bytes(self._rbuf[start:end]))
        del self._rbuf[:end]
        return msg

    def _fill(self, n: int) -> None:
        """Read until the buffer holds ``n`` bytes (never more than asked)."""
        while len(self._rbuf) < n:
            chunk = self._data.recv(n - len(self._rbuf))
            if not chunk:
                raise _closed("end of stream" if not self._rbuf else
                              f"in the middle of a frame, {len(self._rbuf)} bytes in")
            self._rbuf += chunk

    def _query(self, cmd: wire.Command) -> wire.TraceReply:
        self._send(cmd.encode(wire.NATIVE), type(cmd).__name__)
        try:
            header, body = self._read_frame(self._ctrl, f"after {type(cmd).__name__}")
        except TimeoutError:
            raise SpinesError(errno.ETIMEDOUT, f"the daemon did not answer "
                                               f"{type(cmd).__name__} in time") from None
        return wire.TraceReply.decode(header, body, self._order)

    def _send(self, data: bytes, what: str = "sending") -> None:
        try:
            self._data.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            raise _closed(what) from None

    def _confirmed(self, what: str, err: int = errno.ECONNRESET) -> None:
        """Wait until the daemon has handled what was sent before (or closed the session)."""
        try:
            self._data.sendall(CONFIRM)
            self._read_frame(self._ctrl, what)
        except (SpinesError, BrokenPipeError, ConnectionResetError):
            raise SpinesError(err, f"{what}: refused, the daemon closed the session "
                                   f"(see its log)") from None

    # --- the socket API -----------------------------------------------------------------------

    def fileno(self) -> int:
        return self._data.fileno() if self._data is not None else -1

    def getsockname(self) -> tuple[str, int]:
        """(this node's logical ID, the session's virtual port)."""
        return ip(self.node), self.port

    def settimeout(self, timeout: float | None) -> None:
        self._timeout = timeout
        for s in (self._data, self._ctrl):
            if s is not None:
                s.settimeout(timeout)

    def gettimeout(self) -> float | None:
        return self._timeout

    def setblocking(self, flag: bool) -> None:
        self.settimeout(None if flag else 0.0)

    def bind(self, addr) -> None:
        """Take virtual port ``addr`` (a port, or (address, port) whose address is ignored);
        port 0 keeps the one given at connect (POSIX bind(0)).  SpinesError(EADDRINUSE) when
        another session holds it."""
        port = addr[1] if isinstance(addr, tuple) else addr
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
            raise ValueError(f"not a port: {port!r}")
        if port == 0:
            return
        self._send(wire.Bind(port).encode(wire.NATIVE), f"bind to virtual port {port}")
        self._confirmed(f"bind to virtual port {port} (in use?)", errno.EADDRINUSE)
        self.port = port

    def connect(self, addr) -> None:
        """Set the default destination of ``send`` (a datagram connect: nothing is sent)."""
        self.connected_to = destination(addr)

    def sendto(self, data, addr) -> int:
        dest, port = destination(addr)
        payload = bytes(data)
        if len(payload) > MAX_SPINES_CLIENT_MSG:
            raise ValueError(f"message of {len(payload)} bytes: at most {MAX_SPINES_CLIENT_MSG}")
        ttl = self._mcast_ttl if is_group(dest) else self._ttl
        self._send(wire.SendTo(dest, port, payload, ttl, self._routing).encode(wire.NATIVE))
        return len(payload)

    def send(self, data) -> int:
        if self.connected_to is None:
            raise OSError(errno.EDESTADDRREQ, "send: not connected (connect() or sendto())")
        return self.sendto(data, self.connected_to)

    def send_batch(self, payloads, addr) -> int:
        """Send several messages to one destination in one write; how many."""
        dest, port = destination(addr)
        ttl = self._mcast_ttl if is_group(dest) else self._ttl
        frames = []
        for p in payloads:
            if len(p) > MAX_SPINES_CLIENT_MSG:
                raise ValueError(f"message of {len(p)} bytes: at most {MAX_SPINES_CLIENT_MSG}")
            frames.append(wire.SendTo(dest, port, bytes(p), ttl, self._routing)
                          .encode(wire.NATIVE))
        self._send(b"".join(frames))
        return len(frames)

    def recv_message(self) -> wire.Received:
        """The next message with all the daemon says of it (source, ports, dest, ttl)."""
        msg = self._take()
        if msg is not None:
            return msg
        self._fill(4 + wire.HEADER_LEN)
        f = wire.next_frame(self._rbuf, 0, self._order)
        if f is None:
            (length,) = struct.unpack_from(self._order + "i", self._rbuf, 0)
            self._fill(4 + length)
        return self._take()

    def recvfrom(self, bufsize: int = MAX_SPINES_CLIENT_MSG) -> tuple[bytes, tuple[str, int]]:
        """The next message and its sender (node, port); cut to ``bufsize`` like a datagram."""
        m = self.recv_message()
        return m.payload[:bufsize], (ip(m.source), m.source_port)

    def recvfrom_dest(self, bufsize: int = MAX_SPINES_CLIENT_MSG):
        """(payload, (sender, port), destination): the group a message was sent to."""
        m = self.recv_message()
        return m.payload[:bufsize], (ip(m.source), m.source_port), ip(m.dest)

    def recv(self, bufsize: int = MAX_SPINES_CLIENT_MSG) -> bytes:
        return self.recvfrom(bufsize)[0]

    def recv_batch(self) -> list[wire.Received]:
        """Every whole message the daemon has sent (waiting for one when none has arrived):
        one bulk read; only an unfinished message stays buffered."""
        out = []
        while (m := self._take()) is not None:
            out.append(m)
        if out:
            return out
        chunk = self._data.recv(READ_SIZE)
        if not chunk:
            raise _closed("end of stream")
        self._rbuf += chunk
        while (m := self._take()) is not None:
            out.append(m)
        return out

    def pending(self) -> bool:
        """Whether a whole message is buffered (only after ``recv_batch``: never, by design)."""
        return wire.next_frame(self._rbuf, 0, self._order) is not None

    def setsockopt(self, level: int, optname: int, value=None):
        """``spines_setsockopt``: ``level`` is ignored, as libspines does.  TRACEROUTE,
        EDISTANCE and MEMBERSHIP return their answer: [(address, distance, cost)]."""
        if self._local_option(optname, value):
            return None
        cmd = option_command(optname, value)
        if optname in QUERIES:
            return entries(self._query(cmd))
        self._send(cmd.encode(wire.NATIVE), type(cmd).__name__)
        what = membership_change(optname, cmd)
        if what:
            self._confirmed(what)
        return None

    ioctl = setsockopt

    # --- conveniences ------------------------------------------------------------------------

    def join(self, group) -> None:
        self.setsockopt(0, SPINES_ADD_MEMBERSHIP, group)

    def leave(self, group) -> None:
        self.setsockopt(0, SPINES_DROP_MEMBERSHIP, group)

    def set_loop(self, on: bool) -> None:
        self.setsockopt(0, SPINES_MULTICAST_LOOP, on)

    def traceroute(self, dest) -> list[tuple[str, int, int]]:
        return self.setsockopt(0, SPINES_TRACEROUTE, dest)

    def edistance(self, group) -> list[tuple[str, int, int]]:
        return self.setsockopt(0, SPINES_EDISTANCE, group)

    def membership(self, group) -> list[tuple[str, int, int]]:
        return self.setsockopt(0, SPINES_MEMBERSHIP, group)

    def setlink(self, remote, local, bandwidth_kbps: float, latency_ms: float, loss_pct: float,
                burst_pct: float) -> None:
        """``spines_setlink``: the leg from ``remote`` to ``local`` (told to ``local``'s
        daemon, started with -m); no reply, as in Spines."""
        self._send(wire.SetLink(address(remote), address(local), int(bandwidth_kbps * 1000),
                                int(latency_ms), int(loss_pct * 10_000), int(burst_pct * 10_000))
                   .encode(wire.NATIVE), "setlink")

    def confirm(self) -> None:
        """Wait until the daemon has handled everything sent so far."""
        self._confirmed("the session")

    def close(self) -> None:
        for s in (self._data, self._ctrl):
            if s is not None:
                try:
                    s.shutdown(_socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()
        self._data = self._ctrl = None

    def __enter__(self) -> SpinesSocket:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"<SpinesSocket {ip(getattr(self, 'node', 0))}:{getattr(self, 'port', 0)} "
                f"session {getattr(self, 'session_id', '?')} via {self.daemon}>")


def stream_error(code: int | None, what: str, default: int | None = None) -> OSError | None:
    """The error of a stream's end from the daemon's notice (None: it closed the session
    without one); None for an orderly end."""
    if code == wire.STREAM_CLOSED:
        return None
    if code == wire.STREAM_REFUSED or (code is None and default == errno.ECONNREFUSED):
        return ConnectionRefusedError(errno.ECONNREFUSED, f"{what}: connection refused "
                                                          f"(nobody listens there)")
    if code == wire.STREAM_TIMEOUT:
        return TimeoutError(errno.ETIMEDOUT, f"{what}: the other end stopped answering")
    return ConnectionResetError(errno.ECONNRESET, f"{what}: the stream was reset" + (
        " by the other end" if code in (wire.STREAM_RESET, wire.STREAM_ABORTED) else
        " (the daemon closed the session: see its log)"))


class StreamSocket:
    """A reliable stream (``spines_socket(PF_SPINES, SOCK_STREAM, protocol, daemon)``)."""

    def __init__(self, daemon=None, protocol: int = RELIABLE_LINKS, *,
                 timeout: float | None = DEFAULT_TIMEOUT, _session: SpinesSocket | None = None):
        if protocol & 0xF000:
            raise ValueError("a stream is a RELIABLE_STREAM_SESSION (session bits 0)")
        self._s = _session or SpinesSocket(daemon, protocol, timeout=timeout)
        self.peer: tuple[str, int] | None = None
        self.listening = False
        self._eof = False

    # --- plumbing ---------------------------------------------------------------------------

    def _hello(self, what: str) -> None:
        """The 16-byte hello that opens a connected stream; an error for a refused one."""
        buf = b""
        try:
            while len(buf) < wire.STREAM_HELLO_LEN:
                chunk = self._s._data.recv(wire.STREAM_HELLO_LEN - len(buf))
                if not chunk:
                    self._raise_end(what, errno.ECONNREFUSED)
                buf += chunk
        except TimeoutError:
            raise TimeoutError(errno.ETIMEDOUT, f"{what}: no answer in time") from None
        except (ConnectionResetError, BrokenPipeError):
            self._raise_end(what, errno.ECONNREFUSED)

    def _end_code(self) -> int | None:
        """How the daemon says the stream ended (its notice on the control channel, written
        just before the data channel's EOF); None when it closed the session without one."""
        ctrl = self._s._ctrl
        if ctrl is None:
            return None
        try:
            header, body = self._s._read_frame(ctrl, "the stream's end")
            return wire.stream_end_code(header, body, self._s._order)
        except (OSError, wire.DecodeError):
            return None

    def _raise_end(self, what: str, default: int | None = None):
        """At the data channel's EOF: nothing for an orderly end, else the error."""
        e = stream_error(self._end_code(), what, default)
        if e is not None:
            raise e

    # --- the socket API -----------------------------------------------------------------------

    def fileno(self) -> int:
        return self._s.fileno()

    def getsockname(self) -> tuple[str, int]:
        return self._s.getsockname()

    def getpeername(self) -> tuple[str, int]:
        if self.peer is None:
            raise OSError(errno.ENOTCONN, "not connected")
        return self.peer

    def settimeout(self, timeout: float | None) -> None:
        self._s.settimeout(timeout)

    def gettimeout(self) -> float | None:
        return self._s.gettimeout()

    def setblocking(self, flag: bool) -> None:
        self._s.setblocking(flag)

    def bind(self, addr) -> None:
        self._s.bind(addr)

    def connect(self, addr) -> None:
        """Connect to (node, port) where a stream listens; returns once it accepted."""
        dest, port = destination(addr)
        if is_group(dest):
            raise ValueError("a stream connects to a node, not a group")
        self._s._send(wire.Connect(dest, port).encode(wire.NATIVE), "connect")
        what = f"connect to {ip(dest)}:{port}"
        self._hello(what)
        self.peer = (ip(dest), port)

    def listen(self, backlog: int = 0) -> None:
        """Take connections on this session's virtual port (``bind`` it first)."""
        self._s._send(wire.Listen().encode(wire.NATIVE), "listen")
        self._s._confirmed(f"listen on virtual port {self._s.port} (in use?)",
                           errno.EADDRINUSE)
        self.listening = True

    def accept(self) -> tuple[StreamSocket, tuple[str, int]]:
        """The next connection: (a new stream on a session of its own, (peer node, port))."""
        if not self.listening:
            raise OSError(errno.EINVAL, "accept: not listening")
        m = self._s.recv_message()
        session = SpinesSocket(self._s.daemon_address, self._s.protocol,
                               timeout=self._s.gettimeout())
        conn = StreamSocket(_session=session)
        try:
            session._send(wire.Accept(m.source, m.source_port, m.payload).encode(wire.NATIVE),
                          "accept")
            conn._hello(f"accept from {ip(m.source)}:{m.source_port}")
        except BaseException:
            conn.close()
            raise
        conn.peer = (ip(m.source), m.source_port)
        return conn, conn.peer

    def send(self, data) -> int:
        """Send up to 50,000 bytes of ``data`` (blocks while the stream's buffers are full);
        how many."""
        data = memoryview(bytes(data) if not isinstance(data, (bytes, bytearray)) else data)
        chunk = bytes(data[:MAX_SPINES_CLIENT_MSG])
        self._sendframe(chunk)
        return len(chunk)

    def sendall(self, data) -> None:
        data = memoryview(data).cast("B") if not isinstance(data, memoryview) else data
        frames = [wire.stream_data(bytes(data[i:i + MAX_SPINES_CLIENT_MSG]))
                  for i in range(0, len(data), MAX_SPINES_CLIENT_MSG)]
        for i in range(0, len(frames), 32):
            self._sendraw(b"".join(frames[i:i + 32]))

    def _sendframe(self, chunk: bytes) -> None:
        self._sendraw(wire.stream_data(chunk))

    def _sendraw(self, data: bytes) -> None:
        try:
            self._s._data.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            self._raise_end("send", errno.ECONNRESET)
            raise BrokenPipeError(errno.EPIPE, "send: the stream is closed") from None

    def recv(self, bufsize: int = 65536) -> bytes:
        """Up to ``bufsize`` bytes; ``b""`` once the other end closed in order.  A reset, a
        refusal or a dead peer raise (``ConnectionResetError``, ``TimeoutError``)."""
        if self._eof:
            return b""
        try:
            data = self._s._data.recv(bufsize)
        except ConnectionResetError:
            self._raise_end("recv", errno.ECONNRESET)
            raise
        if not data:
            self._raise_end("recv")
            self._eof = True
        return data

    def shutdown(self, how: int = _socket.SHUT_WR) -> None:
        """SHUT_WR: the end of what this end sends (the peer reads EOF); still receives."""
        self._s._data.shutdown(how)

    def close(self) -> None:
        """Orderly: what was sent arrives, then the peer reads EOF."""
        self._s.close()

    def abort(self) -> None:
        """Reset the stream: the peer's next ``recv`` raises ``ConnectionResetError``."""
        try:
            self._s._data.sendall(wire.Abort().encode(wire.NATIVE))
        except OSError:
            pass
        self._s.close()

    def __enter__(self) -> StreamSocket:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<StreamSocket {self.getsockname()} peer {self.peer} via {self._s.daemon}>"


def stream_socket(daemon=None, protocol: int = RELIABLE_LINKS, *,
                  timeout: float | None = DEFAULT_TIMEOUT) -> StreamSocket:
    """A new stream session (``spines_socket(PF_SPINES, SOCK_STREAM, ...)``)."""
    return StreamSocket(daemon, protocol, timeout=timeout)


def _ttl(value) -> int:
    v = value[0] if isinstance(value, (bytes, bytearray)) else int(value)
    if not 0 <= v <= 255:
        raise ValueError(f"TTL {v}: 0..255")
    return v


def socket(daemon=None, protocol: int = UDP_LINKS, *,
           timeout: float | None = DEFAULT_TIMEOUT) -> SpinesSocket:
    """A new session (``spines_socket``)."""
    return SpinesSocket(daemon, protocol, timeout=timeout)


spines_socket = socket
