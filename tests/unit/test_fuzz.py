"""Fuzz targets for every decoder of bytes from outside the process, and the contract each keeps.

A target turns one ``bytes`` input into a call of a decoder (or of the entry point that calls
it, where that is the level whose contract says "never raises"), lets through only the
exceptions the contract allows, checks the type of what comes back, and returns a short outcome
label ("accepted:Hello", "rejected:short").  Any other exception propagates: that is a crash.
``bench/fuzz.py`` runs the same targets for longer with a seeded random loop.

Inputs are random bytes, mutations of valid encodings (the codecs' own encoders and the golden
bytes of the codec tests: bits flipped, bytes inserted, deleted, duplicated, overwritten with
edge values, truncated, spliced) and, per target, a structure-aware generator (valid framing
with edge-case contents: attributes of the wrong size, IGMP with a right checksum, LSAs with
extreme fields, JSON requests with odd values).  The mutation and generation code is written
once against a ``Chooser`` that either hypothesis (here) or ``random.Random`` (the bench) drives.

Contracts, read off the callers:
  * wire (``packets.decode``, ``LSA.decode_from``, each ``decode_body``): only ``DecodeError``,
    with a reason the daemon counts (``REASONS``).
  * ``Node.receive``: never raises; every datagram adds one to ``packets_in`` and is either
    dropped (one ``dropped.<reason>``: the decoder's reason when it does not decode; an update's
    LSAs may be dropped one by one) or processed; afterwards the engine still computes routes
    and originates its next three LSAs (a group joined, then a tick that floods it), each with
    a sequence number below the reserved ``MAX_SEQ``.  Also with HMAC authentication.
  * netlink, two levels.  Decoders of one message (``decode_rtmsg``, ``decode_link``,
    ``decode_addr``, ``decode_ack``, ``decode_nexthop``) may reject malformed input with
    ``struct.error`` or ``ValueError`` and nothing else, and return values of the documented
    types; ``decode_mfc`` also ``KeyError`` (a foreign vif, which ``MulticastRouter.dump``
    catches); ``events.decode_event`` never raises (None for a malformed message);
    ``iter_messages`` and ``parse_attrs`` never raise (they stop at a bad length).  The entry points the daemon calls on a netlink socket
    (``RouteTable.dump`` with its one-unpack fast path, ``.links``, ``.local_addresses``,
    ``.apply``'s acks, ``NexthopTable.dump``/``.dump_routes``, ``MulticastRouter.dump``) may raise
    only ``OSError``, which is what the daemon handles (a failed sync is logged and retried);
    ``KernelWatch.read`` and ``MulticastRouter.read_upcalls`` never raise.  They run against a
    scripted socket that answers the request with the fuzzed datagram (the sequence number of
    every message in it set to the request's) and then with NLMSG_DONE (or the ack).
  * ``mroute.decode_packet``: only ``MalformedMessage`` (its docstring; ``read_upcalls`` also
    tolerates ``struct.error``).
  * ``control.answer``: never raises; returns ``{"ok": bool, ...}`` that ``json.dumps`` writes
    (an error reply carries a str ``error``).  Run with a stand-in daemon: Daemon's own
    ``setlink`` and ``join`` (the request parsing) with their side effects stubbed, and a real
    Node with an up link behind the ``show`` views.

``REPRODUCERS`` lists the minimal inputs of the crashes found so far; they fail until fixed.
"""

from __future__ import annotations

import copy
import functools
import ipaddress
import json
import random
import socket
import struct
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import SimpleNamespace

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from spines_kr.daemon import control
from spines_kr.daemon.node import Node, Params
from spines_kr.netlink import events as ev
from spines_kr.netlink.core import Netlink
from spines_kr.netlink import kernel as k
from spines_kr.netlink import mroute as mr
from spines_kr.netlink import nexthop as nh
from spines_kr.routing.model import NextHop, Route
from spines_kr.wire import packets as w

EXAMPLES = 500
REASONS = {"short", "long", "magic", "version", "type", "instance", "malformed"}
NL_REJECT = (struct.error, ValueError)  # what KernelWatch.read catches around decode_event


# --- choosers, mutation ------------------------------------------------------------------------


