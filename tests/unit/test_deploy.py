"""Deployment generators: the Vagrant lab plan (topology -> VMs, networks, per-VM daemon config),
the OpenWrt UCI translator and init script, and `vagrant validate` on vagrant/Vagrantfile."""

from __future__ import annotations

import importlib.util
import io
import json
import os
import shutil
import subprocess
import sys
import tomllib
from ipaddress import IPv4Interface
from pathlib import Path

import pytest

from spines_kr.config import build, load_file
from spines_kr.deploy import toml_text, uci, vagrant
from spines_kr.deploy.uci import UciError, uci_to_toml
from spines_kr.lab import topology

REPO = Path(__file__).resolve().parents[2]

RICH = """\
metric = "latency"
port = 8200
multipath = true
[[node]]
name = "r_1"
logical_id = "10.99.0.1"
prefixes = ["10.50.1.0/24"]
[[node]]
name = "r2"
[[node]]
name = "r3"
groups = ["247.0.0.1", "227.1.2.3"]
[[node]]
name = "r4"
[[link]]
a = "r_1"
b = "r2"
latency_ms = 20
loss_pct = 1.5
bandwidth_kbps = 10000
[[link]]
a = "r2"
b = "r4"
[[link]]
a = "r_1"
b = "r3"
[[link]]
a = "r3"
b = "r4"
[[host]]
name = "h1"
attach = "r_1"
[[host]]
name = "h2"
attach = "r4"
[[host]]
name = "h3"
attach = "r4"
"""


def hub(spokes: int = 10) -> str:
    text = '[[node]]\nname = "hub"\n'
    text += "".join(f'[[node]]\nname = "s{i}"\n' for i in range(1, spokes + 1))
    return text + "".join(f'[[link]]\na = "hub"\nb = "s{i}"\n' for i in range(1, spokes + 1))


def files(vm: dict) -> dict[str, dict]:
    return {f["path"]: f for f in vm["files"]}


def daemon_config(vm: dict, tmp_path: Path):
    """The VM's daemon config as the daemon reads it: load_file + build."""
    path = tmp_path / f"{vm['name']}.toml"
    path.write_text(files(vm)[vagrant.CONFIG_PATH]["content"])
    assert files(vm)[vagrant.CONFIG_PATH]["content"] == vm["config"]
    return build(load_file(str(path)))


# -- Vagrant plan ------------------------------------------------------------------------------

def test_vagrant_ring_toml_is_the_demo_ring():
    assert topology.load(REPO / "vagrant" / "ring.toml") == topology.demo()


