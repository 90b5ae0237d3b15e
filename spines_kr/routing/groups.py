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
LOCAL_MULTICAST = ipaddress.IPv4Network("224.0.0.0/24")  # link-local: never forwarded (RFC 5771)
SPINES_ANYCAST = ipaddress.IPv4Network("247.0.0.0/8")
SPINES_MULTICAST = ipaddress.IPv4Network("227.0.0.0/8")
DEFAULT_GATEWAY_GROUP = "240.220.11.1"


def ip(n: int) -> str:
    return str(ipaddress.IPv4Address(n))


def is_group(addr) -> bool:
    a = ipaddress.IPv4Address(addr)
    return a in MULTICAST or (a in ANYCAST and a != ipaddress.IPv4Address("255.255.255.255"))


def is_joinable(addr) -> bool:
    """A group a node may join and the overlay may route: not link-local multicast."""
    return is_group(addr) and ipaddress.IPv4Address(addr) not in LOCAL_MULTICAST


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


def tree_parents(graph: Mapping[int, Mapping[int, int]], root: int) -> dict[int, int]:
    """The shortest-path tree from ``root``: node -> parent.  Among equal-cost parents the
    lowest id wins, so every node computing it from the same LSDB gets the same tree."""
    import heapq

    dist = {root: 0}
    parent: dict[int, int] = {}
    done: set[int] = set()
    heap = [(0, root)]
    while heap:
        d, u = heapq.heappop(heap)
        if u in done:
            continue
        done.add(u)
        for v, c in graph.get(u, {}).items():
            nd = d + c
            if v not in dist or nd < dist[v] or (nd == dist[v] and u < parent.get(v, u + 1)):
                if v in done:
                    continue
                dist[v] = nd
                parent[v] = u
                heapq.heappush(heap, (nd, v))
    return parent


def tree_role(graph: Mapping[int, Mapping[int, int]], root: int, self_id: int,
              group_members: set[int]) -> tuple[int | None, set[int], bool]:
    """This node's place in the multicast tree of a source at ``root``: (its parent, or None at
    the root; the children whose subtree holds a member; whether it is on the tree at all)."""
    parent = tree_parents(graph, root)
    if self_id != root and self_id not in parent:
        return None, set(), False
    children: dict[int, list[int]] = {}
    for v, p in parent.items():
        children.setdefault(p, []).append(v)
    wanted: dict[int, bool] = {}

    def has_member(n: int) -> bool:  # iterative post-order, no recursion limit
        stack = [(n, False)]
        while stack:
            x, expanded = stack.pop()
            if x in wanted:
                continue
            kids = children.get(x, [])
            if expanded or not kids:
                wanted[x] = x in group_members or any(wanted[k] for k in kids)
            else:
                stack.append((x, True))
                stack.extend((k, False) for k in kids if k not in wanted)
        return wanted[n]

    kids = {c for c in children.get(self_id, []) if has_member(c)}
    return parent.get(self_id), kids, True


def source_node(lsas: Mapping, source: int) -> int | None:
    """The node a multicast source address belongs to: a node's logical ID, else the node
    announcing the longest prefix that holds it."""
    if source in lsas:
        return source
    best = None
    for origin, lsa in lsas.items():
        for net, plen, _m in lsa.prefixes:
            mask = (0xFFFFFFFF << (32 - plen)) & 0xFFFFFFFF if plen else 0
            if source & mask == net and (best is None or plen > best[0]):
                best = (plen, origin)
    return None if best is None else best[1]
