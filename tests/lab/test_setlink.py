"""setlink at the receiving end, as Spines applies it: told to DEST's daemon, it shapes what
DEST receives from SOURCE.  Real daemons in a 2-node lab n1 - n2."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from spines_kr.lab import netns, ops, topology

pytestmark = [pytest.mark.timeout(240), pytest.mark.needs("veth")]
TIMEOUT = 15.0
PAIR = '[[node]]\nname = "n1"\n[[node]]\nname = "n2"\n[[link]]\na = "n1"\nb = "n2"\n'


@pytest.fixture
def pair():
    name = f"sktest{os.urandom(3).hex()}"
    try:
        st = netns.up(topology.parse(PAIR), name)
        assert ops.wait_converged(st, timeout=TIMEOUT) is not None
        yield st
    finally:
        netns.down(name)


def spines(st, node: str, *args: str) -> subprocess.CompletedProcess:
    argv, env = netns.exec_argv(st["name"], node, [sys.executable, "-m", "spines_kr", *args])
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)


def neighbors(st, node: str) -> list[dict]:
    return json.loads(spines(st, node, "show", "neighbors", "--json").stdout)


def test_setlink_told_to_the_receiving_end_shapes_what_it_receives(pair):
    n1, n2 = (next(n for n in pair["nodes"] if n["name"] == x) for x in ("n1", "n2"))
    # every packet n2 receives from n1 is lost: the adjacency dies on both sides
    out = spines(pair, "n2", "setlink", "0", "0", "100", "0", n1["logical_id"], n2["logical_id"])
    assert out.returncode == 0, out.stderr
    assert "receiving end" in out.stdout and "nft-drop" in out.stdout
    assert ops.wait(lambda: all(l["state"] != "up" for l in neighbors(pair, "n1")), TIMEOUT)
    shown = neighbors(pair, "n2")[0]
    assert shown["rx_emulation"]["loss_pct"] == 100 and shown["emulation"] is None
    # the kernel's traffic too: n1 cannot reach n2 over the link (an nftables drop at n2)
    link = pair["links"][0]
    peer = (link["b_address"] if link["a"] == "n1" else link["a_address"]).split("/")[0]
    ping = subprocess.run(["ip", "netns", "exec", n1["netns"], "ping", "-c", "2", "-W", "1",
                           "-i", "0.2", peer], capture_output=True, text=True)
    assert ping.returncode != 0
    # cleared: the link comes back
    out = spines(pair, "n2", "setlink", "0", "0", "0", "0", n1["logical_id"], n2["logical_id"])
    assert out.returncode == 0 and "cleared" in out.stdout
    assert ops.wait_converged(pair, timeout=TIMEOUT) is not None
    assert neighbors(pair, "n2")[0]["rx_emulation"] is None


def test_setlink_for_a_link_of_neither_end_is_refused(pair):
    out = spines(pair, "n1", "setlink", "0", "10", "0", "0", "10.77.0.1", "10.77.0.2")
    assert out.returncode == 1
    assert "neither 10.77.0.1 nor 10.77.0.2 is this node" in out.stderr
