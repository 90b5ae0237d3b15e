"""A stateful stand-in for netlink.kernel.RouteTable: one slot of a kernel routing table.

It keeps what the kernel keeps: one route per dst (replace overwrites, delete of a missing dst
succeeds as for ESRCH), multipath routes whole, and no weight on a lone next hop.  ``fail`` makes
writes to a dst fail with an errno; ``writes`` records every request received.
"""

from __future__ import annotations

import os

from spines_kr.netlink.reconcile import RouteError
from spines_kr.routing.model import NextHop, Route, RouteSet


def stored(route: Route) -> Route:
    """What a dump returns after the route was written."""
    if route.multipath:
        return route
    hop = route.nexthops[0]
    return Route(route.dst, (NextHop(hop.gateway, hop.ifindex),), route.prefsrc)


class FakeKernel:
    def __init__(self, routes: RouteSet | None = None) -> None:
        self.routes: RouteSet = {dst: stored(r) for dst, r in (routes or {}).items()}
        self.fail: dict[str, int] = {}
        self.writes: list[tuple[str, Route]] = []
        self.dumps = 0

    def dump(self) -> RouteSet:
        self.dumps += 1
        return dict(self.routes)

    def apply(self, replace: list[Route], delete: list[Route]) -> list[RouteError]:
        errors = []
        for op, routes in (("replace", replace), ("delete", delete)):
            for route in routes:
                self.writes.append((op, route))
                if route.dst in self.fail:
                    code = self.fail[route.dst]
                    errors.append(RouteError(route, op, code, os.strerror(code)))
                elif op == "replace":
                    self.routes[route.dst] = stored(route)
                else:
                    self.routes.pop(route.dst, None)
        return errors
