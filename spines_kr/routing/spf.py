"""Shortest paths from one source with equal-cost first-hop sets (ECMP-ready Dijkstra).

Data model: ``graph`` maps node -> {neighbor: cost}; costs are positive integers (the link-state
metrics are integers, so "equal cost" is exact).  A neighbor need not be a key of ``graph`` (it
then has no links out).  The result maps every reachable node other than the source to
``(cost, first_hops)`` where ``first_hops`` is the frozenset of the source's neighbors that
begin some shortest path to it.  A node reached at equal cost through several predecessors
unions their first-hop sets, which is what multipath routes need.  Unreachable nodes are absent.

Algorithm: Dijkstra on the LSDB's dicts as they are (no per-call conversion), with a bucketed
queue: ``buckets`` maps a tentative distance to the nodes that got it, and a binary heap holds
only the distinct distances.  Link metrics are small integers, so there are few distinct
distances (at most the largest path cost) and most queue operations are a list append.  A
node is final when its bucket comes up and its distance still equals that bucket's (entries
left behind by a later improvement are skipped); costs being positive, nothing is ever
relaxed into the bucket being processed, and a final node is never relaxed again (its
neighbors' offers are strictly greater), so no "done" set is needed.

First-hop sets are shared: a node with one shortest-path predecessor holds that predecessor's
frozenset object, and a new set is built only on an exact-cost tie from a predecessor holding
a different set.

Complexity: O(V + E + D log D) for D distinct tentative distances (D <= E; D <= largest path
cost with integer metrics), plus O(k) per equal-cost tie for k first hops.
"""

from __future__ import annotations

from collections.abc import Mapping
from heapq import heappop, heappush

SpfResult = dict[int, tuple[int, frozenset[int]]]

_NO_LINKS: Mapping[int, int] = {}


def spf(graph: Mapping[int, Mapping[int, int]], source: int) -> SpfResult:
    links = graph.get
    dist: dict[int, int] = {source: 0}
    tentative = dist.get
    hops: dict[int, frozenset[int]] = {}
    buckets: dict[int, list[int]] = {}
    bucket = buckets.get
    distances: list[int] = []  # heap of the keys of ``buckets``
    result: SpfResult = {}
    for nbr, cost in links(source, _NO_LINKS).items():
        if nbr == source:
            continue
        dist[nbr] = cost
        hops[nbr] = frozenset((nbr,))
        b = bucket(cost)
        if b is None:
            buckets[cost] = [nbr]
            heappush(distances, cost)
        else:
            b.append(nbr)
    while distances:
        d = heappop(distances)
        for u in buckets.pop(d):
            if dist[u] != d:
                continue  # improved after it was queued here
            hu = hops[u]
            result[u] = (d, hu)
            for v, c in links(u, _NO_LINKS).items():
                nd = d + c
                old = tentative(v)
                if old is None or nd < old:
                    dist[v] = nd
                    hops[v] = hu
                    b = bucket(nd)
                    if b is None:
                        buckets[nd] = [v]
                        heappush(distances, nd)
                    else:
                        b.append(v)
                elif nd == old:
                    hv = hops[v]
                    if hv is not hu:
                        hops[v] = hv | hu
    return result
