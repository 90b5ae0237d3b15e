"""The overlay socket: the daemon's UDP port, with every packet pinned to its link.

Data model: ``OverlaySocket`` owns one UDP socket bound to the overlay port on all addresses,
with IP_PKTINFO (the arrival interface of each datagram), SO_TIMESTAMPNS (when the kernel
received it) and precedence "internetwork control" (TOS 0xC0).  ``counters``: send_errors,
recv_errors, emulated_drops.

Entry points: ``OverlaySocket(port, loop)``, ``fileno()``, ``receive(limit)`` -> every pending
datagram as (ifindex, source address, bytes, arrival time on the loop's clock), up to ``limit``
(so timers still run under a flood), ``send(link, packet)`` (through the link's emulation, if
setlink gave it one).

The daemon reads this socket in batches, at the engine's ticks (daemon.main): the arrival
time of each datagram is the kernel's, so RTT and liveness are measured as if it had been read
at once, and a router with one neighbor wakes once per hello round instead of twice.

Own traffic stays on the direct link: every packet to a neighbor is sent with IP_PKTINFO naming
the link's interface and source address, so the kernel routes it out of that interface even
when the overlay's best route to the neighbor's address goes elsewhere (the FIB lookup skips
next hops not on the requested interface and falls back to the connected subnet).  Neighbors
must therefore be on-link, which kernel routing needs anyway: a route's gateway must be on-link.
"""

from __future__ import annotations

import socket
import struct
import time
from collections import Counter

from spines_kr.daemon.udp import IP_PKTINFO, PKTINFO, pktinfo_cmsg

SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)  # SCM_TIMESTAMPNS has the same value
IPTOS_PREC_INTERNETCONTROL = 0xC0
TIMESPEC = struct.Struct("=qq")
CMSG_SPACE = socket.CMSG_SPACE(PKTINFO.size) + socket.CMSG_SPACE(TIMESPEC.size)
RECV_SIZE = 65535


class OverlaySocket:
    def __init__(self, port: int, loop) -> None:
        self.port = port
        self.loop = loop
        self.counters: Counter[str] = Counter()
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            s.setsockopt(socket.SOL_IP, IP_PKTINFO, 1)
            s.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
            s.setsockopt(socket.IPPROTO_IP, socket.IP_TOS, IPTOS_PREC_INTERNETCONTROL)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            s.setblocking(False)
            s.bind(("0.0.0.0", port))
        except BaseException:
            s.close()
            raise
        self.sock = s
        self._pktinfo: dict[tuple[int, str], list] = {}  # per link: the ancillary data list

    def fileno(self) -> int:
        return self.sock.fileno()

    def close(self) -> None:
        self.sock.close()

    def receive(self, limit: int = 512) -> list[tuple[int, str, bytes, float]]:
        out = []
        recvmsg = self.sock.recvmsg
        unpack, unpack_ts = PKTINFO.unpack_from, TIMESPEC.unpack_from
        now = self.loop.time()
        offset = now - time.time()  # the kernel's timestamps are wall clock
        for _ in range(limit):
            try:
                data, anc, _flags, addr = recvmsg(RECV_SIZE, CMSG_SPACE)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:  # e.g. an ICMP error reported on the socket
                self.counters["recv_errors"] += 1
                continue
            ifindex, at = 0, now
            for level, typ, cdata in anc:
                if level == socket.SOL_IP and typ == IP_PKTINFO and len(cdata) >= PKTINFO.size:
                    ifindex = unpack(cdata)[0]
                elif level == socket.SOL_SOCKET and typ == SO_TIMESTAMPNS and \
                        len(cdata) >= TIMESPEC.size:
                    sec, nsec = unpack_ts(cdata)
                    at = min(now, sec + nsec * 1e-9 + offset)
            out.append((ifindex, addr[0], data, at))
        return out

    def send(self, link, pkt: bytes) -> None:
        emu = link.emulation
        if emu is None:
            self._send(link, pkt)
            return
        now = self.loop.time()
        when = emu.schedule(now, len(pkt))
        if when is None:
            self.counters["emulated_drops"] += 1
        elif when <= now:
            self._send(link, pkt)
        else:
            self.loop.call_at(when, self._send, link, pkt)

    def _send(self, link, pkt: bytes) -> None:
        key = (link.ifindex, link.local_addr)
        anc = self._pktinfo.get(key)
        if anc is None:
            anc = self._pktinfo[key] = [pktinfo_cmsg(link.ifindex,
                                                     socket.inet_aton(link.local_addr))]
        try:
            self.sock.sendmsg([pkt], anc, 0, (link.peer_addr, self.port))
        except OSError:
            self.counters["send_errors"] += 1
