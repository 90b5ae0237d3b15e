"""Stream segments between daemons: the end-to-end layer of reliable stream sessions
(``dataplane.stream``).  Pure: bytes in, values out.

A segment is the payload of one client message crossing the overlay (``dataplane.message``) from
the daemon of one end of a stream to the daemon of the other, with ``link | STREAM_SEGMENT``
so that the receiving daemon hands it to its streams, never to a client.  The message's source
and destination are the two ends (node, virtual port); its link protocol is the one the session
chose (reliable links by default for the Python client), so a segment is recovered hop by hop
where the links can, and end to end by the stream where they cannot.  Layout (network byte
order), 28 bytes, then ``nsack`` blocks of 16, then the payload::

    0      1      2      3      4             8                     16                    24
    +------+------+------+------+-------------+---------------------+---------------------+
    | ver  | flags| nsack| rsvd | connection  | sequence            | acknowledgement     |
    +------+------+------+------+-------------+---------------------+---------------------+
    24            28
    | window      | nsack x (start, end), u64 each | payload ...
    +-------------+--------------------------------+-----------

    ver         1
    flags       SYN 0x01 (opens a connection), ACK 0x02 (``acknowledgement`` and ``window``
                are valid: every segment but the first SYN), FIN 0x04 (the sender's data ends
                at ``sequence`` + the payload's length; the FIN itself takes one sequence
                number), RST 0x08 (the connection is aborted), PROBE 0x10 (answer with an ACK
                at once: zero-window probes and keepalives)
    connection  random, chosen by the connecting end; with the two (node, port) ends it
                names the connection (a segment of an older one is told apart by it)
    sequence    the byte offset of the payload's first byte in the sender's stream (from 0,
                64 bits: never wraps)
    acknowledgement  every byte before it was received (cumulative; the peer's FIN counts one)
    window      bytes the receiver accepts beyond ``acknowledgement`` (it never takes back a
                window it granted)
    sack        blocks of bytes received beyond ``acknowledgement`` (start, end exclusive),
                lowest first, at most ``MAX_SACK``
Decoding is strict (``DecodeError`` with a counter reason): unknown version or flag bits,
reserved bits set, a SYN or RST with a payload, a block that is empty or reversed, a segment
longer or shorter than its fields.

Entry points: ``Segment`` (``encode()``, ``Segment.decode(payload)``), ``HEADER``,
``MAX_SACK``, ``overhead(nsack)``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from spines_kr.wire.packets import DecodeError

VERSION = 1
SYN, ACK, FIN, RST, PROBE = 0x01, 0x02, 0x04, 0x08, 0x10
FLAGS = SYN | ACK | FIN | RST | PROBE
MAX_SACK = 4
_HEAD = struct.Struct("!BBBBIQQI")
_BLOCK = struct.Struct("!QQ")
HEADER = _HEAD.size  # 28
BLOCK = _BLOCK.size  # 16
U64 = (1 << 64) - 1
U32 = (1 << 32) - 1

_NAMES = ((SYN, "SYN"), (ACK, "ACK"), (FIN, "FIN"), (RST, "RST"), (PROBE, "PROBE"))


def overhead(nsack: int = MAX_SACK) -> int:
    """Bytes of a segment that are not payload, with ``nsack`` blocks."""
    return HEADER + BLOCK * nsack


@dataclass(frozen=True, slots=True)
class Segment:
    flags: int
    conn: int
    seq: int = 0
    ack: int = 0
    window: int = 0
    sack: tuple[tuple[int, int], ...] = ()
    payload: bytes = b""

    def encode(self) -> bytes:
        if len(self.sack) > MAX_SACK:
            raise ValueError(f"{len(self.sack)} SACK blocks: at most {MAX_SACK}")
        parts = [_HEAD.pack(VERSION, self.flags, len(self.sack), 0, self.conn & U32,
                            self.seq, self.ack, min(self.window, U32))]
        parts.extend(_BLOCK.pack(a, b) for a, b in self.sack)
        parts.append(self.payload)
        return b"".join(parts)

    @classmethod
    def decode(cls, data: bytes) -> Segment:
        if len(data) < HEADER:
            raise DecodeError("short", f"stream segment of {len(data)} bytes")
        ver, flags, nsack, rsvd, conn, seq, ack, window = _HEAD.unpack_from(data, 0)
        if ver != VERSION:
            raise DecodeError("version", f"stream segment version {ver}")
        if rsvd or flags & ~FLAGS:
            raise DecodeError("malformed", f"stream segment flags 0x{flags:02x}/{rsvd}")
        if nsack > MAX_SACK:
            raise DecodeError("malformed", f"{nsack} SACK blocks")
        off = HEADER + BLOCK * nsack
        if len(data) < off:
            raise DecodeError("short", "stream segment SACK blocks")
        sack = []
        for i in range(nsack):
            a, b = _BLOCK.unpack_from(data, HEADER + BLOCK * i)
            if a >= b:
                raise DecodeError("malformed", f"SACK block {a}..{b}")
            sack.append((a, b))
        payload = bytes(data[off:])
        if payload and flags & (SYN | RST):
            raise DecodeError("malformed", "a SYN or RST segment with a payload")
        if seq + len(payload) + 1 > U64:
            raise DecodeError("malformed", "stream sequence overflows")
        return cls(flags, conn, seq, ack, window, tuple(sack), payload)

    def describe(self) -> str:
        names = "|".join(n for bit, n in _NAMES if self.flags & bit) or "-"
        return (f"{names} conn {self.conn:08x} seq {self.seq} ack {self.ack} win {self.window}"
                f"{' sack ' + str(list(self.sack)) if self.sack else ''} len {len(self.payload)}")
