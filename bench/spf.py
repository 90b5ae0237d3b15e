"""SPF benchmark: ``spines_kr.routing.spf.spf`` next to networkx on the same graph.

Graphs: a seeded random connected topology of 1,000 nodes and 4,000 links (a random spanning
tree plus random extra links, every link in both directions at one cost), once with integer
costs 1..10 ("weighted") and once with every cost 1 ("unit", the ECMP-heavy case of a hop-count
overlay).  Ours is timed end to end from the dict-of-dicts the LSDB hands it, computing costs
and ECMP first-hop sets from node 0; networkx is timed running
``nx.dijkstra_predecessor_and_distance(G, 0)`` on a prebuilt ``nx.DiGraph`` of the same links.
Before timing, our result is checked once against the first-hop sets derived from networkx's
predecessors; a mismatch exits 1.  Runs are interleaved (ours, networkx, ours, ...) so both
share the machine's noise; medians of RUNS runs (default 50) are printed with their ratio,
ending with one JSON line of the figures.

Usage: python bench/spf.py [RUNS]
"""

from __future__ import annotations

import json
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import networkx as nx  # noqa: E402

from spines_kr.routing.spf import spf  # noqa: E402

NODES, LINKS, SEED, SOURCE = 1000, 4000, 1, 0


def topology(nodes: int, links: int, seed: int, unit: bool) -> dict[int, dict[int, int]]:
    rng = random.Random(seed)
    g: dict[int, dict[int, int]] = {i: {} for i in range(nodes)}
    order = list(range(nodes))
    rng.shuffle(order)

    def add(a: int, b: int) -> None:
        g[a][b] = g[b][a] = 1 if unit else rng.randint(1, 10)

    for i in range(1, nodes):  # spanning tree: connected
        add(order[i], order[rng.randrange(i)])
    n = nodes - 1
    while n < links:
        a, b = rng.randrange(nodes), rng.randrange(nodes)
        if a != b and b not in g[a]:
            add(a, b)
            n += 1
    return g


def to_networkx(graph: dict[int, dict[int, int]]) -> nx.DiGraph:
    G = nx.DiGraph()
    G.add_nodes_from(graph)
    G.add_weighted_edges_from((u, v, c) for u, adj in graph.items() for v, c in adj.items())
    return G


def first_hops_from_networkx(G: nx.DiGraph, source: int) -> dict:
    pred, dist = nx.dijkstra_predecessor_and_distance(G, source)
    first: dict = {}
    for n in sorted(dist, key=dist.get):
        if n != source:
            first[n] = frozenset().union(*({n} if p == source else first[p] for p in pred[n]))
    return {n: (dist[n], first[n]) for n in dist if n != source}


def measure(graph: dict[int, dict[int, int]], G: nx.DiGraph, runs: int) -> tuple[float, float]:
    ours, theirs = [], []
    clock = time.perf_counter
    for _ in range(runs):
        t0 = clock()
        spf(graph, SOURCE)
        t1 = clock()
        nx.dijkstra_predecessor_and_distance(G, SOURCE)
        t2 = clock()
        ours.append(t1 - t0)
        theirs.append(t2 - t1)
    return statistics.median(ours) * 1e3, statistics.median(theirs) * 1e3


def main() -> int:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 50
    if runs < 20:
        print("bench/spf.py: use at least 20 runs", file=sys.stderr)
        return 2
    figures: dict[str, float] = {}
    for label, unit in (("weighted", False), ("unit", True)):
        graph = topology(NODES, LINKS, SEED, unit)
        G = to_networkx(graph)
        got, want = spf(graph, SOURCE), first_hops_from_networkx(G, SOURCE)
        if got != want:
            bad = sorted(n for n in set(got) | set(want) if got.get(n) != want.get(n))
            print(f"bench/spf.py: {label}: spf differs from networkx at {len(bad)} nodes, "
                  f"e.g. {bad[0]}: ours {got.get(bad[0])}, networkx {want.get(bad[0])}",
                  file=sys.stderr)
            return 1
        measure(graph, G, 5)  # warm-up
        ours, theirs = measure(graph, G, runs)
        ecmp = sum(len(h) > 1 for _, h in got.values())
        print(f"ours {ours:.2f} ms ({label}), networkx {theirs:.2f} ms: ratio {ours / theirs:.2f}"
              f"  [{NODES} nodes, {LINKS} links, {ecmp} destinations with >1 first hop, "
              f"median of {runs}]", flush=True)
        prefix = "unit_" if unit else ""
        figures[prefix + "ours_ms"] = round(ours, 3)
        figures[prefix + "networkx_ms"] = round(theirs, 3)
        if not unit:
            figures["ratio"] = round(ours / theirs, 3)
    print(json.dumps({"nodes": NODES, "links": LINKS, "ours_ms": figures["ours_ms"],
                      "networkx_ms": figures["networkx_ms"], "ratio": figures["ratio"],
                      "unit_ours_ms": figures["unit_ours_ms"],
                      "unit_networkx_ms": figures["unit_networkx_ms"]}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
