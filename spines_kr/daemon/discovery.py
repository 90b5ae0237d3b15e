"""Discovery (``-d ADDRESS``, up to 10, Spines' meaning): daemons of one overlay that share a
LAN find each other by IP multicast and form links without ``-a``.

Data model (``Discovery``): one UDP socket on the overlay port + 3, member of every discovery
address on every *LAN interface* (up, with an IPv4 address shorter than /32: tunnels and lo
are not LANs); ``joined`` {(ifindex, group)}; ``heard`` {(ifindex, address): (logical ID, when)}
of the daemons found; ``counters``.

Protocol (``wire.tunnel.Announce``, sealed with the overlay key's HMAC and replay window): every
``discovery_interval_ms`` (jittered -15 %) each LAN interface sends one announcement per
discovery address, with TTL 1 and the interface's own address: link-local only, no multicast
routing needed (the kernel's IGMP membership on the LAN is all).  A receiver checks the
trailer (a stranger's announcement -- no key, another key, a replay -- forms nothing and is
counted: ``discovery.dropped.<reason>``), that the announced address is the datagram's source
and lies in the connected subnet of the interface it arrived on, and tells the daemon
(``on_found(ifindex, address, True)``), which adds a link (not configured: it counts against
``max_dynamic_links``) and lets hellos do the rest.  A daemon not heard for
``HOLD_ROUNDS`` intervals (10 s at least) is reported lost (``on_found(..., False)``): the
daemon drops its link if it is down.

Entry points: ``Discovery(loop, cfg, log, auth, interfaces, on_found)``, ``open()``,
``close()``, ``sync()`` (interfaces or addresses moved: join and leave), ``status()``.
"""

from __future__ import annotations

import ipaddress
import random
import socket
import struct
from collections import Counter

from spines_kr.daemon.udp import IP_PKTINFO, PKTINFO_SPACE, pktinfo, pktinfo_cmsg
from spines_kr.wire import tunnel as wt
from spines_kr.wire.auth import KeyRing
from spines_kr.wire.packets import DecodeError

PORT_OFFSET = 3
HOLD_ROUNDS = 5
MIN_HOLD_S = 10.0
MREQN = struct.Struct("=4s4si")  # struct ip_mreqn: group, address, ifindex


