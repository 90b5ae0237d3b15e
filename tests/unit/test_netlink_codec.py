"""The route codec: the encoder against pyroute2's own encoding, RouteTable's batches and dumps
against a scripted socket (no kernel)."""

import errno
import os
import socket
from collections import deque

import pytest

from spines_kr.netlink import core
from spines_kr.netlink import kernel as k
from spines_kr.routing.model import NextHop, Route, route_set


def test_template_encoder_matches_pyroute2_message_for_message():
    """The patched templates are byte for byte what pyroute2 encodes for each route."""
    import ipaddress
    import socket as _s

    from hypothesis import given, settings, strategies as st
    from spines_kr.netlink import kernel as k
    from spines_kr.netlink.messages import rtmsg
    from spines_kr.routing.model import NextHop, Route

    def reference(msg_type, seq, route, table, protocol, priority):
        net = ipaddress.IPv4Network(route.dst)
        m = rtmsg()
        m["family"], m["dst_len"], m["proto"], m["type"] = _s.AF_INET, net.prefixlen, protocol, 1
        m["table"] = table if table < 256 else 0
        attrs = [("RTA_DST", str(net.network_address)), ("RTA_TABLE", table),
                 ("RTA_PRIORITY", priority)]
        if msg_type == k.RTM_NEWROUTE:
            flags = k.NLM_F_REQUEST | k.NLM_F_ACK | k.NLM_F_CREATE | k.NLM_F_REPLACE
            if route.prefsrc:
                attrs.append(("RTA_PREFSRC", route.prefsrc))
            if route.multipath:
                attrs.append(("RTA_MULTIPATH", [{"oif": h.ifindex, "hops": h.weight - 1,
                                                 "attrs": [("RTA_GATEWAY", h.gateway)]}
                                                for h in route.nexthops]))
            else:
                attrs += [("RTA_GATEWAY", route.nexthops[0].gateway),
                          ("RTA_OIF", route.nexthops[0].ifindex)]
        else:
            m["scope"], flags = 255, k.NLM_F_REQUEST | k.NLM_F_ACK
        m["attrs"] = attrs
        m["header"].update(type=msg_type, flags=flags, sequence_number=seq)
        m.encode()
        return bytes(m.data)

    addr = st.integers(1, 2**32 - 2).map(lambda n: str(ipaddress.IPv4Address(n)))
    hop = st.builds(NextHop, addr, st.integers(1, 2**31 - 1), st.integers(1, 256))
    route = st.builds(lambda a, p, hs, src: Route(f"{a}/{p}", tuple(hs), src), addr,
                      st.integers(0, 32), st.lists(hop, min_size=1, max_size=4, unique_by=lambda h: h.gateway),
                      st.one_of(st.none(), addr))

    @settings(max_examples=300, deadline=None)
    @given(route, st.sampled_from([k.RTM_NEWROUTE, k.RTM_DELROUTE]), st.integers(0, 2**32 - 1),
           st.sampled_from([254, 1000]))
    def check(r, msg_type, seq, table):
        assert k.encode_route(msg_type, seq, r, table, 81, 20) == reference(msg_type, seq, r, table, 81, 20)

    check()


# --- RouteTable's batches and dumps against a scripted socket ---------------------------------


