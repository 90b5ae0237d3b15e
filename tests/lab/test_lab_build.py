"""The namespace lab builder with a stand-in daemon: what ``up`` creates, what ``status`` reports,
and that ``down`` removes everything, also after crashes and hand-made damage."""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from spines_kr.lab import build, netns, ops, topology
from spines_kr.lab.cli import add_lab_parser
from tests.lab.conftest import standin_argv

pytestmark = pytest.mark.needs("veth")  # the lab's links
NEEDS_HOSTS = pytest.mark.needs("bridge")  # a node's hosts sit on a bridge (its LAN)
DEMO = topology.demo()


def ip(*args: str) -> str:
    return subprocess.run(["ip", *args], check=True, capture_output=True, text=True).stdout


def lab_netns(lab: str) -> list[str]:
    return [ns for ns in netns._netns_names() if ns.startswith(f"{lab}-")]


def in_ns(lab: str, node: str, *argv: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", "netns", "exec", f"{lab}-{node}", *argv],
                          capture_output=True, text=True, timeout=20, **kw)


def assert_gone(lab: str, pids: list[int]) -> None:
    assert lab_netns(lab) == []
    assert not (netns.STATE_ROOT / lab).exists()
    for pid in pids:
        info = netns._proc(pid)
        assert info is None or info[1] == "Z", f"pid {pid} still runs"


def lab_up(lab: str, **kw) -> dict:
    return netns.up(DEMO, lab, daemon=standin_argv, **kw)


def test_up_builds_the_ring_and_down_removes_it(lab_name):
    rt_protos_before = netns.RT_PROTOS_PATH.exists()
    st = lab_up(lab_name)

    assert sorted(lab_netns(lab_name)) == [f"{lab_name}-n{i}" for i in range(1, 6)]
    assert st["name"] == lab_name and st["state_dir"] == str(netns.STATE_ROOT / lab_name)
    assert [n["name"] for n in st["nodes"]] == ["n1", "n2", "n3", "n4", "n5"]
    for n in st["nodes"]:
        assert set(n) >= {"name", "netns", "logical_id", "pid", "alive", "log", "control_socket"}
        assert n["alive"] and n["netns"] == f"{lab_name}-{n['name']}"
        assert f"inet {n['logical_id']}/32" in ip("-n", n["netns"], "addr", "show", "dev", "lo")
        sysctl = in_ns(lab_name, n["name"], "sysctl", "-n", "net.ipv4.ip_forward",
                       "net.ipv4.conf.all.rp_filter", "net.ipv4.conf.default.rp_filter")
        assert sysctl.stdout.split() == ["1", "0", "0"]
    assert st["hosts"] == []
    assert netns.RT_PROTOS_PATH.exists()

    # Links: the right names and addresses, rp_filter off, and one hop pings across.
    assert len(st["links"]) == 5
    for ln in st["links"]:
        assert set(ln) == {"a", "b", "a_ifname", "b_ifname", "a_address", "b_address",
                           "latency_ms", "loss_pct", "bandwidth_kbps"}
        assert (ln["a_ifname"], ln["b_ifname"]) == (f"to-{ln['b']}", f"to-{ln['a']}")
        for side, peer in (("a", "b"), ("b", "a")):
            shown = ip("-n", f"{lab_name}-{ln[side]}", "-br", "addr", "show", "dev",
                       ln[f"{side}_ifname"])
            assert ln[f"{side}_address"] in shown and "UP" in shown
        rp = in_ns(lab_name, ln["a"], "sysctl", "-n", f"net.ipv4.conf.{ln['a_ifname']}.rp_filter")
        assert rp.stdout.strip() == "0"
        ping = in_ns(lab_name, ln["a"], "ping", "-c1", "-W1", ln["b_address"].split("/")[0])
        assert ping.returncode == 0, ping.stdout + ping.stderr

    # The daemon got the documented arguments (the stand-in wrote them to its -lf file).
    n1 = st["nodes"][0]
    args = json.loads(Path(n1["log"]).read_text())
    assert args == ["daemon", "-p", "8100", "-l", "10.100.0.1", "-I", "10.200.0.1",
                    "-I", "10.200.0.18", "-a", "10.200.0.2", "-a", "10.200.0.17", "--multipath",
                    "-k", "0", "-k", "1",
                    "--key-file", str(Path(st["state_dir"]) / "key.toml"),
                    "-m", "-w", "distance", "-lf", n1["log"], "-ud",
                    str(Path(st["state_dir"]) / "n1.ipc"), "--control-socket",
                    n1["control_socket"]]

    argv, env = netns.exec_argv(lab_name, "n2", ["true"])
    assert argv == ["ip", "netns", "exec", f"{lab_name}-n2", "true"]
    assert env["SPINES_KR_SOCKET"] == st["nodes"][1]["control_socket"]
    assert env["SPINES_KR_PORT"] == "8100"
    assert env["SPINES_KR_IPC"] == str(Path(st["state_dir"]) / "n2.ipc")  # the tools' daemon
    with pytest.raises(netns.LabError, match="no node 'n9'"):
        netns.exec_argv(lab_name, "n9", [])

    pids = [n["pid"] for n in st["nodes"]]
    report = netns.down(lab_name)
    assert report["found"] and not report["problems"]
    assert sorted(report["stopped"]) == ["n1", "n2", "n3", "n4", "n5"]
    assert_gone(lab_name, pids)
    assert netns.RT_PROTOS_PATH.exists() == rt_protos_before


