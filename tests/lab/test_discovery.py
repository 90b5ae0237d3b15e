"""Discovery (``-d``): three nodes on one LAN, started with no ``-a`` at all, find each other by
authenticated link-local multicast and form their links; a stranger on the same LAN (another
overlay key) forms nothing.

The lab has three nodes and no link; the test adds the LAN afterwards (the daemons join their
discovery address on interfaces that appear): a namespace ``<lab>-lan`` with a bridge, a veth
from each node into it (192.168.77.N/24), and on the bridge itself a stranger daemon with the
same overlay port and logical ID space but another key.  Everything the test makes is removed
in its fixture, whatever happens.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from spines_kr.ctl import request
from spines_kr.keys import new_key_file_text
from spines_kr.lab import netns, ops, topology

pytestmark = [pytest.mark.timeout(180), pytest.mark.needs("veth", "bridge")]
GROUP = "224.0.0.120"
TIMEOUT = 20.0
THREE = "".join(f'[[node]]\nname = "n{i}"\n' for i in (1, 2, 3))


def ip(*args):
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


def view(path, what):
    reply = request(path, {"cmd": "show", "what": what})
    assert reply["ok"], reply
    return reply["data"]


@pytest.fixture(scope="module")
def lan(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("discovery")
    name = f"sktest{os.urandom(3).hex()}"
    lan_ns = f"{name}-lan"
    conf = tmp / "daemon.toml"
    conf.write_text(f'discovery = ["{GROUP}"]\ndiscovery_interval_ms = 300\n')
    stranger = None
    try:
        st = netns.up(topology.parse(THREE), name, daemon_config=conf)
        ip("netns", "add", lan_ns)
        ip("-n", lan_ns, "link", "set", "lo", "up")
        ip("-n", lan_ns, "link", "add", "br0", "type", "bridge")
        for i, n in enumerate(st["nodes"], 1):
            ip("-n", lan_ns, "link", "add", f"p{i}", "type", "veth", "peer", "name", "lan1",
               "netns", n["netns"])
            ip("-n", lan_ns, "link", "set", f"p{i}", "master", "br0", "up")
            ip("-n", n["netns"], "addr", "add", f"192.168.77.{i}/24", "dev", "lan1")
            ip("-n", n["netns"], "link", "set", "lan1", "up")
        ip("-n", lan_ns, "addr", "add", "192.168.77.9/24", "dev", "br0")
        ip("-n", lan_ns, "addr", "add", "10.100.0.9/32", "dev", "lo")
        ip("-n", lan_ns, "link", "set", "br0", "up")
        key = tmp / "stranger.key"
        key.write_text(new_key_file_text())
        key.chmod(0o600)
        ctl = str(tmp / "stranger.ctl")
        stranger = subprocess.Popen(
            ["ip", "netns", "exec", lan_ns, sys.executable, "-m", "spines_kr", "daemon", "-l",
             "10.100.0.9", "-k", "0", "--key-file", str(key), "-d", GROUP, "-c", str(conf),
             "--control-socket", ctl, "-ud", str(tmp / "stranger.ipc"), "-lf",
             str(tmp / "stranger.log")], env=netns.child_env(), stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL)
        st["stranger_ctl"] = ctl
        yield st
    finally:
        if stranger is not None:
            stranger.terminate()
            stranger.wait(timeout=30)
        netns.down(name)
        subprocess.run(["ip", "netns", "del", lan_ns], capture_output=True)


def test_discovery_forms_the_links_of_a_lan_without_neighbors(lan):
    assert all("-a" not in n.get("neighbors", []) for n in lan["nodes"])
    assert ops.wait_converged(lan, timeout=TIMEOUT) is not None
    for n in lan["nodes"]:
        links = view(n["control_socket"], "neighbors")
        assert sorted(l["neighbor_id"] for l in links if l["state"] == "up") == sorted(
            o["logical_id"] for o in lan["nodes"] if o is not n)
        found = view(n["control_socket"], "tunnels")["discovery"]
        assert found["lans"] == ["lan1"] and {f["logical_id"] for f in found["found"]} == {
            o["logical_id"] for o in lan["nodes"] if o is not n}
    res = ops.ping(lan, "n1", "n3", count=2, source="10.100.0.1")
    assert res.returncode == 0, res.stdout + res.stderr


def test_a_strangers_announcements_form_nothing(lan):
    assert ops.wait_converged(lan, timeout=TIMEOUT) is not None
    dropped = lambda n: view(n["control_socket"], "status")["counters"].get(
        "discovery.dropped.auth_mac", 0)
    # every node hears the stranger's announcements and drops them
    assert ops.wait(lambda: all(dropped(n) >= 3 for n in lan["nodes"]), TIMEOUT) is not None
    for n in lan["nodes"]:
        assert "192.168.77.9" not in {l["neighbor_address"]
                                      for l in view(n["control_socket"], "neighbors")}
        assert "10.100.0.9/32" not in ops.kernel_routes(n["netns"])
    # ... and the stranger, for its part, found no one it could trust
    assert view(lan["stranger_ctl"], "tunnels")["discovery"]["found"] == []
    assert all(l["state"] != "up" for l in view(lan["stranger_ctl"], "neighbors"))
