"""Reliable streams (Spines' RELIABLE_STREAM_SESSION) between real daemons: the Python stream
client on a ring a - b - c - d - f - e - a, so that d is 3 hops from a both ways round (the
stream's segments take either: equal-cost paths) and a link of the path can fail while another
route exists.

Each end is a session on its node's daemon (IPC paths in the lab's state directory).  Nothing
here asserts a duration or a rate (a loaded 2-core machine): every wait is a condition with a
generous timeout; throughput is measured by hand (see the closing note of the stream work).
"""

from __future__ import annotations

import hashlib
import os
import threading

import pytest

from spines_kr import client
from spines_kr.ctl import request
from spines_kr.lab import netns, ops, topology

pytestmark = [pytest.mark.timeout(300), pytest.mark.needs("veth", "nftables")]
TIMEOUT = 60.0
RING = "".join(f'[[node]]\nname = "{n}"\n' for n in "abcdef") + "".join(
    f'[[link]]\na = "{x}"\nb = "{y}"\n'
    for x, y in (("a", "b"), ("b", "c"), ("c", "d"), ("a", "e"), ("e", "f"), ("f", "d")))
SND_BUF = RCV_BUF = 1 << 20  # the stream's buffers at each end (StreamParams' defaults)


@pytest.fixture(scope="module")
def ring():
    name = f"sktest{os.urandom(3).hex()}"
    try:
        st = netns.up(topology.parse(RING), name)
        assert ops.wait_converged(st, 60) is not None
        yield st
    finally:
        netns.down(name)


def node(st, name) -> dict:
    return next(n for n in st["nodes"] if n["name"] == name)


def ipc(st, name) -> str:
    return os.path.join(st["state_dir"], f"{name}.ipc")


def status(st, name) -> dict:
    r = request(node(st, name)["control_socket"], {"cmd": "show", "what": "status"})
    assert r.get("ok"), r
    return r["data"]


def streams(st, name) -> list[dict]:
    return status(st, name)["data_plane"]["sessions"]["streams"]["streams"]


def counters(st, name) -> dict:
    return status(st, name)["data_plane"]["sessions"]["streams"]


class Thread(threading.Thread):
    def __init__(self, fn) -> None:
        super().__init__(daemon=True)
        self.fn, self.result, self.error = fn, None, None
        self.start()

    def run(self) -> None:
        try:
            self.result = self.fn()
        except BaseException as e:  # noqa: BLE001 - handed to the test
            self.error = e

    def get(self, timeout: float = TIMEOUT):
        self.join(timeout)
        assert not self.is_alive(), "did not finish in time"
        if self.error is not None:
            raise self.error
        return self.result


def pair(st, src: str, dst: str, port: int):
    """(the connecting stream on ``src``, the accepted one on ``dst``, the listener)."""
    L = client.stream_socket(ipc(st, dst), timeout=TIMEOUT)
    L.bind(port)
    L.listen()
    acc = Thread(lambda: L.accept()[0])
    s = client.stream_socket(ipc(st, src), timeout=TIMEOUT)
    s.connect((node(st, dst)["logical_id"], port))
    return s, acc.get(), L


def read_all(sock) -> bytes:
    buf = bytearray()
    while d := sock.recv(1 << 20):
        buf += d
    return bytes(buf)


def done(st, *names) -> bool:
    return all(not streams(st, n) for n in names)


def test_a_megabyte_and_more_through_three_hops_intact_and_in_order(ring):
    data = os.urandom(3_000_000)
    s, c, L = pair(ring, "a", "d", 9100)
    with s, c, L:
        rx = Thread(lambda: read_all(c))
        s.sendall(data)
        s.shutdown()  # the receiver reads EOF after the last byte
        got = rx.get()
        assert len(got) == len(data) and hashlib.sha256(got).digest() == \
            hashlib.sha256(data).digest()
        c.sendall(b"done")
        c.close()
        assert read_all(s) == b"done"
    assert ops.wait(lambda: done(ring, "a", "d"), TIMEOUT) is not None
    assert counters(ring, "d")["streams.ended.closed"] >= 1


