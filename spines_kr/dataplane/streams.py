"""Reliable stream sessions on the daemon's loop: the driver of the pure stream ends
(``dataplane.stream``) between the client sessions (``dataplane.sessions``) and the data plane
(``dataplane.forward``).

Spec: Spines' RELIABLE_STREAM_SESSION as libspines 5.7 drives it (``spines_connect``,
``spines_listen``, ``spines_accept``, ``spines_send``, ``spines_recv``; the daemon's
``reliable_session.c``; ``wire.session`` has the client-side bytes).  What travels between the
daemons is ours (``wire.stream``), not Spines' session protocol.

Data model (``Streams``):
    _Conn       one connection at this end: its ``Stream``, its key (peer node, peer port,
                local port, connection id), the client session it serves (None once the
                client is gone), the link protocol its segments use (the connecting
                session's, both ways), whether the client got its 16-byte hello and its end
                of stream, how many bytes of the client's output queue are not stream data.
    listeners   virtual port -> the session that called LISTEN on it.
    pending     connect requests (SYNs) a listener was told of, waiting for an ACCEPT
                (``ACCEPT_WAIT`` s at most, ``BACKLOG`` per listener; more are refused).
    finished    recently ended connections -> the acknowledgement their peer still gets
                (TCP's TIME_WAIT in a few bytes: a FIN sent again gets its answer).
    one ``Deadline``: the earliest of every stream's and pending request's deadlines (as
    ``dataplane.links`` arms its own).
A connection's segments are messages from (this node, local port) to (peer node, peer port)
with ``link | STREAM_SEGMENT``; the accepting end answers from the listening port, whatever
the accepting session's own port (TCP's model: one listening port, many connections told
apart by the connection id).

Flow: a client's stream bytes are read only while the stream's ``send_room()`` allows (the
session's reader is off otherwise: the client blocks in its socket's own flow control), and
new data leaves only while the reliable data links are not backed up (``congested``);
received bytes go to the client's output queue at once and count as consumed (the window
opens) only once written into the client's socket: a client that does not read closes the
window and the remote sender stops; this daemon holds at most the stream's buffers.

Ends: the client's EOF is the stream's FIN (half-close: the other direction still delivers);
the peer's FIN, once every byte before it is written, is ``shutdown(SHUT_WR)`` of the client's
socket (the client reads EOF and may still send); when both directions are complete the
session is closed.  An error (the peer's RST, no answer, a refusal) writes a stream-end notice
on the session's control channel (``wire.session.stream_end``: libspines never reads it) and
closes the session; the client's ABORT (a spines-kr command), a read error or a malformed
frame on the session, or the daemon stopping send an RST.  A segment for no connection is
answered with an RST (a finished one with its last acknowledgement), a SYN for a port nobody
listens on too: the connecting end sees ``refused``.

Entry points: ``Streams(loop, log, send, my_id, mss, congested)``; ``attach(sessions)``; from
the sessions: ``connect(s, addr, port)``, ``listen(s)``, ``accept(s, cmd)``, ``room(s)``,
``client_data(s, data)``, ``client_eof(s)``, ``abort(s)``, ``written(s, n)``,
``session_closed(s)``, ``pressure(on)``; from the data plane: ``receive(message) -> int``;
``status()``, ``counters``, ``close()``.
"""

from __future__ import annotations

import os
from collections import Counter, OrderedDict

from spines_kr.daemon.loop import Deadline
from spines_kr.dataplane.message import RELIABLE_LINKS, STREAM_SEGMENT, Message
from spines_kr.dataplane.stream import LINGER, Stream, StreamParams
from spines_kr.wire import session as wire
from spines_kr.wire import stream as ws
from spines_kr.wire.packets import DecodeError

INF = float("inf")
ACCEPT_WAIT = 10.0  # s a connect request waits for the listener's ACCEPT
BACKLOG = 128  # connect requests waiting per listener
FINISHED_KEEP = 10.0  # s a finished connection's last acknowledgement is kept
FINISHED_MAX = 4096


class _Conn:
    __slots__ = ("key", "stream", "session", "link", "hello", "eof_told", "skip", "ended")

    def __init__(self, key, stream: Stream, session, link: int) -> None:
        self.key = key  # (peer node, peer port, local port, connection id)
        self.stream = stream
        self.session = session
        self.link = link
        self.hello = False  # the client got its ses_hello_packet
        self.eof_told = False  # the client's socket was shut down for writing
        self.skip = 0  # bytes queued to the client that are not stream data (the hello)
        self.ended = False


class _Request:
    __slots__ = ("key", "syn", "link", "until", "listener")

    def __init__(self, key, syn: ws.Segment, link: int, until: float, listener) -> None:
        self.key, self.syn, self.link, self.until, self.listener = key, syn, link, until, listener


