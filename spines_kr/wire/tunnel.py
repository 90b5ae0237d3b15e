"""Tunnel negotiation and neighbor discovery messages.  Pure: bytes in, values out.

Both are version-1 spines-kr packets (``wire.packets``: the 16-byte header with the overlay
instance and the sender's logical ID, sealed with the overlay key's HMAC trailer by
``wire.auth.KeyRing``), but they travel on sockets of their own, never the overlay port, so the
protocol engine never sees them:

    TUNNEL (16), unicast to the overlay port + 2 on the underlay: "I want a virtual link to you
    and this is my end of it" -- how two nodes that share no subnet agree on a kernel tunnel::

        0      1      2             4             8             10            12
        +------+------+-------------+-------------+-------------+-------------+
        | kind | flags| reserved 0  | underlay    | port        | mtu         |
        +------+------+-------------+-------------+-------------+-------------+
        12            16                               48
        | vni         | public key (32 bytes; WireGuard, else zeros)           |
        +-------------+--------------------------------------------------------+

        kind     WIREGUARD (1), VXLAN (2), GRE (3), IPIP (4)
        flags    REQUEST (0x01): answer with your own offer; CLOSE (0x02): the sender removed
                 its end (the receiver removes an end it made only because of the sender);
                 CONFIGURED (0x04): the sender has the receiver in its configuration (it knows
                 the receiver's underlay address and sets it as the tunnel's endpoint)
        underlay the sender's own underlay address towards the receiver (0: not known yet):
                 how the receiver recognises a node it asked for when the offer comes from
                 another address (inside the tunnel, a second interface); remotes of VXLAN,
                 GRE and IPIP are the datagram's source address
        port     WireGuard: the sender's listen port; VXLAN: the UDP port both ends use
        mtu      the sender's underlay MTU towards the receiver (its egress device's); the
                 tunnel's MTU is the smaller of both ends' minus the encapsulation
        vni      VXLAN network identifier (24 bits), 0 otherwise

    ANNOUNCE (17), multicast to a discovery address (``-d``) on the overlay port + 3, TTL 1, on
    each LAN: "a daemon of this overlay is here"::

        0             4             6             8
        +-------------+-------------+-------------+
        | address     | port        | reserved 0  |
        +-------------+-------------+-------------+
        address  the sender's address on that LAN (the receiver forms a link to it)
        port     the sender's overlay port (the header's instance says the same)

Network byte order; strict decoding (``DecodeError`` with a counter reason, as ``wire.packets``).
Entry points: ``TunnelOffer``/``Announce`` with ``encode(instance, sender)`` (no trailer: the key
ring seals it) and ``decode(packet, instance) -> (header, message, trailer)``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import ClassVar

from spines_kr.wire.packets import DecodeError, Header, encode_raw, split

TUNNEL, ANNOUNCE = 16, 17
WIREGUARD, VXLAN, GRE, IPIP = 1, 2, 3, 4
KIND_CODES = {"wireguard": WIREGUARD, "vxlan": VXLAN, "gre": GRE, "ipip": IPIP}
KIND_NAMES = {v: k for k, v in KIND_CODES.items()}
F_REQUEST, F_CLOSE, F_CONFIGURED = 0x01, 0x02, 0x04
KEY_LEN = 32
MAX_VNI = (1 << 24) - 1


@dataclass(frozen=True, slots=True)
class TunnelOffer:
    TYPE: ClassVar[int] = TUNNEL
    _S: ClassVar[struct.Struct] = struct.Struct("!BBHIHHI32s")

    kind: int
    flags: int = 0
    underlay: int = 0
    port: int = 0
    mtu: int = 0
    vni: int = 0
    public_key: bytes = bytes(KEY_LEN)

    def encode(self, *, instance: int, sender: int) -> bytes:
        body = self._S.pack(self.kind, self.flags, 0, self.underlay, self.port, self.mtu,
                            self.vni, self.public_key)
        return encode_raw(TUNNEL, body, instance=instance, sender=sender)

    @classmethod
    def decode_body(cls, body: bytes) -> TunnelOffer:
        if len(body) != cls._S.size:
            raise DecodeError("short" if len(body) < cls._S.size else "long", "tunnel offer")
        kind, flags, rsvd, underlay, port, mtu, vni, key = cls._S.unpack(body)
        if rsvd or flags & ~(F_REQUEST | F_CLOSE | F_CONFIGURED) or vni > MAX_VNI:
            raise DecodeError("malformed", "tunnel offer reserved bits")
        if kind not in KIND_NAMES:
            raise DecodeError("malformed", f"tunnel kind {kind}")
        return cls(kind, flags, underlay, port, mtu, vni, key)


@dataclass(frozen=True, slots=True)
class Announce:
    TYPE: ClassVar[int] = ANNOUNCE
    _S: ClassVar[struct.Struct] = struct.Struct("!IHH")

    address: int
    port: int

    def encode(self, *, instance: int, sender: int) -> bytes:
        return encode_raw(ANNOUNCE, self._S.pack(self.address, self.port, 0), instance=instance,
                          sender=sender)

    @classmethod
    def decode_body(cls, body: bytes) -> Announce:
        if len(body) != cls._S.size:
            raise DecodeError("short" if len(body) < cls._S.size else "long", "announce")
        address, port, rsvd = cls._S.unpack(body)
        if rsvd:
            raise DecodeError("malformed", "announce reserved field")
        return cls(address, port)


_TYPES = {TUNNEL: TunnelOffer, ANNOUNCE: Announce}


def decode(data: bytes, *, instance: int | None = None, expect: int | None = None
           ) -> tuple[Header, TunnelOffer | Announce, bytes]:
    """(header, message, trailer) of one datagram; DecodeError when it is not a valid
    TUNNEL or ANNOUNCE packet (of type ``expect`` when given: reason ``type``)."""
    header, body, trailer = split(data, instance=instance)
    cls = _TYPES.get(header.type)
    if cls is None or (expect is not None and header.type != expect):
        raise DecodeError("type", str(header.type))
    return header, cls.decode_body(body), trailer
