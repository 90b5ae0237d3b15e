from spines_kr.viz import to_dot

RING = {"self": "10.0.0.1", "nodes": [{"id": f"10.0.0.{i}"} for i in range(1, 5)],
        "links": [{"from": f"10.0.0.{a}", "to": f"10.0.0.{b}", "cost": c}
                  for a, b, c in [(1, 2, 1), (2, 1, 1), (2, 3, 1), (3, 2, 1), (3, 4, 1), (4, 3, 1),
                                  (4, 1, 5), (1, 4, 3)]]}


def test_dot_has_each_pair_once_with_costs_and_the_tree_in_bold():
    dot = to_dot(RING)
    assert dot.count(" -- ") == 4
    assert '"10.0.0.1" -- "10.0.0.4" [label="3 / 5"' in dot  # asymmetric costs
    bold = [l for l in dot.splitlines() if "penwidth=3" in l]
    assert len(bold) == 3  # a tree over 4 nodes
    assert '"10.0.0.1" [label="10.0.0.1", fillcolor="#9ecae1"]' in dot
