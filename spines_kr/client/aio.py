"""The asyncio flavour of the Python client: the same session, protocol and semantics as
``spines_kr.client.SpinesSocket``, over asyncio streams.

    from spines_kr.client import aio
    async with await aio.open_session("/tmp/spines8100") as s:
        await s.bind(8400)
        await s.sendto(b"hello", ("10.0.0.3", 8400))
        data, (sender, port) = await s.recvfrom()

Data model: ``Session`` holds the data and control streams (reader, writer each), the daemon's
byte order and the session's identity.  Queries (TRACEROUTE, EDISTANCE, MEMBERSHIP, and the
round trip that confirms bind/join/leave) are serialised by a lock, since their replies come
back in order on the one control channel.  ``sendto`` writes and waits for the stream to drain
(back-pressure from the daemon); ``sendto_nowait`` only writes.

Reliable streams: ``open_stream(daemon=None, protocol=RELIABLE_LINKS, timeout=10) -> Stream``,
the blocking ``StreamSocket``'s semantics (``client`` module doc) as coroutines:
``Stream.bind/listen/accept/connect/send/recv/shutdown/close/abort`` (``send`` waits for the
daemon to take the bytes: back-pressure from the stream's window; ``recv`` is ``b""`` at an
orderly end, raises ``ConnectionResetError``, ``ConnectionRefusedError`` or ``TimeoutError``
otherwise).

Entry points: ``open_session(daemon=None, protocol=UDP_LINKS, timeout=10) -> Session``;
``Session.bind/join/leave/set_loop/sendto/sendto_nowait/recvfrom/recv_message/traceroute/
edistance/membership/getsockname/close``; ``open_stream``.  Errors as the blocking client:
``SpinesError``.
The daemon never imports this module (asyncio costs a small router ~10 MB).
"""

from __future__ import annotations

import asyncio
import errno
import socket as _socket
import struct

from spines_kr.client import (
    CONFIRM,
    DEFAULT_TIMEOUT,
    MAX_SPINES_CLIENT_MSG,
    QUERIES,
    RELIABLE_LINKS,
    ROUTING_BITS_SHIFT,
    SPINES_ADD_MEMBERSHIP,
    SPINES_DROP_MEMBERSHIP,
    SPINES_EDISTANCE,
    SPINES_MEMBERSHIP,
    SPINES_MULTICAST_LOOP,
    SPINES_TRACEROUTE,
    SPINES_TTL_MAX,
    UDP_LINKS,
    SpinesError,
    _Options,
    destination,
    endpoints,
    entries,
    ip,
    is_group,
    links_frame,
    membership_change,
    option_command,
    stream_error,
)
from spines_kr.wire import session as wire


