"""From shortest paths to the kernel route set a node wants.

Data model: ``spf_result`` (see ``spf``), ``nexthops_by_neighbor`` maps a neighbor node id to the
``NextHop`` values of its usable links, best first (the daemon fills it from links that are up),
and the LSDB's LSAs for advertised prefixes.  Outputs are ``RouteSet`` values:

    node_routes    a /32 to every reachable node's logical ID (kernel level 0)
    prefix_routes  a route to every prefix another node advertises, towards the nearest
                   advertiser (ties: the lowest id)

Choice among next hops: with ``multipath`` every first hop of an equal-cost shortest path (one
multipath route, equal weights); with a ``tolerance`` > 0 (measured metrics, where exact ties
are rare) also every neighbor n that is strictly closer to the destination than we are
(dist(n, d) < dist(self, d): loop-free, as an IP fast-reroute loop-free alternate) and whose
path is within the tolerance: cost(self, n) + dist(n, d) <= (1 + tolerance) * dist(self, d).
That needs one SPF from each neighbor, run only when the tolerance is on.  Weights: "equal"
(every next hop 1), or "cost" (inversely proportional to the path cost through it, the best
path weighing ``WEIGHT_SCALE``).  Without multipath, the first hop of lowest neighbor id, so
every run and every restart chooses the same.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping

from spines_kr.routing.model import NextHop, Route, RouteSet
from spines_kr.routing.spf import SpfResult, spf

WEIGHT_SCALE = 16  # "cost" weights: the best path gets 16, a path costing twice as much 8


def ip(n: int) -> str:
    return str(ipaddress.IPv4Address(n))


def _within_tolerance(graph, self_id: int, neighbors, tolerance: float, spf_result: SpfResult):
    """dst -> {neighbor: path cost} of neighbors loop-free and within tolerance of the best."""
    dists = {n: spf(graph, n) for n in neighbors if n in graph}
    extra: dict[int, dict[int, int]] = {}
    own = graph.get(self_id, {})
    for dst, (best, _hops) in spf_result.items():
        for n, dn in dists.items():
            if n not in own:
                continue
            via = 0 if n == dst else dn.get(dst, (None,))[0]
            if via is None or via >= best:
                continue  # not strictly closer to dst than we are: could loop back
            if own[n] + via <= best * (1 + tolerance):
                extra.setdefault(dst, {})[n] = own[n] + via
    return extra


def node_routes(spf_result: SpfResult, nexthops_by_neighbor: Mapping[int, list[NextHop]], *,
                prefsrc: str | None = None, multipath: bool = False, graph=None,
                self_id: int | None = None, tolerance: float = 0.0,
                weights: str = "equal") -> RouteSet:
    extra = {}
    if multipath and tolerance > 0 and graph is not None:
        extra = _within_tolerance(graph, self_id, nexthops_by_neighbor, tolerance, spf_result)
    routes: RouteSet = {}
    for node, (cost, first_hops) in spf_result.items():
        costs = {h: cost for h in first_hops}
        costs.update(extra.get(node, {}))
        hops = _hops(costs, nexthops_by_neighbor, multipath, weights)
        if hops:
            dst = f"{ip(node)}/32"
            routes[dst] = Route(dst, hops, prefsrc)
    return routes


def _hops(costs: dict[int, int], nexthops_by_neighbor, multipath: bool,
          weights: str) -> tuple[NextHop, ...]:
    """Next hops for first hops ``costs`` (neighbor -> path cost through it)."""
    usable = sorted(h for h in costs if nexthops_by_neighbor.get(h))
    if not usable:
        return ()
    if not multipath:
        return (nexthops_by_neighbor[min(usable, key=lambda h: (costs[h], h))][0],)
    best = min(costs[h] for h in usable)
    out = []
    for h in usable:
        w = 1 if weights == "equal" else max(1, min(256, round(WEIGHT_SCALE * best / costs[h])))
        out += [NextHop(nh.gateway, nh.ifindex, w) for nh in nexthops_by_neighbor[h]]
    return tuple(out)


def prefix_routes(lsas: Mapping, self_id: int, node_routes_: RouteSet,
                  spf_result: SpfResult | None = None) -> RouteSet:
    """Routes to the prefixes other nodes advertise, through the routes to those nodes.

    The nearest advertiser wins (route cost to it plus the prefix's metric; at equal cost the
    lowest advertiser id, the same choice on every node).  A prefix we advertise ourselves gets
    no route.
    """
    own = {(net, plen) for net, plen, _m in lsas[self_id].prefixes} if self_id in lsas else set()
    best: dict[tuple[int, int], tuple[int, int]] = {}  # prefix -> (cost, origin)
    for origin, lsa in lsas.items():
        if origin == self_id or not lsa.prefixes:
            continue
        to_origin = node_routes_.get(f"{ip(origin)}/32")
        if to_origin is None:
            continue
        cost = spf_result[origin][0] if spf_result and origin in spf_result else 0
        for net, plen, metric in lsa.prefixes:
            key = (net, plen)
            if key in own:
                continue
            cand = (cost + metric, origin)
            if key not in best or cand < best[key]:
                best[key] = cand
    routes: RouteSet = {}
    for (net, plen), (_cost, origin) in best.items():
        to_origin = node_routes_[f"{ip(origin)}/32"]
        dst = f"{ip(net)}/{plen}"
        routes[dst] = Route(dst, to_origin.nexthops, to_origin.prefsrc)
    return routes
