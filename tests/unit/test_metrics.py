"""Spines' link metrics, their hysteresis, and route choice under each metric (simulated time)."""

import math

import pytest

from spines_kr.routing import metrics as m
from spines_kr.routing.metrics import CostTracker, LinkMeasure
from tests.unit.sim import Sim


@pytest.mark.parametrize("rtt, want", [(0.1, 5), (2, 5), (10, 9), (80, 44), (1000, 300)])
def test_latency(rtt, want):
    assert m.latency(LinkMeasure(rtt)) == want


@pytest.mark.parametrize("p, want", [(0, 1), (0.1, round(-math.log(0.9) * 1e4) + 1), (1, 30000),
                                     (0.99999, 30000)])
def test_loss(p, want):
    assert m.loss(LinkMeasure(1, p)) == want


def test_explat():
    assert m.explat(LinkMeasure(0.2, 0)) == 2  # floor
    assert m.explat(LinkMeasure(40, 0)) == 20
    d, p = 20, 0.1
    want = (1 - p) * d + (p - 2 * p * p + p ** 3) * (3 * d + 10) + (2 * p * p - p ** 3) * 600
    assert m.explat(LinkMeasure(40, 0.1)) == round(want)
    assert m.explat(LinkMeasure(2000, 0.9)) == 600  # cap


def test_small_changes_are_not_readvertised():
    t = CostTracker("latency")
    assert t.update(LinkMeasure(40), 0) and t.advertised == 24
    assert not t.update(LinkMeasure(44), 1)  # 26 is within 10 % of 24
    assert t.update(LinkMeasure(50), 2) and t.advertised == 29


def test_problem_flag_and_hold_down():
    t = CostTracker("problem")
    assert t.update(LinkMeasure(20, 0), 0) and not t.problematic  # base 10 ms
    assert t.update(LinkMeasure(20, 0.05), 1) and t.problematic  # loss > 2 %: at once
    assert t.advertised & m.PROBLEM_FLAG
    assert m.graph_cost(t.advertised) > m.EXPLAT_CAP
    assert not t.update(LinkMeasure(20, 0.01), 2) and t.problematic  # not below 0.5 % yet
    assert not t.update(LinkMeasure(20, 0.0), 10)  # better, but within 30 s of the report
    assert t.update(LinkMeasure(20, 0.0), 31.5) and not t.problematic


def state(t: CostTracker) -> tuple[int, bool, bool]:
    """(advertised magnitude, flagged on the wire, problematic)."""
    return t.advertised & ~m.PROBLEM_FLAG, bool(t.advertised & m.PROBLEM_FLAG), t.problematic


def test_problem_by_latency_against_base():
    """Problematic when one-way latency > 1.25 x base and >= base + 5 ms; normal again only
    below max(1.15 x base, base + 3 ms); a worsening is reported at once, an improvement no
    sooner than 30 s after the last report.  Base: 10 ms one way (RTT 20), so the +5/+3 ms
    terms decide (1.25 x 10 = 12.5 < 15, 1.15 x 10 = 11.5 < 13)."""
    t = CostTracker("problem")
    assert t.update(LinkMeasure(20), 0) and state(t) == (10, False, False)
    assert t.base_ms == 10
    # 14 ms: 1.4 x base but only +4 ms: not problematic; the cost (+40 %) is reported at once
    assert t.update(LinkMeasure(28), 1) and state(t) == (14, False, False)
    # 15 ms: +5 ms and 1.5 x: problematic, reported at once (1 s after the last report)
    assert t.update(LinkMeasure(30), 2) and state(t) == (15, True, True)
    assert m.graph_cost(t.advertised) == 15 + m.PROBLEM_PENALTY
    # 20 ms: worse still, reported at once
    assert t.update(LinkMeasure(40), 3) and state(t) == (20, True, True)
    # 13 ms: below the 15 ms that made it problematic but not below max(11.5, 13): still
    # problematic (hysteresis); a better cost, held for 30 s after the report at t=3
    assert not t.update(LinkMeasure(26), 4) and state(t) == (20, True, True)
    assert not t.update(LinkMeasure(26), 32.9) and state(t) == (20, True, True)
    assert t.update(LinkMeasure(26), 33) and state(t) == (13, True, True)
    # 12 ms: below base + 3: normal again, but only reported 30 s after the report at t=33
    assert not t.update(LinkMeasure(24), 34) and state(t) == (13, True, True)
    assert not t.update(LinkMeasure(24), 62.9) and state(t) == (13, True, True)
    assert t.update(LinkMeasure(24), 63) and state(t) == (12, False, False)
    assert t.base_ms == 10  # the lowest delay since the link came up


