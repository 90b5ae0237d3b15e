"""Kernel multicast forwarding for one overlay (kernel level 2): trees in, MFC entries out.

Data model: a vif per interface that carries overlay links, and per LAN (an up interface with
an address inside a prefix this node announces); ``entries`` maps (source, group) to the
(iif vif, {oif vif: ttl}) this node wants in the kernel for every flow it has seen (a flow is
seen when the kernel reports a packet without an entry).  Entry points:
``Multicast(commands, router)``, ``on_readable()`` (kernel upcalls and IGMP reports),
``refresh()`` (after any change of topology or membership: recompute every entry),
``reconcile()`` (against the kernel's own dump: an entry deleted or changed by hand is
written again, one of our table that we do not want is deleted), ``close()``.  It talks to the
daemon only through the commands API (``daemon.commands``).

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

from spines_kr.netlink.mroute import IgmpReport, MrouteError, Upcall
from spines_kr.routing import groups as grp

IGMPMSG_NOCACHE = 1
TTL = 1


def _int(a: str) -> int:
    return int(ipaddress.IPv4Address(a))


class Multicast:
    def __init__(self, commands, router):
        self.c = commands
        self.router = router
        self.stats = {"entries_repaired": 0, "entries_removed": 0, "igmp_refused": 0}
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
        nets = [ipaddress.IPv4Network(p) for p in self.c.cfg.prefixes]
        links = {l.ifindex for l in self.c.engine.links.values()}
        return {ifindex for ifindex, addr, _plen in self.c.interfaces.addresses
                if ifindex not in links and ifindex != 1
                and any(ipaddress.IPv4Address(addr) in n for n in nets)
                and self.c.link_is_up(ifindex)}

    def sync_vifs(self) -> None:
        wanted = {l.ifindex for l in self.c.engine.links.values()} | self._lan_ifindexes()
        self.lans = self._lan_ifindexes()
        for ifindex in sorted(wanted - set(self.vif_of)):
            try:
                self.vif_of[ifindex] = self.router.add_vif(None, ifindex)
            except MrouteError as e:
                self.c.log.error("multicast.vif_failed", ifindex=ifindex, error=str(e))
                continue
            if ifindex in self.lans:
                self.router.listen_igmp(ifindex)
        for ifindex in sorted(set(self.vif_of) - wanted):
            self.router.del_vif(self.vif_of.pop(ifindex))

    # --- membership -----------------------------------------------------------------------------

    def members_here(self) -> set[int]:
        """Groups this node is a member of: joined explicitly or on behalf of its hosts (both are
        in ``node.groups``, which is what the node advertises)."""
        return set(self.c.engine.groups)

    def _igmp(self, rep: IgmpReport) -> None:
        if not self.c.cfg.igmp_proxy or rep.ifindex not in self.lans:
            return
        g = _int(rep.group)
        if not grp.is_joinable(g):
            return  # link-local groups are never routed
        lans = self.igmp.get(g, set())
        if rep.joined and not lans:
            try:  # bounded: a LAN full of reports cannot grow our LSA past max_own_groups
                self.c.join(rep.group, True, origin="igmp")
            except ValueError:
                self.stats["igmp_refused"] += 1
                return
            self.proxied.add(g)
        (lans.add if rep.joined else lans.discard)(rep.ifindex)
        if lans:
            self.igmp[g] = lans
        else:
            self.igmp.pop(g, None)
        self.c.log.info("multicast.igmp", group=rep.group, host=rep.source,
                        joined=rep.joined, ifindex=rep.ifindex)
        if not lans and g in self.proxied:
            self.proxied.discard(g)
            self.c.join(rep.group, False, origin="igmp")  # other holders (a join) keep it

    # --- entries --------------------------------------------------------------------------------

    def _entry(self, source: str, group: str, arrival_vif: int | None):
        """(iif vif, {oif vif: ttl}) for (S, G) by the tree of S's node, or None to leave it."""
        node = self.c.engine
        g = _int(group)
        lsas = node.lsas()
        root = grp.source_node(lsas, _int(source))
        if root is None:
            local = any(addr == source or ipaddress.IPv4Address(source) in
                        ipaddress.IPv4Network(f"{addr}/{plen}", strict=False)
                        for i, addr, plen in self.c.interfaces.addresses if i in self.lans)
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
        hops = self.c.engine.nexthops_by_neighbor().get(neighbor)
        return self.vif_of.get(hops[0].ifindex) if hops else None

    def _write(self, source: str, group: str, entry) -> None:
        if entry is None or self.entries.get((source, group)) == entry:
            return
        iif, oifs = entry
        try:
            self.router.set_mfc(source, group, iif, oifs)
        except (MrouteError, OSError, ValueError) as e:
            self.c.log.error("multicast.mfc_failed", source=source, group=group, error=str(e))
            return
        self.entries[(source, group)] = entry
        self.c.log.info("multicast.entry", source=source, group=group, iif=iif,
                        oifs=sorted(oifs))

    def reconcile(self) -> None:
        """Make the kernel's entries of our table what we want: rewrite an entry that is
        missing (deleted by hand, or flushed with a vif), unresolved or different; delete one
        we do not want (written by hand into our table).  Unresolved entries of flows we have
        not seen yet are the kernel's own, waiting for our answer to their upcall: left alone."""
        try:
            kernel = self.router.dump()
        except OSError as e:
            self.c.log.error("multicast.dump_failed", error=str(e))
            return
        for (source, group), (iif, oifs) in list(self.entries.items()):
            found = kernel.get((source, group))
            if found is not None and found.iif == iif and found.oifs == oifs:
                continue
            try:
                self.router.set_mfc(source, group, iif, oifs)
            except (MrouteError, OSError, ValueError) as e:
                self.c.log.error("multicast.mfc_failed", source=source, group=group, error=str(e))
                continue
            self.stats["entries_repaired"] += 1
            self.c.log.info("multicast.entry_repaired", source=source, group=group, iif=iif,
                            oifs=sorted(oifs), found="missing" if found is None else
                            f"iif {found.iif} oifs {sorted(found.oifs)}")
        for (source, group), found in kernel.items():
            if (source, group) in self.entries or found.iif is None:
                continue
            try:
                self.router.del_mfc(source, group)
            except (MrouteError, OSError) as e:
                self.c.log.error("multicast.mfc_failed", source=source, group=group, error=str(e))
                continue
            self.stats["entries_removed"] += 1
            self.c.log.info("multicast.entry_removed", source=source, group=group,
                            reason="not an entry of ours")

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
        self.reconcile()