class Discovery:
    def __init__(self, loop, cfg, log, auth: KeyRing | None, interfaces, on_found) -> None:
        self.loop, self.cfg, self.log, self.auth = loop, cfg, log, auth
        self.interfaces = interfaces
        self.on_found = on_found
        self.counters: Counter[str] = Counter()
        self.sock: socket.socket | None = None
        self.joined: set[tuple[int, str]] = set()
        self.heard: dict[tuple[int, str], tuple[str, float]] = {}
        self._deadline = None
        self._rng = random.Random()
        self._id = int(ipaddress.IPv4Address(cfg.logical_id))

    def open(self) -> None:
        from spines_kr.daemon.loop import Deadline

        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.setsockopt(socket.SOL_IP, IP_PKTINFO, 1)
            s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
            s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 0)
            s.setsockopt(socket.IPPROTO_IP, socket.IP_TOS, 0xC0)
            s.setblocking(False)
            s.bind(("0.0.0.0", self.cfg.port + PORT_OFFSET))
        except BaseException:
            s.close()
            raise
        self.sock = s
        self.loop.add_reader(s.fileno(), self._on_readable)
        self._deadline = Deadline(self.loop, self._on_timer)
        self.sync()
        self._deadline.set(self.loop.time())

    def close(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        if self.sock is not None:
            self.loop.remove_reader(self.sock.fileno())
            self.sock.close()
            self.sock = None

    def _lans(self) -> dict[int, str]:
        """ifindex -> our address on each LAN interface that is up."""
        ifs = self.interfaces
        out: dict[int, str] = {}
        for ifindex, address, plen in ifs.addresses:
            if plen >= 32 or ifindex in out or not ifs.up.get(ifindex, False):
                continue
            if ifs.names.get(ifindex) == "lo" or address.startswith("127."):
                continue
            if self.cfg.local_addresses and address not in self.cfg.local_addresses:
                continue
            out[ifindex] = address
        return out

    def sync(self) -> None:
        """Join every discovery address on every LAN interface; leave where none is left."""
        if self.sock is None:
            return
        want = {(ifindex, g) for ifindex in self._lans() for g in self.cfg.discovery}
        for ifindex, group in sorted(want - self.joined):
            try:
                self.sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP,
                                     MREQN.pack(socket.inet_aton(group), bytes(4), ifindex))
                self.joined.add((ifindex, group))
            except OSError as e:
                self.counters["discovery.join_errors"] += 1
                self.log.warning("discovery.join_failed", ifindex=ifindex, group=group,
                                 error=e.strerror or str(e))
        for ifindex, group in sorted(self.joined - want):
            try:
                self.sock.setsockopt(socket.IPPROTO_IP, socket.IP_DROP_MEMBERSHIP,
                                     MREQN.pack(socket.inet_aton(group), bytes(4), ifindex))
            except OSError:
                pass  # the interface is gone, and its membership with it
            self.joined.discard((ifindex, group))

    def status(self) -> dict:
        now = self.loop.time()
        return {"addresses": list(self.cfg.discovery),
                "lans": sorted({self.interfaces.names.get(i, str(i)) for i, _g in self.joined}),
                "found": [{"address": a, "ifname": self.interfaces.names.get(i, str(i)),
                           "logical_id": lid, "heard_s_ago": round(now - t, 3)}
                          for (i, a), (lid, t) in sorted(self.heard.items())],
                **dict(sorted(self.counters.items()))}

    def _hold(self) -> float:
        return max(MIN_HOLD_S, HOLD_ROUNDS * self.cfg.discovery_interval_ms / 1000)

    def _on_timer(self) -> None:
        now = self.loop.time()
        for ifindex, address in self._lans().items():
            pkt = wt.Announce(int(ipaddress.IPv4Address(address)), self.cfg.port).encode(
                instance=self.cfg.port, sender=self._id)
            anc = [pktinfo_cmsg(ifindex, socket.inet_aton(address))]
            for group in self.cfg.discovery:
                if (ifindex, group) not in self.joined:
                    continue
                data = self.auth.seal(pkt) if self.auth is not None else pkt
                try:
                    self.sock.sendmsg([data], anc, 0, (group, self.cfg.port + PORT_OFFSET))
                    self.counters["discovery.announced"] += 1
                except OSError:
                    self.counters["discovery.send_errors"] += 1
        for key, (_lid, when) in list(self.heard.items()):
            if now - when > self._hold():
                del self.heard[key]
                self.log.info("discovery.lost", address=key[1],
                              ifname=self.interfaces.names.get(key[0], str(key[0])))
                self.on_found(key[0], key[1], False)
        interval = self.cfg.discovery_interval_ms / 1000
        self._deadline.set(now + interval * self._rng.uniform(0.85, 1.0))

    def _on_readable(self) -> None:
        for _ in range(64):
            try:
                data, anc, _flags, addr = self.sock.recvmsg(2048, PKTINFO_SPACE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self.counters["discovery.recv_errors"] += 1
                continue
            self._receive(data, addr[0], pktinfo(anc)[0])

    def _receive(self, data: bytes, source: str, ifindex: int) -> None:
        now = self.loop.time()
        self.counters["discovery.heard"] += 1
        try:
            header, msg, trailer = wt.decode(data, instance=self.cfg.port, expect=wt.ANNOUNCE)
        except DecodeError as e:
            self.counters[f"discovery.dropped.{e.reason}"] += 1
            return
        if header.sender == self._id:
            self.counters["discovery.dropped.own"] += 1
            return
        if self.auth is not None:
            reason = self.auth.check(header.sender, data, trailer, now)
            if reason is not None:
                self.counters[f"discovery.dropped.{reason}"] += 1
                return
        elif trailer:
            self.counters["discovery.dropped.auth_unexpected"] += 1
            return
        address = str(ipaddress.IPv4Address(msg.address))
        lans = self._lans()
        end = self.interfaces.local_end(address, self.cfg.local_addresses)
        if address != source or ifindex not in lans or isinstance(end, str) or end[0] != ifindex:
            self.counters["discovery.dropped.not_on_link"] += 1
            return
        key = (ifindex, address)
        lid = str(ipaddress.IPv4Address(header.sender))
        first = key not in self.heard
        self.heard[key] = (lid, now)
        if first:
            self.log.info("discovery.found", address=address, logical_id=lid,
                          ifname=self.interfaces.names.get(ifindex, str(ifindex)))
        self.on_found(ifindex, address, True)
