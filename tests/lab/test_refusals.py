"""A daemon refuses what it cannot do, in one line, exit 2, and changes nothing in the kernel;
a slow nft during setlink costs no adjacency.  Real daemons in a 3-node lab line n1 - n2 - n3.

A refused daemon is started by hand in a lab namespace, next to the lab's own daemons; one that
would be accepted by mistake ends by itself (``-x``), so no test can leave a process behind.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from spines_kr.lab import netns, ops, topology

pytestmark = [pytest.mark.timeout(300), pytest.mark.needs("veth")]
TIMEOUT = 15.0
LINE = """
[[node]]
name = "n1"
[[node]]
name = "n2"
[[node]]
name = "n3"
[[link]]
a = "n1"
b = "n2"
[[link]]
a = "n2"
b = "n3"
"""


@pytest.fixture(scope="module")
def line():
    name = f"sktest{os.urandom(3).hex()}"
    try:
        st = netns.up(topology.parse(LINE), name)
        assert ops.wait_converged(st, timeout=TIMEOUT) is not None, "line did not converge"
        yield st
    finally:
        netns.down(name)


def node(st, name):
    return next(n for n in st["nodes"] if n["name"] == name)


def kernel_state(ns: str) -> dict:
    """Everything of ours in a namespace: routes of every table, rules, lo addresses, nexthops."""
    def j(*args):
        out = subprocess.run(["ip", "-n", ns, "-j", *args], capture_output=True, text=True).stdout
        return json.loads(out or "[]")
    return {"routes": sorted(json.dumps(r, sort_keys=True)
                             for r in j("-4", "route", "show", "table", "all")),
            "rules": sorted(json.dumps(r, sort_keys=True) for r in j("rule", "show")),
            "addresses": sorted(json.dumps(a.get("addr_info"), sort_keys=True)
                                for a in j("-4", "addr", "show")),
            "nexthops": sorted(json.dumps(n, sort_keys=True) for n in j("nexthop", "show"))}


def run_daemon(st, nodename: str, *args: str, env: dict | None = None,
               timeout: float = 30.0) -> subprocess.CompletedProcess:
    """A second daemon in ``nodename``'s namespace with its own files; ``-x 5`` ends it."""
    n = node(st, nodename)
    sdir = st["state_dir"]
    tag = os.urandom(2).hex()
    argv = ["ip", "netns", "exec", n["netns"], sys.executable, "-m", "spines_kr", "daemon",
            "-l", n["logical_id"], "--auth", "none", "-x", "5",
            "-lf", f"{sdir}/extra-{tag}.log", "-ud", f"{sdir}/extra-{tag}.ipc",
            "--control-socket", f"{sdir}/extra-{tag}.sock", *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def refused(proc: subprocess.CompletedProcess, *words: str) -> str:
    err = proc.stderr.strip()
    assert proc.returncode == 2, (proc.returncode, err)
    assert err.count("\n") == 0, err  # one line
    assert "Traceback" not in err and "internal error" not in err
    for w in words:
        assert w in err, (w, err)
    return err


def test_missing_kernel_feature_is_refused_naming_it_and_the_flag(line):
    """-k 2 on a kernel without multicast routing (the kernel here, or one made to look so),
    with the data plane off (with it, the data plane carries multicast); and an own table on a
    kernel without policy rules."""
    n1 = node(line, "n1")
    before = kernel_state(n1["netns"])
    proc = run_daemon(line, "n1", "-p", "8300", "-k", "0", "-k", "2", "--table", "8300",
                      "--no-data-plane", env={"SPINES_KR_WITHOUT": "multicast_routing"})
    refused(proc, "kernel without IPv4 multicast routing", "CONFIG_IP_MROUTE", "-k 2")
    assert kernel_state(n1["netns"]) == before  # no route, rule, address or nexthop left
    proc = run_daemon(line, "n1", "-p", "8300", "-k", "0", "--table", "8300",
                      env={"SPINES_KR_WITHOUT": "policy_rules"})
    refused(proc, "kernel without policy routing rules", "CONFIG_IP_MULTIPLE_TABLES",
            "table = 8300")
    assert kernel_state(n1["netns"]) == before


def test_a_second_daemon_in_the_same_slot_is_refused_naming_the_first(line):
    n1 = node(line, "n1")
    before = ops.kernel_routes(n1["netns"])
    proc = run_daemon(line, "n1", "-p", "8200", "-k", "0")
    err = refused(proc, "table 254", "protocol 81", "priority 20", f"pid {n1['pid']}",
                  "port 8100")
    assert "--table" in err
    assert ops.kernel_routes(n1["netns"]) == before  # the first daemon's routes untouched
    assert ops.wait_converged(line, timeout=TIMEOUT) is not None


def test_a_neighbor_that_is_our_own_address_is_refused(line):
    link = line["links"][0]  # n1 - n2
    own = (link["a_address"] if link["a"] == "n1" else link["b_address"]).split("/")[0]
    proc = run_daemon(line, "n1", "-p", "8300", "-a", own)
    refused(proc, own, "address of this host", "not a neighbor")


def test_a_local_address_that_is_not_local_is_refused(line):
    proc = run_daemon(line, "n1", "-p", "8300", "-I", "10.99.99.99")
    refused(proc, "10.99.99.99", "not an address of this host")


def test_a_control_socket_in_use_is_refused(line):
    n1 = node(line, "n1")
    proc = run_daemon(line, "n1", "-p", "8300", "--control-socket", n1["control_socket"])
    refused(proc, n1["control_socket"], "in use")
    # the lab's daemon still answers on it
    assert ops.wait_converged(line, timeout=TIMEOUT) is not None


def test_the_udp_port_in_use_is_refused(line):
    proc = run_daemon(line, "n1", "-p", "8100")
    refused(proc, "UDP port 8100 is in use")


def test_a_slow_nft_during_setlink_costs_no_adjacency(line, tmp_path, monkeypatch):
    """setlink runs nft (and tc) in the daemon's worker thread: a 2 s nft keeps the loop
    serving hellos, so no adjacency (dead after 250 ms of silence) and no route is lost."""
    real = subprocess.run(["sh", "-c", "command -v nft"], capture_output=True,
                          text=True).stdout.strip()
    if not real:
        from tests.conftest import require
        require("nftables")
    slow = tmp_path / "nft"
    slow.write_text(f"#!/bin/sh\nsleep 2\nexec {real} \"$@\"\n")
    slow.chmod(0o755)
    name = f"sktest{os.urandom(3).hex()}"
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    try:
        st = netns.up(topology.parse(LINE), name)
        assert ops.wait_converged(st, timeout=TIMEOUT) is not None
        n1, n2 = node(st, "n1"), node(st, "n2")
        downs_before = open(n1["log"]).read().count('"neighbor.down"')
        routes_before = ops.kernel_routes(n1["netns"])
        argv, env = netns.exec_argv(name, "n1", [sys.executable, "-m", "spines_kr", "setlink",
                                                 "0", "0", "1", "0", n1["logical_id"],
                                                 n2["logical_id"]])
        t0 = time.monotonic()
        out = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
        took = time.monotonic() - t0
        assert out.returncode == 0, out.stderr
        assert took >= 2.0, "the slow nft did not run"
        assert "kernel" in out.stdout
        assert open(n1["log"]).read().count('"neighbor.down"') == downs_before, \
            "an adjacency was lost"
        assert ops.kernel_routes(n1["netns"]) == routes_before
        argv, env = netns.exec_argv(name, "n1", [sys.executable, "-m", "spines_kr", "show",
                                                 "status", "--json"])
        status = json.loads(subprocess.run(argv, env=env, capture_output=True, text=True,
                                           timeout=30).stdout)
        assert status["neighbors_up"] == 1
    finally:
        netns.down(name)


def test_routes_drop_and_regain_the_preferred_source_with_the_logical_id(line):
    """Taken off lo, the logical ID cannot be a preferred source (the kernel refuses every such
    write): routes go on without it, with no storm of refused writes, and take it back."""
    n1 = node(line, "n1")
    ns, lid = n1["netns"], n1["logical_id"]

    def sources():
        out = subprocess.run(["ip", "-n", ns, "-j", "route", "show", "proto", "spines"],
                             capture_output=True, text=True).stdout
        return {r["dst"]: r.get("prefsrc") for r in json.loads(out or "[]")}

    assert set(sources().values()) == {lid}
    subprocess.run(["ip", "-n", ns, "addr", "del", f"{lid}/32", "dev", "lo"], check=True)
    try:
        assert ops.wait(lambda: sources() and set(sources().values()) == {None}, TIMEOUT)
        assert '"routes.write_failed"' not in open(n1["log"]).read()
    finally:
        subprocess.run(["ip", "-n", ns, "addr", "add", f"{lid}/32", "dev", "lo"], check=True)
    assert ops.wait(lambda: set(sources().values()) == {lid}, TIMEOUT)
