"""The daemon process: the loop, the lifecycle, and the wiring of its parts.

Entry point: ``run(cfg, caps, plan, reload_config) -> int`` (exit status, ``ExitCode``).

Parts (each owns its state and its next deadline; the loop, ``daemon.loop``, sleeps until the
earliest):
    node         the protocol engine (daemon.node; pure, time passed in): hellos, liveness,
                 flooding, routes.  Its deadline: ``node.next_deadline()``
    overlay      the UDP socket (daemon.overlay): datagrams in, packets out on their link
    interfaces   the interface table (daemon.interfaces), current from netlink events
    kernel_sync  desired routes -> our kernel slot (daemon.kernelsync), in the worker thread,
                 with the restart hold and retry backoff
    membership   this node's own groups and their loopback addresses (daemon.membership)
    forwarding   client messages between daemons (dataplane.forward): the data port, read at
                 once (data is latency-bound, unlike the control plane's batched reads)
    tunnels      virtual links to neighbors that share no subnet, as kernel tunnels it makes,
                 pins the underlay routes of and removes (daemon.tunnels); their links join
                 the engine like direct ones (daemon.neighborset)
    neighbors    which links the engine has: configured, run-time and discovered neighbors
                 resolved against the interfaces, and the tunnels' links (daemon.neighborset)
    discovery    -d: daemons of the overlay found by authenticated link-local multicast
                 announcements on each LAN (daemon.discovery); found ones become links
    sessions     libspines client sessions (dataplane.sessions)
    control      the control socket (daemon.control); Prometheus (daemon.prometheus), the
                 multicast part (daemon.multicast): all through ``commands`` (daemon.commands)
    slot         the lock on our (table, protocol, priority) slot (daemon.slot)
    service      systemd: readiness, status, watchdog (daemon.service)
Data flow: measure -> flood -> compute -> reconcile.  After every batch of input the daemon
drains the engine's outbox and events and pokes the kernel sync (``after_event``).

The overlay socket is read in batches at the engine's ticks, not when a datagram arrives: each
datagram carries its kernel arrival time (daemon.overlay), so RTT and liveness are exact, and
an idle router wakes once per hello round instead of once per packet (this VM's floor is about
60-100 µs of CPU per wakeup).  A datagram waits at most until the next tick (the hello round,
~51 ms at default timers; MAX_READ_GAP at most), like OSPF implementations' flood pacing;
a batch that hits the read limit is followed by another at once.

Start: everything that can refuse does so before the kernel is touched -- the CLI checked the
configuration, the key file, the log file and the kernel's features (``daemon.features``); here
the UDP port, the slot, the control socket path, and the addresses (a ``-I`` address must be
local, a neighbor must not be).  A refusal is one line on stderr and in the log, exit 2.
Then: policy rule, the dump of our slot (routes found are held: graceful restart), loopback
addresses, multicast.  Clean exit (SIGTERM, SIGINT, -x): flood an LSA without links, withdraw our
routes, remove the rule, addresses and socket files (or keep routes with keep_routes).

Errors at run time: an exception while handling one packet, event or timer is counted
(``errors.<site>`` in ``show status``), logged (rate-limited) and the loop goes on; the engine's
timer is re-armed whatever happened.  The systemd watchdog is fed only while the engine's timers
really run (a tick completed within ``STALL_S``) and the kernel worker is not stuck.
"""

from __future__ import annotations

import dataclasses
import enum
import errno
import random
import signal
import sys
import time
import traceback

from spines_kr.config import RESTART_ONLY, Config
from spines_kr.daemon import logging as dlog
from spines_kr.daemon.commands import Commands
from spines_kr.daemon.features import MAIN_TABLE, Plan
from spines_kr.daemon.interfaces import Interfaces
from spines_kr.daemon.kernelsync import KernelSync
from spines_kr.daemon.loop import Deadline, Loop
from spines_kr.daemon.membership import Membership
from spines_kr.daemon.neighborset import NeighborSet
from spines_kr.daemon.node import Node, Params
from spines_kr.daemon.overlay import OverlaySocket
from spines_kr.daemon.service import Service
from spines_kr.keys import KeyFileError, load_key_file
from spines_kr.wire.auth import KeyRing

