"""The daemon's commands API: what the control socket, the Prometheus endpoint and the multicast
part may ask of the daemon, and nothing more.  None of them reaches into the daemon's parts.

Entry point: ``Commands(daemon)`` (built by the daemon once its parts are open).
    views (values, JSON-ready):   status(), neighbors(), routes(), topology(), groups()
    changes:                      join(group, joined, origin) -> dict, raising ValueError with
                                  one line for a person (bad group, limit reached);
                                  setlink(request) -> Pending (the reply comes when the kernel
                                  part is done, in the worker thread)
    for the multicast part:       engine (the protocol engine, read only), interfaces (read
                                  only), prefixes, link_is_up(ifindex), join/leave as above
                                  with origin "igmp", log, time()
    for client sessions:          logical_id(), traceroute(dst), edistance(group),
                                  members(group) (Spines' TRACEROUTE, EDISTANCE and MEMBERSHIP),
                                  join/leave with origin "session:<id>", setlink,
                                  neighbor("add", address) for libspines' ADD_NEIGHBOR
    neighbors at run time:        neighbor(op, address, tunnel, origin) -> dict (ValueError with
                                  one line for a person): a direct link or a tunnel
                                  (daemon.tunnels), without a restart; kept until the daemon
                                  restarts; tunnels() is the view of ``spines-kr show tunnels``

Own groups are bounded where they are created (``max_own_groups``): a join beyond the limit is
refused, counted (``refused.own_groups``) and logged once per minute with a count, so a LAN
full of IGMP reports cannot grow this node's LSA until peers refuse it.
"""

from __future__ import annotations

import ipaddress
import os
import time

from spines_kr.daemon.emulation import LinkEmulation
from spines_kr.routing import groups as grp

EMULATION_FIELDS = {"bandwidth": "bandwidth_kbps", "latency": "latency_ms", "loss": "loss_pct",
                    "burst": "burst_pct"}


class Pending:
    """A reply that comes later: ``then(callback)`` gets it once ``resolve(value)`` was called."""

    __slots__ = ("_value", "_callbacks", "done")

    def __init__(self) -> None:
        self._value = None
        self._callbacks: list = []
        self.done = False

    def resolve(self, value) -> None:
        self._value, self.done = value, True
        for cb in self._callbacks:
            cb(value)
        self._callbacks.clear()

    def then(self, callback) -> None:
        if self.done:
            callback(self._value)
        else:
            self._callbacks.append(callback)

    @property
    def value(self):
        return self._value


def _hops_from(graph, source: int) -> dict[int, int]:
    """Hop counts from ``source`` over the LSDB graph (breadth first)."""
    seen = {source: 0}
    frontier = [source]
    while frontier:
        nxt = []
        for n in frontier:
            for m in graph.get(n, {}):
                if m not in seen:
                    seen[m] = seen[n] + 1
                    nxt.append(m)
        frontier = nxt
    return seen


def _ip(n: int | None) -> str | None:
    return None if n is None else str(ipaddress.IPv4Address(n))


