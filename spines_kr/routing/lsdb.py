"""The link-state database: the newest LSA of every origin, and the graph it describes.

Data model: ``LSDB.lsas`` maps origin -> LSA (``spines_kr.wire.packets.LSA``); ``LSDB.stamp``
maps origin -> the time (injected ``now``, seconds) it was last installed or refreshed.

Ordering of two LSAs of one origin (as OSPF, RFC 2328 13.1, minus age): the higher ``seq`` is
newer; at equal ``seq`` a different body is ordered by its encoding, so that every node picks the
same one after an origin restarted and reused a number.  An origin that finds a newer copy of
its own LSA in the overlay jumps its sequence past it (see daemon.flooding).

The graph uses only links both ends advertise (two-way check), taking the cheaper advertised
cost of a pair per direction, as ``metrics.graph_cost`` reads it (a problematic link is
penalised), so a half-dead link or a stale LSA of a dead node carries no traffic.

Ageing: an LSA not refreshed within ``max_age`` is dropped; an origin that has been unreachable
for ``unreachable_gc`` is dropped sooner (its neighbors have already withdrawn it; keeping it
only wastes memory and full-sync traffic).
"""

from __future__ import annotations

from spines_kr.routing.metrics import graph_cost
from spines_kr.wire.packets import LSA

NEWER, SAME, OLDER = 1, 0, -1


def compare(a: LSA, b: LSA | None) -> int:
    """Order ``a`` against ``b`` of the same origin: NEWER, SAME or OLDER."""
    if b is None or a.seq > b.seq:
        return NEWER
    if a.seq < b.seq:
        return OLDER
    if a == b:
        return SAME
    return NEWER if a.encode() > b.encode() else OLDER


class LSDB:
    def __init__(self, self_id: int, *, max_age: float = 1800.0, unreachable_gc: float = 60.0):
        self.self_id = self_id
        self.max_age = max_age
        self.unreachable_gc = unreachable_gc
        self.lsas: dict[int, LSA] = {}
        self.stamp: dict[int, float] = {}
        self._unreachable_since: dict[int, float] = {}
        self._graph: dict[int, dict[int, int]] | None = None
        self._with = None  # (key, graph) of graph_with
        self._version = 0  # moves whenever the graph may change

    def __len__(self) -> int:
        return len(self.lsas)

    def compare(self, lsa: LSA) -> int:
        return compare(lsa, self.lsas.get(lsa.origin))

    def install(self, lsa: LSA, now: float) -> bool:
        """Install ``lsa`` if it is newer than what we hold; return True when it was."""
        if self.compare(lsa) != NEWER:
            return False
        old = self.lsas.get(lsa.origin)
        self.lsas[lsa.origin] = lsa
        self.stamp[lsa.origin] = now
        if old is None or old.links != lsa.links:
            self._graph = None
            self._version += 1
        return True

    def remove(self, origin: int) -> None:
        if self.lsas.pop(origin, None) is not None:
            self.stamp.pop(origin, None)
            self._unreachable_since.pop(origin, None)
            self._graph = None
            self._version += 1

    def graph(self) -> dict[int, dict[int, int]]:
        if self._graph is None:
            self._graph = _graph(self.lsas)
        return self._graph

    def graph_with(self, own_links: tuple[tuple[int, int], ...]) -> dict[int, dict[int, int]]:
        """The graph as it is once our own LSA says ``own_links``: the node's local view while
        the origination of that LSA is throttled (routing must not wait for it)."""
        own = self.lsas.get(self.self_id)
        if own is not None and own.links == own_links:
            return self.graph()
        key = (self._version, own_links)
        if self._with is None or self._with[0] != key:
            lsas = dict(self.lsas)
            lsas[self.self_id] = LSA(self.self_id, own.seq if own else 0, own_links,
                                     own.prefixes if own else (), own.groups if own else ())
            self._with = (key, _graph(lsas))
        return self._with[1]

    def expire(self, now: float, reachable) -> list[int]:
        """Drop LSAs past their age or unreachable too long; return the origins dropped."""
        gone = []
        for origin in list(self.lsas):
            if origin == self.self_id:
                continue
            if origin in reachable:
                self._unreachable_since.pop(origin, None)
                if now - self.stamp[origin] <= self.max_age:
                    continue
            else:
                since = self._unreachable_since.setdefault(origin, now)
                if now - since < self.unreachable_gc and now - self.stamp[origin] <= self.max_age:
                    continue
            self.remove(origin)
            gone.append(origin)
        return gone


def _graph(lsas) -> dict[int, dict[int, int]]:
    """The two-way graph of ``lsas`` (origin -> {neighbor: cost})."""
    said = {o: {} for o in lsas}
    for o, lsa in lsas.items():
        adj = said[o]
        for n, c in lsa.links:
            c = graph_cost(c)
            if n != o and c < adj.get(n, 1 << 62):
                adj[n] = c
    return {o: {n: c for n, c in adj.items() if o in said.get(n, ())} for o, adj in said.items()}
