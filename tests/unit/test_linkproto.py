"""Reliable and soft-real-time link protocols (dataplane/reliable.py, dataplane/realtime.py) in
simulated time, over a wire that loses, reorders, duplicates and changes its delay.

Every packet crosses the real codec (``wire.links``) on its way, so the 32-bit sequence wrap
and the strict decoding are exercised too.
"""

from __future__ import annotations

import heapq
import itertools
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from spines_kr.dataplane.realtime import RealtimeParams, RealtimeReceiver, RealtimeSender
from spines_kr.dataplane.reliable import ReliableParams, ReliableReceiver, ReliableSender
from spines_kr.wire import data as wdata
from spines_kr.wire import links as wl

INST, A, B = 8101, 1, 2


def rec(i: int, size: int = 100, age: int = 0) -> wdata.Record:
    return wdata.Record(wdata.HOP, 10, 1, 1, A, B, 1, 2, i, 0, i.to_bytes(4, "big") * (size // 4),
                        age)


class Wire:
    """Packets in flight both ways: loss, duplication, jitter (reordering), a delay that can
    change; a packet is bytes through the codec."""

    def __init__(self, rng, loss=0.0, dup=0.0, delay=0.005, jitter=0.0) -> None:
        self.rng, self.loss, self.dup, self.delay, self.jitter = rng, loss, dup, delay, jitter
        self.q: list = []
        self.seq = itertools.count()
        self.sent = 0

    def put(self, now, to, msg):
        pkt = wl.encode(msg, instance=INST, sender=A if to == "b" else B)
        self.sent += 1
        copies = 2 if self.rng.random() < self.dup else 1
        for _ in range(copies):
            if self.rng.random() < self.loss:
                continue
            at = now + self.delay + self.rng.random() * self.jitter
            heapq.heappush(self.q, (at, next(self.seq), to, pkt))

    def next_time(self):
        return self.q[0][0] if self.q else float("inf")

    def pop(self):
        at, _, to, pkt = heapq.heappop(self.q)
        return at, to, wl.decode(pkt, instance=INST)[1]


def run_reliable(n, wire, params=None, until=60.0, accepting=lambda now: True, start_seq=0,
                 on_step=None):
    p = params or ReliableParams(rate_bps=0)
    tx, rx = ReliableSender(p, epoch=7), ReliableReceiver(p)
    tx.una = tx.nxt = start_seq  # (a sequence near the 32-bit wrap)
    rx.epoch, rx.expected = 7, start_seq
    for i in range(n):
        tx.offer([rec(i)])
    got, now = [], 0.0
    while now < until and (len(got) < n or tx.inflight or tx.backlog):
        for seq, records in tx.poll(now):
            wire.put(now, "b", wl.LinkData(wl.RELIABLE, 7, seq, records))
        ack = rx.ack(now, accepting(now))
        if ack is not None:
            wire.put(now, "a", ack)
        t = min(wire.next_time(), tx.next_deadline(now), rx.next_deadline(), until)
        now = max(now, t)
        tx.on_timer(now)
        while wire.q and wire.next_time() <= now:
            at, to, msg = wire.pop()
            if to == "b":
                for records in rx.on_frame(msg, at, accepting(at)):
                    got.extend(int.from_bytes(r.payload[:4], "big") for r in records)
            else:
                tx.on_ack(msg, at)
        if on_step:
            on_step(now, tx, rx)
    return got, tx, rx, now


@settings(max_examples=40)
@given(st.integers(0, 2**32 - 1), st.floats(0, 0.3), st.floats(0, 0.2), st.floats(0, 0.02),
       st.integers(1, 400))
def test_reliable_delivers_everything_once_in_order(seed, loss, dup, jitter, n):
    wire = Wire(random.Random(seed), loss=loss, dup=dup, jitter=jitter)
    got, tx, _rx, _ = run_reliable(n, wire, start_seq=(1 << 32) - 50)
    assert got == list(range(n))
    assert not tx.inflight and not tx.backlog


def test_reliable_five_percent_loss_recovers_on_the_hop_with_few_retransmissions():
    wire = Wire(random.Random(5), loss=0.05, delay=0.010)
    got, tx, _rx, now = run_reliable(10_000, wire)
    assert got == list(range(10_000))
    s = tx.status()
    # about one retransmission per lost frame, not a window's worth
    assert s["retransmissions"] < 10_000 * 0.05 * 1.6
    assert s["timeouts"] < 20


def test_reliable_rate_limit_paces_the_sender():
    p = ReliableParams(rate_bps=8e6, burst=10_000)  # 1 MB/s
    wire = Wire(random.Random(1), delay=0.001)
    got, tx, _rx, now = run_reliable(2000, wire, params=p)  # frames of ~134 bytes: 268 kB
    assert got == list(range(2000))
    assert now >= (2000 * 134 - 10_000) / 1e6 * 0.95


def test_reliable_rtt_follows_the_link_and_a_delay_jump_causes_no_storm():
    wire = Wire(random.Random(2), delay=0.005)
    seen = {}

    def step(now, tx, rx):
        if now > 0.5 and wire.delay < 0.05:
            wire.delay = 0.05  # the path's delay jumps tenfold
        seen["srtt"] = tx.srtt

    p = ReliableParams(rate_bps=1e6)
    got, tx, _rx, _ = run_reliable(2000, wire, params=p, on_step=step, until=120)
    assert got == list(range(2000))
    assert 0.09 < seen["srtt"] < 0.12  # round trip of 2 x 50 ms (+ ack delay)
    assert tx.stats["frames_retransmitted"] < 200  # a spurious timeout or two, no storm


def test_reliable_backpressure_window_zero_stops_the_sender_without_loss():
    wire = Wire(random.Random(3), delay=0.002)
    blocked = lambda now: not (0.05 < now < 1.0)  # the receiver backs up for a second
    sent_during = []

    def step(now, tx, rx):
        if 0.2 < now < 1.0:
            sent_during.append(tx.stats["frames_sent"])

    p = ReliableParams(rate_bps=5e6)
    got, tx, rx, _ = run_reliable(3000, wire, params=p, accepting=blocked, on_step=step)
    assert got == list(range(3000))
    # while backed up only window probes went out (one per RTO at most)
    assert sent_during[-1] - sent_during[0] < 0.8 / p.min_rto + 5


def test_reliable_drain_returns_what_was_not_delivered_in_order():
    p = ReliableParams(rate_bps=0)
    tx = ReliableSender(p, epoch=1)
    for i in range(10):
        tx.offer([rec(i)])
    sent = tx.poll(0.0)
    assert len(sent) == 10
    tx.on_ack(wl.LinkAck(wl.RELIABLE, 1, 4, 100, blocks=((6, 7),)), 0.01)
    left = [int.from_bytes(r.payload[:4], "big") for r in tx.drain()]
    assert left == [4, 5, 7, 8, 9]  # 0..3 acknowledged, 6 selectively
    assert tx.in_flight() == 0 and tx.poll(1.0) == []


def test_reliable_ignores_acks_of_another_epoch_and_nonsense():
    tx = ReliableSender(ReliableParams(rate_bps=0), epoch=1)
    tx.offer([rec(0)])
    tx.poll(0.0)
    assert tx.on_ack(wl.LinkAck(wl.RELIABLE, 2, 1, 10), 0.01) == 0  # a stale epoch
    assert tx.on_ack(wl.LinkAck(wl.RELIABLE, 1, 1000, 10), 0.01) == 0  # beyond what was sent
    assert tx.inflight


def test_reliable_receiver_restarts_on_a_new_epoch():
    p = ReliableParams()
    rx = ReliableReceiver(p)
    assert rx.on_frame(wl.LinkData(wl.RELIABLE, 1, 0, (rec(0),)), 0.0)
    assert rx.on_frame(wl.LinkData(wl.RELIABLE, 1, 1, (rec(1),)), 0.0)
    # the neighbor restarted: a new epoch starts at 0 again and is delivered
    assert rx.on_frame(wl.LinkData(wl.RELIABLE, 9, 0, (rec(5),)), 0.0)
    assert rx.ack(1.0).epoch == 9


# --- soft real time ---------------------------------------------------------------------------


def run_realtime(n, wire, params=None, interval=0.001, retry_after=0.025):
    p = params or RealtimeParams()
    tx, rx = RealtimeSender(p, epoch=3), RealtimeReceiver(p)
    out = {}  # message -> (delivered at, sent at, age)
    sent_at = {}
    now, i = 0.0, 0
    while i < n or wire.q:
        t_send = i * interval if i < n else float("inf")
        now = min(t_send, wire.next_time(), rx.next_deadline())
        if now == rx.next_deadline():
            nack = rx.poll(now, retry_after)
            if nack is not None:
                wire.put(now, "a", nack)
            continue
        if now == t_send:
            r = rec(i)
            sent_at[i] = now
            seq = tx.send([r], now)
            wire.put(now, "b", wl.LinkData(wl.REALTIME, 3, seq, (r,)))
            i += 1
            continue
        at, to, msg = wire.pop()
        if to == "b":
            records, nack = rx.on_frame(msg, at, retry_after)
            for r in records:
                k = int.from_bytes(r.payload[:4], "big")
                assert k not in out, "delivered twice"
                out[k] = (at, sent_at[k], r.age)
            if nack is not None:
                wire.put(at, "a", nack)
        else:
            for seq, records in tx.on_nack(msg, at):
                wire.put(at, "b", wl.LinkData(wl.REALTIME, 3, seq, records))
    return out, tx, rx


def test_realtime_recovers_most_losses_within_the_budget_and_nothing_later():
    wire = Wire(random.Random(7), loss=0.05, delay=0.010, jitter=0.002)
    out, tx, rx = run_realtime(10_000, wire)
    delivered = len(out) / 10_000
    assert delivered > 0.997  # best effort would give about 0.95; one request alone ~0.995
    budget = RealtimeParams().budget_ms / 1000
    for k, (at, sent, age) in out.items():
        assert at - sent <= 0.012 + budget + 1e-9  # path latency (+ jitter) + budget
        assert age <= RealtimeParams().budget_ms
    assert rx.stats["nacks_out"] == rx.stats["nacks_out"]  # one per missing frame (below)
    assert tx.stats["nacks_in"] <= rx.stats["nacks_out"]


def test_realtime_asks_once_per_gap_and_retransmissions_are_capped():
    p = RealtimeParams(retransmit_share=0.1)
    wire = Wire(random.Random(8), loss=0.3, delay=0.005)
    out, tx, rx = run_realtime(5000, wire, params=p)
    sent_bytes = tx.stats["frames_sent"] * (100 + wdata.RECORD_HEADER + wl.DATA_HEADER)
    resent = tx.stats["retransmissions"] * (100 + wdata.RECORD_HEADER + wl.DATA_HEADER)
    assert resent <= 0.1 * sent_bytes + p.burst
    assert tx.stats["capped"] > 0
    assert rx.stats["nacks_out"] <= 5000  # a frame asked for once ...
    assert rx.stats["nacks_again"] <= rx.stats["nacks_out"]  # ... and at most once more


def test_realtime_never_retransmits_past_the_budget():
    p = RealtimeParams(history=1.0, budget_ms=20)
    tx = RealtimeSender(p, epoch=1)
    seq = tx.send([rec(0, age=15)], 0.0)
    assert tx.on_nack(wl.LinkAck(wl.REALTIME, 1, 1, nacks=(seq,)), 0.010) == []  # 15 + 10 > 20
    seq = tx.send([rec(1, age=5)], 0.0)
    (s, records), = tx.on_nack(wl.LinkAck(wl.REALTIME, 1, 1, nacks=(seq,)), 0.010)
    assert records[0].age == 15
    (s, records), = tx.on_nack(wl.LinkAck(wl.REALTIME, 1, 1, nacks=(seq,)), 0.012)  # again
    assert records[0].age == 17  # its age counts from the first transmission
    assert tx.on_nack(wl.LinkAck(wl.REALTIME, 1, 1, nacks=(seq,)), 0.013) == []  # not thrice
    rx = RealtimeReceiver(p)
    got, _ = rx.on_frame(wl.LinkData(wl.REALTIME, 1, 0, (rec(2, age=25),)), 0.0)
    assert got == [] and rx.stats["late_records"] == 1


ack_ops = st.lists(st.tuples(
    st.sampled_from(["offer", "poll", "ack", "ack0", "sack", "wait", "timer"]),
    st.integers(0, 40), st.floats(0, 0.3)), max_size=80)


@settings(max_examples=200)
@given(ack_ops, st.floats(0, 5e6))
def test_reliable_sender_deadline_always_means_work(steps, rate):
    """After the sender ran its timer and sent what it could, its deadline is in the future:
    the daemon's loop never spins on it (window probes, tokens, timeouts, whatever the acks)."""
    tx = ReliableSender(ReliableParams(rate_bps=rate, max_window=64, init_cwnd=4), epoch=1)
    now = 0.0
    for op, k, dt in steps:
        if op == "offer":
            for i in range(k % 8 + 1):
                tx.offer([rec(i)])
        elif op == "wait":
            now += dt
        elif op in ("ack", "ack0", "sack"):
            cum = tx.una + (k % (tx.nxt - tx.una + 1))
            blocks = ((cum + 1, min(tx.nxt, cum + 1 + k % 5)),) if op == "sack" and \
                cum + 1 < tx.nxt else ()
            tx.on_ack(wl.LinkAck(wl.RELIABLE, 1, cum & wl.MASK, 0 if op == "ack0" else 64,
                                 blocks=tuple((a & wl.MASK, b & wl.MASK) for a, b in blocks)),
                      now)
        else:
            now = max(now, min(tx.next_deadline(now), now + 5))
            tx.on_timer(now)
            tx.poll(now)
            assert tx.next_deadline(now) > now
