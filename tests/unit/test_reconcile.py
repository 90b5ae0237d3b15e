"""The reconciler against a stateful fake kernel: minimal writes, retries, graceful restart."""

import errno

from hypothesis import given, strategies as st

from spines_kr.netlink.reconcile import Plan, Reconciler, diff
from spines_kr.routing.model import NextHop, Route, route_set
from tests.unit.fakekernel import FakeKernel, stored


def r(dst: str, *gateways: str, weight: int = 1, prefsrc: str | None = None) -> Route:
    return Route(dst, tuple(NextHop(g, 2, weight) for g in gateways), prefsrc)


A = r("10.1.0.0/16", "10.0.0.2")
B = r("10.2.0.0/16", "10.0.0.2", "10.0.0.3")
C = r("10.3.0.0/16", "10.0.0.3", prefsrc="10.255.0.1")


def test_diff_adds_replaces_and_deletes_sorted_by_dst():
    desired = route_set([C, r("10.2.0.0/16", "10.0.0.2", "10.0.0.4"), A])
    installed = route_set([B, r("10.9.0.0/16", "10.0.0.2"), r("10.0.0.0/16", "10.0.0.2"), A])
    plan = diff(desired, installed)
    assert [x.dst for x in plan.replace] == ["10.2.0.0/16", "10.3.0.0/16"]
    assert plan.replace[0] == desired["10.2.0.0/16"]
    assert [x.dst for x in plan.delete] == ["10.0.0.0/16", "10.9.0.0/16"]
    assert not plan.empty


def test_diff_sees_prefsrc_and_multipath_weights_but_not_a_lone_weight():
    base = route_set([A, B, C])
    assert diff(base, base) == Plan([], [])
    assert diff(base, base).empty
    changed = [r(B.dst, "10.0.0.2", "10.0.0.3", weight=2), r(C.dst, "10.0.0.3")]
    assert diff(route_set([A, *changed]), base).replace == changed
    # The kernel keeps no weight for a single next hop.
    assert diff(route_set([r(A.dst, "10.0.0.2", weight=7)]), route_set([A])).empty


def test_sync_installs_desired_and_second_sync_sends_nothing():
    kernel = FakeKernel(route_set([r("10.9.0.0/16", "10.0.0.9"), r(A.dst, "10.0.0.3")]))
    rec = Reconciler(kernel)
    desired = route_set([A, B, C])
    res = rec.sync(desired)
    assert (res.added, res.replaced, res.deleted, res.errors, res.unchanged) == (2, 1, 1, [], 0)
    assert kernel.routes == desired == rec.installed
    writes = len(kernel.writes)
    res = rec.sync(desired)
    assert len(kernel.writes) == writes
    assert (res.added, res.replaced, res.deleted, res.unchanged) == (0, 0, 0, 3)


def test_sync_with_given_view_does_not_dump():
    kernel = FakeKernel()
    rec = Reconciler(kernel)
    rec.sync(route_set([A]), installed={})
    rec.sync(route_set([A, B]), installed=rec.installed)
    assert kernel.dumps == 0
    assert kernel.writes == [("replace", A), ("replace", B)]


def test_failed_writes_are_reported_and_retried():
    kernel = FakeKernel(route_set([r("10.9.0.0/16", "10.0.0.9")]))
    kernel.fail = {B.dst: errno.ENETUNREACH, "10.9.0.0/16": errno.EBUSY}
    rec = Reconciler(kernel)
    desired = route_set([A, B])
    res = rec.sync(desired)
    assert sorted((e.op, e.route.dst, e.errno) for e in res.errors) == [
        ("delete", "10.9.0.0/16", errno.EBUSY), ("replace", B.dst, errno.ENETUNREACH)]
    assert (res.added, res.deleted) == (1, 0)
    assert set(rec.installed) == {A.dst, "10.9.0.0/16"}
    kernel.fail = {}
    res = rec.sync(desired, installed=rec.installed)
    assert (res.added, res.deleted, res.errors) == (1, 1, [])
    assert kernel.routes == desired == rec.installed


def test_graceful_restart_only_adds_missing_dsts():
    old_a = r(A.dst, "10.0.0.7")
    stale = r("10.9.0.0/16", "10.0.0.9")
    kernel = FakeKernel(route_set([old_a, stale]))
    rec = Reconciler(kernel)
    res = rec.sync(route_set([A, B]), allow_delete=False, allow_replace_existing=False)
    assert kernel.writes == [("replace", B)]
    assert (res.added, res.replaced, res.deleted) == (1, 0, 0)
    assert kernel.routes == route_set([old_a, stale, B]) == rec.installed
    # Hold over: the next sync converges.
    rec.sync(route_set([A, B]))
    assert kernel.routes == route_set([A, B])


def test_withdraw_all():
    kernel = FakeKernel(route_set([A, B, C]))
    res = Reconciler(kernel).sync({})
    assert res.deleted == 3 and kernel.routes == {}


# --- property: whatever the kernel held, one sync makes it hold exactly the desired set ---------

hops = st.builds(NextHop, st.sampled_from(["10.0.0.2", "10.0.0.3", "10.0.1.2"]),
                 st.integers(1, 3), st.integers(1, 4))
routes = st.builds(
    lambda i, hs, src: Route(f"10.{i}.0.0/16", tuple(hs), src),
    st.integers(0, 15), st.lists(hops, min_size=1, max_size=3, unique=True),
    st.sampled_from([None, "10.255.0.1"]))
route_sets = st.lists(routes).map(route_set)


@given(installed=route_sets, desired=route_sets, failing=st.sets(st.integers(0, 15), max_size=3))
def test_sync_converges_even_after_failures(installed, desired, failing):
    kernel = FakeKernel(installed)
    kernel.fail = {f"10.{i}.0.0/16": errno.EINVAL for i in failing}
    rec = Reconciler(kernel)
    res = rec.sync(desired)
    assert rec.installed == kernel.routes
    failed = {e.route.dst for e in res.errors}
    assert failed <= set(kernel.fail)
    for dst in set(desired) - failed:
        assert kernel.routes[dst] == stored(desired[dst])
    assert set(kernel.routes) - set(desired) <= failed

    kernel.fail = {}
    rec.sync(desired, installed=rec.installed)
    assert kernel.routes == {dst: stored(route) for dst, route in desired.items()}
    writes = len(kernel.writes)
    assert rec.sync(desired).errors == []
    assert len(kernel.writes) == writes
