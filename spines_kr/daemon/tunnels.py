"""Virtual links between nodes that share no subnet: kernel tunnels made and owned by the daemon.

A neighbor that is not on-link (a ``[[neighbor]]`` table with ``tunnel = KIND``, ``-a`` with an
address only the underlay's routes reach when ``tunnel`` is set, ``spines-kr neighbor add
ADDRESS --tunnel KIND``, libspines' ADD_NEIGHBOR) gets a point-to-point tunnel interface; the
daemon then adds an overlay link on it exactly as on a direct link (hellos, RTT, flooding,
routes via the peer), so the kernel forwards the overlay's traffic through the tunnel.

Kinds: ``wireguard`` (encrypted; the kernel module where the kernel has it, configured over
generic netlink, else ``wireguard-go`` configured over its UAPI socket: ``netlink.wireguard``),
``vxlan`` (unicast point-to-point, unencrypted: for trusted underlays), ``gre`` and ``ipip``
(where the kernel has them: refused at start otherwise, naming the missing feature).

Data model (loop side, ``Tunnels``):
    wanted      underlay address -> Want(kind, keepalive): the tunnels this node asks for
                (configuration, run-time additions); ``set_wanted`` replaces the set
    peers       peer logical ID -> Peer: what both ends said (kind, remote underlay address,
                the peer's public key, WireGuard port, underlay MTU, VXLAN VNI), whether we
                asked (``configured``) or were asked (a *passive* end), when we last heard
    actual      peer logical ID -> Actual: what the worker made (ifindex, name, listen port,
                MTU, underlay endpoints, error)
Worker side (``Backend``, only ever used in the loop's worker thread): the devices, addresses,
pinned endpoint routes and wireguard-go processes it made, reconciled against the desired
``TunnelSpec`` set in one job (``sync``), as the route sync is: desired in, actual out.

Negotiation (``wire.tunnel`` TUNNEL packets on the overlay port + 2, sealed with the overlay
key's HMAC and replay window: a node without the key can neither ask for a tunnel nor answer
one, so it forms no link and injects no route): the asking end sends REQUEST offers to the
wanted address every second until its tunnel is up, then every 10 s (every second again while
the overlay link over the tunnel is down, so a restarted peer is found at once; while it is up
the refreshes travel inside the tunnel, to the peer's logical ID, so the underlay then carries
nothing but the tunnel's own packets); the asked end makes its end (``accept_tunnels``), then
answers with its own offer.  Until a tunnel is up its negotiation crosses the underlay in the
clear (authenticated, not encrypted: logical IDs, ports and public keys).  Each end names, addresses
and sizes its own device:
  * keys: public keys travel in the offers, authenticated by the overlay key (the trust anchor
    of the whole overlay: whoever holds it may already rewrite routes), so no node's
    configuration lists another's WireGuard key, and a node's key can be replaced by replacing
    its key file.  Each node's private key is its own (``wireguard_key_file``).
  * endpoints: the asking end sets the peer's endpoint (the address it asked, the port the
    answer gave) and a persistent keepalive (``wireguard_keepalive_s``, per neighbor
    ``keepalive_s``); the asked end sets none and learns it from the first handshake
    (WireGuard roaming), so a node behind NAT that only connects out is reachable: its
    keepalives hold the NAT mapping open.  VXLAN/GRE/IPIP remotes are the configured address
    on the asking end and the offer's source address on the asked end (no NAT traversal).
  * VNI (VXLAN): proposed by the asking end (a hash of the overlay port, its logical ID and the
    address it asks); when both ends ask, the lower logical ID's proposal wins.  Both ends use
    ``vxlan_port`` (it must match).
  * names: ``wg``/``vx``/``gr``/``ip`` + the peer's logical ID in hex + 5 characters of a hash
    of the overlay port, our own logical ID and our network namespace (its inode) -- 15
    characters, IFNAMSIZ: unique on the host even for the many nodes of a namespace lab, or two
    labs of one topology, as wireguard-go's host-global socket directory needs, and stable
    across restarts; ``ip -d link`` shows the alias ``spines-kr <port> <kind> <peer> via
    <remote>``, which says what it is.
  * addresses: unnumbered, ``<our logical ID> peer <peer's logical ID>``; the connected route
    to the peer gets metric ``route_priority + 1000`` so our own routes (the overlay's path to
    the peer, through another node when this tunnel is dead) always win over it.
  * MTU: the smaller of both ends' underlay MTUs towards each other (each end's egress device,
    or the route's MTU metric where set) minus the kind's overhead (WireGuard 60, VXLAN 50, GRE
    24, IPIP 20 over IPv4): no fragmentation of the underlay's packets.  Hellos and flooding
    measure the link through the tunnel as any other.
  * passive ends expire: not asked for ``PASSIVE_IDLE_S`` while the link over it is down;
    at most ``max_dynamic_links`` of them (more offers are refused and counted).

No route loops through the overlay: before a tunnel exists, the underlay route to its remote
endpoint is resolved -- the best route of the main table that is not of our route protocol
and does not leave through one of our tunnels (``netlink.tunnels.TunnelKernel.underlay_route``)
-- and pinned as a /32 in our table, with our protocol, at priority ``route_priority - 1``
(``ip route show proto spines`` lists it with that metric).  Nothing the overlay installs can
capture the tunnel's own packets: an overlay route is at most a /32 of equal length and then
loses on priority, whatever prefix the overlay announces (an overlay prefix that covers the
whole underlay included).  The pin follows the underlay: re-resolved every
``UNDERLAY_CHECK_S`` and whenever links, addresses or routes change.  Why not a policy rule or a
separate table: VXLAN, GRE and IPIP sockets carry no firewall mark to select a rule by, and with
the overlay in main (the default) there is no table lookup to put a rule in front of; a pinned
host route works for every kind, every table choice and any kernel with IPv4 routing, and is
visible where an operator looks (``ip route get ENDPOINT``).  The reconciler never sees pins
(another priority), and no other part writes that priority.  Cost: a dump of the main table per
check (in the worker thread).

One tunnel per pair of nodes (keyed by the peer's logical ID): asking the same address for
another kind replaces the tunnel.  ``keep_routes`` keeps the routes of direct links across a
restart; tunnels are made anew by the next daemon (forwarding over them pauses for the
negotiation, about a second).

Lifecycle: at start, tunnels of this overlay left by a previous life (our alias), their pins
and the wireguard-go processes recorded in the state file ``<control socket>.tunnels.json``
(pid and start time: a process is ours only while /proc shows that start time; stopped through
a pidfd, never by name) are removed before anything is made.  A clean exit removes every
tunnel, pin, process and the state file.  Links, hellos and routes over a tunnel are the
daemon's as for any link (``links()``, ``on_change``).

Entry points: ``Tunnels(loop, cfg, caps, log, on_change, link_up)``, ``open()``, ``close()``,
``set_wanted({address: Want})``, ``links()`` -> [(ifindex, ifname, local, peer)],
``status()`` (``spines-kr show tunnels``), ``underlay_changed()``, ``tunnel_ifindexes()``;
``plan_neighbors(cfg, extra, on_link)`` (pure: which neighbors are direct, which tunnels).
Counters (``counters``): offers in/out, drops by reason (``tunnels.dropped.<reason>``),
refusals.
"""

