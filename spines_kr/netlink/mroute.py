"""IPv4 multicast forwarding in the kernel: the MRT socket, vifs, (S,G) entries, upcalls, IGMP.

The daemon computes the trees; this module installs them with the kernel's stock multicast
routing API (linux/mroute.h; the socket options mrouted and pimd use), which pyroute2 does not
wrap, and reads what the kernel tells the router back.

Data model:
    MulticastRouter(table, netns)
        one raw IGMP socket that did MRT_INIT on one multicast routing table of one namespace:
        the kernel's router socket for that table.  The table's vifs (``add_vif``/``del_vif``;
        ``vifs``: vifi -> ifindex) and its (S,G) forwarding entries (``set_mfc``/``del_mfc``;
        ``dump()`` -> {(S, G): MfcEntry}) live as long as the socket: ``close()`` (MRT_DONE),
        or the process dying, flushes both.
    Upcall(kind, vifi, source, group)
        the kernel asking about a packet: IGMPMSG_NOCACHE (no (S,G) entry yet; the packet is held
        until one is installed) or IGMPMSG_WRONGVIF (arrived on another vif than the entry's iif).
    IgmpReport(ifindex, source, group, joined)
        a host's membership report or leave (IGMPv1/v2/v3) seen on a LAN interface, for the
        daemon's IGMP proxy.
    MfcEntry(source, group, iif, oifs, packets, bytes, wrong_if)
        an installed entry as the kernel reports it (RTM_GETROUTE, family RTNL_FAMILY_IPMR).

Entry points: the methods above, ``fileno()`` and ``read_upcalls()`` (non-blocking: Upcall and
IgmpReport events; malformed input is counted in ``stats``, never raised), ``listen_igmp(ifindex)``,
``join_local(group, ifindex)``/``leave_local``.  Codecs are module functions with the kernel's
struct names (``encode_vifctl``, ``encode_mfcctl``, ``decode_packet``, ``decode_mfc``) and golden
tests in tests/unit/test_mroute_codec.py.

Specs: linux/mroute.h (struct vifctl, mfcctl, igmpmsg), RFC 2236 (IGMPv2), RFC 3376 (IGMPv3
reports), RFC 2113 (router alert).

Kernel behaviour followed (checked on 6.18; reproducers: tests/kernel/test_mroute.py, whose
namespaces are src -- router -- dst on veths):
  * One router socket per table per namespace: a second MRT_INIT fails with EADDRINUSE.
    MRT_TABLE must come before MRT_INIT (after it: EBUSY); kernels without
    CONFIG_IP_MROUTE_MULTIPLE_TABLES answer MRT_TABLE with ENOPROTOOPT, and there is only the
    default table (RT_TABLE_DEFAULT, 253).  We always send MRT_TABLE (253 when no table is asked
    for, which is harmless) so ``multiple_tables`` says what the kernel has.
  * A table other than the default receives packets only through a multicast rule
    (``ip mrule add iif a0 lookup 1000``; the only rule by default is
    ``32767: from all lookup default``).  So each vif of a non-default table gets a rule
    ``iif <dev> lookup <table> proto spines`` at ``rules.default_priority(table)``, removed with
    the vif and at close; rules outlive the socket, so a new router of the table first sweeps
    rules of ours left by a crash.  A device that is a vif of two overlays' tables is looked up
    in the table whose rule comes first.
  * A vif is named by ifindex (VIFF_USE_IFINDEX).  While a device is a vif its
    ``net.ipv4.conf.<dev>.mc_forwarding`` counts up (it is a counter: 1 per table it is a vif
    of), ``conf.all.mc_forwarding`` counts router sockets, and the device is in allmulti mode.
    The kernel forwards multicast only from a vif to vifs, whatever ``ip_forward`` says.
    vifi >= MAXVIFS (32) fails with ENFILE; a vifi in use with EADDRINUSE; an unknown ifindex
    with EADDRNOTAVAIL; deleting a missing vif with EADDRNOTAVAIL.  The kernel accepts one
    device as two vifs of one table; we refuse it.
  * An (S,G) entry holds a ttl threshold per vif: a packet goes out of vif i when its ttl
    (before the decrement) exceeds ttls[i]; 0 and 255 mean "not an oif" (so thresholds are
    1..254).  Thresholds are copied into the entry when it is written and are not updated when
    a vif comes or goes: after del_vif/add_vif, rewrite the entries that use it.  Deleting a
    missing entry fails with ENOENT (for us: done).
  * No entry: the first few packets are held in an "unresolved" entry (``ip mroute`` shows
    ``Iif: unresolved``; ``dump()`` an entry with iif None), one IGMPMSG_NOCACHE goes to the
    router socket, and installing the entry within about 10 s releases the held packets along
    it (once each); otherwise they are dropped.
  * Deleting a device deletes its vif (the kernel's netdevice notifier); ``del_vif`` then
    just forgets it.  Our rule names the device, so it outlives it until ``del_vif``.
  * IGMPMSG_WRONGVIF comes only with MRT_ASSERT (``wrongvif_upcalls=True``) and only when the
    packet arrives on a vif that is an *oif* of the entry (another forwarder on that LAN, the
    PIM assert case), at most once per 3 s per entry; a packet on any other wrong vif is
    dropped silently and counted in ``wrong_if``.
  * An upcall is a copy of the packet's IP header with the protocol byte set to 0, the first
    8 bytes left as they were (struct igmpmsg calls them unused), im_msgtype over the ttl and
    im_vif/im_vif_hi over the checksum, followed by an 8-byte IGMP header.  Protocol 0 is how
    it is told apart from an IGMP packet (protocol 2) on the same socket.

Local delivery (the node's own stack) with multicast routing, observed on 6.18 with an entry
forwarding vif A -> vif B (``test_local_delivery``):
  * a process joined (IP_ADD_MEMBERSHIP) on the iif A receives one copy, with or without an
    entry (ip_mr_input delivers locally what the node joined on the arrival device);
  * joined on an oif B it receives one copy: ip_mc_output loops a forwarded packet back only
    when the node joined the group on the output device; joined on a vif that is not an oif
    (or whose threshold stops the packet) it receives nothing;
  * joined on both A and B it receives *two* copies.  So join on one interface only.  The
    tree-independent way is a vif of its own for the node (a veth pair or a dummy device;
    checked with a veth), joined there and listed in the oifs exactly when the node is a member:
    one copy, whatever the iif.
  * a process on the node that sends to a group leaves through its IP_MULTICAST_IF device (the
    hosts there get it whatever the entries say) and, with IP_MULTICAST_LOOP on (the
    default), is looped back into multicast routing as if it had arrived on that device: the
    entry (node address, G) needs iif = that device's vif.  With IP_MULTICAST_LOOP off it is
    not forwarded to other vifs at all.

IGMP on the router socket (observed on 6.18, ``test_igmp_reports``):
  * MRT_INIT puts the socket on the router-alert chain, so IGMPv2 reports (sent to the group,
    with the router alert option) arriving on a vif reach it; so does every IGMP packet the node
    delivers locally (a raw IGMP socket sees them all, on every interface).
  * IGMPv3 reports go to 224.0.0.22 and IGMPv2 leaves to 224.0.0.2, link-local groups that are
    never routed: the node sees them only when it has joined those groups on the interface,
    which ``listen_igmp(ifindex)`` does (as igmpproxy does).
  * The node's own reports (for groups it joined, including 224.0.0.22) are looped back to the
    socket; they carry one of the node's addresses as source and are dropped here (``stats
    ['own']``).  Hosts repeat unsolicited reports (robustness: twice), and answer queries with
    reports; the kernel sends no queries for a router, so expiring memberships needs a querier.
  * IGMPv3 records map onto joins and leaves as igmpproxy maps them: IS_EX/TO_EX/ALLOW and
    IS_IN/TO_IN with sources are joins, IS_IN/TO_IN without sources are leaves, BLOCK is
    ignored; source lists are otherwise ignored ((*,G) membership).  Link-local groups
    (224.0.0.0/24) are not reported.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import socket
import struct
import time
from collections.abc import Iterable, Iterator
from typing import NamedTuple

from spines_kr.log import get_logger
from spines_kr import RTPROT_SPINES
from spines_kr.netlink.core import U32, Netlink, align as _align, attr as _attr, parse_attrs
from spines_kr.netlink.kernel import (
    IFADDRMSG, IFINFOMSG, RTA_MULTIPATH, RTA_TABLE, RTM_GETADDR, RTM_GETLINK, RTM_GETROUTE,
    RTM_NEWADDR, RTM_NEWLINK, RTM_NEWROUTE, RTMSG, RTNEXTHOP, decode_addr, decode_link,
    kernel_input,
)
from spines_kr.netlink.nsenter import socket_in_netns
from spines_kr.netlink.rules import RTM_DELRULE, RTM_NEWRULE, default_priority, dump_rules, \
    encode_rule, write_rule

log = get_logger(__name__)

# linux/mroute.h
MRT_INIT, MRT_DONE, MRT_ADD_VIF, MRT_DEL_VIF, MRT_ADD_MFC, MRT_DEL_MFC = range(200, 206)
MRT_VERSION, MRT_ASSERT, MRT_PIM, MRT_TABLE = 206, 207, 208, 209
MAXVIFS = 32
VIFF_USE_IFINDEX = 0x8
IGMPMSG_NOCACHE, IGMPMSG_WRONGVIF, IGMPMSG_WHOLEPKT, IGMPMSG_WRVIFWHOLE = 1, 2, 3, 4
# linux/rtnetlink.h, linux/fib_rules.h, linux/in.h
RTNL_FAMILY_IPMR = 128
RT_TABLE_DEFAULT = 253
RTA_DST, RTA_SRC, RTA_IIF, RTA_MFC_STATS = 1, 2, 3, 17
RTNH_F_UNRESOLVED = 0x20  # rtm_flags of an entry still waiting for the router
IP_PKTINFO = 8
MAX_TABLE = 100_000_000 - 1  # ipmr refuses ids from 10^8 on (other than 253)
# IGMP message types (RFC 1112, 2236, 3376) and IGMPv3 group record types
IGMP_QUERY, IGMPV1_REPORT, IGMPV2_REPORT, IGMPV2_LEAVE, IGMPV3_REPORT = 0x11, 0x12, 0x16, 0x17, 0x22
MODE_IS_INCLUDE, MODE_IS_EXCLUDE, CHANGE_TO_INCLUDE, CHANGE_TO_EXCLUDE = 1, 2, 3, 4
ALLOW_NEW_SOURCES, BLOCK_OLD_SOURCES = 5, 6
ALL_V3_ROUTERS, ALL_ROUTERS = "224.0.0.22", "224.0.0.2"  # IGMPv3 reports, IGMPv2 leaves

# struct vifctl: vifc_vifi (vifi_t = u16), vifc_flags, vifc_threshold, vifc_rate_limit,
# union {vifc_lcl_addr, vifc_lcl_ifindex}, vifc_rmt_addr: 16 bytes.
VIFCTL = struct.Struct("=HBBIi4s")
# struct mfcctl: mfcc_origin, mfcc_mcastgrp, mfcc_parent (u16), mfcc_ttls[MAXVIFS], 2 bytes of
# padding (the next field is an unsigned int at offset 44), mfcc_pkt_cnt, mfcc_byte_cnt,
# mfcc_wrong_if, mfcc_expire (int): 60 bytes.
MFCCTL = struct.Struct(f"=4s4sH{MAXVIFS}s2xIIIi")
# struct igmpmsg: unused1, unused2, im_msgtype, im_mbz, im_vif, im_vif_hi, im_src, im_dst.
IGMPMSG = struct.Struct("=IIBBBB4s4s")
IN_PKTINFO = struct.Struct("=i4s4s")  # ipi_ifindex, ipi_spec_dst, ipi_addr
IP_MREQN = struct.Struct("=4s4si")  # imr_multiaddr, imr_address, imr_ifindex
MFC_STATS = struct.Struct("=QQQ")  # struct rta_mfc_stats: packets, bytes, wrong_if

RECV_SIZE = 2048  # upcalls are 28 bytes, IGMP messages a few hundred
READ_MAX = 1000  # datagrams per read_upcalls(): a flood cannot starve the caller's loop
ADDRESS_REFRESH = 1.0  # s: at most one address dump per second to recognise our own reports


class MrouteError(OSError):
    """The kernel refused a multicast routing request; the message says which and why."""


class MalformedMessage(ValueError):
    """A datagram on the router socket that is neither a valid upcall nor valid IGMP."""


class Upcall(NamedTuple):
    kind: int  # IGMPMSG_NOCACHE, IGMPMSG_WRONGVIF, ...
    vifi: int  # the vif the packet arrived on
    source: str
    group: str


class IgmpReport(NamedTuple):
    ifindex: int  # arrival interface (IP_PKTINFO)
    source: str  # the reporting host; 0.0.0.0 is legal (RFC 3376 4.2.13)
    group: str
    joined: bool  # False: a leave (IGMPv2 leave, IGMPv3 IS_IN/TO_IN without sources)


class MfcEntry(NamedTuple):
    source: str
    group: str
    iif: int | None  # vifi; None while unresolved (the kernel holds packets and asked us)
    oifs: dict[int, int]  # vifi -> ttl threshold
    packets: int = 0
    bytes: int = 0
    wrong_if: int = 0


# --- codec ------------------------------------------------------------------------------------


def _in_addr(address: str) -> bytes:
    return ipaddress.IPv4Address(address).packed


def _ntoa(data: bytes) -> str:
    return socket.inet_ntop(socket.AF_INET, data)


def _check_vifi(vifi: int, what: str = "vif") -> None:
    if not (isinstance(vifi, int) and 0 <= vifi < MAXVIFS):
        raise ValueError(f"{what} {vifi!r} is not in 0..{MAXVIFS - 1} (MAXVIFS)")


def encode_vifctl(vifi: int, ifindex: int = 0, threshold: int = 1,
                  flags: int = VIFF_USE_IFINDEX) -> bytes:
    """struct vifctl for MRT_ADD_VIF (a vif named by ifindex) and MRT_DEL_VIF (vifi only)."""
    _check_vifi(vifi)
    if not 0 <= threshold <= 255:
        raise ValueError(f"vif threshold {threshold} is not in 0..255")
    return VIFCTL.pack(vifi, flags, threshold, 0, ifindex, bytes(4))


def encode_mfcctl(source: str, group: str, parent: int = 0,
                  oifs: dict[int, int] | None = None) -> bytes:
    """struct mfcctl for MRT_ADD_MFC (parent = iif vifi, oifs = {vifi: ttl threshold}) and
    MRT_DEL_MFC (source and group only)."""
    if not ipaddress.IPv4Address(group).is_multicast:
        raise ValueError(f"group {group} is not a multicast (class D) address")
    _check_vifi(parent, "iif")
    ttls = bytearray(MAXVIFS)
    for vifi, ttl in (oifs or {}).items():
        _check_vifi(vifi, "oif")
        if vifi == parent:
            raise ValueError(f"vif {vifi} is both the iif and an oif")
        if not 1 <= ttl <= 254:
            raise ValueError(f"ttl threshold {ttl} of oif {vifi} is not in 1..254")
        ttls[vifi] = ttl
    return MFCCTL.pack(_in_addr(source), _in_addr(group), parent, bytes(ttls), 0, 0, 0, 0)


def _checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071) of ``data``; 0 when a checksum inside it is right."""
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _routable(group: bytes) -> bool:
    """Class D and outside 224.0.0.0/24, whose groups are never forwarded."""
    return 224 <= group[0] <= 239 and group[:3] != b"\xe0\0\0"