class Session(_Options):
    def __init__(self) -> None:
        self.daemon = ""
        self.session_id = self.port = self.node = 0
        self._order = wire.NATIVE
        self._routing = 0
        self._ttl = self._mcast_ttl = SPINES_TTL_MAX
        self._data_r = self._data_w = self._ctrl_r = self._ctrl_w = None
        self._lock = asyncio.Lock()
        self._timeout = DEFAULT_TIMEOUT

    async def _open(self, daemon, protocol: int, timeout: float | None) -> None:
        self.daemon_address, self.protocol = daemon, protocol
        family, ctrl_addr, data_addr, self.daemon = endpoints(daemon)
        links = links_frame(protocol)
        self._routing = (protocol >> ROUTING_BITS_SHIFT) & 0xF
        self._timeout = timeout
        try:
            self._ctrl_r, self._ctrl_w = await asyncio.wait_for(
                _connect(family, ctrl_addr), timeout)
            token = await asyncio.wait_for(self._ctrl_r.readexactly(wire.TOKEN_LEN), timeout)
            self._data_r, self._data_w = await asyncio.wait_for(
                _connect(family, data_addr), timeout)
            self._data_w.write(wire.endian_word(wire.NATIVE) + token + links)
            word = await asyncio.wait_for(self._data_r.readexactly(4), timeout)
            self._order = wire.order_of(word)
            header, body = await asyncio.wait_for(self._frame(self._data_r), timeout)
            ident = wire.IdReply.decode(header, body, self._order)
        except asyncio.IncompleteReadError:
            await self.close()
            raise SpinesError(errno.ECONNRESET, f"the daemon at {self.daemon} closed the session "
                              f"at once (too many sessions, or options it does not serve: see "
                              f"its log)") from None
        except TimeoutError:
            await self.close()
            raise SpinesError(errno.ETIMEDOUT, f"the daemon at {self.daemon} did not answer the "
                                               f"handshake in time") from None
        except wire.DecodeError as e:
            await self.close()
            raise SpinesError(errno.EPROTO, f"{self.daemon} does not speak libspines: "
                                            f"{e}") from None
        except OSError as e:
            await self.close()
            raise SpinesError(e.errno, f"no spines daemon at {self.daemon} "
                                       f"({e.strerror or e})") from None
        self.session_id, self.port, self.node = ident.sess_id, ident.port, ident.address

    async def _frame(self, reader: asyncio.StreamReader) -> tuple[wire.Header, bytes]:
        head = await reader.readexactly(4 + wire.HEADER_LEN)
        f = wire.next_frame(head, 0, self._order)
        if f is not None:
            return f[0], b""
        (length,) = struct.unpack(self._order + "i", head[:4])
        body = await reader.readexactly(length - wire.HEADER_LEN)
        return wire.next_frame(head + body, 0, self._order)[0], body

    async def _control(self, what: str, err: int = errno.ECONNRESET) -> tuple[wire.Header, bytes]:
        try:
            return await asyncio.wait_for(self._frame(self._ctrl_r), self._timeout)
        except asyncio.IncompleteReadError:
            raise SpinesError(err, f"{what}: refused, the daemon closed the session "
                                   f"(see its log)") from None
        except TimeoutError:
            raise SpinesError(errno.ETIMEDOUT, f"{what}: the daemon did not answer in "
                                               f"time") from None

    async def _confirmed(self, what: str, err: int = errno.ECONNRESET) -> None:
        async with self._lock:
            self._data_w.write(CONFIRM)
            await self._control(what, err)

    # --- the session API ------------------------------------------------------------------------

    def getsockname(self) -> tuple[str, int]:
        return ip(self.node), self.port

    async def bind(self, addr) -> None:
        port = addr[1] if isinstance(addr, tuple) else addr
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
            raise ValueError(f"not a port: {port!r}")
        if port == 0:
            return
        self._data_w.write(wire.Bind(port).encode(wire.NATIVE))
        await self._confirmed(f"bind to virtual port {port} (in use?)", errno.EADDRINUSE)
        self.port = port

    def sendto_nowait(self, data, addr) -> int:
        dest, port = destination(addr)
        payload = bytes(data)
        if len(payload) > MAX_SPINES_CLIENT_MSG:
            raise ValueError(f"message of {len(payload)} bytes: at most {MAX_SPINES_CLIENT_MSG}")
        ttl = self._mcast_ttl if is_group(dest) else self._ttl
        self._data_w.write(wire.SendTo(dest, port, payload, ttl, self._routing)
                           .encode(wire.NATIVE))
        return len(payload)

    async def sendto(self, data, addr) -> int:
        n = self.sendto_nowait(data, addr)
        await self._data_w.drain()
        return n

    async def recv_message(self) -> wire.Received:
        try:
            header, body = await self._frame(self._data_r)
        except asyncio.IncompleteReadError as e:
            raise SpinesError(errno.ECONNRESET, "the daemon closed the session "
                                                f"({len(e.partial)} bytes of a frame)") from None
        return wire.Received.decode(header, body)

    async def recvfrom(self) -> tuple[bytes, tuple[str, int]]:
        m = await self.recv_message()
        return m.payload, (ip(m.source), m.source_port)

    async def setsockopt(self, level: int, optname: int, value=None):
        if self._local_option(optname, value):
            return None
        cmd = option_command(optname, value)
        if optname in QUERIES:
            async with self._lock:
                self._data_w.write(cmd.encode(wire.NATIVE))
                header, body = await self._control(type(cmd).__name__)
            return entries(wire.TraceReply.decode(header, body, self._order))
        self._data_w.write(cmd.encode(wire.NATIVE))
        what = membership_change(optname, cmd)
        if what:
            await self._confirmed(what)
        return None

    async def join(self, group) -> None:
        await self.setsockopt(0, SPINES_ADD_MEMBERSHIP, group)

    async def leave(self, group) -> None:
        await self.setsockopt(0, SPINES_DROP_MEMBERSHIP, group)

    async def set_loop(self, on: bool) -> None:
        await self.setsockopt(0, SPINES_MULTICAST_LOOP, on)

    async def traceroute(self, dest) -> list[tuple[str, int, int]]:
        return await self.setsockopt(0, SPINES_TRACEROUTE, dest)

    async def edistance(self, group) -> list[tuple[str, int, int]]:
        return await self.setsockopt(0, SPINES_EDISTANCE, group)

    async def membership(self, group) -> list[tuple[str, int, int]]:
        return await self.setsockopt(0, SPINES_MEMBERSHIP, group)

    async def close(self) -> None:
        for w in (self._data_w, self._ctrl_w):
            if w is not None:
                w.close()
                try:
                    await w.wait_closed()
                except OSError:
                    pass
        self._data_w = self._ctrl_w = None

    async def __aenter__(self) -> Session:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()


