"""Pure parts of virtual links and discovery: the TUNNEL and ANNOUNCE codecs (wire.tunnel), the
neighbor plan, names and VNIs (daemon.tunnels), the settings (config), WireGuard key files
(keys), the WireGuard requests (netlink.wireguard: genl attributes, UAPI text), the request
builders and longest-prefix match (netlink.tunnels), the feature refusals, and the lab's
underlay (lab.topology, lab.state)."""

from __future__ import annotations

import base64
import os
import socket

import pytest

from spines_kr import config
from spines_kr.daemon.features import Refused, decide
from spines_kr.daemon.tunnels import Want, ifname_for, plan_neighbors, vni_for
from spines_kr.keys import KeyFileError, load_wireguard_key, new_wireguard_key
from spines_kr.lab import topology
from spines_kr.netlink import wireguard as wg
from spines_kr.netlink.capabilities import FEATURES, Capabilities
from spines_kr.netlink.core import parse_attrs
from spines_kr.netlink.tunnels import (UnderlayRoute, alias, best_route, link_request,
                                       parse_alias)
from spines_kr.wire import tunnel as wt
from spines_kr.wire.auth import KeyRing
from spines_kr.wire.packets import DecodeError
from spines_kr.wire.x25519 import public_key


def cfg(**values):
    return config.build({"logical_id": "10.0.0.1", "auth": "none", **values})


# --- wire ---------------------------------------------------------------------------------


def test_tunnel_offer_golden_bytes_and_round_trip():
    msg = wt.TunnelOffer(wt.WIREGUARD, wt.F_REQUEST | wt.F_CONFIGURED, 0xAC100001, 51820, 1500,
                         0, bytes(range(32)))
    pkt = msg.encode(instance=8100, sender=0x0A640001)
    assert pkt[:16].hex() == "534b01101fa400000a64000100300000"
    assert pkt[16:32].hex() == "01050000ac100001ca6c05dc00000000"
    assert pkt[32:] == bytes(range(32))
    header, back, trailer = wt.decode(pkt, instance=8100)
    assert (header.sender, back, trailer) == (0x0A640001, msg, b"")


def test_announce_round_trip_and_sealed():
    ring = KeyRing({1: b"k" * 32}, 1, boot=7)
    pkt = ring.seal(wt.Announce(0xC0A84D01, 8100).encode(instance=8100, sender=5))
    header, msg, trailer = wt.decode(pkt, instance=8100, expect=wt.ANNOUNCE)
    assert msg == wt.Announce(0xC0A84D01, 8100)
    assert KeyRing({1: b"k" * 32}, 1, boot=8).check(header.sender, pkt, trailer, 0.0) is None
    assert KeyRing({1: b"x" * 32}, 1, boot=8).check(header.sender, pkt, trailer, 0.0) == "auth_mac"


@pytest.mark.parametrize("mutate, reason", [
    (lambda b: b[:-1], "short"), (lambda b: b + b"\0", "long"),
    (lambda b: b[:17] + b"\x80" + b[18:], "malformed"),  # unknown flag
    (lambda b: b[:16] + b"\x09" + b[17:], "malformed"),  # unknown kind
    (lambda b: b[:18] + b"\x00\x01" + b[20:], "malformed"),  # reserved
    (lambda b: b[:28] + b"\x01\x00\x00\x00" + b[32:], "malformed"),  # VNI beyond 24 bits
])
def test_tunnel_offer_decoding_is_strict(mutate, reason):
    body = wt.TunnelOffer(wt.VXLAN, 0, 0, 4789, 1500, 42).encode(instance=1, sender=2)
    data = bytearray(body)
    mutated = bytes(mutate(bytes(data)))
    # keep the header's body length consistent with what the mutation left
    mutated = mutated[:12] + (len(mutated) - 16).to_bytes(2, "big") + mutated[14:]
    with pytest.raises(DecodeError) as e:
        wt.decode(mutated, instance=1)
    assert e.value.reason == reason


