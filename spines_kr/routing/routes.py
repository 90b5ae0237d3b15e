"""From shortest paths to the kernel route set a node wants (kernel level 0).

Data model: ``spf_result`` (see ``spf``), ``nexthops_by_neighbor`` maps a neighbor node id to the
``NextHop`` values of its usable links (the daemon fills it from links that are up), and the
node's own id.  The output is a ``RouteSet``: a /32 to every reachable node's logical ID.

Choice among equal-cost first hops: with ``multipath`` all of them (one multipath route);
otherwise the one of lowest neighbor id, so that every run and every restart chooses the same.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping

from spines_kr.routing.model import NextHop, Route, RouteSet
from spines_kr.routing.spf import SpfResult


def ip(n: int) -> str:
    return str(ipaddress.IPv4Address(n))


def node_routes(spf_result: SpfResult, nexthops_by_neighbor: Mapping[int, list[NextHop]], *,
                prefsrc: str | None = None, multipath: bool = False) -> RouteSet:
    routes: RouteSet = {}
    for node, (_cost, first_hops) in spf_result.items():
        usable = sorted(h for h in first_hops if nexthops_by_neighbor.get(h))
        if not usable:
            continue
        chosen = usable if multipath else usable[:1]
        hops = [nh for h in chosen for nh in (nexthops_by_neighbor[h] if multipath
                                              else nexthops_by_neighbor[h][:1])]
        dst = f"{ip(node)}/32"
        routes[dst] = Route(dst, tuple(hops), prefsrc)
    return routes
