"""The whole desired route set of one node, from its view of the topology.  Pure.

Entry point: ``assemble(lsas, graph, self_id, nexthops, policy) -> Assembly``.
    lsas        origin -> LSA (the LSDB: links, prefixes, groups of every node)
    graph       the LSDB's directed graph (origin -> {neighbor: cost}, both ends agreeing)
    nexthops    neighbor id -> its usable NextHops, best first (the engine's links that are up)
    policy      ``RoutePolicy``: what kinds of routes the node installs and how
``Assembly``: ``routes`` (the RouteSet for the kernel), ``reachable`` (node ids SPF reached),
``group_choice`` (group -> the members its route goes to, for ``show groups``).

Order of precedence on one destination: node routes (/32 to logical IDs), then advertised
prefixes (``routes.prefix_routes``), then group routes (``groups``: anycast, mapped multicast,
the gateway default).  Without kernel level 0 only group routes are kept.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from spines_kr.routing import groups as grp
from spines_kr.routing.model import NextHop, RouteSet
from spines_kr.routing.routes import node_routes, prefix_routes
from spines_kr.routing.spf import spf


@dataclass(frozen=True)
class RoutePolicy:
    prefsrc: str | None = None
    multipath: bool = True
    tolerance: float = 0.0  # measured metrics: next hops within this share of the best
    weights: str = "equal"
    kernel_levels: tuple[int, ...] = (0,)  # 0 nodes and prefixes, 1 anycast, 2/3 multicast
    anypath: bool = False
    spines_mappings: bool = False
    gateway_group: int | None = None


@dataclass
class Assembly:
    routes: RouteSet
    reachable: set[int]
    group_choice: dict[int, list[int]] = field(default_factory=dict)


def assemble(lsas: Mapping, graph, self_id: int, nexthops: Mapping[int, list[NextHop]],
             policy: RoutePolicy) -> Assembly:
    result = spf(graph, self_id)
    routes = node_routes(result, nexthops, prefsrc=policy.prefsrc, multipath=policy.multipath,
                         graph=graph, self_id=self_id, tolerance=policy.tolerance,
                         weights=policy.weights)
    for dst, route in prefix_routes(lsas, self_id, routes, result).items():
        routes.setdefault(dst, route)
    group_dsts, choice = _group_routes(lsas, result, routes, self_id, policy)
    if 0 not in policy.kernel_levels:  # group routes only
        routes = {d: r for d, r in routes.items() if d in group_dsts}
    return Assembly(routes, set(result), choice)


def _group_routes(lsas, result, routes: RouteSet, self_id: int,
                  p: RoutePolicy) -> tuple[set[str], dict[int, list[int]]]:
    """Anycast (level 1), mapped multicast (level 2) and gateway routes, added to ``routes``
    (node and prefix routes win on a clash)."""
    levels = set(p.kernel_levels)
    if not levels & {1, 2, 3}:
        return set(), {}
    ms = grp.members(lsas, set(result) | {self_id})
    group_routes, choice = grp.anycast_routes(
        ms, result, routes, self_id, anypath=p.anypath, mappings=p.spines_mappings,
        gateway_group=p.gateway_group, multicast_mapped=bool(levels & {2, 3}))
    if levels & {1, 3}:
        gw, chosen = grp.gateway_routes(ms, result, routes, self_id, p.gateway_group, p.anypath)
        group_routes.update(gw)
        if chosen:
            choice[p.gateway_group] = chosen
    for dst, route in group_routes.items():
        routes.setdefault(dst, route)
    return set(group_routes), choice
