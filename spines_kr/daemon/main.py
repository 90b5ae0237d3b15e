"""The daemon process: one asyncio loop around the protocol engine (``daemon.node.Node``).

Entry point: ``run(cfg) -> int`` (exit status, see ``ExitCode``).  The loop waits on three file
descriptors and one deadline, never spins:
    the overlay UDP socket   packets -> Node.receive
    the netlink watch        link/address/route events -> Node.set_interface, resync
    the control socket       ``spines-kr show ...`` requests (daemon.control)
    Node.next_deadline()     hellos, dead links, retransmits (one timer, re-armed after events)

Data flow: measure -> flood -> compute -> reconcile.  Whenever ``Node.routes_version`` moves,
one reconcile is scheduled (coalesced: many changes in one loop turn cost one sync); it diffs
the desired set against the kernel (``netlink.reconcile``) and writes only the difference.

Own traffic stays on the direct link: every packet to a neighbor is sent with IP_PKTINFO naming
the link's interface and source address, so the kernel routes it out of that interface even
when the overlay's best route to the neighbor's address goes elsewhere (the FIB lookup skips
next hops not on the requested interface and falls back to the connected subnet).  Neighbors
must therefore be on-link (in a connected subnet of a local interface), which kernel routing
needs anyway: a route's gateway must be on-link.

Restart: if routes of ours are in the kernel at start (a crash, or kept at exit), they are kept
while the overlay converges: the reconciler only adds missing routes until every configured
neighbor is up and the routes have been stable for a moment, or ``startup_grace_s`` passed;
then a full sync replaces and sweeps.  Clean exit (SIGTERM, SIGINT, -x): flood an LSA without
links, withdraw our routes, remove the socket files.
"""

from __future__ import annotations

import asyncio
import enum
import errno
import ipaddress
import os
import random
import signal
import socket
import struct
import time

from spines_kr.config import Config
from spines_kr.daemon import control, logging as dlog
from spines_kr.daemon.sdnotify import Notifier
from spines_kr.daemon.emulation import LinkEmulation
from spines_kr.daemon.node import Node, Params
from spines_kr.netlink import emulation as kernel_emulation, events as nlevents, nexthop
from spines_kr.netlink.addresses import LoopbackAddresses
from spines_kr.netlink.rules import RuleTable
from spines_kr.keys import KeyFileError, load_key_file
from spines_kr.routing import groups as grp
from spines_kr.wire.auth import KeyRing
from spines_kr.netlink.kernel import RouteTable
from spines_kr.netlink.reconcile import Reconciler

IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)
MAIN_TABLE = 254
IPTOS_PREC_INTERNETCONTROL = 0xC0
SETTLE_S = 0.3  # routes unchanged this long after all neighbors are up: the restart hold ends


class ExitCode(enum.IntEnum):
    OK = 0
    RUNTIME = 1
    USAGE = 2


# Changing these needs a restart; a reload keeps the running values and says so.
RESTART_ONLY = ("port", "logical_id", "table", "route_protocol", "route_priority", "rule_priority",
                "control_socket", "control_group", "ipc_path", "kernel_levels", "log_file",
                "log_format", "auth")
HEARTBEAT_S = 2.0  # STATUS= updates; WATCHDOG=1 at least twice per WatchdogSec


