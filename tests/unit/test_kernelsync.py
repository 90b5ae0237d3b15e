"""The kernel sync (daemon.kernelsync) in simulated time against the stateful fake kernel:
coalescing, per-route retry backoff, the dump flag, the restart hold, the periodic full sync."""

import errno

import pytest

from spines_kr.daemon.kernelsync import SETTLE_S, KernelSync
from spines_kr.netlink.reconcile import RETRY_FIRST, RETRY_MAX, Reconciler
from spines_kr.routing.model import NextHop, Route, route_set
from tests.unit.fakekernel import FakeKernel, stored
from tests.unit.simloop import SimLoop


def r(dst: str, gw: str = "10.0.0.2", prefsrc: str | None = None) -> Route:
    return Route(dst, (NextHop(gw, 2),), prefsrc)


class Log:
    def __init__(self):
        self.events: list[tuple[str, dict]] = []

    def __getattr__(self, level):
        return lambda event, **fields: self.events.append((event, fields))

    def named(self, event):
        return [f for e, f in self.events if e == event]


class Engine:
    """What the kernel sync reads of the engine: a desired set and its version."""

    def __init__(self, routes=()):
        self.routes = route_set(list(routes))
        self.version = 1
        self.ready = True

    def set(self, routes):
        self.routes = route_set(list(routes))
        self.version += 1


class CountingKernel(FakeKernel):
    def __init__(self, routes=None):
        super().__init__(routes)
        self.dump_fails = 0

    def dump(self):
        if self.dump_fails:
            self.dump_fails -= 1
            raise OSError(errno.ENOBUFS, "No buffer space available")
        return super().dump()


@pytest.fixture
def rig():
    loop = SimLoop()
    kernel = CountingKernel()
    engine = Engine([r("10.1.0.0/16"), r("10.2.0.0/16")])
    log = Log()
    ks = KernelSync(Reconciler(kernel), loop, log, desired=lambda: engine.routes,
                    version=lambda: engine.version, neighbors_ready=lambda: engine.ready,
                    interval=30.0, grace=5.0)
    yield loop, kernel, engine, log, ks
    loop.close()


def writes_to(kernel, dst):
    return sum(1 for _op, route in kernel.writes if route.dst == dst)


def test_changes_sync_at_once_and_are_coalesced(rig):
    loop, kernel, engine, log, ks = rig
    ks.start(kernel.dump())
    loop.advance(0.01)
    assert kernel.routes == {d: stored(x) for d, x in engine.routes.items()}
    syncs = ks.stats["reconciles"]
    engine.set([r("10.1.0.0/16", "10.0.0.3"), r("10.2.0.0/16")])
    for _ in range(50):  # many events in one loop turn
        ks.poke()
    loop.advance(0.01)
    assert ks.stats["reconciles"] == syncs + 1
    assert kernel.routes["10.1.0.0/16"] == stored(r("10.1.0.0/16", "10.0.0.3"))
    for _ in range(50):  # events that do not move the routes cost nothing
        ks.poke()
        loop.advance(0.01)
    assert ks.stats["reconciles"] == syncs + 1


def test_a_refused_route_is_retried_on_its_own_backoff_not_per_event(rig):
    loop, kernel, engine, log, ks = rig
    kernel.fail["10.2.0.0/16"] = errno.EINVAL  # e.g. "invalid prefsrc"
    ks.start(kernel.dump())
    for _ in range(200):  # 200 packets and timers over 10 s, none moves the routes
        ks.poke()
        loop.advance(0.05)
    tries = writes_to(kernel, "10.2.0.0/16")
    # at 0, 0.5, 1.5, 3.5, 7.5 s: the backoff doubles from RETRY_FIRST
    assert 4 <= tries <= 6, tries
    assert writes_to(kernel, "10.1.0.0/16") == 1
    counts = [f["count"] for f in log.named("routes.write_failed")]
    assert counts == [c for c in counts if c & (c - 1) == 0]  # 1, 2, 4, 8: a running count
    assert counts[0] == 1 and len(counts) < tries + 1
    # the backoff is capped
    loop.advance(600)
    gaps = ks.reconciler.failing[("replace", "10.2.0.0/16")]
    assert gaps.next_try - loop.time() <= RETRY_MAX
    # fixed: the next retry succeeds and says so
    del kernel.fail["10.2.0.0/16"]
    loop.advance(RETRY_MAX + 1)
    assert "10.2.0.0/16" in kernel.routes
    assert log.named("routes.write_recovered")[0]["dst"] == "10.2.0.0/16"
    assert not ks.reconciler.failing


