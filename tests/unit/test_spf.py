"""SPF with ECMP first-hop sets, checked against networkx on random graphs."""

import networkx as nx
from hypothesis import given, settings, strategies as st

from spines_kr.routing.spf import spf


def oracle(graph, source):
    g = nx.DiGraph()
    for u, adj in graph.items():
        for v, c in adj.items():
            g.add_edge(u, v, weight=c)
    if source not in g:
        return {}
    pred, dist = nx.dijkstra_predecessor_and_distance(g, source)
    first: dict = {}
    for n in sorted(dist, key=dist.get):
        if n == source:
            continue
        first[n] = frozenset().union(*({n} if p == source else first[p] for p in pred[n]))
    return {n: (dist[n], first[n]) for n in dist if n != source}


@st.composite
def graphs(draw):
    n = draw(st.integers(1, 12))
    edges = draw(st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, n - 1),
                                    st.integers(1, 4)), max_size=40))
    g = {i: {} for i in range(n)}
    for a, b, c in edges:
        if a != b:
            g[a][b] = c
            g[b][a] = draw(st.sampled_from([c, c, c + 1]))  # mostly symmetric
    return g


@settings(max_examples=400)
@given(graphs())
def test_spf_matches_networkx(g):
    assert spf(g, 0) == oracle(g, 0)


def test_square_has_two_first_hops():
    g = {1: {2: 1, 3: 1}, 2: {1: 1, 4: 1}, 3: {1: 1, 4: 1}, 4: {2: 1, 3: 1}}
    assert spf(g, 1)[4] == (2, frozenset({2, 3}))


def test_unreachable_nodes_are_absent():
    assert spf({1: {2: 1}, 2: {1: 1}, 3: {}}, 1) == {2: (1, frozenset({2}))}
