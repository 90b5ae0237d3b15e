"""Reliable end-to-end streams (Spines' RELIABLE_STREAM_SESSION): one end of one connection.
Pure: values in, values out, ``now`` passed in.

Why an end-to-end layer over reliable links: the links recover a loss on the hop where it
happened, reroute what a dead link held and drop the duplicates that causes, but a message can
still be lost end to end (no route for a moment, a daemon restarted, an output queue dropped
it), arrive out of order after a reroute, or reach a receiving application slower than the
sender writes.  A stream therefore numbers, acknowledges, retransmits, reorders and flow-controls
its own data between the two ends' daemons, as TCP does between hosts; the links underneath
make its losses rare, so its recovery is seldom needed, never in the way.

Decisions (Spines' reliable_session.c numbers messages and delivers them to the client as raw
bytes; libspines' stream ``spines_recv`` is a plain ``recv``):
  * A byte stream, sequence numbers per byte (64 bits from 0, never wrapping): what a libspines
    stream client sees is bytes anyway, the receive window is naturally in bytes (the memory it
    bounds), and segments are cut when sent (at most ``mss`` bytes: one overlay fragment, so a
    segment is never reassembled), so many small writes travel in few segments and a large
    write in several.  A retransmission keeps its segment's first boundaries.
  * Connection setup SYN / SYN-ACK / ACK with a random connection id chosen by the connecting
    end; the SYN takes no sequence number (data starts at 0 both ways).  The connecting end
    resends its SYN, the accepting end its SYN-ACK, on a timeout that doubles, until the
    connection is open or ``connect_timeout`` has passed (then ``error = "timeout"``); an RST
    in answer to a SYN is ``"refused"``.
  * Cumulative acknowledgements with SACK blocks (the receiver's out-of-order ranges, lowest
    first); a segment is lost when ``dupthresh`` segments sent after it were selectively
    acknowledged (fewer when few are out: early retransmit), and a retransmission is lost
    again when a segment sent after it arrived first.  Retransmission timeout from the RTT
    (RFC 6298, Karn: only first transmissions are timed), at least ``min_rto`` -- above what
    the reliable links need to repair a hop, so their recovery rarely looks like an end-to-end
    loss.  A first timeout resends only the oldest segment (usually one acknowledgement was
    lost); a second in a row resends all that is unacknowledged.
  * Acknowledgements every ``ack_every`` in-order segments or after ``ack_delay``; at once on
    anything out of order, a duplicate, a gap filled, a FIN or a probe.  Each costs a message
    through every daemon on the path, hence fewer than TCP sends.
  * Flow control: the receive window is ``rcv_buf`` minus what this end holds for its
    application (delivered but not yet taken by it, ``consumed``) and out of order: a client
    that does not read closes the window and the remote sender stops; this daemon holds at most
    ``rcv_buf`` for the stream.  A window granted is never taken back.  A window that opens by
    a quarter of the buffer (or two segments from nothing) is announced at once; a sender held
    by a zero window probes (``PROBE``) on a timer in case that announcement was lost.  The
    sending side's own buffer (written, not yet acknowledged) is the driver's to bound
    (``send_room``): it stops reading its client when it is full.
  * Congestion: over reliable links the links have their congestion windows and push back on
    the daemon (``may_send`` false: new data waits, acknowledgements and repairs still go);
    with ``congestion`` (streams over best-effort or soft-real-time links) the stream keeps a
    window of its own, halved once per loss episode, one segment after a timeout (TCP's
    rules: a best-effort stream must not flood the overlay).
  * Orderly close: ``close()`` sends a FIN after the data written (it takes one sequence
    number and is retransmitted like data); the peer's FIN, once every byte before it is
    delivered, is ``eof``.  Each direction closes on its own (a half-closed stream still
    carries the other way).  When both have, the end lingers ``linger`` seconds (TCP's
    TIME_WAIT, shorter) to acknowledge a FIN again if its acknowledgement was lost, then is
    ``done``.
  * Abort: ``abort()`` sends one RST and is done at once (``error = "aborted"``); an RST
    received is ``error = "reset"``; a segment for a connection a daemon does not know is
    answered with an RST by the driver, so a lost RST is made up for by the next segment.
  * A dead peer: after ``keepalive`` seconds without a segment from the peer, a probe each
    ``keepalive``; after ``dead_after`` seconds without one (or without any progress of data
    outstanding), ``error = "timeout"``.

Data model:
    sending   ``_buf`` (bytes written from ``_buf_seq`` on: unacknowledged, then unsent),
              ``snd_una`` (oldest unacknowledged), ``snd_nxt`` (next new byte), ``fin_seq``
              (where the FIN goes once ``close``d), ``inflight`` (segment start -> _Seg, and
              ``_starts`` in order, for the SACK walk), ``retx`` (starts found lost, oldest
              first), ``snd_right`` (the right edge of the peer's window), ``cwnd``, RTT
              estimators, ``rto_at``, ``probe_at``
    receiving ``rcv_nxt`` (every byte before it delivered), ``ooo`` (start -> bytes beyond it)
              with its merged ranges (``_rs`` starts in order, ``_re`` start -> end),
              ``unread`` (delivered, not consumed), ``rcv_adv`` (the right edge granted),
              ``peer_fin``, ``eof``, ``ack_due``
Driven by ``dataplane.streams`` (the daemon's loop, the client sessions, the data plane); the
segment codec is ``wire.stream``.  Spines followed in what a client sees (an ordered, lossless
byte stream, connect/listen/accept, a slow reader slowing the sender); ours in how: Spines'
reliable_session.c numbers messages (a window of MAX_WINDOW cells) with NACKs; this is TCP's
byte-stream design (RFC 793/6298/2018 ideas) between the two daemons.

Entry points: ``Stream.connector(params, conn, now)``, ``Stream.acceptor(params, conn, syn,
now)``; inputs ``write(data)``, ``close(now)``, ``abort(now)``, ``consumed(n, now)``,
``on_segment(seg, now)``, ``on_timer(now)``; outputs ``poll(now, may_send) -> [Segment]``,
``take() -> [bytes]`` (in-order data), ``state``/``error``/``eof``/``established``/``done``,
``send_room()``, ``next_deadline()``, ``status()``.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right, insort
from dataclasses import dataclass

from spines_kr.dataplane.reliable import rtt_estimate
from spines_kr.wire.stream import ACK, FIN, MAX_SACK, PROBE, RST, SYN, U32, Segment

INF = float("inf")
SYN_SENT, SYN_RCVD, OPEN, LINGER, DONE = "syn_sent", "syn_rcvd", "open", "linger", "done"


@dataclass(frozen=True, slots=True)
class StreamParams:
    mss: int = 1200  # payload bytes per segment at most (the driver: one overlay fragment)
    rcv_buf: int = 1 << 20  # bytes held for the application at most (the window's base)
    snd_buf: int = 1 << 20  # bytes written and not acknowledged the driver lets in
    initial_rto: float = 1.0  # the handshake's first timeout (RFC 6298)
    min_rto: float = 0.2
    max_rto: float = 5.0
    connect_timeout: float = 10.0
    keepalive: float = 5.0  # silence from the peer before a probe
    dead_after: float = 30.0  # silence (or data outstanding without progress) before giving up
    ack_delay: float = 0.01
    ack_every: int = 4
    dupthresh: int = 3
    probe_max: float = 1.0  # zero-window probes at least this often
    linger: float = 2.0
    congestion: bool = False  # a congestion window of its own (not over reliable links)
    init_cwnd: int = 10  # segments


class _Seg:
    __slots__ = ("start", "end", "fin", "sent_at", "first_sent", "tries", "sacked", "lost")

    def __init__(self, start: int, end: int, fin: bool, now: float) -> None:
        self.start, self.end, self.fin = start, end, fin
        self.sent_at = self.first_sent = now
        self.tries = 0
        self.sacked = self.lost = False

    @property
    def size(self) -> int:  # bytes of data (a FIN takes a sequence number, no room)
        return self.end - self.start - (1 if self.fin else 0)


class Stream:
    def __init__(self, params: StreamParams, conn: int, now: float, active: bool) -> None:
        p = self.p = params
        self.conn = conn & U32
        self.active = active  # the connecting end
        self.state = SYN_SENT if active else SYN_RCVD
        self.error: str | None = None
        self.created = now
        self.established_at: float | None = None
        # handshake
        self.hs_due = now
        self.hs_first = now
        self.hs_tries = 0
        # sending
        self._buf = bytearray()
        self._buf_seq = 0
        self.snd_una = self.snd_nxt = 0
        self.fin_seq: int | None = None
        self.fin_acked = False
        self.inflight: dict[int, _Seg] = {}
        self._starts: list[int] = []
        self._head = 0  # _starts[:_head] are acknowledged
        self.retx: list[int] = []
        self.n_out = 0  # segments in flight: neither acknowledged, selectively or not, nor lost
        self.flight_bytes = 0  # ... their bytes
        self._sack_seen: dict[int, int] = {}
        self._loss_scan = 0
        self._retx_pending: set[int] = set()
        self.snd_right = 0  # the peer's window's right edge
        self.cwnd = float(p.init_cwnd * p.mss)
        self.ssthresh = INF
        self.recover = -1
        self.srtt: float | None = None
        self.rttvar = 0.0
        self.rto = p.initial_rto
        self.backoff = 1
        self.rto_at = INF
        self.sample_after = 0.0
        self.probe_at = INF
        self.probe_backoff = 1
        self.progress_at = now
        # receiving
        self.rcv_nxt = 0
        self.ooo: dict[int, bytes] = {}
        self.ooo_bytes = 0
        self._rs: list[int] = []
        self._re: dict[int, int] = {}
        self.unread = 0
        self.rcv_adv = 0
        self.peer_fin: int | None = None
        self.eof = False
        self.ack_due = INF
        self.unacked = 0
        self.delivered: list[bytes] = []
        # liveness, ending
        self.heard_at = now
        self.ka_at = now + p.keepalive
        self._rst = False
        self.linger_until = INF
        self.stats = {"segments_out": 0, "segments_in": 0, "bytes_out": 0, "bytes_in": 0,
                      "retransmissions": 0, "timeouts": 0, "duplicates": 0,
                      "out_of_order": 0, "dropped_window": 0, "dropped_overlap": 0,
                      "probes": 0, "acks_out": 0, "loss_episodes": 0}

    @classmethod
    def connector(cls, params: StreamParams, conn: int, now: float) -> Stream:
        return cls(params, conn, now, active=True)

    @classmethod
    def acceptor(cls, params: StreamParams, conn: int, syn: Segment, now: float) -> Stream:
        s = cls(params, conn, now, active=False)
        s.snd_right = syn.window
        return s

    # --- views ------------------------------------------------------------------------------

    @property
    def established(self) -> bool:
        return self.established_at is not None

    @property
    def done(self) -> bool:
        return self.state == DONE

    @property
    def wr_end(self) -> int:
        """The sequence after the last byte written."""
        return self._buf_seq + len(self._buf)

    def send_room(self) -> int:
        """Bytes the application may still write before the sending buffer is full."""
        return self.p.snd_buf - (self.wr_end - self.snd_una)

    @property
    def sending_done(self) -> bool:
        """Our FIN is acknowledged: the peer has every byte we wrote."""
        return self.fin_acked

    def status(self) -> dict:
        return {"state": self.state, "error": self.error, "snd_una": self.snd_una,
                "snd_nxt": self.snd_nxt, "buffered": max(0, self.wr_end - self.snd_una),
                "in_flight": self.n_out, "peer_window": max(0, self.snd_right - self.snd_nxt),
                "rcv_nxt": self.rcv_nxt, "unread": self.unread,
                "out_of_order_bytes": self.ooo_bytes,
                "window": max(0, self.rcv_adv - self.rcv_nxt),
                "srtt_ms": None if self.srtt is None else round(self.srtt * 1000, 2),
                "rto_ms": round(self.rto * 1000, 1),
                "cwnd": round(self.cwnd) if self.p.congestion else None,
                "fin_sent": self.fin_seq is not None and self.snd_nxt > self.fin_seq,
                "fin_acked": self.fin_acked, "eof": self.eof, **self.stats}

    # --- application side -------------------------------------------------------------------

    def write(self, data) -> None:
        """Bytes to send after those written before (the driver keeps to ``send_room``)."""
        if self.fin_seq is not None or self.state == DONE:
            raise ValueError("write after close")
        self._buf += data

    def close(self, now: float) -> None:
        """The application has written everything: a FIN after it."""
        if self.fin_seq is None and self.state != DONE:
            self.fin_seq = self.wr_end

    def abort(self, now: float) -> None:
        """Give up the connection: one RST to the peer (``poll``), done."""
        if self.state == DONE:
            return
        self.error = self.error or "aborted"
        if self.state == SYN_SENT and not self.hs_tries:
            self._finish()  # nothing was sent: nothing to tell
        else:
            self._rst = True

    def take(self) -> list[bytes]:
        """In-order data for the application (each byte once)."""
        out, self.delivered = self.delivered, []
        return out

    def consumed(self, n: int, now: float) -> None:
        """The application took ``n`` of the bytes delivered: the window may open."""
        self.unread = max(0, self.unread - n)
        if self.state not in (OPEN, SYN_RCVD) or self.eof:
            return
        free = self.p.rcv_buf - self.unread - self.ooo_bytes
        edge = self.rcv_nxt + free
        granted = self.rcv_adv - self.rcv_nxt
        if edge - self.rcv_adv >= max(2 * self.p.mss, self.p.rcv_buf // 4) or \
                (granted < 2 * self.p.mss and free >= 2 * self.p.mss):
            self.ack_due = min(self.ack_due, now)  # announce the window

    # --- the peer's segments ----------------------------------------------------------------

    def on_segment(self, seg: Segment, now: float) -> None:
        if self.state == DONE or seg.conn != self.conn:
            return
        self.stats["segments_in"] += 1
        flags = seg.flags
        if flags & RST:
            if self.state != LINGER:  # (lingering, both directions were complete already)
                self.error = "refused" if self.state == SYN_SENT else "reset"
            self._finish()
            return
        self.heard_at = now
        self.ka_at = now + self.p.keepalive
        if self.state == SYN_SENT:
            if flags & SYN and flags & ACK:
                self._open(now)
                self.snd_right = seg.window
                self.ack_due = now  # the third step: the accepting end opens on it
            return
        if flags & SYN:
            if not flags & ACK and self.state == SYN_RCVD:
                self.hs_due = now  # the SYN again: our SYN-ACK was lost
            elif flags & ACK and self.active:
                self.ack_due = now  # the SYN-ACK again: our ACK was lost
            return
        if not flags & ACK:
            return
        if self.state == SYN_RCVD:
            self._open(now)
        self._on_ack(seg, now)
        if seg.payload or flags & FIN:
            self._on_data(seg, now)
        if flags & PROBE:
            self.ack_due = now
        self._check_linger(now)

    def _open(self, now: float) -> None:
        self.state = OPEN
        self.established_at = now
        self.progress_at = now
        if self.hs_tries == 1:
            self._rtt(now - self.hs_first)
        self.rto_at = INF
        self.backoff = 1

    # --- acknowledgements received ----------------------------------------------------------

    def _on_ack(self, seg: Segment, now: float) -> None:
        ack = seg.ack
        if ack > self.snd_nxt or ack < self.snd_una:
            if ack > self.snd_nxt:
                return  # acknowledges what was never sent: not for us
            # an old acknowledgement (reordered): its window may still be news
        newest = -1.0  # the latest first transmission answered now (Karn)
        if ack > self.snd_una:
            starts, inflight = self._starts, self.inflight
            h = self._head
            while h < len(starts):
                f = inflight[starts[h]]
                if f.end > ack:
                    break
                del inflight[starts[h]]
                h += 1
                self._forget(f)
                if not f.tries and not f.sacked and f.sent_at >= self.sample_after:
                    newest = max(newest, f.sent_at)
                if self.p.congestion and not f.sacked:
                    self._grow(f.size)
            self._head = h
            if h < len(starts):
                ack = min(ack, starts[h])  # (inside a segment: only up to its start)
            if h > 1024 and h * 2 > len(starts):
                del starts[:h]
                self._head = 0
            self.snd_una = ack
            self.progress_at = now
            self.backoff = 1
            self.probe_backoff = 1
            if self.fin_seq is not None and ack > self.fin_seq:
                self.fin_acked = True
            self._trim()
        self.snd_right = max(self.snd_right, ack + seg.window)
        if self.snd_right > self.snd_nxt:
            self.probe_at = INF
        blocks = [(a, b) for a, b in seg.sack if self.snd_una <= a < b <= self.snd_nxt]
        if blocks:
            newest = self._on_sack(blocks, newest, now)
        else:
            self._sack_seen = {}
        if newest >= 0:
            self._rtt(now - newest)
        self.rto_at = now + self.rto * self.backoff if self.n_out else INF

    def _forget(self, f: _Seg) -> None:
        """``f`` leaves the flight (acknowledged): its counters."""
        if not f.sacked and not f.lost:
            self.n_out -= 1
            self.flight_bytes -= f.size
        self._retx_pending.discard(f.start)

    def _trim(self) -> None:
        """Drop the acknowledged head of the sending buffer (in bulk: no copy per ack)."""
        done = min(self.snd_una, self.wr_end) - self._buf_seq
        if done > 0 and (done >= 1 << 16 or done * 2 >= len(self._buf)):
            del self._buf[:done]
            self._buf_seq += done

    def _on_sack(self, blocks, newest: float, now: float) -> float:
        starts, inflight, h = self._starts, self.inflight, self._head
        seen = self._sack_seen
        for a, b in blocks:
            i = bisect_left(starts, max(a, seen.get(a, a)), h)
            while i < len(starts) and starts[i] < b:
                f = inflight[starts[i]]
                i += 1
                if f.end > b or f.sacked:
                    continue
                if not f.lost:
                    self.n_out -= 1
                    self.flight_bytes -= f.size
                f.sacked, f.lost = True, False
                self._retx_pending.discard(f.start)
                if not f.tries and f.sent_at >= self.sample_after:
                    newest = max(newest, f.sent_at)
                if self.p.congestion:
                    self._grow(f.size)
        self._sack_seen = dict(blocks)
        # the start of the ``dupthresh``-th highest segment selectively acknowledged
        dupthresh = max(1, min(self.p.dupthresh, len(starts) - h - 1))
        above, threshold = 0, -1
        for a, b in reversed(blocks):
            lo, hi = bisect_left(starts, a, h), bisect_left(starts, b, h)
            if above + hi - lo >= dupthresh:
                threshold = starts[hi - (dupthresh - above)]
                break
            above += hi - lo
        if threshold >= 0:
            self._losses(threshold, blocks[-1][1], now)
        return newest

    def _losses(self, threshold: int, top: int, now: float) -> None:
        """Segments below ``threshold`` not acknowledged are lost (first transmissions once;
        a retransmission when a segment sent after it has arrived first)."""
        starts, inflight = self._starts, self.inflight
        lost = []
        i = bisect_left(starts, max(self._loss_scan, self.snd_una), self._head)
        while i < len(starts) and starts[i] < threshold:
            f = inflight[starts[i]]
            i += 1
            if f.sacked or f.lost:
                continue
            if f.tries:
                self._retx_pending.add(f.start)
                continue
            lost.append(f)
        self._loss_scan = max(self._loss_scan, threshold)
        if self._retx_pending:
            j = bisect_left(starts, top, self._head) - 1
            newest = inflight[starts[j]] if j >= self._head else None
            for s in sorted(self._retx_pending):
                f = inflight.get(s)
                if f is None or f.sacked:
                    self._retx_pending.discard(s)
                elif s < threshold and not f.lost and newest is not None and \
                        newest.sent_at > f.sent_at:
                    self._retx_pending.discard(s)
                    lost.append(f)
        if not lost:
            return
        for f in lost:
            f.lost = True
            self.n_out -= 1
            self.flight_bytes -= f.size
        self.retx = sorted(set(self.retx).union(f.start for f in lost))
        first = min(f.start for f in lost)
        if first > self.recover:  # a new loss episode
            self.stats["loss_episodes"] += 1
            self.recover = self.snd_nxt
            if self.p.congestion:
                self.ssthresh = max(self.cwnd / 2, 2.0 * self.p.mss)
                self.cwnd = self.ssthresh

    def _grow(self, acked: int) -> None:
        if self.snd_una <= self.recover:
            return  # within a loss episode: no growth
        if self.cwnd < self.ssthresh:
            self.cwnd += acked
        else:
            self.cwnd += self.p.mss * acked / self.cwnd
        self.cwnd = min(self.cwnd, float(self.p.snd_buf))

    def _rtt(self, r: float) -> None:
        r = max(r, 0.0)
        self.srtt, self.rttvar = rtt_estimate(self.srtt, self.rttvar, r)
        self.rto = min(self.p.max_rto, max(self.p.min_rto,
                                           self.srtt + 4 * self.rttvar + self.p.ack_delay))

    # --- data received ----------------------------------------------------------------------

    def _on_data(self, seg: Segment, now: float) -> None:
        start, data = seg.seq, seg.payload
        end = start + len(data)
        if seg.flags & FIN and self.peer_fin is None and end >= self.rcv_nxt:
            self.peer_fin = end
        if data:
            if self.peer_fin is not None and end > self.peer_fin:
                data = b""  # beyond the peer's own end: nonsense, dropped
                self.stats["dropped_window"] += 1
            elif end <= self.rcv_nxt:
                self.stats["duplicates"] += 1
                self.ack_due = now  # our acknowledgement was lost: again, at once
                data = b""
            elif start >= self.rcv_adv:
                self.stats["dropped_window"] += 1  # beyond the window granted (a probe)
                self.ack_due = now
                data = b""
            elif end > self.rcv_adv:
                data = data[:self.rcv_adv - start]
                end = self.rcv_adv
        if data:
            self.stats["bytes_in"] += len(data)
            if start > self.rcv_nxt:
                if self._ooo_insert(start, data):
                    self.stats["out_of_order"] += 1
                self.ack_due = now
            else:
                if self._rs and end > self._rs[0]:
                    data = data[:self._rs[0] - start]  # the rest is held already
                    end = self._rs[0]
                self._deliver(data[self.rcv_nxt - start:])
                self.rcv_nxt = end
                filled = self._drain()
                self.unacked += 1
                if filled or self._rs or self.unacked >= self.p.ack_every:
                    self.ack_due = now
                else:
                    self.ack_due = min(self.ack_due, now + self.p.ack_delay)
        elif seg.flags & FIN:
            self.ack_due = now
        if self.peer_fin is not None and not self.eof and self.rcv_nxt == self.peer_fin:
            self.rcv_nxt += 1  # the FIN's sequence number
            self.eof = True
            self.ack_due = now

    def _deliver(self, data: bytes) -> None:
        if data:
            self.delivered.append(data)
            self.unread += len(data)

    def _ooo_insert(self, s: int, data: bytes) -> bool:
        """Keep a segment that arrived before its predecessors; False for a duplicate or one
        overlapping held data with other boundaries (a correct peer never sends one)."""
        e = s + len(data)
        rs, re = self._rs, self._re
        i = bisect_right(rs, s) - 1
        if (i >= 0 and re[rs[i]] > s) or (i + 1 < len(rs) and rs[i + 1] < e):
            old = self.ooo.get(s)
            self.stats["duplicates" if old is not None and len(old) == len(data)
                       else "dropped_overlap"] += 1
            return False
        self.ooo[s] = data
        self.ooo_bytes += len(data)
        joins_left = i >= 0 and re[rs[i]] == s
        joins_right = i + 1 < len(rs) and rs[i + 1] == e
        if joins_left:
            start = rs[i]
        else:
            start = s
            insort(rs, s)
        end = e
        if joins_right:
            end = re.pop(e)
            rs.pop(bisect_left(rs, e))
        re[start] = end
        return True

    def _drain(self) -> bool:
        """Deliver the held range that starts where the in-order data now ends."""
        rs = self._rs
        if not rs or rs[0] != self.rcv_nxt:
            return False
        s = rs.pop(0)
        e = self._re.pop(s)
        k = s
        while k < e:
            d = self.ooo.pop(k)
            self.ooo_bytes -= len(d)
            self._deliver(d)
            k += len(d)
        self.rcv_nxt = e
        return True

    def _window(self) -> int:
        """The window to advertise now (never less than one granted before)."""
        free = max(0, self.p.rcv_buf - self.unread - self.ooo_bytes)
        self.rcv_adv = max(self.rcv_adv, self.rcv_nxt + free)
        return min(self.rcv_adv - self.rcv_nxt, U32)

    def _sack(self) -> tuple:
        return tuple((s, self._re[s]) for s in self._rs[:MAX_SACK])

    # --- timers -----------------------------------------------------------------------------

    def on_timer(self, now: float) -> None:
        if self.state == DONE:
            return
        if self.state == LINGER:
            if now >= self.linger_until:
                self.state = DONE
            return
        if self.state in (SYN_SENT, SYN_RCVD):
            if now >= self.created + self.p.connect_timeout:
                self.error = "timeout"
                self._finish()
            return
        if now >= self.heard_at + self.p.dead_after or \
                (self.n_out + len(self.retx) and now >= self.progress_at + self.p.dead_after):
            self.error = "timeout"
            self._finish()
            return
        if now >= self.rto_at:
            self._timeout(now)

    def _timeout(self, now: float) -> None:
        pending = [f for s in self._starts[self._head:] if not (f := self.inflight[s]).sacked
                   and not f.lost]
        if not pending:
            self.rto_at = INF
            return
        self.stats["timeouts"] += 1
        self.sample_after = now
        if self.backoff > 1:  # again: everything unanswered, and the window collapses
            if self.p.congestion:
                self.ssthresh = max(self.flight_bytes / 2, 2.0 * self.p.mss)
                self.cwnd = float(self.p.mss)
                self.recover = self.snd_nxt
        else:
            pending = pending[:1]
        for f in pending:
            f.lost = True
            self.n_out -= 1
            self.flight_bytes -= f.size
        self.retx = sorted(set(self.retx).union(f.start for f in pending))
        self.backoff = min(self.backoff * 2, 64)
        self.rto_at = now + min(self.p.max_rto, self.rto * self.backoff)

    def next_deadline(self) -> float:
        if self.state == DONE:
            return INF
        if self.state == LINGER:
            return min(self.linger_until, self.ack_due)
        if self.state in (SYN_SENT, SYN_RCVD):
            return min(self.hs_due, self.created + self.p.connect_timeout, self.ack_due)
        t = min(self.ack_due, self.rto_at, self.heard_at + self.p.dead_after, self.ka_at)
        if self.n_out + len(self.retx):
            t = min(t, self.progress_at + self.p.dead_after)
        if self._unsent() and self.snd_right <= self.snd_nxt and not self.n_out:
            t = min(t, self.probe_at)
        return t

    def _unsent(self) -> bool:
        return self.snd_nxt < self.wr_end or \
            (self.fin_seq is not None and self.snd_nxt <= self.fin_seq)

    # --- output -----------------------------------------------------------------------------

    def poll(self, now: float, may_send: bool = True) -> list[Segment]:
        """The segments to send now: an RST; the handshake; retransmissions; new data within
        the peer's window (and the congestion window) unless ``may_send`` is false; probes;
        an acknowledgement if one is due and no segment carried it."""
        out: list[Segment] = []
        if self.state == DONE:
            return out
        if self._rst:
            self._rst = False
            out.append(Segment(RST | ACK, self.conn, self.snd_nxt, self.rcv_nxt))
            self._finish()
            return out
        if self.state in (SYN_SENT, SYN_RCVD):
            if now >= self.hs_due:
                if self.state == SYN_SENT:
                    out.append(Segment(SYN, self.conn, 0, 0, self._window()))
                else:
                    out.append(Segment(SYN | ACK, self.conn, 0, 0, self._window()))
                if not self.hs_tries:
                    self.hs_first = now
                self.hs_tries += 1
                self.hs_due = now + min(self.p.max_rto,
                                        self.p.initial_rto * 2 ** (self.hs_tries - 1))
            self.stats["segments_out"] += len(out)
            return out
        if not self.n_out and not self.retx:
            self.progress_at = now  # (data outstanding from now on is timed from now)
        limit = self.cwnd if self.p.congestion else INF
        while self.retx:
            s = self.retx[0]
            f = self.inflight.get(s)
            if f is None or f.sacked or not f.lost:
                self.retx.pop(0)
                continue
            if self.flight_bytes + f.size > limit and self.n_out:
                break
            self.retx.pop(0)
            f.lost = False
            f.tries += 1
            f.sent_at = now
            self.n_out += 1
            self.flight_bytes += f.size
            self._retx_pending.add(s)
            self.stats["retransmissions"] += 1
            out.append(self._data_segment(f))
        if may_send:
            self._new_data(now, limit, out)
        if not out and self._unsent() and self.snd_right <= self.snd_nxt and not self.n_out:
            if self.probe_at == INF:
                self.probe_at = now + min(self.p.probe_max, self.rto)
            elif now >= self.probe_at:
                self.stats["probes"] += 1
                out.append(self._ack(PROBE))
                self.probe_backoff = min(self.probe_backoff * 2, 64)
                self.probe_at = now + min(self.p.probe_max, self.rto * self.probe_backoff)
        if not out and now >= self.ka_at and self.state == OPEN:
            self.stats["probes"] += 1
            out.append(self._ack(PROBE))  # keepalive
            self.ka_at = now + self.p.keepalive
        if not out and now >= self.ack_due:
            out.append(self._ack(0))
        if out:
            self.ack_due = INF
            self.unacked = 0
            self.stats["segments_out"] += len(out)
            if self.rto_at == INF and self.n_out:
                self.rto_at = now + self.rto * self.backoff
        return out

    def _new_data(self, now: float, limit: float, out: list) -> None:
        mss = self.p.mss
        fin_seq = self.fin_seq
        while True:
            nxt = self.snd_nxt
            data_end = self.wr_end
            n = min(mss, data_end - nxt, self.snd_right - nxt)
            fin = fin_seq is not None and nxt + max(n, 0) == fin_seq
            if n <= 0 and not (fin and nxt == fin_seq):
                return
            n = max(n, 0)
            if n < mss and n < data_end - nxt and self.n_out:
                return  # a small piece of a larger write: wait for the window (SWS)
            if self.flight_bytes + n > limit and self.n_out:
                return
            f = _Seg(nxt, nxt + n + (1 if fin else 0), fin, now)
            self.inflight[nxt] = f
            self._starts.append(nxt)
            self.n_out += 1
            self.flight_bytes += n
            self.snd_nxt = f.end
            self.stats["bytes_out"] += n
            out.append(self._data_segment(f))
            if fin:
                return

    def _data_segment(self, f: _Seg) -> Segment:
        off = f.start - self._buf_seq
        payload = bytes(self._buf[off:off + f.size])
        return Segment(ACK | (FIN if f.fin else 0), self.conn, f.start, self.rcv_nxt,
                       self._window(), self._sack(), payload)

    def _ack(self, extra: int) -> Segment:
        self.stats["acks_out"] += 1
        return Segment(ACK | extra, self.conn, self.snd_nxt, self.rcv_nxt, self._window(),
                       self._sack())

    # --- ending -----------------------------------------------------------------------------

    def final_ack(self) -> Segment | None:
        """For a stream that ended in order: the acknowledgement any segment of the peer
        gets after this end is gone (its FIN again, because our acknowledgement was lost, or a
        keepalive meanwhile): it tells the peer that everything arrived.  The driver keeps it
        a while (TCP's TIME_WAIT, in a few bytes instead of a whole stream).  None
        otherwise."""
        if self.error is not None or not (self.eof and self.fin_acked):
            return None
        return Segment(ACK, self.conn, self.snd_nxt, self.rcv_nxt, 0)

    def _check_linger(self, now: float) -> None:
        if self.state == OPEN and self.eof and self.fin_acked:
            self.state = LINGER
            self.linger_until = now + max(self.p.linger, 2 * self.rto)

    def _finish(self) -> None:
        """Done (an error or an abort): nothing more is sent or delivered."""
        self.state = DONE
        self.inflight.clear()
        self._starts.clear()
        self._head = 0
        self.retx.clear()
        self.n_out = self.flight_bytes = 0
        self._buf = bytearray()
        self.ooo.clear()
        self._rs.clear()
        self._re.clear()
        self.ooo_bytes = 0
        self.rto_at = self.probe_at = self.ack_due = INF