class ScriptedNetlink:
    """A NETLINK_ROUTE socket that answers route requests as the kernel does: requests of one
    datagram in order, an NLMSG_ERROR for a failed one (``fail``: dst -> errno) or, on success,
    an ack only with NLM_F_ACK; one answer per recv().  ``room`` answers fit in the receive
    buffer: the rest are dropped and the next recv() fails with ENOBUFS, as netlink_overrun.
    ``dump`` is the datagram list a dump request is answered with."""

    def __init__(self, fail=None, rcvbuf=1 << 20, room=None, dump=()):
        self.fail = fail or {}
        self.rcvbuf, self.room = rcvbuf, room
        self.dump = list(dump)
        self.datagrams: list[list[tuple[int, int, int, str]]] = []
        self.queue: deque[bytes] = deque()
        self.overrun = False
        self.blocking = True

    def setsockopt(self, *args):
        pass

    def getsockopt(self, level, option):
        return self.rcvbuf if option == socket.SO_RCVBUF else 212992

    def settimeout(self, timeout):
        self.blocking = True

    def setblocking(self, flag):
        self.blocking = flag

    def close(self):
        pass

    def _answer(self, data: bytes) -> None:
        if self.room is not None and len(self.queue) >= self.room:
            self.overrun = True
        else:
            self.queue.append(data)

    def send(self, data: bytes) -> int:
        msgs = list(k.iter_messages(data))
        if msgs[0][0] == k.RTM_GETROUTE:
            for datagram in self.dump:
                self.queue.append(datagram.replace(b"SEQ!", k.U32.pack(msgs[0][2])))
            return len(data)
        self.datagrams.append([(t, f, s, k.decode_rtmsg(p).dst) for t, f, s, p in msgs])
        for mtype, flags, seq, payload in msgs:
            code = self.fail.get(k.decode_rtmsg(payload).dst, 0)
            if code or flags & k.NLM_F_ACK:
                request = k.NLMSGHDR.pack(16 + len(payload), mtype, flags, seq, 0)
                self._answer(k.NLMSGHDR.pack(36, k.NLMSG_ERROR, k.NLM_F_CAPPED, seq, 0)
                             + k.I32.pack(-code) + request)
        return len(data)

    def recv(self, size: int) -> bytes:
        if self.overrun:
            self.overrun = False
            raise OSError(errno.ENOBUFS, os.strerror(errno.ENOBUFS))
        if self.queue:
            return self.queue.popleft()
        if self.blocking:
            raise TimeoutError("timed out")
        raise BlockingIOError(errno.EAGAIN, "no answer queued")


def scripted_table(monkeypatch, sock: ScriptedNetlink) -> k.RouteTable:
    monkeypatch.setattr(core, "open_socket", lambda netns, groups=0, protocol=0: sock)
    return k.RouteTable(priority=20)


def routes(n: int, first: int = 0) -> list[Route]:
    return [Route(f"10.{(first + i) >> 16 & 255}.{(first + i) >> 8 & 255}.{(first + i) & 255}/32",
                  (NextHop("10.0.0.2", 3),)) for i in range(n)]


def test_batches_ask_for_one_ack_each_and_fit_the_receive_buffer(monkeypatch):
    sock = ScriptedNetlink(rcvbuf=3 * k.ACK_ROOM)  # room for 3 failures a datagram
    table = scripted_table(monkeypatch, sock)
    assert table.apply(routes(7), routes(2, 100)) == []
    assert [len(d) for d in sock.datagrams] == [3, 3, 3]
    flat = [m for d in sock.datagrams for m in d]
    assert [m[0] for m in flat] == [k.RTM_NEWROUTE] * 7 + [k.RTM_DELROUTE] * 2  # replaces first
    assert [m[2] for m in flat] == list(range(1, 10))
    for datagram in sock.datagrams:  # NLM_F_ACK on the last request of each datagram only
        assert [bool(m[1] & k.NLM_F_ACK) for m in datagram] == [False, False, True]
    assert not sock.queue


def test_failures_are_reported_by_seq_and_the_rest_succeed(monkeypatch):
    batch = routes(10)
    bad = [batch[0], batch[4], batch[9]]  # first, middle, and the one carrying the ack
    sock = ScriptedNetlink(fail={r.dst: errno.ENETUNREACH for r in bad}
                           | {"10.0.1.0/32": errno.ESRCH, "10.0.1.1/32": errno.EBUSY},
                           rcvbuf=5 * k.ACK_ROOM)
    table = scripted_table(monkeypatch, sock)
    sock.queue.append(k.NLMSGHDR.pack(36, k.NLMSG_ERROR, 0, 999, 0) + bytes(20))  # stale answer
    unencodable = Route("10.9.0.0/16", (NextHop("10.0.0.2", 3, 300), NextHop("10.0.0.3", 3)))
    errors = table.apply(batch + [unencodable], routes(2, 256))
    assert {(e.route, e.op, e.errno) for e in errors} == {
        (unencodable, "replace", errno.EINVAL), *((r, "replace", errno.ENETUNREACH) for r in bad),
        (routes(2, 256)[1], "delete", errno.EBUSY)}  # ESRCH on delete: already gone, success
    assert len(errors) == 5
    assert {e.message for e in errors if e.errno == errno.ENETUNREACH} == {
        os.strerror(errno.ENETUNREACH)}
    assert sum(len(d) for d in sock.datagrams) == 12 and not sock.queue