def test_decode_refuses_other_types_and_instances():
    pkt = wt.Announce(1, 8100).encode(instance=8100, sender=2)
    with pytest.raises(DecodeError, match="type"):
        wt.decode(pkt, instance=8100, expect=wt.TUNNEL)
    with pytest.raises(DecodeError, match="instance"):
        wt.decode(pkt, instance=8200)


# --- the plan of neighbors, names ---------------------------------------------------------


def test_plan_neighbors_direct_tunnels_and_unresolved():
    on_link = {"192.0.2.2"}.__contains__
    c = cfg(neighbors=["192.0.2.2", "203.0.113.5"],
            neighbor=[{"address": "198.51.100.7", "tunnel": "vxlan", "keepalive_s": 5}])
    direct, wanted, unresolved = plan_neighbors(c, {}, on_link)
    assert direct == ["192.0.2.2"]
    assert wanted == {"198.51.100.7": Want("vxlan", 5)}
    assert "not in a connected subnet" in unresolved["203.0.113.5"]
    # with a default kind, -a neighbors that are not on-link become tunnels
    c2 = cfg(neighbors=["192.0.2.2", "203.0.113.5"], tunnel="vxlan")
    assert plan_neighbors(c2, {}, on_link)[1] == {"203.0.113.5": Want("vxlan", None)}
    # run-time additions: an explicit kind always makes a tunnel, even to an on-link address
    assert plan_neighbors(c, {"192.0.2.2": "vxlan"}, on_link)[1]["192.0.2.2"] == Want("vxlan")


def test_tunnel_names_fit_ifnamsiz_say_what_they_are_and_are_host_unique():
    n = ifname_for("wireguard", 8100, "10.100.0.1", "10.100.0.2", salt=4026531840)
    assert len(n) == 15 and n.startswith("wg0a640002")
    assert ifname_for("vxlan", 8100, "10.100.0.1", "10.100.0.2").startswith("vx0a640002")
    variants = {ifname_for("wireguard", p, o, "10.100.0.2", s) for p in (8100, 8200)
                for o in ("10.100.0.1", "10.100.0.3") for s in (1, 2)}
    assert len(variants) == 8  # port, own ID and namespace each change the name
    assert ifname_for("wireguard", 8100, "10.100.0.1", "10.100.0.2", 9) == ifname_for(
        "wireguard", 8100, "10.100.0.1", "10.100.0.2", 9)  # stable across restarts


def test_vni_is_24_bits_and_never_zero():
    v = {vni_for(8100, f"10.100.0.{i}", "172.16.0.5") for i in range(1, 50)}
    assert all(0 < x <= wt.MAX_VNI for x in v) and len(v) == 49


# --- settings -----------------------------------------------------------------------------


def test_neighbor_tables_and_flags():
    c = config.build({"logical_id": "10.0.0.1", "auth": "none",
                      "neighbor": [{"address": "192.0.2.7", "tunnel": "vxlan"}]},
                     {"neighbor": ["vxlan:198.51.100.1"]})
    assert c.neighbor == (("198.51.100.1", "vxlan", None),)  # flags win over the file
    with pytest.raises(config.ConfigError, match=r"neighbor\[0\]: 'x' is not KIND:ADDRESS"):
        cfg(neighbor=["x"])
    with pytest.raises(config.ConfigError, match=r"neighbor\[0\].tunnel: 'l2tp'"):
        cfg(neighbor=[{"address": "192.0.2.7", "tunnel": "l2tp"}])
    with pytest.raises(config.ConfigError, match=r"neighbor\[0\].mtu: unknown key"):
        cfg(neighbor=[{"address": "192.0.2.7", "mtu": 1400}])
    with pytest.raises(config.ConfigError, match="wireguard_key_file: not set"):
        cfg(neighbor=["wireguard:192.0.2.7"])
    with pytest.raises(config.ConfigError, match="route_priority"):
        cfg(neighbor=["vxlan:192.0.2.7"], route_priority=0)
    assert cfg(tunnel="vxlan").tunnel == "vxlan"