from __future__ import annotations

import binascii
import errno
import json
import os
import signal
import socket
import time
from collections import Counter
from dataclasses import dataclass, replace

from spines_kr.daemon.udp import IP_PKTINFO, PKTINFO_SPACE, local_towards, pktinfo
from spines_kr.wire import tunnel as wt
from spines_kr.wire.auth import KeyRing
from spines_kr.wire.packets import DecodeError

PORT_OFFSET = 2  # the negotiation socket: overlay port + 2
RETRY_S = 1.0
REFRESH_S = 10.0
PASSIVE_IDLE_S = 60.0
UNDERLAY_CHECK_S = 5.0
PEER_ROUTE_METRIC_EXTRA = 1000
PREFIX = {"wireguard": "wg", "vxlan": "vx", "gre": "gr", "ipip": "ip"}
FEATURE = {"wireguard": "wireguard", "vxlan": "vxlan", "gre": "gre", "ipip": "ipip"}


@dataclass(frozen=True, slots=True)
class Want:
    kind: str
    keepalive: int | None = None  # None: the config's wireguard_keepalive_s


@dataclass
class Peer:
    lid: str
    kind: str
    remote: str
    configured: bool
    address: str | None = None  # the wanted address that found it (configured ends)
    key: bytes = bytes(32)
    port: int = 0
    mtu: int = 0
    vni: int = 0
    my_vni: int = 0  # our proposal (configured ends)
    heard: float = 0.0
    answer_to: tuple[str, int] | None = None  # an answer is due, to this address and port


@dataclass(frozen=True, slots=True)
class TunnelSpec:
    """What one tunnel must be (the worker makes it so)."""
    lid: str
    kind: str
    ifname: str
    remote: str
    alias: str
    vni: int = 0
    vxlan_port: int = 4789
    peer_key: bytes = bytes(32)
    endpoint: tuple[str, int] | None = None
    keepalive: int = 0
    peer_mtu: int = 0


@dataclass(frozen=True, slots=True)
class Actual:
    ifindex: int = 0
    ifname: str = ""
    listen_port: int = 0
    mtu: int = 0
    underlay_mtu: int = 0
    local: str = ""
    remote: str = ""
    pin: str = ""  # "via GW dev DEV" of the pinned endpoint route
    backend: str = ""  # kernel | wireguard-go
    error: str = ""


def ifname_for(kind: str, instance: int, own_id: str, peer_id: str, salt: int = 0) -> str:
    """``wg0a640002k3x9q``: kind, the peer's logical ID in hex, a hash of (port, our ID, the
    network namespace's inode ``salt``)."""
    peer = socket.inet_aton(peer_id).hex()
    h = binascii.crc32(f"{instance} {own_id} {salt}".encode()) & 0x1FFFFFF
    alphabet = "abcdefghijklmnopqrstuvwxyz234567"
    tail = "".join(alphabet[(h >> (5 * i)) & 31] for i in range(5))
    return f"{PREFIX[kind]}{peer}{tail}"


def vni_for(instance: int, own_id: str, address: str) -> int:
    return (binascii.crc32(f"{instance} {own_id} {address}".encode()) & wt.MAX_VNI) or 1


