"""Tunnel devices, their addresses, pinned endpoint routes and WireGuard configuration against
the real kernel, in namespaces the tests create (``netlink.tunnels``, ``netlink.wireguard``).

Two namespaces joined by a veth pair stand for two routers of an underlay; each test makes
its tunnels there and the fixtures delete both namespaces (and stop any wireguard-go)."""

from __future__ import annotations

import os
import secrets
import subprocess

import pytest

from spines_kr import RTPROT_SPINES
from spines_kr.netlink import wireguard as wg
from spines_kr.netlink.tunnels import TunnelKernel, alias, parse_alias
from spines_kr.wire.x25519 import clamp, public_key
from tests.kernel.conftest import ip, ip_json


@pytest.fixture
def pair():
    """(ns_a, ns_b): 172.16.9.1/30 <-> 172.16.9.2/30, each with a logical ID on lo."""
    a, b = f"sktest-{secrets.token_hex(4)}", f"sktest-{secrets.token_hex(4)}"
    for ns in (a, b):
        subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        ip(a, "link", "add", "u0", "type", "veth", "peer", "name", "u0", "netns", b)
        for ns, addr, lid in ((a, "172.16.9.1/30", "10.100.0.1/32"),
                              (b, "172.16.9.2/30", "10.100.0.2/32")):
            ip(ns, "link", "set", "lo", "up")
            ip(ns, "addr", "add", addr, "dev", "u0")
            ip(ns, "addr", "add", lid, "dev", "lo")
            ip(ns, "link", "set", "u0", "up")
        yield a, b
    finally:
        for ns in (a, b):
            subprocess.run(["ip", "netns", "del", ns], check=False)


def ping(ns, dst):
    return subprocess.run(["ip", "netns", "exec", ns, "ping", "-c", "1", "-W", "2", "-I",
                           "10.100.0.1" if dst == "10.100.0.2" else "10.100.0.2", dst],
                          capture_output=True, text=True)


def retry(fn, tries=20):
    """The first handshake may need a retry of the ping (WireGuard queues one packet)."""
    for _ in range(tries):
        r = fn()
        if r.returncode == 0:
            return r
    return r


@pytest.mark.needs("vxlan")
def test_vxlan_point_to_point_unnumbered(pair):
    a, b = pair
    made = {}
    for ns, remote, peer, local in ((a, "172.16.9.2", "10.100.0.2", "10.100.0.1"),
                                    (b, "172.16.9.1", "10.100.0.1", "10.100.0.2")):
        with TunnelKernel(ns) as k:
            idx = k.create("vxtest0", "vxlan", remote=remote, vni=4242, port=4789)
            k.configure(idx, mtu=1450, alias_text=alias(8100, "vxlan", peer, remote), up=True)
            k.address(idx, local, peer, 1020, RTPROT_SPINES)
            made[ns] = (idx, k.ours(8100))
    idx, ours = made[a]
    assert list(ours) == [idx] and ours[idx].kind == "vxlan" and ours[idx].mtu == 1450
    assert parse_alias(ours[idx].alias) == (8100, "vxlan", "10.100.0.2", "172.16.9.2")
    d = ip_json(a, "-d", "link", "show", "dev", "vxtest0")[0]["linkinfo"]["info_data"]
    assert (d["id"], d["remote"], d["port"], d["learning"]) == (4242, "172.16.9.2", 4789, False)
    route = ip_json(a, "route", "show", "10.100.0.2")[0]
    assert (route["dev"], route["metric"], route["prefsrc"]) == ("vxtest0", 1020, "10.100.0.1")
    assert retry(lambda: ping(a, "10.100.0.2")).returncode == 0
    with TunnelKernel(a) as k:
        assert k.ours(8200) == {}  # another overlay's instance: not ours
        k.delete(idx)
        k.delete(idx)  # gone already: fine
        assert k.ours(8100) == {} and k.ifindex("vxtest0") is None
    with TunnelKernel(b) as k, pytest.raises(OSError) as e:
        k.create("vxtest1", "vxlan", remote="172.16.9.1", vni=4242, port=4789)
    assert "VNI" in str(e.value) or e.value.errno == 17  # one VNI per UDP port


def test_pinned_endpoint_route_beats_an_overlay_prefix(pair):
    a, _b = pair
    ip(a, "route", "add", "default", "via", "172.16.9.2")
    # the overlay announces a prefix covering the underlay, in our protocol
    ip(a, "route", "add", "172.16.0.0/12", "dev", "lo", "proto", str(RTPROT_SPINES), "metric",
       "20")
    with TunnelKernel(a) as k:
        under = k.underlay_route("172.16.20.7", RTPROT_SPINES)
        assert (under.dst, under.gateway) == ("0.0.0.0/0", "172.16.9.2")
        assert k.underlay_route("172.16.9.2", RTPROT_SPINES).gateway is None  # connected
        assert k.underlay_route("172.16.20.7", 999).dst == "172.16.0.0/12"  # not excluded
        k.pin("172.16.20.7", under.gateway, under.oif, 254, RTPROT_SPINES, 19)
        k.pin("172.16.20.7", under.gateway, under.oif, 254, RTPROT_SPINES, 19)  # replace: fine
        assert k.pins(254, RTPROT_SPINES, 19) == {"172.16.20.7": ("172.16.9.2", under.oif)}
        assert k.pins(254, RTPROT_SPINES, 20) == {}
        got = ip_json(a, "route", "get", "172.16.20.7")[0]
        assert (got["dev"], got["gateway"]) == ("u0", "172.16.9.2")
        k.unpin("172.16.20.7", 254, RTPROT_SPINES, 19)
        k.unpin("172.16.20.7", 254, RTPROT_SPINES, 19)  # gone already: fine
        assert k.pins(254, RTPROT_SPINES, 19) == {}
    assert ip_json(a, "route", "get", "172.16.20.7")[0]["dev"] == "lo"  # captured without it


