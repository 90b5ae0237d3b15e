"""Reliable and soft-real-time data links with real daemons and emulated loss.

A line a - b - c - d with 5 % loss on every hop, both ways (setlink told to each receiving end:
the daemons lose 5 % of what they receive, their own packets included), and a square a - b - d,
a - c - d for a link that fails silently (an nftables drop) in the middle of a transfer.  The
Python client sends from a session on a to a session on d with each link protocol.

How fast and how late is ``bench/links.py``'s business: nothing here asserts a duration or a
latency (a loaded 2-core machine); every wait is a condition with a generous timeout.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import threading
import time

import pytest

from spines_kr import client
from spines_kr.ctl import request
from spines_kr.lab import netns, ops, topology

pytestmark = [pytest.mark.timeout(600), pytest.mark.needs("veth", "nftables")]
TIMEOUT = 60.0
SQUARE = "".join(f'[[node]]\nname = "{n}"\n' for n in "abcd") + "".join(
    f'[[link]]\na = "{x}"\nb = "{y}"\n' for x, y in (("a", "b"), ("b", "d"), ("a", "c"), ("c", "d")))


def node(st, name):
    return next(n for n in st["nodes"] if n["name"] == name)


def ipc(st, name):
    return os.path.join(st["state_dir"], f"{name}.ipc")


def lossy(st, pairs, loss_pct: float) -> None:
    """setlink at the receiving end of each hop, both ways."""
    for x, y in pairs:
        for src, dst in ((x, y), (y, x)):
            r = request(node(st, dst)["control_socket"], {
                "cmd": "setlink", "source": node(st, src)["logical_id"],
                "dest": node(st, dst)["logical_id"], "bandwidth_kbps": 0, "latency_ms": 0,
                "loss_pct": loss_pct, "burst_pct": 0})
            assert r.get("ok"), r


@pytest.fixture(scope="module")
def line():
    name = f"sktest{os.urandom(3).hex()}"
    try:
        st = netns.up(topology.line("abcd"), name)
        assert ops.wait_converged(st, 30) is not None
        lossy(st, [("a", "b"), ("b", "c"), ("c", "d")], 5)
        assert ops.wait_converged(st, 30) is not None
        yield st
    finally:
        netns.down(name)


class Receiver(threading.Thread):
    """Collects the sequence numbers (first 4 bytes) of what a session on ``dst`` receives."""

    def __init__(self, st, dst: str, port: int, protocol: int) -> None:
        super().__init__(daemon=True)
        self.sock = client.socket(ipc(st, dst), protocol=protocol, timeout=TIMEOUT)
        self.sock.bind(port)
        self.got: list[int] = []
        self.stop = False

    def run(self) -> None:
        self.sock.settimeout(0.5)
        while not self.stop:
            try:
                for m in self.sock.recv_batch():
                    self.got.append(struct.unpack_from("!I", m.payload)[0])
            except TimeoutError:
                continue
            except OSError:
                return

    def close(self) -> None:
        self.stop = True
        self.join(5)
        self.sock.close()


def send(st, src: str, dst: str, port: int, protocol: int, n: int, pace_every: int = 0,
         size: int = 100, until=None) -> None:
    """``n`` numbered messages from a session on ``src`` (a pause of 1 ms every ``pace_every``
    messages: a steady stream rather than one burst); ``until(i)``: called before message i."""
    with client.socket(ipc(st, src), protocol=protocol, timeout=TIMEOUT) as s:
        to = (node(st, dst)["logical_id"], port)
        pad = b"x" * (size - 4)
        for i in range(n):
            if until is not None:
                until(i)
            s.sendto(struct.pack("!I", i) + pad, to)
            if pace_every and i % pace_every == pace_every - 1:
                time.sleep(0.001)


def test_reliable_links_deliver_everything_in_order_over_three_lossy_hops(line):
    rx = Receiver(line, "d", 9301, client.RELIABLE_LINKS)
    rx.start()
    try:
        send(line, "a", "d", 9301, client.RELIABLE_LINKS, 10_000)
        assert ops.wait(lambda: len(rx.got) >= 10_000, TIMEOUT) is not None, len(rx.got)
    finally:
        rx.close()
    assert rx.got == list(range(10_000))  # complete, in order, no duplicate
    shown = request(node(line, "b")["control_socket"], {"cmd": "show", "what": "links"})["data"]
    to_c = next(l for l in shown if l["neighbor_id"] == node(line, "c")["logical_id"])
    assert to_c["reliable"]["retransmissions"] > 0  # the losses were repaired on that hop


def test_soft_real_time_loses_far_fewer_than_best_effort(line):
    delivered = {}
    for protocol, port in ((client.UDP_LINKS, 9302), (client.SOFT_REALTIME_LINKS, 9303)):
        rx = Receiver(line, "d", port, protocol)
        rx.start()
        try:
            send(line, "a", "d", port, protocol, 4000, pace_every=20)
            # wait until nothing more arrives (a lost message never comes)
            last = [-1, time.monotonic()]

            def quiet():
                if len(rx.got) != last[0]:
                    last[:] = [len(rx.got), time.monotonic()]
                return time.monotonic() - last[1] > 2.0
            assert ops.wait(quiet, TIMEOUT) is not None
        finally:
            rx.close()
        assert len(rx.got) == len(set(rx.got))  # never twice
        delivered[protocol] = len(rx.got) / 4000
    best_effort, realtime = delivered[client.UDP_LINKS], delivered[client.SOFT_REALTIME_LINKS]
    # 5 % on each of 3 hops: best effort about 86 %; real time recovers most of the rest
    assert best_effort < 0.95 and realtime > 0.97 and realtime > best_effort + 0.05, delivered


def test_the_flood_tool_takes_the_link_protocol(line):
    """``spines-kr flood send|recv --link reliable`` across the three lossy hops: all of it."""
    recv = subprocess.Popen([sys.executable, "-m", "spines_kr", "flood", "recv", "--link",
                             "reliable", "--ipc", ipc(line, "d"), "9305", "--json", "-t", "30"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=netns.child_env())
    try:
        assert "receiving on" in recv.stderr.readline()
        sent = subprocess.run([sys.executable, "-m", "spines_kr", "flood", "send", "--link",
                               "reliable", "--ipc", ipc(line, "a"), node(line, "d")["logical_id"],
                               "9305", "-n", "2000", "-s", "500", "--json"],
                              capture_output=True, text=True, timeout=120, env=netns.child_env())
        assert sent.returncode == 0, sent.stderr
        out, err = recv.communicate(timeout=120)
        got = json.loads(out)
        assert got["ended"] and got["received"] == got["expected"] == 2000, (got, err)
    finally:
        recv.kill()
        recv.wait(10)
    bad = subprocess.run([sys.executable, "-m", "spines_kr", "flood", "send", "--link", "tcp",
                          "10.100.0.4", "9305"], capture_output=True, text=True,
                         env=netns.child_env())
    assert bad.returncode == 2 and "--link" in bad.stderr and "Traceback" not in bad.stderr


def test_a_link_that_fails_in_the_middle_of_a_reliable_transfer_loses_nothing():
    name = f"sktest{os.urandom(3).hex()}"
    try:
        st = netns.up(topology.parse(SQUARE), name)
        assert ops.wait_converged(st, 30) is not None
        rx = Receiver(st, "d", 9304, client.RELIABLE_LINKS)
        rx.start()
        cut = []

        def cut_at_half(i):
            if i == 3000 and not cut:
                via = ops.path(st, "a", "d")[1]  # the neighbor a's route goes through now
                ops.silent_failure(st, "a", via)
                cut.append(via)
        try:
            send(st, "a", "d", 9304, client.RELIABLE_LINKS, 6000, pace_every=5, until=cut_at_half)
            assert ops.wait(lambda: len(rx.got) >= 6000, TIMEOUT) is not None, len(rx.got)
        finally:
            rx.close()
        assert sorted(rx.got) == list(range(6000))  # nothing lost, nothing twice
        assert ops.path(st, "a", "d")[1] != cut[0]  # it went the other way
    finally:
        netns.down(name)
