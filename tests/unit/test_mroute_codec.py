"""Multicast routing codecs: struct layouts of linux/mroute.h, upcalls, IGMP, IPMR dumps. No kernel.

Expected bytes are built by hand from linux/mroute.h (whose structs are in host byte order, with
the addresses in network order) and checked against ctypes mirrors of the C structs, which lay
fields out as the C compiler does.  Upcall and IGMP datagrams and the IPMR route messages were
captured from Linux 6.18 in the namespaces of tests/kernel/test_mroute.py.
"""

from __future__ import annotations

import ctypes
import socket
import struct
import sys

import pytest
from hypothesis import given, strategies as st

from spines_kr.netlink import mroute
from spines_kr.netlink.mroute import (
    IGMPMSG_NOCACHE, IGMPMSG_WRONGVIF, IgmpReport, MalformedMessage, MfcEntry, Upcall,
    decode_mfc, decode_packet, encode_mfcctl, encode_mrule, encode_vifctl,
)

little_endian = pytest.mark.skipif(sys.byteorder != "little", reason="goldens are little-endian")

u8, u16, u32, i32 = ctypes.c_uint8, ctypes.c_uint16, ctypes.c_uint32, ctypes.c_int32
in_addr = ctypes.c_uint8 * 4  # struct in_addr: 4 bytes in network order


class vifctl(ctypes.Structure):
    _fields_ = [("vifc_vifi", u16), ("vifc_flags", u8), ("vifc_threshold", u8),
                ("vifc_rate_limit", u32), ("vifc_lcl_ifindex", i32),  # union with vifc_lcl_addr
                ("vifc_rmt_addr", in_addr)]


class mfcctl(ctypes.Structure):
    _fields_ = [("mfcc_origin", in_addr), ("mfcc_mcastgrp", in_addr), ("mfcc_parent", u16),
                ("mfcc_ttls", u8 * 32), ("mfcc_pkt_cnt", u32), ("mfcc_byte_cnt", u32),
                ("mfcc_wrong_if", u32), ("mfcc_expire", i32)]


class igmpmsg(ctypes.Structure):
    _fields_ = [("unused1", u32), ("unused2", u32), ("im_msgtype", u8), ("im_mbz", u8),
                ("im_vif", u8), ("im_vif_hi", u8), ("im_src", in_addr), ("im_dst", in_addr)]


def addr(a: str) -> in_addr:
    return in_addr(*socket.inet_aton(a))


def test_struct_sizes_match_the_c_layout():
    assert ctypes.sizeof(vifctl) == mroute.VIFCTL.size == 16
    assert ctypes.sizeof(mfcctl) == mroute.MFCCTL.size == 60
    assert mfcctl.mfcc_pkt_cnt.offset == 44  # two bytes of padding after mfcc_ttls[32]
    assert ctypes.sizeof(igmpmsg) == mroute.IGMPMSG.size == 20
    assert igmpmsg.im_msgtype.offset == 8 and igmpmsg.im_src.offset == 12


def test_vifctl():
    c = vifctl(vifc_vifi=3, vifc_flags=mroute.VIFF_USE_IFINDEX, vifc_threshold=1,
               vifc_lcl_ifindex=7)
    assert encode_vifctl(3, 7) == bytes(c)
    assert encode_vifctl(3) == bytes(vifctl(vifc_vifi=3, vifc_flags=8, vifc_threshold=1))


@little_endian
def test_vifctl_golden():
    assert encode_vifctl(3, 7, threshold=2).hex() == (
        "0300" "08" "02" "00000000" "07000000" "00000000")


def test_mfcctl():
    ttls = [0] * 32
    ttls[1], ttls[5], ttls[31] = 1, 3, 254
    c = mfcctl(mfcc_origin=addr("10.1.0.2"), mfcc_mcastgrp=addr("239.1.2.3"), mfcc_parent=2,
               mfcc_ttls=(u8 * 32)(*ttls))
    assert encode_mfcctl("10.1.0.2", "239.1.2.3", 2, {1: 1, 5: 3, 31: 254}) == bytes(c)


@little_endian
def test_mfcctl_golden():
    ttls = "00" "01" + "00" * 3 + "03" + "00" * 25 + "fe"
    assert encode_mfcctl("10.1.0.2", "239.1.2.3", 2, {1: 1, 5: 3, 31: 254}).hex() == (
        "0a010002" "ef010203" "0200" + ttls + "0000" + "00000000" * 4)
    assert encode_mfcctl("10.1.0.2", "239.1.2.3") == \
        socket.inet_aton("10.1.0.2") + socket.inet_aton("239.1.2.3") + bytes(52)


