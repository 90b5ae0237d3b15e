"""Reliable end-to-end streams (dataplane/stream.py) in simulated time: two ends over a path
that loses, duplicates, reorders and changes its delay, applications that write and read at
their own pace.  Every segment crosses the real codec (``wire.stream``) on its way.

The checks are the stream's promises: every byte once and in order, a window that holds a
fast sender back when the reader is slow (the receiving end never holds more than its buffer),
an orderly close and an abort that both ends see, a dead peer noticed.
"""

from __future__ import annotations

import heapq
import itertools
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spines_kr.dataplane.stream import DONE, LINGER, OPEN, Stream, StreamParams
from spines_kr.wire import stream as ws
from spines_kr.wire.packets import DecodeError

INF = float("inf")


class Path:
    """Segments in flight both ways: loss, duplication, jitter (reordering), a delay that can
    change, an outage (everything lost while it lasts)."""

    def __init__(self, rng, loss=0.0, dup=0.0, delay=0.01, jitter=0.0) -> None:
        self.rng, self.loss, self.dup, self.delay, self.jitter = rng, loss, dup, delay, jitter
        self.q: list = []
        self.seq = itertools.count()
        self.sent = 0
        self.down_until = -1.0

    def put(self, now, to, seg):
        data = seg.encode()
        self.sent += 1
        if now < self.down_until:
            return
        for _ in range(2 if self.rng.random() < self.dup else 1):
            if self.rng.random() < self.loss:
                continue
            at = now + self.delay + self.rng.random() * self.jitter
            heapq.heappush(self.q, (at, next(self.seq), to, data))

    def next_time(self):
        return self.q[0][0] if self.q else INF

    def pop(self):
        at, _, to, data = heapq.heappop(self.q)
        return at, to, ws.Segment.decode(data)


class App:
    """One end's application: writes ``data`` as room allows (in pieces of ``chunk``), closes
    when all is written (if ``close``), reads ``read_rate`` bytes/s (None: at once)."""

    def __init__(self, data=b"", chunk=7000, close=True, read_rate=None) -> None:
        self.data, self.chunk, self.close, self.read_rate = data, chunk, close, read_rate
        self.written = 0
        self.got = bytearray()
        self.unread = 0  # delivered to the app's socket, not yet read
        self.read_at = 0.0
        self.closed = False
        self.max_held = 0

    def feed(self, s: Stream, now: float) -> None:
        while self.written < len(self.data) and s.send_room() > 0 and not s.done:
            n = min(self.chunk, s.send_room(), len(self.data) - self.written)
            s.write(self.data[self.written:self.written + n])
            self.written += n
        if self.close and not self.closed and self.written == len(self.data) and not s.done:
            s.close(now)
            self.closed = True

    def deliver(self, s: Stream, now: float) -> None:
        for chunk in s.take():
            self.got += chunk
            self.unread += len(chunk)
        self.max_held = max(self.max_held, s.unread + s.ooo_bytes)
        if self.read_rate is None:
            n = self.unread
        else:
            n = min(self.unread, int((now - self.read_at) * self.read_rate))
            if n:
                self.read_at = now
            elif not self.unread:
                self.read_at = now
        if n:
            self.unread -= n
            s.consumed(n, now)

    def next_read(self) -> float:
        if self.read_rate is None or not self.unread or not self.read_rate:
            return INF
        return self.read_at + 1500 / self.read_rate


def run(path, app_a, app_b, params=None, until=120.0, on_step=None, conn=0xC0FFEE,
        params_b=None):
    """A connects to B; both run until both are done (or ``until``).  (A, B, end time)."""
    pa = params or StreamParams(mss=1000)
    pb = params_b or pa
    a = Stream.connector(pa, conn, 0.0)
    ends = {"a": a, "b": None}
    apps = {"a": app_a, "b": app_b}
    now = 0.0

    def pump(name):
        s = ends[name]
        if s is None:
            return
        apps[name].feed(s, now)
        for seg in s.poll(now):
            path.put(now, "b" if name == "a" else "a", seg)
        apps[name].deliver(s, now)

    while now < until:
        pump("a")
        pump("b")
        if all(e is not None and e.done for e in ends.values()):
            break
        times = [path.next_time(), until]
        for name, s in ends.items():
            if s is not None:
                times += [s.next_deadline(), apps[name].next_read()]
        now = max(now, min(times))
        for name, s in ends.items():
            if s is not None:
                s.on_timer(now)
        while path.q and path.next_time() <= now:
            at, to, seg = path.pop()
            if ends[to] is None:
                if seg.flags == ws.SYN:
                    ends[to] = Stream.acceptor(pb, seg.conn, seg, at)
                continue
            if ends[to].done:  # what the daemon does for a connection it no longer has
                if not seg.flags & ws.RST:
                    final = ends[to].final_ack()
                    path.put(at, "b" if to == "a" else "a",
                             final if final is not None else
                             ws.Segment(ws.RST | ws.ACK, seg.conn))
                continue
            ends[to].on_segment(seg, at)
            pump(to)
        if on_step:
            on_step(now, ends["a"], ends["b"])
    return ends["a"], ends["b"], now


