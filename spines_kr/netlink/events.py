"""Kernel notifications of links, IPv4 addresses and IPv4 routes, as plain values.

Data model (what ``KernelWatch.read()`` returns, in kernel order):
    LinkEvent(ifindex, name, up, mtu)              RTM_NEWLINK / RTM_DELLINK; up = IFF_UP and
                                                   IFF_LOWER_UP (carrier), False once deleted
    AddrEvent(ifindex, address, prefixlen, added)  RTM_NEWADDR / RTM_DELADDR (IPv4)
    RouteEvent(dst, table, protocol, deleted)      RTM_NEWROUTE / RTM_DELROUTE (IPv4), of every
                                                   table and protocol: the caller filters
    Overflow()                                     the socket overflowed (ENOBUFS), events were
                                                   lost: the caller resyncs everything

Entry point: ``KernelWatch(netns)``; register ``fileno()`` with the event loop and call
``read()`` when it is readable.  ``read()`` never blocks and never raises on a malformed message
(it is skipped).

Kernel behaviour followed (6.18): a multicast listener that falls behind loses messages and gets
ENOBUFS once from recv() (NETLINK_NO_ENOBUFS is left off for that reason), then receives again.
Losing carrier keeps IFF_UP and clears IFF_LOWER_UP: ``ip link set v1 down`` on one end of a veth
pair sends RTM_NEWLINK for the other end without IFF_LOWER_UP.
"""

from __future__ import annotations

import errno
import socket
import struct
from dataclasses import dataclass

from spines_kr.log import get_logger
from spines_kr.netlink.core import Netlink
from spines_kr.netlink.kernel import (
    RTM_DELADDR, RTM_DELLINK, RTM_DELROUTE, RTM_NEWADDR, RTM_NEWLINK, RTM_NEWROUTE,
    RTMGRP_IPV4_IFADDR, RTMGRP_IPV4_ROUTE, RTMGRP_LINK, decode_addr, decode_link, decode_rtmsg)

log = get_logger(__name__)

GROUPS = RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV4_ROUTE


@dataclass(frozen=True, slots=True)
class LinkEvent:
    ifindex: int
    name: str
    up: bool
    mtu: int = 0


@dataclass(frozen=True, slots=True)
class AddrEvent:
    ifindex: int
    address: str
    prefixlen: int
    added: bool


@dataclass(frozen=True, slots=True)
class RouteEvent:
    dst: str
    table: int
    protocol: int
    deleted: bool


@dataclass(frozen=True, slots=True)
class Overflow:
    pass


Event = LinkEvent | AddrEvent | RouteEvent | Overflow


MALFORMED = (struct.error, ValueError, KeyError, IndexError, OverflowError, TypeError)


def decode_event(mtype: int, payload: bytes) -> Event | None:
    """The event of one notification, or None for messages we do not watch and for malformed
    ones (never raises: the kernel does not send garbage, but nothing here may crash the
    daemon if something else writes to our socket)."""
    try:
        return _decode_event(mtype, payload)
    except MALFORMED as e:
        log.warning("netlink.event.malformed", type=mtype, error=repr(e))
        return None


def _decode_event(mtype: int, payload: bytes) -> Event | None:
    if mtype in (RTM_NEWLINK, RTM_DELLINK):
        link = decode_link(payload, mtype)
        return LinkEvent(link.ifindex, link.name, link.up and mtype == RTM_NEWLINK, link.mtu)
    if mtype in (RTM_NEWADDR, RTM_DELADDR):
        addr = decode_addr(payload, mtype)
        return None if addr is None else AddrEvent(*addr[1:], added=mtype == RTM_NEWADDR)
    if mtype in (RTM_NEWROUTE, RTM_DELROUTE):
        route = decode_rtmsg(payload)
        if route.family != socket.AF_INET:
            return None
        return RouteEvent(route.dst, route.table, route.protocol, deleted=mtype == RTM_DELROUTE)
    return None


class KernelWatch:
    def __init__(self, netns: str | None = None) -> None:
        self._nl = Netlink(netns, groups=GROUPS)

    def fileno(self) -> int:
        return self._nl.fileno()

    def close(self) -> None:
        self._nl.close()

    def __enter__(self) -> KernelWatch:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def read(self) -> list[Event]:
        """Everything pending, decoded; ``[Overflow()]`` if events were lost meanwhile."""
        events: list[Event] = []
        overflow = False
        while True:
            try:
                messages = self._nl.read()
            except OSError as e:
                if e.errno != errno.ENOBUFS:
                    raise
                overflow = True
                continue
            if messages is None:
                break
            for mtype, _flags, _seq, payload in messages:
                event = decode_event(mtype, payload)
                if event is not None:
                    events.append(event)
        return [Overflow()] if overflow else events
