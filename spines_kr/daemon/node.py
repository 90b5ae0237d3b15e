"""The protocol engine of one overlay router: neighbors, reliable flooding, SPF.  No I/O, no clock.

Entry points (all take the current time ``now`` in seconds, from any monotonic clock):
    Node(params, now, initial_seq, rng)
    add_link(ifindex, ifname, local_addr, peer_addr) / remove_link(key)
    set_interface(ifindex, up, now)     carrier or admin state from netlink
    receive(ifindex, src_addr, data, now)
    tick(now)                           timers: hellos, dead links, retransmits, refresh, ageing
    next_deadline()                     when tick must run next
    routes()                            the desired kernel route set (recomputed when dirty)
    withdraw(now)                       flood an LSA without links (clean exit)
Outputs are values the daemon drains: ``outbox`` (link, bytes) to send on that link, ``events``
(name, fields) to log; ``counters`` count packets in/out and drops by reason; ``routes_version``
increases whenever the route set may have changed.

Flooding (reliable, as OSPF's, RFC 2328 section 13, simplified): a newer LSA is installed,
acknowledged to the sender and sent to every other UP neighbor, where it stays in that link's
``pending`` set until acknowledged (retransmitted every ``retransmit_ms``).  An older copy is
answered with ours.  When a link comes up both sides send their whole database (full sync).
An origin that receives a newer copy of its own LSA (it restarted, its old LSAs live on)
jumps its sequence past it and re-originates.  LSAs are only accepted from UP links.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import random
from collections import Counter
from dataclasses import dataclass

from spines_kr.daemon.neighbors import Link, State
from spines_kr.routing import lsdb as lsdbmod
from spines_kr.routing.metrics import MEASURED, CostTracker, graph_cost
from spines_kr.routing.model import NextHop, RouteSet
from spines_kr.routing import groups as grp
from spines_kr.routing.routes import node_routes, prefix_routes
from spines_kr.routing.spf import spf
from spines_kr.wire import packets as wire
from spines_kr.wire.auth import KeyRing

EXPIRE_EVERY = 1.0
SEQ_HEADROOM = 1 << 32  # an own LSA this close to the maximum is not jumped past


@dataclass(frozen=True)
class Params:
    self_id: int
    instance: int
    metric: str = "distance"
    hello_interval: float = 0.06
    dead_interval: float = 0.25
    up_after: int = 3
    retransmit: float = 0.1
    lsa_refresh: float = 600.0
    lsa_max_age: float = 1800.0
    accept_unknown_neighbors: bool = True
    prefsrc: str | None = None
    multipath: bool = False
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
                   retransmit=cfg.retransmit_ms / 1000, lsa_refresh=cfg.lsa_refresh_s,
                   lsa_max_age=cfg.lsa_max_age_s,
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


class Node:
    def __init__(self, params: Params, now: float, initial_seq: int = 1,
                 rng: random.Random | None = None, auth: KeyRing | None = None):
        self.p = params
        self.auth = auth  # None: packets carry no trailer (auth = "none")
        self.id = params.self_id
        self.rng = rng or random.Random()
        self.links: dict[tuple[int, str], Link] = {}
        self.iface_up: dict[int, bool] = {}
        self.lsdb = lsdbmod.LSDB(self.id, max_age=params.lsa_max_age)
        self.seq = initial_seq - 1
        self.outbox: list[tuple[Link, bytes]] = []
        self.events: list[tuple[str, dict]] = []
        self.counters: Counter[str] = Counter()
        self.routes_version = 0
        self._routes: RouteSet = {}
        self._routes_at = -1
        self._reachable: set[int] = set()
        self._next_expire = now + EXPIRE_EVERY
        self._next_refresh = now + params.lsa_refresh
        self._hello_round = now  # hellos of all links go out together: one wakeup per round
        self._metric_code = wire.METRIC_CODES[params.metric]
        self._mismatch_logged: set[tuple[int, str]] = set()
        self.groups: set[int] = set()  # groups this node belongs to
        self.group_choice: dict[int, list[int]] = {}  # group -> members its route goes to
        self._originate(now, force=True)

    # --- links ----------------------------------------------------------------------------------

    def add_link(self, ifindex: int, ifname: str, local_addr: str, peer_addr: str, now: float,
                 configured: bool = True) -> Link:
        key = (ifindex, peer_addr)
        link = self.links.get(key)
        if link is None:
            link = Link(ifindex, ifname, local_addr, peer_addr, configured=configured, since=now)
            link.next_hello = now  # say hello at once
            self.links[key] = link
            self.events.append(("link.added", {"link": _name(link), "configured": configured}))
        return link

    def remove_link(self, key: tuple[int, str], now: float) -> None:
        link = self.links.pop(key, None)
        if link is not None:
            was_up = link.up
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
                link.next_hello = now
        if up:
            # Routes through this interface vanished with it (kernel behaviour): recompute.
            self.routes_version += 1

    def _usable(self, link: Link) -> bool:
        return self.iface_up.get(link.ifindex, True)

    def _down(self, link: Link, now: float, reason: str) -> None:
        was_up = link.up
        if link.state is State.DOWN:
            return
        link.reset(now)
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
        for origin, lsa in self.lsdb.lsas.items():
            link.pending[origin] = lsa
            link.fresh.add(origin)
        self._changed(now)

    def _changed(self, now: float) -> None:
        """A link came up or went down: re-originate our LSA and recompute routes."""
        self._originate(now)
        self.routes_version += 1

    # --- origination ----------------------------------------------------------------------------

    def _own_links(self) -> list[tuple[int, int]]:
        best: dict[int, int] = {}
        for link in self.links.values():
            if link.up and link.peer_id is not None and link.cost.advertised is not None:
                cost = link.cost.advertised
                old = best.get(link.peer_id)
                if old is None or graph_cost(cost) < graph_cost(old):
                    best[link.peer_id] = cost
        return list(best.items())

    def _originate(self, now: float, force: bool = False, links=None) -> None:
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
        if not force and own is not None and _body(own) == _body(candidate):
            return
        self.seq += 1
        self.lsdb.install(candidate, now)
        self._next_refresh = now + self.p.lsa_refresh
        self._flood(candidate, exclude=None)
        self.routes_version += 1

    def reconfigure(self, params: Params, now: float) -> None:
        """Apply new parameters (a config reload) without dropping links that stay valid: a new
        metric restarts the cost of every link; prefixes and timers take effect at once."""
        old, self.p = self.p, params
        if params.metric != old.metric:
            self._metric_code = wire.METRIC_CODES[params.metric]
            self._mismatch_logged.clear()
            for link in self.links.values():
                if link.up:
                    link.cost = CostTracker(params.metric)
                    link.cost.update(link.measure(), now)
        self._originate(now)
        self.routes_version += 1

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
        return True

    def leave(self, group: int, now: float) -> bool:
        if group not in self.groups:
            return False
        self.groups.discard(group)
        self.events.append(("group.left", {"group": _ip(group)}))
        self._originate(now)
        return True

    def withdraw(self, now: float) -> None:
        """Clean exit: tell the overlay we have no links, so it reroutes without waiting."""
        self.p = dataclasses.replace(self.p, prefixes=())
        self.groups = set()
        self._originate(now, force=True, links=[])
        self._flush(now)

    def _flood(self, lsa: wire.LSA, exclude: Link | None) -> None:
        for link in self.links.values():
            if link.up and link is not exclude:
                link.pending[lsa.origin] = lsa
                link.fresh.add(lsa.origin)

    # --- input ----------------------------------------------------------------------------------

    def receive(self, ifindex: int, src_addr: str, data: bytes, now: float) -> None:
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
        if isinstance(msg, wire.Hello):
            self._hello(link, header.sender, msg, now)
        elif not link.up or header.sender != link.peer_id:
            self.counters["dropped.link_not_up"] += 1
        else:
            link.last_rx = now
            if isinstance(msg, wire.LinkStateUpdate):
                self._lsu(link, msg, now)
            else:
                self._ack(link, msg)
        self._flush(now)

    def _local_addr_for(self, ifindex: int) -> str | None:
        for link in self.links.values():
            if link.ifindex == ifindex:
                return link.local_addr
        return None

    def _hello(self, link: Link, sender: int, h: wire.Hello, now: float) -> None:
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
        if link.up and not heard_us:
            self._down(link, now, "neighbor stopped hearing us")
        link.peer_id = sender
        link.last_rx = now
        link.record_rx_seq(h.seq)
        link.peer_tx_us = h.tx_us
        link.peer_rx_at = now
        first = link.state is State.DOWN
        if first:
            link.state = State.INIT
            link.since = now
        if heard_us and h.echo_us != link.last_echo_us:
            link.last_echo_us = h.echo_us
            link.rtt_sample((_us(now) - h.echo_us - h.hold_us) / 1000)
            link.answered += 1
        if not link.up and link.answered >= self.p.up_after:
            self._up(link, now)
        if first or not heard_us:
            link.next_hello = now  # answer at once: the neighbor is waiting to hear us

    def _lsu(self, link: Link, lsu: wire.LinkStateUpdate, now: float) -> None:
        acks = []
        for lsa in lsu.lsas:
            self.counters["lsa_in"] += 1
            acks.append((lsa.origin, lsa.seq))
            if lsa.origin == self.id:
                own = self.lsdb.lsas[self.id]
                order = lsdbmod.compare(lsa, own)
                if order == lsdbmod.NEWER and lsa.seq >= wire.MAX_SEQ - SEQ_HEADROOM:
                    # jumping there would leave too few numbers to originate with: refuse
                    self.counters["dropped.seq_exhausted"] += 1
                elif order == lsdbmod.NEWER:
                    # We restarted and the overlay remembers a newer self: jump past it.
                    self.seq = max(self.seq, lsa.seq)
                    self._originate(now, force=True)
                elif order == lsdbmod.OLDER:
                    link.pending[self.id] = own
                    link.fresh.add(self.id)
                continue
            limit = self._lsa_over_limit(lsa)
            if limit is not None:
                self._over_limit(limit, _ip(lsa.origin))
                continue
            order = self.lsdb.compare(lsa)
            if order == lsdbmod.NEWER:
                before = self.lsdb.lsas.get(lsa.origin)
                self.lsdb.install(lsa, now)
                self._implicit_ack(link, lsa)
                self._flood(lsa, exclude=link)
                if before is None or _body(before) != _body(lsa):
                    self.routes_version += 1
            elif order == lsdbmod.SAME:
                self._implicit_ack(link, lsa)
            else:
                mine = self.lsdb.lsas[lsa.origin]
                link.pending[lsa.origin] = mine
                link.fresh.add(lsa.origin)
        for pkt in wire.ack_packets(acks, instance=self.p.instance, sender=self.id):
            self._send(link, pkt)

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

    @staticmethod
    def _implicit_ack(link: Link, lsa: wire.LSA) -> None:
        pending = link.pending.get(lsa.origin)
        if pending is not None and pending.seq <= lsa.seq:
            del link.pending[lsa.origin]
            link.fresh.discard(lsa.origin)

    def _ack(self, link: Link, ack: wire.LinkStateAck) -> None:
        for origin, seq in ack.acks:
            pending = link.pending.get(origin)
            if pending is not None and pending.seq == seq:
                del link.pending[origin]
                link.fresh.discard(origin)

    # --- timers ---------------------------------------------------------------------------------

    def tick(self, now: float) -> None:
        if now >= self._hello_round:
            # jitter (-15 %..0) so that hellos of many nodes do not synchronise
            self._hello_round = now + self.p.hello_interval * self.rng.uniform(0.85, 1.0)
        for link in list(self.links.values()):
            if not self._usable(link):
                continue
            if link.heard and now - link.last_rx > self.p.dead_interval:
                self._down(link, now, "dead")
            if now >= link.next_hello:
                self._send_hello(link, now)
            if link.pending and now >= link.next_rxmt:
                link.fresh.update(link.pending)
                if link.up:
                    self.counters["lsa_retransmitted"] += len(link.pending)
        if [l for l in self.links.values() if l.up and l.cost.update(l.measure(), now)]:
            self._originate(now)  # a cost moved significantly
        if now >= self._next_refresh:
            self._originate(now, force=True)
        if now >= self._next_expire:
            self._next_expire = now + EXPIRE_EVERY
            if self.auth is not None:
                self.auth.forget_idle(now)
            self.routes()  # refreshes the reachable set
            if self.lsdb.expire(now, self._reachable | {self.id}):
                self.routes_version += 1
        self._flush(now)

    def _send_hello(self, link: Link, now: float) -> None:
        link.tx_seq = (link.tx_seq + 1) & 0xFFFFFFFF
        heard = link.heard and link.peer_tx_us
        h = wire.Hello(
            seq=link.tx_seq, tx_us=_us(now),
            echo_us=link.peer_tx_us if heard else 0,
            hold_us=int((now - link.peer_rx_at) * 1e6) if heard else 0,
            hello_ms=int(self.p.hello_interval * 1000), dead_ms=int(self.p.dead_interval * 1000),
            metric=self._metric_code,
            state=(wire.HELLO_HEARD if heard else 0) | (wire.HELLO_UP if link.up else 0))
        self._send(link, wire.encode(h, instance=self.p.instance, sender=self.id))
        link.next_hello = self._hello_round

    def _flush(self, now: float) -> None:
        for link in self.links.values():
            if link.fresh and link.up and self._usable(link):
                lsas = [link.pending[o] for o in sorted(link.fresh) if o in link.pending]
                for pkt in wire.lsu_packets(lsas, instance=self.p.instance, sender=self.id):
                    self._send(link, pkt)
                self.counters["lsa_out"] += len(lsas)
                link.next_rxmt = now + self.p.retransmit
            link.fresh.clear()

    def _send(self, link: Link, pkt: bytes) -> None:
        if self.auth is not None:
            pkt = self.auth.seal(pkt)
        self.counters["packets_out"] += 1
        self.outbox.append((link, pkt))

    def next_deadline(self) -> float:
        t = min(self._next_expire, self._next_refresh)
        for link in self.links.values():
            if not self._usable(link):
                continue
            t = min(t, link.next_hello)
            if link.heard:
                t = min(t, link.last_rx + self.p.dead_interval + 1e-3)
            if link.pending:
                t = min(t, link.next_rxmt)
        return t

    # --- routes ---------------------------------------------------------------------------------

    def spf(self):
        return spf(self.lsdb.graph(), self.id)

    def routes(self) -> RouteSet:
        if self._routes_at != self.routes_version:
            result = self.spf()
            self._reachable = set(result)
            hops = self.nexthops_by_neighbor()
            graph = self.lsdb.graph()
            routes = node_routes(result, hops, prefsrc=self.p.prefsrc, multipath=self.p.multipath,
                                 graph=graph, self_id=self.id,
                                 tolerance=self.p.multipath_tolerance,
                                 weights=self.p.multipath_weights)
            for dst, route in prefix_routes(self.lsdb.lsas, self.id, routes, result).items():
                routes.setdefault(dst, route)
            group_dsts = self._group_routes(routes, result)
            if 0 not in self.p.kernel_levels:  # group routes only
                routes = {d: r for d, r in routes.items() if d in group_dsts}
            self._routes = routes
            self._routes_at = self.routes_version
        return self._routes

    def _group_routes(self, routes: RouteSet, result) -> set[str]:
        """Anycast (level 1), mapped multicast (level 2) and gateway routes, added to
        ``routes`` (node and prefix routes win on a clash)."""
        p = self.p
        levels = set(p.kernel_levels)
        if not levels & {1, 2, 3}:
            self.group_choice = {}
            return set()
        ms = grp.members(self.lsdb.lsas, set(result) | {self.id})
        group_routes, self.group_choice = grp.anycast_routes(
            ms, result, routes, self.id, anypath=p.anypath, mappings=p.spines_mappings,
            gateway_group=p.gateway_group, multicast_mapped=bool(levels & {2, 3}))
        if levels & {1, 3}:
            gw, chosen = grp.gateway_routes(ms, result, routes, self.id, p.gateway_group,
                                            p.anypath)
            group_routes.update(gw)
            if chosen:
                self.group_choice[p.gateway_group] = chosen
        for dst, route in group_routes.items():
            routes.setdefault(dst, route)
        return set(group_routes)

    def group_members(self) -> dict[int, set[int]]:
        return grp.members(self.lsdb.lsas, set(self.spf()) | {self.id})

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