class Commands:
    def __init__(self, daemon) -> None:
        self._d = daemon

    # --- read-only handles for the multicast part ------------------------------------------

    @property
    def cfg(self):
        return self._d.cfg

    @property
    def engine(self):
        return self._d.node

    @property
    def interfaces(self):
        return self._d.interfaces

    @property
    def log(self):
        return self._d.log

    def time(self) -> float:
        return self._d.loop.time()

    def link_is_up(self, ifindex: int) -> bool:
        return self._d.interfaces.up.get(ifindex, True)

    # --- views ------------------------------------------------------------------------------

    def status(self) -> dict:
        import psutil  # only here: a daemon nobody asks does not load it

        d = self._d
        proc = psutil.Process()
        node = d.node
        links = node.links.values()
        ks = d.kernel_sync
        counters = {**dict(sorted(node.counters.items())), **d.overlay.counters, **d.counters}
        if ks is not None:
            counters.update(ks.stats)
        counters.update({f"errors.{k}": v for k, v in d.loop.errors.items()})
        counters["loop_wakeups"] = getattr(d.loop, "wakeups", 0)
        data = {}
        if getattr(d, "forwarding", None) is not None:
            data["forwarding"] = d.forwarding.status()
        if getattr(d, "sessions", None) is not None:
            data["sessions"] = d.sessions.status()
            counters.update(d.sessions.counters)  # "sessions.*" keys (dataplane.sessions)
        if getattr(d, "hostmcast", None) is not None:
            data["host_multicast"] = d.hostmcast.status()
        if getattr(d, "tunnels", None) is not None:
            counters.update(d.tunnels.counters)  # "tunnels.*" keys (daemon.tunnels)
        if getattr(d, "discovery", None) is not None:
            counters.update({k: v for k, v in d.discovery.counters.items()})
        return {
            "logical_id": d.cfg.logical_id, "port": d.cfg.port, "metric": d.cfg.metric,
            "kernel_levels": list(d.cfg.kernel_levels), "pid": os.getpid(),
            "uptime_s": round(time.monotonic() - d.started, 3),
            "rss_bytes": proc.memory_info().rss, "cpu_s": round(sum(proc.cpu_times()[:2]), 3),
            "neighbors_up": sum(1 for l in links if l.up), "links": len(node.links),
            "nodes": len(node.lsdb), "routes": len(node.routes()),
            "routes_installed": len(ks.installed) if ks is not None else 0,
            "restart_hold": bool(ks and ks.hold), "table": d.cfg.table,
            "capabilities": d.caps.to_json(), "kernel_use": d.plan.to_json(),
            "auth": ("none (UNAUTHENTICATED: set key_file)" if node.auth is None
                     else f"hmac-sha256, key {node.auth.send_id}, {len(node.auth.keys)} accepted"),
            "route_protocol": d.cfg.route_protocol, "groups": len(node.groups),
            "counters": counters, "lsa_seq": node.seq, "now": round(d.loop.time(), 3),
            **({"data_plane": data} if data else {}),
        }

    def neighbors(self) -> list[dict]:
        now = self._d.loop.time()
        return [l.to_json(now) for l in sorted(self._d.node.links.values(), key=lambda l: l.key)]

    def routes(self) -> list[dict]:
        d = self._d
        spf = d.node.spf()
        installed = d.kernel_sync.installed if d.kernel_sync is not None else {}
        out = []
        for dst, r in sorted(d.node.routes().items()):
            node = int(ipaddress.IPv4Network(dst).network_address)
            out.append({"dst": dst, "cost": spf.get(node, (None,))[0], "metric": d.cfg.metric,
                        "prefsrc": r.prefsrc, "protocol": d.cfg.route_protocol,
                        "table": d.cfg.table,
                        "nexthops": [{"gateway": nh.gateway, "ifindex": nh.ifindex,
                                      "dev": d.interfaces.names.get(nh.ifindex, ""),
                                      "weight": nh.weight} for nh in r.nexthops],
                        "installed": installed.get(dst) == r})
        return out

    def topology(self) -> dict:
        d = self._d
        graph = d.node.lsdb.graph()
        return {"self": d.cfg.logical_id,
                "nodes": [{"id": _ip(o), "seq": lsa.seq, "links": len(lsa.links)}
                          for o, lsa in sorted(d.node.lsdb.lsas.items())],
                "links": [{"from": _ip(a), "to": _ip(b), "cost": c}
                          for a, adj in sorted(graph.items()) for b, c in sorted(adj.items())]}

    def groups(self) -> list[dict]:
        node = self._d.node
        members = node.group_members()
        node.routes()  # refreshes group_choice
        out = []
        for g in sorted(set(members) | node.groups):
            kind = ("gateway" if g == node.p.gateway_group else
                    "anycast" if grp.is_anycast(g) else "multicast")
            out.append({"group": _ip(g), "kind": kind,
                        "members": [_ip(m) for m in sorted(members.get(g, ()))],
                        "member": g in node.groups,
                        "route_to": [_ip(m) for m in node.group_choice.get(g, [])],
                        "route_dst": grp.mapped_dst(g, self._d.cfg.spines_mappings)
                        if kind != "gateway" else "0.0.0.0/0"})
        return out

    # --- overlay queries of client sessions (Spines' TRACEROUTE, EDISTANCE, MEMBERSHIP) -----

    def logical_id(self) -> int:
        return self._d.node.id

    def traceroute(self, dst: int) -> list[tuple[int, int, int]]:
        """The overlay path from this node to node ``dst`` (or to the nearest member of group
        ``dst``): [(node, hops from here, path cost from here)], this node first; [] when
        unreachable."""
        node = self._d.node
        graph = node.graph()
        from spines_kr.routing.spf import spf

        result = spf(graph, node.id)
        target = dst
        if dst not in result and dst != node.id:
            members = node.group_members().get(dst, set())
            reach = [m for m in members if m in result or m == node.id]
            if not reach:
                return []
            target = min(reach, key=lambda m: (0 if m == node.id else result[m][0], m))
        path = [target]
        while path[-1] != node.id:  # walk back along predecessors of the shortest path
            here = path[-1]
            cost_here = result[here][0]
            prev = min((p for p, adj in graph.items() if here in adj
                        and (p == node.id or p in result)
                        and (0 if p == node.id else result[p][0]) + adj[here] == cost_here),
                       default=None)
            if prev is None or prev in path:
                return []
            path.append(prev)
        path.reverse()
        return [(n, i, 0 if n == node.id else result[n][0]) for i, n in enumerate(path)]

    def members(self, group: int) -> list[int]:
        return sorted(self._d.node.group_members().get(group, set()))

    def edistance(self, group: int) -> list[tuple[int, int, int]]:
        """For every reachable node: the largest hop distance from it to a member of
        ``group`` (Spines' EDISTANCE): [(node, distance, 0)]."""
        node = self._d.node
        graph = node.graph()
        members = set(node.group_members().get(group, set()))
        out = []
        for n in sorted({node.id, *graph}):
            hops = _hops_from(graph, n)
            dist = [hops[m] for m in members if m in hops]
            if dist:
                out.append((n, max(dist), 0))
        return out

    def tunnels(self) -> dict:
        d = self._d
        direct, wanted, unresolved = d.neighbors.plan()
        return {"tunnels": d.tunnels.status() if getattr(d, "tunnels", None) else [],
                "direct_neighbors": direct, "unresolved": unresolved,
                "discovery": d.discovery.status() if getattr(d, "discovery", None) else None}

    VIEWS = ("status", "neighbors", "links", "routes", "topology", "groups", "tunnels")

    def sync(self) -> dict:
        """Cheap convergence facts (what ``lab.ops.converged`` polls): a digest of the LSDB
        (every node of a converged overlay holds the same), whether our own LSA waits for
        the origination throttle, and our routes against the kernel's."""
        d = self._d
        node = d.node
        ks = d.kernel_sync
        return {"lsdb_digest": f"{node.digest():08x}", "nodes": len(node.lsdb),
                "origination_pending": node.origination_pending(),
                "routes": len(node.routes()),
                "routes_installed": len(ks.installed) if ks is not None else 0}

    def links(self) -> list[dict]:
        """``show links``: every neighbor link (as ``neighbors``) with, for the links that
        carried reliable or soft-real-time data, each protocol's figures (dataplane.links):
        window, in flight, retransmissions, NACKs, late drops, recovery time."""
        out = self.neighbors()
        fwd = getattr(self._d, "forwarding", None)
        channels = fwd.links_status()["links"] if fwd is not None else {}
        for l in out:
            ch = channels.get(f"{l['neighbor_address']}@{l['ifindex']}")
            if ch is None:
                continue
            rs, rr = ch["reliable"]["send"], ch["reliable"]["receive"]
            ts, tr = ch["realtime"]["send"], ch["realtime"]["receive"]
            l["reliable"] = {"window": rs["cwnd"], "in_flight": rs["in_flight"],
                             "backlog_frames": rs["backlog_frames"],
                             "peer_window": rs["peer_window"], "srtt_ms": rs["srtt_ms"],
                             "frames_sent": rs["frames_sent"],
                             "retransmissions": rs["retransmissions"],
                             "timeouts": rs["timeouts"], "recovery_ms": rs["recovery_ms"],
                             "frames_in": rr["frames_in"], "duplicates_in": rr["duplicates"],
                             "refused_backpressure": rr["refused_backpressure"]}
            l["realtime"] = {"frames_sent": ts["frames_sent"], "nacks_in": ts["nacks_in"],
                             "retransmissions": ts["retransmissions"],
                             "retransmissions_capped": ts["capped"],
                             "too_late_to_resend": ts["too_old"],
                             "frames_in": tr["frames_in"], "nacks_out": tr["nacks_out"],
                             "recovered": tr["recovered"], "late_drops": tr["late_records"],
                             "recovery_ms": tr["recovery_ms"]}
        return out

    def view(self, what: str):
        return getattr(self, what)()

    # --- changes ----------------------------------------------------------------------------

    def neighbor(self, op: str, address: str, tunnel: str | None = None,
                 origin: str = "control") -> dict:
        """Add or remove a neighbor at run time (``spines-kr neighbor``, ADD_NEIGHBOR): a direct
        link when ``address`` is on-link and no tunnel kind is given, else a tunnel of kind
        ``tunnel`` (or the ``tunnel`` setting).  ValueError with the reason when it cannot be."""
        from spines_kr.config import TUNNEL_KINDS

        d = self._d
        if op not in ("add", "remove"):
            raise ValueError(f"unknown operation {op!r} (add or remove)")
        try:
            a = str(ipaddress.IPv4Address(address))
        except ValueError:
            raise ValueError(f"'{address}' is not an IPv4 address") from None
        if tunnel is not None and tunnel not in TUNNEL_KINDS:
            raise ValueError(f"tunnel {tunnel!r} is not one of {', '.join(TUNNEL_KINDS)}")
        direct, wanted, unresolved = d.neighbors.plan()
        if op == "remove":
            if a not in direct and a not in wanted and a not in unresolved:
                raise ValueError(f"{a} is not a neighbor of this node")
            kind = None
        else:
            if a == d.cfg.logical_id or d.interfaces.owner(a) is not None:
                raise ValueError(f"{a} is an address of this node, not a neighbor")
            on_link = not isinstance(d.interfaces.local_end(a, d.cfg.local_addresses), str)
            kind = tunnel or (None if on_link else
                              (d.cfg.tunnel if d.cfg.tunnel != "none" else None))
            if kind is None and not on_link:
                raise ValueError(f"{a} is not in a connected subnet: give a tunnel kind "
                                 f"(--tunnel wireguard|vxlan|gre|ipip)")
            if kind is not None:
                if d.tunnels is None:
                    raise ValueError("tunnels are not available in this daemon")
                why = d.tunnels.refusal(kind)
                if why:
                    raise ValueError(f"{kind} tunnel to {a}: {why}")
                if d.cfg.route_priority == 0:
                    raise ValueError("tunnels need route_priority 1 or more")
        d.log.info("neighbor.added" if op == "add" else "neighbor.removed", neighbor=a,
                   tunnel=kind, origin=origin)
        changed = d.change_neighbor(a, kind, op == "add")
        return {"neighbor": a, "op": op, "tunnel": kind, "changed": changed}

    def join(self, group: str, joined: bool = True, origin: str = "control") -> dict:
        """Join or leave a group; ValueError with the reason when it cannot be done
        (daemon.membership: routable groups only, at most ``max_own_groups``)."""
        d = self._d
        result = d.membership.join(group, joined, d.loop.time(), origin)
        d.after_event()
        return result

    def setlink(self, req: dict) -> Pending:
        """Emulate bandwidth/latency/loss/burst on the link(s) from SOURCE to DEST, at the end
        that was told: told to SOURCE's daemon it shapes what SOURCE sends, told to DEST's (as
        Spines does) what DEST receives; the reply says which ("end").

        Raises ValueError with a message for a person when the request cannot be applied; else
        the reply comes through the returned Pending once the kernel part (tc, nftables: in
        the worker thread, never on the loop) is done.
        """
        d = self._d
        cfg = d.cfg
        if not cfg.accept_link_commands:
            raise ValueError("setlink refused: this daemon was not started with -m "
                             "(accept_link_commands)")
        values = {}
        for key, hi in (("bandwidth_kbps", 10 ** 9), ("latency_ms", 60_000), ("loss_pct", 100),
                        ("burst_pct", 100)):
            try:
                values[key] = float(req[key])
            except (KeyError, TypeError, ValueError, OverflowError):
                raise ValueError(f"setlink: {key} must be a number") from None
            if not 0 <= values[key] <= hi:
                raise ValueError(f"setlink: {key} {values[key]:g} is out of range 0..{hi}")
        port = req.get("port")
        if port is not None:
            if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
                raise ValueError(f"setlink: port {port!r} is not a UDP port (1..65535)")
            if port != cfg.port:
                raise ValueError(f"setlink: port {port} is not this daemon's overlay port "
                                 f"({cfg.port})")
        source, dest = str(req.get("source", "")), str(req.get("dest", ""))
        node = d.node
        mine = {cfg.logical_id} | {l.local_addr for l in node.links.values()}
        if source not in mine and dest not in mine:
            raise ValueError(f"setlink: neither {source} nor {dest} is this node "
                             f"({cfg.logical_id}): tell the daemon at one end of the link")
        # the sending end shapes what it sends to DEST; the receiving end (Spines' meaning)
        # what it receives from SOURCE
        ingress = source not in mine
        here, peer = (dest, source) if ingress else (source, dest)
        links = [l for l in node.links.values()
                 if peer in (l.peer_addr, _ip(l.peer_id))
                 and here in (cfg.logical_id, l.local_addr)]
        if not links:
            neighbors = ", ".join(sorted(l.peer_addr for l in node.links.values())) or "none"
            raise ValueError(f"setlink: no link from {source} to {dest} (neighbors: {neighbors})")
        end = "receiving" if ingress else "sending"
        pending = Pending()
        result: list[dict] = []

        def applied_one(link, emu, outcome, error) -> None:
            if error is not None:
                kernel = f"not applied: {error}"
            else:
                for param in outcome.daemon_covered:  # e.g. a tbf also paces our hellos
                    setattr(emu, EMULATION_FIELDS[param], 0.0)
                kernel = outcome.summary
            if ingress:
                link.rx_emulation = emu if emu.active else None
            else:
                link.emulation = emu if emu.active else None
            result.append({"link": f"{link.ifname}:{link.peer_addr}", "end": end,
                           "daemon": "applied" if emu.active else "cleared", "kernel": kernel})
            d.log.info("link.emulation", link=link.peer_addr, ifname=link.ifname, end=end,
                       **values, kernel=kernel)
            if len(result) == len(links):
                pending.resolve({"links": result})

        for link in links:
            emu = LinkEmulation(**values)
            d.apply_emulation(link, values,
                              lambda outcome, error, link=link, emu=emu:
                              applied_one(link, emu, outcome, error), ingress=ingress)
        return pending
