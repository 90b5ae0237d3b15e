"""The protocol engine in simulated time: convergence, failures, restarts, strict input."""

import random

import pytest

from spines_kr.daemon.node import Node
from spines_kr.wire import packets as w
from tests.unit.sim import Sim

RING = [(1, 2), (2, 3), (3, 5), (5, 4), (4, 1)]


def converged(sim):
    n = len(sim.nodes)
    return all(len(node.routes()) == n - 1 for node in sim.nodes.values())


@pytest.fixture
def ring():
    sim = Sim(5, RING)
    assert sim.run_until(lambda: converged(sim), 2) is not None
    return sim


def test_ring_converges_fast_and_agrees():
    sim = Sim(5, RING)
    t = sim.run_until(lambda: converged(sim), 2)
    assert t is not None and t < 0.5
    dbs = [dict(n.lsdb.lsas) for n in sim.nodes.values()]
    assert all(db == dbs[0] for db in dbs)
    assert sim.next_hop_node(1, 3) == {2}


def test_silent_failure_reroutes_within_dead_interval(ring):
    ring.cut_link(1, 2)
    t = ring.run_until(lambda: ring.next_hop_node(1, 3) == {4}, 2)
    assert t is not None and t <= 0.25 + 0.1
    ring.heal_link(1, 2)
    assert ring.run_until(lambda: ring.next_hop_node(1, 3) == {2}, 2) is not None


def test_carrier_loss_reroutes_at_once(ring):
    ring.carrier(1, 2, False)
    assert ring.run_until(lambda: ring.next_hop_node(1, 3) == {4}, 0.05) is not None


def test_one_way_failure_brings_both_ends_down(ring):
    # Only 2 -> 1 is cut: 1 stops hearing 2, and 2 learns it from 1's hellos.
    w12 = (2, ring.addr[(2, 1)][0])
    ring.cut.add(frozenset({w12}))
    assert ring.run_until(lambda: not any(l.up for l in ring.nodes[2].links.values()
                                          if l.peer_addr == "10.200.0.1"), 1) is not None


def test_node_restart_converges_and_beats_its_old_lsa(ring):
    old = ring.nodes[3]
    for _ in range(50):  # a long first life: many originations
        old._originate(ring.now, force=True)
    ring.run(0.5)
    old_seq = old.seq
    params = old.p
    # A fresh process: sequence restarts low, the overlay still holds the old, higher one.
    ring.nodes[3] = Node(params, ring.now, initial_seq=1, rng=random.Random(3))
    for (a, b), (ifx, peer) in ring.addr.items():
        if a == 3:
            ring.nodes[3].add_link(ifx, "", ring.wires[(3, ifx)][2], peer, ring.now)
    agree = lambda: all(n.lsdb.lsas[ring.ids[3]] == ring.nodes[3].lsdb.lsas[ring.ids[3]]
                        for n in ring.nodes.values())
    assert ring.run_until(lambda: converged(ring) and agree(), 3) is not None
    assert ring.nodes[3].seq > old_seq


def restart(sim, i, seed=3):
    """A fresh engine for node i, on the same links (a daemon restarted)."""
    old = sim.nodes[i]
    sim.nodes[i] = Node(old.p, sim.now, initial_seq=1, rng=random.Random(seed))
    for (a, b), (ifx, peer) in sim.addr.items():
        if a == i:
            sim.nodes[i].add_link(ifx, "", sim.wires[(i, ifx)][2], peer, sim.now)


def test_restart_faster_than_dead_interval_gets_the_whole_database(ring):
    # The restarted daemon hears its neighbors before they hear it (a daemon that reads its
    # socket late does so): its first hellos already say HEARD, never UP.  The neighbors must
    # still see a reset, bring the link down and up, and send it their whole database.
    ring.events = []
    restart(ring, 3)
    out = [frozenset({(3, ring.addr[(3, p)][0])}) for p in (2, 5)]
    ring.cut.update(out)  # 3 -> neighbors silent for a moment, well inside the dead interval
    ring.run(0.1)
    ring.cut.difference_update(out)
    full = lambda: len(ring.nodes[3].lsdb) == 5 and converged(ring)
    assert ring.run_until(full, 3) is not None
    reasons = {e[1].get("reason") for i, e in ring.events if e[0] == "neighbor.down"}
    assert "neighbor restarted or reset the link" in reasons


