"""MulticastRouter against the real kernel: a line of three namespaces, src -- rt -- dst.

    src  s0 10.1.0.2/24 ==== a0 10.1.0.1/24  rt  b0 10.2.0.1/24 ==== d0 10.2.0.2/24  dst

The router socket lives in rt only; multicast is sent from src (out of s0, ttl 8) and from rt,
and received in dst, rt and src.  "Nothing arrived" is never waited for: after the packets that
must not arrive, a unicast *sentinel* is sent along the same veth to the same socket, and
whatever arrived before it is what the kernel did with them (a veth keeps order, and the kernel
forwards, delivers and queues an upcall in the same softirq that received the packet).
"""

from __future__ import annotations

import errno
import secrets
import select
import socket
import struct
import subprocess
import time
from collections import Counter
from dataclasses import dataclass

import pytest

from spines_kr.netlink.mroute import (
    IGMPMSG_NOCACHE, IGMPMSG_WRONGVIF, MAXVIFS, IgmpReport, MfcEntry, MrouteError,
    MulticastRouter, Upcall,
)
from spines_kr.netlink.nsenter import socket_in_netns
from tests.conftest import capabilities
from tests.kernel.conftest import ifindex, ip, ip_json

pytestmark = [pytest.mark.kernel, pytest.mark.needs("multicast_routing", "veth")]

SRC, RA, RB, DST = "10.1.0.2", "10.1.0.1", "10.2.0.1", "10.2.0.2"
G = "239.1.2.3"
PORT = 5000
SENTINEL = b"sentinel"
TIMEOUT = 10.0


@dataclass(frozen=True)
class Line:
    src: str
    rt: str
    dst: str
    s0: int  # ifindex in src
    a0: int  # ifindexes in rt
    b0: int
    d0: int  # ifindex in dst


@pytest.fixture
def line():
    base = f"sktest-{secrets.token_hex(3)}"
    names = [f"{base}-src", f"{base}-rt", f"{base}-dst"]
    created = []
    try:
        for name in names:
            subprocess.run(["ip", "netns", "add", name], check=True)
            created.append(name)
            ip(name, "link", "set", "lo", "up")
        src, rt, dst = names
        ip(src, "link", "add", "s0", "type", "veth", "peer", "name", "a0", "netns", rt)
        ip(rt, "link", "add", "b0", "type", "veth", "peer", "name", "d0", "netns", dst)
        for ns, dev, address in ((src, "s0", SRC), (rt, "a0", RA), (rt, "b0", RB),
                                 (dst, "d0", DST)):
            ip(ns, "addr", "add", f"{address}/24", "dev", dev)
            ip(ns, "link", "set", dev, "up")
        yield Line(src, rt, dst, ifindex(src, "s0"), ifindex(rt, "a0"), ifindex(rt, "b0"),
                   ifindex(dst, "d0"))
    finally:
        for name in created:
            subprocess.run(["ip", "netns", "del", name], check=False)


@pytest.fixture
def router(line):
    with MulticastRouter(None, line.rt) as r:
        yield r


# --- helpers ----------------------------------------------------------------------------------


def mreqn(group: str, ifindex: int) -> bytes:
    return struct.pack("=4s4si", socket.inet_aton(group), bytes(4), ifindex)


def sender(ns: str, ifindex: int, ttl: int = 8, loop: bool = True) -> socket.socket:
    sock = socket_in_netns(ns, socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, mreqn("0.0.0.0", ifindex))
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, ttl)
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, int(loop))
    return sock


def receiver(ns: str, joins: tuple[tuple[str, int], ...] = (), port: int = PORT) -> socket.socket:
    sock = socket_in_netns(ns, socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("0.0.0.0", port))
    for group, index in joins:
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreqn(group, index))
    return sock


