"""A simulated overlay: Node engines joined by virtual wires, run in simulated time.

Wires deliver every packet after ``delay`` seconds unless cut (silent failure) or the
interface is down (carrier loss), or lost at the wire's loss rate.  No sockets, no clock: a run
of seconds takes milliseconds.  An event heap holds every packet in flight and every node's
next deadline (lazily invalidated), so a run costs in proportion to the events, not to the
number of nodes: 1,000 nodes and 4,000 links cold-start in seconds (bench/scale.py).

Addresses: node i is 10.100.0.0 + i (past .255: 10.100.1.0 is node 256); wire k is the /30 at
10.200.0.0 + 4k, ``.1`` on its first end.
"""

from __future__ import annotations

import heapq
import ipaddress
import itertools
import random

from spines_kr.daemon.node import Node, Params

NODE_BASE = int(ipaddress.IPv4Address("10.100.0.0"))
WIRE_BASE = int(ipaddress.IPv4Address("10.200.0.0"))


def ip(n: int) -> str:
    return str(ipaddress.IPv4Address(n))


class Sim:
    def __init__(self, n_nodes: int, edges, *, delay=0.001, seed=1, **params):
        self.now = 0.0
        self.delay = delay
        self.rng = random.Random(seed)
        self.ids = {i: NODE_BASE + i for i in range(1, n_nodes + 1)}
        self.nodes = {i: Node(Params(self_id=self.ids[i], instance=8100, **params), 0.0,
                              rng=random.Random(seed + i)) for i in self.ids}
        self.wires = {}  # (node, ifindex) -> (peer node, peer ifindex, our address)
        self.cut: set[frozenset] = set()
        self.wire_delay: dict[frozenset, float] = {}  # per wire, both directions
        self.wire_loss: dict[frozenset, float] = {}
        self.queue: list = []  # (time, seq, kind, ...): packets and node deadlines
        self._seq = itertools.count()
        self._due: dict[int, float] = {}  # node -> the deadline its heap entry was made for
        self.addr = {}
        self.delivered = 0
        self.lost = 0
        self.events: list | None = None  # a list: every node's events go there, (node, event)
        next_if = dict.fromkeys(self.ids, 10)
        for k, (a, b) in enumerate(edges):
            ia, ib = next_if[a], next_if[b]
            next_if[a] += 1
            next_if[b] += 1
            aa, ba = ip(WIRE_BASE + 4 * k + 1), ip(WIRE_BASE + 4 * k + 2)
            self.wires[(a, ia)] = (b, ib, aa)
            self.wires[(b, ib)] = (a, ia, ba)
            self.addr[(a, b)] = (ia, ba)
            self.addr[(b, a)] = (ib, aa)
            self.nodes[a].add_link(ia, f"to{b}", aa, ba, 0.0)
            self.nodes[b].add_link(ib, f"to{a}", ba, aa, 0.0)
        for i in self.nodes:
            self._settle(i)

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

    def _settle(self, i) -> None:
        """Send what node i produced and put its next deadline on the heap."""
        node = self.nodes[i]
        if node.outbox:
            for link, pkt in node.outbox:
                key = (i, link.ifindex)
                wire = self.wires.get(key)
                if wire is None:
                    continue
                peer, pif, src = wire
                w = frozenset((key, (peer, pif)))
                # a cut holds a wire (both directions) or one end's key (that direction only)
                if (self.cut and (w in self.cut or frozenset((key,)) in self.cut)) or (
                        self.wire_loss and self.rng.random() < self.wire_loss.get(w, 0.0)):
                    self.lost += 1
                    continue
                heapq.heappush(self.queue, (self.now + self.wire_delay.get(w, self.delay),
                                            next(self._seq), 0, peer, pif, src, pkt))
            node.outbox.clear()
        if self.events is not None:
            self.events.extend((i, e) for e in node.events)
        node.events.clear()
        due = node.next_deadline()
        if self._due.get(i) != due:
            self._due[i] = due
            heapq.heappush(self.queue, (due, next(self._seq), 1, i))

    def _drain(self):
        for i in self.nodes:
            self._settle(i)

    def run(self, seconds: float):
        """Run ``seconds`` of simulated time.  Nodes a test changed directly (join, withdraw,
        set_interface) are settled first."""
        end = self.now + seconds
        self._drain()
        queue = self.queue
        while queue and queue[0][0] <= end:
            item = heapq.heappop(queue)
            self.now = max(self.now, item[0])
            if item[2] == 0:
                _, _, _, peer, pif, src, pkt = item
                self.delivered += 1
                self.nodes[peer].receive(pif, src, pkt, self.now)
                self._settle(peer)
            else:
                i = item[3]
                if self._due.get(i) != item[0]:
                    continue  # superseded by a later entry for this node
                self._due.pop(i, None)
                self.nodes[i].tick(self.now)
                self._settle(i)
        self.now = end

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
