"""Wire format of the spines-kr control plane (version 1).  Pure: bytes in, values out.

Every packet is one UDP datagram on the overlay port::

    0               1               2               3
    +-------+-------+-------+-------+-------+-------+-------+-------+
    |     magic "SK"    | version | type  |    instance (port)    |
    +-------+-------+-------+-------+-------+-------+-------+-------+
    | flags | rsvd  |          sender logical ID (IPv4)            ...
    +-------+-------+-------+-------+-------+-------+-------+-------+
    ...     |   body length     |   reserved (0)    |   body ...
    +-------+-------+-------+-------+-------+-------+-------+-------+
    body (body length bytes) | trailer (only when flags & F_TRAILER)

The header is 16 bytes, network byte order.  ``instance`` is the overlay's port, so two overlays
sharing a host and a link never accept each other's packets.  The trailer is where
authentication goes (HMAC with key id, boot counter and packet counter, a later issue): it is
everything after the body, announced by ``F_TRAILER``; a version-1 packet without that flag
must end exactly at the body.  Decoding is strict: any deviation raises ``DecodeError`` with a
short machine-readable ``reason`` that the daemon counts (``short``, ``long``, ``magic``,
``version``, ``type``, ``instance``, ``malformed``).

Messages (one codec class each, symmetric ``encode``/``decode``, registered by type code):
    Hello (1)    liveness, RTT (timestamp echo) and loss (sequence numbers) of one link
    LinkStateUpdate (2)   one or more LSAs being flooded
    LinkStateAck (3)      (origin, seq) pairs acknowledged

An LSA (link-state advertisement) is what one node says about itself: its links with their
costs, and, for later issues, the prefixes behind it and the groups it belongs to.  Node IDs
and addresses travel as 32-bit integers.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import ClassVar

MAGIC = 0x534B  # "SK"
VERSION = 1
F_TRAILER = 0x01

_HEADER = struct.Struct("!HBBHBBIHH")
HEADER_LEN = _HEADER.size  # 16
MAX_PACKET = 65507  # largest UDP payload over IPv4
MAX_SEQ = (1 << 64) - 1  # reserved: never originated, never accepted
TRAILER_ROOM = 128  # the authentication trailer is smaller (wire.auth)
# The largest LSA: alone in an update, with header, count and trailer, in one UDP datagram.
MAX_LSA_SIZE = MAX_PACKET - HEADER_LEN - 4 - TRAILER_ROOM
MAX_ENTRIES = 0xFFFF  # links, prefixes and groups are counted in 16 bits

# Metric codes carried in hellos, so that nodes of one overlay can check they agree.
METRIC_CODES = {"distance": 1, "latency": 2, "loss": 3, "explat": 4, "problem": 5}
METRIC_NAMES = {v: k for k, v in METRIC_CODES.items()}


class DecodeError(ValueError):
    """A packet that is not a valid version-1 spines-kr packet; ``reason`` is a counter key."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Header:
    type: int
    instance: int
    sender: int
    flags: int = 0


class Message:
    TYPE: ClassVar[int]
    REGISTRY: ClassVar[dict[int, type[Message]]] = {}

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        Message.REGISTRY[cls.TYPE] = cls

    def encode_body(self) -> bytes:
        raise NotImplementedError

    @classmethod
    def decode_body(cls, body: bytes) -> Message:
        raise NotImplementedError


# --- Hello --------------------------------------------------------------------------------------

HELLO_HEARD = 0x01  # the sender hears us (echo fields are valid)
HELLO_UP = 0x02  # the sender considers the link up


@dataclass(frozen=True, slots=True)
class Hello(Message):
    """One hello on one link.

    ``tx_us`` is the sender's monotonic clock in microseconds; ``echo_us`` repeats the
    ``tx_us`` of the last hello the sender received from us and ``hold_us`` how long it held
    it, so that we compute RTT = now - echo_us - hold_us on our own clock alone.
    """

    TYPE: ClassVar[int] = 1
    _S: ClassVar[struct.Struct] = struct.Struct("!IQQIHHBBH")

    seq: int
    tx_us: int
    echo_us: int = 0
    hold_us: int = 0
    hello_ms: int = 0
    dead_ms: int = 0
    metric: int = 0
    state: int = 0

    def encode_body(self) -> bytes:
        return self._S.pack(self.seq, self.tx_us, self.echo_us, self.hold_us, self.hello_ms,
                            self.dead_ms, self.metric, self.state, 0)

    @classmethod
    def decode_body(cls, body: bytes) -> Hello:
        if len(body) != cls._S.size:
            raise DecodeError("short" if len(body) < cls._S.size else "long", "hello body")
        seq, tx, echo, hold, hms, dms, metric, state, pad = cls._S.unpack(body)
        if pad:
            raise DecodeError("malformed", "hello padding not zero")
        return cls(seq, tx, echo, hold, hms, dms, metric, state)


# --- Link-state advertisement -------------------------------------------------------------------