def test_probe_counts_packets_across_one_link(lab_name):
    lab_up(lab_name)
    recv = subprocess.Popen(["ip", "netns", "exec", f"{lab_name}-n2", sys.executable, "-m",
                             "spines_kr.lab.probe", "recv", "--port", "9000", "--duration", "3"],
                            stdout=subprocess.PIPE, text=True)
    try:
        # Send until the receiver is bound: the first probes may be refused, later ones count.
        sent = in_ns(lab_name, "n1", sys.executable, "-m", "spines_kr.lab.probe", "send", "--dst",
                     "10.200.0.2", "--port", "9000", "--rate", "100", "--duration", "1.5")
        assert sent.returncode == 0, sent.stderr
        out, _ = recv.communicate(timeout=10)
    finally:
        if recv.poll() is None:
            recv.kill()
            recv.wait()
    result = json.loads(out)
    assert set(result) == {"received", "lost", "max_gap_ms", "first_seq", "last_seq",
                           "duplicates"}
    assert result["received"] > 50 and result["lost"] == 0 and result["duplicates"] == 0
    assert result["last_seq"] == json.loads(sent.stdout)["last_seq"]


def test_down_after_a_killed_daemon_and_a_deleted_namespace(lab_name):
    st = lab_up(lab_name)
    pids = [n["pid"] for n in st["nodes"]]
    os.kill(st["nodes"][0]["pid"], signal.SIGKILL)
    ip("netns", "del", f"{lab_name}-n3")
    # The killed daemon shows as dead (a zombie of this process until down reaps it).
    netns._wait_gone({pids[0]: netns._proc(pids[0])[0]}, 10)
    assert [n["alive"] for n in netns.status(lab_name)["nodes"]] == [False, True, True, True, True]
    report = netns.down(lab_name)
    assert not report["problems"]
    assert f"{lab_name}-n3" not in report["netns_deleted"]
    assert_gone(lab_name, pids)
    again = netns.down(lab_name)
    assert not again["found"] and not again["problems"]


def test_down_finds_a_daemon_that_up_never_recorded(lab_name):
    st = lab_up(lab_name)
    state_file = Path(st["state_dir"]) / "state.json"
    state = json.loads(state_file.read_text())
    lost_pid = state["nodes"][2]["pid"]
    state["nodes"][2]["pid"] = state["nodes"][2]["start_time"] = None  # as if up died at spawn
    state_file.write_text(json.dumps(state))
    report = netns.down(lab_name)
    assert "n3" in report["stopped"] and not report["problems"]
    assert_gone(lab_name, [lost_pid])


def test_up_fails_and_cleans_up_when_a_daemon_exits(lab_name, monkeypatch):
    monkeypatch.setenv("STANDIN_EXIT", "1")
    with pytest.raises(netns.LabError, match=r"(?s)exited with status 3.*stand-in: boom"):
        lab_up(lab_name)
    assert_gone(lab_name, [])


