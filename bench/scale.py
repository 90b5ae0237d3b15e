"""Flooding at scale: a simulated cold start of N nodes (the protocol engine, daemon.node, in
the unit tests' simulator, tests/unit/sim.py: simulated time, an event heap, no sockets).

Topology: a seeded random connected graph (a random spanning tree plus random extra links) of
N nodes and 4N links (average degree 8), every wire 1 ms, no loss; every daemon starts at
t = 0 with all its links configured.  Converged: every node holds every node's newest LSA
(the same (origin, seq) set everywhere) and a route to every other node.  The run goes on
for ``--settle`` more simulated seconds after that (the tail of retransmissions counts too).

Figures per run:
    converged_s                 simulated seconds from start to converged
    packets                     protocol packets sent (hellos, updates, acks)
    limit_drops, limit_drop_pct packets dropped by the per-neighbor rate limits, and their
                                share of all packets received
    lsa_sent, lsa_retransmitted LSA copies sent in updates, of which retransmissions
    rxmt_per_lsa_link           retransmissions per (LSA, link direction): lsa_retransmitted /
                                (LSAs originated x 2 x links); the target is at most 1
    cpu_us_per_node_s           CPU time of the simulation per node per simulated second
Sizes are run in order with medians over RUNS seeds; the issue's limits are printed beside
them.  Ends with one JSON line of the figures.

Usage: python bench/scale.py [--nodes 100,200,400,1000] [--runs 1] [--settle 5]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.unit.sim import Sim  # noqa: E402

LIMIT_DROP_PCT = 1.0  # issue 11: at most 1 % of protocol packets dropped by limits
LIMIT_RXMT = 1.0  # at most 1 retransmission per LSA per link on average


def graph(n: int, links: int, seed: int) -> list[tuple[int, int]]:
    rng = random.Random(seed)
    order = list(range(1, n + 1))
    rng.shuffle(order)
    edges = set()
    for i in range(1, n):  # a random spanning tree
        a, b = order[i], order[rng.randrange(i)]
        edges.add((min(a, b), max(a, b)))
    while len(edges) < links:
        a, b = rng.randint(1, n), rng.randint(1, n)
        if a != b:
            edges.add((min(a, b), max(a, b)))
    return sorted(edges)


def fingerprint(node) -> frozenset:
    return frozenset((o, lsa.seq) for o, lsa in node.lsdb.lsas.items())


def converged(sim: Sim, n: int) -> bool:
    nodes = list(sim.nodes.values())
    if any(len(x.lsdb) != n for x in nodes):
        return False
    first = fingerprint(nodes[0])
    if any(fingerprint(x) != first for x in nodes[1:]):
        return False
    return all(len(x.routes()) >= n - 1 for x in nodes)


def run(n: int, seed: int, settle: float, timeout: float = 120.0) -> dict:
    edges = graph(n, 4 * n, seed)
    t0 = time.process_time()
    sim = Sim(n, edges, seed=seed, max_nodes=max(2000, 2 * n))
    took = None
    step = 0.25
    while sim.now < timeout:
        sim.run(step)
        if converged(sim, n):
            took = sim.now
            break
    sim.run(settle)
    cpu = time.process_time() - t0
    c = {}
    for x in sim.nodes.values():
        for k, v in x.counters.items():
            c[k] = c.get(k, 0) + v
    drops = sum(v for k, v in c.items() if k.startswith("dropped.limit_"))
    received = c.get("packets_in", 0)
    originated = sum(x.seq - x.initial_seq + 1 for x in sim.nodes.values()) \
        if hasattr(next(iter(sim.nodes.values())), "initial_seq") else \
        sum(lsa.seq for x in sim.nodes.values() for lsa in [x.lsdb.lsas[x.id]])
    return {
        "nodes": n, "links": len(edges), "seed": seed,
        "converged_s": None if took is None else round(took, 3),
        "packets": c.get("packets_out", 0),
        "limit_drops": drops,
        "limit_drop_pct": round(100 * drops / received, 3) if received else 0.0,
        "lsa_sent": c.get("lsa_out", 0),
        "lsa_retransmitted": c.get("lsa_retransmitted", 0),
        "originations": originated,
        "rxmt_per_lsa_link": round(c.get("lsa_retransmitted", 0)
                                   / max(1, originated * 2 * len(edges) / n), 3),
        "cpu_us_per_node_s": round(1e6 * cpu / (n * sim.now), 1),
        "sim_s": round(sim.now, 2), "wall_cpu_s": round(cpu, 1),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--nodes", default="100,200,400,1000")
    p.add_argument("--runs", type=int, default=1)
    p.add_argument("--settle", type=float, default=5.0)
    args = p.parse_args()
    figures = []
    for n in [int(x) for x in args.nodes.split(",")]:
        runs = [run(n, seed, args.settle) for seed in range(1, args.runs + 1)]
        med = {k: statistics.median(r[k] for r in runs) if all(
            isinstance(r[k], (int, float)) for r in runs) else runs[0][k] for k in runs[0]}
        figures.append(med)
        print(f"{n:5d} nodes {med['links']:5d} links: converged {med['converged_s']} s, "
              f"{med['packets']} packets, limit drops {med['limit_drop_pct']} % "
              f"(limit {LIMIT_DROP_PCT} %), {med['lsa_retransmitted']} LSA retransmissions = "
              f"{med['rxmt_per_lsa_link']} per LSA per link (limit {LIMIT_RXMT}), "
              f"{med['cpu_us_per_node_s']} us CPU per node per simulated s", flush=True)
    print(json.dumps({"bench": "scale", "limits": {"limit_drop_pct": LIMIT_DROP_PCT,
                                                   "rxmt_per_lsa_link": LIMIT_RXMT},
                      "sizes": figures}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
