"""LAN hosts' multicast carried by the overlay's data plane, on kernels without multicast routing.

With ``-k 2`` on a kernel that has no IPv4 multicast routing (``daemon.features`` decides:
plan.multicast = "dataplane"), this part does what the kernel's multicast routing and the
IGMP proxy of ``daemon.multicast`` do otherwise:

Data model (``HostMulticast``): one packet socket per LAN (an up interface with an address
inside a prefix this node announces, not an overlay link), bound to IPv4, in all-multicast
mode, with a socket filter that passes only class D destinations; ``igmp``: group -> the LANs
whose hosts reported it (IGMPv1/2/3, ``netlink.mroute.decode_packet``), which makes this node
a member of the group (``commands.join`` with origin "igmp": flooded in our LSA like any
membership).

How a packet travels: a host sends to group G on its LAN; this node captures it (only packets
from a host of that LAN's subnet, never one it sent itself), copies it onto its other LANs with
members of G, and hands it to the data plane (``forwarding.send``: a message to G flagged
HOST_PACKET), which carries it along this node's shortest-path tree to every member node
exactly once; each member node writes it onto each of its member LANs (IP TTL one less, as a
router would; a packet whose TTL runs out is dropped), to the group's Ethernet address.
Non-member LANs get nothing.  Link-local groups (224.0.0.0/24) are never carried.

Entry points: ``HostMulticast(loop, commands, forwarding, log)``, ``sync()`` (after any change
of interfaces or prefixes: open and close LAN sockets), ``deliver(message) -> int`` (from the
data plane: write onto member LANs), ``status()``, ``close()``.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from collections import Counter

from spines_kr.dataplane.message import HOST_PACKET, UDP_LINKS, Message
from spines_kr.netlink.mroute import IgmpReport, MalformedMessage, decode_packet

ETH_P_IP = 0x0800
SOL_PACKET = 263
PACKET_ADD_MEMBERSHIP = 1
PACKET_MR_ALLMULTI = 2
PACKET_MULTICAST, PACKET_OUTGOING = 2, 4
SO_ATTACH_FILTER = 26
PACKET_MREQ = struct.Struct("=iHH8s")
READ_MAX = 256
LOCAL = ipaddress.IPv4Network("224.0.0.0/24")


def _checksum(header: bytes) -> int:
    total = sum(struct.unpack(f"!{len(header) // 2}H", header))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _sum16(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    return sum(struct.unpack(f"!{len(data) // 2}H", data))


def complete_udp_checksum(packet: bytes) -> bytes:
    """The packet with its UDP checksum computed.  A packet captured from a sender on the same
    machine or behind a veth carries only the pseudo-header's part of it (checksum offload:
    the kernel never computes what no wire will check), which a host elsewhere would reject
    (kernel 6.18: ``Udp InCsumErrors`` at the receiving host).  A zero checksum (none) stays."""
    ihl = (packet[0] & 0x0F) * 4
    if packet[9] != socket.IPPROTO_UDP or len(packet) < ihl + 8:
        return packet
    udp = bytearray(packet[ihl:])
    if udp[6:8] == b"\0\0":
        return packet
    length = int.from_bytes(udp[4:6], "big")
    if length < 8 or length > len(udp):
        return packet
    udp = udp[:length]
    udp[6:8] = b"\0\0"
    total = _sum16(packet[12:20] + struct.pack("!BBH", 0, socket.IPPROTO_UDP, length)) + \
        _sum16(bytes(udp))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    csum = ~total & 0xFFFF or 0xFFFF
    udp[6:8] = struct.pack("!H", csum)
    return packet[:ihl] + bytes(udp) + packet[ihl + length:]


def forward_copy(packet: bytes) -> bytes | None:
    """The IPv4 packet with its TTL one less and the header checksum redone (None: expired)."""
    if len(packet) < 20 or packet[0] >> 4 != 4:
        return None
    ihl = (packet[0] & 0x0F) * 4
    if ihl < 20 or len(packet) < ihl or packet[8] <= 1:
        return None
    head = bytearray(packet[:ihl])
    head[8] -= 1
    head[10:12] = b"\0\0"
    head[10:12] = struct.pack("!H", _checksum(bytes(head)))
    return bytes(head) + packet[ihl:]


def group_mac(group: int) -> bytes:
    return bytes([0x01, 0x00, 0x5E, (group >> 16) & 0x7F, (group >> 8) & 0xFF, group & 0xFF])


def _class_d_filter():
    """A classic BPF program for SO_ATTACH_FILTER: pass IPv4 packets to 224.0.0.0/4 (offsets
    from the network header: a SOCK_DGRAM packet socket), drop the rest.  The sock_fprog holds
    a pointer, hence ctypes (loaded only on this fallback path)."""
    import ctypes

    code = [
        (0x30, 0, 0, 16),      # ldb [16]       first byte of the destination
        (0x54, 0, 0, 0xF0),    # and #0xf0
        (0x15, 0, 1, 0xE0),    # jeq #0xe0      class D?
        (0x06, 0, 0, 0xFFFF),  # ret #65535     pass
        (0x06, 0, 0, 0),       # ret #0         drop
    ]
    raw = b"".join(struct.pack("=HBBI", *c) for c in code)
    buf = ctypes.create_string_buffer(raw, len(raw))
    prog = struct.pack("=HxxxxxxQ", len(code), ctypes.addressof(buf))
    return prog, buf  # keep buf alive while the program is attached


class HostMulticast:
    def __init__(self, loop, commands, forwarding, log) -> None:
        self.loop = loop
        self.c = commands
        self.forwarding = forwarding
        self.log = log
        self.socks: dict[int, socket.socket] = {}  # LAN ifindex -> packet socket
        self.subnets: dict[int, list[ipaddress.IPv4Network]] = {}
        self.igmp: dict[int, set[int]] = {}  # group -> LAN ifindexes with members
        self.counters: Counter[str] = Counter()
        self._filter = None

    # --- LANs ---------------------------------------------------------------------------------

    def _lans(self) -> dict[int, list[ipaddress.IPv4Network]]:
        nets = [ipaddress.IPv4Network(p) for p in self.c.cfg.prefixes]
        links = {l.ifindex for l in self.c.engine.links.values()}
        out: dict[int, list[ipaddress.IPv4Network]] = {}
        for ifindex, addr, plen in self.c.interfaces.addresses:
            if ifindex in links or ifindex == 1 or not self.c.link_is_up(ifindex):
                continue
            a = ipaddress.IPv4Address(addr)
            if any(a in n for n in nets):
                out.setdefault(ifindex, []).append(
                    ipaddress.IPv4Network(f"{addr}/{plen}", strict=False))
        return out

    def sync(self) -> None:
        lans = self._lans()
        self.subnets = lans
        for ifindex in sorted(set(lans) - set(self.socks)):
            try:
                self.socks[ifindex] = self._open(ifindex)
            except OSError as e:
                self.log.error("hostmcast.lan_failed", ifindex=ifindex, error=str(e))
        for ifindex in sorted(set(self.socks) - set(lans)):
            self._close(ifindex)
            for g in [g for g, l in self.igmp.items() if ifindex in l]:
                self._report(g, ifindex, False)

    def _open(self, ifindex: int) -> socket.socket:
        s = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETH_P_IP))
        try:
            if self._filter is None:
                self._filter = _class_d_filter()
            s.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, self._filter[0])
            s.bind((self.c.interfaces.names.get(ifindex, ""), ETH_P_IP))
            s.setsockopt(SOL_PACKET, PACKET_ADD_MEMBERSHIP,
                         PACKET_MREQ.pack(ifindex, PACKET_MR_ALLMULTI, 0, bytes(8)))
            s.setblocking(False)
        except BaseException:
            s.close()
            raise
        self.loop.add_reader(s.fileno(), lambda i=ifindex: self._on_readable(i))
        self.log.info("hostmcast.lan", ifindex=ifindex,
                      ifname=self.c.interfaces.names.get(ifindex, ""))
        return s

    def _close(self, ifindex: int) -> None:
        s = self.socks.pop(ifindex)
        self.loop.remove_reader(s.fileno())
        s.close()

    def close(self) -> None:
        for ifindex in list(self.socks):
            self._close(ifindex)

    def status(self) -> dict:
        return {"lans": sorted(self.socks), "groups": {str(ipaddress.IPv4Address(g)): sorted(l)
                                                       for g, l in sorted(self.igmp.items())},
                **dict(sorted(self.counters.items()))}

    # --- input: IGMP and hosts' multicast ------------------------------------------------------

    def _on_readable(self, ifindex: int) -> None:
        s = self.socks.get(ifindex)
        if s is None:
            return
        for _ in range(READ_MAX):
            try:
                packet, addr = s.recvfrom(65535)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self.counters["recv_errors"] += 1
                return
            if addr[2] != PACKET_MULTICAST or len(packet) < 20:
                continue  # our own copies (PACKET_OUTGOING), and anything not multicast
            if packet[9] == socket.IPPROTO_IGMP:
                self._igmp(packet, ifindex)
                continue
            dst = int.from_bytes(packet[16:20], "big")
            src = ipaddress.IPv4Address(packet[12:16])
            if ipaddress.IPv4Address(dst) in LOCAL:
                continue
            if not any(src in n for n in self.subnets.get(ifindex, ())):
                self.counters["dropped.not_from_lan"] += 1
                continue
            self._from_host(dst, packet, ifindex)

    def _igmp(self, packet: bytes, ifindex: int) -> None:
        try:
            events = decode_packet(packet, ifindex)
        except MalformedMessage:
            self.counters["dropped.igmp_malformed"] += 1
            return
        for ev in events:
            if isinstance(ev, IgmpReport):
                self._report(int(ipaddress.IPv4Address(ev.group)), ifindex, ev.joined)

    def _report(self, group: int, ifindex: int, joined: bool) -> None:
        lans = self.igmp.get(group, set())
        had = bool(lans)
        (lans.add if joined else lans.discard)(ifindex)
        if lans:
            self.igmp[group] = lans
        else:
            self.igmp.pop(group, None)
        name = str(ipaddress.IPv4Address(group))
        if lans and not had:
            try:
                self.c.join(name, True, origin="igmp")
            except ValueError as e:
                self.counters["igmp_refused"] += 1
                self.log.warning("hostmcast.join_refused", group=name, error=str(e))
        elif had and not lans:
            self.c.join(name, False, origin="igmp")

    def _from_host(self, group: int, packet: bytes, ifindex: int) -> None:
        self.counters["host_packets_in"] += 1
        packet = complete_udp_checksum(packet)
        copy = forward_copy(packet)
        if copy is None:
            self.counters["dropped.ttl"] += 1
            return
        self._write(group, copy, exclude=ifindex)
        node = self.c.engine
        self.forwarding.send(Message(node.id, 0, group, 0, packet, ttl=255,
                                     link=UDP_LINKS | HOST_PACKET))

    # --- output: member LANs ---------------------------------------------------------------------

    def deliver(self, msg: Message) -> int:
        """A host's packet arrived through the overlay: onto every member LAN of ours."""
        copy = forward_copy(msg.payload)
        if copy is None:
            self.counters["dropped.ttl"] += 1
            return 0
        return self._write(msg.dst, copy)

    def _write(self, group: int, packet: bytes, exclude: int | None = None) -> int:
        n = 0
        mac = group_mac(group)
        for ifindex in sorted(self.igmp.get(group, ())):
            s = self.socks.get(ifindex)
            if s is None or ifindex == exclude:
                continue
            try:
                s.sendto(packet, (self.c.interfaces.names.get(ifindex, ""), ETH_P_IP, 0, 0, mac))
                n += 1
                self.counters["host_packets_out"] += 1
            except OSError:
                self.counters["dropped.send"] += 1
        return n