def test_up_times_out_and_cleans_up(lab_name, monkeypatch):
    monkeypatch.setenv("STANDIN_NO_SOCKET", "1")
    with pytest.raises(netns.LabError) as err:
        lab_up(lab_name, timeout=0.5, window=4)
    # The first to miss its deadline is the first spawned (the others may miss theirs in the
    # same check); n5 was never spawned: four were starting, none got ready.
    first = str(err.value).splitlines()[0]
    assert re.match(r"daemons? of nodes? n1(, n[234])* not ready after 0.5 s from (its|their) "
                    r"start \(no connection on the control socket\)$", first), first
    assert_gone(lab_name, [])


def test_each_daemon_has_its_own_readiness_deadline(lab_name, monkeypatch):
    # One at a time, 1.2 s each: 6 s in all, more than the deadline, which each one meets.
    monkeypatch.setenv("STANDIN_DELAY", "1.2")
    st = lab_up(lab_name, timeout=3.5, window=1)
    assert all(n["alive"] for n in st["nodes"])
    assert all(n["ready_s"] >= 1.2 for n in st["nodes"]), [n["ready_s"] for n in st["nodes"]]
    assert st["timings"]["start_s"] >= 6.0 and st["timings"]["up_s"] >= st["timings"]["start_s"]
    state = json.loads((Path(st["state_dir"]) / "state.json").read_text())
    assert state["phase"] == "up" and all(n["ready_s"] for n in state["nodes"])


def test_a_daemon_that_never_gets_ready_is_named_alone(lab_name, monkeypatch):
    monkeypatch.setenv("STANDIN_NO_SOCKET_FOR", "10.100.0.3")
    with pytest.raises(netns.LabError) as err:
        lab_up(lab_name, timeout=4, window=5)
    msg = str(err.value)
    assert msg.startswith("daemon of node n3 not ready after 4 s from its start"), msg
    assert not any(f"n{i}" in msg.splitlines()[0] for i in (1, 2, 4, 5))
    assert_gone(lab_name, [])


def test_a_daemon_that_exits_is_named(lab_name, monkeypatch):
    monkeypatch.setenv("STANDIN_EXIT_FOR", "10.100.0.4")
    with pytest.raises(netns.LabError, match=r"(?s)^daemon of node n4 exited with status 3 before "
                                             r"it was ready.*n4\.out:\n    stand-in: boom"):
        lab_up(lab_name)
    assert_gone(lab_name, [])


def test_every_daemon_reads_the_lab_daemon_config(lab_name, tmp_path):
    conf = tmp_path / "timers.toml"
    conf.write_text("hello_interval_ms = 200\ndead_interval_ms = 1000\n")
    st = lab_up(lab_name, daemon_config=conf)
    copy = Path(st["state_dir"]) / "daemon.toml"
    assert copy.read_text() == conf.read_text()
    for n in st["nodes"]:
        args = json.loads(Path(n["log"]).read_text())
        assert args[args.index("-c") + 1] == str(copy)
    netns.down(lab_name)
    with pytest.raises(netns.LabError, match="daemon configuration .*missing.toml"):
        lab_up(lab_name, daemon_config=tmp_path / "missing.toml")
    assert_gone(lab_name, [])


