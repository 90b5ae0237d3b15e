"""IPv4 routes, links and addresses over rtnetlink: the one place that builds and parses them.

Data model:
    RouteTable(table, protocol, priority, netns)
        one NETLINK_ROUTE socket and the (table, route protocol, priority) slot the daemon owns.
        ``dump()`` returns the RouteSet of that slot, ``apply(replace, delete)`` writes in batches
        and returns a ``RouteError`` per failed write; ``links()`` gives ``LinkState`` per ifindex,
        ``local_addresses()`` the IPv4 (ifindex, address, prefixlen) triples.
    Route, NextHop, RouteSet  (spines_kr.routing.model) the values read and written.

Codec: struct codecs with the kernel's constant names, byte for byte what pyroute2's ``rtmsg``,
``ifinfmsg`` and ``ifaddrmsg`` encode and decode (tests/unit/test_netlink_codec.py and the fuzz
targets hold pyroute2 as the oracle).  pyroute2 itself is not loaded for them: its generic codec
is slow for a big table (0.9.7: ~140 µs to encode a route, ~27 µs to decode one) and importing
it costs a small router about 3 MB.
  * ``encode_route`` builds one template per route *shape* (message type, number of next hops,
    prefsrc or not, table, protocol, priority: ``route_template``), cuts it at the per-route
    fields (flags, sequence number, prefix length, destination, prefsrc, gateways, ifindexes,
    weights) and builds each request with one ``struct`` pack of the constant runs and those
    fields (~0.5 µs a route; addresses through inet_pton, gateways cached);
  * route dumps and route events are read by a small struct decoder (``decode_rtmsg``), and
    ``dump()`` reads the common one-gateway layout with one unpack (``_ONE_HOP``); links and
    addresses by ``decode_link`` and ``decode_addr``.
The socket is ours (not pyroute2's IPRoute) because batching many requests per send and reading
the answers in bulk, by sequence number, is the point of this module.

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
    and queues its answers before send() returns, so they are read after the send and matched by
    sequence number.  A failed request is always answered (NLMSG_ERROR with its seq), a
    successful one only with NLM_F_ACK (netlink_rcv_skb: "if (nlh->nlmsg_flags & NLM_F_ACK ||
    err) netlink_ack(...)"): route writes ask for an ack on the last request of a datagram only,
    so a batch costs one recv() plus one per failure, and the failures before that ack are all of
    them.  Each answer occupies ~830 B of the receive buffer (the default 208 KiB holds 256,
    then the kernel drops answers and the socket reports ENOBUFS), so a datagram never carries
    more requests than the buffer holds failures.  NETLINK_CAP_ACK keeps answers small and
    NETLINK_EXT_ACK adds the kernel's reason ("Nexthop has invalid gateway").
  * With NETLINK_GET_STRICT_CHK the kernel filters route dumps by protocol, type and RTA_TABLE,
    so routes of other daemons are not even copied to us (a full BGP table stays in the kernel).
    A filtered dump of a table that was never created fails with ENOENT (``ip route show table
    4321`` -> "Error: ipv4: FIB table does not exist."): an empty slot.
"""

from __future__ import annotations

import errno
import functools
import os
import socket
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import NamedTuple

from spines_kr import RTPROT_SPINES
from spines_kr.log import get_logger
from spines_kr.netlink.core import (  # noqa: F401 - the framing, re-exported for callers
    BATCH, I32, NETLINK_CAP_ACK, NETLINK_EXT_ACK, NETLINK_GET_STRICT_CHK, NLA_TYPE_MASK, NLATTR,
    NLM_F_ACK, NLM_F_ACK_TLVS, NLM_F_CAPPED, NLM_F_CREATE, NLM_F_DUMP, NLM_F_REPLACE,
    NLM_F_REQUEST, NLMSG_DONE, NLMSG_ERROR, NLMSGERR_ATTR_MSG, NLMSGHDR, RCVBUF, RECV_SIZE,
    SO_RCVBUFFORCE, SOL_NETLINK, U16, U32, Netlink, align as _align, attr as _attr, decode_ack,
    dump_request, iter_messages, open_socket, parse_attrs)
