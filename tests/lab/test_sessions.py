"""Client sessions across the overlay: the Python client (``spines_kr.client``) on real daemons in
a namespace lab, a line a - b - c - d, so that b is 1 hop from a and d is 3.

The test process reaches each daemon over its IPC socket (a path in the lab's state directory:
``node["ipc"]`` in the lab state; Unix sockets are files, reachable from outside the namespace);
a TCP client runs inside a node's namespace (the session ports are on that namespace's
loopback).  The tools are run as ``python -m spines_kr`` with ``--ipc``.

Groups and routes take the overlay a moment to learn: every wait is a condition with a timeout
(``TIMEOUT``, generous for a loaded machine), never a fixed sleep; how long things take is
``bench/dataplane.py``'s business, never asserted here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from spines_kr import client
from spines_kr.lab import netns, ops, topology

pytestmark = [pytest.mark.timeout(600), pytest.mark.needs("veth")]
TIMEOUT = 15.0
G = "225.7.7.7"  # multicast
ANY = "241.7.7.7"  # anycast


@pytest.fixture(scope="module")
def lab():
    name = f"sktest{os.urandom(3).hex()}"
    try:
        st = netns.up(topology.line("abcd"), name)
        assert ops.wait_converged(st, 30) is not None
        yield st
    finally:
        netns.down(name)


def node(st, name) -> dict:
    """The node as the lab's state file has it (with its "ipc" path, which ``status`` does
    not name yet)."""
    if "_state" not in st:
        with open(os.path.join(st["state_dir"], "state.json")) as f:
            st["_state"] = json.load(f)
    return next(n for n in st["_state"]["nodes"] if n["name"] == name)


def lid(st, name) -> str:
    return node(st, name)["logical_id"]


def session(st, name, **kw) -> client.SpinesSocket:
    return client.socket(node(st, name)["ipc"], timeout=TIMEOUT, **kw)


_marks = iter(range(1_000_000))


def until_delivered(sender, receivers, dest, timeout=TIMEOUT) -> bool:
    """Probe ``dest`` (a node and port, or a group) until each receiver got a probe -- the
    paths are ready -- then drain every receiver up to a mark sent after the last probe."""
    receivers = receivers if isinstance(receivers, list) else [receivers]
    waiting = list(receivers)
    end = time.monotonic() + timeout
    try:
        for r in receivers:
            r.settimeout(0.3)
        while waiting and time.monotonic() < end:
            sender.sendto(b"probe", dest)
            for r in list(waiting):
                try:
                    if r.recv() == b"probe":
                        waiting.remove(r)
                except TimeoutError:
                    pass
        mark = b"mark-%d" % next(_marks)
        sender.sendto(mark, dest)
        for r in receivers:
            r.settimeout(TIMEOUT)
            while not waiting and r.recv() != mark:
                pass
    finally:
        for r in receivers:
            r.settimeout(TIMEOUT)
    return not waiting


def nothing_more(sender, receiver) -> bool:
    """Nothing else is waiting for ``receiver``: a unicast marker is the next message."""
    sender.sendto(b"marker", receiver.getsockname())
    return receiver.recv() == b"marker"


def test_sessions_report_their_node_and_port(lab):
    with session(lab, "a") as s:
        addr, port = s.getsockname()
        assert addr == lid(lab, "a") and 40000 <= port <= 59999


@pytest.mark.parametrize("far", ["b", "d"])  # 1 hop and 3 hops
def test_unicast_across_the_overlay(lab, far):
    with session(lab, "a") as a, session(lab, far) as r:
        r.bind(8400)
        assert until_delivered(a, r, (lid(lab, far), 8400))
        for i in range(50):
            a.sendto(b"m%d" % i, (lid(lab, far), 8400))
        got = [r.recvfrom() for _ in range(50)]
        assert {p for p, _ in got} == {b"m%d" % i for i in range(50)}
        assert {s for _, s in got} == {(lid(lab, "a"), a.port)}
        assert nothing_more(a, r)
        # and back: the receiver answers to the sender's (node, port)
        r.sendto(b"reply", (lid(lab, "a"), a.port))
        assert a.recvfrom() == (b"reply", (lid(lab, far), 8400))


def test_a_50000_byte_message_across_3_hops(lab):
    big = os.urandom(50_000)
    with session(lab, "a") as a, session(lab, "d") as r:
        r.bind(8401)
        assert until_delivered(a, r, (lid(lab, "d"), 8401))
        a.sendto(big, (lid(lab, "d"), 8401))
        got, sender = r.recvfrom()
        assert got == big and sender == (lid(lab, "a"), a.port)


def test_multicast_reaches_sessions_on_two_nodes_exactly_once(lab):
    with session(lab, "a") as a, session(lab, "b") as b, session(lab, "d") as d1, \
            session(lab, "d") as d2:
        for s in (b, d1, d2):
            s.join(G)
        members = {lid(lab, "b"), lid(lab, "d")}
        end = time.monotonic() + TIMEOUT  # the members' LSAs reach a
        while {m for m, _, _ in a.membership(G)} != members and time.monotonic() < end:
            time.sleep(0.05)
        assert {m for m, _, _ in a.membership(G)} == members
        assert until_delivered(a, [b, d1, d2], (G, 8400))
        for i in range(20):
            a.sendto(b"g%d" % i, (G, 8400))
        for s in (b, d1, d2):
            got = [s.recvfrom_dest() for _ in range(20)]
            assert sorted(p for p, _, _ in got) == sorted(b"g%d" % i for i in range(20))
            assert {(snd, dst) for _, snd, dst in got} == {((lid(lab, "a"), a.port), G)}
            assert nothing_more(a, s)  # no duplicate was waiting


def test_anycast_reaches_one_session_of_the_nearest_member(lab):
    with session(lab, "a") as a, session(lab, "b") as b, session(lab, "d") as d:
        b.join(ANY)
        d.join(ANY)
        members = {lid(lab, "b"), lid(lab, "d")}
        end = time.monotonic() + TIMEOUT
        while {m for m, _, _ in a.membership(ANY)} != members and time.monotonic() < end:
            time.sleep(0.05)
        assert until_delivered(a, b, (ANY, 8400))  # b: one hop, d: three
        for i in range(10):
            a.sendto(b"a%d" % i, (ANY, 8400))
        assert sorted(b.recv() for _ in range(10)) == sorted(b"a%d" % i for i in range(10))
        assert nothing_more(a, b) and nothing_more(a, d)


def test_traceroute_gives_the_overlay_path_with_costs(lab):
    with session(lab, "a") as a:
        path = a.traceroute(lid(lab, "d"))
        assert [(n, hops) for n, hops, _ in path] == [(lid(lab, "b"), 1), (lid(lab, "c"), 2),
                                                       (lid(lab, "d"), 3)]
        costs = [c for _, _, c in path]
        assert costs == sorted(costs) and costs[0] > 0
        assert a.traceroute(lid(lab, "a")) == [(lid(lab, "a"), 0, 0)]
        assert a.traceroute("10.255.255.254") == []


def test_a_bind_conflict_and_a_killed_client_leave_the_daemon_serving(lab):
    with session(lab, "b") as holder, session(lab, "a") as a:
        holder.bind(8402)
        with session(lab, "b") as other, pytest.raises(client.SpinesError):
            other.bind(8402)
        code = ("import sys\nfrom spines_kr import client\nfrom spines_kr.wire import session as w\n"
                "s = client.socket(sys.argv[1])\n"
                "f = w.SendTo(1, 8402, bytes(40000)).encode()\n"
                "s._data.sendall(f[:20000])\nprint('half', flush=True)\nsys.stdin.readline()\n")
        p = subprocess.Popen([sys.executable, "-c", code, node(lab, "b")["ipc"]],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            assert p.stdout.readline().strip() == "half"
            p.kill()
        finally:
            p.wait(10)
        assert until_delivered(a, holder, (lid(lab, "b"), 8402))


def test_a_tcp_session_inside_the_namespace(lab):
    """The session ports are on the node's own loopback: a client inside its namespace."""
    code = ("import sys\nfrom spines_kr import client\n"
            "with client.socket(('127.0.0.1', int(sys.argv[1]))) as s:\n"
            "    for i in range(200):\n"
            "        s.sendto(b'tcp', (sys.argv[2], 8403))\n"
            "    s.confirm()\n")
    with session(lab, "b") as r:
        r.bind(8403)
        r.settimeout(1.0)
        got = None
        end = time.monotonic() + TIMEOUT
        while got is None and time.monotonic() < end:  # until the path is there
            subprocess.run(["ip", "netns", "exec", node(lab, "a")["netns"], sys.executable, "-c",
                            code, str(lab["port"]), lid(lab, "b")], check=True, timeout=60)
            try:
                got = r.recvfrom()
            except TimeoutError:
                pass
        assert got is not None and got[0] == b"tcp" and got[1][0] == lid(lab, "a")