class Stream:
    """A reliable stream over one session (``client.StreamSocket``, asynchronously)."""

    def __init__(self, session: Session) -> None:
        self._s = session
        self.peer: tuple[str, int] | None = None
        self.listening = False
        self._eof = False

    async def _end(self, what: str, default: int | None = None) -> None:
        """At the data channel's EOF: nothing for an orderly end, else the error."""
        code = None
        try:
            header, body = await asyncio.wait_for(self._s._frame(self._s._ctrl_r),
                                                  self._s._timeout)
            code = wire.stream_end_code(header, body, self._s._order)
        except (asyncio.IncompleteReadError, TimeoutError, OSError, wire.DecodeError):
            pass
        e = stream_error(code, what, default)
        if e is not None:
            raise e

    async def _hello(self, what: str) -> None:
        try:
            await asyncio.wait_for(self._s._data_r.readexactly(wire.STREAM_HELLO_LEN),
                                   self._s._timeout)
        except (asyncio.IncompleteReadError, ConnectionResetError):
            await self._end(what, errno.ECONNREFUSED)
            raise ConnectionResetError(errno.ECONNRESET, f"{what}: closed") from None

    def getsockname(self) -> tuple[str, int]:
        return self._s.getsockname()

    async def bind(self, addr) -> None:
        await self._s.bind(addr)

    async def connect(self, addr) -> None:
        dest, port = destination(addr)
        if is_group(dest):
            raise ValueError("a stream connects to a node, not a group")
        self._s._data_w.write(wire.Connect(dest, port).encode(wire.NATIVE))
        await self._hello(f"connect to {ip(dest)}:{port}")
        self.peer = (ip(dest), port)

    async def listen(self, backlog: int = 0) -> None:
        self._s._data_w.write(wire.Listen().encode(wire.NATIVE))
        await self._s._confirmed(f"listen on virtual port {self._s.port} (in use?)",
                                 errno.EADDRINUSE)
        self.listening = True

    async def accept(self) -> tuple[Stream, tuple[str, int]]:
        if not self.listening:
            raise OSError(errno.EINVAL, "accept: not listening")
        header, body = await self._s._frame(self._s._data_r)
        m = wire.Received.decode(header, body)
        session = Session()
        await session._open(self._s.daemon_address, self._s.protocol, self._s._timeout)
        conn = Stream(session)
        try:
            session._data_w.write(wire.Accept(m.source, m.source_port, m.payload)
                                  .encode(wire.NATIVE))
            await conn._hello(f"accept from {ip(m.source)}:{m.source_port}")
        except BaseException:
            await conn.close()
            raise
        conn.peer = (ip(m.source), m.source_port)
        return conn, conn.peer

    async def send(self, data) -> None:
        """Send all of ``data``; returns once the daemon took it (the stream's window)."""
        data = memoryview(data).cast("B")
        w = self._s._data_w
        for i in range(0, len(data), MAX_SPINES_CLIENT_MSG):
            w.write(wire.stream_data(bytes(data[i:i + MAX_SPINES_CLIENT_MSG])))
        try:
            await w.drain()
        except (BrokenPipeError, ConnectionResetError):
            await self._end("send", errno.ECONNRESET)
            raise BrokenPipeError(errno.EPIPE, "send: the stream is closed") from None

    sendall = send

    async def recv(self, n: int = 65536) -> bytes:
        if self._eof:
            return b""
        try:
            data = await self._s._data_r.read(n)
        except ConnectionResetError:
            await self._end("recv", errno.ECONNRESET)
            raise
        if not data:
            await self._end("recv")
            self._eof = True
        return data

    async def shutdown(self) -> None:
        """The end of what this end sends (the peer reads EOF); still receives."""
        w = self._s._data_w
        await w.drain()
        if w.can_write_eof():
            w.write_eof()

    async def close(self) -> None:
        await self._s.close()

    async def abort(self) -> None:
        if self._s._data_w is not None:
            try:
                self._s._data_w.write(wire.Abort().encode(wire.NATIVE))
            except OSError:
                pass
        await self._s.close()

    async def __aenter__(self) -> Stream:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()


async def open_stream(daemon=None, protocol: int = RELIABLE_LINKS, *,
                      timeout: float | None = DEFAULT_TIMEOUT) -> Stream:
    """A new stream session (``spines_socket(PF_SPINES, SOCK_STREAM, ...)``)."""
    if protocol & 0xF000:
        raise ValueError("a stream is a RELIABLE_STREAM_SESSION (session bits 0)")
    s = Session()
    await s._open(daemon, protocol, timeout)
    return Stream(s)


async def _connect(family: int, addr):
    if family == _socket.AF_UNIX:
        return await asyncio.open_unix_connection(addr)
    reader, writer = await asyncio.open_connection(*addr)
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(_socket.IPPROTO_TCP, _socket.TCP_NODELAY, 1)
    return reader, writer


async def open_session(daemon=None, protocol: int = UDP_LINKS, *,
                       timeout: float | None = DEFAULT_TIMEOUT) -> Session:
    """A new session with the daemon (``spines_socket``)."""
    s = Session()
    await s._open(daemon, protocol, timeout)
    return s


__all__ = [
    "SPINES_EDISTANCE",
    "SPINES_MEMBERSHIP",
    "SPINES_TRACEROUTE",
    "Session",
    "SpinesError",
    "Stream",
    "open_session",
    "open_stream",
]