def test_discovery_addresses():
    assert cfg(discovery=["224.0.0.120"]).discovery == ("224.0.0.120",)
    with pytest.raises(config.ConfigError, match="at most 10"):
        cfg(discovery=[f"239.1.1.{i}" for i in range(11)])
    with pytest.raises(config.ConfigError, match="not a multicast address"):
        cfg(discovery=["10.1.1.1"])
    with pytest.raises(config.ConfigError, match="contradicts -U"):
        cfg(discovery=["224.0.0.120"], unicast_only=True)


def test_the_cli_takes_d_now(capsys):
    from spines_kr.cli import NOT_YET, main

    assert "-d" not in NOT_YET
    assert main(["daemon", "-l", "10.0.0.1", "--auth", "none", "-d", "10.0.0.9"]) == 2
    assert "not a multicast address" in capsys.readouterr().err


def test_tunnel_kinds_the_kernel_lacks_are_refused_naming_the_feature():
    present = {k: True for k in FEATURES}
    present["gre"] = False
    with pytest.raises(Refused, match=r"GRE tunnels \(CONFIG_NET_IPGRE\)"):
        decide(cfg(neighbor=["gre:192.0.2.7"]), Capabilities(present))
    decide(cfg(neighbor=["vxlan:192.0.2.7"]), Capabilities(present))


# --- keys ---------------------------------------------------------------------------------


def test_wireguard_key_files(tmp_path):
    text, pub = new_wireguard_key()
    path = tmp_path / "wg.key"
    path.write_text(text)
    path.chmod(0o600)
    private, public = load_wireguard_key(str(path))
    assert base64.b64encode(public).decode() == pub == base64.b64encode(
        public_key(private)).decode()
    path.chmod(0o640)
    with pytest.raises(KeyFileError, match="chmod 600"):
        load_wireguard_key(str(path))
    path.chmod(0o600)
    path.write_text("not a key\n")
    with pytest.raises(KeyFileError, match="WireGuard private key in base64"):
        load_wireguard_key(str(path))


def test_keygen_wireguard_writes_0600_and_prints_the_public_key(tmp_path, capsys):
    from spines_kr.cli import main

    path = tmp_path / "wg.key"
    assert main(["keygen", "--wireguard", str(path)]) == 0
    assert oct(os.stat(path).st_mode & 0o777) == "0o600"
    pub = capsys.readouterr().out.rsplit(" ", 1)[1].strip()
    assert base64.b64encode(load_wireguard_key(str(path))[1]).decode() == pub
    assert main(["keygen", "--wireguard", str(path)]) == 2  # never overwritten


# --- WireGuard requests -------------------------------------------------------------------


def test_uapi_set_and_get_text():
    peer = wg.PeerConfig(b"\x01" * 32, ("172.16.0.5", 51820), 25)
    text = wg.uapi_set_text(b"\x02" * 32, peer)
    assert text.splitlines()[:-1] == [
        "set=1", "private_key=" + "02" * 32, "listen_port=0", "replace_peers=true",
        "public_key=" + "01" * 32, "endpoint=172.16.0.5:51820",
        "persistent_keepalive_interval=25", "replace_allowed_ips=true", "allowed_ip=0.0.0.0/0"]
    assert text.endswith("\n\n")
    in_place = wg.uapi_set_text(b"\x02" * 32, peer, listen_port=None, replace=False)
    assert "private_key" not in in_place and "replace_peers" not in in_place
    assert "update_only=true" in in_place
    code, port, peers = wg.parse_uapi_get(
        "private_key=00\nlisten_port=4242\npublic_key=" + "01" * 32 + "\nendpoint=1.2.3.4:5\n"
        "last_handshake_time_sec=10\nlast_handshake_time_nsec=500000000\nrx_bytes=7\n"
        "tx_bytes=8\nerrno=0\n\n")
    assert (code, port) == (0, 4242)
    assert peers[b"\x01" * 32] == wg.PeerStatus(("1.2.3.4", 5), 10.5, 7, 8)