def payload(n: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(n)


# --- the codec ----------------------------------------------------------------------------------


def test_segment_codec_round_trip_and_golden_bytes():
    seg = ws.Segment(ws.ACK | ws.FIN, 0x01020304, 5, 7, 65536, ((10, 20),), b"xy")
    data = seg.encode()
    assert data == bytes.fromhex(
        "01" "06" "01" "00" "01020304" "0000000000000005" "0000000000000007" "00010000"
        "000000000000000a" "0000000000000014") + b"xy"
    assert ws.Segment.decode(data) == seg
    assert len(ws.Segment(ws.SYN, 1).encode()) == ws.HEADER == 28


@pytest.mark.parametrize("bad,reason", [
    (b"\x01\x02", "short"),
    (bytes.fromhex("02020000") + bytes(24), "version"),
    (bytes.fromhex("01400000") + bytes(24), "malformed"),  # an unknown flag
    (bytes.fromhex("01020001") + bytes(24), "malformed"),  # reserved byte
    (bytes.fromhex("01020500") + bytes(24), "malformed"),  # 5 SACK blocks
    (bytes.fromhex("01020100") + bytes(24) + bytes(8), "short"),
    (bytes.fromhex("01020100") + bytes(24) + (5).to_bytes(8, "big") * 2, "malformed"),
    (bytes.fromhex("01010000") + bytes(24) + b"x", "malformed"),  # SYN with data
    (bytes.fromhex("01080000") + bytes(24) + b"x", "malformed"),  # RST with data
])
def test_segment_decoding_is_strict(bad, reason):
    with pytest.raises(DecodeError) as e:
        ws.Segment.decode(bad)
    assert e.value.reason == reason


# --- delivery -----------------------------------------------------------------------------------


def test_a_clean_path_delivers_everything_in_order_and_closes_both_ways():
    data = payload(300_000)
    app_a, app_b = App(data), App(b"back" * 1000)
    a, b, now = run(Path(random.Random(1)), app_a, app_b)
    assert bytes(app_b.got) == data and bytes(app_a.got) == b"back" * 1000
    assert a.done and b.done and a.error is None and b.error is None
    assert a.eof and b.eof and a.fin_acked and b.fin_acked
    assert a.stats["retransmissions"] == 0 and b.stats["retransmissions"] == 0
    assert a.srtt == pytest.approx(0.02, abs=0.015)


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**32 - 1), st.floats(0, 0.3), st.floats(0, 0.2), st.floats(0, 0.05),
       st.integers(0, 60_000), st.integers(1, 5000))
def test_every_byte_arrives_once_in_order_whatever_the_path_does(seed, loss, dup, jitter, n,
                                                                 chunk):
    data = payload(n, seed)
    app_a, app_b = App(data, chunk=chunk), App()
    # (a handshake given up after 10 s is the stream's promise too, but at 30 % loss each way
    # a few SYNs in a row are lost for one seed in 25: here the path must get through)
    p = StreamParams(mss=1000, connect_timeout=300.0)
    a, b, _ = run(Path(random.Random(seed), loss=loss, dup=dup, jitter=jitter), app_a, app_b,
                  params=p, until=600.0)
    assert bytes(app_b.got) == data
    assert b.eof and a.fin_acked
    assert a.error is None and b.error is None


def test_five_percent_loss_each_way_is_repaired_with_few_retransmissions():
    data = payload(1_000_000)
    app_b = App()
    a, b, _ = run(Path(random.Random(5), loss=0.05, delay=0.02), App(data), app_b)
    assert bytes(app_b.got) == data
    segments = len(data) / 1000
    assert a.stats["retransmissions"] < segments * 0.05 * 1.8
    assert a.stats["timeouts"] < 30


def test_reordering_and_duplication_are_absorbed_without_a_storm():
    data = payload(400_000)
    app_b = App()
    a, b, _ = run(Path(random.Random(3), dup=0.1, jitter=0.03), App(data), app_b)
    assert bytes(app_b.got) == data
    assert b.stats["duplicates"] > 0 and b.stats["out_of_order"] > 0
    assert a.stats["timeouts"] < 10