def test_a_changed_route_for_a_failing_dst_is_written_at_once(rig):
    loop, kernel, engine, log, ks = rig
    kernel.fail["10.2.0.0/16"] = errno.EINVAL
    ks.start(kernel.dump())
    loop.advance(0.01)
    before = writes_to(kernel, "10.2.0.0/16")
    del kernel.fail["10.2.0.0/16"]
    engine.set([r("10.1.0.0/16"), r("10.2.0.0/16", "10.0.0.9")])
    ks.poke()
    loop.advance(0.01)  # well before the retry time
    assert writes_to(kernel, "10.2.0.0/16") == before + 1
    assert kernel.routes["10.2.0.0/16"] == stored(r("10.2.0.0/16", "10.0.0.9"))


def test_the_dump_flag_is_cleared_only_by_a_good_dump(rig):
    loop, kernel, engine, log, ks = rig
    ks.start(kernel.dump())
    loop.advance(0.01)
    kernel.routes.pop("10.1.0.0/16")  # lost behind our back
    kernel.dump_fails = 1
    ks.drift("link state")
    loop.advance(0.01)
    assert ks.need_dump and log.named("routes.sync_failed")
    assert "10.1.0.0/16" not in kernel.routes
    for _ in range(20):  # a failed sync waits for its backoff, whatever happens meanwhile
        ks.poke()
    assert ks.stats["sync_failures"] == 1
    loop.advance(1.0)
    assert not ks.need_dump
    assert "10.1.0.0/16" in kernel.routes


def test_routes_deleted_by_hand_come_back_and_the_periodic_sync_repairs_silently(rig):
    loop, kernel, engine, log, ks = rig
    ks.start(kernel.dump())
    loop.advance(0.01)
    kernel.routes.pop("10.1.0.0/16")
    ks.route_deleted("10.1.0.0/16")  # the netlink event
    loop.advance(0.01)
    assert "10.1.0.0/16" in kernel.routes
    kernel.routes.pop("10.2.0.0/16")  # no event at all: the periodic full sync finds it
    loop.advance(29)
    assert "10.2.0.0/16" not in kernel.routes
    loop.advance(2)
    assert "10.2.0.0/16" in kernel.routes


def test_restart_hold_keeps_stale_routes_until_neighbors_are_up_and_routes_settle(rig):
    loop, kernel, engine, log, ks = rig
    stale = r("10.9.0.0/16")
    kernel.routes.update({stale.dst: stored(stale), "10.1.0.0/16": stored(r("10.1.0.0/16", "10.0.0.7"))})
    engine.ready = False
    ks.start(kernel.dump())
    assert ks.hold
    loop.advance(0.01)
    assert "10.2.0.0/16" in kernel.routes  # missing ones are added at once
    assert stale.dst in kernel.routes  # nothing is deleted or replaced during the hold
    assert kernel.routes["10.1.0.0/16"] == stored(r("10.1.0.0/16", "10.0.0.7"))
    loop.advance(1.0)
    assert ks.hold
    engine.ready = True  # every configured neighbor is up
    ks.neighbors_changed()
    loop.advance(SETTLE_S + 0.05)
    assert not ks.hold
    assert stale.dst not in kernel.routes
    assert kernel.routes["10.1.0.0/16"] == stored(r("10.1.0.0/16"))


def test_restart_hold_ends_at_the_grace_time_whatever_the_neighbors(rig):
    loop, kernel, engine, log, ks = rig
    stale = r("10.9.0.0/16")
    kernel.routes[stale.dst] = stored(stale)
    engine.ready = False
    ks.start(kernel.dump())
    loop.advance(4.9)
    assert ks.hold and stale.dst in kernel.routes
    loop.advance(0.2)
    assert not ks.hold and stale.dst not in kernel.routes


def test_withdraw_deletes_every_route_of_ours(rig):
    loop, kernel, engine, log, ks = rig
    ks.start(kernel.dump())
    loop.advance(0.01)
    box = []
    ks.withdraw(lambda result, error: box.append((result, error)))
    loop.advance(0.01)
    assert box and box[0][1] is None and box[0][0].deleted == 2
    assert kernel.routes == {}
    # our own deletions come back as events while the daemon is leaving: no repair follows
    ks.route_deleted("10.1.0.0/16")
    engine.set([r("10.1.0.0/16"), r("10.3.0.0/16")])  # (an engine that still has routes)
    ks.poke()
    loop.advance(40)  # past the periodic full sync too
    assert kernel.routes == {}


def test_retry_timing_starts_at_the_first_backoff():
    assert RETRY_FIRST <= 1.0  # first retry within a second (issue 10)