def test_genl_set_device_attributes():
    body = wg.set_device_request("wg0", b"\x02" * 32,
                                 wg.PeerConfig(b"\x01" * 32, ("172.16.0.5", 51820), 25))
    assert body[:4] == bytes([wg.WG_CMD_SET_DEVICE, 1, 0, 0])
    attrs = parse_attrs(body, 4)
    assert attrs[wg.WGDEVICE_A_IFNAME] == b"wg0\0"
    assert attrs[wg.WGDEVICE_A_PRIVATE_KEY] == b"\x02" * 32
    assert int.from_bytes(attrs[wg.WGDEVICE_A_FLAGS], "little") == wg.WGDEVICE_F_REPLACE_PEERS
    peer = parse_attrs(parse_attrs(attrs[wg.WGDEVICE_A_PEERS])[0])
    assert peer[wg.WGPEER_A_PUBLIC_KEY] == b"\x01" * 32
    ep = peer[wg.WGPEER_A_ENDPOINT]
    assert ep[2:4] == (51820).to_bytes(2, "big") and socket.inet_ntoa(ep[4:8]) == "172.16.0.5"
    allowed = parse_attrs(parse_attrs(peer[wg.WGPEER_A_ALLOWEDIPS])[0])
    assert allowed[wg.WGALLOWEDIP_A_CIDR_MASK] == b"\0"
    in_place = parse_attrs(wg.set_device_request("wg0", b"\x02" * 32, wg.PeerConfig(
        b"\x01" * 32), listen_port=None, replace=False), 4)
    assert wg.WGDEVICE_A_PRIVATE_KEY not in in_place and wg.WGDEVICE_A_FLAGS not in in_place
    # the decoder reads what the kernel sends back (a device with one peer)
    port, peers = wg.decode_device([body])
    assert port == 0 and peers[b"\x01" * 32].endpoint == ("172.16.0.5", 51820)


# --- rtnetlink builders, longest-prefix match ---------------------------------------------


def test_vxlan_request_and_alias():
    body = link_request("vx0", "vxlan", remote="172.16.0.5", vni=42, port=4789)
    assert b"vxlan" in body and socket.inet_aton("172.16.0.5") in body
    a = alias(8100, "vxlan", "10.100.0.2", "172.16.0.5")
    assert parse_alias(a) == (8100, "vxlan", "10.100.0.2", "172.16.0.5")
    assert parse_alias("uplink to the ISP") is None
    with pytest.raises(ValueError):
        link_request("x", "l2tp")


def test_best_route_is_the_longest_prefix_then_the_lowest_priority():
    r = lambda dst: UnderlayRoute(dst, "192.0.2.1", 2, None, 0)
    routes = [("0.0.0.0/0", 0, r("0.0.0.0/0")), ("172.16.0.0/16", 100, r("a")),
              ("172.16.0.0/16", 10, r("b")), ("172.16.9.0/24", 0, r("c"))]
    assert best_route(routes, "172.16.9.9").dst == "c"
    assert best_route(routes, "172.16.1.1").dst == "b"
    assert best_route(routes, "8.8.8.8").dst == "0.0.0.0/0"
    assert best_route(routes[1:], "8.8.8.8") is None


# --- the lab's underlay -------------------------------------------------------------------

