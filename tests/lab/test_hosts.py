"""Advertised prefixes with real daemons: hosts behind nodes reach each other across the overlay.

The square n1-n2, n2-n4, n1-n3, n3-n4; host h1 on n1, host h2 on n4 (their LANs picked by the lab,
10.210.0.0/24 and 10.210.1.0/24).  Hosts run no overlay software: h1 -> h2 crosses the overlay
purely on the nodes' kernel routes (proto spines) to the prefixes the daemons advertise.
"""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from spines_kr.lab import netns, ops, topology

# hosts sit on a bridge behind their node
pytestmark = [pytest.mark.timeout(240), pytest.mark.needs("veth", "bridge")]
TIMEOUT = 10.0

SQUARE = """\
# n1 - n2
# |     |     h1 behind n1, h2 behind n4
# n3 - n4
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
[[host]]
name = "h1"
attach = "n1"
[[host]]
name = "h2"
attach = "n4"
"""


def ip(*args):
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=True).stdout


@pytest.fixture(scope="module")
def square():
    name = f"sktest{os.urandom(3).hex()}"
    try:
        st = netns.up(topology.parse(SQUARE), name)
        assert ops.wait_converged(st, timeout=15) is not None, "square did not converge"
        yield st
    finally:
        netns.down(name)


def host(st, name):
    return next(h for h in st["hosts"] if h["name"] == name)


def node(st, name):
    return next(n for n in st["nodes"] if n["name"] == name)


def test_every_node_routes_to_the_other_nodes_prefixes(square):
    assert [(n["name"], n["prefixes"]) for n in square["nodes"]] == [
        ("n1", ["10.210.0.0/24"]), ("n2", []), ("n3", []), ("n4", ["10.210.1.0/24"])]
    links = {a.split("/")[0] for ln in square["links"] for a in (ln["a_address"], ln["b_address"])}
    for n in square["nodes"]:
        routes = ops.kernel_routes(n["netns"])
        for other in square["nodes"]:
            for prefix in other["prefixes"] if other is not n else []:
                assert prefix in routes, (n["name"], prefix, routes)
                assert routes[prefix] and set(routes[prefix]) <= links  # across overlay links
        # its own prefix stays the connected route of its LAN, not one of ours
        for prefix in n["prefixes"]:
            assert prefix not in routes


def test_h1_pings_h2_across_the_overlay(square):
    res = ops.ping(square, "h1", "h2", count=3)
    assert res.returncode == 0, res.stdout + res.stderr
    res = ops.ping(square, "h2", "h1", count=3)
    assert res.returncode == 0, res.stdout + res.stderr
    # h1's packets to h2 leave n1 on a spines route over one of its links
    get = ip("-n", node(square, "n1")["netns"], "-j", "route", "get", host(square, "h2")["address"],
             "from", host(square, "h1")["address"], "iif", "lan0")
    assert json.loads(get)[0]["dev"].startswith("to-"), get


def test_udp_probe_h1_to_h2_gets_through(square):
    with ops.Probe(square, "h1", "h2", duration=2.0) as probe:
        res = probe.result()
    assert res["received"] >= 190 and res["lost"] == 0 and res["send_errors"] == 0, res


def test_hosts_run_no_overlay_software(square):
    for h in square["hosts"]:
        assert ip("netns", "pids", h["netns"]).split() == []
        assert ops.kernel_routes(h["netns"]) == {}
        routes = json.loads(ip("-4", "-n", h["netns"], "-j", "route", "show", "table", "all"))
        main = [r for r in routes if r.get("table", "main") == "main"]
        assert sorted(r["dst"] for r in main) == sorted(["default", h["prefix"]])
    # and no daemon was given a LAN address as a link address
    state = json.loads((netns.STATE_ROOT / square["name"] / "state.json").read_text())
    for n in state["nodes"]:
        lan = (n["lan"] or {}).get("address", "/").split("/")[0]
        argv = n["argv"]
        local = [argv[i + 1] for i, a in enumerate(argv) if a == "-I"]
        assert lan not in local and local == n["addresses"]


def test_host_traffic_survives_a_link_failure(square):
    n1 = node(square, "n1")
    prefix = host(square, "h2")["prefix"]
    gw = ops.kernel_routes(n1["netns"])[prefix][0]
    ln = next(ln for ln in square["links"] if gw in (ln["a_address"].split("/")[0],
                                                      ln["b_address"].split("/")[0]))
    peer = ln["b"] if ln["a"] == "n1" else ln["a"]
    ops.carrier(square, "n1", peer, up=False)
    try:
        assert ops.wait(lambda: gw not in ops.kernel_routes(n1["netns"]).get(prefix, [gw]),
                        TIMEOUT) is not None
        res = ops.ping(square, "h1", "h2", count=3)
        assert res.returncode == 0, res.stdout + res.stderr
    finally:
        ops.carrier(square, "n1", peer, up=True)
    assert ops.wait_converged(square, TIMEOUT) is not None
