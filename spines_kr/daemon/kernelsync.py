"""The kernel sync: the engine's desired routes -> our slot of the kernel, off the loop.

Data model (``KernelSync``): the ``Reconciler`` (netlink.reconcile, pure) and the state around it:
    attempted       the engine's ``routes_version`` of the last sync started; a sync starts when
                    the version moves (coalesced: many changes in one loop turn cost one sync)
    dump wanted     the kernel may hold other routes than ``installed`` (a link went down and
                    the kernel dropped routes silently, a route of ours was deleted by hand, the
                    event socket overflowed, a sync failed): the next sync dumps first.  Cleared
                    only by a sync whose dump succeeded and that no newer reason overtook
                    (``_dump_gen`` / ``_dumped_gen``)
    hold            graceful restart: routes found at start are kept while the overlay
                    converges; the sync only adds what is missing, until every configured
                    neighbor that can come up is up and the desired set has been stable for
                    ``SETTLE_S``, or ``startup_grace_s`` passed; then it replaces and sweeps
    failing writes  per route, in the reconciler: a refused write is retried on its own
                    backoff (0.5 s, doubling to 30 s), never because other events happen; logged
                    once when it starts failing, again at 2, 4, 8... failures, and when it recovers
    in flight       one sync at a time runs in the loop's worker thread (a big table costs the
                    kernel tens of ms; the loop keeps serving hellos meanwhile)
Its one deadline (``loop.Deadline``) is the earliest of: a failing write's retry, the end of
the hold (or of its settle time), a whole-sync retry after a failed dump (backoff), and the
periodic full sync (``reconcile_interval_s``).

Entry points: ``KernelSync(reconciler, loop, log, desired, version, neighbors_ready, ...)``,
``start(installed)`` (the dump made at start-up), ``poke()`` (after any engine event: cheap when
nothing moved), ``drift(reason)``, ``withdraw(done)`` (clean exit), ``status()``.

Threads: the worker runs ``Reconciler.sync``, which replaces ``installed`` and ``failing`` (never
changes them in place), so the loop may read them for ``show`` at any time; everything else of
this object is touched on the loop only.  Tested in simulated time against the stateful fake
kernel (tests/unit/test_kernelsync.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from spines_kr.daemon.loop import INF, Deadline, Loop
from spines_kr.netlink.reconcile import Reconciler, SyncResult
from spines_kr.routing.model import RouteSet

SETTLE_S = 0.3  # routes unchanged this long after all neighbors are up: the restart hold ends
SYNC_RETRY_FIRST = 0.5  # s after a sync that failed as a whole (a dump the kernel refused)
SYNC_RETRY_MAX = 30.0


class KernelSync:
    def __init__(self, reconciler: Reconciler, loop: Loop, log, *,
                 desired: Callable[[], RouteSet], version: Callable[[], int],
                 neighbors_ready: Callable[[], bool], interval: float, grace: float,
                 on_synced: Callable[[], None] | None = None) -> None:
        self.reconciler = reconciler
        self.loop = loop
        self.log = log
        self._desired = desired
        self._version = version
        self._neighbors_ready = neighbors_ready
        self.interval = interval
        self.grace = grace
        self.on_synced = on_synced
        self.deadline = Deadline(loop, self._on_deadline)
        self.attempted = -1
        self.synced_version = -1
        self.hold = False
        self.withdrawn = False
        self.hold_until = 0.0
        self._hold_started = 0.0
        self._last_desired: RouteSet | None = None
        self._last_change = 0.0
        self._dump_gen = 0
        self._dumped_gen = 0
        self._in_flight = False
        self._scheduled = False
        self._dirty = False
        self._sync_failures = 0
        self._not_before = 0.0
        self._next_full = INF
        self.stats = {"reconciles": 0, "routes_added": 0, "routes_replaced": 0,
                      "routes_deleted": 0, "route_errors": 0, "route_writes_deferred": 0,
                      "sync_failures": 0}

    # --- state ----------------------------------------------------------------------------

    @property
    def need_dump(self) -> bool:
        return self._dump_gen != self._dumped_gen

    @property
    def installed(self) -> RouteSet:
        return self.reconciler.installed

    @property
    def busy(self) -> bool:
        return self._in_flight or self._scheduled

    def status(self) -> dict:
        return {"installed": len(self.reconciler.installed), "restart_hold": self.hold,
                "failing_writes": len(self.reconciler.failing), "need_dump": self.need_dump,
                "in_flight": self._in_flight}

    # --- inputs -----------------------------------------------------------------------------

    def start(self, installed: RouteSet) -> None:
        """The routes of our slot found at start: held (graceful restart) if there are any."""
        now = self.loop.time()
        self.reconciler.installed = installed
        self._dumped_gen = self._dump_gen
        self._next_full = now + self.interval
        if installed:
            self.hold = True
            self._hold_started = now
            self.hold_until = now + self.grace
            self.log.info("routes.restart_hold", stale=len(installed), grace_s=self.grace)
        self.poke()

    def poke(self) -> None:
        """Something happened: sync if the desired routes may have moved (or a dump is due)."""
        if self.withdrawn:
            return  # leaving: what is deleted stays deleted
        if self._in_flight or self._scheduled:
            self._dirty = True
            return
        if self._version() == self.attempted and not self.need_dump:
            return
        if self.loop.time() < self._not_before:
            self._arm()  # a failed sync waits for its backoff
            return
        self._scheduled = True
        self.loop.call_soon(self._start)

    def drift(self, reason: str) -> None:
        """The kernel may hold other routes than we think: dump at the next sync."""
        self._dump_gen += 1
        self.poke()

    def route_deleted(self, dst: str) -> None:
        """A route of our slot was deleted (a netlink event): ours to put back, unless the
        delete was our own (then it is not in ``installed`` any more)."""
        if self._in_flight or dst in self.reconciler.installed:
            self.log.info("routes.drift", dst=dst, change="deleted")
            self.drift("route deleted")

    # --- the sync ---------------------------------------------------------------------------

    def _hold_over(self, now: float) -> bool:
        if now >= self.hold_until:
            return True
        return self._neighbors_ready() and now - self._last_change >= SETTLE_S

    def _start(self) -> None:
        self._scheduled = False
        if self.withdrawn:
            return
        if self._in_flight:
            self._dirty = True
            return
        now = self.loop.time()
        version = self._version()
        desired = self._desired()
        if desired != self._last_desired:
            self._last_change = now
            self._last_desired = desired
        if self.hold and self._hold_over(now):
            self.hold = False
            self.log.info("routes.restart_hold_over", after_s=round(now - self._hold_started, 3))
        full = self.need_dump or now >= self._next_full
        gen = self._dump_gen
        installed = None if full else self.reconciler.installed
        hold = self.hold
        self._in_flight = True
        self._dirty = False
        self.attempted = version
        started = time.perf_counter()

        def job() -> SyncResult:
            return self.reconciler.sync(desired, installed=installed, allow_delete=not hold,
                                        allow_replace_existing=not hold, now=now)

        def done(result: SyncResult | None, error: BaseException | None) -> None:
            self._done(version, full, gen, hold, len(desired), started, result, error)

        self.loop.run_in_worker(job, done=done)

    def _done(self, version: int, full: bool, gen: int, hold: bool, total: int, started: float,
              result: SyncResult | None, error: BaseException | None) -> None:
        self._in_flight = False
        now = self.loop.time()
        if error is not None:
            self._sync_failures += 1
            self.stats["sync_failures"] += 1
            delay = min(SYNC_RETRY_MAX, SYNC_RETRY_FIRST * 2 ** (self._sync_failures - 1))
            self._not_before = now + delay
            self._dump_gen += 1  # what the kernel holds is unknown now
            self.attempted = -1
            (self.log.error if isinstance(error, OSError) else self.log.critical)(
                "routes.sync_failed", error=str(error) or repr(error), retry_in_s=delay,
                failures=self._sync_failures)
            self._arm()
            return
        self._sync_failures = 0
        self._not_before = 0.0
        if full:
            if gen == self._dump_gen:
                self._dumped_gen = gen
            self._next_full = now + self.interval
        s = self.stats
        s["reconciles"] += 1
        s["routes_added"] += result.added
        s["routes_replaced"] += result.replaced
        s["routes_deleted"] += result.deleted
        s["route_errors"] += len(result.errors)
        s["route_writes_deferred"] += result.deferred
        if result.added or result.replaced or result.deleted or result.errors:
            self.log.info("routes.synced", added=result.added, replaced=result.replaced,
                          deleted=result.deleted, errors=len(result.errors), total=total,
                          deferred=result.deferred,
                          ms=round((time.perf_counter() - started) * 1000, 3), full=full)
        failing = self.reconciler.failing
        for err in result.errors:
            f = failing.get((err.op, err.route.dst))
            count = f.count if f else 1
            if count & (count - 1) == 0:  # 1, 2, 4, 8, ...: a running count, not a storm
                self.log.warning("routes.write_failed", dst=err.route.dst, op=err.op,
                                 error=err.message, count=count,
                                 retry_in_s=round(f.next_try - now, 3) if f else None)
        for f in result.recovered:
            self.log.info("routes.write_recovered", dst=f.route.dst, op=f.op, after=f.count)
        if not result.errors and not hold:
            self.synced_version = version
        if self.on_synced is not None:
            self.on_synced()
        if self._dirty or self.need_dump:
            self._dirty = False
            self.poke()
        elif self._version() != version:
            self.poke()
        self._arm()

    # --- the deadline -------------------------------------------------------------------------

    def next_deadline(self) -> float:
        if self._in_flight:
            return INF  # the sync's completion re-arms
        when = min(self.reconciler.next_retry(), self._next_full)
        if self._not_before:
            when = min(when, self._not_before)
        if self.hold:
            when = min(when, self.hold_until)
            if self._neighbors_ready():
                when = min(when, self._last_change + SETTLE_S)
        return when

    def _arm(self) -> None:
        self.deadline.set(self.next_deadline())

    def _on_deadline(self) -> None:
        now = self.loop.time()
        if now >= self._not_before:
            self._not_before = 0.0
        if now >= self._next_full:
            self._dump_gen += 1  # the periodic full sync: read the kernel again
        self.attempted = -1  # something is due: run a sync whatever the version
        self.poke()
        if not self.busy:
            self._arm()

    def neighbors_changed(self) -> None:
        """A link came up or went down: the restart hold may be able to end."""
        if self.hold:
            self._arm()

    # --- exit -----------------------------------------------------------------------------------

    def withdraw(self, done: Callable[[SyncResult | None, BaseException | None], None]) -> None:
        """Delete every route of ours (after the sync in flight, if any); no sync follows."""
        self.deadline.cancel()
        self.withdrawn = True

        def job() -> SyncResult:
            return self.reconciler.sync({})

        self.loop.run_in_worker(job, done=done)
