"""Kernel multicast forwarding for one overlay (kernel level 2): trees in, MFC entries out.

Data model: a vif per interface that carries overlay links, and per LAN (an up interface with
an address inside a prefix this node announces); ``entries`` maps (source, group) to the
(iif vif, {oif vif: ttl}) written to the kernel.  Entry points: ``Multicast(daemon)``,
``on_readable()`` (kernel upcalls and IGMP reports), ``refresh()`` (after any change of
topology or membership: rewrite every entry whose tree moved), ``close()``.

How a packet travels (``routing.groups.tree_role``): the source's node is the root of a
shortest-path tree (ties: lowest id, the same on every node).  A node accepts the packet only
on the link to its parent (on the LAN where the source lives, at the root), and copies it to
the children whose subtree holds a member and, when it is a member itself, onto its LANs: each
member gets one copy, non-members' LANs none.  Entries are installed when the kernel reports a
packet without one (IGMPMSG_NOCACHE), and kept (possibly with no outputs, a prune) until the
daemon exits; the kernel flushes them when the MRT socket closes.

Membership of this node = groups of its config and of ``spines-kr join`` + groups that hosts on
its LANs report by IGMP (an IGMP proxy, switch ``igmp_proxy``).  IGMP memberships are kept
until the host leaves: no querier runs yet, so a host that vanishes without a leave stays a
member until the daemon restarts (documented limitation).
"""

from __future__ import annotations

import ipaddress

from spines_kr.netlink.mroute import IgmpReport, MrouteError, MulticastRouter, Upcall
from spines_kr.routing import groups as grp

IGMPMSG_NOCACHE = 1
TTL = 1


def _int(a: str) -> int:
    return int(ipaddress.IPv4Address(a))