def check_plan_matches(topo: topology.Topology, plan: dict, tmp_path: Path) -> None:
    """One VM per node (then host), one network per link with matching addresses, and a daemon
    config per node VM that builds into the Config the topology implies."""
    assert [vm["name"] for vm in plan["vms"]] == ([n.name for n in topo.nodes]
                                                 + [h.name for h in topo.hosts])
    links = [n for n in plan["networks"] if n["kind"] == "link"]
    assert [(n["link"], n["members"], n["subnet"]) for n in links] == \
        [(ln.index, [ln.a, ln.b], str(ln.subnet)) for ln in topo.links]
    assert len({n["name"] for n in plan["networks"]}) == len(plan["networks"])
    macs = [nic["mac"] for vm in plan["vms"] for nic in vm["interfaces"]]
    assert len(set(macs)) == len(macs)
    assert all(int(m.split(":")[0], 16) & 0b11 == 0b10 for m in macs)  # local, unicast
    vms = {vm["name"]: vm for vm in plan["vms"]}
    for ln in topo.links:
        net = links[ln.index]["name"]
        for me, ifname, addr, peer, peer_addr in ((ln.a, ln.a_ifname, ln.a_address, ln.b,
                                                   ln.b_address),
                                                  (ln.b, ln.b_ifname, ln.b_address, ln.a,
                                                   ln.a_address)):
            [nic] = [n for n in vms[me]["interfaces"] if n["network"] == net]
            assert (nic["ifname"], nic["address"], nic["peer"], nic["peer_address"]) == \
                (ifname, str(addr), peer, str(peer_addr.ip))
            assert IPv4Interface(nic["address"]).network == ln.subnet
    for node in topo.nodes:
        vm = vms[node.name]
        assert (vm["role"], vm["logical_id"], vm["box"]) == ("node", str(node.logical_id),
                                                             plan["box"])
        cfg = daemon_config(vm, tmp_path)
        mine = topo.links_of(node.name)
        peers = tuple(str((ln.b_address if ln.a == node.name else ln.a_address).ip) for ln in mine)
        local = tuple(str((ln.a_address if ln.a == node.name else ln.b_address).ip) for ln in mine)
        assert cfg.logical_id == str(node.logical_id)
        assert cfg.neighbors == peers and tuple(vm["neighbors"]) == peers
        assert cfg.local_addresses == local
        assert (cfg.metric, cfg.port, cfg.multipath) == (topo.metric, topo.port, topo.multipath)
        assert cfg.kernel_levels == tuple(sorted(getattr(topo, "kernel_levels", (0,))))
        assert cfg.accept_link_commands is True
        assert cfg.groups == tuple(str(g) for g in node.groups)
        assert cfg.prefixes == tuple(str(p) for p in node.advertised)
        # every link NIC: a .link file naming it by MAC, a .network file giving its address
        for nic in vm["interfaces"]:
            base = f"/etc/systemd/network/10-spines-kr-{nic['ifname']}"
            link, network = files(vm)[f"{base}.link"], files(vm)[f"{base}.network"]
            assert f"MACAddress={nic['mac']}\n" in link["content"]
            assert f"Name={nic['ifname']}\n" in link["content"]
            assert f"MACAddress={nic['mac']}\n" in network["content"]
            assert f"Address={nic['address']}\n" in network["content"]
        lo = files(vm)["/etc/systemd/system/spines-kr-logical-id.service"]["content"]
        assert f"ExecStart=/sbin/ip address replace {node.logical_id}/32 dev lo\n" in lo
        assert "net.ipv4.ip_forward = 1" in files(vm)["/etc/sysctl.d/60-spines-kr.conf"]["content"]
        assert vm["provision_env"]["SPINES_KR_IFACES"].split() == \
            [f"{n['mac']}={n['ifname']}" for n in vm["interfaces"]]
        assert vm["provision_env"]["SPINES_KR_ROLE"] == "node"
        assert vm["provision_env"]["SPINES_KR_UNIT"] == "spines-kr@overlay"


def test_ring_plan(tmp_path):
    topo = topology.demo()
    plan = vagrant.plan(topo, lab="ring")
    check_plan_matches(topo, plan, tmp_path)
    json.loads(json.dumps(plan))  # JSON-able
    assert plan["box"] == "debian/bookworm64" and plan["lab"] == "ring"
    assert [n["name"] for n in plan["networks"]] == [f"spkr-ring-l{i}" for i in range(5)]
    assert all(n["kind"] == "link" for n in plan["networks"])
    n1 = plan["vms"][0]
    assert [(i["ifname"], i["address"], i["mac"]) for i in n1["interfaces"]] == [
        ("to-n2", "10.200.0.1/30", "02:73:6b:00:00:00"),
        ("to-n4", "10.200.0.18/30", "02:73:6b:00:04:01")]
    assert tomllib.loads(n1["config"]) == {
        "logical_id": "10.100.0.1", "port": 8100, "metric": "distance",
        "local_addresses": ["10.200.0.1", "10.200.0.18"],
        "neighbors": ["10.200.0.2", "10.200.0.17"], "prefixes": [],
        "kernel_levels": list(getattr(topo, "kernel_levels", (0,))),
        "multipath": True, "accept_link_commands": True, "keep_routes": True,
        "key_file": "/etc/spines-kr/overlay.key"}
    # no emulation in the ring: no setlink script, no ExecStartPost
    assert "/etc/spines-kr/link-emulation.sh" not in files(n1)
    assert "ExecStartPost" not in files(n1)[
        "/etc/systemd/system/spines-kr@overlay.service.d/vagrant-lab.conf"]["content"]


