"""The protocol engine of one overlay router: neighbors, flooding, routes.  No I/O, no clock.

Entry points (all take the current time ``now`` in seconds, from any monotonic clock):
    Node(params, now, initial_seq, rng, auth)
    add_link(ifindex, ifname, local_addr, peer_addr) / remove_link(key)
    set_interface(ifindex, up, now)     carrier or admin state from netlink
    receive(ifindex, src_addr, data, now, rx_at=None)
                                        one datagram; ``rx_at`` is when the kernel received it
                                        (a socket timestamp: the daemon reads in batches, and
                                        RTT and liveness are measured from the arrival)
    tick(now)                           timers: hellos, dead links, flooding, originations, ageing
    next_deadline()                     when tick must run next
    routes()                            the desired kernel route set (recomputed when dirty)
    withdraw(now)                       flood an LSA without links (clean exit)
Outputs are values the daemon drains: ``outbox`` (link, bytes) to send on that link, ``events``
(name, fields) to log; ``counters`` count packets in/out and drops by reason; ``routes_version``
increases whenever the route set may have changed.

Parts: ``neighbors.Link`` (one neighbor: hellos, liveness, RTT, loss), ``flooding.Flooding``
(reliable, paced, bundled flooding per link), ``routing.lsdb.LSDB`` and
``routing.assemble.assemble`` (the desired route set, pure).  The engine keeps one deadline per
link in a heap (``_heap``: (time, seq, link), stale entries skipped when popped), so finding the
next timer costs O(log links), not a scan; hellos of all links go out together in one round
(one wakeup), jittered.

Origination: our LSA is re-originated when its links, prefixes or groups change, throttled as
IGP implementations throttle LSA generation: the first change after a quiet time goes out at
once; a change within the throttle interval (``lsa_min_interval`` at first) waits for its end,
coalesced with any other; each origination that follows another closely doubles the interval,
up to ``LSA_THROTTLE_MAX``, and a quiet time of twice the interval brings it back.  So a link
that fails is advertised at once, while a storm (a flapping link, a cold start of hundreds of
nodes on two cores) damps itself instead of feeding on its own floods.  Our own routes never
wait for the throttle: they are computed from our current links (``graph``).

Neighbor restarts: a neighbor that reported the link up and then reports it not up (its daemon
restarted, or it reset the link) brings our end down too, so that the link comes back with a
full database exchange; a neighbor restarted faster than the dead interval is noticed so.  An origin that receives a
newer copy of its own LSA (it restarted, its old LSAs live on) jumps its sequence past it and
re-originates.  LSAs are only accepted from UP links; they are bounded per origin
(``max_*_per_node``) and in number (``max_nodes``).
"""

from __future__ import annotations

import dataclasses
import heapq
import ipaddress
import itertools
import random
import struct
import zlib
from collections import Counter
from dataclasses import dataclass

from spines_kr.daemon.flooding import FloodParams, Flooding, LinkFlood
from spines_kr.daemon.neighbors import Link, State
from spines_kr.routing import lsdb as lsdbmod
from spines_kr.routing.assemble import RoutePolicy, assemble
from spines_kr.routing.metrics import MEASURED, CostTracker, graph_cost
from spines_kr.routing.model import NextHop, RouteSet
from spines_kr.routing.groups import members as group_members
from spines_kr.routing.spf import spf
from spines_kr.wire import packets as wire
from spines_kr.wire.auth import KeyRing

EXPIRE_EVERY = 1.0
_DIGEST = struct.Struct("!IQ")
LSA_THROTTLE_MAX = 5.0  # s: the longest an origination waits while changes keep coming
SEQ_HEADROOM = 1 << 32  # an own LSA this close to the maximum is not jumped past
INF = float("inf")