def send_sentinel(ns: str, to: str, port: int = PORT) -> None:
    with socket_in_netns(ns, socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.sendto(SENTINEL, (to, port))


def collect(sock: socket.socket, done, timeout: float = TIMEOUT) -> list[bytes]:
    """Datagrams read until ``done(datagrams)``; fail after ``timeout`` seconds."""
    got: list[bytes] = []
    deadline = time.monotonic() + timeout
    while not done(got):
        left = deadline - time.monotonic()
        if left <= 0:
            pytest.fail(f"gave up after {timeout} s with {got}")
        if select.select([sock], [], [], left)[0]:
            got.append(sock.recv(2048))
    return got


def until_sentinel(got: list[bytes]) -> bool:
    return SENTINEL in got


def before_sentinel(sock: socket.socket, ns: str, to: str) -> list[bytes]:
    """Send the sentinel; return what the socket received before it."""
    send_sentinel(ns, to)
    got = collect(sock, until_sentinel)
    return got[:got.index(SENTINEL)]


def wait_for(router: MulticastRouter, predicate, timeout: float = TIMEOUT):
    """The first upcall or IGMP report satisfying ``predicate``; fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    seen = []
    while (left := deadline - time.monotonic()) > 0:
        if select.select([router], [], [], left)[0]:
            for event in router.read_upcalls():
                if predicate(event):
                    return event
                seen.append(event)
    pytest.fail(f"no matching event within {timeout} s; saw {seen}")


def mroute_json(line: Line, table: str = "default") -> list[dict]:
    return ip_json(line.rt, "mroute", "show", "table", table)


def sysctl(ns: str, name: str) -> str:
    return subprocess.run(["ip", "netns", "exec", ns, "sysctl", "-n", name], check=True,
                          capture_output=True, text=True).stdout.strip()


# --- tests ------------------------------------------------------------------------------------


def test_forwarding_follows_the_entry(line, router):
    va, vb = router.add_vif(None, line.a0), router.add_vif(None, line.b0)
    assert (va, vb) == (0, 1) and router.vifs == {0: line.a0, 1: line.b0}
    rx = receiver(line.dst, ((G, line.d0),))
    tx = sender(line.src, line.s0)

    # (a) no entry: one NOCACHE upcall with (S,G) and the arrival vif; nothing forwarded
    tx.sendto(b"0", (G, PORT))
    assert wait_for(router, lambda e: isinstance(e, Upcall)) == \
        Upcall(IGMPMSG_NOCACHE, va, SRC, G)
    assert before_sentinel(rx, line.rt, DST) == []
    assert router.dump()[SRC, G].iif is None  # unresolved: the kernel holds the packet

    # (b) with the entry each packet arrives exactly once, the held one included
    router.set_mfc(SRC, G, va, {vb: 1})
    for n in range(1, 6):
        tx.sendto(b"%d" % n, (G, PORT))
    got = collect(rx, lambda got: {b"%d" % n for n in range(6)} <= set(got))
    got += before_sentinel(rx, line.rt, DST)
    assert Counter(got) == Counter(b"%d" % n for n in range(6))
    entry = router.dump()[SRC, G]
    assert (entry.iif, entry.oifs, entry.packets) == (va, {vb: 1}, 6)

    # (d) without the entry: nothing forwarded, the kernel asks again
    assert router.del_mfc(SRC, G) is True
    assert router.del_mfc(SRC, G) is False
    tx.sendto(b"6", (G, PORT))
    wait_for(router, lambda e: e == Upcall(IGMPMSG_NOCACHE, va, SRC, G))
    assert before_sentinel(rx, line.rt, DST) == []


def test_ip_mroute_shows_what_dump_reads(line, router):
    va, vb = router.add_vif(3, line.a0), router.add_vif(7, line.b0)
    router.set_mfc(SRC, G, va, {vb: 1})
    router.set_mfc(SRC, "239.1.2.4", va, {vb: 5})
    router.set_mfc("10.1.0.9", G, vb, {va: 1})
    names = {va: "a0", vb: "b0"}
    shown = {(e["src"], e["dst"]): (e["iif"], {h["oif"]: h.get("ttl", 1) for h in e["multipath"]})
             for e in mroute_json(line)}
    dumped = {key: (names[e.iif], {names[v]: ttl for v, ttl in e.oifs.items()})
              for key, e in router.dump().items()}
    assert shown == dumped == {
        (SRC, G): ("a0", {"b0": 1}),
        (SRC, "239.1.2.4"): ("a0", {"b0": 5}),
        ("10.1.0.9", G): ("b0", {"a0": 1}),
    }
    text = ip(line.rt, "mroute", "show")
    assert f"({SRC},{G})" in text and "Iif: a0" in text and "Oifs: b0(ttl 5)" in text


@pytest.mark.needs("multicast_tables")
def test_two_tables_coexist(line, router):
    with MulticastRouter(1000, line.rt) as second:
        assert (router.multiple_tables, second.multiple_tables) == (True, True)
        assert (router.table, second.table) == (253, 1000)
        with pytest.raises(MrouteError, match="already has a router socket") as e:
            MulticastRouter(1000, line.rt)
        assert e.value.errno == errno.EADDRINUSE
        # One device may be a vif of both tables; a0's rule sends what arrives there to 1000.
        router.add_vif(0, line.a0)
        router.add_vif(1, line.b0)
        va, vb = second.add_vif(5, line.a0), second.add_vif(6, line.b0)
        rules = ip_json(line.rt, "mrule", "show")
        ours = sorted(r["iif"] for r in rules if r.get("table") == "1000")
        assert ours == ["a0", "b0"]
        rx = receiver(line.dst, ((G, line.d0),))
        tx = sender(line.src, line.s0)
        tx.sendto(b"0", (G, PORT))
        assert wait_for(second, lambda e: isinstance(e, Upcall)) == \
            Upcall(IGMPMSG_NOCACHE, va, SRC, G)
        assert router.read_upcalls() == []
        second.set_mfc(SRC, G, va, {vb: 1})
        assert collect(rx, lambda got: bool(got)) == [b"0"]
        assert [(e["src"], e["dst"], e["iif"]) for e in mroute_json(line, "1000")] == \
            [(SRC, G, "a0")]
        assert mroute_json(line, "default") == [] and router.dump() == {}
        assert list(second.dump()) == [(SRC, G)]
        second.del_vif(va)
        assert sorted(r["iif"] for r in ip_json(line.rt, "mrule", "show")
                      if r.get("table") == "1000") == ["b0"]
    assert not [r for r in ip_json(line.rt, "mrule", "show") if r.get("table") == "1000"]
    assert mroute_json(line, "1000") == []


@pytest.mark.needs("multicast_tables")
def test_rules_left_by_a_crash_are_swept(line):
    ip(line.rt, "mrule", "add", "iif", "a0", "lookup", "1000", "pref", "21000", "proto", "81")
    ip(line.rt, "mrule", "add", "iif", "a0", "lookup", "1000", "pref", "500")  # not ours
    with MulticastRouter(1000, line.rt) as r:
        assert r.multiple_tables and r.table == 1000
        left = [(x["priority"], x.get("protocol")) for x in ip_json(line.rt, "mrule", "show")
                if x.get("table") == "1000"]
        assert left == [(500, None)]


def test_close_removes_everything(line):
    r = MulticastRouter(1000, line.rt)
    assert sysctl(line.rt, "net.ipv4.conf.all.mc_forwarding") == "1"
    r.add_vif(None, line.a0)
    r.add_vif(None, line.b0)
    r.set_mfc(SRC, G, 0, {1: 1})
    assert sysctl(line.rt, "net.ipv4.conf.a0.mc_forwarding") == "1"
    assert mroute_json(line, "all")
    r.close()
    r.close()  # again: nothing to do
    assert mroute_json(line, "all") == []
    for conf in ("all", "a0", "b0"):
        assert sysctl(line.rt, f"net.ipv4.conf.{conf}.mc_forwarding") == "0"
    # Table 1000 had a rule per vif where the kernel has multicast tables; without them the
    # router used the default table, and there are no multicast rules at all to look at.
    assert r.multiple_tables == capabilities().has("multicast_tables")
    if r.multiple_tables:
        assert [x for x in ip_json(line.rt, "mrule", "show")
                if x.get("table") != "default"] == []
    with MulticastRouter(1000, line.rt):  # the table is free again
        pass


@pytest.mark.parametrize("version", [3, 2])
def test_igmp_reports(line, router, version):
    vb = router.add_vif(None, line.b0)
    router.add_vif(None, line.a0)
    router.listen_igmp(line.b0)
    if version == 2:
        subprocess.run(["ip", "netns", "exec", line.dst, "sysctl", "-qw",
                        "net.ipv4.conf.d0.force_igmp_version=2"], check=True)
    host = socket_in_netns(line.dst, socket.AF_INET, socket.SOCK_DGRAM)
    host.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreqn(G, line.d0))
    assert wait_for(router, lambda e: isinstance(e, IgmpReport)) == \
        IgmpReport(line.b0, DST, G, True)
    host.setsockopt(socket.IPPROTO_IP, socket.IP_DROP_MEMBERSHIP, mreqn(G, line.d0))
    wait_for(router, lambda e: e == IgmpReport(line.b0, DST, G, False))
    # The node's own report is looped back to the socket: recognised and dropped.
    own = router.stats["own"]
    assert router.join_local("239.7.7.7", line.b0) is True
    assert router.join_local("239.7.7.7", line.b0) is False
    deadline = time.monotonic() + TIMEOUT
    while router.stats["own"] == own and time.monotonic() < deadline:
        select.select([router], [], [], deadline - time.monotonic())
        events = router.read_upcalls()
        assert not [e for e in events if isinstance(e, IgmpReport) and e.group == "239.7.7.7"]
    assert router.stats["own"] > own
    assert router.stats["malformed"] == 0
    assert vb == 0


@pytest.mark.parametrize("joins, oifs, copies", [
    (("a0",), ("b0",), 1),  # on the iif: delivered by ip_mr_input
    (("b0",), ("b0",), 1),  # on an oif: the forwarded packet is looped back
    (("a0", "b0"), ("b0",), 2),  # on both: twice
    (("b0",), (), 0),  # on a vif that is not an oif: nothing
], ids=["iif", "oif", "iif+oif", "not-oif"])
def test_local_delivery(line, router, joins, oifs, copies):
    index = {"a0": line.a0, "b0": line.b0}
    vifi = {name: router.add_vif(None, index[name]) for name in ("a0", "b0")}
    group = "239.5.0.1"
    for name in joins:
        router.join_local(group, index[name])
    router.set_mfc(SRC, group, vifi["a0"], {vifi[name]: 1 for name in oifs})
    local = receiver(line.rt)
    tx = sender(line.src, line.s0)
    for n in range(3):
        tx.sendto(b"%d" % n, (group, PORT))
    send_sentinel(line.src, RA)
    got = collect(local, lambda got: SENTINEL in got and len(got) > 3 * copies)
    got.remove(SENTINEL)
    assert Counter(got) == Counter({b"%d" % n: copies for n in range(3)} if copies else {})


def test_node_as_sender(line, router):
    """A process of the node sending out of b0 enters multicast routing as if from b0."""
    va, vb = router.add_vif(None, line.a0), router.add_vif(None, line.b0)
    upstream = receiver(line.src, ((G, line.s0),))
    tx = sender(line.rt, line.b0)
    tx.sendto(b"0", (G, PORT))
    assert wait_for(router, lambda e: isinstance(e, Upcall)) == \
        Upcall(IGMPMSG_NOCACHE, vb, RB, G)
    router.set_mfc(RB, G, vb, {va: 1})
    tx.sendto(b"1", (G, PORT))
    assert Counter(collect(upstream, lambda got: b"1" in got)) == Counter([b"0", b"1"])
    tx.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 0)
    tx.sendto(b"2", (G, PORT))  # without the loopback copy, routing never sees it
    assert before_sentinel(upstream, line.rt, SRC) == []


def test_wrongvif_upcall(line):
    with MulticastRouter(None, line.rt, wrongvif_upcalls=True) as router:
        va, vb = router.add_vif(None, line.a0), router.add_vif(None, line.b0)
        # The entry expects b0 and forwards onto a0: a packet on a0 is an assert case.
        router.set_mfc(SRC, G, vb, {va: 1})
        sender(line.src, line.s0).sendto(b"0", (G, PORT))
        assert wait_for(router, lambda e: True) == Upcall(IGMPMSG_WRONGVIF, va, SRC, G)
        assert router.dump()[SRC, G].wrong_if == 1  # counted before the upcall was queued


def test_vif_limits_and_errors(netns):
    ip(netns, "link", "add", "x0", "type", "veth", "peer", "name", "y0")
    batch = "".join(f"link add v{n} type veth peer name w{n}\n" for n in range(MAXVIFS // 2))
    subprocess.run(["ip", "-n", netns, "-batch", "-"], input=batch, text=True, check=True)
    devices = [d for n in range(MAXVIFS // 2) for d in (f"v{n}", f"w{n}")]
    with MulticastRouter(None, netns) as router:
        for dev in devices:
            router.add_vif(None, ifindex(netns, dev))
        assert sorted(router.vifs) == list(range(MAXVIFS))
        with pytest.raises(MrouteError, match="all 32 vifs") as e:
            router.add_vif(None, ifindex(netns, "x0"))
        assert e.value.errno == errno.ENFILE
        with pytest.raises(ValueError):
            router.add_vif(MAXVIFS, ifindex(netns, "x0"))
        router.del_vif(4)
        with pytest.raises(MrouteError, match="no such interface"):
            router.add_vif(None, 99999)
        assert router.add_vif(None, ifindex(netns, "v0")) == 0  # same vif again: no-op
        with pytest.raises(ValueError, match="is vif 0 already"):
            router.add_vif(4, ifindex(netns, "v0"))
        with pytest.raises(ValueError, match="not a vif"):
            router.set_mfc(SRC, G, 4, {5: 1})
        with pytest.raises(ValueError, match="both the iif and an oif"):
            router.set_mfc(SRC, G, 5, {5: 1})
        with pytest.raises(ValueError, match="ttl threshold"):
            router.set_mfc(SRC, G, 5, {6: 255})
        with pytest.raises(ValueError, match="not a multicast"):
            router.set_mfc(SRC, "10.0.0.1", 5, {6: 1})
        assert router.add_vif(None, ifindex(netns, "x0")) == 4
        router.set_mfc(SRC, G, 4, {6: 1})
        assert router.dump() == {(SRC, G): MfcEntry(SRC, G, 4, {6: 1})}


def test_deleted_device_takes_its_vif(netns):
    ip(netns, "link", "add", "x0", "type", "veth", "peer", "name", "y0")
    with MulticastRouter(None, netns) as router:
        vifi = router.add_vif(None, ifindex(netns, "x0"))
        ip(netns, "link", "del", "x0")
        vif_table = subprocess.run(["ip", "netns", "exec", netns, "cat", "/proc/net/ip_mr_vif"],
                                   check=True, capture_output=True, text=True).stdout
        assert "x0" not in vif_table
        assert router.del_vif(vifi) is True  # forgets it; the kernel had deleted it already
        assert router.del_vif(vifi) is False
        ip(netns, "link", "add", "x1", "type", "veth", "peer", "name", "y1")
        assert router.add_vif(vifi, ifindex(netns, "x1")) == vifi


def test_local_memberships_beyond_the_per_socket_limit(netns, veth):
    subprocess.run(["ip", "netns", "exec", netns, "sysctl", "-qw",
                    "net.ipv4.igmp_max_memberships=2"], check=True)
    groups = [f"239.2.0.{n}" for n in range(1, 6)]
    with MulticastRouter(None, netns) as router:
        for group in groups:
            assert router.join_local(group, veth.ifindex) is True
        joined = ip(netns, "maddress", "show", "dev", veth.name)
        assert all(f"inet  {group}" in joined for group in groups)
        for group in groups:
            assert router.leave_local(group, veth.ifindex) is True
        assert router.leave_local(groups[0], veth.ifindex) is False
        assert not any(group in ip(netns, "maddress", "show", "dev", veth.name)
                       for group in groups)
