"""The namespace lab's pure parts, without root: the state document's text, the ip batches that
build a lab, the ring-with-chords topology, the route-dump parser and the batch error report."""

from __future__ import annotations

import json
import shutil
import socket
import struct
from collections import Counter

import pytest

from spines_kr.lab import build, daemons, routes, state, topology

HOSTS = topology.parse("""
[[node]]
name = "n1"
[[node]]
name = "n2"
[[link]]
a = "n1"
b = "n2"
[[host]]
name = "h1"
attach = "n1"
""")


def plan(topo, lab="sktestx", **kw):
    return state.plan(topo, lab, daemon=daemons.daemon_argv, **kw)


def test_the_state_text_is_json_with_one_node_or_link_per_line():
    st = plan(topology.ring(12))
    text = state.dumps(st)
    assert json.loads(text) == st
    lines = text.splitlines()
    assert sum(ln.startswith('  {"name": "n') for ln in lines) == 12
    assert sum(ln.startswith('  {"a": ') for ln in lines) == 24
    assert json.loads(state.dumps({"nodes": [], "x": {"y": [1]}})) == {"nodes": [], "x": {"y": [1]}}


def test_the_build_is_four_steps_of_batches():
    st = plan(topology.demo(), "sktesty")
    steps = dict(build.steps(st))
    assert list(steps) == ["namespaces", "sysctls", "links", "addresses"]
    assert steps["namespaces"] == [(None, [f"netns add sktesty-n{i}" for i in range(1, 6)])]
    [(none, sysctls)] = steps["sysctls"]
    assert none is None and len(sysctls) == 5
    assert sysctls[0] == ("netns exec sktesty-n1 sysctl -q -w net.ipv4.ip_forward=1 "
                          "net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.default.rp_filter=0 "
                          "net.ipv4.fib_multipath_hash_policy=1")
    [(none, veths)] = steps["links"]
    assert veths[0] == "link add to-n2 netns sktesty-n1 type veth peer name to-n1 netns sktesty-n2"
    assert len(veths) == 5
    per_ns = dict(steps["addresses"])
    assert list(per_ns) == [f"sktesty-n{i}" for i in range(1, 6)]
    assert per_ns["sktesty-n1"] == ["link set lo up", "addr add 10.100.0.1/32 dev lo",
                                    "addr add 10.200.0.1/30 dev to-n2", "link set to-n2 up",
                                    "addr add 10.200.0.18/30 dev to-n4", "link set to-n4 up"]


def test_hosts_get_a_bridge_port_and_a_namespace_of_their_own():
    st = plan(HOSTS, "sktesty")
    steps = dict(build.steps(st))
    assert steps["namespaces"][0][1][-1] == "netns add sktesty-h1"
    assert len(steps["sysctls"][0][1]) == 2  # nodes only
    assert steps["links"][0][1][-1] == ("link add eth0 netns sktesty-h1 type veth peer name "
                                        "lan-h1 netns sktesty-n1")
    n1 = dict(steps["addresses"])["sktesty-n1"]
    assert n1.index("link add lan0 type bridge") < n1.index("link set lan-h1 master lan0 up")
    assert dict(steps["addresses"])["sktesty-h1"] == [
        "link set lo up", "addr add 10.210.0.2/24 dev eth0", "link set eth0 up",
        "route add default via 10.210.0.1"]


def test_a_joined_lab_builds_only_links_and_lo_addresses():
    base = plan(topology.demo(), "sktestb")
    base["phase"] = "up"
    joined = plan(topology.parse('[[node]]\nname = "n1"\n[[node]]\nname = "n3"\n'
                                 '[[link]]\na = "n1"\nb = "n3"\n', slot=1), "sktestj",
                  join=base, port=8200)
    steps = dict(build.steps(joined))
    assert list(steps) == ["links", "addresses"]
    assert dict(steps["addresses"]) == {
        "sktestb-n1": ["addr add 10.101.0.1/32 dev lo", "addr add 10.201.0.1/30 dev o1-n3",
                       "link set o1-n3 up"],
        "sktestb-n3": ["addr add 10.101.0.2/32 dev lo", "addr add 10.201.0.2/30 dev o1-n1",
                       "link set o1-n1 up"]}


