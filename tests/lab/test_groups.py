"""Group membership in the kernel: anycast, anypath and the gateway default route, with real
daemons, a host that runs no overlay software, and real pings.

Ring n1-n2, n2-n3, n3-n5, n5-n4, n4-n1 with host h1 behind n1.  Anycast group G is joined by
n2 (one hop from n1) and n3 (two hops); gateways are n2 and n3 as well.

Failovers are waited for with a timeout generous for a loaded machine (``TIMEOUT``); how long
they take is measured by ``bench/groups.py``, never asserted here.
"""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from spines_kr.daemon.control import request
from spines_kr.lab import netns, ops, topology

pytestmark = [pytest.mark.timeout(300), pytest.mark.needs("veth")]
HOSTS = pytest.mark.needs("bridge")  # the lab's host h1 sits on a bridge behind n1
TIMEOUT = 10.0

G = "240.1.1.1"
GW = "240.220.11.1"
TOPO = """
[[node]]
name = "n1"
[[node]]
name = "n2"
groups = ["240.1.1.1", "240.220.11.1"]
[[node]]
name = "n3"
groups = ["240.1.1.1", "240.220.11.1"]
[[node]]
name = "n4"
[[node]]
name = "n5"
[[link]]
a = "n1"
b = "n2"
[[link]]
a = "n2"
b = "n3"
[[link]]
a = "n3"
b = "n5"
[[link]]
a = "n5"
b = "n4"
[[link]]
a = "n4"
b = "n1"
[[host]]
name = "h1"
attach = "n1"
"""


def ip(*args):
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=True).stdout


def node(st, name):
    return next(n for n in st["nodes"] if n["name"] == name)


def owner_of(st, address):
    for l in st["links"]:
        for side in "ab":
            if l[f"{side}_address"].split("/")[0] == address:
                return l[side]
    return None


def answered_by(st, src, dst_addr, table_max=6):
    """The node that delivers dst_addr locally, following the kernel routes from src."""
    here = src
    for _ in range(table_max):
        routes = ops.kernel_routes(node(st, here)["netns"])
        hops = routes.get(dst_addr + "/32")
        if not hops:
            local = ip("-n", node(st, here)["netns"], "-4", "-o", "addr", "show", "dev", "lo")
            return here if f" {dst_addr}/32 " in local else None
        here = owner_of(st, hops[0])
    return None


def ping(st, member, address, count=2):
    ns = next(m["netns"] for m in st["nodes"] + st["hosts"] if m["name"] == member)
    return subprocess.run(["ip", "netns", "exec", ns, "ping", "-c", str(count), "-i", "0.2",
                           "-W", "1", address], capture_output=True, text=True).returncode == 0


def ctl(st, name, cmd, **kw):
    return request(node(st, name)["control_socket"], {"cmd": cmd, **kw})


@pytest.fixture(scope="module")
def lab():
    name = f"sktest{os.urandom(3).hex()}"
    try:
        st = netns.up(topology.parse(TOPO), name)
        assert ops.wait_converged(st, 15) is not None
        yield st
    finally:
        netns.down(name)


@HOSTS
def test_anycast_goes_to_the_nearest_member_and_host_ping_is_answered(lab):
    assert ops.wait(lambda: answered_by(lab, "n1", G) == "n2", TIMEOUT) is not None
    assert ping(lab, "h1", G)
    shown = ctl(lab, "n1", "show", what="groups")["data"]
    g = next(x for x in shown if x["group"] == G)
    assert g["kind"] == "anycast" and g["members"] == [node(lab, "n2")["logical_id"],
                                                         node(lab, "n3")["logical_id"]]
    assert g["route_to"] == [node(lab, "n2")["logical_id"]]


@HOSTS
def test_leave_moves_anycast_to_the_other_member(lab):
    assert ctl(lab, "n2", "leave", group=G)["ok"]
    try:
        assert ops.wait(lambda: answered_by(lab, "n1", G) == "n3", TIMEOUT) is not None
        assert ping(lab, "h1", G)
    finally:
        assert ctl(lab, "n2", "join", group=G)["ok"]
    assert ops.wait(lambda: answered_by(lab, "n1", G) == "n2", TIMEOUT) is not None


@HOSTS
def test_gateway_default_route_goes_to_the_nearest_and_original_comes_back(lab):
    n1 = node(lab, "n1")["netns"]
    # n1's own default route before the overlay gives it one: via n4, another protocol
    gw4 = next(l for l in lab["links"] if {l["a"], l["b"]} == {"n1", "n4"})
    via = (gw4["a_address"] if gw4["a"] == "n4" else gw4["b_address"]).split("/")[0]
    ip("-n", n1, "route", "add", "default", "via", via, "proto", "static", "metric", "1000")
    original = [r for r in json.loads(ip("-n", n1, "-j", "route", "show", "default"))
                if r.get("metric") == 1000]

    def default_via():
        ours = [r for r in json.loads(ip("-n", n1, "-j", "route", "show", "default", "proto", "81"))]
        return owner_of(lab, ours[0]["gateway"]) if ours else None

    assert ops.wait(lambda: default_via() == "n2", TIMEOUT) is not None
    # the nearest gateway's daemon dies: the default moves to the other one (via n4)
    pid = node(lab, "n2")["pid"]
    os.kill(pid, 9)
    try:
        assert ops.wait(lambda: default_via() == "n4", TIMEOUT) is not None
        ctl(lab, "n3", "leave", group=GW)
        assert ops.wait(lambda: default_via() is None, TIMEOUT) is not None
        now = [r for r in json.loads(ip("-n", n1, "-j", "route", "show", "default"))]
        assert now == original  # exactly as it was
    finally:
        lab.update(netns.restart(lab["name"], "n2"))
        ctl(lab, "n3", "join", group=GW)
        ip("-n", n1, "route", "del", "default", "via", via, "proto", "static", "metric", "1000")
    assert ops.wait(lambda: default_via() == "n2", TIMEOUT) is not None


@HOSTS
def test_killed_member_moves_anycast_to_the_other_member(lab):
    assert ops.wait(lambda: answered_by(lab, "n1", G) == "n2", TIMEOUT) is not None
    os.kill(node(lab, "n2")["pid"], 9)
    try:
        assert ops.wait(lambda: answered_by(lab, "n1", G) == "n3", TIMEOUT) is not None
    finally:
        lab.update(netns.restart(lab["name"], "n2"))


ANYPATH = """
anypath = true
[[node]]
name = "n1"
[[node]]
name = "n2"
groups = ["240.1.1.1"]
[[node]]
name = "n3"
groups = ["240.1.1.1"]
[[link]]
a = "n1"
b = "n2"
[[link]]
a = "n1"
b = "n3"
"""


@pytest.mark.needs("multipath")  # one route, both members as next hops
def test_anypath_route_has_both_equal_members():
    name = f"sktest{os.urandom(3).hex()}"
    try:
        st = netns.up(topology.parse(ANYPATH), name)
        n1 = node(st, "n1")["netns"]
        assert ops.wait(lambda: len(ops.kernel_routes(n1).get(G + "/32", [])) == 2,
                        TIMEOUT) is not None
    finally:
        netns.down(name)
