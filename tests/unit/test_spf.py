"""SPF with ECMP first-hop sets, checked against networkx on random graphs."""

import copy
import random

import networkx as nx
from hypothesis import given, settings, strategies as st

from spines_kr.routing.spf import spf


def oracle(graph, source):
    g = nx.DiGraph()
    g.add_nodes_from(graph)
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


@st.composite
def tie_graphs(draw):
    """Unit or near-unit costs (many equal-cost paths), often in several disconnected parts,
    sometimes directed-only links, self-loops, or neighbors that are not keys of the graph."""
    n = draw(st.integers(1, 30))
    parts = draw(st.integers(1, 3))
    part = [draw(st.integers(0, parts - 1)) for _ in range(n)]
    costs = draw(st.sampled_from([[1], [1], [1, 2], [2, 3]]))
    edges = draw(st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, n - 1),
                                    st.sampled_from(costs), st.booleans()), max_size=90))
    g = {i: {} for i in range(n)}
    for a, b, c, both in edges:
        if part[a] != part[b]:
            continue
        g[a][b] = c
        if both:
            g[b][a] = c
    if draw(st.booleans()):  # a dangling neighbor that has no entry of its own
        g[draw(st.integers(0, n - 1))][n] = draw(st.sampled_from(costs))
    return g


@settings(max_examples=400)
@given(graphs())
def test_spf_matches_networkx(g):
    assert spf(g, 0) == oracle(g, 0)


@settings(max_examples=400)
@given(tie_graphs(), st.data())
def test_spf_matches_networkx_with_ties_and_disconnected_parts(g, data):
    source = data.draw(st.sampled_from(sorted(g)))
    before = copy.deepcopy(g)
    assert spf(g, source) == oracle(g, source)
    assert g == before  # the LSDB's graph is not touched


def seeded(nodes, links, seed, unit):
    """Connected random graph (spanning tree plus random links), as bench/spf.py builds it."""
    rng = random.Random(seed)
    g = {i: {} for i in range(nodes)}
    order = list(range(nodes))
    rng.shuffle(order)

    def add(a, b):
        g[a][b] = g[b][a] = 1 if unit else rng.randint(1, 10)

    for i in range(1, nodes):
        add(order[i], order[rng.randrange(i)])
    n = nodes - 1
    while n < links:
        a, b = rng.randrange(nodes), rng.randrange(nodes)
        if a != b and b not in g[a]:
            add(a, b)
            n += 1
    return g


def test_larger_seeded_graphs_match_networkx():
    for unit in (False, True):
        g = seeded(300, 1200, 7, unit)
        for source in (0, 150, 299):
            got = spf(g, source)
            assert len(got) == 299
            assert got == oracle(g, source)


def test_square_has_two_first_hops():
    g = {1: {2: 1, 3: 1}, 2: {1: 1, 4: 1}, 3: {1: 1, 4: 1}, 4: {2: 1, 3: 1}}
    assert spf(g, 1)[4] == (2, frozenset({2, 3}))


def test_direct_link_ties_with_a_detour():
    g = {1: {2: 2, 3: 1}, 3: {2: 1}}
    assert spf(g, 1) == {2: (2, frozenset({2, 3})), 3: (1, frozenset({3}))}


def test_cheaper_detour_beats_direct_link():
    g = {1: {2: 5, 3: 1}, 3: {2: 1}}
    assert spf(g, 1) == {2: (2, frozenset({3})), 3: (1, frozenset({3}))}


def test_unreachable_nodes_are_absent():
    assert spf({1: {2: 1}, 2: {1: 1}, 3: {}}, 1) == {2: (1, frozenset({2}))}


def test_unknown_or_isolated_source():
    assert spf({1: {2: 1}, 2: {1: 1}}, 9) == {}
    assert spf({1: {1: 3}}, 1) == {}