def test_a_slow_reader_holds_the_sender_and_the_daemons_memory(ring):
    """The receiving application does not read: the window shuts, the sending daemon's
    buffer fills, the sender blocks in its socket; the daemons hold their buffers and no
    more (the transit daemons nothing); then it reads, and everything arrives."""
    data = os.urandom(20_000_000)
    rss_before = {n: status(ring, n)["rss_bytes"] for n in "ad"}
    s, c, L = pair(ring, "a", "d", 9101)
    with s, c, L:
        sent = [0]

        def send():
            for i in range(0, len(data), 1 << 16):
                s.sendall(data[i:i + (1 << 16)])
                sent[0] = i + (1 << 16)
            s.shutdown()

        tx = Thread(send)

        def held():
            a, d = streams(ring, "a"), streams(ring, "d")
            return a and d and d[0]["window"] == 0 and a[0]["buffered"] >= SND_BUF // 2

        assert ops.wait(held, TIMEOUT) is not None
        a, d = streams(ring, "a")[0], streams(ring, "d")[0]
        assert a["buffered"] <= SND_BUF and d["unread"] + d["out_of_order_bytes"] <= RCV_BUF
        assert tx.is_alive() and sent[0] < 8_000_000  # blocked: buffers, not the whole
        for n in "bcef":  # the transit daemons hold nothing of it
            links = status(ring, n)["data_plane"]["forwarding"]
            assert links.get("reassembly_bytes", 0) < 1 << 20
        growth = {n: status(ring, n)["rss_bytes"] - rss_before[n] for n in "ad"}
        assert all(g < 64 << 20 for g in growth.values()), growth
        got = read_all(c)
        tx.get()
        assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest()


def frames_from_a(st) -> dict[str, int]:
    """Reliable frames a sent to each neighbor so far (``show links``)."""
    names = {node(st, n)["logical_id"]: n for n in "abcdef"}
    r = request(node(st, "a")["control_socket"], {"cmd": "show", "what": "links"})
    return {names[l["neighbor_id"]]: l.get("reliable", {}).get("frames_sent", 0)
            for l in r["data"]}


def test_a_link_cut_in_the_middle_loses_and_duplicates_nothing(ring):
    """The stream's path (a - b - c - d or a - e - f - d: it keeps to one) loses its middle
    link silently (an nftables drop) with a megabyte delivered: the daemons notice, the
    reliable links hand over what the dead one held, the stream repairs the rest; the
    application sees every byte once, in order, and the stream moves to the other side."""
    data = os.urandom(6_000_000)
    after = {"b": "c", "e": "f"}
    before = frames_from_a(ring)
    s, c, L = pair(ring, "a", "d", 9102)
    cut = []
    try:
        with s, c, L:
            got = bytearray()

            def receive():
                while d := c.recv(1 << 16):
                    got.extend(d)
                    if not cut and len(got) > 1_000_000:  # in the middle: cut its path
                        now = frames_from_a(ring)
                        first = max(after, key=lambda n: now.get(n, 0) - before.get(n, 0))
                        ops.silent_failure(ring, first, after[first])
                        cut.append((first, after[first], now))
                return bytes(got)

            rx = Thread(receive)
            for i in range(0, len(data), 1 << 16):
                s.sendall(data[i:i + (1 << 16)])
            s.shutdown()
            result = rx.get(TIMEOUT * 2)
            assert cut, "the link was never cut"
            assert len(result) == len(data) and result == data  # nothing lost, twice, moved
            c.close()
            assert read_all(s) == b""
        first, _, at_cut = cut[0]
        other = "e" if first == "b" else "b"
        assert frames_from_a(ring)[other] > at_cut.get(other, 0)  # it went the other way
    finally:
        for x, y, _ in cut:
            ops.silent_failure(ring, x, y, on=False)
        assert ops.wait_converged(ring, 60) is not None


def test_an_orderly_close_and_an_abort_are_seen_by_both_ends(ring):
    # orderly: each end reads the other's EOF after everything it sent
    s, c, L = pair(ring, "a", "d", 9103)
    with s, c, L:
        s.sendall(b"bye")
        s.shutdown()
        assert read_all(c) == b"bye"
        c.sendall(b"bye too")
        c.close()
        assert read_all(s) == b"bye too"
    assert ops.wait(lambda: done(ring, "a", "d"), TIMEOUT) is not None
    # abort from either end: the other's recv raises
    for aborting in ("a", "d"):
        s, c, L = pair(ring, "a", "d", 9104 if aborting == "a" else 9105)
        with s, c, L:
            s.sendall(b"x" * 10_000)
            assert len(c.recv(10_000)) > 0
            me, other = (s, c) if aborting == "a" else (c, s)
            me.abort()
            with pytest.raises(ConnectionResetError):
                while other.recv(1 << 16):
                    pass
        assert ops.wait(lambda: done(ring, "a", "d"), TIMEOUT) is not None
    assert counters(ring, "a")["streams.ended.aborted"] >= 1
    assert counters(ring, "d")["streams.ended.reset"] >= 1


def test_a_connect_to_a_port_nobody_listens_on_is_refused(ring):
    with client.stream_socket(ipc(ring, "a"), timeout=TIMEOUT) as s:
        with pytest.raises(ConnectionRefusedError):
            s.connect((node(ring, "d")["logical_id"], 9199))
    assert counters(ring, "d")["streams.refused"] >= 1