MAX_READ_GAP = 0.1  # s: the overlay socket is read at least this often (engine ticks: 18/s)
STALL_S = 5.0  # no engine tick for this long: the engine is stuck, the watchdog is not fed
WORKER_STALL_S = 60.0  # one kernel job this long: stuck (netlink acks time out at 30 s)
EXIT_TIMEOUT_S = 10.0


class ExitCode(enum.IntEnum):
    OK = 0
    RUNTIME = 1
    USAGE = 2


class StartError(Exception):
    """The daemon cannot start; one line for a person, and the exit status."""

    def __init__(self, message: str, code: int = ExitCode.USAGE) -> None:
        super().__init__(message)
        self.code = code


class Daemon:
    def __init__(self, cfg: Config, caps, plan: Plan, reload_config=None,
                 loop: Loop | None = None) -> None:
        self.cfg = cfg
        self.caps = caps
        self.plan = plan
        self.reload_config = reload_config  # () -> Config, re-reading the file (SIGHUP)
        self.loop = loop or Loop()
        self.service: Service | None = None
        self.membership: Membership | None = None
        self.log = None
        self.started = time.monotonic()
        self.node: Node | None = None
        self.overlay: OverlaySocket | None = None
        self.interfaces: Interfaces | None = None
        self.kernel_sync: KernelSync | None = None
        self.slot = None
        self.rules = None
        self.multicast = None
        self.forwarding = None
        self.sessions = None
        self.hostmcast = None
        self.control = None
        self.metrics_server = None
        self.commands = Commands(self)
        self.node_deadline: Deadline | None = None
        self.counters: dict[str, int] = {"refused.own_groups": 0}
        self.tunnels = None  # daemon.tunnels.Tunnels
        self.discovery = None  # daemon.discovery.Discovery
        self.neighbors: NeighborSet | None = None  # which links the engine has
        self.emulated = False  # setlink touched qdiscs/nftables: clear them at exit
        self.log_limit = dlog.RateLimiter()  # per (event, key): no log storm on a flapping link
        self.last_tick = 0.0
        self.last_read = 0.0
        self._stopping = False

    # --- lifecycle ------------------------------------------------------------------------------

    def run(self) -> int:
        cfg = self.cfg
        self.log = dlog.setup(cfg.log_level, cfg.log_format, cfg.log_file)
        self.loop.on_error = self._on_error
        self.service = Service(self.loop, self.log, self.log_limit, self._status_line,
                               self.healthy)
        try:
            self._open()
        except StartError as e:
            return self._refuse(str(e), e.code)
        except KeyFileError as e:
            return self._refuse(str(e), ExitCode.USAGE)
        except OSError as e:
            return self._refuse(e.strerror or str(e), ExitCode.RUNTIME)
        loop = self.loop
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop)
        loop.add_signal_handler(signal.SIGHUP, self._reload)
        self.log.info("daemon.started", logical_id=cfg.logical_id, port=cfg.port,
                      metric=cfg.metric, kernel_levels=list(cfg.kernel_levels),
                      neighbors=list(cfg.neighbors), table=cfg.table,
                      protocol=cfg.route_protocol,
                      hold=bool(self.kernel_sync and self.kernel_sync.hold),
                      start_ms=round((time.monotonic() - self.started) * 1000, 1))
        if cfg.exit_after is not None:
            loop.call_later(cfg.exit_after, self.stop)
        self.after_event()
        self.service.ready()
        self.service.start()
        try:
            loop.run()
        finally:
            self.log.info("daemon.stopping")
            self.service.stopping()
            self._shutdown()
            loop.close()
        return ExitCode.OK

    def stop(self) -> None:
        self._stopping = True
        self.loop.stop()

    def _refuse(self, message: str, code: int) -> int:
        self.log.error("daemon.start_failed", error=message)
        print(f"spines-kr: error: daemon: {message}", file=sys.stderr)
        self._close()
        self.loop.close()
        return code

    def _open(self) -> None:
        """Open the parts: every refusal first, then what changes the kernel."""
        from spines_kr.netlink import events as nlevents
        from spines_kr.netlink.kernel import RouteTable

        cfg, loop = self.cfg, self.loop
        self.log.info("kernel.capabilities", summary=self.caps.summary(), **self.plan.to_json())
        for warning in self.plan.warnings:
            self.log.warning("kernel.fallback", reason=warning)
        try:
            self.overlay = OverlaySocket(cfg.port, loop)
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise StartError(f"UDP port {cfg.port} is in use (another spines-kr daemon of "
                                 f"this overlay on this host?)") from None
            raise
        if cfg.kernel_routing:
            from spines_kr.daemon.slot import SlotLock, SlotTaken

            self.slot = SlotLock(cfg.table, cfg.route_protocol, cfg.route_priority,
                                 {"port": cfg.port, "logical_id": cfg.logical_id})
            try:
                self.slot.acquire()
            except SlotTaken as e:
                raise StartError(str(e)) from None
            loop.add_reader(self.slot.fileno(), self.slot.on_readable)
        self.interfaces = Interfaces(RouteTable(cfg.table, cfg.route_protocol, cfg.route_priority),
                                     nlevents.KernelWatch())
        self.interfaces.refresh()
        self._check_addresses()
        from spines_kr.daemon.control import ControlInUse, ControlServer

        self.control = ControlServer(loop, self.commands, cfg.control_socket, cfg.control_group)
        try:
            self.control.open()
        except ControlInUse as e:
            self.control = None
            raise StartError(str(e)) from None
        except OSError as e:
            self.control = None
            raise StartError(f"control socket {cfg.control_socket}: {e.strerror or e}") from None
        prefsrc = None
        if cfg.prefsrc:
            if self.interfaces.owner(cfg.logical_id) is not None:
                prefsrc = cfg.logical_id
            else:
                self.log.warning("daemon.no_prefsrc", logical_id=cfg.logical_id,
                                 hint="put the logical ID on lo so routes carry it as source")
        now = loop.time()
        # Sequence numbers start from the wall clock (ms), so a restarted node's first LSA is
        # newer than any of its previous life (the jump-past rule in Node covers clock resets).
        self.node = Node(Params.from_config(cfg, prefsrc), now,
                         initial_seq=int(time.time() * 1000), rng=random.Random(),
                         auth=self._keyring())
        self.node_deadline = Deadline(loop, self._on_timer)
        self.last_tick = now
        for ifindex, up in self.interfaces.up.items():
            self.node.set_interface(ifindex, up, now)
        loop.add_reader(self.interfaces.fileno(), self._on_netlink)
        # --- from here on the kernel changes ---
        if cfg.kernel_routing:
            self._open_kernel_sync()
        self.neighbors = NeighborSet(cfg, self.node, self.interfaces, self.log)
        self._open_tunnels()
        self.neighbors.resolve(now)
        if cfg.discovery:
            self._open_discovery()
        loopback = None
        if cfg.kernel_levels:
            from spines_kr.netlink.addresses import LoopbackAddresses

            loopback = LoopbackAddresses(cfg.route_protocol)
        self.membership = Membership(cfg, self.node, loopback, self.log, self.log_limit,
                                     self.counters)
        if self.plan.multicast == "kernel":
            self._open_multicast()
        if cfg.data_plane:
            self._open_data_plane()
        for g in cfg.groups:
            self.membership.join(g, True, now, origin="config")
        if cfg.metrics_listen:
            from spines_kr.daemon import prometheus

            try:
                self.metrics_server = prometheus.serve(loop, self.commands, cfg.metrics_listen)
            except OSError as e:
                raise StartError(f"metrics_listen {cfg.metrics_listen}: {e.strerror or e}",
                                 ExitCode.RUNTIME) from None

    def _update_prefsrc(self) -> None:
        """Routes carry the logical ID as preferred source while it is on this host: taken off
        lo, the kernel would refuse every write ("Invalid prefsrc address"), so routes go on
        without it until it is back."""
        cfg = self.cfg
        want = cfg.logical_id if cfg.prefsrc and self.interfaces.owner(cfg.logical_id) else None
        if want != self.node.p.prefsrc:
            self.node.set_prefsrc(want)
            (self.log.info if want else self.log.warning)(
                "routes.prefsrc", prefsrc=want, logical_id=cfg.logical_id,
                reason="the logical ID is back on this host" if want else
                "the logical ID left this host; routes go on without a preferred source")

    def _check_addresses(self) -> None:
        """-I addresses must be local; a neighbor must not be one of ours (usage errors)."""
        cfg, ifs = self.cfg, self.interfaces
        for a in cfg.local_addresses:
            if ifs.owner(a) is None:
                raise StartError(f"local_addresses: {a} is not an address of this host (-I names "
                                 f"an address to run links from)")
        for peer in cfg.neighbors:
            owner = ifs.owner(peer)
            if owner is not None:
                raise StartError(f"neighbors: {peer} is an address of this host (on {owner}), "
                                 f"not a neighbor")

    def _open_kernel_sync(self) -> None:
        from spines_kr.netlink.reconcile import Reconciler

        cfg = self.cfg
        if self.plan.policy_rule:
            from spines_kr.netlink.rules import RuleTable

            # Our own table only takes effect through a policy rule of ours.
            self.rules = RuleTable(cfg.table, cfg.rule_priority, cfg.route_protocol)
            for change in self.rules.ensure():
                self.log.info("rules.changed", change=change)
        if self.plan.multipath == "nexthop groups":
            from spines_kr.netlink.nexthop import NexthopRouteTable

            # Each overlay (port) allocates nexthop ids from its own range.
            writer = NexthopRouteTable(cfg.table, cfg.route_protocol, cfg.route_priority,
                                       id_base=cfg.port << 16, id_count=1 << 16)
        else:
            from spines_kr.netlink.kernel import RouteTable

            writer = RouteTable(cfg.table, cfg.route_protocol, cfg.route_priority)
        self.kernel_sync = KernelSync(
            Reconciler(writer), self.loop, self.log, desired=self.node.routes,
            version=lambda: self.node.routes_version, neighbors_ready=self._neighbors_ready,
            interval=cfg.reconcile_interval_s, grace=cfg.startup_grace_s,
            on_synced=self._after_sync)
        self.kernel_sync.start(writer.dump())

    def _open_tunnels(self) -> None:
        from spines_kr.daemon.tunnels import PORT_OFFSET, Tunnels

        auth = self.node.auth.fork() if self.node.auth is not None else None
        self.tunnels = Tunnels(self.loop, self.cfg, self.caps, self.log, self._tunnels_changed,
                               self.neighbors.up_on)
        self.neighbors.tunnels = self.tunnels
        try:
            swept = self.tunnels.open(auth)
        except OSError as e:
            self.tunnels = self.neighbors.tunnels = None
            if e.errno == errno.EADDRINUSE:
                raise StartError(f"UDP port {self.cfg.port + PORT_OFFSET} (tunnel negotiation: "
                                 f"overlay port + {PORT_OFFSET}) is in use") from None
            raise
        for what in swept:
            self.log.info("tunnel.stale_removed", what=what)

    def _open_discovery(self) -> None:
        from spines_kr.daemon.discovery import PORT_OFFSET, Discovery

        auth = self.node.auth.fork() if self.node.auth is not None else None
        self.discovery = Discovery(self.loop, self.cfg, self.log, auth, self.interfaces,
                                   self._discovered)
        try:
            self.discovery.open()
        except OSError as e:
            self.discovery = None
            raise StartError(f"discovery port {self.cfg.port + PORT_OFFSET}: "
                             f"{e.strerror or e}") from None

    def _tunnels_changed(self) -> None:
        try:
            self.neighbors.resolve_tunnel_links(self.loop.time())
            if self.discovery is not None:
                self.discovery.sync()
        finally:
            self.after_event()

    def _discovered(self, ifindex: int, address: str, alive: bool) -> None:
        self.neighbors.discovered(ifindex, address, alive, self.loop.time())
        self.after_event()

    def change_neighbor(self, address: str, kind: str | None, add: bool) -> bool:
        """A neighbor added or removed at run time (commands.neighbor)."""
        changed = self.neighbors.change(address, kind, add, self.loop.time())
        self.after_event()
        return changed

    def _open_data_plane(self) -> None:
        from spines_kr.dataplane.forward import Forwarding

        auth = self.node.auth.fork() if self.node.auth is not None else None
        self.forwarding = Forwarding(self.loop, self.cfg, self.node, self.interfaces,
                                     self.kernel_sync, auth, self.log)
        try:
            self.forwarding.open()
        except OSError as e:
            self.forwarding = None
            raise StartError(f"data port {self.cfg.port + 1}: {e.strerror or e} (another "
                             f"daemon of this overlay on this host?)") from None
        self._open_sessions()
        if self.plan.multicast == "dataplane":
            from spines_kr.dataplane.hostmcast import HostMulticast

            self.hostmcast = HostMulticast(self.loop, self.commands, self.forwarding, self.log)
            self.forwarding.attach(hosts=self.hostmcast)
            self.hostmcast.sync()

    def _open_sessions(self) -> None:
        """Client sessions (dataplane.sessions)."""
        from spines_kr.dataplane.sessions import Sessions, SessionsUnavailable

        self.sessions = Sessions(self.loop, self.commands, self.cfg, self.log,
                                 self.forwarding.send)
        self.forwarding.attach(sessions=self.sessions)
        try:
            self.sessions.open()
        except SessionsUnavailable as e:  # (its message names the path)
            raise StartError(f"client sessions: {e}") from None
        except OSError as e:
            raise StartError(f"client sessions ({self.cfg.ipc_path}): {e.strerror or e}") \
                from None
        self._open_streams()

    def _open_streams(self) -> None:
        """Reliable stream sessions (dataplane.streams) between the sessions and the data
        plane: segments go out as messages, back-pressure from the reliable data links."""
        from spines_kr.dataplane.streams import Streams

        fwd = self.forwarding
        streams = Streams(self.loop, self.log, fwd.send, self.sessions.my_id,
                          mss=fwd.fragment_size, congested=lambda: fwd.links.congested)
        streams.attach(self.sessions)
        self.sessions.streams = streams

    def _open_multicast(self) -> None:
        from spines_kr.daemon.multicast import Multicast
        from spines_kr.netlink.mroute import MrouteError, MulticastRouter

        cfg = self.cfg
        try:
            router = MulticastRouter(None if cfg.table == MAIN_TABLE else cfg.table,
                                     protocol=cfg.route_protocol)
        except MrouteError as e:
            raise StartError(f"multicast routing (-k 2): {e.strerror or e}",
                             ExitCode.RUNTIME) from None
        self.multicast = Multicast(self.commands, router)
        self.multicast.sync_vifs()
        self.loop.add_reader(router.fileno(), self._on_mroute)

    def _keyring(self) -> KeyRing | None:
        if self.cfg.auth == "none":
            self.log.warning("auth.disabled", hint="anyone who can reach the overlay port can "
                             "rewrite this router's routes; set key_file")
            return None
        keys, send_id = load_key_file(self.cfg.key_file)
        # boot: microseconds of wall clock, so a restarted daemon's counters are fresh
        return KeyRing(keys, send_id, boot=time.time_ns() // 1000)

    def _shutdown(self) -> None:
        keep = self.cfg.keep_routes
        node, loop = self.node, self.loop
        if node is not None and self.overlay is not None and not keep:
            node.withdraw(loop.time())
            self._send_outbox()
        ks = self.kernel_sync
        if ks is not None and not keep:
            box: list = []
            ks.withdraw(lambda result, error: box.append((result, error)))
            loop.run_for(EXIT_TIMEOUT_S, until=lambda: bool(box))
            if box and box[0][1] is None:
                res = box[0][0]
                self.log.info("routes.withdrawn", deleted=res.deleted, errors=len(res.errors))
            else:
                self.log.error("routes.withdraw_failed",
                               error=repr(box[0][1]) if box else "the kernel did not answer")
            if self.rules is not None:
                try:
                    self.rules.remove()
                except OSError as e:
                    self.log.error("rules.remove_failed", error=str(e))
            if self.membership is not None:
                self.membership.clear()
        elif ks is not None:
            self.log.info("routes.kept", routes=len(ks.installed),
                          reason="keep_routes: the next daemon takes them over")
        if self.emulated:
            from spines_kr.netlink import emulation as kernel_emulation

            removed = kernel_emulation.clear_all(self.cfg.port)
            self.log.info("link.emulation_cleared", removed=removed)
        self._close()
        self.service.close()
        self.log.info("daemon.stopped")

    def _close(self) -> None:
        if self.sessions is not None and self.sessions.streams is not None:
            self.sessions.streams.close()  # (its RSTs leave before the data port closes)
        for part in (self.hostmcast, self.sessions, self.forwarding, self.control,
                     self.metrics_server, self.discovery):
            if part is not None:
                part.close()
        self.hostmcast = self.sessions = self.forwarding = None
        self.control = self.metrics_server = self.discovery = None
        if self.tunnels is not None:
            try:
                self.tunnels.close()  # every tunnel, endpoint route and wireguard-go we made
            except OSError as e:
                self.log.error("tunnel.cleanup_failed", error=e.strerror or str(e))
            self.tunnels = None
            if self.neighbors is not None:
                self.neighbors.tunnels = None
        for obj in (self.overlay, self.interfaces, self.kernel_sync and
                    self.kernel_sync.reconciler.kernel, self.rules, self.membership,
                    self.multicast, self.slot):
            if obj:
                try:
                    obj.close()
                except OSError:
                    pass

    # --- errors ---------------------------------------------------------------------------------

    def _on_error(self, site: str, exc: BaseException) -> None:
        now = self.loop.time()
        if self.log_limit.allow(("daemon.error", site), now):
            tb = traceback.extract_tb(exc.__traceback__)
            where = f"{tb[-1].filename.rsplit('/', 1)[-1]}:{tb[-1].lineno}" if tb else "?"
            self.log.error("daemon.error", site=site, error=f"{type(exc).__name__}: {exc}",
                           at=where, count=self.loop.errors[site],
                           action="input or timer skipped; the loop goes on")

    # --- neighbors ------------------------------------------------------------------------------

    def _neighbors_ready(self) -> bool:
        """Every configured neighbor that can come up is up and has sent us its database (at
        least one update since the link came up: a neighbor always has its own LSA to send).
        A link whose interface is down (carrier lost, admin down) cannot come up, and waiting
        for it would freeze this node's routes for the whole grace time."""
        configured = [l for l in self.node.links.values()
                      if l.configured and self.interfaces.up.get(l.ifindex, True)]
        return bool(configured) and all(l.up and l.updates_in for l in configured)

    # --- input ----------------------------------------------------------------------------------

    def _read_overlay(self, now: float) -> bool:
        """Hand every pending datagram to the engine; True when more may be waiting."""
        node = self.node
        batch = self.overlay.receive()
        links = node.links
        for ifindex, src, data, at in batch:
            link = links.get((ifindex, src))
            if link is not None and link.rx_emulation is not None:  # setlink at this end
                when = link.rx_emulation.schedule(at, len(data))
                if when is None:
                    self.overlay.counters["emulated_rx_drops"] += 1
                    continue
                if when > now:
                    self.loop.call_at(when, self._receive_later, ifindex, src, data, when)
                    continue
            self._receive(ifindex, src, data, now, at)
        self.last_read = now
        return len(batch) >= 512

    def _receive(self, ifindex: int, src: str, data: bytes, now: float, at: float) -> None:
        try:
            self.node.receive(ifindex, src, data, now, at)
        except Exception as e:  # noqa: BLE001 - one packet must not stop the others
            self.node.counters["dropped.error"] += 1
            self._on_error("node.receive", e)

    def _receive_later(self, ifindex: int, src: str, data: bytes, at: float) -> None:
        try:
            self._receive(ifindex, src, data, self.loop.time(), at)
        finally:
            self.after_event()

    def _on_read_more(self) -> None:
        try:
            if self._read_overlay(self.loop.time()):
                self.loop.call_soon(self._on_read_more)
        finally:
            self.after_event()

    def _on_netlink(self) -> None:
        now = self.loop.time()
        try:
            ch = self.interfaces.read()
            ks = self.kernel_sync
            for ifindex, name, up in ch.links:
                self.log.info("interface.up" if up else "interface.down", ifindex=ifindex,
                              ifname=name)
                self.node.set_interface(ifindex, up, now)
                if ks is not None:
                    # Linux drops routes and nexthop objects through a link that goes down,
                    # without telling (see netlink.nexthop), and restores none on link up.
                    ks.drift("link state")
            if ks is not None:
                for dst, table, protocol in ch.deleted_routes:
                    if protocol == self.cfg.route_protocol and table == self.cfg.table:
                        ks.route_deleted(dst)
                if ch.overflow:
                    self.log.warning("netlink.overflow", action="full resync")
                    ks.drift("netlink overflow")
            if self.tunnels is not None and (ch.links or ch.addresses or any(
                    protocol != self.cfg.route_protocol for _d, _t, protocol in ch.deleted_routes)):
                self.tunnels.underlay_changed()
            if self.discovery is not None and (ch.links or ch.addresses):
                self.discovery.sync()
            if ch.addresses or ch.links:
                if ch.addresses:
                    self._update_prefsrc()
                    self.neighbors.resolve(now)
                if self.multicast is not None:
                    self.multicast.refresh()
                if self.hostmcast is not None:
                    self.hostmcast.sync()
        finally:
            self.after_event()

    def _on_mroute(self) -> None:
        try:
            self.multicast.on_readable()
        finally:
            self.after_event()

    def _on_timer(self) -> None:
        now = self.loop.time()
        try:
            if self._read_overlay(now):
                self.loop.call_soon(self._on_read_more)
            self.node.tick(now)
            self.last_tick = now
        finally:
            self.after_event()

    # --- output ---------------------------------------------------------------------------------

    def _send_outbox(self) -> None:
        node = self.node
        send = self.overlay.send
        for link, pkt in node.outbox:
            send(link, pkt)
        node.outbox.clear()

    def after_event(self) -> None:
        """Drain the engine's outputs, poke the kernel sync, re-arm the engine's deadline."""
        node = self.node
        self._send_outbox()
        now = self.loop.time()
        neighbors_moved = False
        for name, fields in node.events:
            if name in ("neighbor.up", "neighbor.down"):
                neighbors_moved = True
            key = fields.get("link") or fields.get("limit")
            if key is None or self.log_limit.allow((name, key), now):
                self.log.info(name, **fields)
        node.events.clear()
        ks = self.kernel_sync
        if ks is not None:
            ks.poke()
            if neighbors_moved:
                ks.neighbors_changed()
        self.node_deadline.set(min(node.next_deadline(), self.last_read + MAX_READ_GAP))

    def _after_sync(self) -> None:
        if self.multicast is not None:
            self.multicast.refresh()

    # --- commands' helpers ------------------------------------------------------------------

    def apply_emulation(self, link, values: dict, done, ingress: bool = False) -> None:
        """Shape the kernel's traffic over the link device (tc, nftables; what it receives with
        ``ingress``) in the worker thread; ``done(applied, error)`` on the loop."""
        from spines_kr.netlink import emulation as kernel_emulation

        self.emulated = True
        ifname = link.ifname or self.interfaces.names.get(link.ifindex, "")
        apply = kernel_emulation.apply_ingress if ingress else kernel_emulation.apply

        def job():
            return apply(link.ifindex, ifname, instance=self.cfg.port, **values)

        self.loop.run_in_worker(job, done=done)

    # --- systemd: status, watchdog, reload --------------------------------------------------------

    def _status_line(self) -> str:
        node = self.node
        up = sum(1 for l in node.links.values() if l.up)
        ks = self.kernel_sync
        installed = len(ks.installed) if ks is not None else 0
        hold = ", restart hold" if ks is not None and ks.hold else ""
        return (f"{up}/{len(node.links)} neighbors up, {len(node.lsdb)} nodes, "
                f"{installed} routes installed{hold}")

    def healthy(self) -> tuple[bool, str]:
        """(ok, why not): the engine's timers run and the kernel worker is not stuck."""
        since = self.loop.time() - self.last_tick
        if since > STALL_S:
            return False, f"no engine tick for {since:.1f} s"
        started = self.loop.worker.busy_since
        if started is not None and time.monotonic() - started > WORKER_STALL_S:
            return False, f"a kernel job running for {time.monotonic() - started:.0f} s"
        return True, ""

    def _reload(self) -> None:
        """SIGHUP: re-read the configuration and apply what can change without a restart
        (neighbors, metric, timers, prefixes, groups of the config, multipath, log level), keeping
        every route that stays valid."""
        from spines_kr.config import ConfigError

        if self.reload_config is None:
            self.log.warning("config.reload_ignored", reason="no configuration to re-read")
            return
        self.service.reloading()
        try:
            new = self.reload_config()
        except ConfigError as e:
            self.log.error("config.reload_failed", error=str(e), action="kept the running config")
            self.service.ready()
            return
        old = self.cfg
        kept = [k for k in RESTART_ONLY if getattr(old, k) != getattr(new, k)]
        new = dataclasses.replace(new, **{k: getattr(old, k) for k in kept})
        changed = [f.name for f in dataclasses.fields(new)
                   if getattr(old, f.name) != getattr(new, f.name)]
        self.cfg = new
        self.membership.cfg = new
        self.neighbors.cfg = new
        if self.sessions is not None:
            self.sessions.cfg = new  # (accept_link_commands is read at run time)
        now = self.loop.time()
        node = self.node
        node.reconfigure(Params.from_config(new, node.p.prefsrc), now)
        if self.tunnels is not None:
            self.tunnels.reconfigure(new)
        self.neighbors.resolve(now)  # direct neighbors and tunnels of the new list
        for g in set(old.groups) - set(new.groups):
            self.membership.join(g, False, now, origin="config")
        for g in set(new.groups) - set(old.groups):
            self.membership.join(g, True, now, origin="config")
        if node.auth is not None and new.key_file:
            try:
                node.auth.keys, node.auth.send_id = load_key_file(new.key_file)
            except KeyFileError as e:
                self.log.error("config.reload_failed", error=str(e), action="kept the old keys")
            if self.forwarding is not None and self.forwarding.auth is not None:
                self.forwarding.auth.keys = node.auth.keys
                self.forwarding.auth.send_id = node.auth.send_id
        if new.log_level != old.log_level:
            self.log = dlog.setup(new.log_level, new.log_format, new.log_file)
        self.log.info("config.reloaded", changed=changed, needs_restart=kept)
        self.after_event()
        self.service.ready()


def run(cfg: Config, caps, plan: Plan, reload_config=None) -> int:
    try:
        return Daemon(cfg, caps, plan, reload_config).run()
    except KeyboardInterrupt:
        return ExitCode.OK