_LSA_HEAD = struct.Struct("!IQHHHH")  # origin, seq, n_links, n_prefixes, n_groups, reserved
_LSA_LINK = struct.Struct("!II")  # neighbor id, cost
_LSA_PREFIX = struct.Struct("!IBBH")  # network, prefix length, reserved, metric
_LSA_GROUP = struct.Struct("!I")


@dataclass(frozen=True, slots=True)
class LSA:
    """What ``origin`` says about itself, version ``seq`` (higher is newer).

    links: sorted ((neighbor_id, cost), ...); prefixes: sorted ((network, prefixlen, metric), ...);
    groups: sorted (group_address, ...).
    """

    origin: int
    seq: int
    links: tuple[tuple[int, int], ...] = ()
    prefixes: tuple[tuple[int, int, int], ...] = ()
    groups: tuple[int, ...] = ()

    def encoded_size(self) -> int:
        return (_LSA_HEAD.size + _LSA_LINK.size * len(self.links)
                + _LSA_PREFIX.size * len(self.prefixes) + _LSA_GROUP.size * len(self.groups))

    def fits(self) -> bool:
        """Whether the LSA can be encoded and sent (counts and size; see MAX_LSA_SIZE)."""
        return (max(len(self.links), len(self.prefixes), len(self.groups)) <= MAX_ENTRIES
                and self.encoded_size() <= MAX_LSA_SIZE)

    def encode(self) -> bytes:
        parts = [_LSA_HEAD.pack(self.origin, self.seq, len(self.links), len(self.prefixes),
                                len(self.groups), 0)]
        parts += [_LSA_LINK.pack(n, c) for n, c in self.links]
        parts += [_LSA_PREFIX.pack(net, plen, 0, m) for net, plen, m in self.prefixes]
        parts += [_LSA_GROUP.pack(g) for g in self.groups]
        return b"".join(parts)

    @classmethod
    def decode_from(cls, buf: bytes, off: int) -> tuple[LSA, int]:
        if len(buf) - off < _LSA_HEAD.size:
            raise DecodeError("short", "lsa header")
        origin, seq, nl, np_, ng, rsvd = _LSA_HEAD.unpack_from(buf, off)
        if rsvd:
            raise DecodeError("malformed", "lsa reserved field not zero")
        if seq == MAX_SEQ:
            # reserved: an origin jumping past it could never originate again (found by fuzzing)
            raise DecodeError("malformed", "lsa sequence number is the reserved maximum")
        off += _LSA_HEAD.size
        need = nl * _LSA_LINK.size + np_ * _LSA_PREFIX.size + ng * _LSA_GROUP.size
        if len(buf) - off < need:
            raise DecodeError("short", "lsa body")
        links = []
        for _ in range(nl):
            links.append(_LSA_LINK.unpack_from(buf, off))
            off += _LSA_LINK.size
        prefixes = []
        for _ in range(np_):
            net, plen, r, metric = _LSA_PREFIX.unpack_from(buf, off)
            if plen > 32 or r or net & ~_mask(plen) & 0xFFFFFFFF:
                raise DecodeError("malformed", "lsa prefix")
            prefixes.append((net, plen, metric))
            off += _LSA_PREFIX.size
        groups = []
        for _ in range(ng):
            groups.append(_LSA_GROUP.unpack_from(buf, off)[0])
            off += _LSA_GROUP.size
        lsa = cls(origin, seq, tuple(links), tuple(prefixes), tuple(groups))
        if (list(lsa.links) != sorted(set(lsa.links)) or list(lsa.prefixes) != sorted(set(lsa.prefixes))
                or list(lsa.groups) != sorted(set(lsa.groups))):
            raise DecodeError("malformed", "lsa entries not sorted and unique")
        return lsa, off

    @classmethod
    def make(cls, origin: int, seq: int, links=(), prefixes=(), groups=()) -> LSA:
        """Build an LSA in canonical form (sorted, deduplicated) from any iterables."""
        return cls(origin, seq, tuple(sorted(set(links))), tuple(sorted(set(prefixes))),
                   tuple(sorted(set(groups))))


def _mask(plen: int) -> int:
    return (0xFFFFFFFF << (32 - plen)) & 0xFFFFFFFF if plen else 0


@dataclass(frozen=True, slots=True)
class LinkStateUpdate(Message):
    TYPE: ClassVar[int] = 2
    _N: ClassVar[struct.Struct] = struct.Struct("!HH")

    lsas: tuple[LSA, ...] = field(default_factory=tuple)

    def encode_body(self) -> bytes:
        return self._N.pack(len(self.lsas), 0) + b"".join(l.encode() for l in self.lsas)

    @classmethod
    def decode_body(cls, body: bytes) -> LinkStateUpdate:
        if len(body) < cls._N.size:
            raise DecodeError("short", "lsu count")
        n, rsvd = cls._N.unpack_from(body)
        if rsvd or n == 0:
            raise DecodeError("malformed", "lsu count")
        off = cls._N.size
        lsas = []
        for _ in range(n):
            lsa, off = LSA.decode_from(body, off)
            lsas.append(lsa)
        if off != len(body):
            raise DecodeError("long", "bytes after the last lsa")
        return cls(tuple(lsas))