def test_a_flapping_link_is_advertised_with_backoff_and_routes_follow_at_once(ring):
    n1 = ring.nodes[1]
    before = n1.counters["lsa_originated"]
    flaps = 0
    for k in range(40):  # 4 s of a link flapping every 50 ms
        ring.carrier(1, 2, k % 2 == 1)
        flaps += 1
        ring.run(0.05)
        if k % 2 == 0:  # our own routes never wait for the throttle to leave a dead link
            assert ring.next_hop_node(1, 3) == {4}
    assert n1.counters["lsa_originated"] - before < flaps / 3
    # quiet again (link up): the overlay agrees on the final state within the longest wait
    assert ring.run_until(lambda: converged(ring) and all(
        n.lsdb.lsas[n1.id] == n1.lsdb.lsas[n1.id] for n in ring.nodes.values())
        and ring.next_hop_node(1, 3) == {2}, 6) is not None
    assert dict(ring.nodes[5].lsdb.lsas[n1.id].links) == dict(n1._own_links())


def test_withdraw_reroutes_neighbors_at_once(ring):
    ring.nodes[2].withdraw(ring.now)
    ring.run(0.01)
    assert ring.next_hop_node(1, 3) == {4}
    assert len(ring.nodes[2].routes()) == 0  # a leaving node keeps no routes of its own


def test_dead_node_lsa_is_aged_out():
    sim = Sim(3, [(1, 2), (2, 3)])
    assert sim.run_until(lambda: converged(sim), 2) is not None
    sim.cut_link(2, 3)
    sim.run(70)
    assert sim.ids[3] not in sim.nodes[1].lsdb.lsas


def test_metric_mismatch_refuses_adjacency():
    sim = Sim(2, [(1, 2)])
    sim.nodes[2]._metric_code = w.METRIC_CODES["latency"]
    sim.run(1)
    assert not any(l.up for l in sim.nodes[1].links.values())
    assert sim.nodes[1].counters["dropped.metric_mismatch"] > 0


def test_ecmp_square_with_multipath():
    sim = Sim(4, [(1, 2), (2, 4), (1, 3), (3, 4)], multipath=True)
    assert sim.run_until(lambda: sim.next_hop_node(1, 4) == {2, 3}, 2) is not None
    single = Sim(4, [(1, 2), (2, 4), (1, 3), (3, 4)], multipath=False)
    # all four links up, both paths known: still one next hop, the lowest neighbor id
    assert single.run_until(lambda: all(sum(l.up for l in n.links.values()) == 2
                                        for n in single.nodes.values()), 2) is not None
    single.run(0.1)
    assert single.next_hop_node(1, 4) == {2}


def test_garbage_is_counted_not_raised(ring):
    node = ring.nodes[1]
    node.receive(10, "10.200.0.2", b"\x00" * 7, ring.now)
    node.receive(10, "10.200.0.2", b"junk" * 10, ring.now)
    lsu = w.encode(w.LinkStateUpdate((w.LSA.make(99, 1),)), instance=8100, sender=77)
    node.receive(99, "10.9.9.9", lsu, ring.now)  # an LSU from nobody we know
    assert node.counters["dropped.short"] == 1 and node.counters["dropped.magic"] == 1
    assert node.counters["dropped.unknown_neighbor"] == 1
    assert 99 not in node.lsdb.lsas


def test_twelve_node_grid_agrees_with_oracle():
    import networkx as nx
    edges = [(i, i + 1) for i in range(1, 12) if i % 4] + [(i, i + 4) for i in range(1, 9)]
    g = nx.Graph(edges)
    for multipath in (True, False):
        sim = Sim(12, edges, multipath=multipath)
        assert sim.run_until(lambda: converged(sim), 3) is not None
        for b in range(2, 13):
            want = {p[1] for p in nx.all_shortest_paths(g, 1, b)}
            # multipath (the default): every first hop of a shortest path; else the lowest id
            assert sim.next_hop_node(1, b) == (want if multipath else {min(want)})


def test_loss_counts_only_what_was_expected():
    from spines_kr.daemon.neighbors import Link
    link = Link(1, "x", "a", "b")
    for seq in range(40, 50):  # heard from the middle of the neighbor's life
        link.record_rx_seq(seq)
    assert link.loss == 0.0
    for seq in range(52, 60):  # 50 and 51 lost
        link.record_rx_seq(seq)
    assert link.loss == pytest.approx(2 / 20)
