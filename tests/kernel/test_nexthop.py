"""Nexthop objects, groups and routes through them against the real kernel, read back with
``ip -j nexthop show`` / ``ip -j route show`` as an independent reader."""

from __future__ import annotations

import errno
import select
import socket
import time

import pytest

from spines_kr.netlink.kernel import (
    RTM_DELROUTE, RTM_NEWROUTE, RTMGRP_IPV4_ROUTE, RouteTable, decode_rtmsg, iter_messages,
    open_socket)
from spines_kr.netlink.nexthop import (
    ID_BASE, RTM_DELNEXTHOP, RTM_NEWNEXTHOP, RTNLGRP_NEXTHOP, Group, Nexthop, NexthopRouteTable,
    NexthopTable, NhRoute, decode_nexthop, plan_groups)
from spines_kr.netlink.reconcile import Reconciler
from spines_kr.routing.model import NextHop, Route, RouteSet, route_set
from tests.kernel.conftest import add_veth, ip, ip_json

pytestmark = [pytest.mark.kernel, pytest.mark.needs("nexthop_objects", "veth")]

PRIORITY = 20
B = ID_BASE


def wait_until(predicate, what: str, timeout: float = 10.0):
    """Poll ``predicate`` until it is true; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)
    return value


def ifindexes(ns: str) -> dict[str, int]:
    return {link["ifname"]: link["ifindex"] for link in ip_json(ns, "link", "show")}


def ip_nexthops(ns: str, proto: str = "81") -> dict[int, Nexthop | Group]:
    """``ip -j nexthop show`` of one protocol, as our values (iproute2 6.1 omits weight 1).

    ``-N``: protocols as numbers, whether or not an rt_protos.d file names 81 "spines"."""
    index = ifindexes(ns)
    found = {}
    for e in ip_json(ns, "-N", "nexthop", "show"):
        if e.get("protocol") != proto:
            continue
        if "group" in e:
            found[e["id"]] = Group(tuple((m["id"], m.get("weight", 1)) for m in e["group"]))
        else:
            found[e["id"]] = Nexthop(e["gateway"], index[e["dev"]])
    return found


def ip_routes(ns: str) -> dict[str, dict]:
    """``ip -j route show proto 81`` entries of our priority, by dst in CIDR form."""
    return {(e["dst"] if "/" in e["dst"] else e["dst"] + "/32"): e
            for e in ip_json(ns, "-4", "route", "show", "proto", "81")
            if e.get("metric", 0) == PRIORITY}


def ip_route_set(ns: str) -> RouteSet:
    """Our routes as the kernel forwards them (compat mode lists a group's next hops)."""
    index = ifindexes(ns)
    return route_set(
        Route(dst, tuple(NextHop(h["gateway"], index[h["dev"]], h.get("weight", 1))
                         for h in e.get("nexthops", [e])), e.get("prefsrc"))
        for dst, e in ip_routes(ns).items())


@pytest.fixture
def nht(netns, veth):
    with NexthopTable(netns=netns) as t:
        yield t


@pytest.fixture
def kernel(netns, veth):
    with NexthopRouteTable(priority=PRIORITY, netns=netns) as k:
        yield k


def via(veth, *hosts: int, weights: tuple[int, ...] = ()) -> tuple[NextHop, ...]:
    weights = weights or (1,) * len(hosts)
    return tuple(NextHop(f"10.0.0.{h}", veth.ifindex, w) for h, w in zip(hosts, weights))


def test_probe(nht):
    assert nht.probe()


def test_singles_and_a_group(netns, veth, nht):
    objects = {B: Nexthop("10.0.0.2", veth.ifindex), B + 1: Nexthop("10.0.0.3", veth.ifindex),
               B + 2: Group(((B, 3), (B + 1, 1)))}
    assert nht.apply(objects, []) == []
    assert ip_nexthops(netns) == objects == nht.dump()
    assert ip(netns, "nexthop", "show", "id", str(B + 2)).split()[:3] == [
        "id", str(B + 2), "group"]


def test_route_through_a_group(netns, veth, nht):
    nht.apply({B: Nexthop("10.0.0.2", veth.ifindex), B + 1: Nexthop("10.0.0.3", veth.ifindex),
               B + 2: Group(((B, 2), (B + 1, 1)))}, [])
    ip(netns, "addr", "add", "10.255.0.1/32", "dev", "lo")
    routes = [NhRoute("10.1.0.0/16", B + 2), NhRoute("10.2.0.0/24", B + 2, "10.255.0.1")]
    assert nht.apply_routes(routes, table=254, priority=PRIORITY) == []
    shown = ip_routes(netns)
    assert {dst: e["nhid"] for dst, e in shown.items()} == {"10.1.0.0/16": B + 2,
                                                            "10.2.0.0/24": B + 2}
    assert f"nhid {B + 2}" in ip(netns, "route", "show", "10.1.0.0/16")
    assert shown["10.2.0.0/24"]["prefsrc"] == "10.255.0.1"
    assert ip_route_set(netns)["10.1.0.0/16"].nexthops == via(veth, 2, 3, weights=(2, 1))
    classic, through = nht.dump_routes(254, PRIORITY)
    assert (classic, through) == ({}, {r.dst: r for r in routes})
    # A group that does not exist: the one failure of its batch, with the kernel's reason.
    [(route, op, code, message)] = nht.apply_routes(
        [NhRoute("10.3.0.0/16", B + 99), NhRoute("10.4.0.0/16", B + 2)], priority=PRIORITY)
    assert (route.dst, op, code) == ("10.3.0.0/16", "replace", errno.EINVAL)
    assert "Nexthop id does not exist" in message
    assert set(ip_routes(netns)) == {"10.1.0.0/16", "10.2.0.0/24", "10.4.0.0/16"}


def test_replace_a_groups_members_moves_its_routes(netns, veth, nht):
    nht.apply({B: Nexthop("10.0.0.2", veth.ifindex), B + 1: Nexthop("10.0.0.3", veth.ifindex),
               B + 2: Group(((B, 1), (B + 1, 1)))}, [])
    nht.apply_routes([NhRoute("10.1.0.0/16", B + 2)], priority=PRIORITY)
    new = {B + 3: Nexthop("10.0.0.4", veth.ifindex), B + 2: Group(((B, 1), (B + 3, 2)))}
    assert nht.apply(new, []) == []  # singles go first: B + 3 exists before the group names it
    assert ip_nexthops(netns)[B + 2] == Group(((B, 1), (B + 3, 2)))
    assert ip_routes(netns)["10.1.0.0/16"]["nhid"] == B + 2
    assert ip_route_set(netns)["10.1.0.0/16"].nexthops == via(veth, 2, 4, weights=(1, 2))
    # A single replaced in place: the group, and the route, follow it.
    assert nht.apply({B: Nexthop("10.0.0.5", veth.ifindex)}, []) == []
    assert ip_route_set(netns)["10.1.0.0/16"].nexthops == via(veth, 4, 5, weights=(2, 1))
    # The kernel does not turn a single into a group.
    [error] = nht.apply({B + 1: Group(((B, 1),))}, [])
    assert (error.id, error.op, error.errno) == (B + 1, "replace", errno.EINVAL)


def test_delete_order_routes_then_groups_then_nexthops(netns, veth, nht):
    objects = {B: Nexthop("10.0.0.2", veth.ifindex), B + 1: Nexthop("10.0.0.3", veth.ifindex),
               B + 2: Group(((B, 1), (B + 1, 1)))}
    nht.apply(objects, [])
    nht.apply_routes([NhRoute("10.1.0.0/16", B + 2)], priority=PRIORITY)
    with RouteTable(priority=PRIORITY, netns=netns) as routes:
        assert routes.apply([], [Route("10.1.0.0/16", via(veth, 2))]) == []
    assert ip_routes(netns) == {} and ip_nexthops(netns) == objects
    # Given in any order, groups go before their members; a second delete is not an error.
    assert nht.apply({}, [B, B + 2]) == []
    assert ip_nexthops(netns) == {B + 1: objects[B + 1]}
    assert nht.apply({}, [B + 1, B + 2]) == []
    assert ip_nexthops(netns) == {} == nht.dump()


def test_why_that_order(netns, veth, nht):
    """Kernel 6.18: deleting a member shrinks its groups, silently for the routes using them;
    deleting a group deletes its routes."""
    nht.apply({B: Nexthop("10.0.0.2", veth.ifindex), B + 1: Nexthop("10.0.0.3", veth.ifindex),
               B + 2: Group(((B, 1), (B + 1, 1))), B + 3: Group(((B + 1, 1),))}, [])
    nht.apply_routes([NhRoute("10.1.0.0/16", B + 2), NhRoute("10.2.0.0/16", B + 3)],
                     priority=PRIORITY)
    ip(netns, "nexthop", "del", "id", str(B))
    assert ip_nexthops(netns)[B + 2] == Group(((B + 1, 1),))
    assert ip_route_set(netns)["10.1.0.0/16"].nexthops == via(veth, 3)
    ip(netns, "nexthop", "del", "id", str(B + 3))
    assert set(ip_routes(netns)) == {"10.1.0.0/16"}


def test_nexthops_of_others_are_neither_dumped_nor_touched(netns, veth, kernel):
    foreign = [("7", "10.0.0.2", "static"), (str(B), "10.0.0.3", "static"),  # in our range
               ("8", "10.0.0.4", "81")]  # our protocol, outside our range
    for nh_id, gateway, proto in foreign:
        ip(netns, "nexthop", "add", "id", nh_id, "via", gateway, "dev", veth.name, "proto", proto)
    before = ip(netns, "nexthop", "show")
    assert kernel.nexthops.dump() == {}
    desired = route_set([Route("10.1.0.0/16", via(veth, 2, 3))])
    rec = Reconciler(kernel)
    assert rec.sync(desired).errors == []
    ours = ip_nexthops(netns)
    assert set(ours) - {8} == {B + 1, B + 2, B + 3}  # B is taken by the static one
    assert ip_routes(netns)["10.1.0.0/16"]["nhid"] == B + 3
    assert ip_route_set(netns) == desired == kernel.dump()
    assert rec.sync({}).deleted == 1
    assert ip(netns, "nexthop", "show") == before


def test_batch_with_one_bad_gateway_reports_exactly_it(netns, veth, nht):
    objects = {B + i: Nexthop(f"10.0.0.{2 + i}", veth.ifindex) for i in range(250)}
    objects[B + 137] = Nexthop("192.168.1.1", veth.ifindex)  # not on link
    errors = nht.apply(objects, [])
    assert [(e.id, e.op, e.obj) for e in errors] == [(B + 137, "replace", objects[B + 137])]
    assert errors[0].errno == errno.ENETUNREACH
    assert errors[0].message == "Network is unreachable: Nexthop has invalid gateway"
    del objects[B + 137]
    assert ip_nexthops(netns) == objects == nht.dump()


def test_reconciler_with_groups(netns, veth, kernel):
    rec = Reconciler(kernel)
    desired = route_set([Route("10.1.0.0/16", via(veth, 2, 3)),
                         Route("10.2.0.0/16", via(veth, 2, 3)),
                         Route("10.3.0.0/16", via(veth, 2, 4, weights=(3, 1))),
                         Route("10.4.0.0/16", via(veth, 5))])
    assert rec.sync(desired).added == 4
    shown = ip_routes(netns)
    assert shown["10.1.0.0/16"]["nhid"] == shown["10.2.0.0/16"]["nhid"]  # one group, shared
    assert "nhid" in shown["10.3.0.0/16"] and "nhid" not in shown["10.4.0.0/16"]  # classic
    assert len(ip_nexthops(netns)) == 3 + 2  # .2 .3 .4, two groups
    assert ip_route_set(netns) == desired == kernel.dump()
    res = rec.sync(desired)
    assert (res.added, res.replaced, res.deleted, res.unchanged) == (0, 0, 0, 4)

    # A restarted daemon recognises its objects: nothing to write, same ids.
    objects = ip_nexthops(netns)
    with NexthopRouteTable(priority=PRIORITY, netns=netns) as again:
        assert Reconciler(again).sync(desired).unchanged == 4
    assert ip_nexthops(netns) == objects

    # A hop set changes: a new group, the old one and its unused member are swept.
    moved = dict(desired, **{"10.3.0.0/16": Route("10.3.0.0/16", via(veth, 2, 6))})
    assert rec.sync(moved).replaced == 1
    assert ip_route_set(netns) == moved == kernel.dump()
    assert {o.gateway for o in ip_nexthops(netns).values() if isinstance(o, Nexthop)} == {
        "10.0.0.2", "10.0.0.3", "10.0.0.6"}
    assert rec.sync({}).deleted == 4
    assert ip_routes(netns) == {} and ip_nexthops(netns) == {}


def _notifications(sock: socket.socket, until, timeout: float = 10.0) -> list[tuple[int, bytes]]:
    """Notifications read from ``sock`` up to and including the first for which ``until``."""
    got = []
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        if not select.select([sock], [], [], left)[0]:
            continue
        for mtype, _flags, _seq, payload in iter_messages(sock.recv(1 << 16)):
            got.append((mtype, payload))
            if until(mtype, payload):
                return got
    raise AssertionError(f"timed out after {timeout} s; got {len(got)} notifications")


@pytest.mark.parametrize("how", ["carrier", "admin"])
def test_link_down_deletes_objects_and_routes_silently(netns, veth, kernel, how):
    """Kernel 6.18 (see the module doc of spines_kr.netlink.nexthop for the ip reproducer): a
    link going down deletes its nexthop objects, shrinks groups, deletes routes through deleted
    objects, notifies none of it, and restores nothing on link up."""
    w = add_veth(netns, "w0", "w1", "10.0.1.1/24")
    desired = route_set([
        Route("10.1.0.0/16", via(veth, 2) + (NextHop("10.0.1.2", w.ifindex),)),  # both links
        Route("10.2.0.0/16", via(veth, 2, 3)),  # only v0
        Route("10.3.0.0/16", via(veth, 2)),  # classic, v0
    ])
    rec = Reconciler(kernel)
    assert rec.sync(desired).errors == []
    plan = plan_groups(desired, kernel.nexthops.dump())
    both, only_v0 = plan.route_nh["10.1.0.0/16"], plan.route_nh["10.2.0.0/16"]
    [on_w] = [i for i, o in plan.objects.items() if o == Nexthop("10.0.1.2", w.ifindex)]
    groups = RTMGRP_IPV4_ROUTE | 1 << (RTNLGRP_NEXTHOP - 1)
    with open_socket(netns, groups) as watch:
        ip(netns, "link", "set", veth.peer if how == "carrier" else veth.name, "down")
        wait_until(lambda: only_v0 not in ip_nexthops(netns), "the v0 objects to go")
        # Netlink notifications reach a socket in order: anything the link down caused comes
        # before this sentinel.
        ip(netns, "nexthop", "add", "id", "99", "via", "10.0.1.9", "dev", "w0", "proto", "static")
        seen = _notifications(watch, lambda t, p: t == RTM_NEWNEXTHOP and
                              decode_nexthop(p).id == 99)
    deleted = [decode_nexthop(p).id if t == RTM_DELNEXTHOP else decode_rtmsg(p).dst
               for t, p in seen if t in (RTM_DELNEXTHOP, RTM_DELROUTE)]
    changed = [decode_rtmsg(p).dst for t, p in seen if t == RTM_NEWROUTE]
    assert (deleted, changed) == ([], [])

    assert ip_nexthops(netns) == {on_w: Nexthop("10.0.1.2", w.ifindex), both: Group(((on_w, 1),))}
    routes = ip_routes(netns)
    assert routes["10.1.0.0/16"]["nhid"] == both and "10.2.0.0/16" not in routes
    if how == "carrier":  # classic routes stay, flagged
        assert "linkdown" in routes["10.3.0.0/16"]["flags"]
    else:
        assert "10.3.0.0/16" not in routes

    ip(netns, "link", "set", veth.peer if how == "carrier" else veth.name, "up")
    wait_until(lambda: "LOWER_UP" in ip_json(netns, "link", "show", "dev", veth.name)[0]["flags"],
               "v0 to have carrier again")
    wait_until(lambda: any(r.get("dst") == "10.0.0.0/24"
                           for r in ip_json(netns, "-4", "route", "show", "dev", veth.name)),
               "v0's subnet route")
    assert set(ip_nexthops(netns)) == {on_w, both}  # nothing came back
    assert "10.2.0.0/16" not in ip_routes(netns)

    # What the daemon does on the link event: a sync, which rebuilds all of it.
    assert rec.sync(desired).errors == []
    assert ip_route_set(netns) == desired == kernel.dump()
    assert rec.sync({}).deleted == 3
    assert ip_nexthops(netns) == {}


@pytest.mark.needs("policy_rules")  # table 100
def test_two_slots_of_our_protocol_share_objects_and_do_not_sweep_each_other(netns, veth,
                                                                              kernel):
    desired = route_set([Route("10.1.0.0/16", via(veth, 2, 3))])
    with NexthopRouteTable(table=100, priority=30, netns=netns) as other:
        assert Reconciler(kernel).sync(desired).added == 1
        assert Reconciler(other).sync(desired).added == 1
        assert len(ip_nexthops(netns)) == 3  # one group and its two members, shared
        assert Reconciler(kernel).sync({}).deleted == 1
        assert len(ip_nexthops(netns)) == 3
        assert other.dump() == desired
        assert Reconciler(other).sync({}).deleted == 1
    assert ip_nexthops(netns) == {}
