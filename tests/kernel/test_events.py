"""KernelWatch against the real kernel: link, carrier, address and route notifications."""

from __future__ import annotations

import select
import socket
import struct
import time

import pytest

from spines_kr.netlink.events import AddrEvent, KernelWatch, LinkEvent, Overflow, RouteEvent
from spines_kr.netlink.kernel import RouteTable
from spines_kr.netlink.nsenter import socket_in_netns
from spines_kr.routing.model import NextHop, Route
from tests.kernel.conftest import ip

pytestmark = [pytest.mark.kernel, pytest.mark.needs("veth")]


@pytest.fixture
def watch(netns, veth):
    with KernelWatch(netns) as w:
        yield w


def wait_for(watch: KernelWatch, predicate, timeout: float = 10.0):
    """The first event satisfying ``predicate``; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    seen = []
    while (left := deadline - time.monotonic()) > 0:
        if select.select([watch], [], [], left)[0]:
            for event in watch.read():
                if predicate(event):
                    return event
                seen.append(event)
    pytest.fail(f"no matching event within {timeout} s; saw {seen}")


def link_event(veth, up: bool):
    return lambda e: isinstance(e, LinkEvent) and e.ifindex == veth.ifindex and e.up is up


def test_admin_state_and_carrier(watch, netns, veth):
    ip(netns, "link", "set", veth.name, "down")
    assert wait_for(watch, link_event(veth, False)).name == veth.name
    ip(netns, "link", "set", veth.name, "up")
    wait_for(watch, link_event(veth, True))
    ip(netns, "link", "set", veth.peer, "down")  # v0 stays admin up but loses carrier
    wait_for(watch, link_event(veth, False))
    ip(netns, "link", "set", veth.peer, "up")
    wait_for(watch, link_event(veth, True))


def test_address_events(watch, netns, veth):
    ip(netns, "addr", "add", "10.0.9.1/28", "dev", veth.name)
    wanted = AddrEvent(veth.ifindex, "10.0.9.1", 28, added=True)
    wait_for(watch, lambda e: e == wanted)
    ip(netns, "addr", "del", "10.0.9.1/28", "dev", veth.name)
    wait_for(watch, lambda e: e == AddrEvent(veth.ifindex, "10.0.9.1", 28, added=False))


@pytest.mark.needs("policy_rules")  # table 1000
def test_route_deleted_by_hand(watch, netns, veth):
    with RouteTable(table=1000, netns=netns) as table:
        table.apply([Route("10.1.0.0/16", (NextHop("10.0.0.2", veth.ifindex),))], [])
    wait_for(watch, lambda e: e == RouteEvent("10.1.0.0/16", 1000, 81, deleted=False))
    ip(netns, "route", "del", "10.1.0.0/16", "table", "1000", "proto", "81")
    wait_for(watch, lambda e: e == RouteEvent("10.1.0.0/16", 1000, 81, deleted=True))


def test_overflow_is_reported_then_events_flow_again(watch, netns, veth):
    # 20,000 notifications of about 1 KiB each (skb truesize) exceed the receive buffer
    # (4 MiB asked, doubled by the kernel).
    routes = [Route(f"10.{100 + i // 65536}.{i // 256 % 256}.{i % 256}/32",
                    (NextHop("10.0.0.2", veth.ifindex),)) for i in range(20000)]
    with RouteTable(netns=netns) as table:
        assert table.apply(routes, []) == []
    assert wait_for(watch, lambda e: True) == Overflow()
    ip(netns, "link", "set", veth.name, "down")
    wait_for(watch, link_event(veth, False))


def test_malformed_messages_are_skipped(watch, netns, veth):
    # Netlink sockets may unicast to each other: send garbage straight to the watch's port id.
    with socket.socket(fileno=watch.fileno()) as view:  # a second handle, detached below
        port = view.getsockname()[0]
        view.detach()
    header = struct.Struct("=IHHII")
    bad = [
        header.pack(16 + 2, 24, 0, 0, 0) + b"\1\2",  # RTM_NEWROUTE shorter than struct rtmsg
        header.pack(16 + 12, 16, 0, 0, 0) + b"\0" * 12,  # RTM_NEWLINK shorter than ifinfomsg
        # RTM_NEWADDR whose IFA_ADDRESS runs past the message
        header.pack(16 + 16, 20, 0, 0, 0) + struct.pack("=BBBBI", 2, 24, 0, 0, 1) + b"\x08\0\1\0",
        # RTM_NEWROUTE whose RTA_DST holds 3 bytes
        header.pack(16 + 20, 24, 0, 0, 0) + bytes([2, 24] + [0] * 10) + b"\x07\0\1\0\1\2\3\0",
        header.pack(9999, 24, 0, 0, 0) + b"\0" * 12,  # length beyond the datagram
    ]
    good = header.pack(16 + 20, 24, 0, 0, 0) + bytes([2, 24] + [0] * 10) + b"\x08\0\1\0\1\2\3\0"
    with socket_in_netns(netns, socket.AF_NETLINK, socket.SOCK_RAW, 0) as sender:
        for datagram in [*bad, good]:
            sender.sendto(datagram, (port, 0))
    event = wait_for(watch, lambda e: isinstance(e, RouteEvent))
    assert event == RouteEvent("1.2.3.0/24", 0, 0, deleted=False)
