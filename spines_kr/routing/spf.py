"""Shortest paths from one source with equal-cost first-hop sets (ECMP-ready Dijkstra).

Data model: ``graph`` maps node -> {neighbor: cost}; costs are positive integers (the link-state
metrics are integers, so "equal cost" is exact).  The result maps every reachable node other
than the source to ``(cost, first_hops)`` where ``first_hops`` is the frozenset of the source's
neighbors that begin some shortest path to it.  A node reached at equal cost through several
predecessors unions their first-hop sets, which is what multipath routes need.

Complexity O(E log V) with a binary heap; first-hop sets are shared frozensets, so propagation
costs nothing when a node has one predecessor.
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping

SpfResult = dict[int, tuple[int, frozenset[int]]]


def spf(graph: Mapping[int, Mapping[int, int]], source: int) -> SpfResult:
    dist: dict[int, int] = {source: 0}
    hops: dict[int, frozenset[int]] = {}
    done: set[int] = set()
    heap: list[tuple[int, int]] = []
    for nbr, cost in graph.get(source, {}).items():
        if nbr == source:
            continue
        if cost < dist.get(nbr, cost + 1):
            dist[nbr] = cost
            hops[nbr] = frozenset((nbr,))
            heapq.heappush(heap, (cost, nbr))
        elif cost == dist[nbr]:
            hops[nbr] = hops[nbr] | {nbr}
    done.add(source)
    while heap:
        d, u = heapq.heappop(heap)
        if u in done or d != dist[u]:
            continue
        done.add(u)
        hu = hops[u]
        for v, c in graph.get(u, {}).items():
            if v in done:
                continue
            nd = d + c
            old = dist.get(v)
            if old is None or nd < old:
                dist[v] = nd
                hops[v] = hu
                heapq.heappush(heap, (nd, v))
            elif nd == old and not hu <= hops[v]:
                hops[v] = hops[v] | hu
    return {n: (dist[n], hops[n]) for n in done if n != source}