@pytest.mark.needs("nexthop_objects")
def test_routes_read_over_netlink_equal_what_ip_shows(lab_name):
    st = lab_up(lab_name)
    assert ops.unconverged(st) == ["n1", "n2", "n3", "n4", "n5"]  # stand-ins make no routes
    ns = st["nodes"][0]["netns"]
    gw1, gw2 = "10.200.0.2", "10.200.0.17"  # n1's neighbours n2 and n4, across its two links
    for args in (["nexthop", "add", "id", "7", "via", gw1, "dev", "to-n2", "proto", "81"],
                 ["nexthop", "add", "id", "8", "via", gw2, "dev", "to-n4", "proto", "81"],
                 ["nexthop", "add", "id", "9", "group", "7/8", "proto", "81"],
                 ["route", "add", "10.100.0.2", "nhid", "7", "proto", "81"],
                 ["route", "add", "10.100.0.3", "nhid", "9", "proto", "81"],
                 ["route", "add", "10.100.0.4", "proto", "81", "nexthop", "via", gw1,
                  "nexthop", "via", gw2],
                 ["route", "add", "10.100.0.5/32", "via", gw2, "proto", "81"],
                 ["route", "add", "10.100.0.5/32", "via", gw1, "proto", "81", "metric", "50"],
                 ["route", "add", "247.0.0.1", "via", gw1, "proto", "81"],
                 ["route", "add", "192.0.2.0/24", "via", gw1, "proto", "static"],
                 ["route", "add", "default", "via", gw2, "proto", "81", "table", "8200"]):
        ip("-n", ns, *args)
    mine = ops.all_routes(st)["n1"]
    assert mine == ops.kernel_routes(ns) and mine["10.100.0.3/32"] == sorted([gw1, gw2])
    assert set(mine) == {"10.100.0.2/32", "10.100.0.3/32", "10.100.0.4/32", "10.100.0.5/32",
                         "247.0.0.1/32"}
    joined = {**st, "table": 8200}
    assert ops.all_routes(joined)["n1"] == ops.kernel_routes(ns, 8200) == {"0.0.0.0/0": [gw2]}
    assert ops.unconverged(st) == ["n2", "n3", "n4", "n5"]  # n1 is complete: a group route is fine


def test_up_refuses_a_lab_that_exists(lab_name):
    lab_up(lab_name)
    with pytest.raises(netns.LabError, match="exists"):
        lab_up(lab_name)
    assert all(n["alive"] for n in netns.status(lab_name)["nodes"])


def test_down_of_an_unknown_lab_is_fine(lab_name):
    report = netns.down(lab_name)
    assert report == {"name": lab_name, "found": False, "joined_down": [], "stopped": [],
                      "killed": [], "netns_deleted": [], "links_deleted": [],
                      "addresses_removed": [], "kernel_cleaned": [], "rt_protos_removed": False,
                      "problems": [], "warnings": []}


def test_two_labs_share_the_rt_protos_file(lab_name):
    if netns.RT_PROTOS_PATH.exists():
        pytest.skip(f"{netns.RT_PROTOS_PATH} exists already")
    other = f"{lab_name[:-1]}x"
    try:
        lab_up(lab_name)
        lab_up(other)
        netns.down(lab_name)
        assert netns.RT_PROTOS_PATH.exists()  # the other lab still claims it
        netns.down(other)
        assert not netns.RT_PROTOS_PATH.exists()
    finally:
        netns.down(other)


def run_cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="spines-kr")
    add_lab_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(list(argv))
    return args.func(args)


def test_cli_status_and_errors(lab_name, tmp_path, capsys):
    assert run_cli("lab", "status", "--name", lab_name) == 1
    assert capsys.readouterr().err.startswith("spines-kr: error: lab ")
    assert run_cli("lab", "up", str(tmp_path / "missing.toml"), "--name", lab_name) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "missing.toml" in err
    bad = tmp_path / "bad.toml"
    bad.write_text('[[node]]\nname = "n1"\n[[link]]\na = "n1"\nb = "n9"\n')
    assert run_cli("lab", "up", str(bad), "--name", lab_name) == 2
    assert "link[0].b: unknown node 'n9'" in capsys.readouterr().err
    assert run_cli("lab", "down", "--name", "bad/name") == 2
    capsys.readouterr()

    lab_up(lab_name)
    assert run_cli("lab", "status", "--name", lab_name, "--json") == 0
    st = json.loads(capsys.readouterr().out)
    assert st["name"] == lab_name and len(st["nodes"]) == 5
    assert run_cli("lab", "status", "--name", lab_name) == 0
    assert f"{lab_name}-n5" in capsys.readouterr().out
    assert run_cli("lab", "down", "--name", lab_name) == 0
    assert "5 namespaces deleted" in capsys.readouterr().out
    assert run_cli("lab", "down", "--name", lab_name) == 0
    assert "nothing to do" in capsys.readouterr().out