from spines_kr.netlink.reconcile import RouteError
from spines_kr.routing.model import NextHop, Route, RouteSet

log = get_logger(__name__)

NETLINK_ROUTE = 0
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
IFLA_IFNAME, IFLA_MTU = 3, 4
IFF_UP, IFF_LOWER_UP = 0x1, 0x10000
UP = IFF_UP | IFF_LOWER_UP
IFA_ADDRESS, IFA_LOCAL = 1, 2

# Route writes (RouteTable.apply): only failures and the last request are answered, so a datagram
# can hold more; ROUTE_BATCH and ROUTE_BATCH_BYTES were picked with bench/route_install.py.
ROUTE_BATCH = 1000
ROUTE_BATCH_BYTES = 1 << 17  # 1000 one-hop routes are 68 KB; at most half the send buffer
ACK_ROOM = 2048  # receive buffer an answer takes: ~830 B on 6.18 (skb truesize), with margin
ACK_TIMEOUT = 2.0  # acks are queued before send() returns; waiting longer means they were lost

# family, dst_len, src_len, tos, table, protocol, scope, type, flags
RTMSG = struct.Struct("=BBBBBBBBI")
IFINFOMSG = struct.Struct("=BxHiII")  # family, type, index, flags, change
IFADDRMSG = struct.Struct("=BBBBI")  # family, prefixlen, flags, scope, index
RTNEXTHOP = struct.Struct("=HBBi")  # len, flags, hops (weight - 1), ifindex


@dataclass(frozen=True, slots=True)
class LinkState:
    ifindex: int
    name: str
    up: bool  # administratively up (IFF_UP) and carrier present (IFF_LOWER_UP)
    mtu: int = 0  # IFLA_MTU (0: not reported)


# --- codec ------------------------------------------------------------------------------------


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


MALFORMED = (struct.error, ValueError, KeyError, IndexError, OverflowError, TypeError)


def pyroute2_decode(msg):
    """Decode a pyroute2 message; whatever pyroute2 raises on garbage (NetlinkNLADecodeError,
    KeyError, ...) becomes ValueError, the one rejection our decoders use (found by fuzzing)."""
    try:
        msg.decode()
    except Exception as e:  # noqa: BLE001 - pyroute2 raises anything on malformed input
        raise ValueError(f"malformed netlink message: {e!r}") from None
    return msg


