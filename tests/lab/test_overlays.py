"""Two overlays on one set of namespaces: the demo ring as lab A, and the pentagram (every pair
of the five nodes the ring does not link) joined to it on port 8200 as lab B, with real daemons.

Each overlay routes over its own links, in its own table (A: main; B: table 8200 behind a policy
rule of protocol spines), with its own logical IDs on lo; neither touches the other's routes;
``down`` of B removes only B; ``down`` of A takes a joined lab down first.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
from pathlib import Path

import pytest

from spines_kr.lab import netns, ops, topology
from spines_kr.lab.cli import add_lab_parser

# overlay B routes in table 8200, behind a policy rule
pytestmark = [pytest.mark.timeout(240), pytest.mark.needs("veth", "policy_rules")]

PORT_B = 8200
PENTAGRAM = "".join(f'[[node]]\nname = "n{i}"\n' for i in range(1, 6)) + "".join(
    f'[[link]]\na = "{a}"\nb = "{b}"\n'
    for a, b in [("n1", "n3"), ("n3", "n4"), ("n4", "n2"), ("n2", "n5"), ("n5", "n1")])


def ip_json(*args):
    return json.loads(subprocess.run(["ip", "-j", *args], capture_output=True, text=True,
                                     check=True).stdout or "[]")


def ours(r) -> bool:
    return str(r.get("protocol")) in ("81", "spines")


def snapshot(st) -> dict:
    """What the kernel holds in every namespace besides our routes: every other IPv4 route of
    every table (IPv6 link-local routes come and go by themselves), the policy rules, the
    interfaces and the addresses."""
    out = {}
    for n in st["nodes"]:
        ns = n["netns"]
        routes = ip_json("-4", "-n", ns, "route", "show", "table", "all")
        out[n["name"]] = {
            "routes": sorted(json.dumps(r, sort_keys=True) for r in routes if not ours(r)),
            "rules": ip_json("-n", ns, "rule", "show"),
            "links": sorted(i["ifname"] for i in ip_json("-n", ns, "link", "show")),
            "addresses": sorted(f"{i['ifname']} {a['local']}/{a['prefixlen']}"
                                for i in ip_json("-4", "-n", ns, "addr", "show")
                                for a in i.get("addr_info", [])),
        }
    return out


def spines_routes(ns) -> list[dict]:
    return [r for r in ip_json("-4", "-n", ns, "route", "show", "table", "all") if ours(r)]


def run_cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="spines-kr")
    add_lab_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(list(argv))
    return args.func(args)


def node(st, name):
    return next(n for n in st["nodes"] if n["name"] == name)


def routes_of(st) -> dict:
    return {n["name"]: ops.kernel_routes(n["netns"], ops.table_of(st)) for n in st["nodes"]}


@pytest.fixture(scope="module")
def labs(tmp_path_factory):
    """(A, B, what the kernel held before B): both up and converged; B made by the CLI."""
    a_name = f"sktest{os.urandom(3).hex()}"
    b_name = f"{a_name}b"
    topo = tmp_path_factory.mktemp("overlays") / "pentagram.toml"
    topo.write_text(PENTAGRAM)
    try:
        a = netns.up(topology.demo(), a_name)
        assert ops.wait_converged(a, timeout=15) is not None, "ring did not converge"
        before = {"kernel": snapshot(a), "routes": routes_of(a)}
        assert run_cli("lab", "up", str(topo), "--name", b_name, "--join", a_name,
                       "--port", str(PORT_B)) == 0
        b = netns.status(b_name)
        assert ops.wait_converged(b, timeout=15) is not None, "the second overlay did not converge"
        yield a, b, before
    finally:
        netns.down(b_name)
        netns.down(a_name)


def test_each_overlay_routes_in_its_own_table(labs):
    a, b, before = labs
    assert (a["table"], b["table"]) == (254, PORT_B)
    assert (b["join"], b["slot"]) == (a["name"], 1)
    assert netns.status(a["name"])["joined"] == [b["name"]]
    assert ops.converged(a) and ops.converged(b)
    # A's routes did not move when B came up
    assert routes_of(a) == before["routes"]
    for n in a["nodes"]:
        ns, me = n["netns"], n["name"]
        assert node(b, me)["netns"] == ns  # B's node runs in A's namespace of that name
        main = ip_json("-n", ns, "route", "show", "table", "main", "proto", "81")
        second = ip_json("-n", ns, "route", "show", "table", str(PORT_B), "proto", "81")
        # main: exactly A's routes (to A's logical IDs, over A's links); table 8200: B's
        assert sorted(r["dst"] for r in main) == sorted(
            o["logical_id"] for o in a["nodes"] if o["name"] != me)
        assert all(r["gateway"].startswith("10.200.") and r["prefsrc"] == n["logical_id"]
                   for r in main)
        assert sorted(r["dst"] for r in second) == sorted(
            o["logical_id"] for o in b["nodes"] if o["name"] != me)
        assert all(r["gateway"].startswith("10.201.") and r["dev"].startswith("o1-")
                   and r["prefsrc"] == node(b, me)["logical_id"] for r in second)
        # ... and no route of ours anywhere else
        assert {str(r.get("table", "main")) for r in spines_routes(ns)} == {"main", str(PORT_B)}
        # one policy rule, B's daemon's, for table 8200; none for main
        assert len(ops.kernel_rules(ns, PORT_B)) == 1 and ops.kernel_rules(ns, 254) == []
        lo = ip_json("-4", "-n", ns, "addr", "show", "dev", "lo")[0]["addr_info"]
        assert {f"{x['local']}/{x['prefixlen']}" for x in lo} == {
            "127.0.0.1/8", f"{n['logical_id']}/32", f"{node(b, me)['logical_id']}/32"}


def test_each_overlay_reaches_its_logical_ids_over_its_own_links(labs):
    a, b, _ = labs
    assert [o["logical_id"] for o in b["nodes"]] == [f"10.101.0.{i}" for i in range(1, 6)]
    # n1-n2 is a ring link; the pentagram goes round by n5
    assert ops.path(a, "n1", "n2") == ["n1", "n2"]
    assert ops.path(b, "n1", "n2") == ["n1", "n5", "n2"]
    assert ops.path(b, "n1", "n4") == ["n1", "n3", "n4"]
    n1 = node(b, "n1")
    for dst in ("n2", "n3", "n4", "n5"):
        res = ops.ping(b, "n1", dst, count=2, source=n1["logical_id"])
        assert res.returncode == 0, res.stdout + res.stderr
        res = ops.ping(a, "n1", dst, count=2, source=node(a, "n1")["logical_id"])
        assert res.returncode == 0, res.stdout + res.stderr
    got = ip_json("-n", n1["netns"], "route", "get", node(b, "n2")["logical_id"], "from",
                  n1["logical_id"])[0]
    assert got["dev"] == "o1-n5" and got["gateway"] == "10.201.0.17"
    with ops.Probe(b, "n4", "n1", duration=1.0) as probe:
        res = probe.result()
    assert res["received"] == res["sent"] == 100 and res["lost"] == 0


def test_status_and_exec_of_the_joined_lab(labs, capsys):
    a, b, _ = labs
    assert run_cli("lab", "status", "--name", b["name"], "--json") == 0
    st = json.loads(capsys.readouterr().out)
    assert (st["join"], st["table"], st["port"]) == (a["name"], PORT_B, PORT_B)
    assert [n["netns"] for n in st["nodes"]] == [n["netns"] for n in a["nodes"]]
    assert all(n["alive"] and n["control_socket"].startswith(b["state_dir"]) for n in st["nodes"])
    assert [(ln["a_ifname"], ln["a_address"]) for ln in st["links"]][:2] == [
        ("o1-n3", "10.201.0.1/30"), ("o1-n4", "10.201.0.5/30")]
    assert run_cli("lab", "status", "--name", a["name"]) == 0
    assert f"overlays joined: {b['name']}" in capsys.readouterr().out
    argv, env = netns.exec_argv(b["name"], "n3", ["true"])
    assert argv[:4] == ["ip", "netns", "exec", node(a, "n3")["netns"]]
    assert env["SPINES_KR_PORT"] == str(PORT_B) and env["SPINES_KR_SOCKET"].endswith("n3.ctl")


def test_restart_of_a_joined_node_touches_only_its_overlay(labs, capsys):
    a, b, before = labs
    mine = routes_of(b)
    old = node(netns.status(b["name"]), "n3")["pid"]
    assert run_cli("lab", "restart", "--name", b["name"], "n3", "--kill") == 0
    assert "n3: daemon restarted" in capsys.readouterr().out
    st = netns.status(b["name"])
    assert node(st, "n3")["pid"] != old and all(n["alive"] for n in st["nodes"])
    assert ops.wait(lambda: routes_of(b) == mine and ops.converged(b), 10) is not None
    assert routes_of(a) == before["routes"]
    ns = node(a, "n3")["netns"]
    assert ops.wait(lambda: len(ops.kernel_rules(ns, PORT_B)) == 1, 10) is not None


@pytest.mark.parametrize("case", ["port", "slot", "logical_id", "link_subnet", "node", "self"])
def test_a_clashing_join_is_refused_before_anything_is_made(labs, case):
    a, b, _ = labs
    name, port, slot, text = f"{a['name']}c", 8300, 2, PENTAGRAM
    if case == "port":
        port = 8100
    elif case == "slot":
        slot = 1
    elif case == "logical_id":
        text = PENTAGRAM.replace('name = "n3"\n', 'name = "n3"\nlogical_id = "10.101.0.3"\n')
    elif case == "link_subnet":
        text = 'link_subnet = "10.200.0.0/24"\n' + PENTAGRAM
    elif case == "node":
        text = PENTAGRAM + '[[node]]\nname = "n9"\n'
    elif case == "self":
        name = a["name"]
    kernel = snapshot(a)
    with pytest.raises(netns.LabConflict) as err:
        netns.up(topology.parse(text, slot=slot), name, join=a["name"], port=port)
    assert {"port": "port 8100 is the overlay port", "slot": "slot 1 is taken",
            "logical_id": "10.101.0.3/32 overlaps", "link_subnet": "overlaps the link n1-n2",
            "node": "'n9' is not a node", "self": "cannot join itself"}[case] in str(err.value)
    assert snapshot(a) == kernel
    if case != "self":
        assert not (netns.STATE_ROOT / name).exists()
    assert netns.joined_labs(a["name"]) == [b["name"]]


def test_z_down_of_the_joined_lab_removes_only_its_own(labs):
    a, b, before = labs
    pids = [n["pid"] for n in b["nodes"]]
    report = netns.down(b["name"])
    assert not report["problems"] and not report["warnings"], report
    assert sorted(report["stopped"]) == ["n1", "n2", "n3", "n4", "n5"]
    assert report["netns_deleted"] == [] and len(report["links_deleted"]) == 5
    assert len(report["addresses_removed"]) == 5
    assert report["kernel_cleaned"] == []  # its daemons withdrew routes and rule themselves
    for pid in pids:
        info = netns._proc(pid)
        assert info is None or info[1] == "Z", f"pid {pid} still runs"
    for n in a["nodes"]:
        assert [r for r in spines_routes(n["netns"]) if r.get("table")] == []
        assert ops.kernel_rules(n["netns"], PORT_B) == []
    # A: untouched, still converged on the same routes; the kernel as before B came
    assert netns.status(a["name"])["joined"] == []
    assert all(n["alive"] for n in netns.status(a["name"])["nodes"])
    assert ops.converged(a) and routes_of(a) == before["routes"]
    assert snapshot(a) == before["kernel"]
    assert not (netns.STATE_ROOT / b["name"]).exists()
    assert run_cli("lab", "down", "--name", b["name"]) == 0  # idempotent


def test_zz_down_of_the_base_takes_a_joined_lab_down_first(labs, capsys):
    a, _, before = labs
    c_name = f"{a['name']}d"
    c = netns.up(topology.parse(PENTAGRAM, slot=netns.join_slot(a["name"])), c_name,
                 join=a["name"], port=PORT_B + 100)
    assert c["slot"] == 1 and ops.wait_converged(c, timeout=15) is not None
    # a crash leaves its routes and rule behind: the base's down removes them with the lab
    victim = node(c, "n3")
    state = json.loads((Path(c["state_dir"]) / "state.json").read_text())
    # the daemon the lab started: its pid, checked against its recorded start time
    assert netns._signal(victim["pid"], node(state, "n3")["start_time"], signal.SIGKILL)
    assert ops.wait(lambda: not node(netns.status(c_name), "n3")["alive"], 10) is not None
    assert len(ops.kernel_routes(victim["netns"], PORT_B + 100)) == 4
    assert run_cli("lab", "down", "--name", a["name"]) == 0
    out = capsys.readouterr().out
    assert f"lab {c_name} (joined to {a['name']}) taken down first" in out
    assert "n3: 4 routes in table 8300" in out and "n3: rule priority" in out
    assert not (netns.STATE_ROOT / c_name).exists() and not (netns.STATE_ROOT / a["name"]).exists()
    assert not [ns for ns in netns._netns_names() if ns.startswith(a["name"])]