class Multicast:
    def __init__(self, daemon):
        self.d = daemon
        cfg = daemon.cfg
        self.router = MulticastRouter(None if cfg.table == 254 else cfg.table,
                                      protocol=cfg.route_protocol)
        self.vif_of: dict[int, int] = {}  # ifindex -> vifi
        self.lans: set[int] = set()
        self.entries: dict[tuple[str, str], tuple[int, dict[int, int]]] = {}
        self.igmp: dict[int, set[int]] = {}  # group -> LAN ifindexes with members (IGMP)
        self.proxied: set[int] = set()  # groups the node joined on behalf of its hosts
        self.local_joins: set[tuple[str, int]] = set()

    def close(self) -> None:
        self.router.close()

    def fileno(self) -> int:
        return self.router.fileno()

    # --- interfaces -----------------------------------------------------------------------------

    def _lan_ifindexes(self) -> set[int]:
        nets = [ipaddress.IPv4Network(p) for p in self.d.cfg.prefixes]
        links = {l.ifindex for l in self.d.node.links.values()}
        return {ifindex for ifindex, addr, _plen in self.d.addresses
                if ifindex not in links and ifindex != 1
                and any(ipaddress.IPv4Address(addr) in n for n in nets)
                and self.d._link_state.get(ifindex, True)}

    def sync_vifs(self) -> None:
        wanted = {l.ifindex for l in self.d.node.links.values()} | self._lan_ifindexes()
        self.lans = self._lan_ifindexes()
        for ifindex in sorted(wanted - set(self.vif_of)):
            try:
                self.vif_of[ifindex] = self.router.add_vif(None, ifindex)
            except MrouteError as e:
                self.d.log.error("multicast.vif_failed", ifindex=ifindex, error=str(e))
                continue
            if ifindex in self.lans:
                self.router.listen_igmp(ifindex)
        for ifindex in sorted(set(self.vif_of) - wanted):
            self.router.del_vif(self.vif_of.pop(ifindex))

    # --- membership -----------------------------------------------------------------------------

    def members_here(self) -> set[int]:
        """Groups this node is a member of: joined explicitly or on behalf of its hosts (both are
        in ``node.groups``, which is what the node advertises)."""
        return set(self.d.node.groups)

    def _igmp(self, rep: IgmpReport) -> None:
        if not self.d.cfg.igmp_proxy or rep.ifindex not in self.lans:
            return
        g = _int(rep.group)
        lans = self.igmp.setdefault(g, set())
        (lans.add if rep.joined else lans.discard)(rep.ifindex)
        self.d.log.info("multicast.igmp", group=rep.group, host=rep.source,
                        joined=rep.joined, ifindex=rep.ifindex)
        node, now = self.d.node, self.d.loop_time()
        if lans and g not in node.groups:
            node.join(g, now)
            self.proxied.add(g)
        elif not lans and g in self.proxied:
            node.leave(g, now)  # only what the proxy joined: an explicit join stays
            self.proxied.discard(g)

    # --- entries --------------------------------------------------------------------------------

    def _entry(self, source: str, group: str, arrival_vif: int | None):
        """(iif vif, {oif vif: ttl}) for (S, G) by the tree of S's node, or None to leave it."""
        node = self.d.node
        g = _int(group)
        lsas = node.lsdb.lsas
        root = grp.source_node(lsas, _int(source))
        if root is None:
            local = any(addr == source or ipaddress.IPv4Address(source) in
                        ipaddress.IPv4Network(f"{addr}/{plen}", strict=False)
                        for i, addr, plen in self.d.addresses if i in self.lans)
            root = node.id if local else None
        if root is None:
            return None
        members = grp.members(lsas, set(node.spf()) | {node.id}).get(g, set())
        if g in self.members_here():
            members = members | {node.id}
        parent, children, on_tree = grp.tree_role(node.lsdb.graph(), root, node.id, members)
        if not on_tree:
            return None
        if parent is None:  # we are the root: the source is on one of our LANs
            if arrival_vif is None:
                old = self.entries.get((source, group))
                arrival_vif = old[0] if old else None
            iif = arrival_vif
        else:
            iif = self._vif_to(parent)
        if iif is None:
            return None
        oifs = {v: TTL for c in children if (v := self._vif_to(c)) is not None}
        if g in self.members_here():
            oifs.update({self.vif_of[i]: TTL for i in self.lans if i in self.vif_of})
        oifs.pop(iif, None)
        return iif, oifs

    def _vif_to(self, neighbor: int) -> int | None:
        hops = self.d.node.nexthops_by_neighbor().get(neighbor)
        return self.vif_of.get(hops[0].ifindex) if hops else None

    def _write(self, source: str, group: str, entry) -> None:
        if entry is None or self.entries.get((source, group)) == entry:
            return
        iif, oifs = entry
        try:
            self.router.set_mfc(source, group, iif, oifs)
        except (MrouteError, OSError, ValueError) as e:
            self.d.log.error("multicast.mfc_failed", source=source, group=group, error=str(e))
            return
        self.entries[(source, group)] = entry
        self.d.log.info("multicast.entry", source=source, group=group, iif=iif,
                        oifs=sorted(oifs))

    def on_readable(self) -> None:
        for ev in self.router.read_upcalls():
            if isinstance(ev, Upcall) and ev.kind == IGMPMSG_NOCACHE:
                self._write(ev.source, ev.group, self._entry(ev.source, ev.group, ev.vifi))
            elif isinstance(ev, IgmpReport):
                self._igmp(ev)

    def refresh(self) -> None:
        """Topology or membership moved: vifs first, then every entry that changed."""
        self.sync_vifs()
        mine = {str(ipaddress.IPv4Address(g)) for g in self.members_here()
                if ipaddress.IPv4Address(g) in grp.MULTICAST}
        for group in mine | {g for g, _i in self.local_joins}:
            wanted = group in mine
            for i in self.lans:
                key = (group, i)
                if wanted and key not in self.local_joins:
                    self.router.join_local(group, i)  # our own stack gets its copy
                    self.local_joins.add(key)
                elif not wanted and key in self.local_joins:
                    self.router.leave_local(group, i)
                    self.local_joins.discard(key)
        for (s, g) in list(self.entries):
            self._write(s, g, self._entry(s, g, None))