@dataclass(frozen=True)
class Params:
    """The engine's parameters: the config's engine settings (``config.ENGINE``) in engine
    units (seconds, integers), and what the daemon decides (identity, prefsrc)."""
    self_id: int
    instance: int
    metric: str = "distance"
    hello_interval: float = 0.06
    dead_interval: float = 0.25
    up_after: int = 3
    retransmit: float = 0.4
    lsa_min_interval: float = 0.2
    flood_pace: float = 0.01
    ack_delay: float = 0.02
    lsa_refresh: float = 600.0
    lsa_max_age: float = 1800.0
    accept_unknown_neighbors: bool = True
    prefsrc: str | None = None
    multipath: bool = True
    multipath_tolerance: float = 0.0  # measured metrics: next hops within this share of the best
    multipath_weights: str = "equal"
    prefixes: tuple[tuple[int, int, int], ...] = ()  # (network, prefixlen, metric) we announce
    kernel_levels: tuple[int, ...] = (0,)  # 0 nodes and prefixes, 1 anycast, 2 mapped multicast
    anypath: bool = False
    spines_mappings: bool = False
    gateway_group: int | None = None
    # bounded state: what one neighbor or origin may make us hold or process
    max_nodes: int = 2000
    max_links_per_node: int = 128
    max_prefixes_per_node: int = 256
    max_groups_per_node: int = 256
    max_dynamic_links: int = 64
    max_packets_per_s: float = 400.0  # per link; hellos are ~18/s, a full sync a burst
    max_own_groups: int = 256  # groups this node belongs to (join refuses beyond)

    @classmethod
    def from_config(cls, cfg, prefsrc: str | None = None) -> Params:
        return cls(self_id=int(ipaddress.IPv4Address(cfg.logical_id)), instance=cfg.port,
                   metric=cfg.metric, hello_interval=cfg.hello_interval_ms / 1000,
                   dead_interval=cfg.dead_interval_ms / 1000, up_after=cfg.up_after_hellos,
                   retransmit=cfg.retransmit_ms / 1000,
                   lsa_min_interval=cfg.lsa_min_interval_ms / 1000,
                   flood_pace=cfg.flood_pace_ms / 1000, ack_delay=cfg.ack_delay_ms / 1000,
                   lsa_refresh=cfg.lsa_refresh_s, lsa_max_age=cfg.lsa_max_age_s,
                   accept_unknown_neighbors=cfg.accept_unknown_neighbors, prefsrc=prefsrc,
                   multipath=cfg.multipath,
                   multipath_tolerance=cfg.multipath_tolerance if cfg.metric in MEASURED else 0.0,
                   multipath_weights=cfg.multipath_weights,
                   prefixes=tuple(sorted(
                       (int(n.network_address), n.prefixlen, 0)
                       for n in map(ipaddress.IPv4Network, cfg.prefixes))),
                   kernel_levels=cfg.kernel_levels, anypath=cfg.anypath,
                   spines_mappings=cfg.spines_mappings,
                   gateway_group=int(ipaddress.IPv4Address(cfg.gateway_group)),
                   max_nodes=cfg.max_nodes, max_links_per_node=cfg.max_links_per_node,
                   max_prefixes_per_node=cfg.max_prefixes_per_node,
                   max_groups_per_node=cfg.max_groups_per_node,
                   max_dynamic_links=cfg.max_dynamic_links,
                   max_packets_per_s=cfg.max_packets_per_s,
                   max_own_groups=cfg.max_own_groups)

    def flood_params(self) -> FloodParams:
        return FloodParams(pace=self.flood_pace, ack_delay=self.ack_delay,
                           retransmit=self.retransmit, budget_pps=self.max_packets_per_s / 4)

    def route_policy(self) -> RoutePolicy:
        return RoutePolicy(self.prefsrc, self.multipath, self.multipath_tolerance,
                           self.multipath_weights, self.kernel_levels, self.anypath,
                           self.spines_mappings, self.gateway_group)


