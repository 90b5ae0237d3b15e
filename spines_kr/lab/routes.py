"""Kernel routes of many namespaces, read without a process each: an rtnetlink socket opened
inside each namespace (``netlink.nsenter``: setns in this thread for the duration of socket()),
one IPv4 route dump per namespace, parsed here.  What ``ops.converged`` polls: for a lab of 100
nodes one read of every table costs milliseconds instead of 100 ``ip`` processes.

Entry point:
    dump(namespaces, table=254, protocol=RTPROT_SPINES, gateways=True)
        -> {ns: {dst: [gateway, ...]}}; with ``gateways=False`` every list is empty and the next
        hops are not decoded (a third of the work: enough to know which destinations are
        there).  ``NetnsError`` (an OSError) when a namespace does not exist.

The answer is the one ``ops.kernel_routes`` reads from ``ip -j route show table T proto P``:
{dst as "a.b.c.d/len" ("0.0.0.0/0" for default): sorted gateways}, the gateways of every next
hop of a multipath route or of a nexthop object's group (the kernel reports them with the route
while ``net.ipv4.nexthop_compat_mode`` is 1, its default), none for a route without a gateway;
a dst met again (at another metric) replaces the one before, as there.  Cached clones
(RTM_F_CLONED) are left out, as ``ip route show`` does.  Read-only: nothing is ever sent but
the dump request.
"""

from __future__ import annotations

import os
import socket
import struct

from spines_kr import RTPROT_SPINES
from spines_kr.netlink.nsenter import socket_in_netns

NETLINK_ROUTE = 0
RTM_NEWROUTE, RTM_GETROUTE = 24, 26
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_DUMP = 0x1, 0x300
RTM_F_CLONED = 0x200
RTA_DST, RTA_GATEWAY, RTA_MULTIPATH, RTA_TABLE = 1, 5, 9, 15
NLMSG = struct.Struct("=IHHII")
RTMSG = struct.Struct("=BBBBBBBBI")
RTA = struct.Struct("=HH")
RTNH = struct.Struct("=HBBi")
RECV = 1 << 20
MAIN_TABLE = 254


def _attrs(data: bytes, off: int, end: int):
    while off + 4 <= end:
        length, kind = RTA.unpack_from(data, off)
        if length < 4:
            return
        yield kind & 0x3FFF, data[off + 4:off + length]
        off += (length + 3) & ~3


def _gateways(value: bytes) -> list[str]:
    out, off = [], 0
    while off + RTNH.size <= len(value):
        length = RTNH.unpack_from(value, off)[0]
        if length < RTNH.size:
            break
        for kind, v in _attrs(value, off + RTNH.size, off + length):
            if kind == RTA_GATEWAY and len(v) == 4:
                out.append(socket.inet_ntoa(v))
        off += (length + 3) & ~3
    return out


def _parse(data: bytes, table: int, protocol: int, routes: dict, seq: int,
           gateways: bool = True) -> bool:
    """Add the routes of one recv'd buffer; True once the dump is done."""
    off = 0
    while off + NLMSG.size <= len(data):
        length, mtype, _flags, mseq, _pid = NLMSG.unpack_from(data, off)
        if length < NLMSG.size:
            raise OSError("rtnetlink: malformed message in a route dump")
        if mseq == seq:
            if mtype == NLMSG_DONE:
                return True
            if mtype == NLMSG_ERROR:
                err = -struct.unpack_from("=i", data, off + NLMSG.size)[0]
                if err:
                    raise OSError(err, f"rtnetlink route dump: {os.strerror(err)}")
            elif mtype == RTM_NEWROUTE:
                body = off + NLMSG.size
                family, dst_len, _s, _t, rtm_table, proto, _sc, _ty, flags = \
                    RTMSG.unpack_from(data, body)
                if family == socket.AF_INET and proto == protocol and not flags & RTM_F_CLONED:
                    dst, gw, hops, tbl = "0.0.0.0", None, [], rtm_table
                    for kind, v in _attrs(data, body + RTMSG.size, off + length):
                        if kind == RTA_DST and len(v) == 4:
                            dst = socket.inet_ntoa(v)
                        elif kind == RTA_TABLE and len(v) == 4:
                            tbl = struct.unpack("=I", v)[0]  # (rtm_table: 252 past 255)
                        elif not gateways:
                            continue
                        elif kind == RTA_GATEWAY and len(v) == 4:
                            gw = socket.inet_ntoa(v)
                        elif kind == RTA_MULTIPATH:
                            hops = _gateways(v)
                    if tbl == table:
                        routes[f"{dst}/{dst_len}"] = sorted(hops or ([gw] if gw else []))
        off += (length + 3) & ~3
    return False


def _dump_one(sock: socket.socket, table: int, protocol: int, seq: int, gateways: bool) -> dict:
    req = RTMSG.pack(socket.AF_INET, 0, 0, 0, 0, 0, 0, 0, 0)
    sock.send(NLMSG.pack(NLMSG.size + len(req), RTM_GETROUTE, NLM_F_REQUEST | NLM_F_DUMP, seq, 0)
              + req)
    routes: dict[str, list[str]] = {}
    while not _parse(sock.recv(RECV), table, protocol, routes, seq, gateways):
        pass
    return routes


def dump(namespaces, table: int = MAIN_TABLE, protocol: int = RTPROT_SPINES,
         gateways: bool = True) -> dict:
    """{ns: {dst: sorted gateways}} of the IPv4 routes of ``protocol`` in ``table`` of each of
    ``namespaces`` (see the module's doc)."""
    out = {}
    for i, ns in enumerate(namespaces):
        sock = socket_in_netns(ns, socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                               NETLINK_ROUTE)
        with sock:
            sock.bind((0, 0))
            out[ns] = _dump_one(sock, int(table), protocol, i + 1, gateways)
    return out
