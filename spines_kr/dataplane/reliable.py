"""Reliable links (Spines' RELIABLE_LINKS, link protocol 1): one overlay link, one direction,
recovered on the hop where a loss happened.  Pure: values in, values out, ``now`` passed in.

Spines' behaviour honoured (daemon/reliable_datagram.c, link.h; our own code): a per-link
window of sequenced frames, cumulative acknowledgements with negative/selective ones,
retransmission on a timeout from the measured RTT and on a reported gap, in-order delivery per
link, duplicates suppressed, a congestion window, and the per-link rate limit ``-rl`` (kbit/s,
Spines' default 500,000).  Where Spines leaves its window alone on loss unless asked for TCP
fairness, ours backs off on congestion, told from random loss by its amount: a loss episode
(one round trip from the first loss found) that loses ``congestion_share`` of the frames in
flight, or several frames while the round trip has grown half again over the link's lowest (a
queue fills), halves the window once, and so do timeouts in a row, while the isolated
losses of a lossy link are repaired without slowing down (a lossy link is what this protocol is
for).  An unlimited sender on a bandwidth-limited link thus slows to the link's rate rather than
flood its queue, where the daemons' hellos wait too (the collapse Spines shows above ~120
Mbit/s over 3 hops).

Data model, sending side (``ReliableSender``):
    backlog     frames (tuples of ``wire.data.Record``) not sent yet, in order
    inflight    seq -> _Frame(records, size, sent_at, tries, sacked, lost): sent, not
                cumulatively acknowledged; ``una`` the oldest, ``nxt`` the next to assign
    retx        seqs found lost (``dupthresh`` later frames selectively acknowledged, or a
                timeout), retransmitted first
    cwnd, ssthresh   the congestion window in frames (slow start, then +1 per window)
    srtt, rttvar, rto   RFC 6298 from frames acknowledged on their first transmission
                (Karn), ``min_rto``..``max_rto``, doubled per timeout in a row
    tokens      the rate limit: a byte bucket at ``rate_bps`` / 8, a burst of ``burst`` bytes
    peer_window frames the receiver accepts beyond its cumulative point (0: it is backed up,
                probed once per ``rto``)
Receiving side (``ReliableReceiver``): ``expected`` (every frame before it delivered), the
out-of-order buffer (bounded by ``max_window``), whether an acknowledgement is due (at once on
anything out of order, a duplicate or a filled gap; else every second frame or after
``ack_delay``), and ``accepting`` (the owner's back-pressure: when false the advertised window
is 0; frames within a window already granted, ``edge``, are still taken -- as TCP never
shrinks its window -- so the owner holds at most a window more per link).

Sequence numbers are unbounded integers here; the wire carries their low 32 bits
(``wire.links.unwrap``).  Entry points: ``ReliableSender(params, epoch)`` with ``offer(frame)``,
``poll(now) -> [(seq, records)]``, ``on_ack(ack, now)``, ``next_deadline()``, ``drain()``;
``ReliableReceiver(params)`` with ``on_frame(data, now, accepting) -> [records...]``,
``ack(now) -> LinkAck | None``, ``next_deadline()``.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from spines_kr.wire import links as wl

INF = float("inf")


@dataclass(frozen=True, slots=True)
class ReliableParams:
    max_window: int = 1024  # frames in flight (and out-of-order frames buffered) at most
    init_cwnd: float = 16.0
    min_cwnd: float = 2.0
    beta: float = 0.5  # the window after a congested loss episode, as a share of what it was
    congestion_share: float = 0.25  # an episode losing this share of its frames: congestion
    min_rto: float = 0.05
    max_rto: float = 2.0
    initial_rto: float = 0.2
    ack_delay: float = 0.004  # s an acknowledgement may wait for a second frame
    ack_every: int = 2
    rate_bps: float = 500e6  # -rl (kbit/s) * 1000; 0: unlimited
    burst: int = 64 * 1024  # bytes the rate limit lets out at once
    dupthresh: int = 3
    tcp_fairness: bool = False  # -tf: every loss episode is congestion (TCP's rule)


class _Frame:
    __slots__ = ("records", "size", "sent_at", "first_sent", "tries", "sacked", "lost")

    def __init__(self, records, size: int) -> None:
        self.records = records
        self.size = size
        self.sent_at = 0.0
        self.first_sent = 0.0
        self.tries = 0
        self.sacked = False
        self.lost = False


def rtt_estimate(srtt: float | None, rttvar: float, r: float) -> tuple[float, float]:
    """RFC 6298's smoothed RTT and variation after the sample ``r`` (seconds); the reliable
    links and the end-to-end streams both time their retransmissions from it."""
    if srtt is None:
        return r, r / 2
    return 0.875 * srtt + 0.125 * r, 0.75 * rttvar + 0.25 * abs(srtt - r)


def frame_size(records) -> int:
    return sum(r.encoded_size() for r in records) + wl.DATA_HEADER


class ReliableSender:
    def __init__(self, params: ReliableParams, epoch: int) -> None:
        self.p = params
        self.epoch = epoch
        self.backlog: deque = deque()
        self.backlog_bytes = 0
        self.inflight: dict[int, _Frame] = {}
        self.n_sacked = 0  # frames of inflight selectively acknowledged
        self.n_lost = 0  # frames of inflight found lost, not retransmitted yet
        self.una = 0
        self.nxt = 0
        self.retx: list[int] = []
        self.cwnd = params.init_cwnd
        self.ssthresh = float(params.max_window)
        self.recover = -1  # the loss episode lasts until this frame is acknowledged
        self.episode_losses = 0
        self.episode_frames = 0  # frames in flight when the episode began
        self.episode_backed_off = False
        self.srtt: float | None = None
        self.min_rtt: float | None = None  # the link's round trip without a queue
        self.sample_after = 0.0  # (Karn) frames sent before the last timeout give no sample
        self._blocks_seen: dict[int, int] = {}  # start -> end of the last ack's blocks
        self._loss_scan = 0  # frames below it, sent once, were decided
        self._retx_pending: set[int] = set()  # retransmitted, unanswered, below _loss_scan
        self.last_rtt: float | None = None
        self.rttvar = 0.0
        self.rto = params.initial_rto
        self.backoff = 1
        self.tokens = float(params.burst)
        self.tokens_at = 0.0
        self.peer_window = params.max_window
        self.probe_at = INF
        self.rto_at = INF
        self.stats = {"frames_sent": 0, "frames_retransmitted": 0, "timeouts": 0,
                      "loss_episodes": 0, "congestion_episodes": 0, "acked": 0, "recovery_s_sum": 0.0,
                      "recovered": 0}

    # --- inputs -----------------------------------------------------------------------------

    def offer(self, records) -> None:
        """A frame to send (its records fit the link's MTU)."""
        records = tuple(records)
        size = frame_size(records)
        self.backlog.append((records, size))
        self.backlog_bytes += size

    def in_flight(self) -> int:
        """Frames on their way: sent, neither acknowledged nor found lost."""
        return len(self.inflight) - self.n_sacked - self.n_lost

    def _refill(self, now: float) -> None:
        rate = self.p.rate_bps / 8
        if rate > 0 and now > self.tokens_at:
            self.tokens = min(self.p.burst, self.tokens + (now - self.tokens_at) * rate)
        self.tokens_at = now

    def _spend(self, size: int) -> bool:
        if self.p.rate_bps <= 0:
            return True
        if self.tokens < min(size, self.p.burst):
            return False
        self.tokens -= size
        return True

    def poll(self, now: float) -> list[tuple[int, tuple]]:
        """The frames to transmit now: retransmissions first, then new frames, within the
        congestion window, the receiver's window and the rate limit."""
        self._refill(now)
        out = []
        retx = self.retx
        limit = min(int(self.cwnd), self.p.max_window)
        flight = self.in_flight()
        while retx and (flight < limit or not flight):
            seq = retx[0]
            f = self.inflight.get(seq)
            if f is None or f.sacked or not f.lost:
                retx.pop(0)
                continue
            if not self._spend(f.size):
                return self._sent(out, now)
            retx.pop(0)
            f.lost = False
            self.n_lost -= 1
            f.tries += 1
            f.sent_at = now
            self._retx_pending.add(seq)
            flight += 1
            self.stats["frames_retransmitted"] += 1
            out.append((seq, f.records))
        if self.peer_window <= 0 and self.backlog and now >= self.probe_at:
            # a window probe: one frame although the receiver said 0 (and whatever the
            # congestion window), so that its answer tells when the window opens again
            self.probe_at = now + self.rto
            records, size = self.backlog.popleft()
            self.backlog_bytes -= size
            self._new_frame(records, size, now, out)
        while self.backlog and flight < limit and \
                self.nxt - self.una < min(self.p.max_window, self.peer_window):
            records, size = self.backlog[0]
            if not self._spend(size):
                break
            self.backlog.popleft()
            self.backlog_bytes -= size
            self._new_frame(records, size, now, out)
            flight += 1
        return self._sent(out, now)

    def _new_frame(self, records, size: int, now: float, out: list) -> None:
        f = _Frame(records, size)
        f.sent_at = f.first_sent = now
        seq = self.nxt
        self.nxt += 1
        self.inflight[seq] = f
        out.append((seq, records))

    def _sent(self, out, now: float):
        if out:
            self.stats["frames_sent"] += len(out)
            if self.rto_at == INF:
                self.rto_at = now + self.rto * self.backoff
        return out

    def on_ack(self, ack: wl.LinkAck, now: float) -> int:
        """An acknowledgement from the receiver; returns how many frames it newly covers."""
        if ack.epoch != self.epoch:
            return 0
        cum = wl.unwrap(ack.cumulative, self.una)
        if cum > self.nxt or cum < self.una - self.p.max_window:
            return 0  # nonsense or stale
        newly = 0
        latest = -1.0  # the latest first transmission answered now: the RTT sample (Karn)
        for seq in range(self.una, max(cum, self.una)):
            f = self.inflight.pop(seq, None)
            if f is None:
                continue
            if f.sacked:
                self.n_sacked -= 1
                continue  # counted when it was selectively acknowledged
            if f.lost:
                self.n_lost -= 1
            newly += 1
            latest = self._answered(f, now, latest)
        if cum > self.una:
            self.una = cum
            self.backoff = 1
        # blocks come lowest first (the receiver's oldest holes matter most); when they fill
        # the ack, what lies above the last one is unknown: no loss is decided there
        blocks = []
        for a, b in ack.blocks:
            start, end = wl.unwrap(a, self.una), wl.unwrap(b, self.una)
            if self.una <= start < end <= self.nxt and end - start <= self.p.max_window:
                blocks.append((start, end))
        seen = self._blocks_seen
        for start, end in blocks:
            begin = seen.get(start, start)  # (a block an earlier ack told: only its growth)
            for seq in range(begin, end):
                f = self.inflight.get(seq)
                if f is not None and not f.sacked:
                    f.sacked = True
                    self.n_sacked += 1
                    if f.lost:
                        f.lost = False
                        self.n_lost -= 1
                    newly += 1
                    latest = self._answered(f, now, latest)
        self._blocks_seen = dict(blocks)
        threshold = -1
        if blocks:
            # RFC 5827's early retransmit: with few frames out, fewer duplicates suffice
            dupthresh = max(1, min(self.p.dupthresh, len(self.inflight) - 1))
            above = 0
            for start, end in reversed(blocks):
                if above + (end - start) >= dupthresh:
                    threshold = end - (dupthresh - above)
                    break
                above += end - start
        self.peer_window = ack.window
        if self.peer_window > 0:
            self.probe_at = INF
        elif self.probe_at == INF:
            self.probe_at = now + self.rto
        if latest >= 0:
            self._rtt(now - latest)
        if threshold >= 0:
            self._detect_losses(threshold, blocks[-1][1] - 1)
        if newly:
            self.stats["acked"] += newly
            self.backoff = 1  # the link answers
            if self.una > self.recover or not self.episode_backed_off:  # (random loss: grow)
                if self.cwnd < self.ssthresh:
                    self.cwnd = min(self.cwnd + newly, self.p.max_window)
                else:
                    self.cwnd = min(self.cwnd + newly / self.cwnd, self.p.max_window)
        outstanding = len(self.inflight) > self.n_sacked
        self.rto_at = now + self.rto * self.backoff if outstanding else INF
        return newly

    def _detect_losses(self, threshold: int, newest_seq: int) -> None:
        """Every frame below ``threshold`` (``dupthresh`` selectively acknowledged frames lie
        above it) that is neither acknowledged nor already found lost is lost -- unless it was
        retransmitted after the newest of those frames was sent (then it may still come).
        Frames sent once are decided once (``_loss_scan``); retransmitted ones wait in
        ``_retx_pending`` until decided again."""
        newest = self.inflight.get(newest_seq)
        lost_now = []
        inflight = self.inflight
        for seq in range(max(self.una, self._loss_scan), threshold):
            f = inflight.get(seq)
            if f is None or f.sacked or f.lost:
                continue
            if f.tries:
                self._retx_pending.add(seq)
                continue
            f.lost = True
            self.n_lost += 1
            lost_now.append(seq)
        if threshold > self._loss_scan:
            self._loss_scan = threshold
        if newest is not None and self._retx_pending:
            for seq in sorted(self._retx_pending):
                f = inflight.get(seq)
                if f is None or f.sacked:
                    self._retx_pending.discard(seq)
                elif seq < threshold and not f.lost and newest.sent_at > f.sent_at:
                    self._retx_pending.discard(seq)
                    f.lost = True
                    self.n_lost += 1
                    lost_now.append(seq)
        lost_now.sort()
        if not lost_now:
            return
        self.retx = sorted(set(self.retx).union(lost_now))
        if lost_now[0] > self.recover:  # a new loss episode
            self.stats["loss_episodes"] += 1
            self.recover = self.nxt - 1
            self.episode_losses = 0
            self.episode_frames = self.nxt - self.una
            self.episode_backed_off = False
        self.episode_losses += sum(1 for s in lost_now if s <= self.recover)
        if not self.episode_backed_off and self._congested():
            self.episode_backed_off = True  # congestion, not random loss: back off once
            self.stats["congestion_episodes"] += 1
            self.ssthresh = max(self.cwnd * self.p.beta, self.p.min_cwnd)
            self.cwnd = self.ssthresh

    def _answered(self, f: _Frame, now: float, latest: float) -> float:
        if f.tries:
            self.stats["recovery_s_sum"] += now - f.first_sent
            self.stats["recovered"] += 1
            return latest
        if f.sent_at < self.sample_after:
            return latest  # sent before a timeout: its answer may be to the retransmission
        return f.sent_at if f.sent_at > latest else latest

    def _congested(self) -> bool:
        """The losses of this episode are congestion: too many of the frames in flight, or
        several while the round trip has grown (a queue builds up somewhere on the link)."""
        lost = self.episode_losses
        if self.p.tcp_fairness:
            return lost > 0
        if lost >= max(4, self.p.congestion_share * self.episode_frames):
            return True
        return lost >= 2 and self.min_rtt is not None and self.last_rtt is not None and \
            self.last_rtt > 1.5 * self.min_rtt + 0.002

    def _rtt(self, r: float) -> None:
        self.last_rtt = r
        if self.min_rtt is None or r < self.min_rtt:
            self.min_rtt = r
        self.srtt, self.rttvar = rtt_estimate(self.srtt, self.rttvar, r)
        self.rto = min(self.p.max_rto, max(self.p.min_rto,
                                           self.srtt + 4 * self.rttvar + self.p.ack_delay))

    def on_timer(self, now: float) -> None:
        """Run when ``next_deadline`` comes: a retransmission timeout, a window probe, or
        tokens to spend (``poll`` does that part).

        A first timeout resends only the oldest frame unanswered: most often the one
        acknowledgement of a whole batch was lost, and the receiver's answer to that duplicate
        settles everything (no window of duplicates, no slowdown).  A timeout again right after
        means the link is in trouble: everything unanswered is resent and the window halves."""
        if now < self.rto_at:
            return
        pending = [s for s, f in self.inflight.items() if not f.sacked and not f.lost]
        if not pending:
            self.rto_at = INF if not self.retx else now + self.rto * self.backoff
            return
        self.stats["timeouts"] += 1
        self.sample_after = now
        if self.backoff > 1:
            self.ssthresh = max(self.cwnd * self.p.beta, self.p.min_cwnd)
            self.cwnd = self.ssthresh
            self.recover = self.nxt - 1
        else:
            pending = pending[:1]
        for s in pending:
            self.inflight[s].lost = True
            self.n_lost += 1
        self.retx = sorted(set(self.retx).union(pending))
        self.backoff = min(self.backoff * 2, 64)
        self.rto_at = now + min(self.p.max_rto, self.rto * self.backoff)

    def next_deadline(self, now: float) -> float:
        t = min(self.rto_at, self.probe_at if self.backlog and self.peer_window <= 0 else INF)
        flight = self.in_flight()
        room = flight < min(int(self.cwnd), self.p.max_window)
        need = 0
        if self.retx and (room or not flight):
            f = self.inflight.get(self.retx[0])
            need = f.size if f is not None else 1
        elif self.backlog and room and self.peer_window > 0 and \
                self.nxt - self.una < min(self.p.max_window, self.peer_window):
            need = self.backlog[0][1]
        if need:  # work that waits for tokens only (poll sent all it could)
            rate = self.p.rate_bps / 8
            wait = max(0.0, min(need, self.p.burst) - self.tokens) / rate if rate > 0 else 0.0
            t = min(t, now + max(wait, 1e-6))
        return t

    def drain(self) -> list:
        """The link died: every record not known delivered (in flight unacknowledged, then the
        backlog), in order, for the new route; the sender is empty afterwards."""
        out = []
        for seq in sorted(self.inflight):
            f = self.inflight[seq]
            if not f.sacked:
                out.extend(f.records)
        for records, _size in self.backlog:
            out.extend(records)
        self.inflight.clear()
        self.n_sacked = self.n_lost = 0
        self.backlog.clear()
        self.backlog_bytes = 0
        self.retx.clear()
        self._retx_pending.clear()
        self._blocks_seen.clear()
        self.una = self.nxt
        self.rto_at = self.probe_at = INF
        return out

    def status(self) -> dict:
        s = self.stats
        return {"cwnd": round(self.cwnd, 1), "in_flight": self.in_flight(),
                "backlog_frames": len(self.backlog), "backlog_bytes": self.backlog_bytes,
                "peer_window": self.peer_window,
                "srtt_ms": None if self.srtt is None else round(self.srtt * 1000, 2),
                "rto_ms": round(self.rto * 1000, 1), "frames_sent": s["frames_sent"],
                "retransmissions": s["frames_retransmitted"], "timeouts": s["timeouts"],
                "loss_episodes": s["loss_episodes"],
                "congestion_episodes": s["congestion_episodes"],
                "recovery_ms": round(1000 * s["recovery_s_sum"] / s["recovered"], 2)
                if s["recovered"] else None}


class ReliableReceiver:
    def __init__(self, params: ReliableParams) -> None:
        self.p = params
        self.epoch: int | None = None
        self.expected = 0
        self.buffer: dict[int, tuple] = {}
        self.unacked = 0  # in-order frames received since the last ack
        self.ack_due = INF
        self.accepting = True
        self.edge = params.max_window  # frames below it were granted: always taken
        self.stats = {"frames_in": 0, "duplicates": 0, "out_of_order": 0,
                      "refused_backpressure": 0, "acks_out": 0}

    def _reset(self, epoch: int) -> None:
        self.epoch = epoch
        self.expected = 0
        self.buffer.clear()
        self.unacked = 0
        self.edge = self.p.max_window

    def on_frame(self, data: wl.LinkData, now: float, accepting: bool = True) -> list[tuple]:
        """A frame from the neighbor: the frames' records now deliverable in order."""
        if data.epoch != self.epoch:
            self._reset(data.epoch)
        self.accepting = accepting
        self.stats["frames_in"] += 1
        seq = wl.unwrap(data.seq, self.expected)
        if seq < self.expected or seq in self.buffer:
            self.stats["duplicates"] += 1
            self.ack_due = now  # the ack was lost: say it again at once
            return []
        if seq >= self.expected + self.p.max_window:
            self.stats["duplicates"] += 1  # outside any window we advertised: ignore
            return []
        if seq >= self.edge:
            # beyond the window we granted (we are backed up and said 0: a probe)
            self.stats["refused_backpressure"] += 1
            self.ack_due = now
            return []
        if seq != self.expected:
            self.buffer[seq] = data.records
            self.stats["out_of_order"] += 1
            self.ack_due = now
            return []
        out = [data.records]
        self.expected += 1
        filled = False
        buf = self.buffer
        while self.expected in buf:
            out.append(buf.pop(self.expected))
            self.expected += 1
            filled = True
        self.unacked += 1
        if filled or buf or self.unacked >= self.p.ack_every:
            self.ack_due = now
        elif self.ack_due == INF:
            self.ack_due = now + self.p.ack_delay
        return out

    def ack(self, now: float, accepting: bool | None = None) -> wl.LinkAck | None:
        """The acknowledgement to send now, if one is due."""
        if accepting is not None and accepting != self.accepting:
            self.accepting = accepting
            if self.epoch is not None:
                self.ack_due = min(self.ack_due, now)  # tell the window's change
        if now < self.ack_due or self.epoch is None:
            return None
        self.ack_due = INF
        self.unacked = 0
        self.stats["acks_out"] += 1
        window = self.p.max_window if self.accepting else 0  # beyond ``expected``
        # (a window once granted is never taken back: frames sent into it are taken)
        self.edge = max(self.edge, self.expected + window)
        return wl.LinkAck(wl.RELIABLE, self.epoch, self.expected, window,
                          blocks=tuple(_blocks(self.buffer, wl.MAX_BLOCKS)))

    def next_deadline(self) -> float:
        return self.ack_due

    def status(self) -> dict:
        return {"expected": self.expected, "out_of_order_buffered": len(self.buffer),
                **self.stats}


def _blocks(buffer, limit: int) -> list[tuple[int, int]]:
    """The buffered sequences as (start, end) runs, lowest first, at most ``limit`` (the
    oldest holes are what the sender must fill first)."""
    out: list[tuple[int, int]] = []
    for seq in sorted(buffer):
        if out and out[-1][1] == seq:
            out[-1] = (out[-1][0], seq + 1)
        elif len(out) == limit:
            break
        else:
            out.append((seq, seq + 1))
    return out