def _decode_igmp(igmp: bytes, ifindex: int, source: str) -> list[IgmpReport]:
    if len(igmp) < 8:
        raise MalformedMessage(f"IGMP message of {len(igmp)} bytes")
    if _checksum(igmp):
        raise MalformedMessage("bad IGMP checksum")
    kind = igmp[0]
    if kind in (IGMPV1_REPORT, IGMPV2_REPORT, IGMPV2_LEAVE):
        group = igmp[4:8]
        if not 224 <= group[0] <= 239:
            raise MalformedMessage(f"IGMP type {kind:#x} for {_ntoa(group)}, not a group")
        if not _routable(group):
            return []
        return [IgmpReport(ifindex, source, _ntoa(group), kind != IGMPV2_LEAVE)]
    if kind != IGMPV3_REPORT:
        return []  # queries, and types of protocols we do not speak (DVMRP, PIMv1, mtrace)
    (count,) = struct.unpack_from("!H", igmp, 6)
    reports, offset = [], 8
    for _ in range(count):
        if offset + 8 > len(igmp):
            raise MalformedMessage("IGMPv3 report shorter than its records")
        rtype, aux_words, n_sources = struct.unpack_from("!BBH", igmp, offset)
        group = igmp[offset + 4:offset + 8]
        offset += 8 + 4 * n_sources + 4 * aux_words
        if offset > len(igmp):
            raise MalformedMessage("IGMPv3 record longer than the report")
        if not 224 <= group[0] <= 239:
            raise MalformedMessage(f"IGMPv3 record for {_ntoa(group)}, not a group")
        if not _routable(group):
            continue
        if rtype in (MODE_IS_INCLUDE, CHANGE_TO_INCLUDE):
            joined = n_sources > 0  # INCLUDE {}: no source wanted, a leave
        elif rtype in (MODE_IS_EXCLUDE, CHANGE_TO_EXCLUDE, ALLOW_NEW_SOURCES):
            joined = True
        else:
            continue  # BLOCK_OLD_SOURCES and unknown record types (RFC 3376 4.2.12: ignore)
        reports.append(IgmpReport(ifindex, source, _ntoa(group), joined))
    return reports