def tool(*argv, timeout=60):
    return subprocess.run([sys.executable, "-m", "spines_kr", *argv], capture_output=True,
                          text=True, timeout=timeout, check=False)


def test_the_tools_ping_traceroute_send_recv_flood(lab):
    a_ipc, d_ipc = node(lab, "a")["ipc"], node(lab, "d")["ipc"]
    d = lid(lab, "d")
    echo = subprocess.Popen([sys.executable, "-m", "spines_kr", "ping", "--echo", "--ipc", d_ipc],
                            stderr=subprocess.PIPE, text=True)
    try:
        assert "answering pings" in echo.stderr.readline()
        r = tool("ping", "--ipc", a_ipc, d, "-c", "5", "-i", "0.1", "--json")
        assert r.returncode == 0, r.stderr
        summary = json.loads(r.stdout.splitlines()[-1])
        assert summary["received"] >= 1 and summary["rtt_us_min"] > 0
    finally:
        echo.kill()
        echo.wait(10)
    r = tool("traceroute", "--ipc", a_ipc, d, "--json")
    assert r.returncode == 0, r.stderr
    assert [h["node"] for h in json.loads(r.stdout)["path"]] == [lid(lab, n) for n in "bcd"]
    rcv = subprocess.Popen([sys.executable, "-m", "spines_kr", "recv", "--ipc", d_ipc, "8404",
                            "--count", "1", "--json", "--timeout", "30"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert "listening on" in rcv.stderr.readline()
        r = tool("send", "--ipc", a_ipc, d, "8404", "hello", "d")
        assert r.returncode == 0, r.stderr
        out, _ = rcv.communicate(timeout=60)
        assert json.loads(out)["data"] == "hello d" and rcv.returncode == 0
    finally:
        rcv.kill()
        rcv.wait(10)
    flood = subprocess.Popen([sys.executable, "-m", "spines_kr", "flood", "recv", "--ipc", d_ipc,
                              "8405", "--json", "-t", "20"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert "receiving on" in flood.stderr.readline()
        r = tool("flood", "send", "--ipc", a_ipc, d, "8405", "-n", "2000", "-s", "1000",
                 "-r", "8000", "--json")
        assert r.returncode == 0, r.stderr
        out, _ = flood.communicate(timeout=120)
        got = json.loads(out)
        assert got["expected"] == 2000 and got["ended"] and got["received"] == 2000
    finally:
        flood.kill()
        flood.wait(10)
