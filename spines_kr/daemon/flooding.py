"""Reliable flooding over one node's links: paced, bundled, acknowledged late and in bulk,
retransmitted per LSA.  No I/O, no clock (``now`` is passed in).

Data model, per link (``LinkFlood``, held by ``Link.flood``):
    queue      origin -> LSA to send in this link's next update (a bundle); a newer instance
               replaces an older one still waiting
    unacked    origin -> Unacked(lsa, due, tries): sent, no acknowledgement yet; retransmitted
               alone when its own ``due`` comes, with backoff (x2 per try, up to 8x)
    acks       origin -> seq to acknowledge in this link's next acknowledgement
    next_send  pacing: an update goes at once on a link idle for PACE, else PACE after the last
               one, carrying everything queued meanwhile
    ack_due    acknowledgements go ACK_DELAY after the first waiting one, all in one packet
    tokens     the link's budget of updates per second (a token bucket, a second's burst), so
               a neighbor's rate limit (``max_packets_per_s``) never has to drop our floods

Entry points (``Flooding``): ``queue(link, lsa, now)``, ``sync(link, lsas, now)`` (a link came up:
the whole database), ``acknowledge(link, lsa, now)``, ``acked(link, origin, seq)``,
``implicit(link, lsa)`` (the neighbor sent us what we were sending it), ``run(link, now)`` ->
packets to send now; ``LinkFlood.due()`` says when a link next has flooding work.

Why (the scale problem, bench/scale.py): forwarding every received update at once to every
other neighbor, acknowledging each update with its own packet and resending everything
unacknowledged every 100 ms made a cold start of 200 nodes drop a third of all protocol packets
at the neighbors' rate limits and resend each LSA 8 times per link.  OSPF's remedies, in
RFC 2328 section 13 and every implementation since: delayed acknowledgements sent in bulk
(section 13.5), retransmission per LSA after RxmtInterval (13.6), a minimum interval between
originations (MinLSInterval, in the engine), and pacing of updates per interface.
"""

from __future__ import annotations

from dataclasses import dataclass

from spines_kr.wire import packets as wire

INF = float("inf")
BACKOFF_MAX = 8  # retransmission interval grows x2 per try, up to this factor


@dataclass(frozen=True, slots=True)
class FloodParams:
    pace: float = 0.01  # s between two updates on one link
    ack_delay: float = 0.02  # s an acknowledgement may wait to be bundled
    retransmit: float = 0.4  # s before an unacknowledged LSA is sent again (at least)
    budget_pps: float = 100.0  # updates per second per link (a quarter of a neighbor's limit)
    packet_budget: int = 1400  # bytes of LSAs per update


@dataclass(slots=True)
class Unacked:
    lsa: wire.LSA
    due: float
    tries: int


class LinkFlood:
    __slots__ = ("queue", "unacked", "acks", "next_send", "ack_due", "rxmt_due", "tokens",
                 "tokens_at")

    def __init__(self) -> None:
        self.queue: dict[int, wire.LSA] = {}
        self.unacked: dict[int, Unacked] = {}
        self.acks: dict[int, int] = {}
        self.next_send = 0.0
        self.ack_due = INF
        self.rxmt_due = INF
        self.tokens = -1.0  # -1: full
        self.tokens_at = 0.0

    def reset(self) -> None:
        self.queue.clear()
        self.unacked.clear()
        self.acks.clear()
        self.ack_due = self.rxmt_due = INF

    def due(self) -> float:
        t = self.next_send if self.queue else INF
        if self.acks and self.ack_due < t:
            t = self.ack_due
        if self.unacked:
            # a retransmission is paced like any update: not before next_send
            rx = self.rxmt_due if self.rxmt_due > self.next_send else self.next_send
            if rx < t:
                t = rx
        return t