def decode_packet(data: bytes, ifindex: int = 0) -> list[Upcall | IgmpReport]:
    """The events in one datagram read from the router socket; [] for IGMP we do not act on.

    ``ifindex`` is the arrival interface (from IP_PKTINFO).  Raises MalformedMessage.
    """
    if len(data) < 20:
        raise MalformedMessage(f"datagram of {len(data)} bytes")
    if data[9] == 0:  # the protocol byte: 0 in an upcall (im_mbz), 2 in an IGMP packet
        _u1, _u2, kind, _mbz, vif, vif_hi, src, dst = IGMPMSG.unpack_from(data)
        vifi = vif | vif_hi << 8
        if not (IGMPMSG_NOCACHE <= kind <= IGMPMSG_WRVIFWHOLE and vifi < MAXVIFS):
            raise MalformedMessage(f"upcall type {kind} vif {vifi}")
        return [Upcall(kind, vifi, _ntoa(src), _ntoa(dst))]
    if data[0] >> 4 != 4 or data[9] != socket.IPPROTO_IGMP:
        raise MalformedMessage(f"not IPv4 IGMP (version {data[0] >> 4}, protocol {data[9]})")
    ihl = (data[0] & 0xF) * 4
    (total,) = struct.unpack_from("!H", data, 2)
    if ihl < 20 or total < ihl or total > len(data):
        raise MalformedMessage(f"IP header length {ihl}, total length {total} of {len(data)}")
    return _decode_igmp(data[ihl:total], ifindex, _ntoa(data[12:16]))