class RngChooser:
    """Choices from a ``random.Random`` (the bench)."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def integer(self, lo: int, hi: int) -> int:
        return self.rng.randint(lo, hi)

    def choice(self, seq: Sequence):
        return self.rng.choice(seq)

    def bytes(self, n: int) -> bytes:
        return self.rng.randbytes(n)

    def blob(self, max_size: int) -> bytes:
        return self.rng.randbytes(self.rng.randint(0, max_size))


class DrawChooser:
    """Choices drawn by hypothesis (shrinkable)."""

    def __init__(self, draw) -> None:
        self.draw = draw

    def integer(self, lo: int, hi: int) -> int:
        return self.draw(st.integers(lo, hi))

    def choice(self, seq: Sequence):
        return self.draw(st.sampled_from(seq))

    def bytes(self, n: int) -> bytes:
        return self.draw(st.binary(min_size=n, max_size=n))

    def blob(self, max_size: int) -> bytes:
        return self.draw(st.binary(max_size=max_size))


I8 = [0, 1, 2, 3, 4, 0x7F, 0x80, 0xFE, 0xFF]
I16 = [0, 1, 3, 4, 8, 12, 16, 20, 0xFF, 0x100, 0x7FFF, 0x8000, 0xFFFE, 0xFFFF]
I32 = [0, 1, 4, 16, 254, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFE, 0xFFFFFFFF]


def mutate(ch, data: bytes, corpus: Sequence[bytes] = ()) -> bytes:
    """1-4 byte-level mutations of ``data``."""
    buf = bytearray(data)
    for _ in range(ch.integer(1, 4)):
        op, n = ch.integer(0, 9), len(buf)
        if op == 0 and n:  # flip a bit
            buf[ch.integer(0, n - 1)] ^= 1 << ch.integer(0, 7)
        elif op == 1 and n:  # an edge byte
            buf[ch.integer(0, n - 1)] = ch.choice(I8)
        elif op in (2, 3) and n >= (2 if op == 2 else 4):  # an edge u16/u32 (lengths, counts)
            size = 2 if op == 2 else 4
            i = ch.integer(0, n - size)
            buf[i:i + size] = ch.choice(I16 if size == 2 else I32).to_bytes(
                size, ch.choice(["little", "big"]))
        elif op == 4:  # insert
            i = ch.integer(0, n)
            buf[i:i] = ch.blob(16)
        elif op == 5 and n:  # delete a range
            i = ch.integer(0, n - 1)
            del buf[i:ch.integer(i + 1, min(n, i + 32))]
        elif op == 6:  # truncate
            del buf[ch.integer(0, n):]
        elif op == 7 and n:  # duplicate a range
            i = ch.integer(0, n - 1)
            j = ch.integer(i + 1, min(n, i + 64))
            at = ch.integer(0, n)
            buf[at:at] = buf[i:j]
        elif op == 8 and corpus:  # splice with another valid input
            other = ch.choice(list(corpus))
            buf = buf[:ch.integer(0, n)] + other[ch.integer(0, len(other)):]
        elif op == 9:  # append
            buf += ch.blob(24)
    return bytes(buf)


def edge_int(ch, bits: int, likely: Sequence[int] = ()) -> int:
    top = (1 << bits) - 1
    if ch.integer(0, 3) == 0:
        return ch.integer(0, top)
    return ch.choice([0, 1, 2, top, top - 1, top - 2, 1 << (bits - 1), *likely])


# --- targets -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    name: str
    run: Callable[[bytes], str]  # the contract check: returns an outcome label or raises
    corpus: Callable[[], list[bytes]]  # valid inputs, mutated
    generate: Callable[[object], bytes] | None = None  # structure-aware inputs from a Chooser
    max_size: int = 256  # of random inputs
    # Every target is in this tree: a missing one is a failure, never a skip.  (Kept for
    # bench/fuzz.py, which still asks.)
    available: Callable[[], bool] = lambda: True


TARGETS: dict[str, Target] = {}


def target(name: str, corpus, generate=None, max_size: int = 256):
    def register(run):
        TARGETS[name] = Target(name, run, functools.cache(corpus), generate, max_size)
        return run
    return register


def _typed(value, *types) -> None:
    assert isinstance(value, types), f"{type(value).__name__} is not {types}"


# --- wire --------------------------------------------------------------------------------------

INSTANCE = 8100
SELF_ID, PEER_ID, OTHER_ID = (int(ipaddress.IPv4Address(a)) for a in
                              ("10.255.0.1", "10.255.0.2", "10.255.0.3"))
IDS = [SELF_ID, PEER_ID, OTHER_ID, 0, 0xFFFFFFFF]
GROUP_1 = int(ipaddress.IPv4Address("239.1.2.3"))


def _mask(plen: int) -> int:
    return (0xFFFFFFFF << (32 - plen)) & 0xFFFFFFFF if plen else 0


def _sample_messages() -> list[w.Message]:
    lsa1 = w.LSA.make(PEER_ID, 7, [(SELF_ID, 10), (OTHER_ID, 20)], [(0x0A010000, 16, 5)],
                      [GROUP_1])
    lsa2 = w.LSA.make(OTHER_ID, 2**40, [(PEER_ID, 1)])
    return [w.Hello(seq=5, tx_us=123456, echo_us=99, hold_us=10, hello_ms=60, dead_ms=250,
                    metric=1, state=3),
            w.LinkStateUpdate((lsa1, lsa2)), w.LinkStateAck(((PEER_ID, 7), (OTHER_ID, 3)))]


def _wire_corpus() -> list[bytes]:
    msgs = _sample_messages()
    return ([w.encode(m, instance=INSTANCE, sender=PEER_ID) for m in msgs]
            + [w.encode(m, instance=INSTANCE, sender=PEER_ID, trailer=bytes(52)) for m in msgs])


def gen_lsa(ch) -> w.LSA:
    links = [(ch.choice(IDS), edge_int(ch, 32, (1, 10))) for _ in range(ch.integer(0, 3))]
    prefixes = []
    for _ in range(ch.integer(0, 2)):
        plen = ch.integer(0, 32)
        prefixes.append((edge_int(ch, 32) & _mask(plen), plen, edge_int(ch, 16)))
    groups = [ch.choice([GROUP_1, 0xF0000001, 0xE0000001, edge_int(ch, 32)])
              for _ in range(ch.integer(0, 2))]
    return w.LSA.make(ch.choice(IDS), edge_int(ch, 64, (1, 7)), links, prefixes, groups)


def gen_message(ch, kind: int | None = None) -> w.Message:
    kind = ch.integer(0, 2) if kind is None else kind
    if kind == 0:
        return w.Hello(seq=edge_int(ch, 32), tx_us=edge_int(ch, 64), echo_us=edge_int(ch, 64),
                       hold_us=edge_int(ch, 32), hello_ms=edge_int(ch, 16),
                       dead_ms=edge_int(ch, 16), metric=ch.choice([1, 1, 1, 2, 0, 255]),
                       state=ch.choice([0, 1, 2, 3, 255]))
    if kind == 1:
        return w.LinkStateUpdate(tuple(gen_lsa(ch) for _ in range(ch.integer(1, 3))))
    return w.LinkStateAck(tuple((ch.choice(IDS), edge_int(ch, 64))
                                for _ in range(ch.integer(1, 4))))


def gen_packet(ch, trailer: bool = True) -> bytes:
    return w.encode(gen_message(ch), instance=ch.choice([INSTANCE] * 4 + [INSTANCE + 1, 0]),
                    sender=ch.choice([PEER_ID] * 3 + [SELF_ID, OTHER_ID, edge_int(ch, 32)]),
                    trailer=ch.choice([b"", b"", b"", bytes(52)]) if trailer else b"")


@target("wire.decode", _wire_corpus, gen_packet)
def run_wire_decode(data: bytes) -> str:
    try:
        header, msg, trailer = w.decode(data, instance=INSTANCE)
    except w.DecodeError as e:
        assert e.reason in REASONS, e.reason
        return f"rejected:{e.reason}"
    _typed(header, w.Header)
    assert header.instance == INSTANCE
    assert type(msg) is w.Message.REGISTRY[header.type]
    _typed(trailer, bytes)
    return f"accepted:{type(msg).__name__}"


def _lsa_corpus() -> list[bytes]:
    lsas = _sample_messages()[1].lsas
    return [b"\0" + lsas[0].encode(), b"\x03" + b"abc" + lsas[1].encode() + lsas[0].encode()]


@target("wire.LSA.decode_from", _lsa_corpus,
        lambda ch: bytes([ch.choice([0, 0, 1, 4])]) + gen_lsa(ch).encode())
def run_lsa_decode_from(data: bytes) -> str:
    """data[0] picks the offset into the rest."""
    buf = data[1:]
    off = data[0] % (len(buf) + 1) if data else 0
    try:
        lsa, end = w.LSA.decode_from(buf, off)
    except w.DecodeError as e:
        assert e.reason in REASONS, e.reason
        return f"rejected:{e.reason}"
    _typed(lsa, w.LSA)
    assert off < end <= len(buf) and end - off == lsa.encoded_size()
    return "accepted"


def _body_target(cls: type[w.Message], kind: int) -> None:
    def corpus() -> list[bytes]:
        return [m.encode_body() for m in _sample_messages() if isinstance(m, cls)]

    def run(data: bytes) -> str:
        try:
            msg = cls.decode_body(data)
        except w.DecodeError as e:
            assert e.reason in REASONS, e.reason
            return f"rejected:{e.reason}"
        _typed(msg, cls)
        return "accepted"

    target(f"wire.{cls.__name__}.decode_body", corpus,
           lambda ch: gen_message(ch, kind).encode_body())(run)


_body_target(w.Hello, 0)
_body_target(w.LinkStateUpdate, 1)
_body_target(w.LinkStateAck, 2)


# --- the engine: Node.receive --------------------------------------------------------------------

IFINDEX, LOCAL, PEER_ADDR = 2, "10.0.0.1", "10.0.0.2"
JOIN_BASE = int(ipaddress.IPv4Address("239.77.0.1"))  # groups joined after a packet
KEY = b"k" * 32


@functools.cache
def _engine(auth: bool):
    """(our Node with an UP link to a peer, the peer's key ring, packets the peer sent, now)."""
    kw_ours, kw_peer, peer_ring = {}, {}, None
    if auth:
        from spines_kr.wire.auth import KeyRing
        peer_ring = KeyRing({1: KEY}, 1, 2000)
        kw_ours, kw_peer = {"auth": KeyRing({1: KEY}, 1, 1000)}, {"auth": peer_ring}
    ours = Node(Params(self_id=SELF_ID, instance=INSTANCE), 0.0, rng=random.Random(1), **kw_ours)
    peer = Node(Params(self_id=PEER_ID, instance=INSTANCE, prefixes=((0x0A630000, 16, 0),)), 0.0,
                rng=random.Random(2), **kw_peer)
    ours.add_link(IFINDEX, "v0", LOCAL, PEER_ADDR, 0.0)
    peer.add_link(IFINDEX, "v0", PEER_ADDR, LOCAL, 0.0)
    peer.join(GROUP_1, 0.0)
    captured: list[bytes] = []
    now, settle = 0.0, None
    while now < 5.0:
        ours.tick(now)
        peer.tick(now)
        for src, dst, addr in ((ours, peer, LOCAL), (peer, ours, PEER_ADDR)):
            out = list(src.outbox)
            src.outbox.clear()
            for _link, pkt in out:
                if src is peer:
                    captured.append(pkt)
                dst.receive(IFINDEX, addr, pkt, now)
        if settle is None and all(l.up for n in (ours, peer) for l in n.links.values()):
            settle = now + 0.3  # full sync, acks
        if settle is not None and now >= settle:
            break
        now = round(now + 0.005, 6)
    assert settle is not None, "the template link did not come up"
    ours.outbox.clear()
    ours.events.clear()
    kinds: dict[int, list[bytes]] = {}
    for pkt in captured:
        kinds.setdefault(pkt[3], []).append(pkt)  # by message type
    corpus = [p for kind in kinds.values() for p in kind[-4:]]
    return ours, peer_ring, corpus, now + 0.001


def _receive(data: bytes, auth: bool) -> str:
    template, _ring, _corpus, now = _engine(auth)
    node = copy.deepcopy(template)
    before = Counter(node.counters)
    node.receive(IFINDEX, PEER_ADDR, data, now)
    delta = node.counters - before
    assert delta["packets_in"] == 1, delta
    drops = {key: n for key, n in delta.items() if key.startswith("dropped.")}
    try:
        _h, msg, _t = w.decode(data, instance=INSTANCE)
    except w.DecodeError as e:
        assert drops == {f"dropped.{e.reason}": 1}, drops
    else:  # dropped once, or (an LSU) once per LSA it carries
        items = len(msg.lsas) if isinstance(msg, w.LinkStateUpdate) else 1
        assert sum(drops.values()) <= items, f"counted twice: {drops}"
    # What it accepted leaves the engine working: routes, and its next originations (a group
    # joined, flushed to the up link by a tick; three times), never at the reserved maximum.
    _typed(node.routes(), dict)
    for i in range(3):
        node.join(JOIN_BASE + i, now + 0.001 * (i + 1))
        node.tick(now + 0.001 * (i + 1))
        assert node.seq < w.MAX_SEQ, f"originated sequence {node.seq}"
    return next(iter(drops), "processed")


def _engine_corpus(auth: bool) -> list[bytes]:
    return _engine(auth)[2] + ([] if auth else _wire_corpus())


@target("daemon.Node.receive", lambda: _engine_corpus(False), gen_packet)
def run_node_receive(data: bytes) -> str:
    return _receive(data, False)


def _gen_sealed(ch) -> bytes:
    """A generated packet sealed with the peer's key (a valid MAC, fresh counter), or not."""
    pkt = gen_packet(ch, trailer=False)
    ring = copy.deepcopy(_engine(True)[1])  # the same counter every time: replays are exact
    return ring.seal(pkt) if ch.integer(0, 3) else pkt


@target("daemon.Node.receive+auth", lambda: _engine_corpus(True), _gen_sealed)
def run_node_receive_auth(data: bytes) -> str:
    return _receive(data, True)


# --- netlink: generators -----------------------------------------------------------------------


def nla(atype: int, value: bytes) -> bytes:
    return k._attr(atype, value)


def value_of(ch, size: int, likely: Sequence[bytes] = ()) -> bytes:
    """An attribute value: mostly its natural size (sometimes a likely value), else any size."""
    pick = ch.integer(0, 5)
    if pick == 0:
        return ch.bytes(ch.choice([0, 1, 2, 3, 5, 6, 8, 16]))
    if pick == 1 and likely:
        return ch.choice(list(likely))
    return ch.bytes(size)


def gen_attrs(ch, spec: dict, random_types: int = 32) -> bytes:
    """0-6 attributes, types from ``spec`` (type -> natural size, or a generator) or any."""
    out = b""
    for _ in range(ch.integer(0, 6)):
        atype = ch.choice(list(spec)) if spec and ch.integer(0, 4) else ch.integer(0, random_types)
        how = spec.get(atype, 4)
        out += nla(atype, how(ch) if callable(how) else value_of(ch, how))
    return out


def _u32s(*values: int) -> list[bytes]:
    return [k.U32.pack(v) for v in values]


def gen_multipath(ch) -> bytes:
    out = b""
    for _ in range(ch.integer(0, 3)):
        attrs = gen_attrs(ch, {k.RTA_GATEWAY: 4}) if ch.integer(0, 2) else nla(
            k.RTA_GATEWAY, ch.bytes(4))
        length = k.RTNEXTHOP.size + len(attrs)
        if not ch.integer(0, 5):
            length = ch.choice([0, 7, 8, length + 4, 0xFFFF])
        out += k.RTNEXTHOP.pack(length, 0, edge_int(ch, 8), ch.choice([2, 3, 3, -1, 0])) + attrs
    return out


ROUTE_ATTRS = {
    k.RTA_DST: 4, mr.RTA_SRC: 4, mr.RTA_IIF: lambda ch: value_of(ch, 4, _u32s(2, 3)),
    k.RTA_OIF: lambda ch: value_of(ch, 4, _u32s(2, 3)), k.RTA_GATEWAY: 4,
    k.RTA_PRIORITY: lambda ch: value_of(ch, 4, _u32s(20)), k.RTA_PREFSRC: 4,
    k.RTA_MULTIPATH: gen_multipath, k.RTA_TABLE: lambda ch: value_of(ch, 4, _u32s(254, 253)),
    k.RTA_NH_ID: lambda ch: value_of(ch, 4, _u32s(nh.ID_BASE)), mr.RTA_MFC_STATS: 24,
}


def gen_rtmsg(ch, family: int = socket.AF_INET) -> bytes:
    """An rtmsg payload, mostly one of our slot (so it gets past the filters)."""
    ours = ch.integer(0, 3)
    head = k.RTMSG.pack(family if ours else ch.choice([0, 2, 10, 128, 255]),
                        ch.choice([0, 8, 16, 24, 32, 33, 255]), 0, 0,
                        ch.choice([254, 253]) if ours else edge_int(ch, 8),
                        81 if ours else edge_int(ch, 8), 0,
                        1 if ours else edge_int(ch, 8), ch.choice([0, 0, mr.RTNH_F_UNRESOLVED,
                                                                   0xFFFFFFFF]))
    if not ch.integer(0, 3):  # the layout of the dump's fast path, values anything
        attrs = b"".join(nla(t, value_of(ch, 4, _u32s(254, 20))) for t in
                         (k.RTA_TABLE, k.RTA_DST, k.RTA_PRIORITY, k.RTA_PREFSRC, k.RTA_GATEWAY,
                          k.RTA_OIF) if t != k.RTA_PREFSRC or ch.integer(0, 1))
        return head + attrs
    return head + gen_attrs(ch, ROUTE_ATTRS)


def gen_ifinfomsg(ch) -> bytes:
    head = k.IFINFOMSG.pack(ch.choice([0, 0, 2, 255]), edge_int(ch, 16),
                            ch.choice([1, 2, 3, -1, 0x7FFFFFFF]),
                            ch.choice([k.UP, k.IFF_UP, 0, 0xFFFFFFFF]), 0)
    name = lambda ch: ch.choice([b"v0\0", b"v0", b"", b"\xff\xfe\0", ch.blob(20)])  # noqa: E731
    return head + gen_attrs(ch, {k.IFLA_IFNAME: name, 4: 4, 1: 6, 13: 4, 18: lambda ch: gen_attrs(
        ch, {1: lambda ch: ch.choice([b"veth\0", b"vlan\0", ch.blob(8)]), 2: 8})}, 64)


def gen_ifaddrmsg(ch) -> bytes:
    head = k.IFADDRMSG.pack(ch.choice([2, 2, 10, 0, 255]), ch.choice([24, 32, 0, 33, 255]), 0,
                            0, ch.choice([2, 3, 0, 0xFFFFFFFF]))
    return head + gen_attrs(ch, {k.IFA_ADDRESS: 4, k.IFA_LOCAL: 4, 3: lambda ch: ch.blob(12),
                                 4: 4, 6: 16, 8: 4}, 16)


def gen_nhmsg(ch) -> bytes:
    head = nh.NHMSG.pack(ch.choice([2, 0, 10, 255]), 0, ch.choice([81, 81, 0, 255]), 0,
                         ch.choice([0, 1, 0xFFFFFFFF]))
    group = lambda ch: b"".join(nh.NEXTHOP_GRP.pack(  # noqa: E731
        ch.choice([nh.ID_BASE, nh.ID_BASE + 1, 0, 0xFFFFFFFF]), edge_int(ch, 8), edge_int(ch, 8),
        ch.choice([0, 0, 1])) for _ in range(ch.integer(0, 3))) + ch.blob(3)[:ch.integer(0, 1)]
    return head + gen_attrs(ch, {
        nh.NHA_ID: lambda ch: value_of(ch, 4, _u32s(nh.ID_BASE, nh.ID_BASE + 1)),
        nh.NHA_GROUP: group, nh.NHA_GROUP_TYPE: lambda ch: value_of(ch, 2, [b"\0\0", b"\1\0"]),
        nh.NHA_BLACKHOLE: 0, nh.NHA_OIF: 4, nh.NHA_GATEWAY: lambda ch: ch.bytes(ch.choice(
            [4, 4, 16, 0, 3])), 7: 2, 8: lambda ch: gen_attrs(ch, {}), 13: 4}, 16)


def gen_ack(ch) -> tuple[int, int, bytes]:
    """(type, flags, payload) of an NLMSG_ERROR or NLMSG_DONE."""
    mtype = ch.choice([k.NLMSG_ERROR, k.NLMSG_ERROR, k.NLMSG_DONE])
    flags = ch.choice([0, k.NLM_F_CAPPED, k.NLM_F_CAPPED | k.NLM_F_ACK_TLVS, k.NLM_F_ACK_TLVS])
    code = ch.choice([0, 0, -2, -22, -101, -(2**31), 2**31 - 1, 1, -edge_int(ch, 31)])
    payload = k.I32.pack(code)
    if mtype == k.NLMSG_ERROR:
        request_len = ch.choice([16, 16, 20, 0, 0xFFFFFFFF])
        request = k.NLMSGHDR.pack(request_len, k.RTM_NEWROUTE, 5, 1, 0)
        payload += request if flags & k.NLM_F_CAPPED else request + ch.blob(8)
    if flags & k.NLM_F_ACK_TLVS:
        payload += gen_attrs(ch, {k.NLMSGERR_ATTR_MSG: lambda ch: ch.choice(
            [b"Nexthop has invalid gateway\0", b"\xff\0", ch.blob(12)]), 2: 4}, 8)
    return mtype, flags, payload


def message(mtype: int, payload: bytes, flags: int = 2, seq: int = 0) -> bytes:
    data = k.NLMSGHDR.pack(16 + len(payload), mtype, flags, seq, 0) + payload
    return data + b"\0" * (-len(data) % 4)


def gen_datagram(ch, mtype: int, payload: Callable) -> bytes:
    """1-3 messages of ``mtype`` (sometimes another type), maybe ending with an ack/done."""
    out = b""
    for _ in range(ch.integer(1, 3)):
        out += message(mtype if ch.integer(0, 4) else ch.choice([mtype + 1, 0, 2, 3]),
                       payload(ch))
    if not ch.integer(0, 3):
        atype, flags, body = gen_ack(ch)
        out += message(atype, body, flags)
    return out


def _seq_patched(datagram: bytes, seq: int) -> bytes:
    """Every message the decoder will see (iter_messages' framing) carries ``seq``."""
    buf, off = bytearray(datagram), 0
    while off + 16 <= len(buf):
        length = k.U32.unpack_from(buf, off)[0]
        if length < 16 or off + length > len(buf):
            break
        k.U32.pack_into(buf, off + 8, seq)
        off += (length + 3) & ~3
    return bytes(buf)


class ScriptedSocket:
    """A NETLINK_ROUTE socket that answers the last request sent with ``answer`` (sequence
    numbers set to that request's), then with NLMSG_DONE (``closing="done"``) or a success ack
    (``"ack"``), then times out as a socket with a timeout does."""

    def __init__(self, answer: bytes, closing: str = "done") -> None:
        self.answer, self.closing, self.queue = answer, closing, []

    def send(self, data: bytes) -> int:
        seqs = [seq for _t, _f, seq, _p in k.iter_messages(data)]
        seq = seqs[-1]
        if self.closing == "done":
            last = message(k.NLMSG_DONE, k.I32.pack(0), seq=seq)
        else:
            last = message(k.NLMSG_ERROR, k.I32.pack(0) + k.NLMSGHDR.pack(16, 24, 0, seq, 0),
                           k.NLM_F_CAPPED, seq)
        self.queue = [_seq_patched(self.answer, seq), last]
        return len(data)

    def recv(self, size: int) -> bytes:
        if self.queue:
            return self.queue.pop(0)[:size]
        raise TimeoutError("timed out")

    def getsockopt(self, level, option):
        return 212992

    def setsockopt(self, *args):
        pass

    def settimeout(self, timeout):
        pass

    def setblocking(self, flag):
        pass

    def close(self):
        pass


# --- netlink: decoders of one message ---------------------------------------------------------

# Golden payloads: a route dump captured on 6.18 (tests/unit/test_netlink_codec.py), iproute2's
# nexthops (test_nexthop_codec.py), IPMR entries (test_mroute_codec.py).
DUMPED = [bytes.fromhex(h) for h in (
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
)]
NEXTHOPS = [bytes.fromhex(h) for h in (
    "02005100" "00000000" "08000100" "14000000" "08000600" "0a000002" "08000500" "03000000",
    "00005100" "00000000" "08000100" "16000000" "14000200" "14000000" "00000000" "15000000"
    "02000000",
)]
MFC = [bytes.fromhex(h) for h in (
    "80202000fd11000500000000" "08000f00fd000000" "080002000a010002" "08000100ef010203"
    "0800030002000000" "0c000900" "0800" "00" "01" "03000000"
    "1c001100" "0100000000000000" "1f00000000000000" "0000000000000000"
    "0c001700" "1e00000000000000",
    "80202000fd11000520000000" "08000f00fd000000" "080002000a010002" "08000100ef090909",
)]


@functools.cache
def _links_payloads() -> list[bytes]:
    from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg
    out = []
    for index, name, flags in ((1, "lo", 0x10049), (3, "v0", 0x11043), (4, "w0", 0x1003)):
        msg = ifinfmsg()
        msg["index"], msg["flags"], msg["family"] = index, flags, 0
        msg["attrs"] = [("IFLA_IFNAME", name), ("IFLA_MTU", 1500)]
        msg.encode()
        out.append(bytes(msg.data)[16:])
    return out


@functools.cache
def _addr_payloads() -> list[bytes]:
    from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg
    out = []
    for family, index, plen, local in ((2, 3, 24, "10.0.0.1"), (2, 1, 8, "127.0.0.1"),
                                       (10, 3, 64, "fe80::1")):
        msg = ifaddrmsg()
        msg["family"], msg["index"], msg["prefixlen"] = family, index, plen
        msg["attrs"] = [("IFA_ADDRESS", local), ("IFA_LOCAL", local), ("IFA_LABEL", "v0")]
        msg.encode()
        out.append(bytes(msg.data)[16:])
    return out


def _ack_payloads() -> list[tuple[int, int, bytes]]:
    request = k.NLMSGHDR.pack(16, k.RTM_NEWROUTE, 5, 1, 0)
    tlv = nla(k.NLMSGERR_ATTR_MSG, b"Nexthop has invalid gateway\0")
    return [(k.NLMSG_ERROR, k.NLM_F_CAPPED, k.I32.pack(0) + request),
            (k.NLMSG_ERROR, k.NLM_F_CAPPED | k.NLM_F_ACK_TLVS, k.I32.pack(-22) + request + tlv),
            (k.NLMSG_ERROR, 0, k.I32.pack(-101) + request + bytes(8)),
            (k.NLMSG_DONE, 0, k.I32.pack(0)), (k.NLMSG_DONE, k.NLM_F_ACK_TLVS,
                                               k.I32.pack(-2) + tlv)]


@target("netlink.iter_messages", lambda: [b"".join(message(24, p) for p in DUMPED)],
        lambda ch: gen_datagram(ch, k.RTM_NEWROUTE, gen_rtmsg), max_size=512)
def run_iter_messages(data: bytes) -> str:
    n = 0
    for mtype, flags, seq, payload in k.iter_messages(data):
        _typed(payload, bytes)
        assert 0 <= mtype < 1 << 16 and 0 <= flags < 1 << 16 and 0 <= seq < 1 << 32
        n += 1
    return f"messages:{min(n, 3)}"


@target("netlink.parse_attrs", lambda: [bytes([k.RTMSG.size]) + p for p in DUMPED],
        lambda ch: bytes([k.RTMSG.size]) + gen_rtmsg(ch))
def run_parse_attrs(data: bytes) -> str:
    """data[0] is the offset (as callers pass the size of the fixed header)."""
    attrs = k.parse_attrs(data[1:], data[0] % 32 if data else 0)
    _typed(attrs, dict)
    assert all(isinstance(t, int) and isinstance(v, bytes) for t, v in attrs.items())
    return f"attrs:{min(len(attrs), 3)}"


@target("netlink.decode_rtmsg", lambda: DUMPED, gen_rtmsg)
def run_decode_rtmsg(data: bytes) -> str:
    try:
        msg = k.decode_rtmsg(data)
    except NL_REJECT as e:
        return f"rejected:{type(e).__name__}"
    _typed(msg, k.RtMsg)
    _typed(msg.dst, str)
    _typed(msg.table, int)
    return "accepted"


@target("netlink.decode_link", _links_payloads, gen_ifinfomsg)
def run_decode_link(data: bytes) -> str:
    try:
        link = k.decode_link(data)
    except NL_REJECT as e:
        return f"rejected:{type(e).__name__}"
    _typed(link, k.LinkState)
    _typed(link.ifindex, int)
    _typed(link.name, str)
    return "accepted"


@target("netlink.decode_addr", _addr_payloads, gen_ifaddrmsg)
def run_decode_addr(data: bytes) -> str:
    try:
        addr = k.decode_addr(data)
    except NL_REJECT as e:
        return f"rejected:{type(e).__name__}"
    if addr is None:
        return "none"
    family, index, local, plen = addr
    _typed(local, str)
    _typed(index, int)
    return "accepted"


def _ack_input(mtype: int, flags: int, payload: bytes) -> bytes:
    return bytes([(mtype == k.NLMSG_DONE) | (flags >> 7 & 0b110)]) + payload


@target("netlink.decode_ack", lambda: [_ack_input(*a) for a in _ack_payloads()],
        lambda ch: _ack_input(*gen_ack(ch)))
def run_decode_ack(data: bytes) -> str:
    """data[0]: bit 0 NLMSG_DONE (else NLMSG_ERROR), bits 1-2 NLM_F_CAPPED, NLM_F_ACK_TLVS."""
    sel = data[0] if data else 0
    mtype = k.NLMSG_DONE if sel & 1 else k.NLMSG_ERROR
    try:
        code, text = k.decode_ack(mtype, (sel & 0b110) << 7, data[1:])
    except NL_REJECT as e:
        return f"rejected:{type(e).__name__}"
    _typed(code, int)
    _typed(text, str)
    return "error" if code else "ok"


EVENT_TYPES = (k.RTM_NEWLINK, k.RTM_DELLINK, k.RTM_NEWADDR, k.RTM_DELADDR, k.RTM_NEWROUTE,
               k.RTM_DELROUTE, nh.RTM_NEWNEXTHOP, k.NLMSG_DONE)
_EVENT_GEN = {k.RTM_NEWLINK: gen_ifinfomsg, k.RTM_DELLINK: gen_ifinfomsg,
              k.RTM_NEWADDR: gen_ifaddrmsg, k.RTM_DELADDR: gen_ifaddrmsg}


def _gen_event(ch) -> bytes:
    i = ch.integer(0, len(EVENT_TYPES) - 1)
    return bytes([i]) + _EVENT_GEN.get(EVENT_TYPES[i], gen_rtmsg)(ch)


def _event_corpus() -> list[bytes]:
    return ([bytes([0]) + p for p in _links_payloads()] + [bytes([2]) + p for p in _addr_payloads()]
            + [bytes([4]) + p for p in DUMPED])


@target("netlink.events.decode_event", _event_corpus, _gen_event)
def run_decode_event(data: bytes) -> str:
    """data[0] picks the message type from EVENT_TYPES; the rest is the payload."""
    mtype = EVENT_TYPES[data[0] % len(EVENT_TYPES)] if data else k.RTM_NEWROUTE
    event = ev.decode_event(mtype, data[1:])  # never raises: None for a malformed message
    _typed(event, ev.LinkEvent, ev.AddrEvent, ev.RouteEvent, type(None))
    return type(event).__name__


@target("netlink.decode_nexthop", lambda: NEXTHOPS, gen_nhmsg)
def run_decode_nexthop(data: bytes) -> str:
    try:
        msg = nh.decode_nexthop(data)
    except NL_REJECT as e:
        return f"rejected:{type(e).__name__}"
    _typed(msg, nh.NexthopMsg)
    _typed(msg.id, int)
    _typed(msg.obj, nh.Nexthop, nh.Group, type(None))
    return type(msg.obj).__name__


IGMP_GOLDEN = [bytes.fromhex(h) for h in (
    "4500001c4a324000" "01" "00" "00" "00" "0a010002" "ef010203" "01003afffe800000",
    "4500001c97a34000" "02" "00" "00" "00" "0a010002" "ef080101" "0200000019000500",
    "46c00028000040000102f9f50a020002e0000016940400002200e8f90000000104000000ef010203",
    "46c00028000040000102f9f50a020002e0000016940400002200e9f90000000103000000ef010203",
    "46c00020000040000102e90f0a020002ef010203940400001600f8faef010203",
    "46c00020000040000102fa110a020002e0000002940400001700f7faef010203",
    "46c00030000040000102f9ee0a020001e000001694040000220015e40000000204000000"
    "e000000204000000e0000016",
)]
GROUPS = [bytes([239, 1, 2, 3]), bytes([224, 0, 0, 22]), bytes([10, 0, 0, 1]),
          bytes([232, 0, 0, 1])]


def gen_igmp_packet(ch) -> bytes:
    if not ch.integer(0, 3):  # an upcall (protocol byte 0)
        return mr.IGMPMSG.pack(0x4500001C, 0, ch.choice([0, 1, 2, 3, 4, 5, 255]), 0,
                               ch.choice([0, 1, 31, 32, 255]), ch.choice([0, 0, 1]), ch.bytes(4),
                               ch.choice(GROUPS)) + ch.blob(8)
    kind = ch.choice([0x11, 0x12, 0x16, 0x17, 0x22, 0x22, edge_int(ch, 8)])
    if kind == 0x22:
        records, count = b"", ch.integer(0, 3)
        for _ in range(count):
            n_src, aux = ch.choice([0, 0, 1, 2, 0xFFFF]), ch.choice([0, 0, 1, 255])
            body = b"".join(ch.bytes(4) for _ in range(min(n_src, 2)))
            records += struct.pack("!BBH4s", ch.integer(0, 7), aux, n_src, ch.choice(GROUPS))
            records += body + ch.bytes(4 * min(aux, 1))
        igmp = struct.pack("!BBHHH", kind, 0, 0, 0, ch.choice([count, count, count + 1, 0xFFFF]))
        igmp += records
    else:
        igmp = struct.pack("!BBH4s", kind, 0, 0, ch.choice(GROUPS)) + ch.blob(4)[:ch.integer(0, 1)]
    if ch.integer(0, 5):  # a right checksum, so the decoder looks inside
        igmp = igmp[:2] + struct.pack("!H", mr._checksum(igmp)) + igmp[4:]
    ihl = ch.choice([5, 6, 6, 4, 15])
    total = 4 * ihl + len(igmp)
    total = ch.choice([total, total, total + 1, total - 1, 0, 0xFFFF]) & 0xFFFF
    header = struct.pack("!BBHHHBBH4s4s", ch.choice([0x40, 0x40, 0x60]) | ihl, 0xC0, total, 0,
                         0, 1, 2, 0, ch.bytes(4), ch.choice(GROUPS))
    return header + b"\x94\x04\x00\x00" * max(0, ihl - 5) + igmp


@target("mroute.decode_packet", lambda: IGMP_GOLDEN, gen_igmp_packet)
def run_decode_packet(data: bytes) -> str:
    try:
        found = mr.decode_packet(data, 3)
    except mr.MalformedMessage:
        return "rejected"
    _typed(found, list)
    for event in found:
        _typed(event, mr.Upcall, mr.IgmpReport)
    return f"events:{min(len(found), 2)}"


VIFI_OF = {2: 0, 3: 5}


@target("mroute.decode_mfc", lambda: MFC, lambda ch: gen_rtmsg(ch, mr.RTNL_FAMILY_IPMR))
def run_decode_mfc(data: bytes) -> str:
    try:
        table, entry = mr.decode_mfc(data, VIFI_OF)
    except KeyError:  # an ifindex that is not one of our vifs: MulticastRouter.dump skips it
        return "foreign_vif"
    except NL_REJECT as e:
        return f"rejected:{type(e).__name__}"
    _typed(table, int)
    _typed(entry, mr.MfcEntry)
    _typed(entry.iif, int, type(None))
    return "resolved" if entry.iif is not None else "unresolved"


# --- netlink: the entry points the daemon calls on a socket ------------------------------------


def _route_table(sock) -> k.RouteTable:
    table = k.RouteTable.__new__(k.RouteTable)
    table.table, table.protocol, table.priority = 254, 81, 20
    table._nl, table._sock = Netlink.wrap(sock), sock
    return table


def _dump_corpus(mtype: int, payloads) -> Callable[[], list[bytes]]:
    def corpus() -> list[bytes]:
        msgs = [message(mtype, p) for p in payloads()]
        return [b"".join(msgs)] + msgs + [msgs[0] + message(k.NLMSG_DONE, k.I32.pack(0))]
    return corpus


def _os_error_only(call) -> str:
    try:
        result = call()
    except OSError as e:
        return f"oserror:{type(e).__name__}"
    return result


@target("netlink.RouteTable.dump", _dump_corpus(k.RTM_NEWROUTE, lambda: DUMPED),
        lambda ch: gen_datagram(ch, k.RTM_NEWROUTE, gen_rtmsg), max_size=512)
def run_route_dump(data: bytes) -> str:
    def call():
        routes = _route_table(ScriptedSocket(data)).dump()
        _typed(routes, dict)
        for route in routes.values():
            _typed(route, Route)
        return f"routes:{min(len(routes), 2)}"
    return _os_error_only(call)


@target("netlink.RouteTable.links", _dump_corpus(k.RTM_NEWLINK, _links_payloads),
        lambda ch: gen_datagram(ch, k.RTM_NEWLINK, gen_ifinfomsg), max_size=512)
def run_route_links(data: bytes) -> str:
    def call():
        links = _route_table(ScriptedSocket(data)).links()
        assert all(isinstance(link, k.LinkState) for link in links.values())
        return f"links:{min(len(links), 2)}"
    return _os_error_only(call)


@target("netlink.RouteTable.local_addresses", _dump_corpus(k.RTM_NEWADDR, _addr_payloads),
        lambda ch: gen_datagram(ch, k.RTM_NEWADDR, gen_ifaddrmsg), max_size=512)
def run_route_addresses(data: bytes) -> str:
    def call():
        found = _route_table(ScriptedSocket(data)).local_addresses()
        _typed(found, list)
        return f"addresses:{min(len(found), 2)}"
    return _os_error_only(call)


def _acks_corpus() -> list[bytes]:
    return [message(t, p, f) for t, f, p in _ack_payloads()]


def _gen_acks(ch) -> bytes:
    return b"".join(message(t, p, f) for t, f, p in (gen_ack(ch) for _ in range(ch.integer(1, 2))))


@target("netlink.RouteTable.apply", _acks_corpus, _gen_acks)
def run_route_apply(data: bytes) -> str:
    """One route written; the kernel's answer is the fuzzed datagram, then a success ack."""
    def call():
        errors = _route_table(ScriptedSocket(data, "ack")).apply(
            [Route("10.9.0.0/24", (NextHop("10.0.0.2", 2),))], [])
        _typed(errors, list)
        return f"errors:{len(errors)}"
    return _os_error_only(call)


class _WatchSocket:
    def __init__(self, data: bytes) -> None:
        self.data = [data]

    def recv(self, size: int) -> bytes:
        if self.data:
            return self.data.pop()[:size]
        raise BlockingIOError


def _gen_events(ch) -> bytes:
    out = b""
    for _ in range(ch.integer(1, 3)):
        sel = _gen_event(ch)
        out += message(EVENT_TYPES[sel[0]], sel[1:], 0)
    return out


def _events_corpus() -> list[bytes]:
    return [message(EVENT_TYPES[d[0]], d[1:], 0) for d in _event_corpus()] + [
        b"".join(message(EVENT_TYPES[d[0]], d[1:], 0) for d in _event_corpus())]


@target("netlink.events.KernelWatch.read", _events_corpus, _gen_events, max_size=512)
def run_watch_read(data: bytes) -> str:
    watch = ev.KernelWatch.__new__(ev.KernelWatch)
    watch._nl = Netlink.wrap(_WatchSocket(data))
    events = watch.read()  # never raises
    _typed(events, list)
    for event in events:
        _typed(event, ev.LinkEvent, ev.AddrEvent, ev.RouteEvent, ev.Overflow)
    return f"events:{min(len(events), 2)}"


def _nexthop_table(sock) -> nh.NexthopTable:
    table = nh.NexthopTable.__new__(nh.NexthopTable)
    table.protocol, table.id_base, table.id_count = 81, nh.ID_BASE, nh.ID_COUNT
    table._nl = Netlink.wrap(sock)
    return table


def _our_nexthops() -> list[bytes]:
    return [p[:8] + nla(1, k.U32.pack(nh.ID_BASE + i)) + p[16:]
            for i, p in enumerate(NEXTHOPS)] + NEXTHOPS


@target("netlink.NexthopTable.dump", _dump_corpus(nh.RTM_NEWNEXTHOP, _our_nexthops),
        lambda ch: gen_datagram(ch, nh.RTM_NEWNEXTHOP, gen_nhmsg), max_size=512)
def run_nexthop_dump(data: bytes) -> str:
    def call():
        objects = _nexthop_table(ScriptedSocket(data)).dump()
        _typed(objects, dict)
        assert all(isinstance(o, (nh.Nexthop, nh.Group)) for o in objects.values())
        return f"objects:{min(len(objects), 2)}"
    return _os_error_only(call)


def _nh_routes() -> list[bytes]:
    via = (k.RTMSG.pack(2, 24, 0, 0, 254, 81, 0, 1, 0) + nla(k.RTA_TABLE, k.U32.pack(254))
           + nla(k.RTA_DST, bytes([10, 5, 0, 0])) + nla(k.RTA_PRIORITY, k.U32.pack(20))
           + nla(k.RTA_NH_ID, k.U32.pack(nh.ID_BASE)))
    return [via, via + nla(k.RTA_PREFSRC, bytes([10, 255, 0, 1]))] + DUMPED


@target("netlink.NexthopTable.dump_routes", _dump_corpus(k.RTM_NEWROUTE, _nh_routes),
        lambda ch: gen_datagram(ch, k.RTM_NEWROUTE, gen_rtmsg), max_size=512)
def run_nexthop_dump_routes(data: bytes) -> str:
    def call():
        classic, via_id = _nexthop_table(ScriptedSocket(data)).dump_routes(254, 20)
        assert all(isinstance(r, Route) for r in classic.values())
        assert all(isinstance(r, nh.NhRoute) and isinstance(r.nh_id, int)
                   for r in via_id.values())
        return f"routes:{min(len(classic) + len(via_id), 2)}"
    return _os_error_only(call)


def _router(nl=None, sock=None) -> mr.MulticastRouter:
    router = mr.MulticastRouter.__new__(mr.MulticastRouter)
    router.table, router.netns, router.sock = 253, None, sock
    router._nl = None if nl is None else Netlink.wrap(nl)
    router._vifs = {vifi: ifindex for ifindex, vifi in VIFI_OF.items()}
    router.stats = {"upcalls": 0, "igmp": 0, "own": 0, "ignored": 0, "malformed": 0}
    router._local, router._local_read = {"10.2.0.1"}, float("inf")  # no address dump
    return router


@target("mroute.MulticastRouter.dump", _dump_corpus(k.RTM_NEWROUTE, lambda: MFC),
        lambda ch: gen_datagram(ch, k.RTM_NEWROUTE, lambda ch: gen_rtmsg(
            ch, mr.RTNL_FAMILY_IPMR)), max_size=512)
def run_mroute_dump(data: bytes) -> str:
    def call():
        entries = _router(nl=ScriptedSocket(data)).dump()
        assert all(isinstance(e, mr.MfcEntry) for e in entries.values())
        return f"entries:{min(len(entries), 2)}"
    return _os_error_only(call)


class _RouterSocket:
    def __init__(self, data: bytes) -> None:
        self.data = [data]

    def recvmsg(self, size: int, ancsize: int):
        if not self.data:
            raise BlockingIOError
        pktinfo = mr.IN_PKTINFO.pack(3, bytes(4), bytes(4))
        return self.data.pop()[:size], [(socket.IPPROTO_IP, mr.IP_PKTINFO, pktinfo)], 0, None


@target("mroute.MulticastRouter.read_upcalls", lambda: IGMP_GOLDEN, gen_igmp_packet)
def run_read_upcalls(data: bytes) -> str:
    router = _router(sock=_RouterSocket(data))
    events = router.read_upcalls()  # never raises
    for event in events:
        _typed(event, mr.Upcall, mr.IgmpReport)
    s = router.stats
    assert s["malformed"] + s["ignored"] + (s["upcalls"] + s["igmp"] + s["own"] > 0) == 1, s
    return next(key for key, n in s.items() if n)


# --- the control socket ------------------------------------------------------------------------


class _NoLog:
    def __getattr__(self, name):
        return lambda *args, **kwargs: None


class StandInDaemon:
    """What the real commands API (daemon.commands) reads of a daemon, with the kernel side
    stubbed: a real Node with an UP link behind the views, setlink's kernel part answered at
    once, loopback and the engine's outputs ignored.  ``control.answer`` runs unchanged."""

    def __init__(self) -> None:
        from spines_kr import config
        from spines_kr.daemon import logging as dlog
        from spines_kr.daemon.features import Plan
        from spines_kr.daemon.membership import Membership
        from spines_kr.daemon.neighborset import NeighborSet
        from spines_kr.netlink.capabilities import Capabilities

        self.cfg = config.build({"logical_id": str(ipaddress.IPv4Address(SELF_ID)),
                                 "port": INSTANCE, "auth": "none", "kernel_levels": [0],
                                 "accept_link_commands": True})
        self.node = copy.deepcopy(_engine(False)[0])
        self.interfaces = SimpleNamespace(names={IFINDEX: "v0"}, up={IFINDEX: True},
                                          addresses=[], owner=lambda a: None,
                                          local_end=lambda a, wanted=(): (IFINDEX, "10.0.0.1"))
        self.tunnels = self.discovery = None
        self.kernel_sync = None
        self.overlay = SimpleNamespace(counters={})
        self.counters = {"refused.own_groups": 0}
        self.loop = SimpleNamespace(time=lambda: 1.0, errors={})
        self.log, self.log_limit = _NoLog(), dlog.RateLimiter()
        self.caps, self.plan, self.started = Capabilities({}), Plan(), 0.0
        self.membership = Membership(self.cfg, self.node, None, self.log, self.log_limit,
                                     self.counters)
        self.neighbors = NeighborSet(self.cfg, self.node, self.interfaces, self.log)

    def after_event(self) -> None:
        pass

    def change_neighbor(self, address, kind, add) -> bool:
        return True

    def apply_emulation(self, link, values, done, ingress=False) -> None:
        done(SimpleNamespace(daemon_covered=(), summary="not applied (stand-in)"), None)


CONTROL_CORPUS = [
    {"cmd": "ping"}, *({"cmd": "show", "what": v} for v in control.SHOW),
    {"cmd": "setlink", "source": "10.255.0.1", "dest": "10.0.0.2", "bandwidth_kbps": 1000,
     "latency_ms": 5, "loss_pct": 1, "burst_pct": 0},
    {"cmd": "join", "group": "239.1.2.3"}, {"cmd": "leave", "group": "240.0.0.9"},
    {"cmd": "neighbor", "op": "add", "address": "10.0.0.2", "tunnel": None},
]
KEYS = ["cmd", "what", "group", "source", "dest", "bandwidth_kbps", "latency_ms", "loss_pct",
        "burst_pct"]


def gen_json_value(ch, depth: int = 0):
    pick = ch.integer(0, 9 if depth < 2 else 6)
    if pick == 0:
        return ch.choice([None, True, False])
    if pick == 1:
        return ch.choice([0, -1, 1, 2**31, 2**63, 10**30, 10**400, -(10**400)])
    if pick == 2:
        return ch.choice([0.5, -0.0, 1e308, 5e-324, float("nan"), float("inf"), -float("inf")])
    if pick in (3, 4):
        return ch.choice(["status", "routes", "10.255.0.1", "10.0.0.2", "239.1.2.3",
                          "240.0.0.1", "224.0.0.1", "", "1e999", "nan", " 1", "\0", "\udcff",
                          "é" * 3, "x" * 100])
    if pick in (5, 6):
        return ch.integer(-5, 5) if ch.integer(0, 1) else ch.choice(list(control.SHOW))
    if pick in (7, 8):
        return [gen_json_value(ch, depth + 1) for _ in range(ch.integer(0, 3))]
    return {ch.choice(KEYS): gen_json_value(ch, depth + 1) for _ in range(ch.integer(0, 3))}


def gen_request(ch) -> bytes:
    pick = ch.integer(0, 7)
    if pick == 0:  # nesting: the JSON parser's recursion
        n = ch.choice([10, 500, 5000, 30000])
        return (ch.choice(["[", '{"a":']) * n).encode()
    if pick == 1:
        return json.dumps(gen_json_value(ch)).encode()
    req = dict(ch.choice(CONTROL_CORPUS))
    for _ in range(ch.integer(1, 3)):
        req[ch.choice(KEYS)] = gen_json_value(ch)
    line = json.dumps(req, ensure_ascii=ch.choice([True, False])).encode("utf-8", "surrogatepass")
    return line + ch.choice([b"\n", b"", b"\r\n", b"\xff"])


@target("daemon.control.answer",
        lambda: [json.dumps(r).encode() + b"\n" for r in CONTROL_CORPUS], gen_request)
def run_control_answer(data: bytes) -> str:
    from spines_kr.daemon.commands import Commands, Pending

    reply = control.answer(Commands(StandInDaemon()), data)  # never raises
    if isinstance(reply, Pending):  # setlink: the stand-in's kernel part answered at once
        assert reply.done, "setlink's reply never came"
        reply = reply.value
    _typed(reply, dict)
    _typed(reply.get("ok"), bool)
    if not reply["ok"]:
        _typed(reply.get("error"), str)
        assert not reply["error"].startswith("bad request: AttributeError"), reply["error"]
    json.dumps(reply)  # what the server writes back
    return f"ok:{reply['ok']}"


# --- the tests ---------------------------------------------------------------------------------


@functools.cache
def inputs(t: Target):
    """Random bytes, mutated corpus, generated inputs.  The mutations and generators take their
    choices from a hypothesis-controlled Random: ~3x cheaper than a draw per choice, and still
    shrunk (towards fewer, smaller choices)."""
    corpus = t.corpus()

    @st.composite
    def mutated(draw):
        ch = RngChooser(draw(st.randoms(use_true_random=False)))
        return mutate(ch, ch.choice(corpus), corpus)

    @st.composite
    def generated(draw):
        ch = RngChooser(draw(st.randoms(use_true_random=False)))
        data = t.generate(ch)
        return mutate(ch, data, corpus) if ch.integer(0, 3) == 0 else data

    options = [st.binary(max_size=t.max_size), mutated()]
    if t.generate is not None:
        options.append(generated())
    return st.one_of(options)


@pytest.mark.parametrize("name", list(TARGETS))
def test_corpus_runs_clean(name):
    """The valid inputs the mutations start from pass their target."""
    t = TARGETS[name]
    for data in t.corpus():
        t.run(data)


@pytest.mark.parametrize("name", list(TARGETS))
@settings(max_examples=EXAMPLES, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                 HealthCheck.filter_too_much])
@given(data=st.data())
def test_fuzz(name, data):
    t = TARGETS[name]
    t.run(data.draw(inputs(t), label="input"))