def test_plan_with_prefixes_multipath_emulation_and_hosts(tmp_path):
    topo = topology.parse(RICH)
    plan = vagrant.plan(topo, lab="rich", box="generic/debian12")
    check_plan_matches(topo, plan, tmp_path)
    vms = {vm["name"]: vm for vm in plan["vms"]}
    assert vms["r_1"]["hostname"] == "r-1" and vms["r_1"]["box"] == "generic/debian12"
    cfg = daemon_config(vms["r_1"], tmp_path)
    assert (cfg.metric, cfg.port, cfg.multipath, cfg.prefixes) == \
        ("latency", 8200, True, ("10.50.1.0/24",))
    # r4 has hosts but no prefixes: it announces its picked LAN /24
    r4 = topo.node("r4")
    assert daemon_config(vms["r4"], tmp_path).prefixes == (str(r4.lan.network),)
    # LANs: a network per node with hosts, the node and its hosts on it, lan0 everywhere
    lans = [n for n in plan["networks"] if n["kind"] == "lan"]
    assert [(n["name"], n["members"], n["subnet"]) for n in lans] == [
        ("spkr-rich-lan-r_1", ["r_1", "h1"], "10.50.1.0/24"),
        ("spkr-rich-lan-r4", ["r4", "h2", "h3"], str(r4.lan.network))]
    [lan_nic] = [n for n in vms["r4"]["interfaces"] if n["ifname"] == "lan0"]
    assert lan_nic["address"] == str(r4.lan)
    for h in topo.hosts:
        vm = vms[h.name]
        assert (vm["role"], vm["config"], vm["logical_id"]) == ("host", None, None)
        [nic] = vm["interfaces"]
        assert (nic["ifname"], nic["address"]) == ("lan0", str(h.address))
        network = files(vm)["/etc/systemd/network/10-spines-kr-lan0.network"]["content"]
        # routes via its node to every logical ID, the link subnet and the others' prefixes
        for dest in ([str(topo.link_subnet)] + [f"{n.logical_id}/32" for n in topo.nodes]
                     + [str(p) for n in topo.nodes if n.name != h.attach for p in n.advertised]):
            assert f"Destination={dest}\nGateway={h.gateway}\n" in network
        own = topo.node(h.attach).advertised[0]
        assert f"Destination={own}\n" not in network
        assert vm["provision_env"]["SPINES_KR_ROLE"] == "host"
        assert not any(f["path"].startswith("/etc/spines-kr") for f in vm["files"])
    # link emulation: both ends run setlink through their daemon after it starts
    for me, src, dst in (("r_1", "10.200.0.1", "10.200.0.2"), ("r2", "10.200.0.2", "10.200.0.1")):
        script = files(vms[me])["/etc/spines-kr/link-emulation.sh"]
        assert script["mode"] == "0755"
        assert f"setlink 10000 20 1.5 0 {src} {dst} 8200\n" in script["content"]
        dropin = files(vms[me])["/etc/systemd/system/spines-kr@overlay.service.d/vagrant-lab.conf"]
        assert "ExecStartPost=/bin/sh /etc/spines-kr/link-emulation.sh" in dropin["content"]
    assert "/etc/spines-kr/link-emulation.sh" not in files(vms["r3"])
    assert tomllib.loads(vms["r3"]["config"])["groups"] == ["247.0.0.1", "227.1.2.3"]
    assert subprocess.run(["sh", "-n"], input=files(vms["r2"])["/etc/spines-kr/link-emulation.sh"]
                          ["content"], text=True).returncode == 0


def test_hub_with_ten_spokes(tmp_path):
    topo = topology.parse(hub(10))
    plan = vagrant.plan(topo, lab="hub")
    check_plan_matches(topo, plan, tmp_path)
    assert len(plan["vms"][0]["interfaces"]) == 10
    assert len(daemon_config(plan["vms"][0], tmp_path).neighbors) == 10


def test_plan_names_and_errors():
    assert vagrant.lab_name("/x/My Lab_1.toml") == "my-lab-1"
    assert vagrant.lab_name("vagrant/ring.toml") == "ring"
    assert vagrant.hostname("_a_b_") == "a-b"
    assert vagrant.mac(0x1234, 7) == "02:73:6b:12:34:07"
    with pytest.raises(vagrant.PlanError, match="lab: 'Bad_Name'"):
        vagrant.plan(topology.demo(), lab="Bad_Name")
    with pytest.raises(vagrant.PlanError, match="more than 256 VMs"):
        vagrant.mac(1, 256)