def test_an_outage_in_the_middle_loses_nothing():
    """A route lost for 2 s (everything dropped, both ways) in the middle of a transfer: the
    stream retransmits after it, nothing is missing, duplicated or reordered."""
    data = payload(600_000)
    path = Path(random.Random(4), delay=0.01)
    app_b = App(read_rate=500_000)  # (the transfer takes a while)
    cut = []

    def step(now, a, b):
        if not cut and b is not None and len(app_b.got) > 200_000:
            path.down_until = now + 2.0
            cut.append(now)

    p = StreamParams(mss=1000, rcv_buf=64_000)
    a, b, end = run(path, App(data), app_b, params=p, on_step=step)
    assert cut and bytes(app_b.got) == data and a.error is None
    assert a.stats["timeouts"] >= 1 and end > cut[0] + 2.0


def test_the_rtt_follows_a_delay_change_without_spurious_retransmissions():
    data = payload(2_000_000)
    path = Path(random.Random(2), delay=0.005)
    seen = {}

    def step(now, a, b):
        if now > 1.0 and "before" not in seen and a.srtt is not None:
            seen["before"] = a.srtt
            path.delay = 0.1  # the route changed to a much longer one
        if now > 4.0 and "after" not in seen:
            seen["after"] = a.srtt

    app_b = App(read_rate=200_000)  # slow enough for the transfer to outlast the change
    a, b, _ = run(path, App(data), app_b, on_step=step)
    assert bytes(app_b.got) == data
    assert seen["before"] < 0.03 and 0.15 < seen["after"] < 0.3
    assert a.stats["retransmissions"] < 20


# --- flow control ----------------------------------------------------------------------------------


def test_a_slow_reader_slows_the_sender_and_the_receiver_holds_at_most_its_buffer():
    p = StreamParams(mss=1000, rcv_buf=64_000, snd_buf=64_000)
    data = payload(500_000)
    app_b = App(read_rate=100_000)  # 100 kB/s: about 5 s
    rates = []

    def step(now, a, b):
        rates.append((now, a.snd_una))

    a, b, end = run(Path(random.Random(6), delay=0.01), App(data), app_b, params=p,
                    on_step=step)
    assert bytes(app_b.got) == data
    assert app_b.max_held <= p.rcv_buf
    assert end > 4.0  # the reader's pace, not the path's (which would take well under 1 s)
    # the sender was held: at 2 s it had not sent much more than was read plus a window
    at2 = max(una for t, una in rates if t <= 2.0)
    assert at2 <= 2.0 * 100_000 + p.rcv_buf + p.mss


def test_a_reader_that_stops_closes_the_window_and_probes_keep_it_alive():
    p = StreamParams(mss=1000, rcv_buf=32_000, keepalive=1.0, dead_after=5.0)
    data = payload(200_000)
    app_b = App(read_rate=0.0)  # reads nothing at first
    opened = []

    def step(now, a, b):
        if now > 20.0 and not opened:
            app_b.read_rate = None  # starts reading
            app_b.deliver(b, now)
            opened.append(now)

    a, b, _ = run(Path(random.Random(7), loss=0.1), App(data), app_b, params=p, on_step=step)
    assert opened and bytes(app_b.got) == data  # 20 s of a zero window: not declared dead
    assert a.error is None and a.stats["probes"] > 0


def test_the_window_update_when_the_reader_resumes_is_sent_at_once():
    p = StreamParams(mss=1000, rcv_buf=20_000, probe_max=30.0)
    data = payload(100_000)
    app_b = App(read_rate=0.0)
    resumed = []

    def step(now, a, b):
        if now > 1.0 and not resumed:
            app_b.read_rate = None
            app_b.deliver(b, now)
            resumed.append(now)

    a, b, end = run(Path(random.Random(8)), App(data), app_b, params=p, on_step=step)
    assert bytes(app_b.got) == data
    assert end < 5.0  # not waiting for a probe (30 s here)


# --- ending -----------------------------------------------------------------------------------


def test_half_close_keeps_the_other_direction_open():
    app_a = App(b"request", close=True)
    app_b = App(b"", close=False)
    states = []

    def step(now, a, b):
        if b is not None and b.eof and not app_b.data:
            app_b.data = b"answer after the request ended" * 100  # B answers after EOF
            app_b.close = True
        states.append(a.state)

    a, b, _ = run(Path(random.Random(9)), app_a, app_b, on_step=step)
    assert bytes(app_b.got) == b"request"
    assert bytes(app_a.got) == b"answer after the request ended" * 100
    assert a.eof and b.eof and a.error is None and b.error is None
    assert LINGER in states  # acknowledges a lost FIN for a while, then done
    assert a.done and b.done