class Daemon:
    def __init__(self, cfg: Config, reload_config=None):
        self.cfg = cfg
        self.reload_config = reload_config  # () -> Config, re-reading the file (SIGHUP)
        self.notify = Notifier()
        self._last_status = ""
        self.log = None
        self.started = time.monotonic()
        self.node: Node | None = None
        self.sock: socket.socket | None = None
        self.kernel: RouteTable | None = None
        self.watch = None
        self.reconciler: Reconciler | None = None
        self.addresses: list[tuple[int, str, int]] = []
        self.ifnames: dict[int, str] = {}
        self._link_state: dict[int, bool] = {}
        self._unresolved_logged: set[str] = set()
        self._last_desired = None
        self._nh_table = None
        self.need_dump = False  # the kernel may hold other routes than we think: re-read it
        self.emulated = False  # setlink touched qdiscs/nftables: clear them at exit
        self.rules: RuleTable | None = None
        self.capabilities: dict = {}
        self.loopback: LoopbackAddresses | None = None
        self.multicast = None
        self.metrics_server = None
        self.log_limit = dlog.RateLimiter()  # per (event, link): no log storm on a flapping link
        self.stop = asyncio.Event()
        self.hold = False  # restart hold: only add missing routes
        self.hold_until = 0.0
        self.last_routes_change = 0.0
        self.synced_version = -1
        self.sync_pending = False
        self.timer: asyncio.TimerHandle | None = None
        self.stats = {"reconciles": 0, "routes_added": 0, "routes_replaced": 0,
                      "routes_deleted": 0, "route_errors": 0, "send_errors": 0,
                      "emulated_drops": 0}
        self.control_server = None

    # --- lifecycle ------------------------------------------------------------------------------

    async def run(self) -> int:
        cfg = self.cfg
        self.log = dlog.setup(cfg.log_level, cfg.log_format, cfg.log_file)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop.set)
        loop.add_signal_handler(signal.SIGHUP, lambda: loop.call_soon(self._reload))
        try:
            self._open(loop)
            if cfg.metrics_listen:
                from spines_kr.daemon import prometheus

                self.metrics_server = await prometheus.serve(self, cfg.metrics_listen)
        except KeyFileError as e:
            self.log.error("daemon.start_failed", error=str(e))
            self._close()
            return ExitCode.USAGE
        except OSError as e:
            reason = e.strerror or str(e)
            if e.errno == errno.EADDRINUSE:
                reason = (f"UDP port {cfg.port} is in use (another spines-kr daemon of this overlay "
                          f"on this host?)")
            self.log.error("daemon.start_failed", error=reason)
            self._close()
            return ExitCode.RUNTIME
        self.log.info("daemon.started", logical_id=cfg.logical_id, port=cfg.port,
                      metric=cfg.metric, kernel_levels=list(cfg.kernel_levels),
                      neighbors=list(cfg.neighbors), table=cfg.table,
                      protocol=cfg.route_protocol, hold=self.hold)
        if cfg.exit_after is not None:
            loop.call_later(cfg.exit_after, self.stop.set)
        self._after_event()
        self.notify.ready(self._status_line())
        self._heartbeat()
        await self.stop.wait()
        self.log.info("daemon.stopping")
        self.notify.send("STOPPING=1")
        await self._shutdown()
        return ExitCode.OK

    def _open(self, loop) -> None:
        cfg = self.cfg
        # Opened also without kernel routing: it reads interfaces and addresses.
        self.kernel = RouteTable(cfg.table, cfg.route_protocol, cfg.route_priority)
        self.watch = nlevents.KernelWatch()
        self._refresh_interfaces()
        prefsrc = None
        if cfg.prefsrc:
            if any(a == cfg.logical_id for _, a, _ in self.addresses):
                prefsrc = cfg.logical_id
            else:
                self.log.warning("daemon.no_prefsrc", logical_id=cfg.logical_id,
                                 hint="put the logical ID on lo so routes carry it as source")
        now = loop.time()
        # Sequence numbers start from the wall clock (ms), so a restarted node's first LSA is
        # newer than any of its previous life (the jump-past rule in Node covers clock resets).
        self.node = Node(Params.from_config(cfg, prefsrc), now, initial_seq=int(time.time() * 1000),
                         rng=random.Random(), auth=self._keyring())
        self.sock = self._udp_socket()
        loop.add_reader(self.sock.fileno(), self._on_udp)
        loop.add_reader(self.watch.fileno(), self._on_netlink)
        if cfg.kernel_routing:
            if cfg.table != MAIN_TABLE:
                # Our own table only takes effect through a policy rule of ours.
                self.rules = RuleTable(cfg.table, cfg.rule_priority, cfg.route_protocol)
                for change in self.rules.ensure():
                    self.log.info("rules.changed", change=change)
            self.reconciler = Reconciler(self._route_writer())
            existing = self.reconciler.kernel.dump()
            self.reconciler.installed = existing
            if existing:
                self.hold = True
                self.hold_until = now + cfg.startup_grace_s
                self.log.info("routes.restart_hold", stale=len(existing),
                              grace_s=cfg.startup_grace_s)
            loop.call_later(cfg.reconcile_interval_s, self._periodic_reconcile)
        self._resolve_neighbors(now)
        if cfg.kernel_levels:
            self.loopback = LoopbackAddresses(cfg.route_protocol)
        if 2 in cfg.kernel_levels:
            from spines_kr.daemon.multicast import Multicast

            self.multicast = Multicast(self)
            self.multicast.sync_vifs()
            loop.add_reader(self.multicast.fileno(), self._on_mroute)
        for g in cfg.groups:
            self.node.join(int(ipaddress.IPv4Address(g)), now)
        self._sync_loopback()
        self.control_server = control.serve(self, cfg.control_socket, cfg.control_group)

    def _keyring(self) -> KeyRing | None:
        if self.cfg.auth == "none":
            self.log.warning("auth.disabled", hint="anyone who can reach the overlay port can "
                             "rewrite this router's routes; set key_file")
            return None
        keys, send_id = load_key_file(self.cfg.key_file)
        # boot: microseconds of wall clock, so a restarted daemon's counters are fresh
        return KeyRing(keys, send_id, boot=time.time_ns() // 1000)

    def _route_writer(self):
        """The kernel interface routes are reconciled through: multipath routes as nexthop
        groups where the kernel has them (``nexthop_objects`` auto/on), classic otherwise."""
        cfg = self.cfg
        has_nh = nexthop.probe(self.kernel.sock)
        use_nh = cfg.multipath and cfg.nexthop_objects != "off" and has_nh
        if cfg.nexthop_objects == "on" and cfg.multipath and not has_nh:
            self.log.warning("kernel.no_nexthop_objects", fallback="classic multipath routes")
        qdiscs = kernel_emulation.probe()
        self.capabilities = {
            "nexthop_objects": has_nh,
            "multipath": "nexthop groups" if use_nh else ("classic" if cfg.multipath else "off"),
            "policy_rule": cfg.table != MAIN_TABLE,
            "emulation": {"tbf": qdiscs.tbf, "netem": qdiscs.netem, "nft": qdiscs.nft},
            "multicast_routing": os.path.exists("/proc/net/ip_mr_vif"),
        }
        self.log.info("kernel.capabilities", **self.capabilities)
        if use_nh:
            # Each overlay (port) allocates nexthop ids from its own range.
            self._nh_table = nexthop.NexthopRouteTable(cfg.table, cfg.route_protocol,
                                                       cfg.route_priority, id_base=cfg.port << 16,
                                                       id_count=1 << 16)
            return self._nh_table
        return self.kernel

    def _udp_socket(self) -> socket.socket:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_IP, IP_PKTINFO, 1)
        s.setsockopt(socket.IPPROTO_IP, socket.IP_TOS, IPTOS_PREC_INTERNETCONTROL)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        s.setblocking(False)
        s.bind(("0.0.0.0", self.cfg.port))
        return s

    async def _shutdown(self) -> None:
        loop = asyncio.get_running_loop()
        keep = self.cfg.keep_routes
        if self.node is not None and self.sock is not None and not keep:
            self.node.withdraw(loop.time())
            self._send_outbox()
        if self.reconciler is not None and not keep:
            res = self.reconciler.sync({})
            self.log.info("routes.withdrawn", deleted=res.deleted, errors=len(res.errors))
            if self.rules is not None:
                self.rules.remove()
            if self.loopback is not None:
                self.loopback.sync(set())
        elif self.reconciler is not None:
            self.log.info("routes.kept", routes=len(self.reconciler.installed),
                          reason="keep_routes: the next daemon takes them over")
        if self.emulated:
            removed = kernel_emulation.clear_all(self.cfg.port)
            self.log.info("link.emulation_cleared", removed=removed)
        if self.control_server is not None:
            await control.close(self.control_server, self.cfg.control_socket)
        if self.metrics_server is not None:
            self.metrics_server.close()
        self._close()
        self.notify.close()
        self.log.info("daemon.stopped")

    def _close(self) -> None:
        for obj in (self.sock, self.watch, self.kernel, self._nh_table, self.rules, self.loopback,
                    self.multicast):
            if obj is not None:
                try:
                    obj.close()
                except OSError:
                    pass

    # --- interfaces and neighbors ---------------------------------------------------------------

    def _refresh_interfaces(self) -> None:
        links = self.kernel.links()
        self.ifnames = {i: l.name for i, l in links.items()}
        self.addresses = self.kernel.local_addresses()
        if self.node is not None:
            now = asyncio.get_running_loop().time()
            for i, l in links.items():
                self.node.set_interface(i, l.up, now)
        self._link_state = {i: l.up for i, l in links.items()}

    def _local_end(self, peer: str) -> tuple[int, str] | None:
        """The (ifindex, local address) whose connected subnet holds ``peer``."""
        pa = ipaddress.IPv4Address(peer)
        wanted = set(self.cfg.local_addresses)
        best = None
        for ifindex, addr, plen in self.addresses:
            if plen == 32 or (wanted and addr not in wanted):
                continue
            if pa in ipaddress.IPv4Network(f"{addr}/{plen}", strict=False) and pa != ipaddress.IPv4Address(addr):
                if best is None or plen > best[2]:
                    best = (ifindex, addr, plen)
        return None if best is None else best[:2]

    def _resolve_neighbors(self, now: float) -> None:
        node = self.node
        for link in node.links.values():
            link.ifname = link.ifname or self.ifnames.get(link.ifindex, "")
        for peer in self.cfg.neighbors:
            end = self._local_end(peer)
            present = [k for k, l in node.links.items() if l.peer_addr == peer and l.configured]
            if end is None:
                for key in present:
                    node.remove_link(key, now)
                if peer not in self._unresolved_logged:
                    self._unresolved_logged.add(peer)
                    self.log.warning("neighbor.unresolved", neighbor=peer,
                                     reason="not in a connected subnet of any local interface")
                continue
            self._unresolved_logged.discard(peer)
            ifindex, local = end
            for key in present:
                if key != (ifindex, peer):
                    node.remove_link(key, now)
            link = node.add_link(ifindex, self.ifnames.get(ifindex, ""), local, peer, now)
            link.local_addr = local
            node.set_interface(ifindex, self._link_state.get(ifindex, True), now)

    # --- I/O handlers ---------------------------------------------------------------------------

    def _on_udp(self) -> None:
        loop = asyncio.get_running_loop()
        for _ in range(256):  # bounded, so the loop serves timers under a flood
            try:
                data, anc, _flags, addr = self.sock.recvmsg(65535, socket.CMSG_SPACE(12))
            except (BlockingIOError, InterruptedError):
                break
            except OSError as e:  # e.g. ICMP errors reported on the socket
                self.node.counters["recv_errors"] += 1
                self.log.debug("udp.recv_error", error=str(e))
                continue
            ifindex = 0
            for level, typ, cdata in anc:
                if level == socket.SOL_IP and typ == IP_PKTINFO and len(cdata) >= 12:
                    ifindex = struct.unpack_from("=i", cdata)[0]
            self.node.receive(ifindex, addr[0], data, loop.time())
        self._after_event()

    def _on_netlink(self) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        resolve = False
        for ev in self.watch.read():
            if isinstance(ev, nlevents.LinkEvent):
                if self._link_state.get(ev.ifindex) != ev.up:
                    self.log.info("interface.up" if ev.up else "interface.down",
                                  ifindex=ev.ifindex, ifname=ev.name)
                if self._link_state.get(ev.ifindex) != ev.up:
                    # Linux drops routes and nexthop objects through a link that goes down,
                    # without telling (see netlink.nexthop), and restores none on link up.
                    self.need_dump = True
                    self.synced_version = -1
                self._link_state[ev.ifindex] = ev.up
                self.ifnames[ev.ifindex] = ev.name
                self.node.set_interface(ev.ifindex, ev.up, now)
            elif isinstance(ev, nlevents.AddrEvent):
                resolve = True
            elif isinstance(ev, nlevents.RouteEvent):
                if (ev.deleted and ev.protocol == self.cfg.route_protocol
                        and ev.table == self.cfg.table and self.reconciler is not None
                        and ev.dst in self.reconciler.installed):
                    self.log.info("routes.drift", dst=ev.dst, change="deleted")
                    self.reconciler.installed.pop(ev.dst, None)
                    self.synced_version = -1
            elif isinstance(ev, nlevents.Overflow):
                self.log.warning("netlink.overflow", action="full resync")
                self._refresh_interfaces()
                resolve = True
                self.need_dump = True
                self.synced_version = -1
        if resolve:
            self.addresses = self.kernel.local_addresses()
            self._resolve_neighbors(now)
            if self.multicast is not None:
                self.multicast.refresh()
        self._after_event()

    def loop_time(self) -> float:
        return asyncio.get_running_loop().time()

    def _on_mroute(self) -> None:
        self.multicast.on_readable()
        self._after_event()

    def _send_outbox(self) -> None:
        loop = asyncio.get_running_loop()
        for link, pkt in self.node.outbox:
            emu = link.emulation
            if emu is None:
                self._send(link, pkt)
                continue
            now = loop.time()
            when = emu.schedule(now, len(pkt))
            if when is None:
                self.stats["emulated_drops"] += 1
            elif when <= now:
                self._send(link, pkt)
            else:
                loop.call_at(when, self._send, link, pkt)
        self.node.outbox.clear()

    def _send(self, link, pkt: bytes) -> None:
        pktinfo = struct.pack("=i4s4s", link.ifindex, socket.inet_aton(link.local_addr),
                              b"\0\0\0\0")
        try:
            self.sock.sendmsg([pkt], [(socket.SOL_IP, IP_PKTINFO, pktinfo)],
                              0, (link.peer_addr, self.cfg.port))
        except OSError as e:
            self.stats["send_errors"] += 1
            self.log.debug("udp.send_error", link=link.peer_addr, error=str(e))

    def _after_event(self) -> None:
        """Drain the engine's outputs, schedule a reconcile if routes moved, re-arm the timer."""
        loop = asyncio.get_running_loop()
        node = self.node
        self._send_outbox()
        now = loop.time()
        for name, fields in node.events:
            if "link" not in fields or self.log_limit.allow((name, fields["link"]), now):
                self.log.info(name, **fields)
        node.events.clear()
        if self.reconciler is not None and node.routes_version != self.synced_version \
                and not self.sync_pending:
            self.sync_pending = True
            loop.call_soon(self._reconcile)
        when = node.next_deadline()
        if self.hold:
            when = min(when, self.hold_until)
        if self.timer is not None:
            if self.timer.when() == when:
                return  # already armed for it: no new handle on the hot path
            self.timer.cancel()
        self.timer = loop.call_at(when, self._on_timer)

    def _on_timer(self) -> None:
        self.timer = None
        self.node.tick(asyncio.get_running_loop().time())
        self._after_event()

    # --- reconcile ------------------------------------------------------------------------------

    def _hold_over(self, now: float) -> bool:
        if now >= self.hold_until:
            return True
        # Every configured neighbor that can come up is up: a link whose interface is down
        # (carrier lost, admin down) cannot, and waiting for it would freeze this node's
        # routes for the whole grace time.
        configured = [l for l in self.node.links.values()
                      if l.configured and self._link_state.get(l.ifindex, True)]
        return (bool(configured) and all(l.up for l in configured)
                and now - self.last_routes_change >= SETTLE_S)

    def _reconcile(self, full: bool = False) -> None:
        self.sync_pending = False
        loop = asyncio.get_running_loop()
        now = loop.time()
        node = self.node
        version = node.routes_version
        desired = node.routes()
        if desired != self._last_desired:
            self.last_routes_change = now
            self._last_desired = desired
        if self.hold and self._hold_over(now):
            self.hold = False
            self.log.info("routes.restart_hold_over", after_s=round(now - (self.hold_until - self.cfg.startup_grace_s), 3))
        t0 = time.perf_counter()
        full, self.need_dump = full or self.need_dump, False
        try:
            res = self.reconciler.sync(desired, installed=None if full else self.reconciler.installed,
                                       allow_delete=not self.hold,
                                       allow_replace_existing=not self.hold)
        except OSError as e:
            self.log.error("routes.sync_failed", error=str(e))
            loop.call_later(1.0, self._reconcile)
            return
        self.stats["reconciles"] += 1
        self.stats["routes_added"] += res.added
        self.stats["routes_replaced"] += res.replaced
        self.stats["routes_deleted"] += res.deleted
        self.stats["route_errors"] += len(res.errors)
        if res.added or res.replaced or res.deleted or res.errors:
            self.log.info("routes.synced", added=res.added, replaced=res.replaced,
                          deleted=res.deleted, errors=len(res.errors), total=len(desired),
                          ms=round((time.perf_counter() - t0) * 1000, 3), full=full)
        for err in res.errors[:5]:
            self.log.warning("routes.write_failed", dst=err.route.dst, op=err.op, error=err.message)
        self.synced_version = -1 if (res.errors or self.hold) else version
        if self.multicast is not None:
            self.multicast.refresh()
        if res.errors:
            loop.call_later(1.0, self._after_event)  # failed writes retry on the next pass

    def _periodic_reconcile(self) -> None:
        loop = asyncio.get_running_loop()
        self._reconcile(full=True)
        loop.call_later(self.cfg.reconcile_interval_s, self._periodic_reconcile)

    # --- systemd: status, watchdog, reload --------------------------------------------------------

    def _status_line(self) -> str:
        node = self.node
        up = sum(1 for l in node.links.values() if l.up)
        installed = len(self.reconciler.installed) if self.reconciler is not None else 0
        hold = ", restart hold" if self.hold else ""
        return (f"{up}/{len(node.links)} neighbors up, {len(node.lsdb)} nodes, "
                f"{installed} routes installed{hold}")

    def _heartbeat(self) -> None:
        loop = asyncio.get_running_loop()
        for (event, link), n in self.log_limit.summaries(loop.time()):
            self.log.warning("log.suppressed", suppressed_event=event, link=link, count=n,
                             window_s=self.log_limit.window, hint="the link is flapping")
        status = self._status_line()
        if status != self._last_status:
            self.notify.status(status)
            self._last_status = status
        if self.notify.watchdog_s:
            self.notify.watchdog()
        period = HEARTBEAT_S if not self.notify.watchdog_s else min(HEARTBEAT_S,
                                                                   self.notify.watchdog_s / 2)
        loop.call_later(period, self._heartbeat)

    def _reload(self) -> None:
        """SIGHUP: re-read the configuration and apply what can change without a restart
        (neighbors, metric, timers, prefixes, groups of the config, multipath, log level), keeping
        every route that stays valid."""
        import dataclasses

        from spines_kr.config import ConfigError

        if self.reload_config is None:
            self.log.warning("config.reload_ignored", reason="no configuration to re-read")
            return
        self.notify.send("RELOADING=1",
                         f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}")
        try:
            new = self.reload_config()
        except ConfigError as e:
            self.log.error("config.reload_failed", error=str(e), action="kept the running config")
            self.notify.ready(self._status_line())
            return
        old = self.cfg
        kept = [k for k in RESTART_ONLY if getattr(old, k) != getattr(new, k)]
        new = dataclasses.replace(new, **{k: getattr(old, k) for k in kept})
        changed = [f.name for f in dataclasses.fields(new) if getattr(old, f.name) != getattr(new, f.name)]
        self.cfg = new
        now = asyncio.get_running_loop().time()
        node = self.node
        node.reconfigure(Params.from_config(new, node.p.prefsrc), now)
        for key, link in list(node.links.items()):
            if link.configured and link.peer_addr not in new.neighbors:
                node.remove_link(key, now)
        self._resolve_neighbors(now)
        for g in set(old.groups) - set(new.groups):
            node.leave(int(ipaddress.IPv4Address(g)), now)
        for g in set(new.groups) - set(old.groups):
            node.join(int(ipaddress.IPv4Address(g)), now)
        self._sync_loopback()
        if node.auth is not None and new.key_file:
            try:
                node.auth.keys, node.auth.send_id = load_key_file(new.key_file)
            except KeyFileError as e:
                self.log.error("config.reload_failed", error=str(e), action="kept the old keys")
        if new.log_level != old.log_level:
            self.log = dlog.setup(new.log_level, new.log_format, new.log_file)
        self.log.info("config.reloaded", changed=changed, needs_restart=kept)
        self._after_event()
        self.notify.ready(self._status_line())

    # --- groups (control socket) ----------------------------------------------------------------

    def _delivered_locally(self) -> set[str]:
        """Addresses this node puts on lo: its anycast groups at level 1 (not at level 3,
        Spines' "without edge"), mapped when Spines' mappings are on."""
        levels = set(self.cfg.kernel_levels)
        if 1 not in levels or 3 in levels:
            return set()
        return {grp.mapped_dst(g, self.cfg.spines_mappings).split("/")[0]
                for g in self.node.groups
                if grp.is_anycast(g) and g != self.node.p.gateway_group}

    def _sync_loopback(self) -> None:
        if self.loopback is None:
            return
        try:
            added, removed = self.loopback.sync(self._delivered_locally())
        except OSError as e:
            self.log.error("groups.loopback_failed", error=str(e))
            return
        if added or removed:
            self.log.info("groups.loopback", added=added, removed=removed)

    def join(self, group: str, joined: bool = True) -> dict:
        try:
            g = ipaddress.IPv4Address(group)
        except ValueError:
            raise ValueError(f"'{group}' is not an IPv4 address") from None
        if not grp.is_group(g):
            raise ValueError(f"{g} is neither a multicast (224.0.0.0/4) nor an anycast "
                             f"(240.0.0.0/4) group")
        now = asyncio.get_running_loop().time()
        changed = (self.node.join if joined else self.node.leave)(int(g), now)
        self._sync_loopback()
        self._after_event()
        return {"group": str(g), "member": joined, "changed": changed}

    # --- setlink (control socket) ---------------------------------------------------------------

    def setlink(self, req: dict) -> dict:
        """Emulate bandwidth/latency/loss/burst on the link(s) from SOURCE (this node) to DEST.

        Raises ValueError with a message for a person when the request cannot be applied.
        """
        if not self.cfg.accept_link_commands:
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
        source, dest = str(req.get("source", "")), str(req.get("dest", ""))
        node = self.node
        mine = {self.cfg.logical_id} | {l.local_addr for l in node.links.values()}
        links = [l for l in node.links.values()
                 if dest in (l.peer_addr, _ip_or_none(l.peer_id))]
        if source not in mine:
            if dest in mine:
                raise ValueError(f"setlink: SOURCE {source} is not this node ({self.cfg.logical_id}); "
                                 f"a link is set at its source: run setlink on {source}'s daemon")
            raise ValueError(f"setlink: SOURCE {source} is not this node ({self.cfg.logical_id})")
        links = [l for l in links if source in (self.cfg.logical_id, l.local_addr)]
        if not links:
            raise ValueError(f"setlink: no link from {source} to {dest} "
                             f"(neighbors: {', '.join(sorted(l.peer_addr for l in node.links.values())) or 'none'})")
        result = []
        for link in links:
            emu = LinkEmulation(**values)
            kernel = self._kernel_emulation(link, values, emu)
            link.emulation = emu if emu.active else None
            result.append({"link": f"{link.ifname}:{link.peer_addr}", "daemon": "applied" if emu.active
                           else "cleared", "kernel": kernel})
            self.log.info("link.emulation", link=link.peer_addr, ifname=link.ifname, **values,
                          kernel=kernel)
        return {"links": result}

    def _kernel_emulation(self, link, values: dict, emu: LinkEmulation) -> str:
        """Shape the kernel's traffic over the link device (tc/nftables: 10-20 ms, run on the
        loop), and leave to the kernel what it already applies to our own packets."""
        self.emulated = True
        applied = kernel_emulation.apply(link.ifindex, link.ifname or self.ifnames.get(link.ifindex, ""),
                                         instance=self.cfg.port, **values)
        for param in applied.daemon_covered:  # e.g. a tbf also paces our hellos
            setattr(emu, EMULATION_FIELDS[param], 0.0)
        return applied.summary

    # --- status (control socket) ----------------------------------------------------------------

    def status(self) -> dict:
        import psutil

        proc = psutil.Process()
        now = asyncio.get_running_loop().time()
        node = self.node
        links = node.links.values()
        return {
            "logical_id": self.cfg.logical_id, "port": self.cfg.port, "metric": self.cfg.metric,
            "kernel_levels": list(self.cfg.kernel_levels), "pid": os.getpid(),
            "uptime_s": round(time.monotonic() - self.started, 3),
            "rss_bytes": proc.memory_info().rss, "cpu_s": round(sum(proc.cpu_times()[:2]), 3),
            "neighbors_up": sum(1 for l in links if l.up), "links": len(node.links),
            "nodes": len(node.lsdb), "routes": len(node.routes()),
            "restart_hold": self.hold, "table": self.cfg.table,
            "capabilities": self.capabilities,
            "auth": ("none (UNAUTHENTICATED: set key_file)" if node.auth is None
                     else f"hmac-sha256, key {node.auth.send_id}, {len(node.auth.keys)} accepted"),
            "route_protocol": self.cfg.route_protocol,
            "counters": {**dict(sorted(node.counters.items())), **self.stats},
            "lsa_seq": node.seq, "now": round(now, 3),
        }


EMULATION_FIELDS = {"bandwidth": "bandwidth_kbps", "latency": "latency_ms", "loss": "loss_pct",
                    "burst": "burst_pct"}


def _ip_or_none(n: int | None) -> str | None:
    return None if n is None else str(ipaddress.IPv4Address(n))


def run(cfg: Config, reload_config=None) -> int:
    try:
        return asyncio.run(Daemon(cfg, reload_config).run())
    except KeyboardInterrupt:
        return ExitCode.OK
