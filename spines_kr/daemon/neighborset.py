"""Which links the engine has: the neighbors of the configuration, of run-time changes
(``spines-kr neighbor``, libspines' ADD_NEIGHBOR, a reload) and of discovery, resolved against
the interface table, and the links on the daemon's own tunnels.

Data model:
    extra              run-time additions: address -> tunnel kind (None: a direct link)
    removed            run-time removals of configured neighbors
    tunnel_ifs         ifindexes of our tunnels: the links on them follow the tunnels
    unresolved_logged  per neighbor that is not on-link, the reason last logged (once a change)
    tunnels            daemon.tunnels.Tunnels once the daemon opened them, else None
    cfg                the running configuration (a reload replaces it)
The engine (``node``) holds the links themselves; this part decides which it should hold.

Entry points: ``NeighborSet(cfg, node, interfaces, log)``; ``plan()`` -> (direct neighbors,
wanted tunnels, unresolved); ``change(address, kind, add, now)`` -> changed?;
``resolve(now)`` (after a change of configuration or addresses); ``resolve_tunnel_links(now)``
(after the tunnels changed); ``discovered(ifindex, address, alive, now)``; ``up_on(ifindex)``.
The caller runs the daemon's ``after_event`` afterwards.
"""

from __future__ import annotations


class NeighborSet:
    def __init__(self, cfg, node, interfaces, log) -> None:
        self.cfg = cfg
        self.node = node
        self.interfaces = interfaces
        self.log = log
        self.tunnels = None
        self.extra: dict[str, str | None] = {}
        self.removed: set[str] = set()
        self.tunnel_ifs: set[int] = set()
        self.unresolved_logged: dict[str, str] = {}

    def up_on(self, ifindex: int) -> bool:
        """Whether a link on ``ifindex`` is up."""
        return any(l.up for l in self.node.links.values() if l.ifindex == ifindex)

    def plan(self) -> tuple[list[str], dict, dict[str, str]]:
        """(direct neighbors, wanted tunnels, unresolved) from the configuration and the
        run-time changes (daemon.tunnels.plan_neighbors)."""
        from spines_kr.daemon.tunnels import plan_neighbors

        cfg, ifs = self.cfg, self.interfaces
        direct, wanted, unresolved = plan_neighbors(
            cfg, self.extra,
            lambda a: not isinstance(ifs.local_end(a, cfg.local_addresses), str))
        gone = self.removed
        for a in [a for a in wanted if ifs.owner(a) is not None or a == cfg.logical_id]:
            unresolved[a] = f"{a} is an address of this host, not a neighbor"
            del wanted[a]
        return ([a for a in direct if a not in gone], {a: w for a, w in wanted.items()
                                                       if a not in gone},
                {a: r for a, r in unresolved.items() if a not in gone})

    def change(self, address: str, kind: str | None, add: bool, now: float) -> bool:
        """A neighbor added (a direct link, or a tunnel of ``kind``) or removed at run time
        (commands.neighbor checked it); kept until a restart.  True if anything changed."""
        if add:
            changed = self.extra.get(address, "-") != kind or address in self.removed
            self.removed.discard(address)
            self.extra[address] = kind
        else:
            changed = address not in self.removed
            self.extra.pop(address, None)
            self.removed.add(address)
        self.resolve(now)
        return changed

    def resolve_tunnel_links(self, now: float) -> None:
        """Links on our tunnels: one per tunnel that exists, none on a tunnel that went."""
        if self.tunnels is None:
            return
        node, ifs = self.node, self.interfaces
        links = self.tunnels.links()
        keep = {(ifindex, peer) for ifindex, _n, _l, peer in links}
        for key, link in list(node.links.items()):
            if link.ifindex in self.tunnel_ifs and key not in keep:
                node.remove_link(key, now)
        self.tunnel_ifs.clear()
        self.tunnel_ifs.update(ifindex for ifindex, *_ in links)
        for ifindex, ifname, local, peer in links:
            link = node.add_link(ifindex, ifname, local, peer, now)
            link.local_addr = local
            node.set_interface(ifindex, ifs.up.get(ifindex, True), now)

    def resolve(self, now: float) -> None:
        """The engine's configured links made to match the plan: direct neighbors on the
        interface that reaches them, the tunnels' links, nothing for what no longer is."""
        node, ifs = self.node, self.interfaces
        for link in node.links.values():
            link.ifname = link.ifname or ifs.names.get(link.ifindex, "")
        direct, wanted, unresolved = self.plan()
        if self.tunnels is not None:
            self.tunnels.set_wanted(wanted)
        for key, link in list(node.links.items()):  # configured neighbors no longer wanted
            if (link.configured and link.ifindex not in self.tunnel_ifs
                    and link.peer_addr not in direct):
                node.remove_link(key, now)
        self.resolve_tunnel_links(now)
        for peer in direct + list(unresolved):
            end = ifs.local_end(peer, self.cfg.local_addresses)
            present = [k for k, l in node.links.items() if l.peer_addr == peer and l.configured]
            if isinstance(end, str):
                for key in present:
                    node.remove_link(key, now)
                if self.unresolved_logged.get(peer) != end:
                    self.unresolved_logged[peer] = end
                    self.log.warning("neighbor.unresolved", neighbor=peer, reason=end)
                continue
            self.unresolved_logged.pop(peer, None)
            ifindex, local = end
            for key in present:
                if key != (ifindex, peer):
                    node.remove_link(key, now)
            link = node.add_link(ifindex, ifs.names.get(ifindex, ""), local, peer, now)
            link.local_addr = local
            node.set_interface(ifindex, ifs.up.get(ifindex, True), now)

    def discovered(self, ifindex: int, address: str, alive: bool, now: float) -> None:
        """Discovery found (or lost) a daemon of the overlay at ``address`` on ``ifindex``: a
        dynamic link, within ``max_dynamic_links``; a lost one goes unless it is up."""
        node = self.node
        key = (ifindex, address)
        link = node.links.get(key)
        if not alive:
            if link is not None and not link.configured and not link.up:
                node.remove_link(key, now)
            return
        if link is not None:
            return
        end = self.interfaces.local_end(address, self.cfg.local_addresses)
        if isinstance(end, str) or end[0] != ifindex:
            return
        if sum(1 for l in node.links.values() if not l.configured) >= self.cfg.max_dynamic_links:
            node.counters["dropped.limit_dynamic_links"] += 1
            return
        node.add_link(ifindex, self.interfaces.names.get(ifindex, ""), end[1], address, now,
                      configured=False)
        node.set_interface(ifindex, self.interfaces.up.get(ifindex, True), now)