def test_cli_exec_passes_the_exit_status_and_environment(lab_name):
    lab_up(lab_name)
    code = ("import os, sys; from spines_kr.lab.cli import add_lab_parser; import argparse;"
            "p = argparse.ArgumentParser(); add_lab_parser(p.add_subparsers());"
            "a = p.parse_args(sys.argv[1:]); sys.exit(a.func(a))")
    r = subprocess.run([sys.executable, "-c", code, "lab", "exec", "--name", lab_name, "n4", "--",
                        "sh", "-c", 'ip -br addr show dev lo; echo "$SPINES_KR_SOCKET"; exit 7'],
                       capture_output=True, text=True, timeout=20,
                       env=dict(os.environ, PYTHONPATH=str(netns.REPO_ROOT)))
    assert r.returncode == 7, r.stderr
    assert "10.100.0.4/32" in r.stdout and r.stdout.strip().endswith("n4.ctl")


# -- hosts ---------------------------------------------------------------------------------------

HOSTS_TOPOLOGY = """\
[[node]]
name = "n1"
[[node]]
name = "n2"
[[node]]
name = "n3"
prefixes = ["192.168.30.0/24", "192.168.31.0/24"]
[[link]]
a = "n1"
b = "n2"
[[link]]
a = "n2"
b = "n3"
[[host]]
name = "h1"
attach = "n1"
[[host]]
name = "h2"
attach = "n1"
[[host]]
name = "h3"
attach = "n3"
"""
HOSTS = topology.parse(HOSTS_TOPOLOGY)


@NEEDS_HOSTS
def test_hosts_sit_on_a_lan_behind_their_node(lab_name, capsys):
    st = netns.up(HOSTS, lab_name, daemon=standin_argv)
    assert sorted(lab_netns(lab_name)) == [f"{lab_name}-{m}" for m in
                                           ("h1", "h2", "h3", "n1", "n2", "n3")]
    assert st["hosts"] == [
        {"name": "h1", "netns": f"{lab_name}-h1", "address": "10.210.0.2",
         "prefix": "10.210.0.0/24", "gateway": "10.210.0.1", "attach": "n1"},
        {"name": "h2", "netns": f"{lab_name}-h2", "address": "10.210.0.3",
         "prefix": "10.210.0.0/24", "gateway": "10.210.0.1", "attach": "n1"},
        {"name": "h3", "netns": f"{lab_name}-h3", "address": "192.168.30.2",
         "prefix": "192.168.30.0/24", "gateway": "192.168.30.1", "attach": "n3"}]
    assert [(n["prefixes"], n["lan"]) for n in st["nodes"]] == [
        (["10.210.0.0/24"], "10.210.0.1/24"), ([], None),
        (["192.168.30.0/24", "192.168.31.0/24"], "192.168.30.1/24")]

    # The node's bridge carries its LAN address; its hosts' veth ends are ports of it.
    n1 = f"{lab_name}-n1"
    assert "10.210.0.1/24" in ip("-n", n1, "-br", "addr", "show", "dev", "lan0")
    ports = json.loads(ip("-n", n1, "-j", "link", "show", "master", "lan0"))
    assert sorted(p["ifname"] for p in ports) == ["lan-h1", "lan-h2"]
    assert all("UP" in p["flags"] for p in ports)
    # A host: one interface with its address, a default route via its node, nothing else.
    for h in st["hosts"]:
        links = json.loads(ip("-n", h["netns"], "-j", "link", "show"))
        assert sorted(ln["ifname"] for ln in links) == ["eth0", "lo"]
        addrs = ip("-n", h["netns"], "-br", "-4", "addr", "show", "dev", "eth0")
        assert f"{h['address']}/24" in addrs and "UP" in addrs
        routes = json.loads(ip("-n", h["netns"], "-j", "route", "show"))
        assert {"dst": "default", "gateway": h["gateway"]}.items() <= routes[0].items()
        assert len(routes) == 2  # default, and the LAN's connected route
        # It reaches its node's LAN address, and (via the default route) its logical ID.
        for target in (h["gateway"], ops.address_of(st, h["attach"])):
            res = in_ns(lab_name, h["name"], "ping", "-c1", "-W2", target)
            assert res.returncode == 0, res.stdout + res.stderr
    # Two hosts of one node reach each other across the bridge, by ping and by probe.
    res = ops.ping(st, "h1", "h2", count=2)
    assert res.returncode == 0, res.stdout + res.stderr
    with ops.Probe(st, "h2", "h1", duration=1.0) as probe:
        result = probe.result()
    assert result["received"] > 50 and result["lost"] == 0

    # The daemon is told its link addresses (never the LAN's) and its advertised prefixes.
    args = {n["name"]: json.loads(Path(n["log"]).read_text()) for n in st["nodes"]}
    flags = lambda a, flag: [a[i + 1] for i, x in enumerate(a) if x == flag]  # noqa: E731
    assert flags(args["n1"], "--prefix") == ["10.210.0.0/24"]
    assert flags(args["n2"], "--prefix") == []
    assert flags(args["n3"], "--prefix") == ["192.168.30.0/24", "192.168.31.0/24"]
    assert flags(args["n1"], "-I") == ["10.200.0.1"]
    assert flags(args["n3"], "-I") == ["10.200.0.6"]

    # exec: a host runs no daemon, so no control socket in its environment.
    argv, env = netns.exec_argv(lab_name, "h3", ["true"])
    assert argv == ["ip", "netns", "exec", f"{lab_name}-h3", "true"]
    assert not {"SPINES_KR_SOCKET", "SPINES_KR_PORT", "SPINES_KR_IPC"} & set(env)
    with pytest.raises(netns.LabError, match=r"no node 'h9' \(nodes: n1, n2, n3; hosts: h1, h2"):
        netns.exec_argv(lab_name, "h9", [])

    assert run_cli("lab", "status", "--name", lab_name, "--json") == 0
    assert json.loads(capsys.readouterr().out)["hosts"] == st["hosts"]
    assert run_cli("lab", "status", "--name", lab_name) == 0
    out = capsys.readouterr().out
    assert "HOST" in out and "192.168.30.2" in out and "192.168.30.0/24,192.168.31.0/24" in out

    pids = [n["pid"] for n in st["nodes"]]
    report = netns.down(lab_name)
    assert not report["problems"]
    assert sorted(report["netns_deleted"]) == sorted(f"{lab_name}-{m}" for m in
                                                     ("h1", "h2", "h3", "n1", "n2", "n3"))
    assert_gone(lab_name, pids)


