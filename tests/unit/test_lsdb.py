from spines_kr.routing.lsdb import LSDB, NEWER, OLDER, SAME, compare
from spines_kr.wire.packets import LSA


def test_ordering():
    a = LSA.make(1, 5, [(2, 1)])
    assert compare(a, None) == NEWER
    assert compare(LSA.make(1, 6), a) == NEWER
    assert compare(LSA.make(1, 4), a) == OLDER
    assert compare(LSA.make(1, 5, [(2, 1)]), a) == SAME
    b = LSA.make(1, 5, [(3, 1)])  # same seq, other body: one order, everywhere
    assert {compare(a, b), compare(b, a)} == {NEWER, OLDER}


def test_graph_needs_both_ends():
    db = LSDB(1)
    db.install(LSA.make(1, 1, [(2, 1), (3, 1)]), 0)
    db.install(LSA.make(2, 1, [(1, 1)]), 0)
    db.install(LSA.make(3, 1, []), 0)  # 3 no longer lists 1: half a link
    assert db.graph() == {1: {2: 1}, 2: {1: 1}, 3: {}}


def test_expire_unreachable_and_old():
    db = LSDB(1, max_age=100, unreachable_gc=10)
    db.install(LSA.make(1, 1), 0)
    db.install(LSA.make(2, 1), 0)
    db.install(LSA.make(3, 1), 0)
    assert db.expire(5, reachable={1, 2}) == []
    assert db.expire(16, reachable={1, 2}) == [3]
    assert db.expire(101, reachable={1, 2}) == [2]
    assert set(db.lsas) == {1}