@pytest.mark.parametrize("args, message", [
    (("10.1.0.2", "10.0.0.1", 0, {}), "not a multicast"),
    (("10.1.0.2", "239.1.2.3", 32, {}), "iif 32"),
    (("10.1.0.2", "239.1.2.3", 0, {32: 1}), "oif 32"),
    (("10.1.0.2", "239.1.2.3", 0, {0: 1}), "both the iif and an oif"),
    (("10.1.0.2", "239.1.2.3", 0, {1: 0}), "ttl threshold 0"),
    (("10.1.0.2", "239.1.2.3", 0, {1: 255}), "ttl threshold 255"),
    (("10.1.0.256", "239.1.2.3", 0, {}), "10.1.0.256"),
])
def test_mfcctl_refuses(args, message):
    with pytest.raises(ValueError, match=message):
        encode_mfcctl(*args)


def test_vifctl_refuses():
    with pytest.raises(ValueError, match="MAXVIFS"):
        encode_vifctl(32, 1)
    with pytest.raises(ValueError, match="threshold"):
        encode_vifctl(0, 1, threshold=256)


# --- upcalls ----------------------------------------------------------------------------------

# Captured: the copied IP header (first 8 bytes as sent), im_msgtype over the ttl, im_mbz over
# the protocol (0), im_vif/im_vif_hi over the checksum, then an IGMP header of the same type.
NOCACHE = "4500001c4a324000" "01" "00" "00" "00" "0a010002" "ef010203" "01003afffe800000"
WRONGVIF = "4500001c97a34000" "02" "00" "00" "00" "0a010002" "ef080101" "0200000019000500"
NOCACHE_VIF1 = "4500001cafb34000" "01" "00" "01" "00" "0a020001" "ef070001" "010040000102eb0b"


@pytest.mark.parametrize("hexdata, upcall", [
    (NOCACHE, Upcall(IGMPMSG_NOCACHE, 0, "10.1.0.2", "239.1.2.3")),
    (WRONGVIF, Upcall(IGMPMSG_WRONGVIF, 0, "10.1.0.2", "239.8.1.1")),
    (NOCACHE_VIF1, Upcall(IGMPMSG_NOCACHE, 1, "10.2.0.1", "239.7.0.1")),
])
def test_upcall_golden(hexdata, upcall):
    assert decode_packet(bytes.fromhex(hexdata), ifindex=2) == [upcall]


def test_upcall_layout_matches_igmpmsg():
    msg = igmpmsg(im_msgtype=1, im_vif=0x1F, im_vif_hi=0, im_src=addr("10.0.0.1"),
                  im_dst=addr("239.0.0.1"))
    assert decode_packet(bytes(msg)) == [Upcall(1, 31, "10.0.0.1", "239.0.0.1")]
    msg.im_vif_hi = 1  # vif 287: beyond MAXVIFS
    with pytest.raises(MalformedMessage):
        decode_packet(bytes(msg))
    msg.im_vif_hi, msg.im_msgtype = 0, 9
    with pytest.raises(MalformedMessage):
        decode_packet(bytes(msg))


# --- IGMP -------------------------------------------------------------------------------------

# Captured IGMP packets as a raw socket reads them: IP header with the router alert option
# (ihl 6), then the IGMP message.  From 10.2.0.2 (a host) and 10.2.0.1 (the node itself).
V3_JOIN = ("46c00028000040000102f9f50a020002e0000016940400002200e8f90000000104000000"
           "ef010203")  # one record CHANGE_TO_EXCLUDE {} 239.1.2.3
V3_LEAVE = ("46c00028000040000102f9f50a020002e0000016940400002200e9f90000000103000000"
            "ef010203")  # CHANGE_TO_INCLUDE {}
V2_JOIN = "46c00020000040000102e90f0a020002ef010203940400001600f8faef010203"
V2_LEAVE = "46c00020000040000102fa110a020002e0000002940400001700f7faef010203"
V3_LINK_LOCAL = ("46c00030000040000102f9ee0a020001e000001694040000220015e40000000204000000"
                 "e000000204000000e0000016")  # the node joining 224.0.0.2 and 224.0.0.22


