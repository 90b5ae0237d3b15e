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

Entry points: ``open_session(daemon=None, protocol=UDP_LINKS, timeout=10) -> Session``;
``Session.bind/join/leave/set_loop/sendto/sendto_nowait/recvfrom/recv_message/traceroute/
edistance/membership/getsockname/close``.  Errors as the blocking client: ``SpinesError``.
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
    ROUTING_BITS_SHIFT,
    SPINES_ADD_MEMBERSHIP,
    SPINES_DROP_MEMBERSHIP,
    SPINES_EDISTANCE,
    SPINES_IP_MULTICAST_TTL,
    SPINES_IP_TTL,
    SPINES_MEMBERSHIP,
    SPINES_MULTICAST_LOOP,
    SPINES_TRACEROUTE,
    SPINES_TTL_MAX,
    UDP_LINKS,
    SpinesError,
    _ttl,
    destination,
    endpoints,
    entries,
    ip,
    is_group,
    links_frame,
    option_command,
)
from spines_kr.wire import session as wire


class Session:
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
        if optname == SPINES_IP_TTL:
            self._ttl = _ttl(value)
            return None
        if optname == SPINES_IP_MULTICAST_TTL:
            self._mcast_ttl = _ttl(value)
            return None
        cmd = option_command(optname, value)
        if optname in QUERIES:
            async with self._lock:
                self._data_w.write(cmd.encode(wire.NATIVE))
                header, body = await self._control(type(cmd).__name__)
            return entries(wire.TraceReply.decode(header, body, self._order))
        self._data_w.write(cmd.encode(wire.NATIVE))
        if optname in (SPINES_ADD_MEMBERSHIP, SPINES_DROP_MEMBERSHIP):
            verb = "join" if optname == SPINES_ADD_MEMBERSHIP else "leave"
            await self._confirmed(f"{verb} {ip(cmd.group)}")
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
    "open_session",
]