def kernel_input(fn):
    """Entry points that read the kernel's answers raise only OSError (EBADMSG for a malformed
    message), which the daemon handles: a failed dump or sync is logged and retried."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except MALFORMED as e:
            raise OSError(errno.EBADMSG, f"malformed netlink message from the kernel: {e!r}") from None
    return wrapper


def _with_header(mtype: int, payload: bytes) -> bytes:
    return NLMSGHDR.pack(NLMSGHDR.size + len(payload), mtype, 0, 0, 0) + payload


def decode_link(payload: bytes, mtype: int = RTM_NEWLINK) -> LinkState:
    """The link of an RTM_NEWLINK/RTM_DELLINK payload; ValueError when it is malformed."""
    if len(payload) < IFINFOMSG.size:
        raise ValueError("malformed netlink message: ifinfomsg too short")
    _family, _type, index, flags, _change = IFINFOMSG.unpack_from(payload)
    attrs = parse_attrs(payload, IFINFOMSG.size)
    name = attrs.get(IFLA_IFNAME, b"")
    mtu = attrs.get(IFLA_MTU, b"")
    return LinkState(index, name.split(b"\0")[0].decode(errors="replace"), (flags & UP) == UP,
                     U32.unpack(mtu)[0] if len(mtu) == 4 else 0)


def decode_addr(payload: bytes, mtype: int = RTM_NEWADDR) -> tuple[int, int, str, int] | None:
    """(family, ifindex, local address, prefixlen), or None without an IPv4 address."""
    if len(payload) < IFADDRMSG.size:
        raise ValueError("malformed netlink message: ifaddrmsg too short")
    family, prefixlen, _flags, _scope, index = IFADDRMSG.unpack_from(payload)
    attrs = parse_attrs(payload, IFADDRMSG.size)
    # IFA_LOCAL is the local address; IFA_ADDRESS is the peer on point-to-point links.
    address = attrs.get(IFA_LOCAL) or attrs.get(IFA_ADDRESS)
    if family != socket.AF_INET or not address:
        return None
    if len(address) != 4:
        raise ValueError(f"malformed IFA_LOCAL/IFA_ADDRESS {address!r}")
    return family, index, _ip(address), prefixlen


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
    # The kernel's own values are normal already: a dst without host bits (it refuses others:
    # "Invalid prefix for given prefix length"), dotted quads from inet_ntop.
    return Route.trusted(msg.dst, tuple(sorted(hops)), prefsrc) if hops else None


class _Layout(NamedTuple):
    """A route message of fixed layout: rtmsg, then 4-byte attributes in a known order.

    ``unpack`` gives the rtmsg's 9 fields, then (nla_len, nla_type, value) per attribute; the
    other fields are the indexes of the values in that tuple (0: absent)."""
    size: int
    unpack: Callable[[bytes], tuple]
    types: tuple[int, ...]
    lengths: tuple[int, ...]
    table: int
    dst: int
    priority: int
    prefsrc: int
    gateway: int
    oif: int


def _layout(*types: int) -> _Layout:
    addresses = (RTA_DST, RTA_PREFSRC, RTA_GATEWAY)
    fmt = "=BBBBBBBBI" + "".join("HH4s" if t in addresses else "HHI" for t in types)
    index = {t: 11 + 3 * i for i, t in enumerate(types)}
    packer = struct.Struct(fmt)
    return _Layout(packer.size, packer.unpack, types, (NLATTR.size + 4,) * len(types),
                   index[RTA_TABLE], index[RTA_DST], index[RTA_PRIORITY],
                   index.get(RTA_PREFSRC, 0), index[RTA_GATEWAY], index[RTA_OIF])


# A route with one gateway as the kernel dumps it (fib_dump_info, 6.18): RTA_TABLE, RTA_DST,
# RTA_PRIORITY, [RTA_PREFSRC], RTA_GATEWAY, RTA_OIF, by payload size.  Anything else (multipath,
# a default route without RTA_DST, more attributes) goes through decode_rtmsg.
_ONE_HOP = {layout.size: layout for layout in (
    _layout(RTA_TABLE, RTA_DST, RTA_PRIORITY, RTA_GATEWAY, RTA_OIF),
    _layout(RTA_TABLE, RTA_DST, RTA_PRIORITY, RTA_PREFSRC, RTA_GATEWAY, RTA_OIF))}


def _header_table(table: int) -> int:
    """rtm_table of a request; RTA_TABLE always carries the real id."""
    return table if table < 256 else RT_TABLE_UNSPEC


class _Shape(NamedTuple):
    """How to encode requests of one shape: pyroute2's template, cut at the per-route fields.

    ``pack`` is a struct that covers the whole message, alternating the template's constant bytes
    (``consts``, a run before each field and one after the last) with the fields, in this order:
    nlmsg_flags, nlmsg_seq, rtm_dst_len, RTA_DST, [RTA_PREFSRC], then per next hop either
    RTA_GATEWAY, RTA_OIF (one hop) or rtnh_hops, rtnh_ifindex, RTA_GATEWAY (RTA_MULTIPATH).
    One ``pack`` call builds a message (~0.5 µs; pyroute2 ~140 µs, patching a copy ~5 µs).
    """
    pack: Callable[..., bytes]
    consts: tuple[bytes, ...]
    flags: int  # the template's nlmsg_flags (with NLM_F_ACK)
    n_hops: int
    prefsrc: bool


def route_template(msg_type: int, n_hops: int, prefsrc: bool, table: int, protocol: int,
                   priority: int, nh_id: bool = False) -> tuple[bytes, int]:
    """(request, nlmsg_flags) of one shape with zeros for the per-route fields, laid out as
    pyroute2's rtmsg encodes it: rtmsg, RTA_DST, RTA_TABLE, RTA_PRIORITY, [RTA_PREFSRC], then
    RTA_GATEWAY and RTA_OIF (one hop), RTA_MULTIPATH (several) or RTA_NH_ID (``nh_id``).  A
    delete names dst, table and priority only, with scope "nowhere" (any scope, as iproute2)."""
    new = msg_type == RTM_NEWROUTE
    attrs = _attr(RTA_DST, bytes(4)) + _attr(RTA_TABLE, U32.pack(table)) + _attr(
        RTA_PRIORITY, U32.pack(priority))
    if new:
        if prefsrc:
            attrs += _attr(RTA_PREFSRC, bytes(4))
        if nh_id:
            attrs += _attr(RTA_NH_ID, U32.pack(0))
        elif n_hops > 1:
            hop = RTNEXTHOP.pack(RTNEXTHOP.size + 8, 0, 0, 0) + _attr(RTA_GATEWAY, bytes(4))
            attrs += _attr(RTA_MULTIPATH, hop * n_hops)
        elif n_hops:
            attrs += _attr(RTA_GATEWAY, bytes(4)) + _attr(RTA_OIF, U32.pack(0))
        flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE
    else:
        flags = NLM_F_REQUEST | NLM_F_ACK
    body = RTMSG.pack(socket.AF_INET, 32, 0, 0, _header_table(table), protocol,
                      RT_SCOPE_UNIVERSE if new else RT_SCOPE_NOWHERE, RTN_UNICAST, 0) + attrs
    return NLMSGHDR.pack(NLMSGHDR.size + len(body), msg_type, flags, 0, 0) + body, flags


@functools.lru_cache(maxsize=64)
def _shape(msg_type: int, n_hops: int, prefsrc: bool, table: int, protocol: int,
           priority: int) -> _Shape:
    """The template of this shape, and where the per-route values go."""
    if msg_type != RTM_NEWROUTE:
        n_hops, prefsrc = 0, False
    data, flags = route_template(msg_type, n_hops, prefsrc, table, protocol, priority)
    found: dict[int, int] = {}
    off = NLMSGHDR.size + RTMSG.size
    while off + NLATTR.size <= len(data):  # walk the attributes for the value offsets
        length, atype = NLATTR.unpack_from(data, off)
        found[atype & NLA_TYPE_MASK] = off + NLATTR.size
        off += _align(length)
    fields = [(6, "H"), (8, "I"), (NLMSGHDR.size + 1, "B"), (found[RTA_DST], "4s")]
    if prefsrc:
        fields.append((found[RTA_PREFSRC], "4s"))
    if n_hops > 1:
        off = found[RTA_MULTIPATH]
        for _ in range(n_hops):
            # rtnexthop (len, flags, hops, ifindex), then the hop's one attribute: RTA_GATEWAY
            fields += [(off + 3, "B"), (off + 4, "i"), (off + RTNEXTHOP.size + NLATTR.size, "4s")]
            off += _align(RTNEXTHOP.unpack_from(data, off)[0])
    elif n_hops:
        fields += [(found[RTA_GATEWAY], "4s"), (found[RTA_OIF], "I")]
    fmt, consts, prev = "=", [], 0
    for off, code in fields:
        if off < prev:  # pyroute2 laid the message out differently: adapt ``fields``
            raise RuntimeError(f"rtmsg template: field at {off} overlaps the one before")
        fmt += f"{off - prev}s{code}"
        consts.append(data[prev:off])
        prev = off + struct.calcsize("=" + code)
    fmt += f"{len(data) - prev}s"
    consts.append(data[prev:])
    packer = struct.Struct(fmt)
    assert packer.size == len(data)
    return _Shape(packer.pack, tuple(consts), flags, n_hops, prefsrc)


@functools.lru_cache(maxsize=1024)
def _packed_ip(text: str) -> bytes:
    """A dotted quad as 4 bytes; ValueError for anything else (as strict as ipaddress).

    Cached: a daemon has few gateways and preferred sources."""
    try:
        return socket.inet_pton(socket.AF_INET, text)
    except (OSError, TypeError):
        raise ValueError(f"{text!r} is not an IPv4 address") from None


def _packed_dst(dst: str) -> tuple[bytes, int]:
    """(network address, prefix length) of a CIDR dst as Route normalises it ("10.1.0.0/16")."""
    address, _, plen = dst.partition("/")
    length = int(plen)
    if not 0 <= length <= 32:
        raise ValueError(f"{dst!r}: prefix length is not in 0..32")
    try:
        return socket.inet_pton(socket.AF_INET, address), length
    except OSError:
        raise ValueError(f"{dst!r} is not an IPv4 prefix") from None


def _encode(shape: _Shape, flags: int, seq: int, route: Route) -> bytes:
    """One request of ``shape`` (the hot paths are inlined in ``_Encoder``)."""
    dst, length = _packed_dst(route.dst)
    values: list = [flags, seq, length, dst]
    if shape.prefsrc:
        values.append(_packed_ip(route.prefsrc))
    if shape.n_hops > 1:
        for hop in route.nexthops:
            if not 1 <= hop.weight <= 256:
                raise ValueError(f"weight {hop.weight} of {hop.gateway} is not in 1..256")
            values += (hop.weight - 1, hop.ifindex, _packed_ip(hop.gateway))
    elif shape.n_hops:
        hop = route.nexthops[0]
        values += (_packed_ip(hop.gateway), hop.ifindex)
    args = [None] * (2 * len(values) + 1)
    args[0::2] = shape.consts
    args[1::2] = values
    return shape.pack(*args)


class _Encoder:
    """Encodes the requests of one ``apply`` into one slot: shapes looked up once per apply, the
    common ones (one next hop without prefsrc; a delete) packed without building a list."""

    def __init__(self, table: int, protocol: int, priority: int, ack: bool) -> None:
        self.slot, self.ack = (table, protocol, priority), ack
        self.shapes: dict[tuple[int, int, bool], tuple[_Shape, int]] = {}

    def _shape(self, msg_type: int, n_hops: int, prefsrc: bool) -> tuple[_Shape, int]:
        """The shape and the nlmsg_flags to send it with."""
        key = (msg_type, n_hops, prefsrc)
        found = self.shapes.get(key)
        if found is None:
            shape = _shape(msg_type, n_hops, prefsrc, *self.slot)
            flags = shape.flags if self.ack else shape.flags & ~NLM_F_ACK
            found = self.shapes[key] = (shape, flags)
        return found

    def replace(self, seq: int, route: Route) -> bytes:
        """RTM_NEWROUTE with NLM_F_CREATE | NLM_F_REPLACE."""
        hops = route.nexthops
        shape, flags = self._shape(RTM_NEWROUTE, len(hops), route.prefsrc is not None)
        if shape.n_hops != 1 or shape.prefsrc:
            return _encode(shape, flags, seq, route)
        c, hop = shape.consts, hops[0]
        dst, length = _packed_dst(route.dst)
        return shape.pack(c[0], flags, c[1], seq, c[2], length, c[3], dst, c[4],
                          _packed_ip(hop.gateway), c[5], hop.ifindex, c[6])

    def delete(self, seq: int, route: Route) -> bytes:
        """RTM_DELROUTE of our route at ``route.dst``, whatever its next hops."""
        shape, flags = self._shape(RTM_DELROUTE, 0, False)
        c = shape.consts
        dst, length = _packed_dst(route.dst)
        return shape.pack(c[0], flags, c[1], seq, c[2], length, c[3], dst, c[4])


def encode_route(msg_type: int, seq: int, route: Route, table: int, protocol: int,
                 priority: int) -> bytes:
    """One RTM_NEWROUTE (create or replace) or RTM_DELROUTE request with NLM_F_ACK, byte for
    byte what pyroute2 encodes for it.

    Raises ValueError or struct.error for a route that cannot be encoded (bad address, weight or
    ifindex out of range).
    """
    encoder = _Encoder(table, protocol, priority, ack=True)
    if msg_type == RTM_NEWROUTE:
        return encoder.replace(seq, route)
    return encoder.delete(seq, route)


# --- the route table --------------------------------------------------------------------------


class RouteTable:
    """Our slot of the kernel's IPv4 routes, and the links and addresses next hops use."""

    def __init__(self, table: int = RT_TABLE_MAIN, protocol: int = RTPROT_SPINES,
                 priority: int = 20, netns: str | None = None) -> None:
        self.table, self.protocol, self.priority = table, protocol, priority
        self._nl = Netlink(netns, strict=True, timeout=ACK_TIMEOUT)
        self._sock = self._nl.sock

    @property
    def sock(self) -> socket.socket:
        """The NETLINK_ROUTE socket (for capability probes such as ``nexthop.probe``)."""
        return self._sock

    def close(self) -> None:
        self._nl.close()

    def __enter__(self) -> RouteTable:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _next_seq(self) -> int:
        return self._nl.next_seq()

    def _dump(self, msg_type: int, body: bytes) -> Iterator[tuple[int, bytes]]:
        """Send one dump request; yield (type, payload) of its answers; OSError on an error."""
        return self._nl.dump(msg_type, body)

    @kernel_input
    def dump(self) -> RouteSet:
        """The installed routes of our slot (table, protocol, priority; unicast only)."""
        request = RTMSG.pack(socket.AF_INET, 0, 0, 0, _header_table(self.table), self.protocol, 0,
                             RTN_UNICAST, 0) + _attr(RTA_TABLE, U32.pack(self.table))
        ours = (socket.AF_INET, self.protocol, self.table, RTN_UNICAST, self.priority)
        routes: RouteSet = {}
        hops: dict[tuple[bytes, int], NextHop] = {}  # shared by the routes through a hop
        try:
            for _mtype, payload in self._dump(RTM_GETROUTE, request):
                layout = _ONE_HOP.get(len(payload))
                if layout is not None:  # the common case, in one unpack (~2 µs a route, not ~4)
                    v = layout.unpack(payload)
                    if v[10::3] == layout.types and v[9::3] == layout.lengths:
                        if (v[0], v[5], v[layout.table], v[7], v[layout.priority]) == ours:
                            key = (v[layout.gateway], v[layout.oif])
                            if (hop := hops.get(key)) is None:
                                hop = hops[key] = NextHop(_ip(key[0]), key[1])
                            dst = f"{_ip(v[layout.dst])}/{v[1]}"
                            prefsrc = _ip(v[layout.prefsrc]) if layout.prefsrc else None
                            routes[dst] = Route.trusted(dst, (hop,), prefsrc)
                        continue
                msg = decode_rtmsg(payload)
                priority = _u32(msg.attrs[RTA_PRIORITY]) if RTA_PRIORITY in msg.attrs else 0
                if (msg.family, msg.protocol, msg.table, msg.type, priority) != ours:
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

    def _batch_limits(self) -> tuple[int, int]:
        """(requests, bytes) per datagram that our buffers hold whatever the kernel answers."""
        rcvbuf = self._sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        sndbuf = self._sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
        # A datagram longer than the send buffer fails (EMSGSIZE); a request longer than the
        # byte limit (a route of hundreds of hops) goes alone.
        return max(1, min(ROUTE_BATCH, rcvbuf // ACK_ROOM)), min(ROUTE_BATCH_BYTES, sndbuf // 2)

    @kernel_input
    def apply(self, replace: list[Route], delete: list[Route]) -> list[RouteError]:
        """Write ``replace`` (create or replace) then ``delete``; return the failed writes.

        Replacements go first so that a route split into more specific ones never leaves a gap.
        Requests go out many to a datagram (``_exchange``); a route that cannot be encoded is an
        EINVAL error of its own, the others are still written.
        """
        max_requests, max_bytes = self._batch_limits()
        encoder = _Encoder(self.table, self.protocol, self.priority, ack=False)
        errors: list[RouteError] = []
        chunks: list[bytes] = []
        pending: dict[int, tuple[str, Route]] = {}
        size = 0
        seq = self._nl._seq
        try:
            for op, encode, routes in (("replace", encoder.replace, replace),
                                       ("delete", encoder.delete, delete)):
                for route in routes:
                    seq = seq % 0xFFFFFFFF + 1
                    try:
                        data = encode(seq, route)
                    except (ValueError, struct.error) as e:
                        errors.append(RouteError(route, op, errno.EINVAL, f"cannot encode: {e}"))
                        continue
                    if len(chunks) == max_requests or size + len(data) > max_bytes:
                        errors += self._exchange(chunks, pending)
                        chunks, pending, size = [], {}, 0
                    chunks.append(data)
                    pending[seq] = (op, route)
                    size += len(data)
            if chunks:
                errors += self._exchange(chunks, pending)
        finally:
            self._nl._seq = seq  # one sequence counter for the socket
        return errors

    def _exchange(self, chunks: list[bytes], pending: dict[int, tuple[str, Route]]
                  ) -> list[RouteError]:
        """Send ``chunks`` (requests without NLM_F_ACK, ``pending`` by seq) as one datagram, the
        last asking for an ack; return the failures.

        The kernel answers every failed request with an error whether or not it asked for an
        ack, handles the datagram's requests in order, and queues the answers before send()
        returns; so the errors that come before the last request's ack are all there are, and
        the requests without one succeeded.  No ack per success means one recv() per batch
        instead of one per request (``bench/route_install.py``: about twice the rate) and a
        receive buffer that only has to hold the failures, which ``_batch_limits`` sizes it for.
        Should answers be lost all the same (ENOBUFS: the buffer overran; or no ack within
        ACK_TIMEOUT), every request without an error in hand is reported failed with that errno:
        its outcome is unknown, and the next sync's dump finds out.
        """
        last_seq = next(reversed(pending))
        last = chunks[-1]
        chunks[-1] = last[:6] + U16.pack(U16.unpack_from(last, 6)[0] | NLM_F_ACK) + last[8:]
        self._sock.send(b"".join(chunks))
        errors: list[RouteError] = []
        try:
            while not self._take_acks(self._sock.recv(RECV_SIZE), pending, last_seq, errors):
                pass
            return errors
        except TimeoutError:
            lost = errno.ETIMEDOUT
        except OSError as e:
            if e.errno != errno.ENOBUFS:
                raise
            lost = errno.ENOBUFS
            self._sock.setblocking(False)  # what is queued is all that will come
            try:
                while not self._take_acks(self._sock.recv(RECV_SIZE), pending, last_seq, errors):
                    pass
            except BlockingIOError:
                pass
            finally:
                self._sock.settimeout(ACK_TIMEOUT)
        log.warning("netlink.route.acks_lost", requests=len(pending), reason=os.strerror(lost),
                    action="reported as failed; the next sync dumps and repairs")
        message = f"{os.strerror(lost)}: acknowledgements lost, outcome unknown"
        errors += [RouteError(route, op, lost, message) for op, route in pending.values()]
        return errors

    @staticmethod
    def _take_acks(data: bytes, pending: dict[int, tuple[str, Route]], last_seq: int,
                   errors: list[RouteError]) -> bool:
        """Take the answers in ``data`` out of ``pending``; True once ``last_seq``'s came."""
        for mtype, flags, seq, payload in iter_messages(data):
            if mtype != NLMSG_ERROR or (request := pending.pop(seq, None)) is None:
                continue  # not an answer to this exchange (one abandoned after a timeout)
            code, message = decode_ack(mtype, flags, payload)
            op, route = request
            if code and not (op == "delete" and code == errno.ESRCH):
                errors.append(RouteError(route, op, code, message))
            if seq == last_seq:
                return True
        return False

    @kernel_input
    def links(self) -> dict[int, LinkState]:
        request = IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0)
        links = {}
        for mtype, payload in self._dump(RTM_GETLINK, request):
            if mtype == RTM_NEWLINK:
                link = decode_link(payload)
                links[link.ifindex] = link
        return links

    @kernel_input
    def local_addresses(self) -> list[tuple[int, str, int]]:
        """IPv4 (ifindex, address, prefixlen) of every local address, sorted."""
        request = IFADDRMSG.pack(socket.AF_INET, 0, 0, 0, 0)
        found = []
        for mtype, payload in self._dump(RTM_GETADDR, request):
            addr = decode_addr(payload) if mtype == RTM_NEWADDR else None
            if addr is not None:
                found.append(addr[1:])
        return sorted(found)