def decode_mfc(payload: bytes, vifi_of: dict[int, int]) -> tuple[int, MfcEntry]:
    """(table, entry) of one RTM_NEWROUTE of family RTNL_FAMILY_IPMR; ifindexes are mapped to
    vifis with ``vifi_of`` (ifindex -> vifi).  Raises KeyError for an ifindex not in it."""
    _family, _dl, _sl, _tos, table, _proto, _scope, _type, flags = RTMSG.unpack_from(payload)
    attrs = parse_attrs(payload, RTMSG.size)
    table = U32.unpack(attrs[RTA_TABLE])[0] if RTA_TABLE in attrs else table
    source = _ntoa(attrs[RTA_SRC]) if RTA_SRC in attrs else "0.0.0.0"
    group = _ntoa(attrs[RTA_DST]) if RTA_DST in attrs else "0.0.0.0"
    packets = octets = wrong = 0
    if RTA_MFC_STATS in attrs and len(attrs[RTA_MFC_STATS]) >= MFC_STATS.size:
        packets, octets, wrong = MFC_STATS.unpack_from(attrs[RTA_MFC_STATS])
    if flags & RTNH_F_UNRESOLVED or RTA_IIF not in attrs:
        return table, MfcEntry(source, group, None, {}, packets, octets, wrong)
    iif = vifi_of[U32.unpack(attrs[RTA_IIF])[0]]
    oifs = {}
    data, offset = attrs.get(RTA_MULTIPATH, b""), 0
    while offset + RTNEXTHOP.size <= len(data):
        length, _flags, ttl, ifindex = RTNEXTHOP.unpack_from(data, offset)
        if length < RTNEXTHOP.size:
            break
        oifs[vifi_of[ifindex]] = ttl  # rtnh_hops carries the ttl threshold here
        offset += _align(length)
    return table, MfcEntry(source, group, iif, oifs, packets, octets, wrong)


