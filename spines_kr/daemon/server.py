"""One request per connection, on the daemon's loop: the control socket and the metrics endpoint.

Data model: ``RequestServer`` owns a listening socket and its connections, each with a read
buffer, a deadline (``timeout`` seconds from accept to the end of the reply) and an outgoing
buffer.  A request is the bytes up to ``terminator`` (at most ``max_request``); ``handler(request,
conn)`` returns the reply bytes, or a ``Pending`` whose value is the reply (setlink waits for
the kernel worker).  The reply is written without blocking; then the connection closes.  A
request too long, or a client too slow, gets ``too_long`` / ``too_slow`` replies when given, and
is closed; no client can stall the loop or another client.

Entry points: ``RequestServer(loop, sock, handler, terminator, ...)``, ``close()``.
"""

from __future__ import annotations

import socket
from collections.abc import Callable

from spines_kr.daemon.loop import Loop

MAX_CONNECTIONS = 64


class _Conn:
    __slots__ = ("sock", "buf", "out", "timer", "answered")

    def __init__(self, sock: socket.socket) -> None:
        self.sock, self.buf, self.out, self.timer, self.answered = sock, b"", b"", None, False


class RequestServer:
    def __init__(self, loop: Loop, sock: socket.socket, handler: Callable, *,
                 terminator: bytes = b"\n", max_request: int = 64 * 1024, timeout: float = 5.0,
                 too_long: bytes = b"", too_slow: bytes = b"") -> None:
        self.loop, self.sock, self.handler = loop, sock, handler
        self.terminator, self.max_request, self.timeout = terminator, max_request, timeout
        self.too_long, self.too_slow = too_long, too_slow
        self.conns: dict[int, _Conn] = {}
        sock.setblocking(False)
        loop.add_reader(sock.fileno(), self._accept)

    def _accept(self) -> None:
        for _ in range(16):
            try:
                s, _addr = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return  # EMFILE and the like: the next readiness tries again
            if len(self.conns) >= MAX_CONNECTIONS:
                s.close()
                continue
            s.setblocking(False)
            c = _Conn(s)
            self.conns[s.fileno()] = c
            c.timer = self.loop.call_later(self.timeout, self._expire, c)
            self.loop.add_reader(s.fileno(), lambda c=c: self._read(c))

    def _read(self, c: _Conn) -> None:
        try:
            data = c.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(c)
            return
        if not data:
            if c.buf and not c.answered:
                self._answer(c, c.buf)  # a request without its terminator: take it as it is
            elif not c.answered:
                self._close(c)
            return
        if c.answered:
            return
        c.buf += data
        end = c.buf.find(self.terminator)
        if end >= 0:
            self._answer(c, c.buf[:end + len(self.terminator)])
        elif len(c.buf) > self.max_request:
            c.answered = True
            self._reply(c, self.too_long)

    def _answer(self, c: _Conn, request: bytes) -> None:
        c.answered = True
        self.loop.remove_reader(c.sock.fileno())
        reply = self.handler(request, c.sock)
        if isinstance(reply, (bytes, bytearray)):
            self._reply(c, bytes(reply))
        else:  # Pending
            reply.then(lambda value, c=c: self._reply(c, value))

    def _reply(self, c: _Conn, data: bytes) -> None:
        if c.sock.fileno() < 0:
            return  # closed meanwhile (timeout)
        c.out = data
        self._write(c)

    def _write(self, c: _Conn) -> None:
        try:
            while c.out:
                n = c.sock.send(c.out)
                c.out = c.out[n:]
        except (BlockingIOError, InterruptedError):
            self.loop.add_writer(c.sock.fileno(), lambda c=c: self._write(c))
            return
        except OSError:
            pass
        self._close(c)

    def _expire(self, c: _Conn) -> None:
        c.timer = None
        if c.sock.fileno() >= 0 and not c.out and not c.answered and self.too_slow:
            try:
                c.sock.send(self.too_slow)
            except OSError:
                pass
        self._close(c)

    def _close(self, c: _Conn) -> None:
        fd = c.sock.fileno()
        if fd < 0:
            return
        self.loop.remove_reader(fd)
        self.loop.remove_writer(fd)
        self.conns.pop(fd, None)
        if c.timer is not None:
            c.timer.cancel()
            c.timer = None
        c.sock.close()

    def close(self) -> None:
        for c in list(self.conns.values()):
            self._close(c)
        if self.sock.fileno() >= 0:
            self.loop.remove_reader(self.sock.fileno())
            self.sock.close()