@NEEDS_HOSTS
def test_up_fails_and_removes_the_hosts_too(lab_name, monkeypatch):
    monkeypatch.setenv("STANDIN_EXIT", "1")
    with pytest.raises(netns.LabError, match="exited with status 3"):
        netns.up(HOSTS, lab_name, daemon=standin_argv)
    assert_gone(lab_name, [])


CRASH = """
import os, sys
from spines_kr.lab import build, daemons, netns, topology
from tests.lab.conftest import standin_argv
lab, when = sys.argv[1], sys.argv[2]
real_batch, real_spawn = build.batch, daemons._spawn
def batch(lines, netns=None, force=False):
    if when == "namespaces" and f"netns add {lab}-h3" in lines:
        real_batch(lines[:lines.index(f"netns add {lab}-h3")], netns, force)
        os._exit(9)  # dies with h1 and h2 made, h3 planned but not there
    out = real_batch(lines, netns, force)
    if when == "links" and lines[0].startswith("link add"):
        os._exit(9)  # dies with the veth pairs made, no address on them
    return out
spawned = []
def spawn(state, node, env):
    out = real_spawn(state, node, env)
    spawned.append(node["name"])
    if when == "start" and len(spawned) == 2:
        os._exit(9)  # dies with two daemons running that the state does not record
    return out
build.batch, daemons._spawn = batch, spawn
netns.up(topology.parse(sys.stdin.read()), lab, daemon=standin_argv)
os._exit(9)  # dies with the lab up, its daemons left running
"""