def test_plan_passes_the_daemon_config_only_when_asked():
    st = plan(topology.demo(), "sktestc", daemon_config=True)
    argv = st["nodes"][0]["argv"]
    assert argv[argv.index("-c") + 1] == str(state.STATE_ROOT / "sktestc" / "daemon.toml")
    assert "-c" not in plan(topology.demo())["nodes"][0]["argv"]


@pytest.mark.parametrize("n", [3, 4, 5, 10, 50, 100, 200])
def test_ring_with_chords(n):
    topo = topology.ring(n)
    degree = Counter()
    for ln in topo.links:
        degree.update([ln.a, ln.b])
    assert [x.name for x in topo.nodes] == [f"n{i}" for i in range(1, n + 1)]
    expect = {3: 2, 4: 3}.get(n, 4)
    assert set(degree.values()) == {expect} and len(topo.links) == n * expect // 2
    assert len({frozenset((ln.a, ln.b)) for ln in topo.links}) == len(topo.links)


def test_ring_refuses_what_is_not_a_ring():
    with pytest.raises(topology.TopologyError, match="at least 3"):
        topology.ring(2)
    with pytest.raises(topology.TopologyError, match="chord 9"):
        topology.ring(5, chord=9)
    assert len(topology.ring(8, chord=0).links) == 8


def _rta(kind: int, value: bytes) -> bytes:
    raw = struct.pack("=HH", 4 + len(value), kind) + value
    return raw + b"\0" * (-len(raw) % 4)


def _route(dst: str | None, dst_len: int, proto: int, table: int, *, gw: str | None = None,
           hops=(), seq=1) -> bytes:
    attrs = _rta(routes.RTA_TABLE, struct.pack("=I", table))
    if dst:
        attrs += _rta(routes.RTA_DST, socket.inet_aton(dst))
    if gw:
        attrs += _rta(routes.RTA_GATEWAY, socket.inet_aton(gw))
    if hops:
        mp = b""
        for h in hops:
            inner = _rta(routes.RTA_GATEWAY, socket.inet_aton(h))
            mp += struct.pack("=HBBi", 8 + len(inner), 0, 0, 2) + inner
        attrs += _rta(routes.RTA_MULTIPATH, mp)
    body = routes.RTMSG.pack(socket.AF_INET, dst_len, 0, 0, min(table, 252), proto, 0, 1, 0) + attrs
    return routes.NLMSG.pack(16 + len(body), routes.RTM_NEWROUTE, 2, seq, 0) + body


def test_the_route_dump_parser():
    data = (_route("10.100.0.2", 32, 81, 254, gw="10.200.0.2")
            + _route("10.100.0.3", 32, 81, 254, hops=("10.200.0.6", "10.200.0.2"))
            + _route(None, 0, 81, 254, gw="10.200.0.2")
            + _route("10.50.0.0", 24, 4, 254, gw="10.200.0.2")          # another protocol
            + _route("10.100.0.4", 32, 81, 8200, gw="10.200.0.2")       # another table
            + _route("10.100.0.9", 32, 81, 254, gw="10.200.0.2", seq=7))  # another dump
    out = {}
    assert not routes._parse(data, 254, 81, out, 1)
    assert out == {"10.100.0.2/32": ["10.200.0.2"], "10.100.0.3/32": ["10.200.0.2", "10.200.0.6"],
                   "0.0.0.0/0": ["10.200.0.2"]}
    done = routes.NLMSG.pack(20, routes.NLMSG_DONE, 2, 1, 0) + b"\0" * 4
    assert routes._parse(done, 254, 81, out, 1)
    out = {}
    routes._parse(data, 8200, 81, out, 1)
    assert out == {"10.100.0.4/32": ["10.200.0.2"]}
    out = {}  # destinations only: the table (past 255 only in RTA_TABLE) still counts
    routes._parse(data, 8200, 81, out, 1, gateways=False)
    assert out == {"10.100.0.4/32": []}


@pytest.mark.skipif(not shutil.which("ip"), reason="needs iproute2's ip")
def test_a_failing_batch_line_is_named():
    lines = ["link show dev lo", "link show dev sktestnone0", "link show dev sktestnone1"]
    with pytest.raises(state.LabError) as err:
        build.batch(lines)
    assert str(err.value).startswith("ip -batch: link show dev sktestnone0: ")
    assert "does not exist" in str(err.value)
    problems = build.batch(lines, force=True)
    assert [p.split(": ")[1] for p in problems] == lines[1:]
    assert build.batch(lines[:1]) == []