# Minimal inputs of the crashes found by these targets and bench/fuzz.py, by root cause; each
# fails until its decoder (or the entry point calling it) is fixed.  (target, what, input)


def _ours_rtmsg(*attrs: bytes) -> bytes:
    return k.RTMSG.pack(2, 24, 0, 0, 254, 81, 0, 1, 0) + nla(k.RTA_PRIORITY, k.U32.pack(20)) + \
        b"".join(attrs)


_PROTINFO_LINK = k.IFINFOMSG.pack(socket.AF_INET6, 1, 3, k.UP, 0) + nla(k.IFLA_IFNAME, b"v0\0") \
    + nla(12, b"")  # IFLA_PROTINFO: pyroute2 decodes it per family and knows only AF_BRIDGE
_CUT_ADDR = k.IFADDRMSG.pack(2, 24, 0, 0, 3) + struct.pack("=HH", 8, k.IFA_ADDRESS)  # no value
_CUT_NH_ID = nh.NHMSG.pack(0, 0, 81, 0, 0) + struct.pack("=HH", 8, nh.NHA_ID)
_CUT_NH_GROUP = nh.NHMSG.pack(0, 0, 81, 0, 0) + struct.pack("=HH", 20, nh.NHA_GROUP)
_MAX_SEQ = w.MAX_SEQ

