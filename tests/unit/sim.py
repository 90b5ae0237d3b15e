"""A simulated overlay: Node engines joined by virtual wires, run in simulated time.

Wires deliver every packet after ``delay`` seconds unless cut (silent failure) or the
interface is down (carrier loss).  No sockets, no clock: a run of seconds takes milliseconds.
"""

from __future__ import annotations

import heapq
import ipaddress
import itertools
import random

from spines_kr.daemon.node import Node, Params


def ip(n: int) -> str:
    return str(ipaddress.IPv4Address(n))


class Sim:
    def __init__(self, n_nodes: int, edges, *, delay=0.001, seed=1, **params):
        self.now = 0.0
        self.delay = delay
        self.rng = random.Random(seed)
        self.ids = {i: int(ipaddress.IPv4Address(f"10.100.0.{i}")) for i in range(1, n_nodes + 1)}
        self.nodes = {i: Node(Params(self_id=self.ids[i], instance=8100, **params), 0.0,
                              rng=random.Random(seed + i)) for i in self.ids}
        self.wires = {}  # (node, ifindex) -> (peer node, peer ifindex)
        self.cut: set[frozenset] = set()
        self.wire_delay: dict[frozenset, float] = {}  # per wire, both directions
        self.wire_loss: dict[frozenset, float] = {}
        self.queue = []
        self._seq = itertools.count()
        self.addr = {}
        for k, (a, b) in enumerate(edges):
            ia, ib = 10 + k, 10 + k
            aa, ba = f"10.200.{k}.1", f"10.200.{k}.2"
            self.wires[(a, ia)] = (b, ib, aa)
            self.wires[(b, ib)] = (a, ia, ba)
            self.addr[(a, b)] = (ia, ba)
            self.addr[(b, a)] = (ib, aa)
            self.nodes[a].add_link(ia, f"to{b}", aa, ba, 0.0)
            self.nodes[b].add_link(ib, f"to{a}", ba, aa, 0.0)

    def wire_of(self, a, b):
        return frozenset(((a, self.addr[(a, b)][0]), (b, self.addr[(b, a)][0])))

    def set_wire(self, a, b, *, delay=None, loss=None):
        w = self.wire_of(a, b)
        if delay is not None:
            self.wire_delay[w] = delay
        if loss is not None:
            self.wire_loss[w] = loss

    def cut_link(self, a, b):
        self.cut.add(self.wire_of(a, b))

    def heal_link(self, a, b):
        self.cut.discard(self.wire_of(a, b))

    def carrier(self, a, b, up: bool):
        for x, y in ((a, b), (b, a)):
            self.nodes[x].set_interface(self.addr[(x, y)][0], up, self.now)
        (self.heal_link if up else self.cut_link)(a, b)
        self._drain()

    def _drain(self):
        for i, node in self.nodes.items():
            for link, pkt in node.outbox:
                key = (i, link.ifindex)
                if key in self.wires and not any(key in w for w in self.cut):
                    peer, pif, src = self.wires[key]
                    w = frozenset((key, (peer, pif)))
                    if self.rng.random() < self.wire_loss.get(w, 0.0):
                        continue
                    delay = self.wire_delay.get(w, self.delay)
                    heapq.heappush(self.queue, (self.now + delay, next(self._seq), peer, pif, src, pkt))
            node.outbox.clear()
            node.events.clear()

    def run(self, seconds: float):
        end = self.now + seconds
        while True:
            self._drain()
            t_timer = min(n.next_deadline() for n in self.nodes.values())
            t_pkt = self.queue[0][0] if self.queue else float("inf")
            t = min(t_timer, t_pkt)
            if t > end:
                self.now = end
                return
            self.now = max(self.now, t)
            if t_pkt <= t_timer:
                _, _, peer, pif, src, pkt = heapq.heappop(self.queue)
                self.nodes[peer].receive(pif, src, pkt, self.now)
            else:
                for n in self.nodes.values():
                    if n.next_deadline() <= self.now:
                        n.tick(self.now)

    def run_until(self, cond, timeout: float, step: float = 0.01) -> float | None:
        start = self.now
        while self.now - start < timeout:
            if cond():
                return self.now - start
            self.run(step)
        return self.now - start if cond() else None

    def next_hop_node(self, a, b):
        """The node a's route to b goes to first, or None."""
        r = self.nodes[a].routes().get(f"{ip(self.ids[b])}/32")
        if r is None:
            return None
        gws = {nh.gateway for nh in r.nexthops}
        return {y for (x, y), (_, addr) in self.addr.items() if x == a and addr in gws}