@dataclass(frozen=True, slots=True)
class LinkStateAck(Message):
    TYPE: ClassVar[int] = 3
    _N: ClassVar[struct.Struct] = struct.Struct("!HH")
    _E: ClassVar[struct.Struct] = struct.Struct("!IQ")

    acks: tuple[tuple[int, int], ...] = ()  # (origin, seq)

    def encode_body(self) -> bytes:
        return self._N.pack(len(self.acks), 0) + b"".join(self._E.pack(o, s) for o, s in self.acks)

    @classmethod
    def decode_body(cls, body: bytes) -> LinkStateAck:
        if len(body) < cls._N.size:
            raise DecodeError("short", "ack count")
        n, rsvd = cls._N.unpack_from(body)
        if rsvd or n == 0:
            raise DecodeError("malformed", "ack count")
        want = cls._N.size + n * cls._E.size
        if len(body) != want:
            raise DecodeError("short" if len(body) < want else "long", "ack entries")
        return cls(tuple(cls._E.unpack_from(body, cls._N.size + i * cls._E.size) for i in range(n)))


# --- Packet -------------------------------------------------------------------------------------


def encode(msg: Message, *, instance: int, sender: int, trailer: bytes = b"") -> bytes:
    return encode_raw(msg.TYPE, msg.encode_body(), instance=instance, sender=sender,
                      trailer=trailer)


def encode_raw(mtype: int, body: bytes, *, instance: int, sender: int,
               trailer: bytes = b"") -> bytes:
    """A packet of type ``mtype`` around an encoded body (wire.data uses it for DATA)."""
    flags = F_TRAILER if trailer else 0
    packet = _HEADER.pack(MAGIC, VERSION, mtype, instance, flags, 0, sender, len(body), 0)
    packet += body + trailer
    if len(packet) > MAX_PACKET:
        raise ValueError(f"packet of {len(packet)} bytes exceeds {MAX_PACKET}")
    return packet


def split(data: bytes, *, instance: int | None = None) -> tuple[Header, bytes, bytes]:
    """(header, body, trailer) of one datagram, the header checked (any type); DecodeError
    if it is invalid.  With ``instance`` given, a packet of another overlay instance is
    rejected (reason ``instance``)."""
    if len(data) < HEADER_LEN:
        raise DecodeError("short", "header")
    magic, version, mtype, inst, flags, rsvd, sender, blen, rsvd2 = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise DecodeError("magic")
    if version != VERSION:
        raise DecodeError("version", str(version))
    if instance is not None and inst != instance:
        raise DecodeError("instance", str(inst))
    if rsvd or rsvd2 or flags & ~F_TRAILER:
        raise DecodeError("malformed", "reserved header bits set")
    end = HEADER_LEN + blen
    if len(data) < end:
        raise DecodeError("short", "body")
    trailer = data[end:]
    if trailer and not flags & F_TRAILER:
        raise DecodeError("long", "bytes after the body")
    if flags & F_TRAILER and not trailer:
        raise DecodeError("short", "trailer announced but missing")
    return Header(mtype, inst, sender, flags), data[HEADER_LEN:end], trailer


def decode(data: bytes, *, instance: int | None = None) -> tuple[Header, Message, bytes]:
    """Decode one control datagram into (header, message, trailer); raise DecodeError if it is
    invalid (a type that is not a control message included: reason ``type``)."""
    header, body, trailer = split(data, instance=instance)
    cls = Message.REGISTRY.get(header.type)
    if cls is None:
        raise DecodeError("type", str(header.type))
    return header, cls.decode_body(body), trailer


def lsu_packets(lsas, *, instance: int, sender: int, budget: int = 1400) -> list[bytes]:
    """Pack LSAs into as few LinkStateUpdate packets as fit ``budget`` bytes each.

    An LSA too large for the budget on its own still goes out, alone in its packet.
    """
    packets, batch, size = [], [], HEADER_LEN + 4
    for lsa in lsas:
        n = lsa.encoded_size()
        if batch and size + n > budget:
            packets.append(encode(LinkStateUpdate(tuple(batch)), instance=instance, sender=sender))
            batch, size = [], HEADER_LEN + 4
        batch.append(lsa)
        size += n
    if batch:
        packets.append(encode(LinkStateUpdate(tuple(batch)), instance=instance, sender=sender))
    return packets


def ack_packets(acks, *, instance: int, sender: int, per_packet: int = 100) -> list[bytes]:
    acks = list(acks)
    return [encode(LinkStateAck(tuple(acks[i:i + per_packet])), instance=instance, sender=sender)
            for i in range(0, len(acks), per_packet)]