def test_vagrant_cli(tmp_path, capsys):
    ring = str(REPO / "vagrant" / "ring.toml")
    key = tmp_path / "lab-key.toml"
    assert vagrant.main([ring, "--key", str(key)]) == 0  # creates the lab's key, mode 0600
    assert key.stat().st_mode & 0o777 == 0o600
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads(json.dumps(vagrant.plan(topology.demo(), lab="ring",
                                                         source="ring.toml",
                                                         key_text=key.read_text())))
    key_files = [f for vm in printed["vms"] for f in vm["files"]
                 if f["path"] == "/etc/spines-kr/overlay.key"]
    assert len(key_files) == 5 and all(f["mode"] == "0600" for f in key_files)
    assert vagrant.main([ring, "--config", "n3", "--lab", "x", "--key", str(key)]) == 0
    assert tomllib.loads(capsys.readouterr().out)["neighbors"] == ["10.200.0.5", "10.200.0.10"]
    bad = tmp_path / "bad.toml"
    bad.write_text('[[node]]\nname = "a"\n[[link]]\na = "a"\nb = "z"\n')
    assert vagrant.main([str(bad), "--key", str(key)]) == 2
    assert "link[0].b: unknown node 'z'" in capsys.readouterr().err
    assert vagrant.main([ring, "--config", "n9", "--key", str(key)]) == 2
    assert "no node 'n9'" in capsys.readouterr().err


def test_toml_text_round_trips():
    values = {"logical_id": "10.0.0.1", "log_file": 'a "q" \\ b\n\tc\x01\x7f é',
              "port": 8100, "multipath_tolerance": 0.25, "multipath": False,
              "neighbors": ["1.2.3.4", "5.6.7.8"], "kernel_levels": [0], "prefixes": []}
    text = toml_text(values, header="two\nlines")
    assert text.startswith("# two\n# lines\n")
    assert tomllib.loads(text) == values


# -- OpenWrt: UCI -> TOML ----------------------------------------------------------------------

def test_uci_example_config_builds(tmp_path):
    out = uci_to_toml((REPO / "openwrt" / "spines-kr.config").read_text())
    assert list(out) == ["main"]
    path = tmp_path / "main.toml"
    path.write_text(out["main"])
    cfg = build(load_file(str(path)))
    assert cfg.logical_id == "10.100.0.1"
    assert cfg.neighbors == ("192.0.2.2", "198.51.100.6")
    assert (cfg.kernel_levels, cfg.metric, cfg.port) == ((0,), "latency", 8100)
    assert (cfg.prefixes, cfg.multipath, cfg.accept_link_commands) == \
        (("192.168.1.0/24",), True, False)


def test_uci_syntax_quoting_lists_and_sections():
    text = r"""
package 'spines-kr'
# comment line
config overlay 'a'
	option logical_id 10.100.0.1        # bare word, trailing comment
	option key_file /etc/spines-kr/overlay.key
	list neighbor '10.1.0.2'
	list neighbor "10.1.0.6"
	list local_address '10.1.0.1'
	option log_file '/tmp/it'\''s "x".log'
	option control_group "ad\"m\\in"
	option enabled yes
	option hello_interval_ms '100'
	option dead_interval_ms "400"
	option multipath_tolerance '0.2'
	option prefsrc 'off'
	option kernel_level 0

config overlay
	option logical_id '10.100.0.9'
	option key_file '/k'

config overlay 'off'
	option enabled '0'
	option logical_id 'not even checked'
"""
    out = uci_to_toml(text)
    assert list(out) == ["a", "overlay1"]
    a = tomllib.loads(out["a"])
    assert a["neighbors"] == ["10.1.0.2", "10.1.0.6"]
    assert a["local_addresses"] == ["10.1.0.1"]
    assert a["log_file"] == "/tmp/it's \"x\".log"
    assert a["control_group"] == 'ad"m\\in'
    assert (a["hello_interval_ms"], a["dead_interval_ms"]) == (100, 400)
    assert (a["multipath_tolerance"], a["prefsrc"], a["kernel_levels"]) == (0.2, False, [0])
    assert "enabled" not in a
    assert out["a"].startswith("# generated by spines_kr.deploy.uci from UCI spines-kr.a:")
    assert tomllib.loads(out["overlay1"]) == {"logical_id": "10.100.0.9", "key_file": "/k"}
    assert "spines-kr.@overlay[1]" in out["overlay1"].splitlines()[0]