def test_lost_answers_make_the_unanswered_requests_failures(monkeypatch):
    batch = routes(6)
    sock = ScriptedNetlink(fail={r.dst: errno.ENETUNREACH for r in batch}, room=2)
    table = scripted_table(monkeypatch, sock)
    errors = table.apply(batch, [])
    assert [(e.route, e.errno) for e in errors] == [(r, errno.ENETUNREACH) for r in batch[:2]] + [
        (r, errno.ENOBUFS) for r in batch[2:]]
    assert "outcome unknown" in errors[-1].message
    assert sock.blocking  # the timeout is back for the next exchange
    sock.fail, sock.room = {}, None
    assert table.apply(routes(3, 50), []) == []


def test_no_ack_within_the_timeout(monkeypatch):
    sock = ScriptedNetlink(room=0)
    sock.recv = lambda size: (_ for _ in ()).throw(TimeoutError("timed out"))
    table = scripted_table(monkeypatch, sock)
    errors = table.apply(routes(2), [])
    assert [e.errno for e in errors] == [errno.ETIMEDOUT] * 2


# A dump of table 254 captured on Linux 6.18 (strict checking on, proto 81; v0 is ifindex 3):
#   ip route add 0.0.0.0/0 via 10.0.0.2 dev v0 proto 81 metric 20
#   ip route add 10.1.0.0/16 via 10.0.0.2 dev v0 proto 81 metric 20
#   ip route add 10.2.0.0/24 via 10.0.0.3 dev v0 proto 81 metric 20 src 10.255.0.1
#   ip route add 10.3.3.3/32 proto 81 metric 20 nexthop via 10.0.0.3 dev v0 weight 2 \
#       nexthop via 10.0.0.2 dev v0
#   ip route add 10.4.0.0/16 via 10.0.0.2 dev v0 proto 81 metric 30     # another priority
#   ip route add 10.5.0.0/16 dev v0 proto 81 metric 20                  # no gateway
DUMPED = [
    "02000000fe5100010000000008000f00fe0000000800060014000000080005000a0000020800040003000000",
    "02100000fe5100010000000008000f00fe000000080001000a0100000800060014000000080005000a000002"
    "0800040003000000",
    "02180000fe5100010000000008000f00fe000000080001000a0200000800060014000000080007000aff0001"
    "080005000a0000030800040003000000",
    "02200000fe5100010000000008000f00fe000000080001000a0303030800060014000000240009001000000103"
    "000000080005000a0000031000000003000000080005000a000002",
    "02100000fe5100010000000008000f00fe000000080001000a040000080006001e000000080005000a000002"
    "0800040003000000",
    "02100000fe51fd010000000008000f00fe000000080001000a05000008000600140000000800040003000000",
]


def dump_datagrams() -> list[bytes]:
    msgs = [bytes.fromhex(h) for h in DUMPED]
    new = [k.NLMSGHDR.pack(16 + len(p), k.RTM_NEWROUTE, 2, 0, 0)[:8] + b"SEQ!" + bytes(4) + p
           for p in msgs]
    done = k.NLMSGHDR.pack(20, k.NLMSG_DONE, 2, 0, 0)[:8] + b"SEQ!" + bytes(4) + bytes(4)
    return [b"".join(new[:3]), b"".join(new[3:]) + done]