def test_problem_by_latency_needs_both_ratio_and_margin():
    """Base 40 ms one way: 1.25 x base (50 ms) decides over base + 5 (45 ms)."""
    t = CostTracker("problem")
    assert t.update(LinkMeasure(80), 0) and state(t) == (40, False, False)
    # 46 ms: +6 ms but only 1.15 x: not problematic; +15 % cost, reported at once
    assert t.update(LinkMeasure(92), 1) and state(t) == (46, False, False)
    # 50 ms: exactly 1.25 x, not above it: not problematic; +9 % cost: not re-advertised
    assert not t.update(LinkMeasure(100), 2) and state(t) == (46, False, False)
    # 51 ms: above 1.25 x and +11 ms: problematic, reported at once
    assert t.update(LinkMeasure(102), 3) and state(t) == (51, True, True)
    # 47 ms, 30 s after that report: below the 50 ms threshold but not below
    # max(1.15 x 40 = 46, 43), so still problematic, and only 8 % cheaper: nothing to report
    assert not t.update(LinkMeasure(94), 33) and state(t) == (51, True, True)
    # 45 ms: below 46, normal again: reported (the hold ended at t=33)
    assert t.update(LinkMeasure(90), 34) and state(t) == (45, False, False)
    # 49 ms: under the 50 ms threshold, and +9 %: neither problematic nor re-advertised
    assert not t.update(LinkMeasure(98), 35) and state(t) == (45, False, False)


# --- route choice in simulated time -----------------------------------------------------------
# A 2-hop path 1-2-5 with 40 ms per link, a 3-hop path 1-3-4-5 with 2 ms per link.
EDGES = [(1, 2), (2, 5), (1, 3), (3, 4), (4, 5)]


def slow_fast(metric, **kw):
    sim = Sim(5, EDGES, metric=metric, **kw)
    for a, b in ((1, 2), (2, 5)):
        sim.set_wire(a, b, delay=0.040)
    for a, b in ((1, 3), (3, 4), (4, 5)):
        sim.set_wire(a, b, delay=0.002)
    return sim


def test_distance_takes_the_two_hop_path():
    sim = slow_fast("distance", dead_interval=1.0)
    assert sim.run_until(lambda: sim.next_hop_node(1, 5) == {2}, 5) is not None


def test_latency_takes_the_three_hop_path_and_moves_when_it_slows():
    sim = slow_fast("latency", dead_interval=1.0)
    assert sim.run_until(lambda: sim.next_hop_node(1, 5) == {3}, 5) is not None
    sim.run(2)
    assert sim.next_hop_node(1, 5) == {3}
    sim.set_wire(3, 4, delay=0.200)  # the fast path gets slow
    assert sim.run_until(lambda: sim.next_hop_node(1, 5) == {2}, 5) is not None


def test_loss_metric_avoids_the_lossy_two_hop_path():
    sim = Sim(5, EDGES, metric="loss")
    sim.set_wire(1, 2, loss=0.10)
    sim.run(6)  # a loss window's worth of hellos
    assert sim.run_until(lambda: sim.next_hop_node(1, 5) == {3}, 5) is not None


def test_metric_costs_flood_only_on_significant_change():
    sim = slow_fast("latency", dead_interval=1.0)
    sim.run(3)
    seq = sim.nodes[1].seq
    sim.run(10)  # steady links: nothing to re-advertise
    assert sim.nodes[1].seq == seq


def test_multipath_tolerance_uses_a_nearly_equal_path():
    sim = Sim(4, [(1, 2), (2, 4), (1, 3), (3, 4)], metric="latency", multipath=True,
              multipath_tolerance=0.2, dead_interval=1.0)
    sim.set_wire(1, 2, delay=0.010)
    sim.set_wire(2, 4, delay=0.010)
    sim.set_wire(1, 3, delay=0.011)
    sim.set_wire(3, 4, delay=0.011)
    assert sim.run_until(lambda: sim.next_hop_node(1, 4) == {2, 3}, 5) is not None


def test_cost_weights_favour_the_cheaper_path():
    from spines_kr.routing.model import NextHop
    from spines_kr.routing.routes import node_routes
    graph = {1: {2: 10, 3: 11}, 2: {1: 10, 4: 10}, 3: {1: 11, 4: 11}, 4: {2: 10, 3: 11}}
    from spines_kr.routing.spf import spf
    hops = {2: [NextHop("10.0.0.2", 2)], 3: [NextHop("10.0.0.3", 3)]}
    r = node_routes(spf(graph, 1), hops, multipath=True, graph=graph, self_id=1, tolerance=0.2,
                    weights="cost")
    weights = {nh.gateway: nh.weight for nh in r["0.0.0.4/32"].nexthops}
    assert weights == {"10.0.0.2": 16, "10.0.0.3": round(16 * 20 / 22)}
    equal = node_routes(spf(graph, 1), hops, multipath=True, graph=graph, self_id=1, tolerance=0.2)
    assert {nh.weight for nh in equal["0.0.0.4/32"].nexthops} == {1}