def plan_neighbors(cfg, extra: dict[str, str | None], on_link) -> tuple[
        list[str], dict[str, Want], dict[str, str]]:
    """(direct neighbors, wanted tunnels {address: Want}, unresolved {address: reason}) from
    the configuration (``neighbors`` (-a), ``neighbor`` tables, ``tunnel``) and the run-time
    additions ``extra`` ({address: kind or None}); ``on_link(address)`` -> True when a connected
    subnet holds it.  An explicit kind always makes a tunnel; without one a neighbor is direct
    when on-link, else a tunnel of the ``tunnel`` kind, else unresolved."""
    direct: list[str] = []
    wanted: dict[str, Want] = {}
    unresolved: dict[str, str] = {}
    entries: dict[str, tuple[str | None, int | None]] = {a: (None, None) for a in cfg.neighbors}
    for address, kind, keepalive in cfg.neighbor:
        entries[address] = (kind, keepalive)
    for address, kind in extra.items():
        entries[address] = (kind, entries.get(address, (None, None))[1])
    for address, (kind, keepalive) in entries.items():
        if kind is None:
            if on_link(address):
                direct.append(address)
                continue
            if cfg.tunnel == "none":
                unresolved[address] = "not in a connected subnet (give a tunnel kind: " \
                                      "--tunnel, or [[neighbor]] tunnel = ...)"
                continue
            kind = cfg.tunnel
        wanted[address] = Want(kind, keepalive)
    return direct, wanted, unresolved


# --- processes we started (wireguard-go) -------------------------------------------------------