@pytest.mark.parametrize("hexdata, reports", [
    (V3_JOIN, [IgmpReport(3, "10.2.0.2", "239.1.2.3", True)]),
    (V3_LEAVE, [IgmpReport(3, "10.2.0.2", "239.1.2.3", False)]),
    (V2_JOIN, [IgmpReport(3, "10.2.0.2", "239.1.2.3", True)]),
    (V2_LEAVE, [IgmpReport(3, "10.2.0.2", "239.1.2.3", False)]),
    (V3_LINK_LOCAL, []),
])
def test_igmp_golden(hexdata, reports):
    assert decode_packet(bytes.fromhex(hexdata), ifindex=3) == reports


def checksummed(igmp: bytes) -> bytes:
    igmp = igmp[:2] + b"\0\0" + igmp[4:]
    return igmp[:2] + struct.pack("!H", mroute._checksum(igmp)) + igmp[4:]


def ip_packet(igmp: bytes, source: str = "10.2.0.2", ihl: int = 6) -> bytes:
    options = b"\x94\x04\x00\x00" * (ihl - 5)
    header = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0xC0, 4 * ihl + len(igmp), 0, 0, 1, 2, 0,
                         socket.inet_aton(source), socket.inet_aton("224.0.0.22"))
    return header + options + igmp


def v3_report(*records: tuple[int, str, int, int]) -> bytes:
    """IGMPv3 report of (record type, group, number of sources, aux words) records."""
    body = b""
    for rtype, group, n_sources, aux in records:
        body += struct.pack("!BBH4s", rtype, aux, n_sources, socket.inet_aton(group))
        body += b"".join(socket.inet_aton(f"10.9.0.{i + 1}") for i in range(n_sources))
        body += b"\xaa" * 4 * aux
    return checksummed(struct.pack("!BBHHH", 0x22, 0, 0, 0, len(records)) + body)


def test_igmpv3_records_map_onto_joins_and_leaves():
    report = v3_report(
        (mroute.MODE_IS_INCLUDE, "239.0.0.1", 0, 0),  # leave
        (mroute.MODE_IS_INCLUDE, "239.0.0.2", 2, 0),  # join (source-specific)
        (mroute.MODE_IS_EXCLUDE, "239.0.0.3", 1, 1),  # join, with auxiliary data skipped
        (mroute.CHANGE_TO_INCLUDE, "239.0.0.4", 0, 0),  # leave
        (mroute.CHANGE_TO_EXCLUDE, "239.0.0.5", 0, 0),  # join
        (mroute.ALLOW_NEW_SOURCES, "239.0.0.6", 1, 0),  # join
        (mroute.BLOCK_OLD_SOURCES, "239.0.0.7", 1, 0),  # ignored
        (9, "239.0.0.8", 0, 0),  # unknown record type: ignored
        (mroute.CHANGE_TO_EXCLUDE, "224.0.0.251", 0, 0),  # link-local: not routed
    )
    assert decode_packet(ip_packet(report), 4) == [
        IgmpReport(4, "10.2.0.2", "239.0.0.1", False),
        IgmpReport(4, "10.2.0.2", "239.0.0.2", True),
        IgmpReport(4, "10.2.0.2", "239.0.0.3", True),
        IgmpReport(4, "10.2.0.2", "239.0.0.4", False),
        IgmpReport(4, "10.2.0.2", "239.0.0.5", True),
        IgmpReport(4, "10.2.0.2", "239.0.0.6", True),
    ]


def test_igmpv1_report_and_query():
    v1 = checksummed(struct.pack("!BBH4s", 0x12, 0, 0, socket.inet_aton("239.3.3.3")))
    assert decode_packet(ip_packet(v1, "0.0.0.0", ihl=5)) == \
        [IgmpReport(0, "0.0.0.0", "239.3.3.3", True)]
    query = checksummed(struct.pack("!BBH4s", 0x11, 100, 0, bytes(4)))
    assert decode_packet(ip_packet(query)) == []


@pytest.mark.parametrize("data", [
    b"",
    bytes(19),
    bytes.fromhex(V2_JOIN)[:-1],  # total length beyond the datagram
    bytes.fromhex(V2_JOIN)[:-2] + b"\0\0",  # bad checksum
    ip_packet(v3_report((mroute.MODE_IS_EXCLUDE, "239.0.0.1", 3, 0))[:-4]),  # record cut
    ip_packet(checksummed(struct.pack("!BBHHH", 0x22, 0, 0, 0, 2)
                          + struct.pack("!BBH4s", 2, 0, 0, socket.inet_aton("239.0.0.1")))),
    ip_packet(checksummed(struct.pack("!BBH4s", 0x16, 0, 0, socket.inet_aton("10.0.0.1")))),
    ip_packet(checksummed(b"\x16\0\0\0")),  # IGMP message shorter than 8 bytes
    b"\x60" + bytes.fromhex(V2_JOIN)[1:],  # IP version 6
    b"\x42" + bytes.fromhex(V2_JOIN)[1:],  # IHL 2
])
def test_malformed(data):
    with pytest.raises(MalformedMessage):
        decode_packet(data)