UNDERLAY = """
[[node]]
name = "n1"
[[node]]
name = "n2"
prefixes = ["172.16.0.0/12"]
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


def test_underlay_topology():
    t = topology.parse(UNDERLAY)
    assert [r.name for r in t.routers] == ["r1", "r2"] and t.links == ()
    assert [(u.a, u.b, str(u.a_address), u.a_ifname, u.b_ifname) for u in t.underlay] == [
        ("n1", "r1", "172.16.0.1/30", "u-r1", "u-n1"),
        ("r1", "r2", "172.16.0.5/30", "u-r2", "u-r1"),
        ("r2", "n2", "172.16.0.9/30", "u-n2", "u-r2")]
    assert t.tunnels == (topology.TunnelLink(0, "n1", "n2", "wireguard"),)
    assert str(t.endpoint("n1")) == "172.16.0.1" and str(t.endpoint("n2")) == "172.16.0.10"
    routes = t.underlay_routes()
    assert routes["n1"] == [("default", "172.16.0.2")]
    assert routes["r1"] == [("172.16.0.8/30", "172.16.0.6")]
    assert routes["r2"] == [("172.16.0.0/30", "172.16.0.5")]


def test_underlay_lab_plan():
    from spines_kr.lab import state
    from spines_kr.lab.daemons import daemon_argv

    st = state.plan(topology.parse(UNDERLAY), "sktestplan", daemon=daemon_argv)
    assert st["routers"] == [{"name": "r1", "netns": "sktestplan-r1"},
                             {"name": "r2", "netns": "sktestplan-r2"}]
    assert "sktestplan-r2" in st["netns"]
    n1 = st["nodes"][0]
    assert n1["tunnels"] == ["wireguard:172.16.0.10"]
    assert n1["argv"][n1["argv"].index("--tunnel-neighbor") + 1] == "wireguard:172.16.0.10"
    assert n1["wireguard_key"].endswith("n1.wg.key")
    assert st["tunnels"] == [{"a": "n1", "b": "n2", "kind": "wireguard",
                              "a_endpoint": "172.16.0.1", "b_endpoint": "172.16.0.10"}]
    from spines_kr.lab.build import steps

    batches = dict(steps(st))
    per_ns = dict(batches["addresses"])
    assert "route add default via 172.16.0.2" in per_ns["sktestplan-n1"]
    assert per_ns["sktestplan-r1"][-1] == "route add 172.16.0.8/30 via 172.16.0.6"


@pytest.mark.parametrize("text, message", [
    ('[[node]]\nname="a"\n[[node]]\nname="b"\n[[link]]\na="a"\nb="b"\ntunnel="x"\n',
     "link[0].tunnel: 'x' is not one of"),
    ('[[node]]\nname="a"\n[[node]]\nname="b"\n[[link]]\na="a"\nb="b"\ntunnel="vxlan"\n',
     "link[0].tunnel: node 'a' has no [[underlay]] link"),
    ('[[node]]\nname="a"\n[[underlay]]\na="a"\nb="r9"\n', "underlay[0].b: unknown node or router"),
    ('[[node]]\nname="a"\n[[router]]\nname="a"\n', "router[0].name: duplicate name 'a'"),
    ('underlay_subnet="10.200.0.0/16"\n[[node]]\nname="a"\n[[router]]\nname="r"\n',
     "underlay_subnet: 10.200.0.0/16 overlaps link_subnet"),
    ('[[node]]\nname="a"\n[[node]]\nname="b"\n[[link]]\na="a"\nb="b"\ntunnel="vxlan"\n'
     'latency_ms=5\n', "link[0].latency_ms: not for a tunnel"),
])
def test_underlay_errors_name_their_field(text, message):
    with pytest.raises(topology.TopologyError) as e:
        topology.parse(text)
    assert message in str(e.value)


def test_vagrant_plan_of_an_underlay():
    from spines_kr.deploy.vagrant import WIREGUARD_KEY_PATH, plan

    p = plan(topology.parse(UNDERLAY), lab="under")
    vms = {vm["name"]: vm for vm in p["vms"]}
    assert [vms[r]["role"] for r in ("r1", "r2")] == ["router", "router"]
    assert [n["kind"] for n in p["networks"]] == ["underlay"] * 3
    n1 = vms["n1"]
    assert 'neighbor = ["wireguard:172.16.0.10"]' in n1["config"]
    assert f'wireguard_key_file = "{WIREGUARD_KEY_PATH}"' in n1["config"]
    key = next(f for f in n1["files"] if f["path"] == WIREGUARD_KEY_PATH)
    assert key["mode"] == "0600" and len(key["content"].strip()) == 44
    r1 = next(f["content"] for f in vms["r1"]["files"] if f["path"].endswith("u-r2.network"))
    assert "Destination=172.16.0.8/30\nGateway=172.16.0.6" in r1
    n1_net = next(f["content"] for f in n1["files"] if f["path"].endswith("u-r1.network"))
    assert "Destination=172.16.0.4/30" in n1_net and "Destination=0.0.0.0/0" not in n1_net
    import tomllib

    config.build(tomllib.loads(n1["config"]))  # the daemon reads it
