"""Data packets between daemons: client messages crossing the overlay.  Pure: bytes in, values out.

A data packet is a version-1 spines-kr packet (``wire.packets``: the 16-byte header, the overlay
instance, the sender, the authentication trailer) of type DATA (4), sent to the data port (the
overlay port + 1).  Its body is one or more *records*, each a fragment of one client message, so
that small messages bound for the same next daemon travel in one datagram::

    0      1      2      3      4             8             12            14
    +------+------+------+------+-------------+-------------+-------------+-------------+
    | kind | ttl  | link | frags| source node | destination | source port | dest port   |
    +------+------+------+------+-------------+-------------+-------------+-------------+
    16            20     21     22            24            26
    | message id  | index| rsvd | length      | age (ms)    | payload (length bytes) ...
    +-------------+------+------+-------------+-------------+

    kind     KERNEL (0): sent to the destination node's logical ID; transit nodes forward it in
             the kernel, on the overlay's own routes, and only the destination's daemon sees it;
             HOP (1): sent to the next overlay hop's daemon, which forwards it in user space
             along the overlay's shortest paths (no kernel route there, or kernel level 0 off);
             TREE (2): a multicast message on the source-rooted shortest-path tree of the
             source node (the same trees as kernel level 2): each daemon on the tree delivers
             to its sessions and forwards to its children whose subtree holds a member.
    ttl      overlay hops left (a HOP/TREE record is dropped at 0); a KERNEL packet carries
             the same TTL in its IP header, which the kernel decrements per node
    link     Spines' link protocol of the message (UDP_LINKS 0 here)
    frags    how many fragments the message has (1..255); ``index`` is this one's
    source   the originating node (logical ID), the message's source address
    dest     a node's logical ID, a class D group or a class E group
    message id  per source node, with ``source`` the key of reassembly
    length   payload bytes in this record
    age      soft real time: the delay, in ms, this record has gained on its way beyond the
             links' own latency (recovery of losses on earlier hops; ``dataplane.realtime``):
             a hop drops a record whose age would pass the deadline budget.  0 otherwise
Network byte order.  Decoding is strict (``DecodeError`` with a reason the daemon counts):
records must fill the body exactly.  Entry points: ``Record``, ``encode(records, instance,
sender)`` -> packet (without trailer: the key ring seals it), ``decode(packet, instance)`` ->
(header, records, trailer), ``fragment(payload, size)``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from spines_kr.wire.packets import DecodeError, Header, encode_raw, split

DATA = 4
KERNEL, HOP, TREE = 0, 1, 2
KINDS = (KERNEL, HOP, TREE)
_REC = struct.Struct("!BBBBIIHHIBBHH")
RECORD_HEADER = _REC.size  # 26
MAX_FRAGMENTS = 255


@dataclass(frozen=True, slots=True)
class Record:
    kind: int
    ttl: int
    link: int
    frags: int
    src: int
    dst: int
    src_port: int
    dst_port: int
    msg_id: int
    index: int
    payload: bytes
    age: int = 0  # ms of extra delay gained (soft real time)

    def encoded_size(self) -> int:
        return RECORD_HEADER + len(self.payload)


def encode_records(records) -> bytes:
    out = []
    for r in records:
        out.append(_REC.pack(r.kind, r.ttl, r.link, r.frags, r.src, r.dst, r.src_port,
                             r.dst_port, r.msg_id, r.index, 0, len(r.payload), r.age))
        out.append(r.payload)
    return b"".join(out)


def decode_records(body: bytes) -> list[Record]:
    records = []
    off, end = 0, len(body)
    if not end:
        raise DecodeError("short", "data without a record")
    unpack = _REC.unpack_from
    while off < end:
        if end - off < RECORD_HEADER:
            raise DecodeError("short", "data record header")
        kind, ttl, link, frags, src, dst, sport, dport, mid, idx, rsvd, n, age = unpack(body, off)
        off += RECORD_HEADER
        if kind not in KINDS or rsvd or not frags or idx >= frags:
            raise DecodeError("malformed", "data record")
        if end - off < n:
            raise DecodeError("short", "data record payload")
        records.append(Record(kind, ttl, link, frags, src, dst, sport, dport, mid, idx,
                              body[off:off + n], age))
        off += n
    return records


def fragment(payload: bytes, size: int) -> list[bytes]:
    """The payload cut in pieces of at most ``size`` bytes (one empty piece for an empty
    payload: an empty message is a message)."""
    if not payload:
        return [b""]
    return [payload[i:i + size] for i in range(0, len(payload), size)]


def encode(records, *, instance: int, sender: int) -> bytes:
    return encode_raw(DATA, encode_records(records), instance=instance, sender=sender)


def decode(packet: bytes, *, instance: int) -> tuple[Header, list[Record], bytes]:
    header, body, trailer = split(packet, instance=instance)
    if header.type != DATA:
        raise DecodeError("type", str(header.type))
    return header, decode_records(body), trailer