class Streams:
    def __init__(self, loop, log, send, my_id: int, mss=None, congested=None,
                 params: StreamParams | None = None) -> None:
        self.loop = loop
        self.log = log
        self.send = send  # (Message) -> None: the data plane
        self.my_id = my_id
        self.mss = mss or (lambda: 1200)  # () -> payload bytes of one overlay fragment
        self.congested = congested or (lambda: False)  # the reliable data links are backed up
        self.params = params or StreamParams()
        self.sessions = None
        self.conns: dict[tuple, _Conn] = {}
        self.by_session: dict[int, _Conn] = {}
        self.listeners: dict[int, object] = {}
        self.pending: OrderedDict[tuple, _Request] = OrderedDict()
        self.finished: OrderedDict[tuple, tuple[ws.Segment | None, float]] = OrderedDict()
        self.counters: Counter[str] = Counter()
        self._deadline = Deadline(loop, self._on_timer)
        self._busy = False
        self._later: list = []
        self._dirty: dict[tuple, _Conn] = {}
        self._closed = False

    def attach(self, sessions) -> None:
        self.sessions = sessions

    def close(self) -> None:
        """The daemon stops: every open connection is reset (its peer learns it at once)."""
        for c in list(self.conns.values()):
            if not c.stream.done:
                c.stream.abort(self.loop.time())
                c.session = None
                self._service(c, self.loop.time())
        self.conns.clear()
        self.by_session.clear()
        self.pending.clear()
        self._closed = True
        self._deadline.cancel()

    # --- re-entrancy: a segment to this node comes back into ``receive`` while we send ---

    def _guard(self, fn, *args):
        if self._busy:
            self._later.append((fn, args))
            return None
        self._busy = True
        try:
            result = fn(*args)
            while self._later or self._dirty:
                while self._later:
                    f, a = self._later.pop(0)
                    f(*a)
                now = self.loop.time()
                dirty, self._dirty = self._dirty, {}
                for c in dirty.values():
                    self._service(c, now)
        finally:
            self._busy = False
        self._arm()
        return result

    def _touch(self, c: _Conn) -> None:
        self._dirty[c.key] = c

    # --- from the sessions ------------------------------------------------------------------

    def _new_params(self, link: int) -> StreamParams:
        p = self.params
        mss = max(256, self.mss() - ws.overhead())  # one segment, one overlay fragment
        return StreamParams(**{**{f: getattr(p, f) for f in p.__dataclass_fields__},
                               "mss": mss, "congestion": link != RELIABLE_LINKS})

    def connect(self, s, addr: int, port: int) -> None:
        self._guard(self._connect, s, addr, port)

    def _connect(self, s, addr: int, port: int) -> None:
        if s.id in self.by_session or s.port in self.listeners:
            self.sessions.stream_refuse(s, "connect on a session that is a stream already")
            return
        conn = int.from_bytes(os.urandom(4), "big") or 1
        key = (addr, port, s.port, conn)
        now = self.loop.time()
        c = _Conn(key, Stream.connector(self._new_params(s.link), conn, now), s, s.link)
        self.conns[key] = c
        self.by_session[s.id] = c
        s.stream = c
        self.counters["streams.connects"] += 1
        self.log.debug("stream.connect", session=s.id, peer=wire._addr(addr), port=port,
                       conn=f"{conn:08x}")
        self._touch(c)

    def listen(self, s) -> None:
        self._guard(self._listen, s)

    def _listen(self, s) -> None:
        holder = self.listeners.get(s.port)
        if s.id in self.by_session or (holder is not None and holder is not s):
            self.sessions.stream_refuse(s, f"listen on virtual port {s.port}: in use")
            return
        self.listeners[s.port] = s
        s.listening = True
        self.counters["streams.listens"] += 1

    def accept(self, s, cmd: wire.Accept) -> None:
        self._guard(self._accept, s, cmd)

    def _accept(self, s, cmd: wire.Accept) -> None:
        try:
            conn = wire.stream_request_conn(cmd.data)
        except wire.DecodeError as e:
            self.sessions.stream_refuse(s, f"accept: {e}")
            return
        req = next((r for k, r in self.pending.items()
                    if k[0] == cmd.address and k[1] == cmd.port and k[3] == conn), None)
        if req is None or s.id in self.by_session:
            self.counters["streams.accept_unknown"] += 1
            self.sessions.stream_end(s, wire.STREAM_TIMEOUT,
                                     "accept: no such connect request (it expired?)")
            return
        del self.pending[req.key]
        now = self.loop.time()
        c = _Conn(req.key, Stream.acceptor(self._new_params(req.link), conn, req.syn, now), s,
                  req.link)
        self.conns[req.key] = c
        self.by_session[s.id] = c
        s.stream = c
        self.counters["streams.accepted"] += 1
        self._touch(c)

    def room(self, s) -> int:
        """Bytes the session's client may send now (its reader is off at 0)."""
        c = self.by_session.get(s.id)
        if c is None:
            return 1 << 20
        return max(0, c.stream.send_room()) if not c.stream.done else 0

    def client_data(self, s, data: bytes) -> None:
        self._guard(self._client_data, s, data)

    def _client_data(self, s, data: bytes) -> None:
        c = self.by_session.get(s.id)
        if c is None:
            self.sessions.stream_refuse(s, "stream data on a session that is not connected "
                                           "(connect or accept first)")
            return
        st = c.stream
        if st.done or st.fin_seq is not None:
            return  # (ended: nothing more leaves; the session closes)
        st.write(data)
        self._touch(c)

    def client_eof(self, s) -> None:
        self._guard(self._client_eof, s)

    def _client_eof(self, s) -> None:
        c = self.by_session.get(s.id)
        if c is None:
            self.sessions.stream_close(s, "client_closed")
            return
        c.stream.close(self.loop.time())
        self._touch(c)

    def abort(self, s) -> None:
        self._guard(self._abort, s, "aborted by the client")

    def _abort(self, s, why: str) -> None:
        c = self.by_session.get(s.id)
        if c is None:
            self.sessions.stream_close(s, "aborted")
            return
        self.counters["streams.aborted"] += 1
        c.stream.abort(self.loop.time())
        self._touch(c)

    def written(self, s, n: int) -> None:
        """``n`` bytes of the session's output reached its client's socket."""
        c = self.by_session.get(s.id)
        if c is None or c.session is not s:
            return
        if c.skip:
            k = min(c.skip, n)
            c.skip -= k
            n -= k
        if n:
            c.stream.consumed(n, self.loop.time())
        self._guard(self._touch, c)

    def session_closed(self, s) -> None:
        """The session went away under the stream (read or write error, malformed input, the
        daemon stopping): an RST to the peer unless the stream already ended."""
        self._guard(self._session_closed, s)

    def _session_closed(self, s) -> None:
        if self.listeners.get(s.port) is s:
            del self.listeners[s.port]
            for k, r in list(self.pending.items()):
                if r.listener is s:
                    del self.pending[k]
                    self._rst_to(k, r.link, r.syn)
        c = self.by_session.pop(s.id, None)
        if c is None:
            return
        c.session = None
        if not c.stream.done and not c.ended:
            c.stream.abort(self.loop.time())
            self.counters["streams.aborted"] += 1
        self._touch(c)

    def pressure(self, on: bool) -> None:
        """The reliable data links backed up (new data waits) or drained (it goes on)."""
        if not on:
            self._guard(lambda: [self._touch(c) for c in self.conns.values()])

    # --- from the data plane ----------------------------------------------------------------

    def receive(self, msg: Message) -> int:
        self._guard(self._receive, msg)
        return 1

    def _receive(self, msg: Message) -> None:
        try:
            seg = ws.Segment.decode(msg.payload)
        except DecodeError as e:
            self.counters[f"streams.dropped.{e.reason}"] += 1
            return
        self.counters["streams.segments_in"] += 1
        key = (msg.src, msg.src_port, msg.dst_port, seg.conn)
        c = self.conns.get(key)
        now = self.loop.time()
        link = msg.link & 0x0F
        if c is not None:
            c.stream.on_segment(seg, now)
            self._touch(c)
            return
        if seg.flags & ws.RST:
            self.pending.pop(key, None)
            return
        if seg.flags == ws.SYN:
            self._syn(key, seg, link, now)
            return
        done = self.finished.get(key)
        if done is not None:
            if done[0] is not None:
                self._emit(key, link, done[0])
                return
        self.counters["streams.rst.unknown"] += 1
        self._rst_to(key, link, seg)

    def _syn(self, key, seg: ws.Segment, link: int, now: float) -> None:
        if key in self.pending:
            return  # told to the listener already: waiting for its ACCEPT
        s = self.listeners.get(key[2])
        if s is None:
            self.counters["streams.refused"] += 1
            self._rst_to(key, link, seg)
            return
        if sum(1 for r in self.pending.values() if r.listener is s) >= BACKLOG:
            self.counters["streams.refused.backlog"] += 1
            self._rst_to(key, link, seg)
            return
        self.pending[key] = _Request(key, seg, link, now + ACCEPT_WAIT, s)
        self.counters["streams.requests"] += 1
        peer, pport, lport, conn = key
        self.sessions.stream_request(s, peer, pport, lport, wire.stream_request(conn, pport))

    # --- sending ------------------------------------------------------------------------------

    def _emit(self, key, link: int, seg: ws.Segment) -> None:
        peer, pport, lport, _conn = key
        self.counters["streams.segments_out"] += 1
        self.send(Message(self.my_id, lport, peer, pport, seg.encode(), link=link | STREAM_SEGMENT))

    def _rst_to(self, key, link: int, seg: ws.Segment) -> None:
        self._emit(key, link, ws.Segment(ws.RST | ws.ACK, seg.conn, seg.ack,
                                         seg.seq + len(seg.payload)))

    def _service(self, c: _Conn, now: float) -> None:
        """Everything one connection has to do now: segments out, data to the client, its
        reader on or off, its end."""
        st = c.stream
        s = c.session
        may_send = c.link != RELIABLE_LINKS or not self.congested()
        for seg in st.poll(now, may_send):
            self._emit(c.key, c.link, seg)
        if s is not None and st.established and not c.hello:
            c.hello = True
            c.skip += wire.STREAM_HELLO_LEN
            peer, pport, lport, conn = c.key
            self.sessions.stream_write(s, wire.stream_hello(conn, pport, lport))
        data = st.take()
        if data:
            if s is not None:
                for d in data:
                    self.sessions.stream_write(s, d)
            else:  # the client is gone (the stream was reset): read by nobody
                st.consumed(sum(len(d) for d in data), now)
        if s is not None and not st.done:
            self.sessions.stream_reading(s, st.send_room() > 0 and st.fin_seq is None)
        if s is not None and st.eof and not c.eof_told:
            c.eof_told = True
            self.sessions.stream_shutdown(s)
        if s is not None and st.state == LINGER:  # both ways complete: the client is done
            self._detach(c)
            self.sessions.stream_close(s, "stream_closed")
        if st.done and not c.ended:
            self._ended(c, now)

    def _detach(self, c: _Conn) -> None:
        s = c.session
        if s is not None and self.by_session.get(s.id) is c:
            del self.by_session[s.id]
        c.session = None

    def _ended(self, c: _Conn, now: float) -> None:
        c.ended = True
        st = c.stream
        self.conns.pop(c.key, None)
        self.finished[c.key] = (st.final_ack(), now + FINISHED_KEEP)
        while len(self.finished) > FINISHED_MAX:
            self.finished.popitem(last=False)
        s = c.session
        self._detach(c)
        self.counters["streams.ended." + (st.error or "closed")] += 1
        self.log.debug("stream.ended", peer=wire._addr(c.key[0]), port=c.key[1],
                       local_port=c.key[2], conn=f"{c.key[3]:08x}", error=st.error,
                       **{k: st.stats[k] for k in ("bytes_out", "bytes_in", "retransmissions",
                                                   "timeouts")})
        if s is None:
            return
        if st.error is None:
            self.sessions.stream_close(s, "stream_closed")
        else:
            self.sessions.stream_end(s, wire.STREAM_ERRORS.get(st.error, wire.STREAM_RESET),
                                     f"stream {st.error}")

    # --- the deadline -------------------------------------------------------------------------

    def _arm(self) -> None:
        if self._closed:
            return
        t = INF
        for c in self.conns.values():
            t = min(t, c.stream.next_deadline())
        for r in self.pending.values():
            t = min(t, r.until)
            break  # (in order of arrival: the first expires first)
        if self.finished:
            t = min(t, next(iter(self.finished.values()))[1])
        self._deadline.set(t)

    def _on_timer(self) -> None:
        self._guard(self._timer)

    def _timer(self) -> None:
        now = self.loop.time()
        for c in list(self.conns.values()):
            if c.stream.next_deadline() <= now:
                c.stream.on_timer(now)
                self._touch(c)
        while self.pending:
            k, r = next(iter(self.pending.items()))
            if r.until > now:
                break
            del self.pending[k]
            self.counters["streams.requests_expired"] += 1
            self._rst_to(k, r.link, r.syn)
        while self.finished:
            k, (_seg, until) = next(iter(self.finished.items()))
            if until > now:
                break
            del self.finished[k]

    # --- views --------------------------------------------------------------------------------

    def status(self) -> dict:
        conns = []
        for (peer, pport, lport, conn), c in self.conns.items():
            conns.append({"peer": wire._addr(peer), "peer_port": pport, "port": lport,
                          "conn": f"{conn:08x}", "link": c.link,
                          "session": c.session.id if c.session is not None else None,
                          **c.stream.status()})
        return {"streams": conns, "listening": sorted(self.listeners),
                "requests": len(self.pending), **dict(sorted(self.counters.items()))}
