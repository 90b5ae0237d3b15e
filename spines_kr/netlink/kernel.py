"""IPv4 routes, links and addresses over rtnetlink: the one place that builds and parses them.

Data model:
    RouteTable(table, protocol, priority, netns)
        one NETLINK_ROUTE socket and the (table, route protocol, priority) slot the daemon owns.
        ``dump()`` returns the RouteSet of that slot, ``apply(replace, delete)`` writes in batches
        and returns a ``RouteError`` per failed write; ``links()`` gives ``LinkState`` per ifindex,
        ``local_addresses()`` the IPv4 (ifindex, address, prefixlen) triples.
    Route, NextHop, RouteSet  (spines_kr.routing.model) the values read and written.

Codec: messages are pyroute2's (``rtmsg``, ``ifinfmsg``, ``ifaddrmsg``), with two fast paths
where pyroute2's generic codec is too slow for a big table (0.9.7: ~140 µs to encode a route,
~27 µs to decode one):
  * ``encode_route`` has pyroute2 encode one template per route *shape* (message type, number of
    next hops, prefsrc or not, table, protocol, priority) and then patches the destination,
    prefix length, gateways, ifindexes, weights and sequence number into a copy of it, at the
    offsets found by walking the template's attributes (~8 µs a route);
  * route dumps and route events are read by a small struct decoder (``decode_rtmsg``), with
    the kernel's constant names; links and addresses, which are few, go through pyroute2.
The socket is ours (not pyroute2's IPRoute) because batching many requests per send and reading
acknowledgements in bulk, by sequence number, is the point of this module.

Kernel behaviour followed (checked on 6.18):
  * A route is keyed by (table, dst, tos, priority); our slot is a table and a priority, and every
    request carries our protocol.  Deletes name dst/table/priority/protocol and no next hop, so
    they match our route in that slot whatever its next hops, and never a route of another
    protocol.
  * NLM_F_REPLACE overwrites whatever route holds the key, *whatever its protocol*:
        ip route add 10.5.0.0/24 via 10.0.0.2 proto static metric 20
        ip route replace 10.5.0.0/24 via 10.0.0.3 proto 81 metric 20   # the static one is gone
    so a daemon needs a (table, priority) no one else writes to.
  * Table ids above 255 do not fit rtm_table: the kernel reports RT_TABLE_COMPAT (252) there and
    the real id in RTA_TABLE (``ip route add 10.9.0.0/24 via 10.0.0.2 table 1000`` is dumped with
    rtm_table=252, RTA_TABLE=1000).  We read RTA_TABLE, and send rtm_table=RT_TABLE_UNSPEC with
    RTA_TABLE for such ids, as iproute2 does.
  * Deleting a route that is already gone fails with ESRCH (``ip route del 10.99.0.0/24 proto 81``
    -> "No such process"); for us that is success.
  * A batch is one datagram of many requests; the kernel handles them in order, each on its own,
    and queues one ack per request (NLM_F_ACK) before send() returns, so the acks are read after
    the send and matched by sequence number.  NETLINK_CAP_ACK keeps acks small and
    NETLINK_EXT_ACK adds the kernel's reason ("Nexthop has invalid gateway").
  * With NETLINK_GET_STRICT_CHK the kernel filters route dumps by protocol, type and RTA_TABLE,
    so routes of other daemons are not even copied to us (a full BGP table stays in the kernel).
    A filtered dump of a table that was never created fails with ENOENT (``ip route show table
    4321`` -> "Error: ipv4: FIB table does not exist."): an empty slot.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import ipaddress
import os
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import NamedTuple

import structlog
from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg
from pyroute2.netlink.rtnl.rtmsg import rtmsg

from spines_kr import RTPROT_SPINES
from spines_kr.netlink.nsenter import socket_in_netns
from spines_kr.netlink.reconcile import RouteError
from spines_kr.routing.model import NextHop, Route, RouteSet

log = structlog.get_logger(__name__)

# linux/netlink.h
NETLINK_ROUTE = 0
SOL_NETLINK = 270
NETLINK_CAP_ACK = 10
NETLINK_EXT_ACK = 11
NETLINK_GET_STRICT_CHK = 12
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLM_F_DUMP = 0x300
NLM_F_REPLACE = 0x100
NLM_F_CREATE = 0x400
NLM_F_CAPPED = 0x100  # in acks
NLM_F_ACK_TLVS = 0x200  # in acks
NLMSGERR_ATTR_MSG = 1
NLA_TYPE_MASK = 0x3FFF
# linux/rtnetlink.h
RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK = 16, 17, 18
RTM_NEWADDR, RTM_DELADDR, RTM_GETADDR = 20, 21, 22
RTM_NEWROUTE, RTM_DELROUTE, RTM_GETROUTE = 24, 25, 26
RTA_DST, RTA_OIF, RTA_GATEWAY, RTA_PRIORITY, RTA_PREFSRC = 1, 4, 5, 6, 7
RTA_MULTIPATH, RTA_TABLE, RTA_NH_ID = 9, 15, 30
RTN_UNICAST = 1
RT_SCOPE_UNIVERSE, RT_SCOPE_NOWHERE = 0, 255
RT_TABLE_UNSPEC, RT_TABLE_MAIN = 0, 254
RTMGRP_LINK, RTMGRP_IPV4_IFADDR, RTMGRP_IPV4_ROUTE = 0x1, 0x10, 0x40
# linux/if_link.h, linux/if.h, linux/if_addr.h
IFLA_IFNAME = 3
IFF_UP, IFF_LOWER_UP = 0x1, 0x10000
UP = IFF_UP | IFF_LOWER_UP
IFA_ADDRESS, IFA_LOCAL = 1, 2

SO_RCVBUFFORCE = 33
RCVBUF = 4 << 20
RECV_SIZE = 1 << 16  # a dump datagram is at most 32 KiB (netlink_dump), an event far less
BATCH = 200  # requests per datagram: ~200 B each, well inside the default send buffer
ACK_TIMEOUT = 30.0  # acks are queued before send() returns; waiting longer means they were lost

NLMSGHDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid
# family, dst_len, src_len, tos, table, protocol, scope, type, flags
RTMSG = struct.Struct("=BBBBBBBBI")
IFINFOMSG = struct.Struct("=BxHiII")  # family, type, index, flags, change
IFADDRMSG = struct.Struct("=BBBBI")  # family, prefixlen, flags, scope, index
RTNEXTHOP = struct.Struct("=HBBi")  # len, flags, hops (weight - 1), ifindex
NLATTR = struct.Struct("=HH")  # len, type
U32 = struct.Struct("=I")
I32 = struct.Struct("=i")


@dataclass(frozen=True, slots=True)
class LinkState:
    ifindex: int
    name: str
    up: bool  # administratively up (IFF_UP) and carrier present (IFF_LOWER_UP)


# --- codec ------------------------------------------------------------------------------------


def _align(n: int) -> int:
    return (n + 3) & ~3


def iter_messages(data: bytes) -> Iterator[tuple[int, int, int, bytes]]:
    """Yield (type, flags, seq, payload) per message; stop at a malformed length."""
    offset = 0
    while offset + NLMSGHDR.size <= len(data):
        length, mtype, flags, seq, _pid = NLMSGHDR.unpack_from(data, offset)
        if length < NLMSGHDR.size or offset + length > len(data):
            return
        yield mtype, flags, seq, data[offset + NLMSGHDR.size : offset + length]
        offset += _align(length)


def parse_attrs(data: bytes, offset: int = 0) -> dict[int, bytes]:
    """Attributes by type (the last of a repeated type wins); stop at a malformed length."""
    attrs = {}
    while offset + NLATTR.size <= len(data):
        length, atype = NLATTR.unpack_from(data, offset)
        if length < NLATTR.size or offset + length > len(data):
            break
        attrs[atype & NLA_TYPE_MASK] = data[offset + NLATTR.size : offset + length]
        offset += _align(length)
    return attrs


def _attr(atype: int, value: bytes) -> bytes:
    length = NLATTR.size + len(value)
    return NLATTR.pack(length, atype) + value + b"\0" * (_align(length) - length)


def _u32(value: bytes) -> int:
    return U32.unpack(value)[0]


def _string(value: bytes) -> str:
    return value.split(b"\0")[0].decode(errors="replace")


def _ip(value: bytes) -> str:
    return socket.inet_ntop(socket.AF_INET, value)


class RtMsg(NamedTuple):
    family: int
    dst: str  # CIDR
    table: int  # from RTA_TABLE when present
    protocol: int
    type: int
    attrs: dict[int, bytes]


def decode_rtmsg(payload: bytes) -> RtMsg:
    family, dst_len, _src, _tos, table, protocol, _scope, rtype, _flags = RTMSG.unpack_from(payload)
    attrs = parse_attrs(payload, RTMSG.size)
    dst = _ip(attrs[RTA_DST]) if RTA_DST in attrs else "0.0.0.0"
    table = _u32(attrs[RTA_TABLE]) if RTA_TABLE in attrs else table
    return RtMsg(family, f"{dst}/{dst_len}", table, protocol, rtype, attrs)


def _with_header(mtype: int, payload: bytes) -> bytes:
    return NLMSGHDR.pack(NLMSGHDR.size + len(payload), mtype, 0, 0, 0) + payload


def decode_link(payload: bytes, mtype: int = RTM_NEWLINK) -> LinkState:
    msg = ifinfmsg(_with_header(mtype, payload))
    msg.decode()
    flags = msg["flags"]
    return LinkState(msg["index"], msg.get_attr("IFLA_IFNAME") or "", (flags & UP) == UP)


def decode_addr(payload: bytes, mtype: int = RTM_NEWADDR) -> tuple[int, int, str, int] | None:
    """(family, ifindex, local address, prefixlen), or None without an IPv4 address."""
    msg = ifaddrmsg(_with_header(mtype, payload))
    msg.decode()
    # IFA_LOCAL is the local address; IFA_ADDRESS is the peer on point-to-point links.
    address = msg.get_attr("IFA_LOCAL") or msg.get_attr("IFA_ADDRESS")
    if msg["family"] != socket.AF_INET or not address:
        return None
    return msg["family"], msg["index"], address, msg["prefixlen"]


def _route(msg: RtMsg) -> Route | None:
    """The Route of a dumped message, or None when it is not a kind of route we install."""
    attrs = msg.attrs
    if RTA_NH_ID in attrs:  # nexthop objects: not ours (yet)
        return None
    prefsrc = _ip(attrs[RTA_PREFSRC]) if RTA_PREFSRC in attrs else None
    if RTA_MULTIPATH in attrs:
        hops = []
        data, offset = attrs[RTA_MULTIPATH], 0
        while offset + RTNEXTHOP.size <= len(data):
            length, _flags, hops_minus_one, ifindex = RTNEXTHOP.unpack_from(data, offset)
            if length < RTNEXTHOP.size:
                return None
            gateway = parse_attrs(data[offset:offset + length], RTNEXTHOP.size).get(RTA_GATEWAY)
            if gateway is None:
                return None
            hops.append(NextHop(_ip(gateway), ifindex, hops_minus_one + 1))
            offset += _align(length)
    elif RTA_GATEWAY in attrs:
        hops = [NextHop(_ip(attrs[RTA_GATEWAY]), _u32(attrs.get(RTA_OIF, b"\0\0\0\0")))]
    else:
        return None
    return Route(msg.dst, tuple(hops), prefsrc) if hops else None


def _header_table(table: int) -> int:
    """rtm_table of a request; RTA_TABLE always carries the real id."""
    return table if table < 256 else RT_TABLE_UNSPEC


class _Template(NamedTuple):
    data: bytes
    dst: int  # offset of the RTA_DST value
    prefsrc: int | None
    hops: tuple[tuple[int, int, int | None], ...]  # per hop: gateway, ifindex, weight-1 offsets


@functools.lru_cache(maxsize=64)
def _template(msg_type: int, n_hops: int, prefsrc: bool, table: int, protocol: int,
              priority: int) -> _Template:
    """pyroute2 encodes one request of this shape; we note where the per-route values go."""
    msg = rtmsg()
    msg["family"] = socket.AF_INET
    msg["dst_len"] = 32
    msg["table"] = _header_table(table)
    msg["proto"] = protocol
    msg["type"] = RTN_UNICAST
    attrs = [("RTA_DST", "0.0.0.0"), ("RTA_TABLE", table), ("RTA_PRIORITY", priority)]
    if msg_type == RTM_NEWROUTE:
        msg["scope"] = RT_SCOPE_UNIVERSE
        flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE
        if prefsrc:
            attrs.append(("RTA_PREFSRC", "0.0.0.0"))
        if n_hops > 1:
            attrs.append(("RTA_MULTIPATH", [{"oif": 0, "hops": 0, "attrs": [("RTA_GATEWAY", "0.0.0.0")]}
                                            for _ in range(n_hops)]))
        else:
            attrs += [("RTA_GATEWAY", "0.0.0.0"), ("RTA_OIF", 0)]
    else:
        msg["scope"] = RT_SCOPE_NOWHERE  # matches any scope, as iproute2's "ip route del"
        flags = NLM_F_REQUEST | NLM_F_ACK
    msg["attrs"] = attrs
    msg["header"]["type"] = msg_type
    msg["header"]["flags"] = flags
    msg.encode()
    data = bytes(msg.data)
    found: dict[int, int] = {}
    off = NLMSGHDR.size + RTMSG.size
    while off + NLATTR.size <= len(data):  # walk the attributes for the value offsets
        length, atype = NLATTR.unpack_from(data, off)
        found[atype & NLA_TYPE_MASK] = off + NLATTR.size
        off += _align(length)
    hops = []
    if RTA_MULTIPATH in found:
        off = found[RTA_MULTIPATH]
        for _ in range(n_hops):
            length = RTNEXTHOP.unpack_from(data, off)[0]
            gw = off + RTNEXTHOP.size + NLATTR.size  # the hop's one attribute: RTA_GATEWAY
            hops.append((gw, off + 4, off + 3))  # gateway, rtnh_ifindex, rtnh_hops
            off += _align(length)
    elif RTA_GATEWAY in found:
        hops.append((found[RTA_GATEWAY], found[RTA_OIF], None))
    return _Template(data, found[RTA_DST], found.get(RTA_PREFSRC), tuple(hops))


def encode_route(msg_type: int, seq: int, route: Route, table: int, protocol: int,
                 priority: int) -> bytes:
    """One RTM_NEWROUTE (create or replace) or RTM_DELROUTE request, patched into the template
    of its shape.

    Raises ValueError or struct.error for a route that cannot be encoded (bad address, weight or
    ifindex out of range).
    """
    net = ipaddress.IPv4Network(route.dst)
    new = msg_type == RTM_NEWROUTE
    hops = route.nexthops if new else ()
    t = _template(msg_type, len(hops), new and route.prefsrc is not None, table, protocol,
                  priority)
    buf = bytearray(t.data)
    struct.pack_into("=I", buf, 8, seq)
    buf[NLMSGHDR.size + 1] = net.prefixlen  # rtm_dst_len
    buf[t.dst:t.dst + 4] = net.network_address.packed
    if t.prefsrc is not None:
        buf[t.prefsrc:t.prefsrc + 4] = ipaddress.IPv4Address(route.prefsrc).packed
    for hop, (gw, oif, weight) in zip(hops, t.hops):
        buf[gw:gw + 4] = ipaddress.IPv4Address(hop.gateway).packed
        struct.pack_into("=i" if weight is not None else "=I", buf, oif, hop.ifindex)
        if weight is not None:
            if not 1 <= hop.weight <= 256:
                raise ValueError(f"weight {hop.weight} of {hop.gateway} is not in 1..256")
            buf[weight] = hop.weight - 1
    return bytes(buf)


def decode_ack(mtype: int, flags: int, payload: bytes) -> tuple[int, str]:
    """(errno, message) of an NLMSG_ERROR or NLMSG_DONE payload; errno 0 means success."""
    code = -I32.unpack_from(payload)[0]
    if not code:
        return 0, ""
    # NLMSG_ERROR: error, the request's header (NLM_F_CAPPED) or whole request, then TLVs.
    # NLMSG_DONE: error, then TLVs.
    tlvs = I32.size
    if mtype == NLMSG_ERROR:
        tlvs += NLMSGHDR.size if flags & NLM_F_CAPPED else _align(U32.unpack_from(payload, 4)[0])
    reason = ""
    if flags & NLM_F_ACK_TLVS:
        reason = _string(parse_attrs(payload, tlvs).get(NLMSGERR_ATTR_MSG, b""))
    return code, f"{os.strerror(code)}: {reason}" if reason else os.strerror(code)


def open_socket(netns: str | None, groups: int = 0) -> socket.socket:
    """A NETLINK_ROUTE socket in ``netns`` with a large receive buffer, bound to ``groups``."""
    sock = socket_in_netns(netns, socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE)
    try:
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RCVBUF)
        except PermissionError:  # without CAP_NET_ADMIN: capped at net.core.rmem_max
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
        sock.bind((0, groups))
    except BaseException:
        sock.close()
        raise
    return sock


# --- the route table --------------------------------------------------------------------------


class RouteTable:
    """Our slot of the kernel's IPv4 routes, and the links and addresses next hops use."""

    def __init__(self, table: int = RT_TABLE_MAIN, protocol: int = RTPROT_SPINES,
                 priority: int = 20, netns: str | None = None) -> None:
        self.table, self.protocol, self.priority = table, protocol, priority
        self._seq = 0
        self._sock = open_socket(netns)
        for option in (NETLINK_CAP_ACK, NETLINK_EXT_ACK, NETLINK_GET_STRICT_CHK):
            # Kernels before 4.20 lack some of them: acks are then larger or without a reason,
            # dumps unfiltered (we filter ourselves anyway).
            with contextlib.suppress(OSError):
                self._sock.setsockopt(SOL_NETLINK, option, 1)
        self._sock.settimeout(ACK_TIMEOUT)

    @property
    def sock(self) -> socket.socket:
        """The NETLINK_ROUTE socket (for capability probes such as ``nexthop.probe``)."""
        return self._sock

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> RouteTable:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _next_seq(self) -> int:
        self._seq = self._seq % 0xFFFFFFFF + 1
        return self._seq

    def _dump(self, msg_type: int, body: bytes) -> Iterator[tuple[int, bytes]]:
        """Send one dump request; yield (type, payload) of its answers; OSError on an error."""
        seq = self._next_seq()
        self._sock.send(NLMSGHDR.pack(NLMSGHDR.size + len(body), msg_type,
                                      NLM_F_REQUEST | NLM_F_DUMP, seq, 0) + body)
        while True:
            for mtype, flags, mseq, payload in iter_messages(self._sock.recv(RECV_SIZE)):
                if mseq != seq:
                    continue  # left over from an abandoned request
                if mtype in (NLMSG_DONE, NLMSG_ERROR):
                    code, message = decode_ack(mtype, flags, payload)
                    if code:
                        raise OSError(code, message)
                    return
                yield mtype, payload

    def dump(self) -> RouteSet:
        """The installed routes of our slot (table, protocol, priority; unicast only)."""
        request = RTMSG.pack(socket.AF_INET, 0, 0, 0, _header_table(self.table), self.protocol, 0,
                             RTN_UNICAST, 0) + _attr(RTA_TABLE, U32.pack(self.table))
        routes: RouteSet = {}
        try:
            for _mtype, payload in self._dump(RTM_GETROUTE, request):
                msg = decode_rtmsg(payload)
                priority = _u32(msg.attrs[RTA_PRIORITY]) if RTA_PRIORITY in msg.attrs else 0
                if (msg.family, msg.protocol, msg.table, msg.type, priority) != (
                        socket.AF_INET, self.protocol, self.table, RTN_UNICAST, self.priority):
                    continue
                route = _route(msg)
                if route is None:
                    log.info("netlink.route.skipped", dst=msg.dst, table=msg.table,
                             reason="not a gateway route (device route or nexthop object)")
                else:
                    routes[route.dst] = route
        except OSError as e:
            if e.errno != errno.ENOENT:  # ENOENT: the table was never created
                raise
        return routes

    def apply(self, replace: list[Route], delete: list[Route]) -> list[RouteError]:
        """Write ``replace`` (create or replace) then ``delete``; return the failed writes.

        Replacements go first so that a route split into more specific ones never leaves a gap.
        """
        requests = [("replace", r) for r in replace] + [("delete", r) for r in delete]
        errors: list[RouteError] = []
        for start in range(0, len(requests), BATCH):
            errors += self._apply_batch(requests[start:start + BATCH])
        return errors

    def _apply_batch(self, requests: list[tuple[str, Route]]) -> list[RouteError]:
        errors: list[RouteError] = []
        pending: dict[int, tuple[str, Route]] = {}
        chunks = []
        for op, route in requests:
            seq = self._next_seq()
            msg_type = RTM_NEWROUTE if op == "replace" else RTM_DELROUTE
            try:
                chunks.append(encode_route(msg_type, seq, route, self.table, self.protocol,
                                           self.priority))
            except (ValueError, struct.error) as e:
                errors.append(RouteError(route, op, errno.EINVAL, f"cannot encode: {e}"))
                continue
            pending[seq] = (op, route)
        if not pending:
            return errors
        self._sock.send(b"".join(chunks))
        while pending:
            for mtype, flags, seq, payload in iter_messages(self._sock.recv(RECV_SIZE)):
                if mtype != NLMSG_ERROR or seq not in pending:
                    continue
                op, route = pending.pop(seq)
                code, message = decode_ack(mtype, flags, payload)
                if code and not (op == "delete" and code == errno.ESRCH):
                    errors.append(RouteError(route, op, code, message))
        return errors

    def links(self) -> dict[int, LinkState]:
        request = IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0)
        links = {}
        for mtype, payload in self._dump(RTM_GETLINK, request):
            if mtype == RTM_NEWLINK:
                link = decode_link(payload)
                links[link.ifindex] = link
        return links

    def local_addresses(self) -> list[tuple[int, str, int]]:
        """IPv4 (ifindex, address, prefixlen) of every local address, sorted."""
        request = IFADDRMSG.pack(socket.AF_INET, 0, 0, 0, 0)
        found = []
        for mtype, payload in self._dump(RTM_GETADDR, request):
            addr = decode_addr(payload) if mtype == RTM_NEWADDR else None
            if addr is not None:
                found.append(addr[1:])
        return sorted(found)