class Flooding:
    def __init__(self, params: FloodParams, counters) -> None:
        self.p = params
        self.counters = counters

    # --- inputs -----------------------------------------------------------------------------

    def queue(self, fl: LinkFlood, lsa: wire.LSA, now: float) -> None:
        """Send ``lsa`` on this link (in its next update)."""
        fl.queue[lsa.origin] = lsa
        fl.unacked.pop(lsa.origin, None)  # the new instance is what needs acknowledging
        if fl.next_send < now:
            fl.next_send = now

    def sync(self, fl: LinkFlood, lsas, now: float) -> None:
        """A link came up: the neighbor gets our whole database."""
        for lsa in lsas:
            self.queue(fl, lsa, now)

    def acknowledge(self, fl: LinkFlood, lsa: wire.LSA, now: float) -> None:
        if lsa.seq > fl.acks.get(lsa.origin, -1):
            fl.acks[lsa.origin] = lsa.seq
        if fl.ack_due == INF:
            fl.ack_due = now + self.p.ack_delay

    def acked(self, fl: LinkFlood, origin: int, seq: int) -> None:
        """The neighbor acknowledged (origin, seq), or holds it or newer."""
        u = fl.unacked.get(origin)
        if u is not None and u.lsa.seq <= seq:
            del fl.unacked[origin]
        q = fl.queue.get(origin)
        if q is not None and q.seq <= seq:
            del fl.queue[origin]

    def implicit(self, fl: LinkFlood, lsa: wire.LSA) -> None:
        """The neighbor sent us this instance: it has it, no need to send it ours."""
        self.acked(fl, lsa.origin, lsa.seq)

    # --- output -----------------------------------------------------------------------------

    def _rto(self, tries: int, srtt_ms: float | None) -> float:
        base = self.p.retransmit
        if srtt_ms is not None:
            base = max(base, 3 * srtt_ms / 1000 + self.p.ack_delay + self.p.pace)
        return base * min(BACKOFF_MAX, 1 << tries)

    def _take_token(self, fl: LinkFlood, now: float) -> bool:
        rate = self.p.budget_pps
        if fl.tokens < 0:
            fl.tokens, fl.tokens_at = rate, now
        fl.tokens = min(rate, fl.tokens + (now - fl.tokens_at) * rate)
        fl.tokens_at = now
        if fl.tokens < 1:
            return False
        fl.tokens -= 1
        return True

    def run(self, fl: LinkFlood, now: float, instance: int, sender: int,
            srtt_ms: float | None = None) -> list[bytes]:
        """The packets this link must send now (acknowledgements, then updates)."""
        out: list[bytes] = []
        if fl.acks and now >= fl.ack_due:
            acks = sorted(fl.acks.items())
            fl.acks.clear()
            fl.ack_due = INF
            out += wire.ack_packets(acks, instance=instance, sender=sender)
            self.counters["ack_out"] += len(acks)
        due = [u for u in fl.unacked.values() if u.due <= now] if now >= fl.rxmt_due else []
        if (fl.queue or due) and now >= fl.next_send:
            batch = list(fl.queue.values()) + [u.lsa for u in due]
            packets = wire.lsu_packets(batch, instance=instance, sender=sender,
                                       budget=self.p.packet_budget)
            sent = 0  # LSAs of batch that went out
            for pkt in packets:
                if not self._take_token(fl, now):
                    break
                out.append(pkt)
                sent += _lsa_count(pkt)
            for lsa in batch[:sent]:
                u = fl.unacked.get(lsa.origin)
                if u is not None and u.lsa is lsa:  # a retransmission
                    u.tries += 1
                    u.due = now + self._rto(u.tries, srtt_ms)
                    self.counters["lsa_retransmitted"] += 1
                else:
                    fl.queue.pop(lsa.origin, None)
                    fl.unacked[lsa.origin] = Unacked(lsa, now + self._rto(0, srtt_ms), 0)
            self.counters["lsa_out"] += sent
            if sent < len(batch):  # out of budget: the rest when a token is there
                fl.next_send = now + 1.0 / self.p.budget_pps
            else:
                fl.next_send = now + self.p.pace
        if fl.unacked:
            fl.rxmt_due = min(u.due for u in fl.unacked.values())
        else:
            fl.rxmt_due = INF
        return out


def _lsa_count(packet: bytes) -> int:
    """How many LSAs an update carries (its body starts with the count)."""
    return int.from_bytes(packet[wire.HEADER_LEN:wire.HEADER_LEN + 2], "big")
