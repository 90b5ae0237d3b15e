"""Group membership to kernel routes: anycast, anypath, the gateway default, Spines' mappings.

Data model: a group is an IPv4 address: multicast groups are class D (224.0.0.0/4), anycast
groups class E (240.0.0.0/4).  Every node's LSA lists the groups it belongs to; ``members(lsas,
reachable)`` gives group -> set of member node ids, counting only reachable nodes (a dead or
cut-off member is no member).  Outputs are ``RouteSet`` values built from the routes to the
members' logical IDs (``node_routes``), so group routes follow every topology change.

    anycast_routes   kernel level 1: a /32 to each anycast group with members, towards the
                     nearest member (route cost; ties: the lowest member id, the same choice on
                     every node); with ``anypath`` towards all members at the best cost (one
                     multipath route).  No route where this node is a member: it delivers
                     locally (the address is on its loopback, see the daemon).
    gateway_routes   members of the gateway group offer a way out: non-members get a default
                     route (0.0.0.0/0) towards the nearest gateway.  Gateways keep their own.
    mapped_dst       Spines' kernel mappings (option ``spines_mappings``): anycast 247.x.y.z
                     and multicast 227.x.y.z are routed as 10.x.y.z/32 (levels 1 and 2; at
                     level 2 the route has the next hops towards every member).

Real IP multicast (class D groups without mapping) is forwarded by the kernel's multicast
routing along shortest-path trees (``multicast_tree``), not by these unicast routes.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping

from spines_kr.routing.model import Route, RouteSet
from spines_kr.routing.spf import SpfResult

MULTICAST = ipaddress.IPv4Network("224.0.0.0/4")
ANYCAST = ipaddress.IPv4Network("240.0.0.0/4")
SPINES_ANYCAST = ipaddress.IPv4Network("247.0.0.0/8")
SPINES_MULTICAST = ipaddress.IPv4Network("227.0.0.0/8")
DEFAULT_GATEWAY_GROUP = "240.220.11.1"


def ip(n: int) -> str:
    return str(ipaddress.IPv4Address(n))


def is_group(addr) -> bool:
    a = ipaddress.IPv4Address(addr)
    return a in MULTICAST or (a in ANYCAST and a != ipaddress.IPv4Address("255.255.255.255"))


def is_anycast(g: int) -> bool:
    return ipaddress.IPv4Address(g) in ANYCAST


def mapped_dst(g: int, mappings: bool) -> str:
    """The destination a group is routed as: itself, or 10.x.y.z for Spines' 247/227 ranges."""
    a = ipaddress.IPv4Address(g)
    if mappings and (a in SPINES_ANYCAST or a in SPINES_MULTICAST):
        return f"10.{(g >> 16) & 255}.{(g >> 8) & 255}.{g & 255}/32"
    return f"{a}/32"


def members(lsas: Mapping, reachable: Iterable[int]) -> dict[int, set[int]]:
    alive = set(reachable)
    out: dict[int, set[int]] = {}
    for origin, lsa in lsas.items():
        if origin in alive:
            for g in lsa.groups:
                out.setdefault(g, set()).add(origin)
    return out


def nearest(group_members: set[int], spf_result: SpfResult, self_id: int,
            anypath: bool) -> list[int]:
    """The members a route goes to: the nearest (lowest id on ties), or all nearest (anypath)."""
    costs = sorted((spf_result[m][0], m) for m in group_members if m in spf_result and m != self_id)
    if not costs:
        return []
    best = costs[0][0]
    return [m for c, m in costs if c == best] if anypath else [costs[0][1]]


def _route_via(dst: str, targets: list[int], node_routes: RouteSet) -> Route | None:
    hops = []
    prefsrc = None
    for m in targets:
        r = node_routes.get(f"{ip(m)}/32")
        if r is not None:
            prefsrc = r.prefsrc
            hops += [h for h in r.nexthops if h not in hops]
    return Route(dst, tuple(hops), prefsrc) if hops else None


def anycast_routes(group_members: Mapping[int, set[int]], spf_result: SpfResult,
                   node_routes: RouteSet, self_id: int, *, anypath: bool = False,
                   mappings: bool = False, gateway_group: int | None = None,
                   multicast_mapped: bool = False) -> tuple[RouteSet, dict[int, list[int]]]:
    """Routes for anycast groups (and mapped multicast groups at level 2) and, per group, the
    members its route goes to (for ``show groups``)."""
    routes: RouteSet = {}
    chosen: dict[int, list[int]] = {}
    for g, ms in sorted(group_members.items()):
        if g == gateway_group:
            continue
        a = ipaddress.IPv4Address(g)
        if a in ANYCAST:
            if self_id in ms:
                chosen[g] = [self_id]
                continue
            targets = nearest(ms, spf_result, self_id, anypath)
        elif multicast_mapped and mappings and a in SPINES_MULTICAST:
            targets = sorted(m for m in ms if m != self_id and m in spf_result)  # every member
        else:
            continue
        route = _route_via(mapped_dst(g, mappings), targets, node_routes)
        if route is not None:
            routes[route.dst] = route
            chosen[g] = targets
    return routes, chosen


def gateway_routes(group_members: Mapping[int, set[int]], spf_result: SpfResult,
                   node_routes: RouteSet, self_id: int, gateway_group: int,
                   anypath: bool = False) -> tuple[RouteSet, list[int]]:
    gateways = group_members.get(gateway_group, set())
    if self_id in gateways:
        return {}, [self_id]  # a gateway keeps its own way out
    targets = nearest(gateways, spf_result, self_id, anypath)
    route = _route_via("0.0.0.0/0", targets, node_routes)
    return ({route.dst: route} if route else {}), targets
