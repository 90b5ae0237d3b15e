"""Reconcile a desired route set with the routes the kernel holds: pure, no sockets.

Data model:
    Plan(replace, delete)          the minimal change: routes to write (absent or different in the
                                   kernel) and installed routes whose dst is no longer desired.
    RouteError(route, op, errno, message)
                                   one kernel write that failed; the rest of its batch applied.
    SyncResult(added, replaced, deleted, errors, unchanged, deferred, recovered)
                                   what one sync did.
    Failure(route, op, errno, message, count, next_try)
                                   a write that keeps failing, and when it may be tried again.
    Kernel                         the narrow contract the reconciler needs: ``dump()`` returns the
                                   installed RouteSet of our (table, protocol, priority) slot,
                                   ``apply(replace, delete)`` writes and returns the failures.
                                   ``netlink.kernel.RouteTable`` is the real one.

Entry points: ``diff(desired, installed)`` and ``Reconciler(kernel).sync(desired, ...)``.

Model followed: BIRD's kernel syncer (sysdep/unix/krt.c).  The daemon always knows the whole table
it wants; each sync compares it with the installed set and writes only the difference, so a
restart, a route deleted by hand or a lost netlink event is repaired by the next sync.  A failed
write is not remembered as installed, so it stays in the difference and is retried.

Retries have their own deadline: a sync given the time (``sync(..., now=t)``) skips ("defers")
a write that failed before and whose retry time has not come, as long as the desired route is
the one that failed: a route the kernel refuses ("invalid prefsrc" once the logical ID left lo)
is tried again after RETRY_FIRST seconds, then twice as long each time up to RETRY_MAX, however
many syncs other changes cause.  A changed route for that dst is written at once.
``next_retry()`` says when the earliest deferred write is due.

Equality follows the kernel: the weight of a single next hop is not stored by the kernel (kernel
6.18: ``ip route add 10.7.0.0/24 nexthop via 10.0.0.2 dev v0 weight 5`` is listed as
``10.7.0.0/24 via 10.0.0.2 dev v0``), so it is ignored when comparing.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Protocol

from spines_kr.routing.model import Route, RouteSet

RETRY_FIRST = 0.5  # s after a failed write
RETRY_MAX = 30.0  # s: the backoff doubles up to this


@dataclass(frozen=True, slots=True)
class RouteError:
    route: Route
    op: str  # "replace" | "delete"
    errno: int
    message: str


@dataclass(frozen=True, slots=True)
class Plan:
    replace: list[Route]
    delete: list[Route]

    @property
    def empty(self) -> bool:
        return not self.replace and not self.delete


@dataclass(slots=True)
class SyncResult:
    added: int = 0
    replaced: int = 0
    deleted: int = 0
    errors: list[RouteError] = field(default_factory=list)
    unchanged: int = 0
    deferred: int = 0  # writes not tried: they failed before and their retry time has not come
    recovered: list[Failure] = field(default_factory=list)  # failed before, succeeded now


@dataclass(frozen=True, slots=True)
class Failure:
    route: Route
    op: str
    errno: int
    message: str
    count: int  # failures in a row
    next_try: float

    @staticmethod
    def after(error: RouteError, previous: Failure | None, now: float) -> Failure:
        count = 1 if previous is None or previous.route != error.route else previous.count + 1
        delay = min(RETRY_MAX, RETRY_FIRST * 2 ** (count - 1))
        return Failure(error.route, error.op, error.errno, error.message, count, now + delay)


class Kernel(Protocol):
    def dump(self) -> RouteSet: ...

    def apply(self, replace: list[Route], delete: list[Route]) -> list[RouteError]: ...


def kernel_form(route: Route) -> Route:
    """The route as the kernel stores it: a lone next hop has no weight."""
    if route.multipath or route.nexthops[0].weight == 1:
        return route
    lone = dataclasses.replace(route.nexthops[0], weight=1)
    return dataclasses.replace(route, nexthops=(lone,))


def diff(desired: RouteSet, installed: RouteSet) -> Plan:
    replace = []
    for dst in sorted(desired):
        want, have = desired[dst], installed.get(dst)
        # Equal routes (the common case of a big, steady table) skip the kernel_form copies.
        if have is None or (want != have and kernel_form(want) != kernel_form(have)):
            replace.append(want)
    delete = [installed[dst] for dst in sorted(installed) if dst not in desired]
    return Plan(replace, delete)


class Reconciler:
    """Keeps one kernel slot equal to the desired route set.

    ``installed`` is the reconciler's view of the kernel after its last sync: the dumped (or given)
    set with the successful writes applied, in the form a dump would return.  ``failing`` holds
    the writes that failed, by (op, dst).  Both are replaced, never changed in place, so another
    thread may read them while a sync runs.
    """

    def __init__(self, kernel: Kernel) -> None:
        self.kernel = kernel
        self.installed: RouteSet = {}
        self.failing: dict[tuple[str, str], Failure] = {}

    def next_retry(self) -> float:
        """When the earliest deferred write may be tried again (inf: none is waiting)."""
        return min((f.next_try for f in self.failing.values()), default=float("inf"))

    def sync(
        self,
        desired: RouteSet,
        *,
        installed: RouteSet | None = None,
        allow_delete: bool = True,
        allow_replace_existing: bool = True,
        now: float | None = None,
    ) -> SyncResult:
        """Make the kernel hold ``desired``; dump first unless ``installed`` is given.

        ``allow_delete=False`` keeps routes that are no longer desired; ``allow_replace_existing``
        False only adds dsts the kernel does not hold at all (graceful restart: routes kept from
        the previous run stay until the topology has converged).  With ``now``, writes that
        failed before wait for their retry time (module docstring); without it, all are tried.
        """
        if installed is None:
            installed = self.kernel.dump()
        plan = diff(desired, installed)
        writes = plan.replace
        if not allow_replace_existing:
            writes = [r for r in writes if r.dst not in installed]
        deletes = plan.delete if allow_delete else []
        failing = self.failing
        deferred = 0
        if now is not None and failing:
            def due(op: str, route: Route) -> bool:
                f = failing.get((op, route.dst))
                return f is None or f.route != route or now >= f.next_try
            kept_w = [r for r in writes if due("replace", r)]
            kept_d = [r for r in deletes if due("delete", r)]
            deferred = len(writes) - len(kept_w) + len(deletes) - len(kept_d)
            writes, deletes = kept_w, kept_d
        errors = self.kernel.apply(writes, deletes) if writes or deletes else []

        failed = {(e.op, e.route.dst) for e in errors}
        view = dict(installed)
        result = SyncResult(errors=errors, unchanged=len(desired) - len(plan.replace),
                            deferred=deferred)
        for route in writes:
            if ("replace", route.dst) not in failed:
                if route.dst in view:
                    result.replaced += 1
                else:
                    result.added += 1
                view[route.dst] = kernel_form(route)
        for route in deletes:
            if ("delete", route.dst) not in failed:
                del view[route.dst]
                result.deleted += 1
        self.installed = view
        # A failure is kept while its write is still wanted and was not tried (deferred),
        # renewed when it failed again, and ends when it succeeded or is no longer wanted.
        tried = {("replace", r.dst) for r in writes} | {("delete", r.dst) for r in deletes}
        wanted = {("replace", r.dst) for r in plan.replace} | {("delete", r.dst) for r in plan.delete}
        new: dict[tuple[str, str], Failure] = {}
        for key, f in failing.items():
            if key in failed:
                continue
            if key in tried:
                result.recovered.append(f)
            elif key in wanted:
                new[key] = f
        stamp = 0.0 if now is None else now
        for e in errors:
            key = (e.op, e.route.dst)
            new[key] = Failure.after(e, failing.get(key), stamp)
        self.failing = new
        return result