def test_an_abort_is_seen_by_the_other_end_at_once():
    data = payload(300_000)
    app_b = App()
    aborted = []

    def step(now, a, b):
        if not aborted and len(app_b.got) > 50_000:
            a.abort(now)
            aborted.append(now)

    path = Path(random.Random(10))
    a, b, end = run(path, App(data), app_b, on_step=step)
    assert a.error == "aborted" and b.error == "reset" and a.done and b.done
    assert end - aborted[0] < 0.1


def test_a_lost_rst_is_made_up_for_by_the_next_segment():
    """The RST itself is sent once; when it is lost, the peer's next segment reaches a daemon
    that no longer knows the connection (the driver answers RST): here, the peer's keepalive."""
    p = StreamParams(mss=1000, keepalive=1.0)
    a = Stream.connector(p, 5, 0.0)
    syn = a.poll(0.0)[0]
    b = Stream.acceptor(p, 5, syn, 0.01)
    a.on_segment(b.poll(0.01)[0], 0.02)
    b.on_segment(a.poll(0.02)[0], 0.03)
    assert a.state == b.state == OPEN
    a.abort(0.1)
    rst = a.poll(0.1)
    assert [s.flags & ws.RST for s in rst] == [ws.RST] and a.done  # (lost on its way)
    t = b.next_deadline()
    b.on_timer(t)
    probe = b.poll(t)
    assert probe and probe[0].flags & ws.PROBE and 0.9 < t < 1.2


def test_connect_to_nobody_times_out_and_an_rst_answer_is_refused():
    p = StreamParams(connect_timeout=10.0)
    a = Stream.connector(p, 1, 0.0)
    sent = []
    now = 0.0
    while not a.done and now < 30:
        sent += a.poll(now)
        now = a.next_deadline()
        a.on_timer(now)
    assert a.error == "timeout" and 9.9 < now < 10.5
    assert 3 <= len(sent) <= 5 and all(s.flags == ws.SYN for s in sent)
    b = Stream.connector(p, 2, 0.0)
    syn = b.poll(0.0)
    b.on_segment(ws.Segment(ws.RST | ws.ACK, 2), 0.05)
    assert syn and b.error == "refused" and b.done


def test_a_dead_peer_is_noticed():
    p = StreamParams(mss=1000, keepalive=2.0, dead_after=10.0)
    data = payload(50_000)
    path = Path(random.Random(11))

    def step(now, a, b):
        if now > 1.0:
            path.down_until = INF  # the peer's daemon is gone, nothing answers any more

    app_a = App(data, close=False)
    a, b, end = run(path, app_a, App(), params=p, on_step=step, until=60.0)
    assert a.error == "timeout" and b.error == "timeout"
    assert 10.0 <= end < 13.0


def test_an_idle_stream_stays_up_on_keepalives():
    p = StreamParams(keepalive=1.0, dead_after=10.0)
    app_a, app_b = App(b"x", close=False), App(close=False)
    a, b, end = run(Path(random.Random(12), loss=0.2), app_a, app_b, params=p, until=30.0)
    assert a.state == b.state == OPEN and a.error is None
    assert a.stats["probes"] > 10


def test_segments_of_another_connection_are_ignored():
    p = StreamParams()
    a = Stream.connector(p, 1, 0.0)
    a.poll(0.0)
    a.on_segment(ws.Segment(ws.SYN | ws.ACK, 2, window=1000), 0.01)
    assert a.state != OPEN
    a.on_segment(ws.Segment(ws.SYN | ws.ACK, 1, window=1000), 0.01)
    assert a.state == OPEN


def test_congestion_window_backs_off_on_loss_over_best_effort_links():
    p = StreamParams(mss=1000, congestion=True)
    data = payload(500_000)
    app_b = App()
    a, b, _ = run(Path(random.Random(13), loss=0.02, delay=0.02), App(data), app_b, params=p)
    assert bytes(app_b.got) == data
    assert a.stats["loss_episodes"] > 0 and a.cwnd < 500_000


def test_writes_after_close_are_refused():
    a = Stream.connector(StreamParams(), 1, 0.0)
    a.close(0.0)
    with pytest.raises(ValueError):
        a.write(b"late")


def test_done_streams_hold_no_buffers():
    data = payload(100_000)
    app_b = App()
    aborted = []

    def step(now, a, b):
        if not aborted and len(app_b.got) > 10_000:
            a.abort(now)
            aborted.append(now)

    a, b, _ = run(Path(random.Random(14)), App(data), app_b, on_step=step)
    for s in (a, b):
        assert s.state == DONE and not s.inflight and not s.ooo and not len(s._buf)
