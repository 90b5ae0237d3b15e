"""Overlay nodes that share no subnet: virtual links as kernel tunnels the daemons make.

Four overlay nodes hang off an underlay of four routers (namespaces that only route, static
routes; each node has one uplink and a default route, as an edge router has)::

    n1 - r1 ----- r2 - n2         tunnels: n1-n2, n1-n3, n2-n4 WireGuard (the kernel module
          |       |                        where the kernel has it, else wireguard-go),
    n3 - r3 ----- r4 - n4                  n3-n4 VXLAN

Hosts h1 (behind n1) and h2 (behind n2) exchange traffic through the kernels of the overlay.
n4 announces 172.16.0.0/12, a prefix that covers the whole underlay: every node routes it into
the overlay, and the tunnels' endpoint routes (pinned /32s) keep the tunnels' own packets on the
underlay.  One lab for the module; each test leaves it healed and converged.  No wall-clock
assertion: how long a failover takes is ``bench/tunnels.py``'s figure.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from spines_kr.lab import netns, ops, topology
from spines_kr.netlink.nsenter import socket_in_netns

pytestmark = [pytest.mark.timeout(300), pytest.mark.needs("veth", "bridge", "wireguard", "vxlan")]
TIMEOUT = 20.0

UNDERLAY = """
[[node]]
name = "n1"
[[node]]
name = "n2"
[[node]]
name = "n3"
[[node]]
name = "n4"
prefixes = ["172.16.0.0/12"]
""" + "".join(f'[[router]]\nname = "r{i}"\n' for i in range(1, 5)) + "".join(
    f'[[underlay]]\na = "{a}"\nb = "{b}"\n' for a, b in [
        ("n1", "r1"), ("n2", "r2"), ("n3", "r3"), ("n4", "r4"),
        ("r1", "r2"), ("r1", "r3"), ("r2", "r4"), ("r3", "r4")]) + "".join(
    f'[[link]]\na = "{a}"\nb = "{b}"\ntunnel = "{k}"\n' for a, b, k in [
        ("n1", "n2", "wireguard"), ("n1", "n3", "wireguard"), ("n2", "n4", "wireguard"),
        ("n3", "n4", "vxlan")]) + """
[[host]]
name = "h1"
attach = "n1"
[[host]]
name = "h2"
attach = "n2"
"""


def ip_json(ns, *args):
    return json.loads(subprocess.run(["ip", "-j", "-n", ns, *args], capture_output=True,
                                     text=True, check=True).stdout or "[]")


def node(st, name):
    return next(n for n in st["nodes"] if n["name"] == name)


def spines(st, name, *args):
    """``spines-kr ARGS`` against a node's daemon; (exit status, stdout, stderr)."""
    argv, env = netns.exec_argv(st["name"], name, [sys.executable, "-m", "spines_kr", *args])
    env["PYTHONPATH"] = netns.child_env()["PYTHONPATH"]
    r = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=30)
    return r.returncode, r.stdout, r.stderr


def tunnels_view(st, name):
    """``spines-kr show tunnels`` of a node (its control socket is a file of this host)."""
    from spines_kr.ctl import request

    reply = request(node(st, name)["control_socket"], {"cmd": "show", "what": "tunnels"})
    assert reply["ok"], reply
    return reply["data"]


def all_up(st) -> bool:
    """Every tunnel end exists and the overlay link over it is up, on every node."""
    return all(t["state"] == "up" for n in st["nodes"] for t in tunnels_view(st, n["name"])
               ["tunnels"]) and sum(len(tunnels_view(st, n["name"])["tunnels"])
                                    for n in st["nodes"]) == 8


def wg_processes(ns_pids):
    return [p for p in ns_pids if "wireguard-go" in open(f"/proc/{p}/cmdline").read()]


def tunnel_devices(ns):
    return {l["ifname"]: l for l in ip_json(ns, "-d", "link", "show")
            if l.get("ifalias", "").startswith("spines-kr ")}


@pytest.fixture(scope="module")
def lab():
    name = f"sktest{os.urandom(3).hex()}"
    try:
        st = netns.up(topology.parse(UNDERLAY), name)
        assert ops.wait_converged(st, timeout=40) is not None, "the overlay did not converge"
        assert ops.wait(lambda: all_up(st), 40) is not None, "tunnels not up"
        yield st
    finally:
        netns.down(name)