@NEEDS_HOSTS
@pytest.mark.parametrize("when", ["namespaces", "links", "start", "up"])
def test_down_removes_everything_after_up_crashed(lab_name, when):
    r = subprocess.run([sys.executable, "-c", CRASH, lab_name, when], input=HOSTS_TOPOLOGY,
                       capture_output=True, text=True, timeout=60, cwd=netns.REPO_ROOT,
                       env=dict(os.environ, PYTHONPATH=str(netns.REPO_ROOT)))
    assert r.returncode == 9, r.stderr
    have = lab_netns(lab_name)
    assert f"{lab_name}-h2" in have and (f"{lab_name}-h3" in have) == (when != "namespaces")
    links = json.loads(ip("-n", f"{lab_name}-n2", "-j", "link", "show"))
    assert (len(links) == 3) == (when != "namespaces")  # lo and the links to n1 and n3
    recorded = [n["pid"] for n in netns.status(lab_name)["nodes"] if n["pid"]]
    running = [p for ns, pids in build.pids_in(have).items() for p in pids]
    assert len(recorded) == (3 if when == "up" else 0)
    assert len(running) == {"start": 2, "up": 3}.get(when, 0)
    report = netns.down(lab_name)
    assert not report["problems"], report
    stopped = {"start": ["n1", "n2"], "up": ["n1", "n2", "n3"]}.get(when, [])
    assert sorted(report["stopped"]) == stopped
    assert sorted(report["netns_deleted"]) == sorted(have)
    assert not report["warnings"]
    assert_gone(lab_name, running)


# -- a second overlay joined to a lab's namespaces ----------------------------------------------

JOINED_TOPOLOGY = """\
[[node]]
name = "n1"
[[node]]
name = "n3"
[[node]]
name = "n4"
[[link]]
a = "n1"
b = "n3"
[[link]]
a = "n3"
b = "n4"
"""


def kernel_view(lab: str) -> dict:
    """Interfaces, IPv4 addresses and IPv4 routes of every namespace of a lab, once every veth
    has its carrier (a fresh pair's ends come up one after the other)."""
    assert ops.wait(lambda: not any(" DOWN " in ip("-n", ns, "-br", "link", "show")
                                    for ns in lab_netns(lab)), 10) is not None
    out = {}
    for ns in lab_netns(lab):
        out[ns] = (ip("-n", ns, "-br", "link", "show"), ip("-n", ns, "-4", "-br", "addr", "show"),
                   ip("-n", ns, "-4", "route", "show", "table", "all"), ip("-n", ns, "rule"))
    return out


def test_a_joined_lab_builds_in_the_base_namespaces_and_down_removes_only_it(lab_name, capsys):
    base = lab_up(lab_name)
    before = kernel_view(lab_name)
    joined = f"{lab_name}j"
    slot = netns.join_slot(lab_name)
    assert slot == 1
    st = netns.up(topology.parse(JOINED_TOPOLOGY, slot=slot), joined, join=lab_name, port=8200,
                  daemon=standin_argv)
    assert (st["join"], st["table"], st["slot"], st["port"]) == (lab_name, 8200, 1, 8200)
    assert netns.status(lab_name)["joined"] == [joined]
    assert netns.join_slot(lab_name) == 2
    assert sorted(lab_netns(lab_name)) == [f"{lab_name}-n{i}" for i in range(1, 6)]
    assert not lab_netns(joined)
    assert [n["netns"] for n in st["nodes"]] == [f"{lab_name}-{n}" for n in ("n1", "n3", "n4")]
    assert [(ln["a_ifname"], ln["a_address"], ln["b_ifname"], ln["b_address"])
            for ln in st["links"]] == [("o1-n3", "10.201.0.1/30", "o1-n1", "10.201.0.2/30"),
                                       ("o1-n4", "10.201.0.5/30", "o1-n3", "10.201.0.6/30")]
    for n in st["nodes"]:
        lo = ip("-n", n["netns"], "-4", "addr", "show", "dev", "lo")
        assert f"{n['logical_id']}/32" in lo and "10.100.0." in lo
    ping = in_ns(lab_name, "n3", "ping", "-c1", "-W1", "10.201.0.1")
    assert ping.returncode == 0, ping.stdout + ping.stderr
    # Its daemons: its port, table 8200, files in its own state directory.
    n3 = st["nodes"][1]
    args = json.loads(Path(n3["log"]).read_text())
    assert args[:5] == ["daemon", "-p", "8200", "-l", "10.101.0.2"]
    assert args[args.index("--table") + 1] == "8200"
    assert n3["control_socket"] == str(netns.STATE_ROOT / joined / "n3.ctl")
    argv, env = netns.exec_argv(joined, "n3", ["true"])
    assert argv[3] == f"{lab_name}-n3" and env["SPINES_KR_PORT"] == "8200"
    # Its state says what it joined; the CLI shows it.
    state = json.loads((netns.STATE_ROOT / joined / "state.json").read_text())
    assert (state["join"], state["netns"], state["rt_protos"]) == (lab_name, [], "none")
    assert run_cli("lab", "status", "--name", joined) == 0
    assert f"table 8200, metric distance, joined to lab {lab_name}" in capsys.readouterr().out

    pids = [n["pid"] for n in st["nodes"]]
    report = netns.down(joined)
    assert not report["problems"] and report["netns_deleted"] == []
    assert report["links_deleted"] == ["n1-n3", "n3-n4"]
    assert report["addresses_removed"] == [f"{n} 10.101.0.{i}/32"
                                           for i, n in enumerate(("n1", "n3", "n4"), 1)]
    assert_gone(joined, pids)
    assert kernel_view(lab_name) == before
    assert all(n["alive"] for n in netns.status(lab_name)["nodes"])
    assert [n["pid"] for n in netns.status(lab_name)["nodes"]] == [n["pid"] for n in base["nodes"]]