def test_uci_export_output():
    # what `uci export spines-kr` prints: anonymous sections named by uci
    text = ("package spines-kr\n\nconfig overlay 'cfg01e63d'\n\toption logical_id '10.100.0.2'\n\toption key_file '/etc/spines-kr/overlay.key'\n"
            "\tlist neighbor '10.1.0.1'\n\n")
    assert list(uci_to_toml(text)) == ["cfg01e63d"]


@pytest.mark.parametrize("body, message", [
    ("option bogus '1'", "spines-kr.main.bogus: unknown option"),
    ("list neighbors '10.0.0.2'", "spines-kr.main.neighbors: unknown option (use 'list neighbor')"),
    ("option port 'abc'", "spines-kr.main.port: 'abc' is not an integer"),
    ("option port '70000'", "spines-kr.main.port: 70000 is out of range 1..65535"),
    ("list port '8100'", "spines-kr.main.port: a single value; use 'option port'"),
    ("option port '1'\n\toption port '2'", "spines-kr.main.port: given twice"),
    ("option multipath 'maybe'", "spines-kr.main.multipath: 'maybe' is not a boolean"),
    ("option enabled 'perhaps'", "spines-kr.main.enabled: 'perhaps' is not a boolean"),
    ("list neighbor '10.0.0.300'", "spines-kr.main.neighbor: '10.0.0.300' is not an IPv4 address"),
    ("list kernel_level 'x'", "spines-kr.main.kernel_level: 'x' is not an integer"),
    ("list prefix '10.0.0.1/24'", "spines-kr.main.prefix: '10.0.0.1/24' is not an IPv4 network"),
    ("option metric 'hops'", "spines-kr.main.metric: 'hops' is not one of"),
    ("option multipath_tolerance 'lots'", "spines-kr.main.multipath_tolerance: 'lots' is not a"),
])
def test_uci_errors_name_the_option(body, message):
    text = f"config overlay 'main'\n\toption logical_id '10.100.0.1'\n\toption key_file '/etc/spines-kr/overlay.key'\n\t{body}\n"
    with pytest.raises(UciError) as e:
        uci_to_toml(text)
    assert str(e.value).startswith(message), str(e.value)


@pytest.mark.parametrize("text, message", [
    ("config overlay 'main'\n\tlist neighbor '10.0.0.2'\n", "spines-kr.main.logical_id: not set"),
    ("config overlays 'main'\n", "spines-kr.main: unknown section type 'overlays'"),
    ("config overlay 'main'\n\toption logical_id '10.1.1.1\n", "line 2: unterminated ' quote"),
    ('config overlay "main\n', 'line 1: unterminated " quote'),
    ("option logical_id '10.1.1.1'\n\toption key_file '/etc/spines-kr/overlay.key'\n", "line 1: option before any config section"),
    ("config overlay 'a'\n\toption logical_id 'x' 'y'\n", "line 2: option takes a name and one"),
    ("config overlay 'a'\n\tfrobnicate x\n", "line 2: unknown statement 'frobnicate'"),
    ("config overlay 'a-b'\n", "spines-kr.a-b: 'a-b' is not a section name"),
    ("config overlay 'a'\n\toption logical_id '10.0.0.1'\n\toption key_file '/etc/spines-kr/overlay.key'\nconfig overlay 'a'\n",
     "spines-kr.a: section 'a' defined twice"),
    ("package other\nconfig overlay 'm'\n\toption logical_id '10.0.0.1'\n\toption key_file '/etc/spines-kr/overlay.key'\n\toption port x\n",
     "other.m.port: 'x' is not an integer"),
    ("config overlay\n\toption logical_id '10.0.0.1'\n\toption key_file '/etc/spines-kr/overlay.key'\n\tlist neighbor '10.0.0.1'\n",
     "spines-kr.@overlay[0].neighbor: 10.0.0.1 is this node's own logical ID"),
])
def test_uci_errors(text, message):
    with pytest.raises(UciError) as e:
        uci_to_toml(text)
    assert str(e.value).startswith(message), str(e.value)


