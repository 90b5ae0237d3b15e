"""RouteTable against the real kernel, checked with iproute2 as an independent reader."""

from __future__ import annotations

import errno
import os
import socket

import pytest

from spines_kr.netlink import kernel
from spines_kr.netlink.kernel import RouteTable
from spines_kr.netlink.nsenter import NetnsError, socket_in_netns
from spines_kr.netlink.reconcile import Reconciler
from spines_kr.routing.model import NextHop, Route, RouteSet, route_set
from tests.kernel.conftest import add_veth, ip, ip_json

pytestmark = [pytest.mark.kernel, pytest.mark.needs("veth")]

PRIORITY = 20


def ip_routes(ns: str, table: int = 254) -> RouteSet:
    """Our slot as ``ip -j route show proto 81 table T`` lists it, as a RouteSet."""
    index = {link["ifname"]: link["ifindex"] for link in ip_json(ns, "link", "show")}
    routes = []
    for e in ip_json(ns, "route", "show", "proto", "81", "table", str(table)):
        if e.get("metric", 0) != PRIORITY:
            continue
        dst = e["dst"] if "/" in e["dst"] else e["dst"] + "/32"
        hops = [NextHop(h["gateway"], index[h["dev"]], h.get("weight", 1))
                for h in e.get("nexthops", [e])]
        routes.append(Route(dst, tuple(hops), e.get("prefsrc")))
    return route_set(routes)


@pytest.fixture
def table(netns, veth):
    with RouteTable(priority=PRIORITY, netns=netns) as t:
        yield t


def via(veth, *hosts: int, weights: tuple[int, ...] = ()) -> tuple[NextHop, ...]:
    weights = weights or (1,) * len(hosts)
    return tuple(NextHop(f"10.0.0.{h}", veth.ifindex, w) for h, w in zip(hosts, weights))


@pytest.mark.needs("multipath")
def test_single_and_multipath_routes_round_trip(netns, veth, table):
    routes = route_set([Route("10.1.0.0/16", via(veth, 2)),
                        Route("10.2.0.0/24", via(veth, 2, 3, weights=(3, 1))),
                        Route("10.3.3.3/32", via(veth, 2, 3, 4))])
    assert table.apply(list(routes.values()), []) == []
    assert ip_routes(netns) == routes
    assert table.dump() == routes


def test_replace_changes_the_gateway_and_delete_removes(netns, veth, table):
    table.apply([Route("10.1.0.0/16", via(veth, 2)), Route("10.2.0.0/16", via(veth, 2))], [])
    moved = Route("10.1.0.0/16", via(veth, 3))
    assert table.apply([moved], []) == []
    assert ip_routes(netns)["10.1.0.0/16"] == moved
    assert table.apply([], [Route("10.2.0.0/16", via(veth, 9))]) == []
    assert table.dump() == route_set([moved])
    # Already gone: not an error.
    assert table.apply([], [Route("10.2.0.0/16", via(veth, 2))]) == []


def test_batch_reports_exactly_the_failed_routes(netns, veth, table):
    bad_dsts = {"10.100.0.7/32", "10.100.1.0/32", "10.100.3.231/32"}
    routes = [Route(f"10.100.{i // 256}.{i % 256}/32", via(veth, 2 + i % 3)) for i in range(1000)]
    routes = [Route(r.dst, (NextHop("192.168.1.1", veth.ifindex),)) if r.dst in bad_dsts else r
              for r in routes]
    errors = table.apply(routes, [])
    assert {e.route.dst for e in errors} == bad_dsts
    assert all(e.op == "replace" and e.errno == errno.ENETUNREACH for e in errors)
    assert all(e.route.nexthops[0].gateway == "192.168.1.1" and e.message for e in errors)
    good = route_set(r for r in routes if r.dst not in bad_dsts)
    assert ip_routes(netns) == good
    assert table.dump() == good


@pytest.mark.needs("policy_rules")  # tables other than main and local
def test_foreign_routes_are_neither_dumped_nor_touched(netns, veth, table):
    foreign = [
        ("10.7.0.0/16", "via", "10.0.0.2", "proto", "static", "metric", "20"),
        ("10.8.0.0/16", "via", "10.0.0.2", "proto", "81", "metric", "20", "table", "100"),
        ("10.9.0.0/16", "via", "10.0.0.2", "proto", "81", "metric", "30"),
        ("10.10.0.0/16", "via", "10.0.0.2", "proto", "81"),
        ("10.11.0.0/16", "dev", veth.name, "proto", "81", "metric", "20", "table", "1000"),
    ]
    for args in foreign:
        ip(netns, "route", "add", *args)
    ours = Route("10.1.0.0/16", via(veth, 2))
    table.apply([ours], [])
    # IPv4 only: IPv6 link-local routes appear asynchronously after link up.
    others = [line for line in ip(netns, "-4", "route", "show", "table", "all").splitlines()
              if not line.startswith("10.1.0.0/16")]
    assert table.dump() == route_set([ours])

    res = Reconciler(table).sync({})
    assert (res.deleted, res.errors) == (1, [])
    assert table.dump() == {}
    assert ip(netns, "-4", "route", "show", "table", "all").splitlines() == others


@pytest.mark.needs("policy_rules", "multipath")
def test_table_above_255(netns, veth):
    with RouteTable(table=1000, priority=PRIORITY, netns=netns) as t:
        assert t.dump() == {}  # the table does not exist yet
        routes = route_set([Route("10.1.0.0/16", via(veth, 2)),
                            Route("10.2.0.0/16", via(veth, 2, 3))])
        assert t.apply(list(routes.values()), []) == []
        assert ip_routes(netns, 1000) == routes == t.dump()
        assert ip_routes(netns, 254) == {}
        assert t.apply([], list(routes.values())) == []
        assert t.dump() == {}