class Node:
    def __init__(self, params: Params, now: float, initial_seq: int = 1,
                 rng: random.Random | None = None, auth: KeyRing | None = None):
        self.p = params
        self.auth = auth  # None: packets carry no trailer (auth = "none")
        self.id = params.self_id
        self.rng = rng or random.Random(params.self_id)
        self.links: dict[tuple[int, str], Link] = {}
        self.iface_up: dict[int, bool] = {}
        self.lsdb = lsdbmod.LSDB(self.id, max_age=params.lsa_max_age)
        self.seq = initial_seq - 1
        self.outbox: list[tuple[Link, bytes]] = []
        self.events: list[tuple[str, dict]] = []
        self.counters: Counter[str] = Counter()
        self.routes_version = 0
        self.groups: set[int] = set()  # groups this node belongs to
        self.group_choice: dict[int, list[int]] = {}  # group -> members its route goes to
        self.flooding = Flooding(params.flood_params(), self.counters)
        self._routes: RouteSet = {}
        self._routes_at = -1
        self._reachable: set[int] = set()
        self._next_expire = now + EXPIRE_EVERY
        self._next_refresh = now + params.lsa_refresh
        self._hello_round = now  # hellos of all links go out together: one wakeup per round
        self._metric_code = wire.METRIC_CODES[params.metric]
        self._mismatch_logged: set[tuple[int, str]] = set()
        self._heap: list[tuple[float, int, Link]] = []
        self._heap_seq = itertools.count()
        self._touched: set[Link] = set()  # links whose deadline must be recomputed
        self._last_origination = -INF
        self._throttle = params.lsa_min_interval
        self._origination_due = INF  # a coalesced origination waiting for the interval
        self.withdrawn = False  # withdraw() was called: the daemon is leaving
        self._originate(now, force=True)

    # --- links ----------------------------------------------------------------------------------

    def add_link(self, ifindex: int, ifname: str, local_addr: str, peer_addr: str, now: float,
                 configured: bool = True) -> Link:
        key = (ifindex, peer_addr)
        link = self.links.get(key)
        if link is None:
            link = Link(ifindex, ifname, local_addr, peer_addr, configured=configured, since=now)
            link.flood = LinkFlood()
            link.hello_asap = True  # say hello at once
            self.links[key] = link
            self.events.append(("link.added", {"link": _name(link), "configured": configured}))
            self._touch(link)
        return link

    def remove_link(self, key: tuple[int, str], now: float) -> None:
        link = self.links.pop(key, None)
        if link is not None:
            was_up = link.up
            link.deadline = INF
            self._touched.discard(link)
            self.events.append(("link.removed", {"link": _name(link)}))
            if was_up:
                self._changed(now)

    def set_interface(self, ifindex: int, up: bool, now: float) -> None:
        if self.iface_up.get(ifindex) == up:
            return
        self.iface_up[ifindex] = up
        for link in self.links.values():
            if link.ifindex != ifindex:
                continue
            if not up:
                self._down(link, now, "carrier")
            else:
                link.hello_asap = True
            self._touch(link)
        if up:
            # Routes through this interface vanished with it (kernel behaviour): recompute.
            self.routes_version += 1
        self._settle(now)

    def _usable(self, link: Link) -> bool:
        return self.iface_up.get(link.ifindex, True)

    def _down(self, link: Link, now: float, reason: str) -> None:
        was_up = link.up
        if link.state is State.DOWN:
            return
        link.reset(now)
        link.flood.reset()
        self._touch(link)
        if was_up:
            link.flaps += 1
            self.events.append(("neighbor.down", {"link": _name(link), "neighbor": _ip(link.peer_id),
                                                  "reason": reason}))
            self._changed(now)

    def _up(self, link: Link, now: float) -> None:
        link.state = State.UP
        link.since = now
        link.cost = CostTracker(self.p.metric)
        link.cost.update(link.measure(), now)
        self.events.append(("neighbor.up", {"link": _name(link), "neighbor": _ip(link.peer_id),
                                            "rtt_ms": None if link.srtt_ms is None
                                            else round(link.srtt_ms, 3)}))
        # Full sync: the neighbor gets our whole database.
        self.flooding.sync(link.flood, [lsa for _, lsa in sorted(self.lsdb.lsas.items())], now)
        self._touch(link)
        self._changed(now)

    def _changed(self, now: float) -> None:
        """A link came up or went down: re-originate our LSA (throttled) and recompute routes
        (at once: they follow our current links)."""
        self._originate(now)
        self.routes_version += 1

    # --- deadlines ------------------------------------------------------------------------------

    def _touch(self, link: Link) -> None:
        self._touched.add(link)

    def _link_deadline(self, link: Link) -> float:
        if not self._usable(link):
            return INF
        t = link.flood.due()
        if link.hello_asap:
            t = min(t, 0.0)
        if link.state is not State.DOWN:
            dead = link.last_rx + self.p.dead_interval + 1e-3
            if dead < t:
                t = dead
        return t

    def _settle(self, now: float) -> None:
        """Do the flooding work that is due on touched links, then file their deadlines."""
        touched = self._touched
        while touched:
            link = touched.pop()
            if link.key not in self.links:
                continue
            if link.up and self._usable(link) and link.flood.due() <= now:
                self._flood_run(link, now)
            when = self._link_deadline(link)
            if when != link.deadline:
                link.deadline = when
                if when != INF:
                    heapq.heappush(self._heap, (when, next(self._heap_seq), link))

    def next_deadline(self) -> float:
        heap = self._heap
        while heap and (heap[0][2].deadline != heap[0][0]
                        or heap[0][2].key not in self.links):
            heapq.heappop(heap)
        t = min(self._next_expire, self._next_refresh, self._hello_round,
                self._origination_due)
        if heap and heap[0][0] < t:
            t = heap[0][0]
        return t

    # --- origination ----------------------------------------------------------------------------

    def _own_links(self) -> list[tuple[int, int]]:
        if self.withdrawn:
            return []
        best: dict[int, int] = {}
        for link in self.links.values():
            if link.up and link.peer_id is not None and link.cost.advertised is not None:
                cost = link.cost.advertised
                old = best.get(link.peer_id)
                if old is None or graph_cost(cost) < graph_cost(old):
                    best[link.peer_id] = cost
        return list(best.items())

    def _originate(self, now: float, force: bool = False, links=None) -> None:
        """Originate our LSA if it says something new (or ``force``), throttled (module
        docstring): within the throttle interval the origination waits for its end."""
        if not force and links is None and now < self._last_origination + self._throttle:
            self._origination_due = self._last_origination + self._throttle
            return
        links = self._own_links() if links is None else links
        own = self.lsdb.lsas.get(self.id)
        if self.seq + 1 >= wire.MAX_SEQ:
            self.counters["seq_exhausted"] += 1  # unreachable in practice: 2**64 originations
            return
        candidate = wire.LSA.make(self.id, self.seq + 1, links, self.p.prefixes, self.groups)
        if not candidate.fits():
            # Bounded where state is created (max_own_groups, max_own_prefixes), so this is a
            # last guard: an LSA that cannot be encoded would stop every flush, hellos too.
            room = (wire.MAX_LSA_SIZE - candidate.encoded_size()) // 4 + len(candidate.groups)
            keep = sorted(candidate.groups)[:max(0, min(room, wire.MAX_ENTRIES))]
            self.counters["lsa_truncated"] += 1
            self.events.append(("lsa.truncated", {"groups": len(candidate.groups),
                                                  "kept": len(keep)}))
            candidate = wire.LSA.make(self.id, self.seq + 1, links, self.p.prefixes, keep)
        self._origination_due = INF
        if not force and own is not None and _body(own) == _body(candidate):
            return
        self.seq += 1
        base = self.p.lsa_min_interval
        if now - self._last_origination < 2 * self._throttle:  # close after the last: back off
            self._throttle = min(LSA_THROTTLE_MAX, max(base, self._throttle * 2))
        else:
            self._throttle = base
        self._last_origination = now
        self.counters["lsa_originated"] += 1
        self.lsdb.install(candidate, now)
        self._next_refresh = now + self.p.lsa_refresh
        self._flood(candidate, now, exclude=None)
        self.routes_version += 1

    def reconfigure(self, params: Params, now: float) -> None:
        """Apply new parameters (a config reload) without dropping links that stay valid: a new
        metric restarts the cost of every link; prefixes and timers take effect at once."""
        old, self.p = self.p, params
        self.flooding.p = params.flood_params()
        if params.metric != old.metric:
            self._metric_code = wire.METRIC_CODES[params.metric]
            self._mismatch_logged.clear()
            for link in self.links.values():
                if link.up:
                    link.cost = CostTracker(params.metric)
                    link.cost.update(link.measure(), now)
        self._originate(now, force=True)
        self.routes_version += 1
        self._settle(now)

    def set_prefsrc(self, prefsrc: str | None) -> None:
        """The preferred source of our routes: the logical ID while it is on this host, none
        when it is not (the kernel refuses a prefsrc that is not local)."""
        if prefsrc != self.p.prefsrc:
            self.p = dataclasses.replace(self.p, prefsrc=prefsrc)
            self.routes_version += 1

    def join(self, group: int, now: float) -> bool:
        """Join a group (class D or E); True if that changed anything.  Beyond
        ``max_own_groups`` the join is refused (counted ``refused.own_groups``): callers check
        first and tell why (daemon.commands)."""
        if group in self.groups:
            return False
        if len(self.groups) >= self.p.max_own_groups:
            self.counters["refused.own_groups"] += 1
            return False
        self.groups.add(group)
        self.events.append(("group.joined", {"group": _ip(group)}))
        self._originate(now)
        self.routes_version += 1  # our routes follow at once, the LSA when throttling allows
        self._settle(now)
        return True

    def leave(self, group: int, now: float) -> bool:
        if group not in self.groups:
            return False
        self.groups.discard(group)
        self.events.append(("group.left", {"group": _ip(group)}))
        self._originate(now)
        self.routes_version += 1  # our routes follow at once, the LSA when throttling allows
        self._settle(now)
        return True

    def withdraw(self, now: float) -> None:
        """Clean exit: tell the overlay we have no links, so it reroutes without waiting."""
        self.p = dataclasses.replace(self.p, prefixes=())
        self.groups = set()
        self.withdrawn = True  # our own view follows the LSA: no links, no routes
        self._originate(now, force=True, links=[])
        self.routes_version += 1
        for link in self.links.values():
            if link.up and self._usable(link):
                link.flood.next_send = now  # no pacing: this is the last thing we say
                self._flood_run(link, now)

    def _flood(self, lsa: wire.LSA, now: float, exclude: Link | None) -> None:
        for link in self.links.values():
            if link.up and link is not exclude:
                self.flooding.queue(link.flood, lsa, now)
                self._touch(link)

    def _flood_run(self, link: Link, now: float) -> None:
        for pkt in self.flooding.run(link.flood, now, self.p.instance, self.id, link.srtt_ms):
            self._send(link, pkt)

    # --- input ----------------------------------------------------------------------------------

    def receive(self, ifindex: int, src_addr: str, data: bytes, now: float,
                rx_at: float | None = None) -> None:
        self.counters["packets_in"] += 1
        try:
            header, msg, _trailer = wire.decode(data, instance=self.p.instance)
        except wire.DecodeError as e:
            self.counters[f"dropped.{e.reason}"] += 1
            return
        if header.sender == self.id:
            self.counters["dropped.own"] += 1
            return
        if self.auth is not None:
            reason = self.auth.check(header.sender, data, _trailer, now)
            if reason is not None:
                self.counters[f"dropped.{reason}"] += 1
                return
        elif _trailer:
            self.counters["dropped.auth_unexpected"] += 1
            return
        link = self.links.get((ifindex, src_addr))
        if link is None:
            if not (isinstance(msg, wire.Hello) and self.p.accept_unknown_neighbors):
                self.counters["dropped.unknown_neighbor"] += 1
                return
            local = self._local_addr_for(ifindex)
            dynamic = sum(1 for l in self.links.values() if not l.configured)
            if dynamic >= self.p.max_dynamic_links:
                self._over_limit("dynamic_links", src_addr)
                return
            if local is None:
                self.counters["dropped.unknown_neighbor"] += 1
                return
            link = self.add_link(ifindex, "", local, src_addr, now, configured=False)
        if not self._usable(link):
            self.counters["dropped.interface_down"] += 1
            return
        if not link.admit(now, self.p.max_packets_per_s):
            self._over_limit("rate", link.peer_addr)
            return
        at = now if rx_at is None or rx_at > now else rx_at
        if isinstance(msg, wire.Hello):
            self._hello(link, header.sender, msg, at, now)
        elif not link.up or header.sender != link.peer_id:
            self.counters["dropped.link_not_up"] += 1
        else:
            if at > link.last_rx:
                link.last_rx = at
            if isinstance(msg, wire.LinkStateUpdate):
                link.updates_in += 1
                self._lsu(link, msg, now)
            else:
                for origin, seq in msg.acks:
                    self.flooding.acked(link.flood, origin, seq)
        self._touch(link)
        self._settle(now)

    def _local_addr_for(self, ifindex: int) -> str | None:
        for link in self.links.values():
            if link.ifindex == ifindex:
                return link.local_addr
        return None

    def _hello(self, link: Link, sender: int, h: wire.Hello, at: float, now: float) -> None:
        if h.metric != self._metric_code:
            self.counters["dropped.metric_mismatch"] += 1
            if link.key not in self._mismatch_logged:
                self._mismatch_logged.add(link.key)
                self.events.append(("neighbor.refused", {
                    "link": _name(link), "neighbor": _ip(sender), "reason": "metric mismatch",
                    "ours": self.p.metric, "theirs": wire.METRIC_NAMES.get(h.metric, h.metric)}))
            self._down(link, now, "metric mismatch")
            return
        if link.peer_id is not None and link.peer_id != sender:
            self._down(link, now, "neighbor changed identity")
        heard_us = bool(h.state & wire.HELLO_HEARD and h.echo_us)
        peer_up = bool(h.state & wire.HELLO_UP)
        if link.up and not heard_us:
            self._down(link, now, "neighbor stopped hearing us")
        elif link.up and link.peer_up and not peer_up:
            self._down(link, now, "neighbor restarted or reset the link")
        link.peer_up = peer_up
        link.peer_id = sender
        if at > link.last_rx:
            link.last_rx = at
        link.record_rx_seq(h.seq)
        link.peer_tx_us = h.tx_us
        link.peer_rx_at = at
        first = link.state is State.DOWN
        if first:
            link.state = State.INIT
            link.since = now
        if heard_us and h.echo_us != link.last_echo_us:
            link.last_echo_us = h.echo_us
            link.rtt_sample((_us(at) - h.echo_us - h.hold_us) / 1000)
            link.answered += 1
        if not link.up and link.answered >= self.p.up_after:
            self._up(link, now)
        if first or not heard_us:
            link.hello_asap = True  # answer at once: the neighbor is waiting to hear us

    def _lsu(self, link: Link, lsu: wire.LinkStateUpdate, now: float) -> None:
        fl = link.flood
        for lsa in lsu.lsas:
            self.counters["lsa_in"] += 1
            if lsa.origin == self.id:
                own = self.lsdb.lsas[self.id]
                order = lsdbmod.compare(lsa, own)
                if order == lsdbmod.NEWER and lsa.seq >= wire.MAX_SEQ - SEQ_HEADROOM:
                    # jumping there would leave too few numbers to originate with: refuse
                    self.counters["dropped.seq_exhausted"] += 1
                    self.flooding.acknowledge(fl, lsa, now)
                elif order == lsdbmod.NEWER:
                    # We restarted and the overlay remembers a newer self: jump past it.
                    self.flooding.acknowledge(fl, lsa, now)
                    self.seq = max(self.seq, lsa.seq)
                    self._originate(now, force=True)
                elif order == lsdbmod.OLDER:
                    self.flooding.queue(fl, own, now)
                else:
                    self.flooding.implicit(fl, lsa)
                    self.flooding.acknowledge(fl, lsa, now)
                continue
            limit = self._lsa_over_limit(lsa)
            if limit is not None:
                self._over_limit(limit, _ip(lsa.origin))
                continue
            order = self.lsdb.compare(lsa)
            if order == lsdbmod.NEWER:
                before = self.lsdb.lsas.get(lsa.origin)
                self.lsdb.install(lsa, now)
                self.flooding.implicit(fl, lsa)
                self.flooding.acknowledge(fl, lsa, now)
                self._flood(lsa, now, exclude=link)
                if before is None or _body(before) != _body(lsa):
                    self.routes_version += 1
            elif order == lsdbmod.SAME:
                self.flooding.implicit(fl, lsa)
                self.flooding.acknowledge(fl, lsa, now)
            else:
                self.flooding.queue(fl, self.lsdb.lsas[lsa.origin], now)

    def _lsa_over_limit(self, lsa: wire.LSA) -> str | None:
        p = self.p
        if lsa.origin not in self.lsdb.lsas and len(self.lsdb) >= p.max_nodes:
            return "nodes"
        if len(lsa.links) > p.max_links_per_node:
            return "links_per_node"
        if len(lsa.prefixes) > p.max_prefixes_per_node:
            return "prefixes_per_node"
        if len(lsa.groups) > p.max_groups_per_node:
            return "groups_per_node"
        return None

    def _over_limit(self, what: str, who: str | None) -> None:
        """Count and report state a neighbor or origin may not make us hold (rate-limited in
        the log by the daemon, per "link" key)."""
        self.counters[f"dropped.limit_{what}"] += 1
        self.events.append(("limit.exceeded", {"limit": what, "link": who}))

    # --- timers ---------------------------------------------------------------------------------

    def tick(self, now: float) -> None:
        heap = self._heap
        due: list[Link] = []
        while heap and heap[0][0] <= now:
            when, _, link = heapq.heappop(heap)
            if link.deadline == when and link.key in self.links:
                link.deadline = -1.0  # filed again by _settle
                due.append(link)
        for link in due:
            if link.state is not State.DOWN and now - link.last_rx > self.p.dead_interval:
                self._down(link, now, "dead")
            if link.hello_asap and self._usable(link):
                self._send_hello(link, now)
            self._touch(link)
        if now >= self._hello_round:
            # jitter (-15 %..0) so that hellos of many nodes do not synchronise
            self._hello_round = now + self.p.hello_interval * self.rng.uniform(0.85, 1.0)
            moved = False
            for link in self.links.values():
                if not self._usable(link):
                    continue
                if link.state is not State.DOWN and now - link.last_rx > self.p.dead_interval:
                    self._down(link, now, "dead")
                self._send_hello(link, now)
                if link.up and link.cost.update(link.measure(), now):
                    moved = True  # a cost moved significantly
                self._touch(link)
            if moved:
                self._changed(now)  # our routes follow at once, the LSA when the throttle allows
        if now >= self._origination_due:
            self._originate(now)
        if now >= self._next_refresh:
            self._originate(now, force=True)
        if now >= self._next_expire:
            self._next_expire = now + EXPIRE_EVERY
            if self.auth is not None:
                self.auth.forget_idle(now)
            self.routes()  # refreshes the reachable set
            if self.lsdb.expire(now, self._reachable | {self.id}):
                self.routes_version += 1
        self._settle(now)

    def _send_hello(self, link: Link, now: float) -> None:
        link.tx_seq = (link.tx_seq + 1) & 0xFFFFFFFF
        link.hello_asap = False
        heard = link.heard and link.peer_tx_us
        h = wire.Hello(
            seq=link.tx_seq, tx_us=_us(now),
            echo_us=link.peer_tx_us if heard else 0,
            hold_us=int((now - link.peer_rx_at) * 1e6) if heard else 0,
            hello_ms=int(self.p.hello_interval * 1000), dead_ms=int(self.p.dead_interval * 1000),
            metric=self._metric_code,
            state=(wire.HELLO_HEARD if heard else 0) | (wire.HELLO_UP if link.up else 0))
        self._send(link, wire.encode(h, instance=self.p.instance, sender=self.id))

    def _send(self, link: Link, pkt: bytes) -> None:
        if self.auth is not None:
            pkt = self.auth.seal(pkt)
        self.counters["packets_out"] += 1
        self.outbox.append((link, pkt))

    # --- routes ---------------------------------------------------------------------------------

    def graph(self) -> dict[int, dict[int, int]]:
        """The topology as this node sees it now: the LSDB's graph with our current links (our
        own LSA may wait for the origination throttle; our routes do not)."""
        return self.lsdb.graph_with(tuple(sorted(self._own_links())))

    def digest(self) -> int:
        """A checksum of the database's (origin, sequence) pairs: equal on every node of a
        converged overlay."""
        return zlib.crc32(b"".join(_DIGEST.pack(o, lsa.seq)
                                   for o, lsa in sorted(self.lsdb.lsas.items())))

    def origination_pending(self) -> bool:
        """Our LSA has changed and waits for the origination throttle."""
        return self._origination_due != INF

    def lsas(self) -> dict[int, wire.LSA]:
        """The LSAs as this node sees them now: the database, with our own LSA as it will be
        once the throttle lets it go (our links, prefixes and groups of now)."""
        lsas = self.lsdb.lsas
        if self._origination_due == INF:
            return lsas
        own = wire.LSA.make(self.id, self.seq, self._own_links(), self.p.prefixes, self.groups)
        return {**lsas, self.id: own}

    def spf(self):
        return spf(self.graph(), self.id)

    def routes(self) -> RouteSet:
        if self._routes_at != self.routes_version:
            out = assemble(self.lsas(), self.graph(), self.id,
                           self.nexthops_by_neighbor(), self.p.route_policy())
            self._routes, self._reachable, self.group_choice = (out.routes, out.reachable,
                                                                out.group_choice)
            self._routes_at = self.routes_version
        return self._routes

    def group_members(self) -> dict[int, set[int]]:
        return group_members(self.lsas(), set(self.spf()) | {self.id})

    def nexthops_by_neighbor(self) -> dict[int, list[NextHop]]:
        out: dict[int, list[tuple[int, NextHop]]] = {}
        for link in self.links.values():
            if link.up and link.peer_id is not None and self._usable(link):
                cost = graph_cost(link.cost.advertised or 0)
                out.setdefault(link.peer_id, []).append((cost, NextHop(link.peer_addr, link.ifindex)))
        return {n: [nh for _, nh in sorted(hops)] for n, hops in out.items()}


def _body(lsa: wire.LSA) -> tuple:
    """What an LSA says, apart from its sequence number."""
    return (lsa.links, lsa.prefixes, lsa.groups)


def _us(now: float) -> int:
    return int(now * 1e6) & 0xFFFFFFFFFFFFFFFF


def _ip(n: int | None) -> str | None:
    return None if n is None else str(ipaddress.IPv4Address(n))


def _name(link: Link) -> str:
    return f"{link.ifname or link.ifindex}:{link.peer_addr}"