def test_uci_cli_writes_files_and_removes_stale_ones(tmp_path, capsys, monkeypatch):
    conf = tmp_path / "spines-kr"
    out = tmp_path / "out"
    conf.write_text("config overlay 'a'\n\toption logical_id '10.0.0.1'\n\toption key_file '/etc/spines-kr/overlay.key'\n"
                    "config overlay 'b'\n\toption logical_id '10.0.0.2'\n\toption key_file '/etc/spines-kr/overlay.key'\n\toption port 8200\n")
    assert uci.main([str(conf), str(out)]) == 0
    assert capsys.readouterr().out.split() == ["a", "b"]
    assert build(load_file(str(out / "b.toml"))).port == 8200
    (out / "mine.toml").write_text("logical_id = '1.2.3.4'\n")  # not ours: kept
    conf.write_text("config overlay 'a'\n\toption logical_id '10.0.0.1'\n\toption key_file '/etc/spines-kr/overlay.key'\n"
                    "config overlay 'b'\n\toption enabled 0\n")
    assert uci.main([str(conf), str(out)]) == 0
    assert capsys.readouterr().out.split() == ["a"]
    assert sorted(p.name for p in out.iterdir()) == ["a.toml", "mine.toml"]
    conf.write_text("config overlay 'a'\n\toption port '8100'\n")
    assert uci.main([str(conf), str(out)]) == 2
    assert capsys.readouterr().err.startswith("spines-kr: spines-kr.a.logical_id: not set")
    assert (out / "a.toml").exists()  # a failed translation changes nothing
    monkeypatch.setattr(sys, "stdin",
                        io.StringIO("config overlay 'x'\n\toption logical_id 1.1.1.1\n"
                                    "\toption key_file /k\n"))
    assert uci.main(["-"]) == 0
    assert capsys.readouterr().out.startswith("### x.toml\n# generated")