REPRODUCERS: list[tuple[str, str, bytes]] = [
    # A. An LSA of our own origin at MAX_SEQ - 1 (accepted) makes us originate the reserved
    #    MAX_SEQ, and the origination after it overflows u64: struct.error from LSA.encode in
    #    every _flush (receive and tick), the node is wedged.
    ("daemon.Node.receive", "own_lsa_seq_max_minus_1", w.encode(w.LinkStateUpdate(
        (w.LSA.make(SELF_ID, _MAX_SEQ - 1),)), instance=INSTANCE, sender=PEER_ID)),
    #    (and MAX_SEQ - 2: accepted, we originate MAX_SEQ - 1, then the reserved MAX_SEQ, then
    #    2**64, which no longer encodes: any own LSA near the top exhausts the space)
    ("daemon.Node.receive", "own_lsa_seq_max_minus_2", w.encode(w.LinkStateUpdate(
        (w.LSA.make(SELF_ID, _MAX_SEQ - 2),)), instance=INSTANCE, sender=PEER_ID)),
    # B. decode_ack: os.strerror(2**31) raises OverflowError for the error code -2**31; a short
    #    payload raises struct.error, which no caller of decode_ack catches.
    ("netlink.decode_ack", "errno_int_min", _ack_input(
        k.NLMSG_ERROR, k.NLM_F_CAPPED, k.I32.pack(-2**31) + k.NLMSGHDR.pack(16, 24, 5, 1, 0))),
    ("netlink.RouteTable.apply", "errno_int_min", message(
        k.NLMSG_ERROR, k.I32.pack(-2**31) + k.NLMSGHDR.pack(16, 24, 5, 1, 0), k.NLM_F_CAPPED)),
    ("netlink.RouteTable.apply", "empty_error", message(k.NLMSG_ERROR, b"", k.NLM_F_CAPPED)),
    ("netlink.RouteTable.apply", "uncapped_error_without_request", message(
        k.NLMSG_ERROR, k.I32.pack(-1), 0)),
    ("netlink.RouteTable.dump", "empty_done", message(k.NLMSG_DONE, b"")),
    # C. pyroute2 raises NetlinkNLADecodeError (not a ValueError) for IFLA_PROTINFO of a family
    #    other than AF_BRIDGE: out of decode_link, decode_event and KernelWatch.read.
    ("netlink.decode_link", "protinfo", _PROTINFO_LINK),
    ("netlink.events.decode_event", "protinfo", bytes([0]) + _PROTINFO_LINK),
    ("netlink.events.KernelWatch.read", "protinfo", message(k.RTM_NEWLINK, _PROTINFO_LINK, 0)),
    ("netlink.RouteTable.links", "protinfo", message(k.RTM_NEWLINK, _PROTINFO_LINK)),
    # D. An attribute whose length runs past the message: pyroute2's get_attr hands back the
    #    raw attribute bytes, so decode_addr returns a bytes address (local_addresses then fails
    #    sorting str with bytes), decode_nexthop a bytes id (NexthopTable.owns fails comparing)
    #    or an int "group" (TypeError iterating it).
    ("netlink.decode_addr", "cut_address", _CUT_ADDR),
    ("netlink.RouteTable.local_addresses", "cut_address", message(
        k.RTM_NEWADDR, _addr_payloads()[0]) + message(k.RTM_NEWADDR, _CUT_ADDR)),
    ("netlink.decode_nexthop", "cut_id", _CUT_NH_ID),
    ("netlink.decode_nexthop", "cut_group", _CUT_NH_GROUP),
    ("netlink.NexthopTable.dump", "cut_id", message(nh.RTM_NEWNEXTHOP, _CUT_NH_ID)),
    # E. The dump entry points do not catch what the decoders reject malformed messages with
    #    (struct.error, ValueError): it raises out of the dump (the daemon catches OSError).
    ("netlink.RouteTable.dump", "short_rtmsg", message(k.RTM_NEWROUTE, bytes(4))),
    ("netlink.RouteTable.dump", "gateway_3_bytes", message(k.RTM_NEWROUTE, _ours_rtmsg(
        nla(k.RTA_DST, bytes([10, 5, 0, 0])), nla(k.RTA_GATEWAY, bytes([10, 0, 0]))))),
    ("netlink.RouteTable.dump", "table_2_bytes", message(k.RTM_NEWROUTE, _ours_rtmsg(
        nla(k.RTA_TABLE, b"\xfe\x00")))),
    ("netlink.RouteTable.links", "empty_ifinfomsg", message(k.RTM_NEWLINK, b"")),
    ("netlink.RouteTable.local_addresses", "empty_ifaddrmsg", message(k.RTM_NEWADDR, b"")),
    ("netlink.NexthopTable.dump", "empty_nhmsg", message(nh.RTM_NEWNEXTHOP, b"")),
    ("netlink.NexthopTable.dump_routes", "short_rtmsg", message(k.RTM_NEWROUTE, bytes(4))),
    ("mroute.MulticastRouter.dump", "short_rtmsg", message(k.RTM_NEWROUTE, bytes(4))),
    ("mroute.MulticastRouter.dump", "source_2_bytes", message(k.RTM_NEWROUTE, k.RTMSG.pack(
        mr.RTNL_FAMILY_IPMR, 32, 32, 0, 253, 17, 0, 5, 0) + nla(mr.RTA_SRC, b"\x0a\x01"))),
    # F. control.answer: deeply nested JSON raises RecursionError out of json.loads (a line
    #    of 5000 bytes, MAX_REQUEST is 64 KiB); setlink's float() of an integer too large for a
    #    float raises OverflowError.  Neither is a ValueError: no reply, the handler task dies.
    ("daemon.control.answer", "nested_json", b"[" * 5000 + b"\n"),
    ("daemon.control.answer", "setlink_huge_int", b'{"cmd": "setlink", "bandwidth_kbps": 1'
     + b"0" * 400 + b', "latency_ms": 0, "loss_pct": 0, "burst_pct": 0, "source": "10.255.0.1", '
     b'"dest": "10.0.0.2"}\n'),
]


@pytest.mark.parametrize("name, why, data", REPRODUCERS,
                         ids=[f"{name}-{why}" for name, why, _d in REPRODUCERS])
def test_reproducer(name, why, data):
    TARGETS[name].run(data)


def test_control_corpus_is_answered_for_real():
    """The control target's stand-in runs the real commands API: every corpus request works."""
    for req in CONTROL_CORPUS:
        assert run_control_answer(json.dumps(req).encode() + b"\n") == "ok:True", req
