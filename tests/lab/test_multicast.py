"""Kernel multicast across the overlay, stock kernel: hosts that joined a group by IGMP receive
a host's stream exactly once; a non-member's LAN gets nothing; a leave prunes the tree.

Ring n1-n2, n2-n3, n3-n5, n5-n4, n4-n1; hosts h1 (sender) on n1, h3 on n3, h5 on n5, h4 on n4.
Needs the kernel's IPv4 multicast routing (the daemons run with -k 2) and bridges (the hosts'
LANs).  Waits have a timeout generous for a loaded machine; how fast membership converges is a
benchmark's business, never asserted here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from spines_kr.lab import netns, ops, topology

pytestmark = [pytest.mark.timeout(240), pytest.mark.needs("multicast_routing", "veth", "bridge")]
TIMEOUT = 10.0
M = "239.1.2.3"
PORT = 5999
TOPO = "kernel_levels = [0, 1, 2]\n" + topology.DEMO_TOPOLOGY + """
[[host]]
name = "h1"
attach = "n1"
[[host]]
name = "h3"
attach = "n3"
[[host]]
name = "h4"
attach = "n4"
[[host]]
name = "h5"
attach = "n5"
"""

RECEIVER = r"""
import socket, struct, sys, time
g, port, secs = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((g, port))
s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, struct.pack("4s4s", socket.inet_aton(g), bytes(4)))
print("ready", flush=True)
seen = []
end = time.monotonic() + secs
s.settimeout(0.2)
while time.monotonic() < end:
    try:
        seen.append(int(s.recv(64).split()[0]))
    except TimeoutError:
        pass
print(" ".join(map(str, seen)), flush=True)
"""

SENDER = r"""
import socket, sys, time
g, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 16)
for i in range(n):
    s.sendto(f"{i} x".encode(), (g, port))
    time.sleep(0.01)  # pacing: about 100 packets/s (not a wait for anything)
"""


def member(st, name):
    return next(m for m in st["nodes"] + st["hosts"] if m["name"] == name)


def run_in(st, name, script, *args, **kw):
    return subprocess.Popen(["ip", "netns", "exec", member(st, name)["netns"], sys.executable,
                             "-c", script, *map(str, args)], stdout=subprocess.PIPE, text=True, **kw)


def rx_multicast(st, name):
    out = json.loads(subprocess.run(["ip", "-n", member(st, name)["netns"], "-s", "-j", "link",
                                     "show", "eth0"], capture_output=True, text=True).stdout)
    return out[0]["stats64"]["rx"]["multicast"]


def mroute(st, name):
    return subprocess.run(["ip", "-n", member(st, name)["netns"], "mroute", "show"],
                          capture_output=True, text=True).stdout


def test_stream_reaches_each_member_once_and_no_one_else():
    name = f"sktest{os.urandom(3).hex()}"
    procs = []
    try:
        st = netns.up(topology.parse(TOPO), name)
        assert ops.wait_converged(st, 15) is not None
        recv = {h: run_in(st, h, RECEIVER, M, PORT, 6) for h in ("h3", "h5")}
        procs += recv.values()
        for p in recv.values():
            assert p.stdout.readline().strip() == "ready"
        # the IGMP proxies make n3 and n5 members; the membership floods to n1
        from spines_kr.daemon.control import request
        def members():
            data = request(member(st, "n1")["control_socket"], {"cmd": "show", "what": "groups"})["data"]
            return next((g["members"] for g in data if g["group"] == M), [])
        assert ops.wait(lambda: len(members()) == 2, TIMEOUT) is not None, members()
        h4_before = rx_multicast(st, "h4")
        sender = run_in(st, "h1", SENDER, M, PORT, 200)
        procs.append(sender)
        sender.wait(timeout=30)
        # while the receivers still run, the transit node towards n3 holds the (S, M) entry
        h1 = member(st, "h1")["address"]
        entry = lambda: next((l for l in mroute(st, "n2").splitlines()
                              if f"({h1},{M})" in l.replace(" ", "")), "")
        assert "to-n3" in entry(), mroute(st, "n2")
        got = {h: p.communicate(timeout=30)[0].split() for h, p in recv.items()}
        for h, seq in got.items():
            assert len(seq) == len(set(seq)), f"{h} got duplicates"
            assert len(seq) >= 190, f"{h} got {len(seq)} of 200"  # the first may race the tree
        assert rx_multicast(st, "h4") - h4_before < 5  # nothing for a non-member's LAN
        # the receivers have exited (IGMP leaves): the membership goes and the transit node
        # prunes its copy towards n3
        assert ops.wait(lambda: members() == [], TIMEOUT) is not None, members()
        assert ops.wait(lambda: entry() and "to-n3" not in entry(), TIMEOUT) is not None, entry()
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        netns.down(name)
