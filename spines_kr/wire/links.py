"""Link-protocol packets between neighboring daemons: reliable and soft-real-time data links.
Pure: bytes in, values out.

Both are version-1 spines-kr packets (``wire.packets``: the 16-byte header with the overlay
instance and the sender, the authentication trailer) on the data port (the overlay port + 1),
sent on one overlay link from one daemon to its neighbor, never further.

LINK_DATA (5): one frame of a link's sequence, carrying data records (``wire.data``: the same
records as best-effort DATA packets, HOP or TREE kinds, bundled per link)::

    0      1      2             4             8
    +------+------+-------------+-------------+----------------------------
    | proto| flags| epoch       | sequence    | records ...
    +------+------+-------------+-------------+----------------------------

LINK_ACK (6): the receiver's answer::

    0      1      2             4             6             8             12           16
    +------+------+-------------+-------------+-------------+-------------+------------+------
    | proto| flags| count       | epoch       | reserved (0)| cumulative  | window     | ...
    +------+------+-------------+-------------+-------------+-------------+------------+------

    proto       RELIABLE (1, Spines' RELIABLE_LINKS) or REALTIME (2, SOFT_REALTIME_LINKS)
    epoch       the sending channel's instance, random at its start: a receiver that sees a
                new epoch starts the sequence afresh (the neighbor restarted or reset the
                link); an acknowledgement names the epoch it answers, stale ones are ignored
    sequence    32 bits, per link, direction and protocol, wrapping (``unwrap``)
    cumulative  reliable: every frame before it was received (the next one expected);
                realtime: the highest frame received + 1 (informative)
    window      reliable: frames the receiver accepts beyond ``cumulative`` (0: none now,
                its own output is backed up: hop-by-hop back-pressure); realtime: 0
    entries     reliable: selective acknowledgements, ``count`` (start, end) pairs of 32-bit
                sequences (end exclusive) received beyond ``cumulative``, at most
                ``MAX_BLOCKS``; realtime: negative acknowledgements, ``count`` 32-bit
                sequences the receiver misses (each asked for once)
Network byte order.  Decoding is strict (``DecodeError`` with a counter reason).

Entry points: ``LinkData``, ``LinkAck``, ``encode(msg, instance, sender)``, ``decode(packet,
instance)`` -> (header, msg, trailer), ``unwrap(seq32, near)``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from spines_kr.wire import data as wdata
from spines_kr.wire.packets import DecodeError, Header, encode_raw, split

LINK_DATA, LINK_ACK = 5, 6
RELIABLE, REALTIME = 1, 2
PROTOCOLS = (RELIABLE, REALTIME)
MAX_BLOCKS = 64  # selective acknowledgement blocks per ack (lowest first)
MAX_NACKS = 256  # sequences asked for per ack
_DATA = struct.Struct("!BBHI")
_ACK = struct.Struct("!BBHHHII")
DATA_HEADER = _DATA.size  # 8
ACK_HEADER = _ACK.size  # 16
_U32 = struct.Struct("!I")
_PAIR = struct.Struct("!II")
MASK = 0xFFFFFFFF


@dataclass(frozen=True, slots=True)
class LinkData:
    proto: int
    epoch: int
    seq: int  # 32 bits on the wire
    records: tuple[wdata.Record, ...]


@dataclass(frozen=True, slots=True)
class LinkAck:
    proto: int
    epoch: int
    cumulative: int
    window: int = 0
    blocks: tuple[tuple[int, int], ...] = ()  # reliable: SACK blocks (start, end)
    nacks: tuple[int, ...] = ()  # realtime: sequences missing


def encode(msg, *, instance: int, sender: int) -> bytes:
    """The packet (without trailer: the key ring seals it)."""
    if isinstance(msg, LinkData):
        body = _DATA.pack(msg.proto, 0, msg.epoch, msg.seq & MASK) + \
            wdata.encode_records(msg.records)
        return encode_raw(LINK_DATA, body, instance=instance, sender=sender)
    if msg.proto == RELIABLE:
        entries = msg.blocks[:MAX_BLOCKS]
        tail = b"".join(_PAIR.pack(a & MASK, b & MASK) for a, b in entries)
    else:
        entries = msg.nacks[:MAX_NACKS]
        tail = b"".join(_U32.pack(s & MASK) for s in entries)
    body = _ACK.pack(msg.proto, 0, len(entries), msg.epoch, 0, msg.cumulative & MASK,
                     msg.window) + tail
    return encode_raw(LINK_ACK, body, instance=instance, sender=sender)


def decode_body(mtype: int, body: bytes):
    if mtype == LINK_DATA:
        if len(body) < DATA_HEADER:
            raise DecodeError("short", "link data header")
        proto, flags, epoch, seq = _DATA.unpack_from(body)
        if proto not in PROTOCOLS or flags:
            raise DecodeError("malformed", "link data header")
        return LinkData(proto, epoch, seq, tuple(wdata.decode_records(body[DATA_HEADER:])))
    if len(body) < ACK_HEADER:
        raise DecodeError("short", "link ack header")
    proto, flags, count, epoch, rsvd, cum, window = _ACK.unpack_from(body)
    if proto not in PROTOCOLS or flags or rsvd:
        raise DecodeError("malformed", "link ack header")
    size = _PAIR.size if proto == RELIABLE else _U32.size
    if len(body) != ACK_HEADER + count * size:
        raise DecodeError("malformed", "link ack entries")
    if proto == RELIABLE:
        if count > MAX_BLOCKS:
            raise DecodeError("malformed", "too many ack blocks")
        blocks = tuple(_PAIR.unpack_from(body, ACK_HEADER + i * size) for i in range(count))
        return LinkAck(proto, epoch, cum, window, blocks=blocks)
    if count > MAX_NACKS or window:
        raise DecodeError("malformed", "realtime nack")
    nacks = tuple(_U32.unpack_from(body, ACK_HEADER + i * size)[0] for i in range(count))
    return LinkAck(proto, epoch, cum, 0, nacks=nacks)


def decode(packet: bytes, *, instance: int) -> tuple[Header, LinkData | LinkAck, bytes]:
    header, body, trailer = split(packet, instance=instance)
    if header.type not in (LINK_DATA, LINK_ACK):
        raise DecodeError("type", str(header.type))
    return header, decode_body(header.type, body), trailer


def unwrap(seq32: int, near: int) -> int:
    """The full sequence number whose low 32 bits are ``seq32``, nearest to ``near``."""
    base = near - (1 << 31)
    return base + ((seq32 - base) & MASK)