def healed(st):
    assert ops.wait(lambda: ops.converged(st) and all_up(st), TIMEOUT) is not None


def test_every_node_routes_to_every_other_over_tunnels(lab):
    routes = ops.all_routes(lab)
    ids = {n["logical_id"]: n["name"] for n in lab["nodes"]}
    for n in lab["nodes"]:
        mine = ip_json(n["netns"], "-4", "route", "show", "proto", "spines")
        # every other node's logical ID and the n4's prefix; next hops are logical IDs of
        # neighbors, reached over tunnel devices
        want = {f"{lid}/32" for lid in ids if lid != n["logical_id"]} | {
            p for o in lab["nodes"] if o is not n for p in o["prefixes"]}
        assert want <= set(routes[n["name"]]), (n["name"], routes[n["name"]])
        for r in mine:
            hops = [h for h in r.get("nexthops") or [r] if "dev" in h]
            assert hops, r
            if r.get("metric") == 19:  # an endpoint route: on the underlay, never a tunnel
                assert all(h["dev"].startswith("u-") for h in hops), r
                continue
            assert all(h["dev"][:2] in ("wg", "vx") and h["gateway"] in ids for h in hops), r


def test_status_lists_each_tunnel(lab):
    out = subprocess.run([sys.executable, "-m", "spines_kr", "lab", "status", "--name",
                          lab["name"], "--json"], capture_output=True, text=True,
                         env=netns.child_env(), check=True).stdout
    st = json.loads(out)
    kinds = {(t["a"], t["b"]): t for t in st["tunnels"]}
    assert set(kinds) == {("n1", "n2"), ("n1", "n3"), ("n2", "n4"), ("n3", "n4")}
    for (a, b), t in kinds.items():
        assert t["kind"] == ("vxlan" if (a, b) == ("n3", "n4") else "wireguard")
        # the underlay is 1500 bytes everywhere: WireGuard takes 60, VXLAN 50
        assert t["mtu"] == t["a_mtu"] == t["b_mtu"] == (1450 if t["kind"] == "vxlan" else 1440)
        assert t["a_ifname"][:2] == {"wireguard": "wg", "vxlan": "vx"}[t["kind"]]
        assert len(t["a_ifname"]) <= 15
        assert t["a_endpoint"] == node_endpoint(st, a) and t["b_endpoint"] == node_endpoint(st, b)
    # the names are host-unique (wireguard-go's socket directory is the host's)
    names = [t[f"{s}_ifname"] for t in st["tunnels"] for s in ("a", "b")]
    assert len(set(names)) == len(names)
    view = tunnels_view(lab, "n1")["tunnels"]
    assert {t["peer"]: t["state"] for t in view} == {"10.100.0.2": "up", "10.100.0.3": "up"}
    wg = next(t for t in view if t["peer"] == "10.100.0.2")
    assert wg["endpoint_route"].startswith("via 172.16.0.2 dev u-r1")
    assert wg["backend"] == ("kernel" if _module() else "wireguard-go")


def node_endpoint(st, name):
    u = next(u for u in st["underlay"] if name in (u["a"], u["b"]))
    return (u["a_address"] if u["a"] == name else u["b_address"]).split("/")[0]


def _module():
    from tests.conftest import capabilities

    return capabilities().has("wireguard_module")


def test_hosts_exchange_traffic_through_the_overlay(lab):
    res = ops.ping(lab, "h1", "h2", count=3)
    assert res.returncode == 0, res.stdout + res.stderr
    with ops.Probe(lab, "h1", "h2", duration=1.0) as probe:
        r = probe.result()
    assert r["received"] == r["sent"] == 100 and r["lost"] == 0


