"""Route choice under Spines' metrics, link emulation and multipath, with real daemons.

The five-node "slow/fast" topology: a 2-hop path n1-n2-n5 with 40 ms per link and a 3-hop path
n1-n3-n4-n5 with 2 ms per link, emulated by the daemons (setlink at lab up).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from spines_kr.daemon.control import request
from spines_kr.lab import netns, ops, topology
from tests.conftest import capabilities, require

pytestmark = [pytest.mark.timeout(240), pytest.mark.needs("veth")]
TIMEOUT = 10.0

SLOW_FAST = """
metric = "{metric}"
[[node]]
name = "n1"
[[node]]
name = "n2"
[[node]]
name = "n3"
[[node]]
name = "n4"
[[node]]
name = "n5"
[[link]]
a = "n1"
b = "n2"
{slow}
[[link]]
a = "n2"
b = "n5"
latency_ms = 40
[[link]]
a = "n1"
b = "n3"
latency_ms = 2
[[link]]
a = "n3"
b = "n4"
latency_ms = 2
[[link]]
a = "n4"
b = "n5"
latency_ms = 2
"""


def lab_of(text: str):
    name = f"sktest{os.urandom(3).hex()}"
    st = netns.up(topology.parse(text), name)
    return name, st


def first_hop(st, src, dst) -> str:
    return ops.path(st, src, dst)[1]


def node(st, name):
    return next(n for n in st["nodes"] if n["name"] == name)


def setlink(st, a, b, **values):
    """Emulate link a->b at a's daemon (as `spines-kr setlink` does)."""
    ln = next(l for l in st["links"] if {l["a"], l["b"]} == {a, b})
    src, dst = (ln["a_address"], ln["b_address"]) if ln["a"] == a else (ln["b_address"], ln["a_address"])
    req = {"cmd": "setlink", "bandwidth_kbps": 0, "latency_ms": 0, "loss_pct": 0, "burst_pct": 0,
           "source": src.split("/")[0], "dest": dst.split("/")[0], **values}
    reply = request(node(st, a)["control_socket"], req)
    assert reply["ok"], reply
    return reply["data"]


@pytest.mark.parametrize("metric, via", [("latency", "n3"), ("distance", "n2")])
def test_latency_prefers_fast_three_hops_distance_the_short_two(metric, via):
    name, st = lab_of(SLOW_FAST.format(metric=metric, slow="latency_ms = 40"))
    try:
        assert ops.wait(lambda: len(ops.path(st, "n1", "n5")) > 1 and first_hop(st, "n1", "n5") == via,
                        15) is not None, ops.path(st, "n1", "n5")
        if metric == "latency":
            # the fast path slows down at run time: the route moves within a few seconds
            setlink(st, "n3", "n4", latency_ms=200)
            setlink(st, "n4", "n3", latency_ms=200)
            assert ops.wait(lambda: first_hop(st, "n1", "n5") == "n2", TIMEOUT) is not None
            shown = request(node(st, "n1")["control_socket"], {"cmd": "show", "what": "links"})["data"]
            to_n3 = next(l for l in shown if l["ifname"] == "to-n3")
            assert to_n3["emulation"]["latency_ms"] == 2 and to_n3["cost"] is not None
    finally:
        netns.down(name)


def test_loss_metric_avoids_a_lossy_two_hop_path():
    text = SLOW_FAST.format(metric="loss", slow="loss_pct = 10").replace("latency_ms = 40", "")
    name, st = lab_of(text)
    try:
        assert ops.wait(lambda: len(ops.path(st, "n1", "n5")) > 1 and first_hop(st, "n1", "n5") == "n3",
                        20) is not None, ops.path(st, "n1", "n5")
        routes = request(node(st, "n1")["control_socket"], {"cmd": "show", "what": "routes"})["data"]
        to_n5 = next(r for r in routes if r["dst"] == node(st, "n5")["logical_id"] + "/32")
        # three clean links cost 1 each (a hello lost under load may add a little); the
        # 10 % link alone would cost about 1,054
        assert to_n5["metric"] == "loss" and 3 <= to_n5["cost"] < 1000
    finally:
        netns.down(name)