@pytest.mark.parametrize("one_hop_layouts", [True, False], ids=["fast", "generic"])
def test_dump_decodes_the_captured_table(monkeypatch, one_hop_layouts):
    if not one_hop_layouts:
        monkeypatch.setattr(k, "_ONE_HOP", {})
    decoded = []
    monkeypatch.setattr(k, "decode_rtmsg", lambda p, f=k.decode_rtmsg: decoded.append(p) or f(p))
    table = scripted_table(monkeypatch, ScriptedNetlink(dump=dump_datagrams()))
    assert table.dump() == route_set([
        Route("0.0.0.0/0", (NextHop("10.0.0.2", 3),)),
        Route("10.1.0.0/16", (NextHop("10.0.0.2", 3),)),
        Route("10.2.0.0/24", (NextHop("10.0.0.3", 3),), "10.255.0.1"),
        Route("10.3.3.3/32", (NextHop("10.0.0.3", 3, 2), NextHop("10.0.0.2", 3))),
    ])
    # The fast path takes the one-gateway routes with RTA_DST (10.1, 10.2 and 10.4, not ours).
    assert len(decoded) == (3 if one_hop_layouts else 6)


def test_loopback_address_requests_are_pyroute2s():
    """addresses._addr is a struct codec; pyroute2's ifaddrmsg is its oracle."""
    from spines_kr.netlink.addresses import RTM_DELADDR, RTM_NEWADDR, _addr
    from spines_kr.netlink.messages import ifaddrmsg

    for msg_type in (RTM_NEWADDR, RTM_DELADDR):
        msg = ifaddrmsg()
        msg["family"], msg["prefixlen"], msg["index"] = socket.AF_INET, 32, 1
        msg["attrs"] = [("IFA_LOCAL", "240.1.2.3"), ("IFA_ADDRESS", "240.1.2.3"), ("IFA_PROTO", 81)]
        msg["header"]["type"] = msg_type
        msg["header"]["flags"] = k.NLM_F_REQUEST | k.NLM_F_ACK | (
            k.NLM_F_CREATE | 0x200 if msg_type == RTM_NEWADDR else 0)
        msg["header"]["sequence_number"] = 7
        msg.encode()
        assert _addr(msg_type, 7, "240.1.2.3", 81) == bytes(msg.data)


def test_links_and_addresses_decode_as_pyroute2_does():
    from spines_kr.netlink.messages import ifaddrmsg, ifinfmsg

    link = ifinfmsg()
    link["index"], link["flags"] = 7, 0x10043
    link["attrs"] = [("IFLA_IFNAME", "to-n2"), ("IFLA_MTU", 1500)]
    link.encode()
    payload = bytes(link.data)[16:]
    assert k.decode_link(payload) == k.LinkState(7, "to-n2", True, 1500)
    addr = ifaddrmsg()
    addr["family"], addr["prefixlen"], addr["index"] = socket.AF_INET, 30, 7
    addr["attrs"] = [("IFA_ADDRESS", "10.200.0.1"), ("IFA_LOCAL", "10.200.0.1")]
    addr.encode()
    assert k.decode_addr(bytes(addr.data)[16:]) == (socket.AF_INET, 7, "10.200.0.1", 30)
    with pytest.raises(ValueError):
        k.decode_link(b"\0" * 8)


def test_the_daemon_loads_neither_pyroute2_nor_asyncio_nor_openssl():
    """What a daemon on a small router imports (issue 11: idle RSS at most 22 MB)."""
    import subprocess
    import sys

    code = ("import sys\n"
            "import spines_kr.cli, spines_kr.daemon.main, spines_kr.netlink.kernel\n"
            "import spines_kr.netlink.events, spines_kr.netlink.nexthop\n"
            "import spines_kr.netlink.addresses, spines_kr.netlink.capabilities, spines_kr.keys\n"
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in\n"
            "             ('pyroute2', 'asyncio', 'ssl', '_hashlib', 'structlog', 'psutil',\n"
            "              'logging', 'subprocess') or m.startswith('spines_kr.lab'))\n"
            "print(','.join(bad))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