def test_down_of_the_base_takes_the_joined_labs_down_first(lab_name, capsys):
    lab_up(lab_name)
    names = [f"{lab_name}j", f"{lab_name}k"]
    for i, name in enumerate(names):
        netns.up(topology.parse(JOINED_TOPOLOGY, slot=netns.join_slot(lab_name)), name,
                 join=lab_name, port=8200 + i, daemon=standin_argv)
    pids = [n["pid"] for lab in (lab_name, *names) for n in netns.status(lab)["nodes"]]
    assert netns.status(names[1])["links"][0]["a_ifname"] == "o2-n3"
    assert run_cli("lab", "down", "--name", lab_name) == 0
    out = capsys.readouterr().out
    assert all(f"lab {n} (joined to {lab_name}) taken down first" in out for n in names)
    assert "5 namespaces deleted" in out
    for name in (lab_name, *names):
        assert_gone(name, pids)


def test_a_joined_lab_that_fails_to_start_leaves_the_base_as_it_was(lab_name, monkeypatch):
    lab_up(lab_name)
    before = kernel_view(lab_name)
    monkeypatch.setenv("STANDIN_EXIT", "1")
    joined = f"{lab_name}j"
    with pytest.raises(netns.LabError, match="exited with status 3"):
        netns.up(topology.parse(JOINED_TOPOLOGY, slot=1), joined, join=lab_name, port=8200,
                 daemon=standin_argv)
    assert not (netns.STATE_ROOT / joined).exists() and netns.joined_labs(lab_name) == []
    assert kernel_view(lab_name) == before
    assert all(n["alive"] for n in netns.status(lab_name)["nodes"])


def test_cli_join_errors(lab_name, tmp_path, capsys):
    topo = tmp_path / "joined.toml"
    topo.write_text(JOINED_TOPOLOGY)
    assert run_cli("lab", "up", str(topo), "--name", "x" + lab_name, "--join", lab_name,
                   "--port", "8200") == 1
    assert f"lab {lab_name!r} does not exist" in capsys.readouterr().err
    lab_up(lab_name)
    assert run_cli("lab", "up", str(topo), "--name", "x" + lab_name, "--join", lab_name) == 2
    assert "port 8100 is the overlay port of lab" in capsys.readouterr().err
    assert run_cli("lab", "up", str(topo), "--name", "x" + lab_name, "--join", "bad/name") == 2
    assert "--join: lab name" in capsys.readouterr().err
    hosts = tmp_path / "hosts.toml"
    hosts.write_text(JOINED_TOPOLOGY + '[[host]]\nname = "h1"\nattach = "n1"\n')
    assert run_cli("lab", "up", str(hosts), "--name", "x" + lab_name, "--join", lab_name,
                   "--port", "8200") == 2
    assert "host[0]: a topology joined to another lab's namespaces cannot have hosts" in \
        capsys.readouterr().err
    assert not (netns.STATE_ROOT / ("x" + lab_name)).exists()
