"""Group routes (pure) and membership flooding in simulated time."""

import ipaddress

from spines_kr.routing import groups as grp
from spines_kr.routing.model import NextHop, Route
from spines_kr.wire.packets import LSA
from tests.unit.sim import Sim

G = int(ipaddress.IPv4Address("240.1.1.1"))
GW = int(ipaddress.IPv4Address("240.220.11.1"))


def ip(n):
    return str(ipaddress.IPv4Address(n))


def setup():
    # self 1; members 2 (cost 1), 3 (cost 2), 4 (cost 1)
    spf = {2: (1, frozenset({2})), 3: (2, frozenset({2})), 4: (1, frozenset({4}))}
    routes = {f"{ip(n)}/32": Route(f"{ip(n)}/32", (NextHop(f"10.0.{n}.1", n),)) for n in (2, 3, 4)}
    return spf, routes


def test_nearest_member_lowest_id_on_ties_and_anypath_all():
    spf, routes = setup()
    ms = {G: {3, 4, 2}}
    r, chosen = grp.anycast_routes(ms, spf, routes, 1)
    assert chosen[G] == [2] and r["240.1.1.1/32"].nexthops == (NextHop("10.0.2.1", 2),)
    r, chosen = grp.anycast_routes(ms, spf, routes, 1, anypath=True)
    assert chosen[G] == [2, 4] and len(r["240.1.1.1/32"].nexthops) == 2


def test_a_member_routes_nothing_for_its_group():
    spf, routes = setup()
    r, chosen = grp.anycast_routes({G: {1, 2}}, spf, routes, 1)
    assert r == {} and chosen[G] == [1]


def test_spines_mappings():
    a = int(ipaddress.IPv4Address("247.1.2.3"))
    m = int(ipaddress.IPv4Address("227.4.5.6"))
    assert grp.mapped_dst(a, True) == "10.1.2.3/32"
    assert grp.mapped_dst(a, False) == "247.1.2.3/32"
    spf, routes = setup()
    r, _ = grp.anycast_routes({a: {2}, m: {2, 4}}, spf, routes, 1, mappings=True,
                              multicast_mapped=True)
    assert set(r) == {"10.1.2.3/32", "10.4.5.6/32"} and len(r["10.4.5.6/32"].nexthops) == 2


def test_gateway_default_route_and_gateways_keep_theirs():
    spf, routes = setup()
    r, chosen = grp.gateway_routes({GW: {3, 4}}, spf, routes, 1, GW)
    assert list(r) == ["0.0.0.0/0"] and chosen == [4]
    assert grp.gateway_routes({GW: {1, 3}}, spf, routes, 1, GW)[0] == {}
    assert grp.gateway_routes({}, spf, routes, 1, GW)[0] == {}


def test_only_reachable_members_count():
    lsas = {2: LSA.make(2, 1, groups=[G]), 9: LSA.make(9, 1, groups=[G])}
    assert grp.members(lsas, {1, 2}) == {G: {2}}


def test_join_and_leave_flood_and_move_the_route():
    sim = Sim(4, [(1, 2), (2, 3), (3, 4)], kernel_levels=(0, 1))
    sim.run_until(lambda: len(sim.nodes[1].routes()) == 3, 2)
    sim.nodes[3].join(G, sim.now)
    sim.nodes[4].join(G, sim.now)
    assert sim.run_until(lambda: sim.nodes[1].group_choice.get(G) == [sim.ids[3]]
                         if "240.1.1.1/32" in sim.nodes[1].routes() else False, 1) is not None
    sim.nodes[3].leave(G, sim.now)
    assert sim.run_until(lambda: (sim.nodes[1].routes(), sim.nodes[1].group_choice.get(G))[1]
                         == [sim.ids[4]], 1) is not None


def test_multicast_tree_roles_on_a_ring():
    # ring 1-2-3-5-4-1, unit costs; source at 1; members 3 and 5
    g = {1: {2: 1, 4: 1}, 2: {1: 1, 3: 1}, 3: {2: 1, 5: 1}, 5: {3: 1, 4: 1}, 4: {5: 1, 1: 1}}
    assert grp.tree_parents(g, 1) == {2: 1, 4: 1, 3: 2, 5: 4}
    assert grp.tree_role(g, 1, 1, {3, 5}) == (None, {2, 4}, True)
    assert grp.tree_role(g, 1, 2, {3, 5}) == (1, {3}, True)
    assert grp.tree_role(g, 1, 4, {3}) == (1, set(), True)  # n4's subtree has no member
    assert grp.tree_role(g, 1, 9, {3}) == (None, set(), False)


def test_tree_ties_break_to_the_lowest_parent():
    g = {1: {2: 1, 3: 1}, 2: {1: 1, 4: 1}, 3: {1: 1, 4: 1}, 4: {2: 1, 3: 1}}
    assert grp.tree_parents(g, 1)[4] == 2


def test_source_node_by_logical_id_or_longest_prefix():
    lsas = {5: LSA.make(5, 1, prefixes=[(0x0AD20000, 16, 0)]),
            6: LSA.make(6, 1, prefixes=[(0x0AD20100, 24, 0)])}
    assert grp.source_node(lsas, 5) == 5
    assert grp.source_node(lsas, 0x0AD20102) == 6
    assert grp.source_node(lsas, 0x0AD20202) == 5
    assert grp.source_node(lsas, 0x0B000001) is None
