"""Tunnel devices, their addresses and the pinned underlay routes to their endpoints (rtnetlink).

Data model:
    TunnelLink(ifindex, name, kind, alias, mtu, up)   a link as dumped; ours carry the alias
        ``spines-kr <instance> <kind> <peer logical ID> via <remote underlay address>``
        (IFLA_IFALIAS: ``ip -d link`` shows it), which is how a daemon restarted after a crash
        recognises the tunnels of its previous life (``ours(instance)``) and removes them.
    UnderlayRoute(dst, gateway, oif, prefsrc, mtu)    the underlay's route to an endpoint: the
        best route of the main table that is *not* ours (by route protocol) and does not leave
        through one of our tunnels -- what the underlay would do without the overlay.
    Pin                                              the /32 route we install for an endpoint:
        the underlay route copied, in our table, with our protocol and priority ``route_priority
        - 1`` (``pin_priority``): more specific than any overlay prefix and preferred over an
        overlay /32 for the same address, so the packets of a tunnel never enter the overlay.

Entry points: ``TunnelKernel(netns)`` with
    links() / ours(instance)            tunnel links by ifindex (ours: by the alias marker)
    ifindex(name)                       an interface's index, or None
    create(name, kind, ...)             RTM_NEWLINK NLM_F_CREATE|NLM_F_EXCL of kind vxlan
                                        (unicast point-to-point: id, remote, dstport, no
                                        learning), wireguard (the kernel module), gre, ipip
    configure(ifindex, mtu, alias, up)  MTU, alias and IFF_UP of an existing link (a TUN device
                                        made by wireguard-go too)
    address(ifindex, local, peer, metric, protocol)   ``ip addr add LOCAL peer PEER metric M``:
                                        the link is unnumbered (our logical ID), and the kernel's
                                        connected route to the peer's logical ID gets metric M,
                                        worse than our routes, so a dead tunnel is routed around
    delete(ifindex)
    underlay_route(dst, exclude_protocol, exclude_ifindexes) -> UnderlayRoute | None
                                        (``main_routes()`` and ``best_route``: the same, for
                                        many endpoints from one dump)
    pins(table, protocol, priority) -> {dst: (gateway, oif)};  pin(...), unpin(...)

Messages: struct ``ifinfomsg``/``ifaddrmsg``/``rtmsg`` and attributes with the kernel's names
(linux/if_link.h, if_addr.h, rtnetlink.h), built with ``netlink.core``'s framing.

Kernel behaviour (6.18): ``ip addr add 10.100.0.1 peer 10.100.0.2 dev wg0 metric 1000`` installs
``10.100.0.2 dev wg0 proto kernel scope link src 10.100.0.1 metric 1000`` (IFA_RT_PRIORITY, Linux
>= 4.18); a route ``10.100.0.2 via 10.100.0.2 dev wg0`` is accepted over it (the gateway is
on-link through that route).  A VXLAN device with a ``remote`` floods unknown and broadcast
frames (ARP) to it alone: a point-to-point Ethernet link.  Two VXLAN devices on one UDP port
must differ in VNI (EEXIST otherwise: "A VXLAN device with the specified VNI already exists").
Deleting the TUN device of wireguard-go makes it exit.  A namespace deleted with a wireguard-go
inside does not stop it (the process holds the namespace): it is stopped by its pid.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
import struct
from dataclasses import dataclass

from spines_kr.netlink.core import (NLA_F_NESTED, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REPLACE, U32,
                                    Netlink, attr, parse_attrs)
from spines_kr.netlink.kernel import IFADDRMSG, IFINFOMSG, RTMSG

RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK = 16, 17, 18
RTM_NEWADDR = 20
RTM_NEWROUTE, RTM_DELROUTE, RTM_GETROUTE = 24, 25, 26
IFLA_IFNAME, IFLA_MTU, IFLA_LINKINFO, IFLA_IFALIAS = 3, 4, 18, 20
IFLA_INFO_KIND, IFLA_INFO_DATA = 1, 2
IFLA_VXLAN_ID, IFLA_VXLAN_GROUP, IFLA_VXLAN_LOCAL, IFLA_VXLAN_TTL = 1, 2, 4, 5
IFLA_VXLAN_LEARNING, IFLA_VXLAN_PORT = 7, 15
IFLA_GRE_LOCAL, IFLA_GRE_REMOTE, IFLA_GRE_TTL = 6, 7, 8
IFLA_IPTUN_LOCAL, IFLA_IPTUN_REMOTE, IFLA_IPTUN_TTL = 2, 3, 4
IFA_ADDRESS, IFA_LOCAL, IFA_RT_PRIORITY, IFA_PROTO = 1, 2, 9, 11
RTA_DST, RTA_OIF, RTA_GATEWAY, RTA_PRIORITY, RTA_PREFSRC = 1, 4, 5, 6, 7
RTA_METRICS, RTA_MULTIPATH, RTA_TABLE = 8, 9, 15
RTAX_MTU = 2
IFF_UP = 0x1
IFF_LOWER_UP = 0x10000
RTN_UNICAST = 1
RT_SCOPE_UNIVERSE, RT_SCOPE_LINK = 0, 253
RT_TABLE_MAIN = 254
RTNEXTHOP = struct.Struct("=HBBi")
MARKER = "spines-kr"
KINDS = ("wireguard", "vxlan", "gre", "ipip")
# Bytes a tunnel adds to each packet over an IPv4 underlay (outer IPv4 20 + the rest):
OVERHEAD = {"wireguard": 20 + 8 + 32,   # UDP, WireGuard data header 16 and tag 16
            "vxlan": 20 + 8 + 8 + 14,   # UDP, VXLAN header, the inner Ethernet header
            "gre": 20 + 4, "ipip": 20}


@dataclass(frozen=True, slots=True)
class TunnelLink:
    ifindex: int
    name: str
    kind: str  # IFLA_INFO_KIND: vxlan, wireguard, tun (wireguard-go), gre, ipip
    alias: str
    mtu: int
    up: bool


@dataclass(frozen=True, slots=True)
class UnderlayRoute:
    dst: str  # the route's prefix, e.g. "0.0.0.0/0"
    gateway: str | None
    oif: int
    prefsrc: str | None
    mtu: int  # the route's MTU metric (0: none)


def alias(instance: int, kind: str, peer_id: str, remote: str) -> str:
    """The alias that marks a tunnel as ours (and says what it is)."""
    return f"{MARKER} {instance} {kind} {peer_id} via {remote}"


def parse_alias(text: str) -> tuple[int, str, str, str] | None:
    """(instance, kind, peer logical ID, remote) of one of our aliases, else None."""
    parts = text.split()
    if len(parts) != 6 or parts[0] != MARKER or parts[4] != "via" or not parts[1].isdigit():
        return None
    return int(parts[1]), parts[2], parts[3], parts[5]


def _s(value: str) -> bytes:
    return value.encode() + b"\0"


def _ip(value: bytes) -> str:
    return socket.inet_ntoa(value)


def link_request(name: str, kind: str, *, remote: str | None = None,
                 local: str | None = None, vni: int = 0, port: int = 4789,
                 ttl: int = 64) -> bytes:
    """The body of an RTM_NEWLINK that creates a tunnel device of ``kind`` named ``name``."""
    data = b""
    if kind == "vxlan":
        data = (attr(IFLA_VXLAN_ID, U32.pack(vni)) + attr(IFLA_VXLAN_PORT, struct.pack("!H", port))
                + attr(IFLA_VXLAN_LEARNING, b"\0") + attr(IFLA_VXLAN_TTL, bytes([ttl])))
        if remote:
            data += attr(IFLA_VXLAN_GROUP, socket.inet_aton(remote))
        if local:
            data += attr(IFLA_VXLAN_LOCAL, socket.inet_aton(local))
    elif kind in ("gre", "ipip"):
        lo, re_, tt = ((IFLA_GRE_LOCAL, IFLA_GRE_REMOTE, IFLA_GRE_TTL) if kind == "gre"
                       else (IFLA_IPTUN_LOCAL, IFLA_IPTUN_REMOTE, IFLA_IPTUN_TTL))
        data = attr(re_, socket.inet_aton(remote or "0.0.0.0")) + attr(tt, bytes([ttl]))
        if local:
            data += attr(lo, socket.inet_aton(local))
    elif kind != "wireguard":
        raise ValueError(f"unknown tunnel kind {kind!r}")
    info = attr(IFLA_INFO_KIND, kind.encode())
    if data:
        info += attr(IFLA_INFO_DATA | NLA_F_NESTED, data)
    return (IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0) + attr(IFLA_IFNAME, _s(name))
            + attr(IFLA_LINKINFO | NLA_F_NESTED, info))


def address_request(ifindex: int, local: str, peer: str, metric: int, protocol: int) -> bytes:
    """The body of an RTM_NEWADDR of ``local peer PEER metric METRIC`` (unnumbered link)."""
    return (IFADDRMSG.pack(socket.AF_INET, 32, 0, 0, ifindex)
            + attr(IFA_LOCAL, socket.inet_aton(local)) + attr(IFA_ADDRESS, socket.inet_aton(peer))
            + attr(IFA_RT_PRIORITY, U32.pack(metric)) + attr(IFA_PROTO, bytes([protocol])))


def route_request(dst: str, gateway: str | None, oif: int, table: int, protocol: int,
                  priority: int) -> bytes:
    """The body of an RTM_NEWROUTE/DELROUTE of the pin ``dst/32 [via GW] dev OIF``."""
    scope = RT_SCOPE_UNIVERSE if gateway else RT_SCOPE_LINK
    body = (RTMSG.pack(socket.AF_INET, 32, 0, 0, table if table < 256 else 0, protocol, scope,
                       RTN_UNICAST, 0)
            + attr(RTA_DST, socket.inet_aton(dst)) + attr(RTA_TABLE, U32.pack(table))
            + attr(RTA_PRIORITY, U32.pack(priority)))
    if oif:
        body += attr(RTA_OIF, U32.pack(oif))
    if gateway:
        body += attr(RTA_GATEWAY, socket.inet_aton(gateway))
    return body


def decode_tunnel_link(payload: bytes) -> TunnelLink:
    _family, _type, index, flags, _change = IFINFOMSG.unpack_from(payload)
    attrs = parse_attrs(payload, IFINFOMSG.size)
    kind = ""
    if IFLA_LINKINFO in attrs:
        kind = parse_attrs(attrs[IFLA_LINKINFO]).get(IFLA_INFO_KIND, b"").split(b"\0")[0].decode(
            errors="replace")
    mtu = attrs.get(IFLA_MTU, b"")
    return TunnelLink(index, attrs.get(IFLA_IFNAME, b"").split(b"\0")[0].decode(errors="replace"),
                      kind, attrs.get(IFLA_IFALIAS, b"").split(b"\0")[0].decode(errors="replace"),
                      U32.unpack(mtu)[0] if len(mtu) == 4 else 0,
                      (flags & (IFF_UP | IFF_LOWER_UP)) == (IFF_UP | IFF_LOWER_UP))


def best_route(routes: list[tuple[str, int, UnderlayRoute]], dst: str) -> UnderlayRoute | None:
    """Longest prefix match (then lowest priority) of ``dst`` over (prefix, priority, route)."""
    a = ipaddress.IPv4Address(dst)
    best = None
    for prefix, priority, route in routes:
        net = ipaddress.IPv4Network(prefix)
        if a in net:
            key = (-net.prefixlen, priority)
            if best is None or key < best[0]:
                best = (key, route)
    return best[1] if best else None


class TunnelKernel:
    def __init__(self, netns: str | None = None) -> None:
        self._nl = Netlink(netns, strict=True)

    def close(self) -> None:
        self._nl.close()

    def __enter__(self) -> TunnelKernel:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _do(self, mtype: int, flags: int, body: bytes, what: str, ok=()) -> None:
        code, text = self._nl.request(mtype, flags, body)
        if code and code not in ok:
            raise OSError(code, f"{what}: {text}")

    # --- links ------------------------------------------------------------------------------

    def links(self) -> dict[int, TunnelLink]:
        out = {}
        for mtype, payload in self._nl.dump(RTM_GETLINK, IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0,
                                                                         0, 0)):
            if mtype == RTM_NEWLINK and len(payload) >= IFINFOMSG.size:
                link = decode_tunnel_link(payload)
                out[link.ifindex] = link
        return out

    def ours(self, instance: int) -> dict[int, TunnelLink]:
        """Our tunnels of overlay ``instance`` (by the alias marker)."""
        return {i: l for i, l in self.links().items()
                if (p := parse_alias(l.alias)) is not None and p[0] == instance}

    def ifindex(self, name: str) -> int | None:
        body = IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0) + attr(IFLA_IFNAME, _s(name))
        try:
            answers = self._nl.get(RTM_GETLINK, body)
        except OSError as e:
            if e.errno in (errno.ENODEV, errno.ENOENT):
                return None
            raise
        for mtype, payload in answers:
            if mtype == RTM_NEWLINK:
                return IFINFOMSG.unpack_from(payload)[2]
        return None

    def create(self, name: str, kind: str, **kw) -> int:
        """Create a tunnel device; its ifindex.  EEXIST when the name (or a VXLAN's VNI on
        its port) is taken."""
        self._do(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL, link_request(name, kind, **kw),
                 f"{kind} device {name}")
        index = self.ifindex(name)
        if index is None:
            raise OSError(errno.ENODEV, f"{kind} device {name} vanished after its creation")
        return index

    def configure(self, ifindex: int, *, mtu: int | None = None, alias_text: str | None = None,
                  up: bool | None = None) -> None:
        body_attrs = b""
        if mtu:
            body_attrs += attr(IFLA_MTU, U32.pack(mtu))
        if alias_text is not None:
            body_attrs += attr(IFLA_IFALIAS, _s(alias_text))
        flags = IFF_UP if up else 0
        change = IFF_UP if up is not None else 0
        body = IFINFOMSG.pack(socket.AF_UNSPEC, 0, ifindex, flags, change) + body_attrs
        self._do(RTM_NEWLINK, 0, body, f"link {ifindex}")

    def delete(self, ifindex: int) -> None:
        self._do(RTM_DELLINK, 0, IFINFOMSG.pack(socket.AF_UNSPEC, 0, ifindex, 0, 0),
                 f"delete link {ifindex}", ok=(errno.ENODEV,))

    def address(self, ifindex: int, local: str, peer: str, metric: int, protocol: int) -> None:
        self._do(RTM_NEWADDR, NLM_F_CREATE | NLM_F_REPLACE,
                 address_request(ifindex, local, peer, metric, protocol),
                 f"address {local} peer {peer} on link {ifindex}")

    # --- the underlay's route to an endpoint, and our pins ------------------------------------

    def main_routes(self) -> list[tuple[int, str, int, UnderlayRoute]]:
        """(protocol, prefix, priority, route) of the main table's IPv4 unicast routes."""
        request = (RTMSG.pack(socket.AF_INET, 0, 0, 0, RT_TABLE_MAIN, 0, 0, RTN_UNICAST, 0)
                   + attr(RTA_TABLE, U32.pack(RT_TABLE_MAIN)))
        out = []
        for _mtype, payload in self._nl.dump(RTM_GETROUTE, request):
            family, dst_len, _s2, _tos, table, protocol, _scope, rtype, _f = RTMSG.unpack_from(
                payload)
            attrs = parse_attrs(payload, RTMSG.size)
            if RTA_TABLE in attrs:
                table = U32.unpack(attrs[RTA_TABLE])[0]
            if family != socket.AF_INET or rtype != RTN_UNICAST or table != RT_TABLE_MAIN:
                continue
            dst = _ip(attrs[RTA_DST]) if RTA_DST in attrs else "0.0.0.0"
            gateway = _ip(attrs[RTA_GATEWAY]) if RTA_GATEWAY in attrs else None
            oif = U32.unpack(attrs[RTA_OIF])[0] if RTA_OIF in attrs else 0
            if RTA_MULTIPATH in attrs and len(attrs[RTA_MULTIPATH]) >= RTNEXTHOP.size:
                mp = attrs[RTA_MULTIPATH]  # the first next hop of a multipath route
                length, _fl, _h, oif = RTNEXTHOP.unpack_from(mp)
                gw = parse_attrs(mp[:length], RTNEXTHOP.size).get(RTA_GATEWAY)
                gateway = _ip(gw) if gw else None
            mtu = 0
            if RTA_METRICS in attrs:
                raw = parse_attrs(attrs[RTA_METRICS]).get(RTAX_MTU)
                mtu = U32.unpack(raw)[0] if raw and len(raw) == 4 else 0
            prefix = f"{dst}/{dst_len}"
            priority = U32.unpack(attrs[RTA_PRIORITY])[0] if RTA_PRIORITY in attrs else 0
            prefsrc = _ip(attrs[RTA_PREFSRC]) if RTA_PREFSRC in attrs else None
            out.append((protocol, prefix, priority,
                        UnderlayRoute(prefix, gateway, oif, prefsrc, mtu)))
        return out

    def underlay_route(self, dst: str, exclude_protocol: int,
                       exclude_ifindexes: set[int] = frozenset()) -> UnderlayRoute | None:
        """The main table's best route to ``dst`` among routes not of ``exclude_protocol`` and
        not through ``exclude_ifindexes`` (our tunnels): the underlay's path."""
        routes = [(prefix, priority, r) for protocol, prefix, priority, r in self.main_routes()
                  if protocol != exclude_protocol and r.oif not in exclude_ifindexes and r.oif]
        return best_route(routes, dst)

    def pins(self, table: int, protocol: int, priority: int) -> dict[str, tuple[str | None, int]]:
        request = (RTMSG.pack(socket.AF_INET, 0, 0, 0, table if table < 256 else 0, protocol, 0,
                              RTN_UNICAST, 0) + attr(RTA_TABLE, U32.pack(table)))
        out: dict[str, tuple[str | None, int]] = {}
        try:
            for _mtype, payload in self._nl.dump(RTM_GETROUTE, request):
                fields = RTMSG.unpack_from(payload)
                attrs = parse_attrs(payload, RTMSG.size)
                rtable = U32.unpack(attrs[RTA_TABLE])[0] if RTA_TABLE in attrs else fields[4]
                prio = U32.unpack(attrs[RTA_PRIORITY])[0] if RTA_PRIORITY in attrs else 0
                if (fields[0], fields[1], fields[5], rtable, prio) != (
                        socket.AF_INET, 32, protocol, table, priority) or RTA_DST not in attrs:
                    continue
                out[_ip(attrs[RTA_DST])] = (
                    _ip(attrs[RTA_GATEWAY]) if RTA_GATEWAY in attrs else None,
                    U32.unpack(attrs[RTA_OIF])[0] if RTA_OIF in attrs else 0)
        except OSError as e:
            if e.errno != errno.ENOENT:  # a table never made
                raise
        return out

    def pin(self, dst: str, gateway: str | None, oif: int, table: int, protocol: int,
            priority: int) -> None:
        self._do(RTM_NEWROUTE, NLM_F_CREATE | NLM_F_REPLACE,
                 route_request(dst, gateway, oif, table, protocol, priority),
                 f"endpoint route {dst}/32")

    def unpin(self, dst: str, table: int, protocol: int, priority: int) -> None:
        body = (RTMSG.pack(socket.AF_INET, 32, 0, 0, table if table < 256 else 0, protocol, 0,
                           RTN_UNICAST, 0) + attr(RTA_DST, socket.inet_aton(dst))
                + attr(RTA_TABLE, U32.pack(table)) + attr(RTA_PRIORITY, U32.pack(priority)))
        self._do(RTM_DELROUTE, 0, body, f"endpoint route {dst}/32", ok=(errno.ESRCH,))