@given(st.binary(max_size=120))
def test_decode_never_raises_anything_else(data):
    try:
        decode_packet(data)
    except MalformedMessage:
        pass


def test_read_upcalls_counts_and_skips_bad_datagrams():
    """The router's read loop on a datagram socket pair: bad input is counted, never raised."""
    router = mroute.MulticastRouter.__new__(mroute.MulticastRouter)
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    ours.setblocking(False)
    router.sock = ours
    router.stats = {"upcalls": 0, "igmp": 0, "own": 0, "ignored": 0, "malformed": 0}
    router._local, router._local_read = {"10.2.0.1"}, float("inf")  # no netlink refresh
    for hexdata in (NOCACHE, "00", V2_JOIN, V3_LINK_LOCAL, V3_JOIN.replace("0a020002", "0a020001")):
        theirs.send(bytes.fromhex(hexdata))
    theirs.send(bytes.fromhex(V3_JOIN.replace("0a020002", "0a020001")))  # checksum still fine
    events = router.read_upcalls()
    assert events == [Upcall(IGMPMSG_NOCACHE, 0, "10.1.0.2", "239.1.2.3"),
                      IgmpReport(0, "10.2.0.2", "239.1.2.3", True)]
    assert router.stats == {"upcalls": 1, "igmp": 1, "own": 2, "ignored": 1, "malformed": 1}
    assert router.read_upcalls() == []
    ours.close()
    theirs.close()


# --- IPMR route dumps and rules ---------------------------------------------------------------

# RTM_NEWROUTE payloads of `ip mroute show` for table 253: a resolved entry (10.1.0.2,239.1.2.3)
# iif ifindex 2, oif ifindex 3 ttl 1, 1 packet of 31 bytes; an unresolved one (RTNH_F_UNRESOLVED).
RESOLVED = ("80202000fd11000500000000"  # rtmsg: IPMR, /32 /32, table 253, mrouted, multicast
            "08000f00fd000000" "080002000a010002" "08000100ef010203" "0800030002000000"
            "0c000900" "0800" "00" "01" "03000000"  # RTA_MULTIPATH: rtnh len 8, ttl 1, ifindex 3
            "1c001100" "0100000000000000" "1f00000000000000" "0000000000000000"
            "0c001700" "1e00000000000000")  # RTA_EXPIRES
UNRESOLVED = ("80202000fd11000520000000"
              "08000f00fd000000" "080002000a010002" "08000100ef090909")


def test_decode_mfc_golden():
    assert decode_mfc(bytes.fromhex(RESOLVED), {2: 0, 3: 5}) == (
        253, MfcEntry("10.1.0.2", "239.1.2.3", 0, {5: 1}, packets=1, bytes=31, wrong_if=0))
    assert decode_mfc(bytes.fromhex(UNRESOLVED), {}) == (
        253, MfcEntry("10.1.0.2", "239.9.9.9", None, {}))
    with pytest.raises(KeyError):
        decode_mfc(bytes.fromhex(RESOLVED), {2: 0})  # ifindex 3 is not one of our vifs


@little_endian
def test_mrule_golden():
    data = encode_mrule(mroute.RTM_NEWRULE, 7, "a0", 1000, 21000, 81)
    body = (bytes([128, 0, 0, 0, 0, 0, 0, 1]) + bytes(4)  # fib_rule_hdr: IPMR, FR_ACT_TO_TBL
            + struct.pack("=HH", 7, 3) + b"a0\0\0"  # FRA_IIFNAME
            + struct.pack("=HHI", 8, 15, 1000)  # FRA_TABLE
            + struct.pack("=HHI", 8, 6, 21000)  # FRA_PRIORITY
            + struct.pack("=HHB3x", 5, 21, 81))  # FRA_PROTOCOL
    flags = 0x1 | 0x4 | 0x400 | 0x200  # REQUEST | ACK | CREATE | EXCL
    assert data == struct.pack("=IHHII", 16 + len(body), 32, flags, 7, 0) + body
    deleted = encode_mrule(mroute.RTM_DELRULE, 8, "a0", 1000, 21000, 81)
    assert deleted[4:8] == struct.pack("=HH", 33, 0x1 | 0x4) and deleted[16:] == body