@pytest.mark.needs("wireguard_go")
def test_wireguard_go_configured_over_its_uapi_socket(pair):
    a, b = pair
    keys = {ns: clamp(os.urandom(32)) for ns in pair}
    names = {a: f"wgt{secrets.token_hex(5)}", b: f"wgt{secrets.token_hex(5)}"}
    procs = []
    try:
        for ns in pair:
            procs.append(wg.start_wireguard_go(names[ns], netns=ns))
        port_b = None
        for ns, other, local, peer in ((b, a, "10.100.0.2", "10.100.0.1"),
                                       (a, b, "10.100.0.1", "10.100.0.2")):
            dev = wg.UapiWireGuard(names[ns])
            endpoint = ("172.16.9.2", port_b) if ns == a else None  # b learns a by roaming
            dev.configure(keys[ns], wg.PeerConfig(public_key(keys[other]), endpoint, 25))
            port = dev.listen_port()
            assert 0 < port < 65536
            if ns == b:
                port_b = port
            with TunnelKernel(ns) as k:
                idx = k.ifindex(names[ns])
                assert idx is not None and k.links()[idx].kind == "tun"
                k.configure(idx, mtu=1440, alias_text=alias(8100, "wireguard", peer, "x"),
                            up=True)
                k.address(idx, local, peer, 1020, RTPROT_SPINES)
        assert retry(lambda: ping(a, "10.100.0.2")).returncode == 0
        status = wg.UapiWireGuard(names[b]).peer_status()[public_key(keys[a])]
        assert status.last_handshake > 0 and status.endpoint == ("172.16.9.1",
                                                                   wg.UapiWireGuard(names[a]).listen_port())
        # in place: a new keepalive keeps the session (the handshake is not redone)
        before = wg.UapiWireGuard(names[a]).peer_status()[public_key(keys[b])].last_handshake
        wg.UapiWireGuard(names[a]).configure(keys[a], wg.PeerConfig(
            public_key(keys[b]), ("172.16.9.2", port_b), 10), listen_port=None, replace=False)
        after = wg.UapiWireGuard(names[a]).peer_status()[public_key(keys[b])]
        assert after.last_handshake == before
        # deleting the device stops wireguard-go
        with TunnelKernel(a) as k:
            k.delete(k.ifindex(names[a]))
        assert procs[0].wait(timeout=10) is not None
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        for n in names.values():
            try:
                os.unlink(wg.socket_path(n))
            except OSError:
                pass


@pytest.mark.needs("wireguard_module")
def test_kernel_wireguard_over_generic_netlink(pair):
    a, b = pair
    keys = {ns: clamp(os.urandom(32)) for ns in pair}
    ports = {}
    for ns in (b, a):
        other = a if ns == b else b
        with TunnelKernel(ns) as k:
            idx = k.create("wgtest0", "wireguard")
            dev = wg.KernelWireGuard("wgtest0", ns)
            endpoint = ("172.16.9.2", ports[b]) if ns == a else None
            dev.configure(keys[ns], wg.PeerConfig(public_key(keys[other]), endpoint, 25))
            ports[ns] = dev.listen_port()
            k.configure(idx, mtu=1420, up=True)
            k.address(idx, "10.100.0.1" if ns == a else "10.100.0.2",
                      "10.100.0.2" if ns == a else "10.100.0.1", 1020, RTPROT_SPINES)
    assert retry(lambda: ping(a, "10.100.0.2")).returncode == 0
    assert wg.KernelWireGuard("wgtest0", b).peer_status()[public_key(keys[a])].last_handshake > 0


@pytest.mark.needs("gre")
def test_gre_point_to_point(pair):
    a, _b = pair
    with TunnelKernel(a) as k:
        idx = k.create("grtest0", "gre", remote="172.16.9.2", local="172.16.9.1")
        assert k.links()[idx].kind == "gre"
        k.delete(idx)


@pytest.mark.needs("ipip")
def test_ipip_point_to_point(pair):
    a, _b = pair
    with TunnelKernel(a) as k:
        idx = k.create("iptest0", "ipip", remote="172.16.9.2", local="172.16.9.1")
        assert k.links()[idx].kind == "ipip"
        k.delete(idx)