def encode_mrule(msg_type: int, seq: int, ifname: str, table: int, priority: int,
                 protocol: int) -> bytes:
    """RTM_NEWRULE/RTM_DELRULE of family RTNL_FAMILY_IPMR: ``iif ifname lookup table``."""
    return encode_rule(msg_type, seq, table, priority, protocol, family=RTNL_FAMILY_IPMR,
                       iifname=ifname)


# --- the router socket ------------------------------------------------------------------------


class _Memberships:
    """The node's own group memberships, on ordinary UDP sockets of the namespace.

    A socket holds at most net.ipv4.igmp_max_memberships (20 by default) memberships: past that
    IP_ADD_MEMBERSHIP fails with ENOBUFS, and another socket is opened.
    """

    def __init__(self, netns: str | None) -> None:
        self.netns = netns
        self.sockets: list[socket.socket] = []
        self.held: dict[tuple[str, int], socket.socket] = {}

    def join(self, group: str, ifindex: int) -> bool:
        if (group, ifindex) in self.held:
            return False
        mreq = IP_MREQN.pack(_in_addr(group), bytes(4), ifindex)
        for sock in [*self.sockets, None]:
            fresh = sock is None
            if fresh:
                sock = socket_in_netns(self.netns, socket.AF_INET, socket.SOCK_DGRAM)
            try:
                sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreq)
            except OSError as e:
                if fresh:
                    sock.close()
                if e.errno == errno.ENOBUFS and not fresh:
                    continue  # this socket is full
                raise MrouteError(e.errno, f"join {group} on ifindex {ifindex}: {e.strerror}") \
                    from None
            if fresh:
                self.sockets.append(sock)
            self.held[group, ifindex] = sock
            return True
        raise AssertionError("the last candidate is a fresh socket, which returns or raises")

    def leave(self, group: str, ifindex: int) -> bool:
        sock = self.held.pop((group, ifindex), None)
        if sock is None:
            return False
        mreq = IP_MREQN.pack(_in_addr(group), bytes(4), ifindex)
        with contextlib.suppress(OSError):  # the interface is gone, and the membership with it
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_DROP_MEMBERSHIP, mreq)
        return True

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()
        self.sockets.clear()
        self.held.clear()