def test_an_overlay_prefix_covering_the_underlay_breaks_nothing(lab):
    n1 = node(lab, "n1")["netns"]
    # the overlay routes the whole underlay towards n4 ...
    cover = ip_json(n1, "route", "show", "172.16.0.0/12", "proto", "spines")
    assert cover, cover
    assert all(h["dev"].startswith(("wg", "vx")) for h in cover[0].get("nexthops") or cover)
    # ... but the tunnels' own packets follow the pinned endpoint routes on the underlay
    for endpoint in ("172.16.0.5", "172.16.0.9"):
        got = ip_json(n1, "route", "get", endpoint)[0]
        assert got["dev"] == "u-r1" and got["gateway"] == "172.16.0.2", got
    # while another underlay address (no tunnel endpoint) goes into the overlay
    assert ip_json(n1, "route", "get", "172.16.0.30")[0]["dev"].startswith(("wg", "vx"))
    res = ops.ping(lab, "h1", "h2", count=2)
    assert res.returncode == 0, res.stdout + res.stderr


@pytest.mark.needs("wireguard")
def test_the_underlay_sees_only_wireguard_ciphertext(lab):
    """A packet socket on r1's link to r2 (the path of the n1-n2 tunnel) while h1 sends UDP
    datagrams with a marker to h2: every packet there is WireGuard between the two endpoints,
    no inner address shows and the marker never appears."""
    marker = b"SPINES-KR-PLAINTEXT-MARKER"
    r1 = next(r for r in lab["routers"] if r["name"] == "r1")["netns"]
    s = socket_in_netns(r1, socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
    s.bind(("u-r2", 0))
    s.settimeout(0.2)
    seen, stop = [], threading.Event()

    def capture():
        while not stop.is_set():
            try:
                seen.append(s.recv(65535))
            except TimeoutError:
                pass

    t = threading.Thread(target=capture)
    t.start()
    try:
        argv, env = netns.exec_argv(lab["name"], "h1", [sys.executable, "-c", (
            "import socket,time\n"
            "s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n"
            f"for i in range(200):\n s.sendto({marker!r}*8,('10.210.1.2',9999)); time.sleep(0.005)\n")])
        subprocess.run(argv, env=env, check=True, timeout=30)
        res = ops.ping(lab, "h1", "h2", count=3)
        assert res.returncode == 0
    finally:
        stop.set()
        t.join()
        s.close()
    inner = {n["logical_id"] for n in lab["nodes"]} | {"10.210.0.2", "10.210.1.2"}
    endpoints = {"172.16.0.1", "172.16.0.5"}
    udp = 0
    for frame in seen:
        assert marker not in frame
        if frame[12:14] != b"\x08\x00":
            continue  # ARP and the like: no IPv4
        ip = frame[14:]
        ihl = (ip[0] & 0xF) * 4
        src, dst = socket.inet_ntoa(ip[12:16]), socket.inet_ntoa(ip[16:20])
        assert src not in inner and dst not in inner, (src, dst)
        assert {src, dst} == endpoints, (src, dst)
        assert ip[9] == 17, f"not UDP: protocol {ip[9]}"
        payload = ip[ihl + 8:]
        # WireGuard messages: type 1..4, then three reserved zero bytes
        assert payload[0] in (1, 2, 3, 4) and payload[1:4] == b"\0\0\0", payload[:16]
        udp += 1
    assert udp >= 200  # the datagrams, pings and hellos crossed here, all as ciphertext


@pytest.mark.needs("nftables")
def test_silent_underlay_failure_reroutes_through_another_node(lab):
    assert ops.path(lab, "n1", "n2") == ["n1", "n2"]
    with ops.Probe(lab, "h1", "h2", duration=6.0, rate=200) as probe:
        time.sleep(1.0)
        ops.silent_failure(lab, "r1", "r2")  # nftables drop on r1's end, interfaces up
        try:
            assert ops.wait(lambda: ops.path(lab, "n1", "n2") == ["n1", "n3", "n4", "n2"],
                            TIMEOUT) is not None
            r = probe.result()
        finally:
            ops.silent_failure(lab, "r1", "r2", on=False)
    # traffic went on over n3 and n4 (how long it stopped is bench/tunnels.py's figure)
    assert r["received"] > 0 and r["last_seq"] == r["sent"] - 1
    healed(lab)


def test_neighbor_add_and_remove_at_run_time(lab):
    n4_underlay = node_endpoint(lab, "n4")
    assert ops.path(lab, "n1", "n4")[0] == "n1" and len(ops.path(lab, "n1", "n4")) == 3
    code, out, err = spines(lab, "n1", "neighbor", "add", n4_underlay, "--tunnel", "vxlan")
    assert code == 0, err
    assert "added (over a vxlan tunnel)" in out
    assert ops.wait(lambda: ops.path(lab, "n1", "n4") == ["n1", "n4"], TIMEOUT) is not None
    assert any(d.startswith("vx") for d in tunnel_devices(node(lab, "n4")["netns"]))
    code, out, err = spines(lab, "n1", "neighbor", "remove", n4_underlay)
    assert code == 0, err
    # both ends go: n1 removes its own and tells n4, which made its end only because asked
    gone = lambda: (len(ops.path(lab, "n1", "n4")) == 3 and not any(
        d.startswith("vx") for d in tunnel_devices(node(lab, "n1")["netns"])) and
        sum(d.startswith("vx") for d in tunnel_devices(node(lab, "n4")["netns"])) == 1)
    assert ops.wait(gone, TIMEOUT) is not None
    code, _out, err = spines(lab, "n1", "neighbor", "add", "192.0.2.99")
    assert code == 1 and "not in a connected subnet" in err
    code, _out, err = spines(lab, "n1", "neighbor", "add", n4_underlay, "--tunnel", "gre")
    if not _has("gre"):
        assert code == 1 and "GRE" in err, err
    healed(lab)


def _has(feature):
    from tests.conftest import capabilities

    return capabilities().has(feature)


def _set_argv(lab, name, argv):
    from spines_kr.lab import state as labstate

    st = labstate.load(lab["name"])
    next(n for n in st["nodes"] if n["name"] == name)["argv"] = argv
    labstate.save(st)


def test_sighup_with_a_changed_neighbor_list(lab, tmp_path):
    """n1 restarted with its neighbors in a configuration file (flags win over the file, so
    its --tunnel-neighbor flags go), then reloaded with a tunnel more, then without it."""
    from spines_kr.lab import state as labstate

    original = next(n for n in labstate.load(lab["name"])["nodes"] if n["name"] == "n1")["argv"]
    argv, tunnels = [], []
    it = iter(original)
    for a in it:
        if a == "--tunnel-neighbor":
            tunnels.append(next(it))
        else:
            argv.append(a)
    conf = tmp_path / "n1.toml"

    def write(extra=()):
        conf.write_text("".join(f'[[neighbor]]\naddress = "{t.split(":")[1]}"\n'
                                f'tunnel = "{t.split(":")[0]}"\n' for t in [*tunnels, *extra]))

    write()
    _set_argv(lab, "n1", argv + ["-c", str(conf)])
    try:
        st = netns.restart(lab["name"], "n1")
        healed(lab)
        pid = node(st, "n1")["pid"]
        write([f"vxlan:{node_endpoint(lab, 'n4')}"])
        os.kill(pid, signal.SIGHUP)
        assert ops.wait(lambda: ops.path(lab, "n1", "n4") == ["n1", "n4"], TIMEOUT) is not None
        write()
        os.kill(pid, signal.SIGHUP)
        assert ops.wait(lambda: len(ops.path(lab, "n1", "n4")) == 3, TIMEOUT) is not None
    finally:
        _set_argv(lab, "n1", original)
        lab.update(netns.restart(lab["name"], "n1"))
    healed(lab)


def test_crash_then_restart_leaves_no_stale_tunnel(lab):
    n2 = node(lab, "n2")
    ns = n2["netns"]
    before = sorted(tunnel_devices(ns))
    assert len(before) == 2
    netns.restart(lab["name"], "n2", kill=True)  # SIGKILL: tunnels and wireguard-go stay ...
    healed(lab)
    # ... and the new daemon removed them and made its own: the same names, no other
    assert ops.wait(lambda: sorted(tunnel_devices(ns)) == before, TIMEOUT) is not None
    from spines_kr.lab.build import pids_in

    if not _module():
        assert ops.wait(lambda: len(wg_processes(pids_in([ns])[ns])) == 2, TIMEOUT) is not None
    pins = [r for r in ip_json(ns, "route", "show", "proto", "spines") if r.get("metric") == 19]
    assert sorted(r["dst"] for r in pins) == ["172.16.0.1", "172.16.0.13"]


def test_a_node_without_the_key_forms_no_tunnel_and_injects_no_route(lab, tmp_path):
    """n3's daemon replaced by one with another overlay key (and a prefix to inject): its
    offers are dropped (auth_mac) at n1 and n4, no tunnel forms, no route of it appears."""
    from spines_kr.keys import new_key_file_text
    from spines_kr.lab import state as labstate

    n3 = next(n for n in labstate.load(lab["name"])["nodes"] if n["name"] == "n3")
    rogue_key = tmp_path / "rogue.toml"
    rogue_key.write_text(new_key_file_text())
    rogue_key.chmod(0o600)
    argv = list(n3["argv"])
    argv[argv.index("--key-file") + 1] = str(rogue_key)
    argv[argv.index("--control-socket") + 1] = str(tmp_path / "rogue.ctl")
    argv[argv.index("-lf") + 1] = str(tmp_path / "rogue.log")
    argv[argv.index("-ud") + 1] = str(tmp_path / "rogue.ipc")
    argv += ["--prefix", "10.99.0.0/24"]
    os.kill(n3["pid"], signal.SIGTERM)
    assert ops.wait(lambda: not netns._alive(n3["pid"], n3["start_time"]), TIMEOUT) is not None
    before = {n: tunnels_view(lab, n)["tunnels"] for n in ("n1", "n4")}
    dropped = lambda name: _status(lab, name)["counters"].get("tunnels.dropped.auth_mac", 0)
    base = {n: dropped(n) for n in ("n1", "n4")}
    rogue = subprocess.Popen(["ip", "netns", "exec", n3["netns"], *argv], env=netns.child_env(),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        # both neighbors heard the rogue ask several times, and refused every offer
        assert ops.wait(lambda: all(dropped(n) >= base[n] + 3 for n in ("n1", "n4")),
                        TIMEOUT) is not None
        for name in ("n1", "n4"):
            now = {t["peer"]: t for t in tunnels_view(lab, name)["tunnels"]}
            assert now["10.100.0.3"]["state"] != "up"
            assert {p: t["ifname"] for p, t in now.items()} == {
                t["peer"]: t["ifname"] for t in before[name]}  # nothing new was made
        for n in lab["nodes"]:
            if n["name"] != "n3":
                assert "10.99.0.0/24" not in ops.kernel_routes(n["netns"])
        rogue_view = _request(str(tmp_path / "rogue.ctl"), "tunnels")["tunnels"]
        assert rogue_view and all(t["state"] == "asking" for t in rogue_view)
    finally:
        rogue.terminate()
        rogue.wait(timeout=30)
        lab.update(netns.restart(lab["name"], "n3"))
    healed(lab)


def _request(path, what):
    from spines_kr.ctl import request

    reply = request(path, {"cmd": "show", "what": what})
    assert reply["ok"], reply
    return reply["data"]


def _status(st, name):
    return _request(node(st, name)["control_socket"], "status")


TWO = """
[[node]]
name = "n1"
[[node]]
name = "n2"
[[router]]
name = "r1"
[[underlay]]
a = "n1"
b = "r1"
[[underlay]]
a = "n2"
b = "r1"
[[link]]
a = "n1"
b = "n2"
tunnel = "wireguard"
"""


def test_two_overlays_on_one_host_have_distinct_tunnels(lab):
    """A second lab whose nodes have the same logical IDs and port as this one's: its
    WireGuard devices get other names (wireguard-go's socket directory is the host's), and
    both overlays carry traffic."""
    other = f"sktest{os.urandom(3).hex()}"
    try:
        st = netns.up(topology.parse(TWO), other)
        assert ops.wait(lambda: all(t["state"] == "up" for t in tunnels_view(st, "n1")["tunnels"])
                        and tunnels_view(st, "n1")["tunnels"], TIMEOUT) is not None
        mine = {d for n in lab["nodes"] for d in tunnel_devices(n["netns"])}
        theirs = {d for n in st["nodes"] for d in tunnel_devices(n["netns"])}
        assert len(theirs) == 2 and not mine & theirs
        res = ops.ping(st, "n1", "n2", count=2, source="10.100.0.1")
        assert res.returncode == 0, res.stdout + res.stderr
        res = ops.ping(lab, "h1", "h2", count=2)
        assert res.returncode == 0, res.stdout + res.stderr
    finally:
        netns.down(other)
    assert all(os.path.exists(f"/var/run/wireguard/{d}.sock")
               for n in lab["nodes"] for d in tunnel_devices(n["netns"]) if d.startswith("wg")
               ) or _module()


NAT = """
[[node]]
name = "n1"
[[node]]
name = "n2"
[[router]]
name = "r1"
[[router]]
name = "r2"
[[underlay]]
a = "n1"
b = "r1"
[[underlay]]
a = "r1"
b = "r2"
[[underlay]]
a = "r2"
b = "n2"
[[link]]
a = "n1"
b = "n2"
tunnel = "wireguard"
"""


@pytest.mark.needs("nftables")
def test_a_node_behind_nat_that_only_connects_out_is_reachable():
    """n2 sits behind r2, which masquerades it (nftables); r1 has no route to n2's side, so n1
    can never reach n2's own address: the tunnel forms from n2's offers alone (through the
    NAT), n2's keepalives hold the mapping, and n1 reaches n2 through the overlay."""
    name = f"sktest{os.urandom(3).hex()}"
    try:
        st = netns.up(topology.parse(NAT), name)
        ns = {m["name"]: m["netns"] for m in st["nodes"] + st["routers"]}
        subprocess.run(["ip", "-n", ns["r1"], "route", "del", "172.16.0.8/30"], check=True)
        rules = ("table ip sktest_nat {\n chain post { type nat hook postrouting priority 100; "
                 "oifname \"u-r1\" masquerade; }\n}\n")
        subprocess.run(["ip", "netns", "exec", ns["r2"], "nft", "-f", "-"], input=rules,
                       text=True, check=True, capture_output=True)
        for n in ("n1", "n2"):  # negotiate afresh, now through the NAT
            st = netns.restart(name, n, kill=True)
        up = lambda: [t["state"] for t in tunnels_view(st, "n1")["tunnels"]] == ["up"]
        assert ops.wait(up, 30) is not None, tunnels_view(st, "n1")
        t = tunnels_view(st, "n1")["tunnels"][0]
        assert t["remote"] == "172.16.0.6"  # the NAT's address: where n2's offers came from
        res = ops.ping(st, "n1", "n2", count=2, source="10.100.0.1")
        assert res.returncode == 0, res.stdout + res.stderr
    finally:
        netns.down(name)


def test_lab_down_after_a_crash_leaves_nothing_behind():
    """A daemon killed (its tunnels and wireguard-go left running), then ``lab down``: no
    process, control socket, namespace, key file or state of the lab remains."""
    from spines_kr.lab.build import pids_in

    name = f"sktest{os.urandom(3).hex()}"
    try:
        st = netns.up(topology.parse(TWO), name)
        assert ops.wait(lambda: [t["state"] for t in tunnels_view(st, "n1")["tunnels"]] == ["up"],
                        TIMEOUT) is not None
        n1 = node(st, "n1")
        devices = sorted(tunnel_devices(n1["netns"]))
        os.kill(n1["pid"], signal.SIGKILL)
        from spines_kr.lab.daemons import proc

        gone = lambda: (info := proc(n1["pid"])) is None or info[1] in "ZX"
        assert ops.wait(gone, TIMEOUT) is not None
        left = wg_processes(pids_in([n1["netns"]])[n1["netns"]])
        assert _module() or len(left) == 1  # the crash left n1's wireguard-go running
    finally:
        report = netns.down(name)
    assert not report["problems"], report
    assert not any(os.path.exists(f"/proc/{p}") and "wireguard-go" in open(
        f"/proc/{p}/cmdline").read() for p in left)
    assert not any(os.path.exists(f"/var/run/wireguard/{d}.sock") for d in devices)
    assert not os.path.exists(st["state_dir"])  # the keys lived there
    assert not [ns for ns in os.listdir("/run/netns") if ns.startswith(name)]