def _start_time(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def stop_process(pid: int, start: int, timeout: float = 2.0) -> bool:
    """Stop our process ``pid`` if it still is the one that started at ``start`` (SIGTERM,
    then SIGKILL), through a pidfd so a recycled pid is never hit.  True if it was there."""
    try:
        fd = os.pidfd_open(pid)
    except OSError:
        return False
    try:
        if _start_time(pid) != start:
            return False
        signal.pidfd_send_signal(fd, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while _start_time(pid) == start and time.monotonic() < deadline:
            _reap(pid)
            time.sleep(0.01)
        if _start_time(pid) == start:
            signal.pidfd_send_signal(fd, signal.SIGKILL)
        _reap(pid)
        return True
    except ProcessLookupError:
        return True
    finally:
        os.close(fd)


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


# --- the worker side --------------------------------------------------------------------------


class Backend:
    """The kernel objects of our tunnels; used only in the worker thread."""

    def __init__(self, cfg, caps, private_key: bytes | None, netns: str | None = None) -> None:
        from spines_kr.netlink.tunnels import TunnelKernel

        self.cfg = cfg
        self.instance = cfg.port
        self.module = caps.has("wireguard_module")
        self.private_key = private_key
        self.kernel = TunnelKernel(netns)
        self.made: dict[str, tuple[TunnelSpec, Actual, object]] = {}  # lid -> (spec, actual, proc)
        self.pins: dict[str, tuple[str | None, int]] = {}
        self.state_file = f"{cfg.control_socket}.tunnels.json"
        self.pin_priority = cfg.route_priority - 1
        self._links = self._routes = None  # the link and main-table dumps of one job

    def close(self) -> None:
        self.kernel.close()

    # -- start and exit --

    def sweep(self) -> list[str]:
        """Remove what a previous life of this overlay left: processes, tunnels, pins."""
        done = []
        try:
            with open(self.state_file) as f:
                recorded = json.load(f).get("processes", {})
        except (OSError, ValueError):
            recorded = {}
        for ifname, (pid, start) in recorded.items():
            if stop_process(int(pid), int(start)):
                done.append(f"wireguard-go {ifname} (pid {pid})")
        for ifindex, link in self.kernel.ours(self.instance).items():
            self.kernel.delete(ifindex)
            done.append(f"tunnel {link.name}")
            self._remove_socket(link.name)
        for dst in self.kernel.pins(self.cfg.table, self.cfg.route_protocol, self.pin_priority):
            self.kernel.unpin(dst, self.cfg.table, self.cfg.route_protocol, self.pin_priority)
            done.append(f"endpoint route {dst}")
        self._save()
        return done

    def remove_all(self) -> None:
        for lid in list(self.made):
            self._remove(lid)
        for dst in list(self.pins):
            self._unpin(dst)
        try:
            os.unlink(self.state_file)
        except FileNotFoundError:
            pass

    def _save(self) -> None:
        procs = {a.ifname: [p.pid, _start_time(p.pid) or 0] for _s, a, p in self.made.values()
                 if p is not None}
        tmp = self.state_file + ".tmp"
        try:
            with open(tmp, "w") as f:
                json.dump({"processes": procs}, f)
            os.replace(tmp, self.state_file)
        except OSError:
            pass

    @staticmethod
    def _remove_socket(ifname: str) -> None:
        from spines_kr.netlink.wireguard import socket_path

        try:
            os.unlink(socket_path(ifname))
        except OSError:
            pass

    # -- reconcile --

    def sync(self, desired: dict[str, TunnelSpec], recheck: bool,
             asked: frozenset[str] = frozenset()) -> tuple[dict[str, Actual], set[str]]:
        """Make the tunnels ``desired`` and pin the addresses ``asked`` (before any packet of
        the negotiation goes there); re-resolve every pin with ``recheck``.  Returns the
        tunnels as made and the addresses pinned."""
        self._links = self._routes = None  # read once per job, when needed
        for lid in [l for l in self.made if l not in desired]:
            self._remove(lid)
        for lid, spec in desired.items():
            have = self.made.get(lid)
            if have is not None and _structural(have[0]) != _structural(spec):
                self._remove(lid)
                have = None
            try:
                if have is None:
                    self._create(spec)
                else:
                    self._update(spec)
            except (OSError, ValueError) as e:
                if lid in self.made:
                    self._remove(lid)
                why = (e.strerror or str(e)) if isinstance(e, OSError) else str(e)
                self.made[lid] = (spec, Actual(ifname=spec.ifname, remote=spec.remote,
                                               error=why), None)
        if recheck:
            self._recheck_pins()
        for address in asked:
            if recheck or address not in self.pins:
                try:
                    self._pin(address)
                except OSError:
                    pass  # no underlay route: not asked until there is one
        wanted_pins = {s.remote for s, a, _p in self.made.values() if a.ifindex} | set(asked)
        for dst in [d for d in self.pins if d not in wanted_pins]:
            self._unpin(dst)
        self._save()
        return {lid: a for lid, (_s, a, _p) in self.made.items()}, set(self.pins)

    def _link_table(self):
        if self._links is None:
            self._links = self.kernel.links()
        return self._links

    def _ifindexes(self) -> set[int]:
        return {a.ifindex for _s, a, _p in self.made.values() if a.ifindex}

    def _pin(self, remote: str) -> tuple[str, int, int]:
        """Pin the underlay route to ``remote``: (description, oif, underlay MTU)."""
        if self._routes is None:
            self._routes = self.kernel.main_routes()
        ours = self._ifindexes()
        from spines_kr.netlink.tunnels import best_route

        route = best_route([(prefix, priority, r) for protocol, prefix, priority, r in self._routes
                            if protocol != self.cfg.route_protocol and r.oif
                            and r.oif not in ours], remote)
        if route is None:
            if remote in self.pins:  # keep the last known path rather than none
                gw, oif = self.pins[remote]
                return self._describe(gw, oif), oif, self._mtu_of(oif, 0)
            raise OSError(errno.ENETUNREACH, f"no underlay route to {remote} (the main table "
                                             f"has none besides the overlay's)")
        gw = route.gateway
        if self.pins.get(remote) != (gw, route.oif):
            self.kernel.pin(remote, gw, route.oif, self.cfg.table, self.cfg.route_protocol,
                            self.pin_priority)
            self.pins[remote] = (gw, route.oif)
        return self._describe(gw, route.oif), route.oif, self._mtu_of(route.oif, route.mtu)

    def _describe(self, gw: str | None, oif: int) -> str:
        name = self._link_table().get(oif)
        dev = name.name if name else str(oif)
        return f"via {gw} dev {dev}" if gw else f"dev {dev}"

    def _mtu_of(self, oif: int, route_mtu: int) -> int:
        link = self._link_table().get(oif)
        mtu = link.mtu if link else 1500
        return min(mtu, route_mtu) if route_mtu else mtu

    def _unpin(self, dst: str) -> None:
        try:
            self.kernel.unpin(dst, self.cfg.table, self.cfg.route_protocol, self.pin_priority)
        except OSError:
            pass
        self.pins.pop(dst, None)

    def _recheck_pins(self) -> None:
        for lid, (spec, actual, proc) in list(self.made.items()):
            if not actual.ifindex:
                continue
            try:
                pin, _oif, umtu = self._pin(spec.remote)
            except OSError as e:
                self.made[lid] = (spec, replace(actual, error=e.strerror or str(e)), proc)
                continue
            actual = replace(actual, pin=pin, underlay_mtu=umtu, error="")
            mtu = _tunnel_mtu(spec, umtu)
            if mtu != actual.mtu:
                self.kernel.configure(actual.ifindex, mtu=mtu)
                actual = replace(actual, mtu=mtu)
            self.made[lid] = (spec, actual, proc)

    def _create(self, spec: TunnelSpec) -> None:
        from spines_kr.netlink import wireguard as wg

        pin, _oif, umtu = self._pin(spec.remote)
        mtu = _tunnel_mtu(spec, umtu)
        proc = None
        backend = "kernel"
        if spec.kind == "wireguard":
            if self.private_key is None:
                raise OSError(errno.ENOKEY, "no wireguard_key_file: cannot make WireGuard tunnels")
            if self.module:
                ifindex = self.kernel.create(spec.ifname, "wireguard")
            else:
                backend = "wireguard-go"
                self._remove_socket(spec.ifname)
                proc = wg.start_wireguard_go(spec.ifname)
                self.made[spec.lid] = (spec, Actual(ifname=spec.ifname), proc)
                self._save()  # recorded at once: a crash from here on leaves nothing unknown
                ifindex = self.kernel.ifindex(spec.ifname)
                if ifindex is None:
                    raise OSError(errno.ENODEV, f"wireguard-go made no device {spec.ifname}")
        else:
            ifindex = self.kernel.create(spec.ifname, spec.kind, remote=spec.remote,
                                         vni=spec.vni, port=spec.vxlan_port)
        self.made[spec.lid] = (spec, Actual(ifindex=ifindex, ifname=spec.ifname), proc)
        self.kernel.configure(ifindex, mtu=mtu, alias_text=spec.alias, up=True)
        self.kernel.address(ifindex, self.cfg.logical_id, spec.lid,
                            self.cfg.route_priority + PEER_ROUTE_METRIC_EXTRA,
                            self.cfg.route_protocol)
        port = 0
        if spec.kind == "wireguard":
            dev = wg.KernelWireGuard(spec.ifname) if self.module else wg.UapiWireGuard(spec.ifname)
            dev.configure(self.private_key, wg.PeerConfig(spec.peer_key, spec.endpoint,
                                                          spec.keepalive), listen_port=0)
            port = dev.listen_port()
        actual = Actual(ifindex, spec.ifname, port, mtu, umtu, local_towards(spec.remote),
                        spec.remote, pin, backend if spec.kind == "wireguard" else "kernel")
        self.made[spec.lid] = (spec, actual, proc)

    def _update(self, spec: TunnelSpec) -> None:
        from spines_kr.netlink import wireguard as wg

        old, actual, proc = self.made[spec.lid]
        if actual.error or not actual.ifindex:
            self._remove(spec.lid)
            self._create(spec)
            return
        if spec.kind == "wireguard" and (old.peer_key, old.endpoint, old.keepalive) != (
                spec.peer_key, spec.endpoint, spec.keepalive):
            dev = wg.KernelWireGuard(spec.ifname) if self.module else wg.UapiWireGuard(spec.ifname)
            replace = old.peer_key != spec.peer_key
            if not replace and old.endpoint is None and spec.endpoint is not None:
                # An endpoint learnt at last: if no handshake happened yet, the attempts made
                # without one hold the next for WireGuard's 5 s (REKEY_TIMEOUT); a fresh peer
                # starts at once.
                status = dev.peer_status().get(spec.peer_key)
                replace = status is None or not status.last_handshake
            dev.configure(self.private_key, wg.PeerConfig(spec.peer_key, spec.endpoint,
                                                          spec.keepalive), listen_port=None,
                          replace=replace)
        mtu = _tunnel_mtu(spec, actual.underlay_mtu)
        if mtu != actual.mtu:
            self.kernel.configure(actual.ifindex, mtu=mtu)
            actual = replace(actual, mtu=mtu)
        self.made[spec.lid] = (spec, actual, proc)

    def _remove(self, lid: str) -> None:
        import subprocess

        spec, actual, proc = self.made.pop(lid)
        ifindex = actual.ifindex
        if not ifindex and (proc is not None or actual.error):
            try:
                ifindex = self.kernel.ifindex(spec.ifname) or 0
            except OSError:
                ifindex = 0
        if ifindex:
            try:
                self.kernel.delete(ifindex)
            except OSError:
                pass
        if proc is not None:
            try:
                proc.wait(timeout=2.0 if ifindex else 0.01)  # without its device it exits
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            self._remove_socket(spec.ifname)


def _structural(spec: TunnelSpec) -> tuple:
    """What cannot change on a live device (a change means a new device)."""
    return (spec.kind, spec.ifname, spec.vni, spec.vxlan_port,
            spec.remote if spec.kind != "wireguard" else "")


def _tunnel_mtu(spec: TunnelSpec, underlay_mtu: int) -> int:
    from spines_kr.netlink.tunnels import OVERHEAD

    path = min(underlay_mtu, spec.peer_mtu) if spec.peer_mtu else underlay_mtu
    return max(576, path - OVERHEAD[spec.kind])


# --- the loop side ----------------------------------------------------------------------------


class Tunnels:
    def __init__(self, loop, cfg, caps, log, on_change, link_up) -> None:
        self.loop = loop
        self.cfg = cfg
        self.caps = caps
        self.log = log
        self.on_change = on_change  # () -> None: the set of tunnel links moved
        self.link_up = link_up  # (ifindex) -> bool: the overlay link over it is up
        self.counters: Counter[str] = Counter()
        self.wanted: dict[str, Want] = {}
        self.peers: dict[str, Peer] = {}
        self.actual: dict[str, Actual] = {}
        self.sock: socket.socket | None = None
        self.auth: KeyRing | None = None
        self.private_key: bytes | None = None
        self.public_key = bytes(32)
        self.backend: Backend | None = None
        self._next_offer: dict[str, float] = {}
        self._deadline = None
        self._busy = False
        self._dirty = False
        self._recheck = False
        self._next_check = 0.0
        self._closed = False
        self._refused_logged: set[tuple[str, str]] = set()
        self._applied: dict[str, TunnelSpec] = {}  # the desired set of the last sync
        self.pinned: set[str] = set()  # addresses whose underlay route is pinned
        try:
            self.salt = os.stat("/proc/self/ns/net").st_ino
        except OSError:
            self.salt = 0

    # --- lifecycle ------------------------------------------------------------------------------

    def open(self, auth: KeyRing | None) -> list[str]:
        """Open the negotiation socket and remove what a previous life left (returned)."""
        from spines_kr.daemon.loop import Deadline

        cfg = self.cfg
        if cfg.wireguard_key_file:
            from spines_kr.keys import load_wireguard_key

            self.private_key, self.public_key = load_wireguard_key(cfg.wireguard_key_file)
        self.auth = auth
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            s.setsockopt(socket.SOL_IP, IP_PKTINFO, 1)
            s.setsockopt(socket.IPPROTO_IP, socket.IP_TOS, 0xC0)
            s.setblocking(False)
            s.bind(("0.0.0.0", cfg.port + PORT_OFFSET))
        except BaseException:
            s.close()
            raise
        self.sock = s
        self.backend = Backend(cfg, self.caps, self.private_key)
        swept = self.backend.sweep()
        self.loop.add_reader(s.fileno(), self._on_readable)
        self._deadline = Deadline(self.loop, self._on_timer)
        self._deadline.set(self.loop.time())
        return swept

    def close(self) -> None:
        """Remove every tunnel, pin and process (at exit; runs in the caller's thread after the
        worker has finished its jobs)."""
        if self._closed:
            return
        self._closed = True
        if self._deadline is not None:
            self._deadline.cancel()
        for peer in self.peers.values():  # tell the ends we asked for to remove theirs at once
            if peer.configured:
                self._send_offer(peer.remote, self.cfg.port + PORT_OFFSET, peer, close=True)
        if self._busy:  # the worker's job on our devices finishes first
            self.loop.run_for(15.0, until=lambda: not self._busy)
        if self.sock is not None:
            self.loop.remove_reader(self.sock.fileno())
            self.sock.close()
            self.sock = None
        if self.backend is not None:
            try:
                self.backend.remove_all()
            finally:
                self.backend.close()
                self.backend = None

    # --- what the daemon asks ------------------------------------------------------------------

    def reconfigure(self, cfg) -> None:
        """A reload: keepalives, accept_tunnels (what a reload may change; the rest is kept)."""
        self.cfg = cfg
        self._schedule_sync()

    def set_wanted(self, wanted: dict[str, Want]) -> list[str]:
        """The tunnels this node asks for; refuses (returned, one line each) kinds the kernel
        or the configuration cannot make."""
        refused = []
        ok: dict[str, Want] = {}
        for address, want in wanted.items():
            why = self.refusal(want.kind)
            if why:
                refused.append(f"{address}: {why}")
                if (address, why) not in self._refused_logged:
                    self._refused_logged.add((address, why))
                    self.log.error("tunnel.refused", neighbor=address, kind=want.kind, reason=why)
                continue
            ok[address] = want
        if ok == self.wanted:
            return refused
        gone = set(self.wanted) - set(ok)
        gone |= {a for a, w in ok.items() if a in self.wanted and self.wanted[a].kind != w.kind}
        self.wanted = ok
        for lid, peer in list(self.peers.items()):
            if peer.configured and peer.address in gone:
                self._send_offer(peer.remote, self.cfg.port + PORT_OFFSET, peer, close=True)
                del self.peers[lid]
                self.log.info("tunnel.removed", peer=lid, remote=peer.remote, reason="unwanted")
        for address in gone:
            self._next_offer.pop(address, None)
        for address in ok:
            self._next_offer.setdefault(address, self.loop.time())
        self._schedule_sync()
        if self._deadline is not None:
            self._deadline.set(self.loop.time())
        return refused

    def refusal(self, kind: str) -> str:
        """Why this node cannot make a tunnel of ``kind`` ("" when it can)."""
        if kind == "wireguard" and self.private_key is None:
            return "WireGuard needs wireguard_key_file ('spines-kr keygen --wireguard FILE')"
        if not self.caps.has(FEATURE[kind]):
            return self.caps.missing_reason(FEATURE[kind])
        return ""

    def links(self) -> list[tuple[int, str, str, str]]:
        """(ifindex, ifname, local address, peer address) of every tunnel that exists."""
        return [(a.ifindex, a.ifname, self.cfg.logical_id, lid)
                for lid, a in sorted(self.actual.items()) if a.ifindex and not a.error]

    def tunnel_ifindexes(self) -> set[int]:
        return {a.ifindex for a in self.actual.values() if a.ifindex}

    def underlay_changed(self) -> None:
        """Links, addresses or routes moved: re-resolve the pinned endpoint routes soon."""
        if self.actual:
            self._recheck = True
            self._schedule_sync()

    def status(self) -> list[dict]:
        out = []
        for lid, peer in sorted(self.peers.items()):
            a = self.actual.get(lid, Actual())
            out.append({"peer": lid, "kind": peer.kind, "ifname": a.ifname or None,
                        "ifindex": a.ifindex or None, "mtu": a.mtu or None,
                        "local": a.local or None, "remote": peer.remote,
                        "listen_port": a.listen_port or None, "peer_port": peer.port or None,
                        "vni": peer.vni or None, "configured": peer.configured,
                        "backend": a.backend or None, "endpoint_route": a.pin or None,
                        "state": ("error" if a.error else "up" if a.ifindex and
                                  self.link_up(a.ifindex) else "made" if a.ifindex
                                  else "negotiating"),
                        "error": a.error or None})
        for address, want in sorted(self.wanted.items()):
            if not any(p.address == address for p in self.peers.values()):
                out.append({"peer": None, "kind": want.kind, "ifname": None, "ifindex": None,
                            "mtu": None, "local": None, "remote": address, "listen_port": None,
                            "peer_port": None, "vni": None, "configured": True,
                            "backend": None, "endpoint_route": None, "state": "asking",
                            "error": None})
        return out

    # --- the worker ------------------------------------------------------------------------------

    def _desired(self) -> dict[str, TunnelSpec]:
        cfg = self.cfg
        out = {}
        for lid, p in self.peers.items():
            if p.kind == "wireguard" and p.key == bytes(32):
                continue
            keepalive = 0
            endpoint = None
            if p.configured:
                want = self.wanted.get(p.address or "")
                keepalive = (want.keepalive if want and want.keepalive is not None
                             else cfg.wireguard_keepalive_s)
                if p.port:
                    endpoint = (p.remote, p.port)
            from spines_kr.netlink.tunnels import alias

            out[lid] = TunnelSpec(lid, p.kind,
                                  ifname_for(p.kind, cfg.port, cfg.logical_id, lid, self.salt),
                                  p.remote, alias(cfg.port, p.kind, lid, p.remote), p.vni,
                                  cfg.vxlan_port, p.key, endpoint, keepalive, p.mtu)
        return out

    def _schedule_sync(self) -> None:
        if self._closed or self.backend is None:
            return
        if self._busy:
            self._dirty = True
            return
        self._busy, self._dirty = True, False
        recheck, self._recheck = self._recheck, False
        desired = self._desired()
        backend = self.backend
        self.loop.run_in_worker(backend.sync, desired, recheck, frozenset(self.wanted),
                                done=lambda result, error: self._synced(desired, result, error))

    def _synced(self, desired, result, error) -> None:
        self._busy = False
        if self._closed:
            return
        if error is not None:
            self.counters["tunnels.sync_errors"] += 1
            self.log.error("tunnel.sync_failed", error=f"{type(error).__name__}: {error}")
        else:
            result, pinned = result
            fresh = pinned - self.pinned
            self.pinned = pinned
            if fresh and self._deadline is not None:
                self._deadline.set(self.loop.time())  # ask the newly pinned addresses now
            before = {l: (a.ifindex, a.error) for l, a in self.actual.items()}
            for lid, a in result.items():
                old = self.actual.get(lid)
                if a.error and (old is None or old.error != a.error):
                    self.log.error("tunnel.failed", peer=lid, ifname=a.ifname, remote=a.remote,
                                   error=a.error)
                elif a.ifindex and (old is None or old.ifindex != a.ifindex or old.error):
                    self.log.info("tunnel.made", peer=lid, ifname=a.ifname, remote=a.remote,
                                  local=a.local, mtu=a.mtu, endpoint_route=a.pin,
                                  backend=a.backend, listen_port=a.listen_port or None)
            for lid in set(self.actual) - set(result):
                self.log.info("tunnel.deleted", peer=lid, ifname=self.actual[lid].ifname)
            self.actual = dict(result)
            self._applied = desired
            after = {l: (a.ifindex, a.error) for l, a in self.actual.items()}
            for lid, peer in self.peers.items():
                a = self.actual.get(lid)
                if peer.answer_to is not None and a is not None and a.ifindex and not a.error:
                    self._send_offer(*peer.answer_to, peer, request=False)
                    peer.answer_to = None
            if before != after:
                self.on_change()
        if self._dirty:
            self._schedule_sync()

    # --- negotiation ----------------------------------------------------------------------------

    def _offer(self, peer: Peer | None, kind: str, *, request: bool, close: bool,
               configured: bool, vni: int) -> wt.TunnelOffer:
        a = self.actual.get(peer.lid) if peer is not None else None
        flags = ((wt.F_REQUEST if request else 0) | (wt.F_CLOSE if close else 0)
                 | (wt.F_CONFIGURED if configured else 0))
        port = self.cfg.vxlan_port if kind == "vxlan" else (a.listen_port if a else 0)
        underlay = _id(a.local) if a is not None and a.local else 0
        return wt.TunnelOffer(wt.KIND_CODES[kind], flags, underlay, port,
                              a.underlay_mtu if a else 0, vni,
                              self.public_key if kind == "wireguard" else bytes(32))

    def _send(self, msg: wt.TunnelOffer, address: str, port: int) -> None:
        pkt = msg.encode(instance=self.cfg.port, sender=_id(self.cfg.logical_id))
        if self.auth is not None:
            pkt = self.auth.seal(pkt)
        try:
            self.sock.sendto(pkt, (address, port))
            self.counters["tunnels.offers_out"] += 1
        except OSError:
            self.counters["tunnels.send_errors"] += 1

    def _send_offer(self, address: str, port: int, peer: Peer, *, request: bool = False,
                    close: bool = False) -> None:
        if self.sock is None:
            return
        vni = peer.vni if peer.kind == "vxlan" else 0
        self._send(self._offer(peer, peer.kind, request=request, close=close,
                               configured=peer.configured, vni=vni), address, port)

    def _on_timer(self) -> None:
        now = self.loop.time()
        nxt = now + REFRESH_S
        for address, want in self.wanted.items():
            due = self._next_offer.get(address, now)
            if address not in self.pinned:
                continue  # nothing goes there before its underlay route is pinned
            if due <= now:
                peer = next((p for p in self.peers.values() if p.address == address), None)
                a = self.actual.get(peer.lid) if peer else None
                settled = a is not None and a.ifindex and not a.error and self.link_up(a.ifindex)
                if peer is None:
                    vni = vni_for(self.cfg.port, self.cfg.logical_id, address)
                    msg = self._offer(None, want.kind, request=True, close=False,
                                      configured=True, vni=vni if want.kind == "vxlan" else 0)
                    self._send(replace(msg, underlay=_id(local_towards(address) or
                                                          "0.0.0.0")),
                               address, self.cfg.port + PORT_OFFSET)
                else:
                    # While the link over the tunnel is up, refreshes travel inside it (the
                    # underlay then sees nothing but the tunnel's packets); else the underlay.
                    target = peer.lid if settled else address
                    self._send_offer(target, self.cfg.port + PORT_OFFSET, peer, request=True)
                due = now + (REFRESH_S if settled else RETRY_S)
                self._next_offer[address] = due
            nxt = min(nxt, due)
        for lid, peer in list(self.peers.items()):  # passive ends the asking end forgot
            a = self.actual.get(lid)
            if (not peer.configured and now - peer.heard > PASSIVE_IDLE_S
                    and not (a is not None and a.ifindex and self.link_up(a.ifindex))):
                del self.peers[lid]
                self.log.info("tunnel.expired", peer=lid, remote=peer.remote,
                              reason=f"not asked for {PASSIVE_IDLE_S:g} s and its link is down")
                self._schedule_sync()
        if now >= self._next_check and self.actual:
            self._next_check = now + UNDERLAY_CHECK_S
            self._recheck = True
            self._schedule_sync()
        nxt = min(nxt, self._next_check if self.actual else nxt)
        self._deadline.set(nxt)

    def _on_readable(self) -> None:
        for _ in range(64):
            try:
                data, anc, _flags, addr = self.sock.recvmsg(2048, PKTINFO_SPACE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self.counters["tunnels.recv_errors"] += 1
                continue
            _ifindex, to = pktinfo(anc)
            local = socket.inet_ntoa(to) if to else ""
            try:
                self._receive(data, addr, local)
            except Exception as e:  # noqa: BLE001 - one packet must not stop the others
                self.counters["tunnels.dropped.error"] += 1
                self.log.error("tunnel.receive_failed", error=f"{type(e).__name__}: {e}")

    def _receive(self, data: bytes, addr: tuple[str, int], local: str) -> None:
        self.counters["tunnels.offers_in"] += 1
        now = self.loop.time()
        try:
            header, msg, trailer = wt.decode(data, instance=self.cfg.port, expect=wt.TUNNEL)
        except DecodeError as e:
            self.counters[f"tunnels.dropped.{e.reason}"] += 1
            return
        if self.auth is not None:
            reason = self.auth.check(header.sender, data, trailer, now)
            if reason is not None:
                self.counters[f"tunnels.dropped.{reason}"] += 1
                return
        elif trailer:
            self.counters["tunnels.dropped.auth_unexpected"] += 1
            return
        lid = _ip(header.sender)
        if lid == self.cfg.logical_id or header.sender in (0, 0xFFFFFFFF):
            self.counters["tunnels.dropped.own"] += 1
            return
        kind = wt.KIND_NAMES[msg.kind]
        source = addr[0]
        peer = self.peers.get(lid)
        inside = source == lid  # through the tunnel (or the overlay), not the underlay
        address = next((a for a in (source, _ip(msg.underlay)) if a in self.wanted), None)
        if address is None and inside and peer is not None and peer.configured:
            address = peer.address
        if msg.flags & wt.F_CLOSE:
            if peer is not None and not peer.configured:
                del self.peers[lid]
                self.log.info("tunnel.removed", peer=lid, remote=peer.remote,
                              reason="the asking end removed its end")
                self._schedule_sync()
            return
        why = self.refusal(kind)
        if not why and address is not None and self.wanted[address].kind != kind:
            why = f"kind mismatch: we ask {address} for {self.wanted[address].kind}, it offers {kind}"
        if not why and address is None and not self.cfg.accept_tunnels and (
                peer is None or not peer.configured):
            why = "accept_tunnels is off"
        if not why and kind == "vxlan" and msg.port != self.cfg.vxlan_port:
            why = f"vxlan_port differs (ours {self.cfg.vxlan_port}, theirs {msg.port})"
        if not why and address is None and peer is None and sum(
                not p.configured for p in self.peers.values()) >= self.cfg.max_dynamic_links:
            why = f"max_dynamic_links ({self.cfg.max_dynamic_links}) tunnels asked by others"
        if why:
            self.counters["tunnels.refused"] += 1
            if len(self._refused_logged) > 1000:  # bounded: a log line per (peer, reason)
                self._refused_logged.clear()
            if (lid, why) not in self._refused_logged:
                self._refused_logged.add((lid, why))
                self.log.warning("tunnel.refused", peer=lid, remote=source, kind=kind, reason=why)
            return
        configured = address is not None
        if (peer is None or peer.kind != kind) and inside and address is None:
            self.counters["tunnels.dropped.inside_unknown"] += 1  # asked inside, unknown: ignore
            return
        if peer is None or peer.kind != kind:
            # the remote is where the offer came from (through a NAT: the NAT's address), the
            # address we asked only while it came from inside
            peer = Peer(lid, kind, (address or source) if inside else source, configured,
                        address)
            if configured and kind == "vxlan":
                peer.my_vni = vni_for(self.cfg.port, self.cfg.logical_id, address)
            self.peers[lid] = peer
            self.log.info("tunnel.negotiated", peer=lid, kind=kind, remote=peer.remote,
                          asked_by_us=configured)
        else:
            if configured and not peer.configured:
                peer.configured, peer.address = True, address
                if kind == "vxlan":
                    peer.my_vni = vni_for(self.cfg.port, self.cfg.logical_id, address)
            if not inside:
                peer.remote = source  # it moved, or comes back from elsewhere (a NAT)
        peer.heard = now
        peer.key = msg.public_key if kind == "wireguard" else bytes(32)
        peer.port = msg.port if kind == "wireguard" else 0
        peer.mtu = msg.mtu
        if kind == "vxlan":
            theirs = msg.vni
            if peer.configured and (not theirs or _id(self.cfg.logical_id) < header.sender):
                peer.vni = peer.my_vni
            else:
                peer.vni = theirs or peer.my_vni
        if msg.flags & wt.F_REQUEST:
            a = self.actual.get(lid)
            target = (source, addr[1])
            spec_now = self._desired().get(lid)
            if (a is not None and a.ifindex and not a.error and spec_now is not None
                    and self._same(lid, spec_now)):
                self._send_offer(*target, peer)
            else:
                peer.answer_to = target
        self._schedule_sync()

    def _same(self, lid: str, spec: TunnelSpec) -> bool:
        """Whether the device of ``lid`` already is ``spec`` (no sync needed before answering)."""
        return self._applied.get(lid) == spec


def _ip(n: int) -> str:
    return socket.inet_ntoa(n.to_bytes(4, "big"))


def _id(address: str) -> int:
    return int.from_bytes(socket.inet_aton(address), "big")