class MulticastRouter:
    """The kernel's multicast router socket for one table of one namespace, and what it hears.

    ``table=None`` (or 253) is the default table.  When the kernel has a single table,
    ``multiple_tables`` is False and ``table`` is 253, whatever was asked: two routers of one
    namespace then collide (MrouteError, EADDRINUSE).
    """

    def __init__(self, table: int | None = None, netns: str | None = None, *,
                 protocol: int = RTPROT_SPINES, rule_priority: int | None = None,
                 wrongvif_upcalls: bool = False) -> None:
        asked = RT_TABLE_DEFAULT if table is None else table
        if not (isinstance(asked, int) and 1 <= asked <= MAX_TABLE):
            raise ValueError(f"multicast routing table {table!r} is not in 1..{MAX_TABLE}")
        self.netns = netns
        self.protocol = protocol
        self.table = asked
        self.rule_priority = default_priority(asked) if rule_priority is None else rule_priority
        self.multiple_tables = True
        self.stats = {"upcalls": 0, "igmp": 0, "own": 0, "ignored": 0, "malformed": 0}
        self._vifs: dict[int, int] = {}  # vifi -> ifindex
        self._rules: dict[int, str] = {}  # ifindex -> ifname of our mrule
        self._nl: Netlink | None = None
        self._local: set[str] = set()
        self._local_read = float("-inf")
        self._members = _Memberships(netns)
        where = f"namespace {netns!r}" if netns else "this namespace"
        self.sock = socket_in_netns(netns, socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_IGMP)
        try:
            try:
                self.sock.setsockopt(socket.IPPROTO_IP, MRT_TABLE, U32.pack(asked))
            except OSError as e:
                if e.errno not in (errno.ENOPROTOOPT, errno.EOPNOTSUPP):
                    raise MrouteError(e.errno, f"MRT_TABLE {asked} in {where}: {e.strerror}") \
                        from None
                self.multiple_tables = False
                self.table = RT_TABLE_DEFAULT
                if asked != RT_TABLE_DEFAULT:
                    log.warning("mroute.table.unsupported", asked=asked, using=RT_TABLE_DEFAULT,
                                reason="kernel without CONFIG_IP_MROUTE_MULTIPLE_TABLES")
            try:
                self.sock.setsockopt(socket.IPPROTO_IP, MRT_INIT, struct.pack("=i", 1))
            except OSError as e:
                if e.errno == errno.EADDRINUSE:
                    raise MrouteError(e.errno, (
                        f"multicast routing table {self.table} in {where} already has a router "
                        "socket (another spines-kr on this table, or mrouted/pimd/smcroute): "
                        "the kernel allows one per table") + (
                        "" if self.multiple_tables else
                        "; this kernel has only the default table")) from None
                if e.errno in (errno.ENOPROTOOPT, errno.EOPNOTSUPP):
                    raise MrouteError(e.errno, "kernel without IPv4 multicast routing "
                                               "(CONFIG_IP_MROUTE)") from None
                raise MrouteError(e.errno, f"MRT_INIT in {where}: {e.strerror}") from None
            self.sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
            if wrongvif_upcalls:
                self.sock.setsockopt(socket.IPPROTO_IP, MRT_ASSERT, struct.pack("=i", 1))
            self.sock.setblocking(False)
            if self._uses_rules:
                self._sweep_rules()
        except BaseException:
            self.close()
            raise
        log.info("mroute.open", table=self.table, netns=netns,
                 multiple_tables=self.multiple_tables)

    # -- lifecycle --

    def fileno(self) -> int:
        return self.sock.fileno()

    def close(self) -> None:
        """Remove our rules, MRT_DONE (the kernel flushes the table's vifs and entries), close."""
        if self.sock.fileno() < 0:
            return
        for ifindex in list(self._rules):
            with contextlib.suppress(OSError):
                self._del_rule(ifindex)
        with contextlib.suppress(OSError):  # EACCES when MRT_INIT had failed: nothing to undo
            self.sock.setsockopt(socket.IPPROTO_IP, MRT_DONE, b"")
        self.sock.close()
        self._members.close()
        if self._nl is not None:
            self._nl.close()
            self._nl = None
        self._vifs.clear()

    def __enter__(self) -> MulticastRouter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- vifs --

    @property
    def vifs(self) -> dict[int, int]:
        """vifi -> ifindex of our vifs."""
        return dict(self._vifs)

    def vif_of(self, ifindex: int) -> int | None:
        return next((v for v, i in self._vifs.items() if i == ifindex), None)

    def add_vif(self, vifi: int | None, ifindex: int, threshold: int = 1) -> int:
        """Make ``ifindex`` vif ``vifi`` (None: the lowest free one); return the vifi.

        Adding the same (vifi, ifindex) again does nothing.
        """
        have = self.vif_of(ifindex)
        if have is not None and vifi in (None, have):
            return have
        if have is not None:
            raise ValueError(f"ifindex {ifindex} is vif {have} already, not {vifi}")
        if vifi is None:
            vifi = next((v for v in range(MAXVIFS) if v not in self._vifs), None)
            if vifi is None:
                raise MrouteError(errno.ENFILE, f"all {MAXVIFS} vifs (MAXVIFS) of multicast "
                                                f"routing table {self.table} are in use")
        request = encode_vifctl(vifi, ifindex, threshold)
        if vifi in self._vifs:
            raise MrouteError(errno.EADDRINUSE, f"vif {vifi} is ifindex {self._vifs[vifi]}")
        try:
            self.sock.setsockopt(socket.IPPROTO_IP, MRT_ADD_VIF, request)
        except OSError as e:
            reason = {errno.EADDRNOTAVAIL: "no such interface",
                      errno.EADDRINUSE: "vif in use (by another program on this table?)",
                      errno.ENFILE: f"vifi not below MAXVIFS ({MAXVIFS})"}.get(e.errno, e.strerror)
            raise MrouteError(e.errno, f"add vif {vifi} ifindex {ifindex} to table "
                                       f"{self.table}: {reason}") from None
        self._vifs[vifi] = ifindex
        if self._uses_rules:
            try:
                self._add_rule(ifindex)
            except OSError:
                self.del_vif(vifi)
                raise
        log.info("mroute.vif.added", table=self.table, vifi=vifi, ifindex=ifindex)
        return vifi

    def del_vif(self, vifi: int) -> bool:
        """Remove vif ``vifi`` (and its rule); False when it was not ours."""
        ifindex = self._vifs.get(vifi)
        if ifindex is None:
            return False
        try:
            self.sock.setsockopt(socket.IPPROTO_IP, MRT_DEL_VIF, encode_vifctl(vifi))
        except OSError as e:
            if e.errno != errno.EADDRNOTAVAIL:  # gone already: its device was deleted
                raise MrouteError(e.errno, f"delete vif {vifi}: {e.strerror}") from None
        del self._vifs[vifi]
        if ifindex in self._rules:
            self._del_rule(ifindex)
        log.info("mroute.vif.deleted", table=self.table, vifi=vifi, ifindex=ifindex)
        return True

    # -- (S,G) entries --

    def set_mfc(self, source: str, group: str, iif_vifi: int,
                oif_vifis: dict[int, int]) -> None:
        """Install or replace the entry (source, group): arriving on ``iif_vifi``, out of every
        vif of ``oif_vifis`` (vifi -> ttl threshold, 1..254).  Vifs must be ours."""
        for vifi in (iif_vifi, *oif_vifis):
            if vifi not in self._vifs:
                raise ValueError(f"vif {vifi} is not a vif of table {self.table}")
        request = encode_mfcctl(source, group, iif_vifi, oif_vifis)
        try:
            self.sock.setsockopt(socket.IPPROTO_IP, MRT_ADD_MFC, request)
        except OSError as e:
            raise MrouteError(e.errno, f"add ({source},{group}) iif {iif_vifi} to table "
                                       f"{self.table}: {e.strerror}") from None

    def del_mfc(self, source: str, group: str) -> bool:
        """Remove the entry; False when there was none."""
        try:
            self.sock.setsockopt(socket.IPPROTO_IP, MRT_DEL_MFC, encode_mfcctl(source, group))
        except OSError as e:
            if e.errno == errno.ENOENT:
                return False
            raise MrouteError(e.errno, f"delete ({source},{group}) from table {self.table}: "
                                       f"{e.strerror}") from None
        return True

    @kernel_input
    def dump(self) -> dict[tuple[str, str], MfcEntry]:
        """The (S,G) entries of our table by (source, group), unresolved ones with iif None.

        Read over rtnetlink (RTM_GETROUTE, family RTNL_FAMILY_IPMR, filtered by RTA_TABLE), which
        works for every table; /proc/net/ip_mr_cache shows only the default table.
        """
        request = RTMSG.pack(RTNL_FAMILY_IPMR, 0, 0, 0, self.table if self.table < 256 else 0,
                             0, 0, 0, 0) + _attr(RTA_TABLE, U32.pack(self.table))
        vifi_of = {ifindex: vifi for vifi, ifindex in self._vifs.items()}
        entries = {}
        try:
            for mtype, payload in self._netlink().dump(RTM_GETROUTE, request):
                if mtype != RTM_NEWROUTE:
                    continue
                try:
                    table, entry = decode_mfc(payload, vifi_of)
                except KeyError as e:
                    log.warning("mroute.dump.foreign_vif", table=self.table, ifindex=e.args[0])
                    continue
                if table == self.table:
                    entries[entry.source, entry.group] = entry
        except OSError as e:
            if e.errno != errno.ENOENT:  # ENOENT: no such table (yet)
                raise
        return entries

    # -- upcalls and IGMP --

    def read_upcalls(self) -> list[Upcall | IgmpReport]:
        """What the kernel queued on the socket, without blocking; never raises on bad input."""
        events: list[Upcall | IgmpReport] = []
        for _ in range(READ_MAX):
            try:
                data, ancillary, _flags, _addr = self.sock.recvmsg(
                    RECV_SIZE, socket.CMSG_SPACE(IN_PKTINFO.size))
            except (BlockingIOError, InterruptedError):
                break
            ifindex = 0
            for level, kind, value in ancillary:
                if level == socket.IPPROTO_IP and kind == IP_PKTINFO and len(value) >= 4:
                    ifindex = IN_PKTINFO.unpack_from(value.ljust(IN_PKTINFO.size, b"\0"))[0]
            try:
                found = decode_packet(data, ifindex)
            except (MalformedMessage, struct.error) as e:
                self.stats["malformed"] += 1
                log.debug("mroute.read.malformed", ifindex=ifindex, reason=str(e),
                          length=len(data))
                continue
            if not found:
                self.stats["ignored"] += 1
            for event in found:
                if isinstance(event, Upcall):
                    self.stats["upcalls"] += 1
                elif self._is_local(event.source):
                    self.stats["own"] += 1
                    continue
                else:
                    self.stats["igmp"] += 1
                events.append(event)
        return events

    def listen_igmp(self, ifindex: int) -> None:
        """Hear IGMPv3 reports (224.0.0.22) and IGMPv2 leaves (224.0.0.2) on ``ifindex``."""
        for group in (ALL_V3_ROUTERS, ALL_ROUTERS):
            self._igmp_membership(socket.IP_ADD_MEMBERSHIP, group, ifindex)

    def unlisten_igmp(self, ifindex: int) -> None:
        for group in (ALL_V3_ROUTERS, ALL_ROUTERS):
            with contextlib.suppress(OSError):  # not joined, or the interface is gone
                self._igmp_membership(socket.IP_DROP_MEMBERSHIP, group, ifindex)

    def _igmp_membership(self, option: int, group: str, ifindex: int) -> None:
        try:
            self.sock.setsockopt(socket.IPPROTO_IP, option,
                                 IP_MREQN.pack(_in_addr(group), bytes(4), ifindex))
        except OSError as e:
            if option == socket.IP_ADD_MEMBERSHIP and e.errno == errno.EADDRINUSE:
                return  # joined already
            raise MrouteError(e.errno, f"IGMP listening on ifindex {ifindex} ({group}): "
                                       f"{e.strerror}") from None

    # -- the node's own membership --

    def join_local(self, group: str, ifindex: int) -> bool:
        """Make the node's stack a listener of ``group`` on ``ifindex`` (IP_ADD_MEMBERSHIP on a
        UDP socket of ours); False when it was already.  See the module notes on local delivery:
        join on one interface per group."""
        return self._members.join(group, ifindex)

    def leave_local(self, group: str, ifindex: int) -> bool:
        return self._members.leave(group, ifindex)

    # -- netlink: rules, addresses, links --

    @property
    def _uses_rules(self) -> bool:
        return self.multiple_tables and self.table != RT_TABLE_DEFAULT

    def _netlink(self) -> Netlink:
        if self._nl is None:
            self._nl = Netlink(self.netns, strict=True)
        return self._nl

    def _write_rule(self, msg_type: int, ifname: str, priority: int | None = None) -> None:
        priority = self.rule_priority if priority is None else priority
        code, message = write_rule(self._netlink(), msg_type, self.table, priority, self.protocol,
                                   family=RTNL_FAMILY_IPMR, iifname=ifname)
        if code:
            verb = "add" if msg_type == RTM_NEWRULE else "delete"
            raise MrouteError(code, f"{verb} multicast rule iif {ifname} lookup {self.table}: "
                                    f"{message}")

    def _add_rule(self, ifindex: int) -> None:
        name = self._ifname(ifindex)
        self._write_rule(RTM_NEWRULE, name)
        self._rules[ifindex] = name

    def _del_rule(self, ifindex: int) -> None:
        name = self._rules.pop(ifindex)
        self._write_rule(RTM_DELRULE, name)

    def _our_rules(self) -> Iterator[tuple[str, int]]:
        """(iifname, priority) of the multicast rules with our protocol and table."""
        for rule in dump_rules(self._netlink(), RTNL_FAMILY_IPMR):
            if rule.protocol == self.protocol and rule.table == self.table:
                yield rule.iifname, rule.priority

    def _sweep_rules(self) -> None:
        """Remove rules of ours for our table: we hold the table, so they are left by a crash."""
        for ifname, priority in list(self._our_rules()):
            self._write_rule(RTM_DELRULE, ifname, priority)
            log.info("mroute.rule.swept", table=self.table, iif=ifname, priority=priority)

    def _ifname(self, ifindex: int) -> str:
        request = IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0)
        names = {}
        for mtype, payload in self._netlink().dump(RTM_GETLINK, request):
            if mtype == RTM_NEWLINK:
                link = decode_link(payload)
                names[link.ifindex] = link.name
        if ifindex not in names:
            raise MrouteError(errno.ENODEV, f"no interface with ifindex {ifindex}")
        return names[ifindex]

    def _is_local(self, address: str) -> bool:
        """Whether ``address`` is one of the namespace's; re-read at most once a second."""
        now = time.monotonic()
        if address not in self._local and now - self._local_read >= ADDRESS_REFRESH:
            self._local_read = now
            try:
                self._local = set(self._addresses())
            except OSError as e:
                log.warning("mroute.addresses.unreadable", error=str(e))
        return address in self._local

    def _addresses(self) -> Iterable[str]:
        request = IFADDRMSG.pack(socket.AF_INET, 0, 0, 0, 0)
        for mtype, payload in self._netlink().dump(RTM_GETADDR, request):
            addr = decode_addr(payload) if mtype == RTM_NEWADDR else None
            if addr is not None:
                yield addr[2]