def test_prefsrc(netns, veth, table):
    ip(netns, "addr", "add", "10.255.0.1/32", "dev", "lo")
    route = Route("10.1.0.0/16", via(veth, 2), prefsrc="10.255.0.1")
    assert table.apply([route], []) == []
    assert ip_routes(netns) == route_set([route]) == table.dump()
    [error] = table.apply([Route("10.2.0.0/16", via(veth, 2), prefsrc="10.255.0.99")], [])
    assert error.errno == errno.EINVAL and "prefsrc" in error.message


def test_unencodable_route_is_an_error_value(netns, veth, table):
    route = Route("10.1.0.0/16", via(veth, 2, 3, weights=(300, 1)))
    [error] = table.apply([route, Route("10.2.0.0/16", via(veth, 2))], [])
    assert (error.route, error.errno) == (route, errno.EINVAL)
    assert set(table.dump()) == {"10.2.0.0/16"}


@pytest.mark.needs("multipath")
def test_reconciler_against_the_kernel(netns, veth, table):
    rec = Reconciler(table)
    desired = route_set([Route("10.1.0.0/16", via(veth, 2)), Route("10.2.0.0/16", via(veth, 2, 3))])
    assert rec.sync(desired).added == 2
    res = rec.sync(desired)
    assert (res.added, res.replaced, res.deleted, res.unchanged) == (0, 0, 0, 2)
    ip(netns, "route", "del", "10.1.0.0/16", "proto", "81", "metric", str(PRIORITY))
    assert rec.sync(desired).added == 1
    assert ip_routes(netns) == desired


def test_links_and_addresses(netns, veth, table):
    links = table.links()
    assert links[veth.ifindex].name == "v0" and links[veth.ifindex].up
    assert links[veth.peer_ifindex].name == "v1"
    ip(netns, "link", "set", veth.peer, "down")  # v0 loses carrier
    assert not table.links()[veth.ifindex].up
    other = add_veth(netns, "w0", "w1", "10.0.1.1/30")
    assert table.local_addresses() == [(1, "127.0.0.1", 8), (veth.ifindex, "10.0.0.1", 24),
                                       (other.ifindex, "10.0.1.1", 30)]


def test_socket_in_netns_leaves_the_thread_where_it_was(netns):
    before = os.stat("/proc/thread-self/ns/net").st_ino
    socket_in_netns(netns, 16, 3, 0).close()  # AF_NETLINK, SOCK_RAW, NETLINK_ROUTE
    assert os.stat("/proc/thread-self/ns/net").st_ino == before
    with pytest.raises(NetnsError, match="does not exist"):
        RouteTable(netns=netns + "-missing")



class CountingSocket:
    """The table's socket, counting the datagrams sent through it."""

    def __init__(self, sock):
        self._sock, self.sends = sock, 0

    def send(self, data):
        self.sends += 1
        return self._sock.send(data)

    def __getattr__(self, name):
        return getattr(self._sock, name)


def hosts(veth, n: int) -> list[Route]:
    return [Route(f"10.{100 + i // 65536}.{i // 256 % 256}.{i % 256}/32", via(veth, 2 + i % 3))
            for i in range(n)]


def test_5000_routes_in_several_datagrams_and_failures_by_seq(netns, veth, table):
    routes = hosts(veth, 5000)
    # First and last of the first datagram (the last one carries its ack), first of the second,
    # one in the middle, the very last.
    for i in (0, kernel.ROUTE_BATCH - 1, kernel.ROUTE_BATCH, 2500, 4999):
        routes[i] = Route(routes[i].dst, (NextHop("192.168.1.1", veth.ifindex),))
    bad = [r for r in routes if r.nexthops[0].gateway == "192.168.1.1"]
    table._sock = counting = CountingSocket(table.sock)
    errors = table.apply(routes, [])
    assert counting.sends >= 5
    assert [e.route for e in errors] == bad
    assert all(e.op == "replace" and e.errno == errno.ENETUNREACH and e.message for e in errors)
    good = route_set(r for r in routes if r not in bad)
    assert ip_routes(netns) == good == table.dump()
    assert table.apply([], routes) == []  # the five never installed: ESRCH, success
    assert table.dump() == {} == ip_routes(netns)


def test_a_small_receive_buffer_makes_smaller_datagrams_not_lost_errors(netns, veth, table):
    table.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 16)  # 128 KiB: 157 answers
    table._sock = counting = CountingSocket(table.sock)
    unreachable = [Route(r.dst, (NextHop("192.168.1.1", veth.ifindex),))
                   for r in hosts(veth, 1000)]
    errors = table.apply(unreachable, [])
    assert [(e.route, e.errno) for e in errors] == [(r, errno.ENETUNREACH) for r in unreachable]
    assert counting.sends >= 1000 * kernel.ACK_ROOM // (1 << 17)


def test_lost_answers_are_failures_and_the_next_batch_is_not_confused(netns, veth, table,
                                                                      monkeypatch):
    table.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 16)  # 157 answers
    monkeypatch.setattr(kernel, "ACK_ROOM", 1)  # as if answers took no room: they overrun
    unreachable = [Route(r.dst, (NextHop("192.168.1.1", veth.ifindex),))
                   for r in hosts(veth, 1000)]
    errors = table.apply(unreachable, [])
    assert [e.route for e in errors] == unreachable
    codes = {e.errno for e in errors}
    assert codes == {errno.ENETUNREACH, errno.ENOBUFS}
    monkeypatch.undo()
    good = route_set(hosts(veth, 10))
    assert table.apply(list(good.values()), []) == []
    assert table.dump() == good == ip_routes(netns)