def test_openwrt_init_script_starts_one_instance_per_enabled_section(tmp_path):
    """Source the procd init script with stand-ins for rc.common's procd functions and uci."""
    conf = tmp_path / "spines-kr"
    conf.write_text((REPO / "openwrt" / "spines-kr.config").read_text()
                    + "\nconfig overlay 'second'\n\toption logical_id '10.101.0.1'\n\toption key_file '/etc/spines-kr/overlay.key'\n"
                    + "\toption port '8200'\n"
                    + "\nconfig overlay 'off'\n\toption enabled '0'\n")
    calls = tmp_path / "calls"
    script = f"""
uci() {{ cat '{conf}'; }}
logger() {{ echo "logger $*" >> '{calls}'; }}
procd_open_instance() {{ echo "open $1" >> '{calls}'; }}
procd_set_param() {{ echo "param $*" >> '{calls}'; }}
procd_close_instance() {{ echo "close" >> '{calls}'; }}
. '{REPO / "openwrt" / "spines-kr.init"}'
PYTHON='{sys.executable}'
CONF_DIR='{tmp_path / "etc"}'
start_service
"""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    r = subprocess.run(["sh", "-c", script], env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    lines = calls.read_text().splitlines()
    etc = tmp_path / "etc"
    for name in ("main", "second"):
        i = lines.index(f"open {name}")
        assert lines[i + 1] == f"param command /usr/bin/spines-kr daemon -c {etc}/{name}.toml"
        assert f"param file {etc}/{name}.toml" in lines[i:i + 8]
        assert "param reload_signal HUP" in lines[i:i + 8]
        assert build(load_file(str(etc / f"{name}.toml"))).logical_id in ("10.100.0.1",
                                                                         "10.101.0.1")
    assert "open off" not in lines
    before = {p.name: p.read_text() for p in etc.iterdir()}
    # a configuration error: the message logged, the last good configuration declared again
    # (procd would stop instances left out), its files untouched
    conf.write_text("config overlay 'main'\n\toption port 'x'\n")
    calls.unlink()
    r = subprocess.run(["sh", "-c", script], env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    lines = calls.read_text().splitlines()
    assert lines[0] == ("logger -s -t spines-kr -p daemon.err "
                        "spines-kr: spines-kr.main.port: 'x' is not an integer")
    assert [x for x in lines if x.startswith("open ")] == ["open main", "open second"]
    assert {p.name: p.read_text() for p in etc.iterdir()} == before
    # first start with a bad configuration: nothing to run
    shutil.rmtree(etc)
    calls.unlink()
    r = subprocess.run(["sh", "-c", script], env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert not [x for x in calls.read_text().splitlines() if x.startswith("open ")]


@pytest.mark.skipif(shutil.which("ruby") is None, reason="ruby not installed")
def test_vagrantfile_writes_the_planned_files(tmp_path):
    """The Vagrantfile's file-writing provisioner, run with its paths moved under tmp_path,
    writes every planned file of a VM byte for byte, with its mode."""
    plan = vagrant.plan(topology.parse(RICH), lab="rich")
    vm = plan["vms"][1]  # r2: config, NIC files, logical ID unit, link emulation script
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    source = (REPO / "vagrant" / "Vagrantfile").read_text()
    start = source.index("def spines_kr_files_script")
    helper = source[start:source.index("\nend\n", start) + 5]
    r = subprocess.run(["ruby", "-rjson", "-e", helper + 'print spines_kr_files_script('
                        'JSON.parse(File.read(ARGV[0]))["vms"][1]["files"])',
                        str(tmp_path / "plan.json")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    root = tmp_path / "root"
    script = r.stdout.replace("'/", f"'{root}/")
    assert subprocess.run(["sh", "-c", script]).returncode == 0
    for f in vm["files"]:
        written = root / f["path"].lstrip("/")
        assert written.read_text() == f["content"], f["path"]
        assert oct(written.stat().st_mode & 0o777) == oct(int(f["mode"], 8))
    assert len(list(p for p in root.rglob("*") if p.is_file())) == len(vm["files"])


def test_daemon_imports_with_only_the_openwrt_packages():
    """openwrt/README.md lists the python3-* packages the daemon needs; the modules of the others
    (openwrt/footprint.py NOT_ON_OPENWRT) made unimportable, every daemon module still imports."""
    spec = importlib.util.spec_from_file_location("footprint", REPO / "openwrt" / "footprint.py")
    footprint = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(footprint)
    assert footprint.openwrt_daemon(port=1, logical_id="10.0.0.1", local_addresses=[],
                                    neighbors=[], metric="distance", log_file="l", ipc_path="i",
                                    control_socket="c")[1:5] == \
        ["-c", footprint.RUNNER, ",".join(footprint.NOT_ON_OPENWRT), "daemon"]
    modules = sorted(p.relative_to(REPO).with_suffix("").as_posix().replace("/", ".")
                     .removesuffix(".__init__")
                     for p in (REPO / "spines_kr").rglob("*.py")
                     if p.name != "__main__.py" and "lab" not in p.parts)  # lab: not for routers
    code = (footprint.RUNNER.split("sys.argv = ")[0]
            + "import importlib\nfor m in sys.argv[2:]:\n    importlib.import_module(m)\n")
    r = subprocess.run([sys.executable, "-c", code, ",".join(footprint.NOT_ON_OPENWRT), *modules],
                       env=dict(os.environ, PYTHONPATH=str(REPO)), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]


def test_provision_script_parses():
    assert subprocess.run(["bash", "-n", str(REPO / "vagrant" / "provision.sh")]).returncode == 0


# -- vagrant validate --------------------------------------------------------------------------

def vagrant_validate(tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, VAGRANT_DOTFILE_PATH=str(tmp_path / "dot"),
               VAGRANT_HOME=str(tmp_path / "home"), VAGRANT_CHECKPOINT_DISABLE="1", **env)

    def run(*extra):
        return subprocess.run(["vagrant", "validate", *extra], cwd=REPO / "vagrant", env=env,
                              capture_output=True, text=True, timeout=120)

    r = run()
    if r.returncode != 0 and "No usable default provider" in r.stdout + r.stderr:
        r = run("--ignore-provider")  # no provider on this machine: check all but its block
    return r


@pytest.mark.skipif(shutil.which("vagrant") is None, reason="vagrant not installed")
@pytest.mark.parametrize("topo", ["ring", "rich", "hub"])
def test_vagrant_validate(tmp_path, topo):
    env = {}
    if topo != "ring":
        path = tmp_path / f"{topo}.toml"
        path.write_text(RICH if topo == "rich" else hub(10))
        env["SPINES_KR_TOPOLOGY"] = str(path)
    r = vagrant_validate(tmp_path, **env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "validated successfully" in r.stdout


@pytest.mark.skipif(shutil.which("vagrant") is None, reason="vagrant not installed")
def test_vagrant_reports_a_bad_topology(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[[node]]\nname = "a"\n[[link]]\na = "a"\nb = "z"\n')
    r = vagrant_validate(tmp_path, SPINES_KR_TOPOLOGY=str(bad))
    assert r.returncode != 0
    assert "link[0].b: unknown node 'z'" in r.stdout + r.stderr
