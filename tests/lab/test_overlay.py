"""Real daemons in a namespace lab: the 5-node ring n1-n2, n2-n3, n3-n5, n5-n4, n4-n1.

Real packets (ping, UDP probes), real failures (an nftables drop with the interface up; a
carrier loss with ``ip link set down``), real restarts.  One lab for the module; each test
leaves it healed and converged.  Waits have a timeout generous for a loaded machine; how long an
outage lasts is ``bench/failover.py``'s figure (silent_gap_ms, carrier_gap_ms), never asserted.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from spines_kr.lab import netns, ops, topology

pytestmark = [pytest.mark.timeout(240), pytest.mark.needs("veth")]
TIMEOUT = 10.0
REROUTED = ["n1", "n4", "n5", "n3"]  # n1 -> n3 without the link n1-n2


def ip(*args):
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=True).stdout


def other_routes(st):
    """Every route in every table of every node that is not ours."""
    out = {}
    for n in st["nodes"]:
        rs = json.loads(ip("-4", "-n", n["netns"], "-j", "route", "show", "table", "all") or "[]")
        out[n["name"]] = sorted(json.dumps(r, sort_keys=True) for r in rs if r.get("protocol") != "spines"
                                and r.get("protocol") != "81")
    return out


@pytest.fixture(scope="module")
def ring():
    name = f"sktest{os.urandom(3).hex()}"
    try:
        st = netns.up(topology.demo(), name)
        assert ops.wait_converged(st, timeout=15) is not None, "ring did not converge"
        # A route of another protocol, which we must never touch.
        n1 = st["nodes"][0]
        # via n4, over a link no test fails (a downed interface takes its routes with it)
        n14 = next(l for l in st["links"] if {l["a"], l["b"]} == {"n1", "n4"})
        gw = (n14["a_address"] if n14["a"] == "n4" else n14["b_address"]).split("/")[0]
        ip("-n", n1["netns"], "route", "add", "192.0.2.0/24", "via", gw, "proto", "static")
        st["_others"] = other_routes(st)
        yield st
    finally:
        netns.down(name)


def node(st, name):
    return next(n for n in st["nodes"] if n["name"] == name)


def ping(st, src, dst, count=3):
    return subprocess.run(["ip", "netns", "exec", node(st, src)["netns"], "ping", "-c", str(count),
                           "-i", "0.2", "-W", "1", node(st, dst)["logical_id"]],
                          capture_output=True, text=True)


def healed(st):
    assert ops.wait(lambda: ops.path(st, "n1", "n3") == ["n1", "n2", "n3"], TIMEOUT) is not None
    assert ops.wait_converged(st, TIMEOUT) is not None


def flows(st, src="n1", dst="n3"):
    """A one-second UDP probe src -> dst, taken once the overlay has converged, loses nothing."""
    assert ops.wait_converged(st, TIMEOUT) is not None
    with ops.Probe(st, src, dst, duration=1.0) as probe:
        res = probe.result()
    assert res["received"] == res["sent"] and res["lost"] == 0 and res["send_errors"] == 0, res


def test_every_node_has_a_spines_route_to_every_other(ring):
    assert ops.converged(ring)
    for n in ring["nodes"]:
        routes = ops.kernel_routes(n["netns"])
        assert len(routes) == 4
    # and the iproute2 name file is installed, so `proto spines` is a name
    out = ip("-n", node(ring, "n1")["netns"], "route", "show", "proto", "spines")
    assert out.count("proto spines") == 0 and len(out.splitlines()) == 4


def test_ping_across_two_hops_goes_via_n2(ring):
    assert ops.path(ring, "n1", "n3") == ["n1", "n2", "n3"]
    res = ping(ring, "n1", "n3")
    assert res.returncode == 0, res.stdout + res.stderr
    # the kernel chose our route, with our logical ID as source
    get = ip("-n", node(ring, "n1")["netns"], "route", "get", node(ring, "n3")["logical_id"])
    assert "src " + node(ring, "n1")["logical_id"] in get


def test_show_routes_agrees_with_the_kernel(ring):
    argv, env = netns.exec_argv(ring["name"], "n1", [sys.executable, "-m", "spines_kr", "show",
                                                      "routes", "--json"])
    env = {**env, **{"PYTHONPATH": netns.child_env()["PYTHONPATH"]}}
    shown = json.loads(subprocess.run(argv, env=env, capture_output=True, text=True, check=True).stdout)
    kernel = ops.kernel_routes(node(ring, "n1")["netns"])
    assert {r["dst"]: sorted(h["gateway"] for h in r["nexthops"]) for r in shown} == kernel
    assert all(r["installed"] for r in shown)


@pytest.mark.needs("nftables")  # the silent failure: an nftables drop, interface up
def test_silent_failure_is_rerouted_and_traffic_flows(ring):
    assert ops.path(ring, "n1", "n3") == ["n1", "n2", "n3"]
    ops.silent_failure(ring, "n1", "n2")
    try:
        assert ops.wait(lambda: ops.path(ring, "n1", "n3") == REROUTED, TIMEOUT) is not None
        flows(ring)
    finally:
        ops.silent_failure(ring, "n1", "n2", on=False)
    healed(ring)


def test_carrier_loss_is_rerouted_and_traffic_flows(ring):
    assert ops.path(ring, "n1", "n3") == ["n1", "n2", "n3"]
    ops.carrier(ring, "n1", "n2", up=False)
    try:
        assert ops.wait(lambda: ops.path(ring, "n1", "n3") == REROUTED, TIMEOUT) is not None
        flows(ring)
    finally:
        ops.carrier(ring, "n1", "n2", up=True)
    healed(ring)


def test_route_deleted_by_hand_is_restored(ring):
    ns = node(ring, "n1")["netns"]
    dst = node(ring, "n3")["logical_id"] + "/32"
    ip("-n", ns, "route", "del", dst, "proto", "spines")
    assert ops.wait(lambda: dst in ops.kernel_routes(ns), TIMEOUT) is not None


def test_sigkill_and_restart_converges_to_the_same_tables(ring):
    before = {n["name"]: ops.kernel_routes(n["netns"]) for n in ring["nodes"]}
    netns.restart(ring["name"], "n3", kill=True)
    same = lambda: {n["name"]: ops.kernel_routes(n["netns"]) for n in ring["nodes"]} == before
    assert ops.wait(same, TIMEOUT) is not None
    # nothing stale once the restart hold is over
    argv, env = netns.exec_argv(ring["name"], "n3", [sys.executable, "-m", "spines_kr", "show",
                                                      "status", "--json"])
    env["PYTHONPATH"] = netns.child_env()["PYTHONPATH"]
    status = lambda: json.loads(subprocess.run(argv, env=env, capture_output=True, text=True).stdout or "{}")
    assert ops.wait(lambda: status().get("restart_hold") is False, TIMEOUT) is not None
    assert same()


def test_clean_exit_withdraws_routes_and_overlay_reroutes(ring):
    n2 = node(ring, "n2")
    os.kill(n2["pid"], signal.SIGTERM)  # the daemon the lab started (pid from its status)
    try:
        assert ops.wait(lambda: not ops.kernel_routes(n2["netns"]), TIMEOUT) is not None
        assert ops.wait(lambda: ops.path(ring, "n1", "n3") == REROUTED, TIMEOUT) is not None
    finally:
        ring.update(netns.restart(ring["name"], "n2"))
    healed(ring)


def test_zz_other_protocols_routes_never_changed(ring):
    now = other_routes(ring)
    changed = {n: (sorted(set(ring["_others"][n]) - set(now[n])), sorted(set(now[n]) - set(ring["_others"][n])))
               for n in now if now[n] != ring["_others"][n]}
    assert not changed, changed
