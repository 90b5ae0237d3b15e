"""Kernel nexthop objects and groups (``ip nexthop``), and IPv4 routes that use them.

Data model:
    Nexthop(gateway, ifindex)          one kernel nexthop object: an on-link IPv4 gateway.
    Group(members)                     one multipath group: ((nexthop id, weight 1..65536), ...)
                                       sorted by id.
    objects: dict[int, Nexthop | Group]
                                       the objects of one owner, by nexthop id.
    NexthopError(id, obj, op, errno, message)
                                       one failed object write; the rest of its batch applied.
    NhRoute(dst, nh_id, prefsrc)       a route of our slot that names a nexthop object (RTA_NH_ID)
                                       instead of carrying its own next hops.
    NexthopPlan(objects, route_nh)     what ``plan_groups`` maps a route set onto.

Entry points:
    ``probe(sock)``                    does this kernel have nexthop objects?
    ``NexthopTable(protocol, id_base, id_count, netns)``
                                       ``dump()`` our objects, ``apply(replace, delete)`` them in
                                       batches, ``dump_routes``/``apply_routes`` for routes that
                                       use them.
    ``plan_groups(routes, installed)`` pure: each multipath Route -> a group of single nexthops.
    ``NexthopRouteTable(table, protocol, priority, ..., netns)``
                                       the reconciler's ``Kernel`` contract (``dump``/``apply`` of
                                       a RouteSet) with multipath routes through groups and single
                                       next hops as classic routes; it sweeps objects no route
                                       uses.  ``RouteTable`` remains the fallback where ``probe``
                                       says no.
    ``nhmsg``, ``encode_nexthop``, ``decode_nexthop``, ``encode_route_nh``, ``route_nh_id``: codec.

Spec: linux/nexthop.h (struct nhmsg, struct nexthop_grp, NHA_*), linux/rtnetlink.h
(RTM_NEWNEXTHOP 104, RTM_DELNEXTHOP 105, RTM_GETNEXTHOP 106, RTA_NH_ID 30).

pyroute2 0.9.7 has no nexthop message class, and its ``rtmsg`` has no RTA_NH_ID: its nla_map
ends at RTA_EXPIRES (23) and ``encode_nlas`` skips attribute names it does not know, so
``rtmsg`` with ``("RTA_NH_ID", 5)`` (which is also what ``IPRoute.route("add", nh_id=5)`` builds)
encodes without it, and a dumped route's attribute 30 decodes as "UNKNOWN".  Hence ``nhmsg``
below, on pyroute2's ``nlmsg`` base, and RTA_NH_ID appended to pyroute2's rtmsg by hand.

Nexthop ids: allocated, with the kernel as the record.  Our objects take ids from
``[id_base, id_base + id_count)`` (default 0x53500000 + n, "SP") and carry our protocol, so they
stay clear of the ids other daemons and ``ip nexthop add`` users pick (small numbers).  An
object is found again by its *content*: a Nexthop by (gateway, ifindex), a Group by its
(member id, weight) pairs.  ``plan_groups`` reuses the id of an installed object of ours with
the same content, and gives new content the lowest id in the range that no object of any
protocol holds.  Why not an id derived from the content (a hash)?  A hash into a range small
enough to stay clear of other daemons collides early (in 2**16 ids, 300 objects collide with
even odds), and once collisions are probed the id depends on history anyway; what a hash would
buy, recognising our objects after a restart, the dump already gives: each object's content is
in the kernel, so a restarted daemon rebuilds content -> id from one ``dump()``, reuses what
matches and sweeps (``NexthopRouteTable.sweep``) what no route uses.  Nothing is kept on disk,
so nothing can disagree with the kernel.  A group is never edited in place by the planner: a
route whose hop set changes moves to the group of the new set (make before break: objects, then
the route, then the old group is swept).  ``NexthopTable.apply`` can replace a group's members
in place (one write, every route using it follows).

Kernel behaviour followed (checked on 6.18.44, iproute2 6.1):
  * Singles are IPv4 (nh_family AF_INET, NHA_GATEWAY + NHA_OIF); a group is AF_UNSPEC with
    NHA_GROUP only.  A group member's weight is stored minus one in ``weight``; 6.18 also takes
    a high byte in ``weight_high`` (``resvd1`` in older headers, Debian 12's included, and
    required to be 0 by older kernels), so weights go to 65536; iproute2 6.1 ignores that byte
    and shows a weight of 300 as 44.
    ``ip nexthop add id 22 group 20/21,3`` sends NHA_GROUP {20, 0, 0, 0} {21, 2, 0, 0}.
  * Replacing (NLM_F_CREATE|NLM_F_REPLACE) an existing id keeps the routes that use it: they
    follow the new gateway or members.  A single cannot be replaced by a group or the reverse.
  * Deleting a group deletes the routes that use it; deleting a member shrinks every group that
    holds it and a group left empty is deleted with its routes.  So deletes go routes, groups,
    nexthops.  Deleting an id that is gone fails with ENOENT: success for us.
  * A route with RTA_NH_ID carries no RTA_GATEWAY/RTA_OIF/RTA_MULTIPATH (the kernel refuses
    both).  With net.ipv4.nexthop_compat_mode=1 (the default) its dump *also* carries the
    expanded RTA_GATEWAY/RTA_MULTIPATH, which ``kernel._route`` therefore skips.
  * A nexthop dump has no protocol filter: NETLINK_GET_STRICT_CHK refuses a request whose nhmsg
    has any field but the family set ("Invalid values in header for nexthop dump request"), so
    we filter by protocol ourselves.  A delete is by id alone (nh_protocol set: EINVAL "Invalid
    values in header"), so the kernel cannot check whose object it deletes: ``apply`` deletes
    only ids of our range that a dump shows with our protocol (or that are gone already).
  * Link down (admin down or carrier loss): every nexthop object on the link is deleted, every
    group loses those members (a group left empty is deleted), and every route using a deleted
    object is deleted; IPv4 routes through the link disappear too (admin down) or are marked
    linkdown (carrier loss, classic routes only).  None of this is notified: no RTM_DELNEXTHOP,
    no RTM_DELROUTE, no RTM_NEWROUTE for a route whose group shrank.  Nothing comes back on link
    up.  Reproducer (a veth pair v0/v1, 10.0.0.1/24 on v0, a second link w0 10.0.1.1/24):
        ip nexthop add id 1 via 10.0.0.2 dev v0 proto 81
        ip nexthop add id 2 via 10.0.1.2 dev w0 proto 81
        ip nexthop add id 10 group 1/2 proto 81
        ip nexthop add id 11 group 1 proto 81
        ip route add 10.5.0.0/24 nhid 10 proto 81 metric 20
        ip route add 10.6.0.0/24 nhid 11 proto 81 metric 20
        ip monitor nexthop route &      # of what follows, shows only IPv6 link-local routes
        ip link set v1 down             # v0 loses carrier (or: ip link set v0 down)
        ip nexthop  # id 2 and "id 10 group 2" only; ip route: 10.6.0.0/24 is gone,
                    # 10.5.0.0/24 nhid 10 via 10.0.1.2 dev w0
        ip link set v1 up               # nothing returns
    So a daemon resyncs on every link event that takes a link down (RTM_NEWLINK without
    IFF_UP or IFF_LOWER_UP, which *is* notified), and the next sync re-creates the objects.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import ipaddress
import socket
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

from spines_kr import RTPROT_SPINES
from spines_kr.log import get_logger
from spines_kr.netlink.core import (
    NLA_TYPE_MASK, NLATTR, NLM_F_ACK, NLM_F_CREATE, NLM_F_REPLACE, NLM_F_REQUEST, NLMSGHDR, U16,
    U32, Netlink, align as _align, attr as _attr, dump_request, parse_attrs)
from spines_kr.netlink.kernel import (
    ACK_TIMEOUT, RT_TABLE_MAIN, RTA_NH_ID, RTA_PREFSRC,
    RTA_PRIORITY, RTA_TABLE, RTM_DELROUTE, RTM_GETROUTE, RTM_NEWROUTE, RTMSG, RTN_UNICAST,
    RouteTable, _header_table, _ip, _route, _u32, decode_rtmsg, kernel_input, route_template)
from spines_kr.netlink.reconcile import RouteError
from spines_kr.routing.model import NextHop, Route, RouteSet

log = get_logger(__name__)

# linux/rtnetlink.h
RTM_NEWNEXTHOP, RTM_DELNEXTHOP, RTM_GETNEXTHOP = 104, 105, 106
RTNLGRP_NEXTHOP = 32
# linux/nexthop.h
NHA_UNSPEC, NHA_ID, NHA_GROUP, NHA_GROUP_TYPE, NHA_BLACKHOLE, NHA_OIF, NHA_GATEWAY = range(7)
NEXTHOP_GRP_TYPE_MPATH, NEXTHOP_GRP_TYPE_RES = 0, 1
NHMSG = struct.Struct("=BBBBI")  # family, scope, protocol, resvd, flags
NEXTHOP_GRP = struct.Struct("=IBBH")  # id, weight (weight - 1, low byte), weight_high, resvd2

ID_BASE = 0x5350_0000  # "SP"
ID_COUNT = 0x1_0000
MAX_WEIGHT = 1 << 16  # weight - 1 in weight (8 bits) and weight_high (8 bits; 6.18 checked)


# --- codec ------------------------------------------------------------------------------------

@functools.cache
def _nhmsg_class():
    """pyroute2's declaration of the message (the codec's oracle in tests; the daemon encodes
    and decodes with structs and never loads pyroute2 for nexthops)."""
    from spines_kr.netlink.messages import nla_base_string, nlmsg

    class nhmsg(nlmsg):
        """
        Nexthop message (RTM_NEWNEXTHOP, RTM_DELNEXTHOP, RTM_GETNEXTHOP)

        C structure::

            struct nhmsg {
                unsigned char nh_family;
                unsigned char nh_scope;     /* return only */
                unsigned char nh_protocol;  /* Routing protocol that installed nh */
                unsigned char resvd;
                unsigned int  nh_flags;     /* RTNH_F flags */
            };

        NHA_GROUP is an array of ``struct nexthop_grp``, decoded as a list of
        ``{"id", "weight", "weight_high"}`` with the kernel's raw values (weight minus one).
        """

        __slots__ = ()

        prefix = "NHA_"

        fields = (
            ("family", "B"),
            ("scope", "B"),
            ("protocol", "B"),
            ("resvd", "B"),
            ("flags", "I"),
        )

        nla_map = (
            ("NHA_UNSPEC", "none"),
            ("NHA_ID", "uint32"),
            ("NHA_GROUP", "nexthop_grp"),
            ("NHA_GROUP_TYPE", "uint16"),
            ("NHA_BLACKHOLE", "flag"),
            ("NHA_OIF", "uint32"),
            ("NHA_GATEWAY", "ipaddr"),
            ("NHA_ENCAP_TYPE", "uint16"),
            ("NHA_ENCAP", "hex"),
            ("NHA_GROUPS", "flag"),
            ("NHA_MASTER", "uint32"),
            ("NHA_FDB", "flag"),
            ("NHA_RES_GROUP", "hex"),
            ("NHA_RES_BUCKET", "hex"),
            ("NHA_OP_FLAGS", "uint32"),
        )

        class nexthop_grp(nla_base_string):
            """
            C structure (array of)::

                struct nexthop_grp {
                    __u32 id;           /* nexthop id - must exist */
                    __u8  weight;       /* weight of this nexthop, minus one */
                    __u8  weight_high;  /* high order bits of weight (resvd1 in older headers) */
                    __u16 resvd2;
                };
            """

            __slots__ = ()

            def encode(self):
                self["value"] = b"".join(
                    NEXTHOP_GRP.pack(m["id"], m.get("weight", 0), m.get("weight_high", 0), 0)
                    for m in self.value)
                nla_base_string.encode(self)

            def decode(self):
                nla_base_string.decode(self)
                raw = self["value"]
                self.value = [
                    {"id": i, "weight": w, "weight_high": wh}
                    for i, w, wh, _resvd in NEXTHOP_GRP.iter_unpack(
                        raw[:len(raw) - len(raw) % NEXTHOP_GRP.size])
                ]

    return nhmsg


def __getattr__(name: str):
    if name == "nhmsg":
        return _nhmsg_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@dataclass(frozen=True, order=True, slots=True)
class Nexthop:
    """A single nexthop object: an on-link IPv4 gateway on one interface."""

    gateway: str
    ifindex: int


@dataclass(frozen=True, slots=True)
class Group:
    """A multipath group of nexthop objects: ((id, weight), ...), weight 1..65536, by id."""

    members: tuple[tuple[int, int], ...]

    def __post_init__(self) -> None:
        members = tuple(sorted(self.members))
        object.__setattr__(self, "members", members)
        if not members:
            raise ValueError("a group has at least one member")
        if len({m for m, _w in members}) != len(members):
            raise ValueError(f"a group lists a member twice: {members}")
        for member, weight in members:
            if not 1 <= weight <= MAX_WEIGHT:
                raise ValueError(f"weight {weight} of member {member} is not in 1..{MAX_WEIGHT}")


Object = Nexthop | Group


class NexthopMsg(NamedTuple):
    id: int
    family: int
    protocol: int
    flags: int  # RTNH_F_* (RTNH_F_ONLINK, RTNH_F_DEAD, RTNH_F_LINKDOWN)
    obj: Object | None  # None: a kind we do not model (blackhole, fdb, resilient, no gateway)


def _new_flags() -> int:
    return NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE


def encode_nexthop(msg_type: int, seq: int, nh_id: int, obj: Object | None,
                   protocol: int = RTPROT_SPINES) -> bytes:
    """One RTM_NEWNEXTHOP (create or replace ``obj`` as ``nh_id``) or RTM_DELNEXTHOP request.

    Attributes in iproute2's order (NHA_ID, NHA_GATEWAY, NHA_OIF / NHA_ID, NHA_GROUP), so the
    payload is what ``ip nexthop add`` sends (and what pyroute2's ``nhmsg`` encodes).  Raises
    ValueError or struct.error for a value that cannot be encoded.
    """
    family = socket.AF_UNSPEC
    attrs = _attr(NHA_ID, U32.pack(nh_id))
    if msg_type == RTM_NEWNEXTHOP:
        flags = _new_flags()
        if isinstance(obj, Nexthop):
            family = socket.AF_INET
            attrs += _attr(NHA_GATEWAY, ipaddress.IPv4Address(obj.gateway).packed)
            attrs += _attr(NHA_OIF, U32.pack(obj.ifindex))
        elif isinstance(obj, Group):
            attrs += _attr(NHA_GROUP, b"".join(NEXTHOP_GRP.pack(m, (w - 1) & 0xFF, (w - 1) >> 8, 0)
                                               for m, w in obj.members))
        else:
            raise ValueError(f"nothing to create for nexthop {nh_id}: {obj!r}")
        head = NHMSG.pack(family, 0, protocol, 0, 0)
    elif msg_type == RTM_DELNEXTHOP:
        # the kernel refuses a delete whose nhmsg says more than the family
        flags = NLM_F_REQUEST | NLM_F_ACK
        head = NHMSG.pack(family, 0, 0, 0, 0)
    else:
        raise ValueError(f"not a nexthop write: message type {msg_type}")
    body = head + attrs
    return NLMSGHDR.pack(NLMSGHDR.size + len(body), msg_type, flags, seq, 0) + body


def decode_nexthop(payload: bytes, msg_type: int = RTM_NEWNEXTHOP) -> NexthopMsg:
    """The nexthop of one RTM_NEWNEXTHOP/RTM_DELNEXTHOP payload (the bytes after nlmsghdr).
    Raises ValueError for a malformed one (an attribute of the wrong size, a short header)."""
    if len(payload) < NHMSG.size:
        raise ValueError("malformed nexthop message: nhmsg too short")
    family, _scope, protocol, _resvd, nh_flags = NHMSG.unpack_from(payload)
    attrs = parse_attrs(payload, NHMSG.size)

    def u32(key: int) -> int:
        value = attrs.get(key)
        if value is None:
            return 0
        if len(value) != 4:
            raise ValueError(f"malformed nexthop message: attribute {key} of {len(value)} bytes")
        return U32.unpack(value)[0]

    nh_id, oif = u32(NHA_ID), u32(NHA_OIF)
    gateway = attrs.get(NHA_GATEWAY)
    if gateway is not None and len(gateway) not in (4, 16):
        raise ValueError("malformed nexthop message: NHA_GATEWAY")
    group_type = attrs.get(NHA_GROUP_TYPE)
    if group_type is not None and len(group_type) != 2:
        raise ValueError("malformed nexthop message: NHA_GROUP_TYPE")
    raw = attrs.get(NHA_GROUP)
    obj: Object | None = None
    if raw and (U16.unpack(group_type)[0] if group_type else NEXTHOP_GRP_TYPE_MPATH) == \
            NEXTHOP_GRP_TYPE_MPATH:
        members = NEXTHOP_GRP.iter_unpack(raw[:len(raw) - len(raw) % NEXTHOP_GRP.size])
        with contextlib.suppress(ValueError):
            obj = Group(tuple((m, (wh << 8 | w) + 1) for m, w, wh, _resvd in members))
    elif gateway and len(gateway) == 4 and family == socket.AF_INET and oif:
        obj = Nexthop(socket.inet_ntop(socket.AF_INET, gateway), oif)
    return NexthopMsg(nh_id, family, protocol, nh_flags, obj)


class _RouteTemplate(NamedTuple):
    data: bytes
    dst: int  # offset of the RTA_DST value
    prefsrc: int | None
    nh_id: int


@functools.lru_cache(maxsize=64)
def _route_template(msg_type: int, prefsrc: bool, table: int, protocol: int,
                    priority: int) -> _RouteTemplate:
    """The route request of the shape through a nexthop object (``kernel.route_template``)."""
    if msg_type not in (RTM_NEWROUTE, RTM_DELROUTE):
        raise ValueError(f"not a route write: message type {msg_type}")
    new = msg_type == RTM_NEWROUTE
    data = bytearray(route_template(msg_type, 0, new and prefsrc, table, protocol, priority,
                                    nh_id=new)[0])
    if not new:  # a delete names the object too, so it only matches a route through it
        data += _attr(RTA_NH_ID, U32.pack(0))
        struct.pack_into("=I", data, 0, len(data))
    found: dict[int, int] = {}
    off = NLMSGHDR.size + RTMSG.size
    while off + NLATTR.size <= len(data):
        length, atype = NLATTR.unpack_from(data, off)
        found[atype & NLA_TYPE_MASK] = off + NLATTR.size
        off += _align(length)
    return _RouteTemplate(bytes(data), found[1], found.get(RTA_PREFSRC), found[RTA_NH_ID])


def encode_route_nh(msg_type: int, seq: int, dst: str, nh_id: int, table: int = RT_TABLE_MAIN,
                    protocol: int = RTPROT_SPINES, priority: int = 20,
                    prefsrc: str | None = None) -> bytes:
    """One RTM_NEWROUTE (create or replace) of ``dst`` through nexthop object ``nh_id``, or an
    RTM_DELROUTE of it (which then only matches a route through ``nh_id``).

    Attributes: RTA_DST, RTA_TABLE, RTA_PRIORITY, [RTA_PREFSRC], RTA_NH_ID; no RTA_GATEWAY,
    RTA_OIF or RTA_MULTIPATH.  Raises ValueError or struct.error for what cannot be encoded.
    """
    net = ipaddress.IPv4Network(dst)
    new = msg_type == RTM_NEWROUTE
    t = _route_template(msg_type, new and prefsrc is not None, table, protocol, priority)
    buf = bytearray(t.data)
    struct.pack_into("=I", buf, 8, seq)
    buf[NLMSGHDR.size + 1] = net.prefixlen
    buf[t.dst:t.dst + 4] = net.network_address.packed
    if t.prefsrc is not None:
        buf[t.prefsrc:t.prefsrc + 4] = ipaddress.IPv4Address(prefsrc).packed
    struct.pack_into("=I", buf, t.nh_id, nh_id)
    return bytes(buf)


def route_nh_id(msg) -> int | None:
    """The nexthop id (RTA_NH_ID) of a route decoded by ``kernel.decode_rtmsg``, else None."""
    value = msg.attrs.get(RTA_NH_ID)
    return _u32(value) if value is not None and len(value) >= 4 else None


# --- planning (pure) --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NexthopPlan:
    objects: dict[int, Object]  # every object the mapped routes need, installed or new
    route_nh: dict[str, int]  # dst -> group id, for each multipath route that uses a group


def plan_groups(routes: RouteSet, installed: Mapping[int, Object] | None = None, *,
                id_base: int = ID_BASE, id_count: int = ID_COUNT,
                taken: Iterable[int] = ()) -> NexthopPlan:
    """Map each multipath route onto a group of single nexthops, weights preserved.

    Routes with the same hop set (gateways, ifindexes and weights) share one group; a group or
    nexthop of ``installed`` (ours) with the same content keeps its id; new content takes the
    lowest id of the range held by neither ``installed`` nor ``taken`` (other protocols' ids).
    Single-hop routes stay classic routes.  A route listing one (gateway, ifindex) twice (the
    kernel refuses such a group) or one for which the range has no id left is not mapped: it is
    then written as a classic multipath route.  Deterministic: the same input gives the same ids.
    """
    installed = dict(installed or {})
    by_content: dict[Object, int] = {}
    for nh_id in sorted(installed):
        by_content.setdefault(installed[nh_id], nh_id)
    used = set(installed) | {i for i in taken if id_base <= i < id_base + id_count}
    cursor = id_base
    objects: dict[int, Object] = {}
    route_nh: dict[str, int] = {}

    def id_of(obj: Object) -> int | None:
        nonlocal cursor
        nh_id = by_content.get(obj)
        if nh_id is None:
            while cursor in used:
                cursor += 1
            if cursor >= id_base + id_count:
                return None
            nh_id = cursor
            used.add(nh_id)
            by_content[obj] = nh_id
        return nh_id

    for dst in sorted(routes):
        route = routes[dst]
        if not route.multipath:
            continue
        if len({(h.gateway, h.ifindex) for h in route.nexthops}) != len(route.nexthops):
            log.info("netlink.nexthop.classic", dst=dst, reason="a next hop is listed twice")
            continue
        singles = {id_of(s): s for s in (Nexthop(h.gateway, h.ifindex) for h in route.nexthops)}
        group = None
        if None not in singles:
            group = Group(tuple(zip(singles, (h.weight for h in route.nexthops))))
        group_id = None if group is None else id_of(group)
        if group_id is None:
            log.warning("netlink.nexthop.ids_exhausted", dst=dst, id_base=id_base,
                        id_count=id_count)
            continue
        objects.update(singles)
        objects[group_id] = group
        route_nh[dst] = group_id
    return NexthopPlan(objects, route_nh)


def resolve(nh_id: int, objects: Mapping[int, Object]) -> tuple[NextHop, ...] | None:
    """The next hops a route through ``nh_id`` has, from ``objects``; None if unknown there."""
    obj = objects.get(nh_id)
    if isinstance(obj, Nexthop):
        return (NextHop(obj.gateway, obj.ifindex),)
    if isinstance(obj, Group):
        hops = []
        for member, weight in obj.members:
            single = objects.get(member)
            if not isinstance(single, Nexthop):
                return None
            hops.append(NextHop(single.gateway, single.ifindex, weight))
        return tuple(hops)
    return None


# --- the nexthop table ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NexthopError:
    id: int
    obj: Object | None
    op: str  # "replace" | "delete"
    errno: int
    message: str


class NhRoute(NamedTuple):
    dst: str
    nh_id: int
    prefsrc: str | None = None


def probe(sock: socket.socket, seq: int = 1) -> bool:
    """Whether the kernel behind ``sock`` (NETLINK_ROUTE) has nexthop objects (Linux >= 5.3).

    An RTM_GETNEXTHOP dump succeeds there; older kernels have no handler for the message type and
    answer EOPNOTSUPP (EINVAL from some backports).  Other errors are raised.
    """
    try:
        for _ in dump_request(sock, seq, RTM_GETNEXTHOP, NHMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0)):
            pass
    except OSError as e:
        if e.errno in (errno.EOPNOTSUPP, errno.EINVAL):
            return False
        raise
    return True


class NexthopTable:
    """Our nexthop objects (our protocol, ids in our range) and routes that name them."""

    def __init__(self, protocol: int = RTPROT_SPINES, id_base: int = ID_BASE,
                 id_count: int = ID_COUNT, netns: str | None = None) -> None:
        if not (0 < id_base and id_count > 0 and id_base + id_count <= 1 << 32):
            raise ValueError(f"nexthop id range {id_base:#x}+{id_count:#x} is not within u32 "
                             "(id 0 means 'allocate' to the kernel)")
        self.protocol, self.id_base, self.id_count = protocol, id_base, id_count
        self._nl = Netlink(netns, strict=True, timeout=ACK_TIMEOUT)

    def close(self) -> None:
        self._nl.close()

    def __enter__(self) -> NexthopTable:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _next_seq(self) -> int:
        return self._nl.next_seq()

    def owns(self, nh_id: int) -> bool:
        return self.id_base <= nh_id < self.id_base + self.id_count

    def probe(self) -> bool:
        return probe(self._nl.sock, self._next_seq())

    @kernel_input
    def dump_all(self) -> list[NexthopMsg]:
        """Every nexthop object of the namespace, of any protocol."""
        body = NHMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0)
        return [decode_nexthop(payload, mtype)
                for mtype, payload in self._nl.dump(RTM_GETNEXTHOP, body)
                if mtype == RTM_NEWNEXTHOP]

    @kernel_input
    def dump(self) -> dict[int, Object]:
        """Our objects: our protocol, an id in our range, a kind we write (gateway or group)."""
        return self.split(self.dump_all())[0]

    def split(self, msgs: list[NexthopMsg]) -> tuple[dict[int, Object], set[int]]:
        """(our objects, the ids of our range that others hold) of a ``dump_all``."""
        ours, taken = {}, set()
        for m in msgs:
            if not self.owns(m.id):
                continue
            if m.protocol == self.protocol and m.obj is not None:
                ours[m.id] = m.obj
            else:
                taken.add(m.id)
        return ours, taken

    @kernel_input
    def apply(self, replace: Mapping[int, Object], delete: Iterable[int]) -> list[NexthopError]:
        """Create or replace ``replace`` and delete ``delete``; return the failed writes.

        One ordered stream: singles, groups (which name singles), then deletes of groups and of
        singles (a single still in a group would shrink it).  Ids outside our range, and deletes
        of ids a dump shows with another protocol, are refused (EPERM) without a request.
        Deleting an id that is already gone is not an error.
        """
        delete = list(delete)
        singles = sorted(i for i, o in replace.items() if isinstance(o, Nexthop))
        groups = sorted(i for i, o in replace.items() if not isinstance(o, Nexthop))
        # Deletes: groups first.  Kinds of ids not in ``replace`` are unknown here; a dump says.
        dumped = self.dump_all() if delete else []
        kinds = {m.id: m.obj for m in dumped}
        protocols = {m.id: m.protocol for m in dumped}
        doomed = sorted(delete, key=lambda i: (not isinstance(kinds.get(i), Group), i))
        ops = [("replace", i, replace[i]) for i in singles + groups]
        ops += [("delete", i, kinds.get(i)) for i in doomed]
        errors: list[NexthopError] = []
        requests: list[tuple[int, bytes]] = []
        pending: dict[int, tuple[str, int, Object | None]] = {}
        for op, nh_id, obj in ops:
            if not self.owns(nh_id):
                errors.append(NexthopError(nh_id, obj, op, errno.EPERM,
                                           f"nexthop id {nh_id} is outside our range"))
                continue
            if op == "delete" and protocols.get(nh_id, self.protocol) != self.protocol:
                errors.append(NexthopError(nh_id, obj, op, errno.EPERM,
                                           f"nexthop {nh_id} has protocol {protocols[nh_id]}"))
                continue
            seq = self._next_seq()
            try:
                data = encode_nexthop(RTM_NEWNEXTHOP if op == "replace" else RTM_DELNEXTHOP, seq,
                                      nh_id, obj, self.protocol)
            except (ValueError, struct.error) as e:
                errors.append(NexthopError(nh_id, obj, op, errno.EINVAL, f"cannot encode: {e}"))
                continue
            requests.append((seq, data))
            pending[seq] = (op, nh_id, obj)
        for seq, (code, message) in self._nl.exchange(requests).items():
            op, nh_id, obj = pending[seq]
            if code and not (op == "delete" and code == errno.ENOENT):
                errors.append(NexthopError(nh_id, obj, op, code, message))
        return errors

    @kernel_input
    def dump_routes(self, table: int = RT_TABLE_MAIN,
                    priority: int = 20) -> tuple[RouteSet, dict[str, NhRoute]]:
        """(classic routes, routes through nexthop objects) of our (table, protocol, priority)."""
        request = RTMSG.pack(socket.AF_INET, 0, 0, 0, _header_table(table), self.protocol, 0,
                             RTN_UNICAST, 0) + _attr(RTA_TABLE, U32.pack(table))
        classic: RouteSet = {}
        via_id: dict[str, NhRoute] = {}
        try:
            for _mtype, payload in self._nl.dump(RTM_GETROUTE, request):
                msg = decode_rtmsg(payload)
                prio = _u32(msg.attrs[RTA_PRIORITY]) if RTA_PRIORITY in msg.attrs else 0
                if (msg.family, msg.protocol, msg.table, msg.type, prio) != (
                        socket.AF_INET, self.protocol, table, RTN_UNICAST, priority):
                    continue
                nh_id = route_nh_id(msg)
                if nh_id is not None:
                    src = msg.attrs.get(RTA_PREFSRC)
                    via_id[msg.dst] = NhRoute(msg.dst, nh_id, _ip(src) if src else None)
                elif (route := _route(msg)) is not None:
                    classic[route.dst] = route
        except OSError as e:
            if e.errno != errno.ENOENT:  # the table was never created
                raise
        return classic, via_id

    def referenced(self) -> set[int]:
        """The nexthop ids that IPv4 routes of our protocol use, in every table and priority."""
        request = RTMSG.pack(socket.AF_INET, 0, 0, 0, 0, self.protocol, 0, RTN_UNICAST, 0)
        found = set()
        for _mtype, payload in self._nl.dump(RTM_GETROUTE, request):
            msg = decode_rtmsg(payload)
            if msg.protocol == self.protocol and (nh_id := route_nh_id(msg)) is not None:
                found.add(nh_id)
        return found

    @kernel_input
    def apply_routes(self, replace: Iterable[NhRoute], delete: Iterable[NhRoute] = (), *,
                     table: int = RT_TABLE_MAIN,
                     priority: int = 20) -> list[tuple[NhRoute, str, int, str]]:
        """Write routes through nexthop objects; return (route, op, errno, message) per failure."""
        requests: list[tuple[int, bytes]] = []
        pending: dict[int, tuple[NhRoute, str]] = {}
        failed: list[tuple[NhRoute, str, int, str]] = []
        for op, msg_type, items in (("replace", RTM_NEWROUTE, replace),
                                    ("delete", RTM_DELROUTE, delete)):
            for r in items:
                seq = self._next_seq()
                try:
                    data = encode_route_nh(msg_type, seq, r.dst, r.nh_id, table, self.protocol,
                                           priority, r.prefsrc)
                except (ValueError, struct.error) as e:
                    failed.append((r, op, errno.EINVAL, f"cannot encode: {e}"))
                    continue
                requests.append((seq, data))
                pending[seq] = (r, op)
        for seq, (code, message) in self._nl.exchange(requests).items():
            r, op = pending[seq]
            if code and not (op == "delete" and code == errno.ESRCH):
                failed.append((r, op, code, message))
        return failed


# --- the reconciler's kernel, with groups -----------------------------------------------------


@dataclass(slots=True)
class SweepResult:
    deleted: list[int] = field(default_factory=list)
    errors: list[NexthopError] = field(default_factory=list)


class NexthopRouteTable:
    """The ``reconcile.Kernel`` contract over our route slot, multipath routes through groups.

    ``dump()`` returns classic routes and routes through our objects resolved to their next hops
    (weights from the group), so the reconciler compares plain Routes.  ``apply`` creates the
    objects the written routes need, writes the routes, deletes, and then sweeps our objects
    that no route uses any more.  Routes of our slot through objects that are not
    ours are left out of the dump (with a log line): they cannot be described as a Route.
    """

    def __init__(self, table: int = RT_TABLE_MAIN, protocol: int = RTPROT_SPINES,
                 priority: int = 20, id_base: int = ID_BASE, id_count: int = ID_COUNT,
                 netns: str | None = None) -> None:
        self.table, self.protocol, self.priority = table, protocol, priority
        self.routes = RouteTable(table, protocol, priority, netns)
        try:
            self.nexthops = NexthopTable(protocol, id_base, id_count, netns)
        except BaseException:
            self.routes.close()
            raise

    def close(self) -> None:
        self.routes.close()
        self.nexthops.close()

    def __enter__(self) -> NexthopRouteTable:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @kernel_input
    def dump(self) -> RouteSet:
        objects = self.nexthops.dump()
        classic, via_id = self.nexthops.dump_routes(self.table, self.priority)
        routes = dict(classic)
        for dst, r in via_id.items():
            hops = resolve(r.nh_id, objects)
            if hops is None:
                log.info("netlink.route.skipped", dst=dst, table=self.table, nh_id=r.nh_id,
                         reason="through a nexthop object that is not ours")
                continue
            routes[dst] = Route(dst, hops, r.prefsrc)
        return routes

    @kernel_input
    def apply(self, replace: list[Route], delete: list[Route]) -> list[RouteError]:
        installed, taken = self.nexthops.split(self.nexthops.dump_all())
        plan = plan_groups({r.dst: r for r in replace}, installed,
                           id_base=self.nexthops.id_base, id_count=self.nexthops.id_count,
                           taken=taken)
        new = {i: o for i, o in plan.objects.items() if installed.get(i) != o}
        failed_objects = {e.id: e for e in self.nexthops.apply(new, [])}
        errors: list[RouteError] = []
        classic: list[Route] = []
        through: list[NhRoute] = []
        by_dst = {}
        for route in replace:
            group_id = plan.route_nh.get(route.dst)
            if group_id is None:
                classic.append(route)
                continue
            group = plan.objects[group_id]
            culprit = next((failed_objects[i] for i in (*(m for m, _w in group.members), group_id)
                            if i in failed_objects), None)  # the root cause first
            if culprit is not None:
                errors.append(RouteError(route, "replace", culprit.errno,
                                         f"nexthop {culprit.id}: {culprit.message}"))
                continue
            through.append(NhRoute(route.dst, group_id, route.prefsrc))
            by_dst[route.dst] = route
        for r, op, code, message in self.nexthops.apply_routes(
                through, table=self.table, priority=self.priority):
            errors.append(RouteError(by_dst[r.dst], op, code, message))
        errors += self.routes.apply(classic, delete)
        self.sweep()
        return errors

    def sweep(self) -> SweepResult:
        """Delete our objects that no route of our protocol uses (groups, then their members).

        Routes of every table and priority count, so two daemons that share our protocol and id
        range (two overlays on one host) never sweep each other's objects; they may share one,
        as objects are found by content.  (If one sweeps an object just as the other plans to
        reuse it, the other's route write fails with "Nexthop id does not exist" and is retried
        by its next sync.)
        """
        objects = self.nexthops.dump()
        keep = self.nexthops.referenced()
        keep |= {m for i in list(keep) if isinstance(objects.get(i), Group)
                 for m, _w in objects[i].members}
        unused = sorted(set(objects) - keep)
        result = SweepResult(deleted=unused)
        if unused:
            result.errors = self.nexthops.apply({}, unused)
            for e in result.errors:
                log.warning("netlink.nexthop.sweep_failed", id=e.id, errno=e.errno,
                            message=e.message)
            failed = {e.id for e in result.errors}
            result.deleted = [i for i in unused if i not in failed]
            log.info("netlink.nexthop.swept", ids=result.deleted)
        return result