SQUARE = """
multipath = true
[[node]]
name = "n1"
[[node]]
name = "n2"
[[node]]
name = "n3"
[[node]]
name = "n4"
[[link]]
a = "n1"
b = "n2"
[[link]]
a = "n2"
b = "n4"
[[link]]
a = "n1"
b = "n3"
[[link]]
a = "n3"
b = "n4"
"""


def tx_packets(ns, ifname) -> int:
    out = json.loads(subprocess.run(["ip", "-n", ns, "-s", "-j", "link", "show", ifname],
                                    capture_output=True, text=True, check=True).stdout)
    return out[0]["stats64"]["tx"]["packets"]


@pytest.mark.needs("multipath")
def test_square_gives_one_multipath_route_and_flows_use_both():
    name, st = lab_of(SQUARE)
    try:
        n1, n4 = node(st, "n1"), node(st, "n4")
        dst = n4["logical_id"] + "/32"
        assert ops.wait(lambda: len(ops.kernel_routes(n1["netns"]).get(dst, [])) == 2, 15) is not None
        before = {i: tx_packets(n1["netns"], i) for i in ("to-n2", "to-n3")}
        # 64 flows (source ports) of 20 datagrams each from n1 to n4
        script = ("import socket\n"
                  "for p in range(64):\n"
                  "    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
                  "    s.bind(('', 40000 + p))\n"
                  f"    [s.sendto(b'x', ('{n4['logical_id']}', 9)) for _ in range(20)]\n")
        subprocess.run(["ip", "netns", "exec", n1["netns"], "python3", "-c", script], check=True)
        sent = {i: tx_packets(n1["netns"], i) - before[i] for i in before}
        assert all(v >= 100 for v in sent.values()), sent  # both next hops carry flows
    finally:
        netns.down(name)


def test_setlink_command_shapes_daemon_and_kernel_traffic_and_exit_clears_it():
    # With netem, one netem qdisc carries bandwidth, latency and loss; without it, bandwidth is
    # tbf and loss an nftables drop (latency then acts on the daemon's own packets only).
    netem = capabilities().has("netem")
    if not netem:
        require("tbf", "nftables")
    name, st = lab_of(SQUARE)
    try:
        n1 = node(st, "n1")
        ln = next(l for l in st["links"] if {l["a"], l["b"]} == {"n1", "n2"})
        src, dst = ln["a_address"].split("/")[0], ln["b_address"].split("/")[0]
        argv, env = netns.exec_argv(name, "n1", [sys.executable, "-m", "spines_kr", "setlink",
                                                 "2000", "5", "3", "0", src, dst])
        env["PYTHONPATH"] = netns.child_env()["PYTHONPATH"]
        out = subprocess.run(argv, env=env, capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        kind = "netem" if netem else "tbf"
        if netem:
            assert "kernel:netem" in out.stdout and "kernel:tbf" not in out.stdout, out.stdout
        else:
            assert "kernel:tbf" in out.stdout and "kernel:nft-drop" in out.stdout, out.stdout
        qdisc = subprocess.run(["ip", "netns", "exec", n1["netns"], "tc", "qdisc", "show", "dev",
                                ln["a_ifname"]], capture_output=True, text=True).stdout
        assert kind in qdisc and "rate 2Mbit" in qdisc, qdisc
        # a link of which this node is neither end is refused with one line, exit 1
        argv[-2] = dst
        bad = subprocess.run(argv, env=env, capture_output=True, text=True)
        assert bad.returncode == 1 and "is this node" in bad.stderr and bad.stderr.count("\n") == 1
        # a clean exit removes the qdisc and the nftables table
        os.kill(n1["pid"], signal.SIGTERM)
        assert ops.wait(lambda: kind not in subprocess.run(
            ["ip", "netns", "exec", n1["netns"], "tc", "qdisc", "show", "dev", ln["a_ifname"]],
            capture_output=True, text=True).stdout, TIMEOUT) is not None
        tables = lambda: subprocess.run(["ip", "netns", "exec", n1["netns"], "nft", "list",
                                         "tables"], capture_output=True, text=True).stdout
        assert ops.wait(lambda: "spines_kr_" not in tables(), TIMEOUT) is not None, tables()
    finally:
        netns.down(name)
