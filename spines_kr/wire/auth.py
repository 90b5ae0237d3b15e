"""Packet authentication: an HMAC-SHA256 trailer with replay protection.  Pure (no clock: the
caller passes ``now``; hashlib/hmac only compute).

Trailer (after the body, announced by the header flag F_TRAILER, 52 bytes)::

    key id (u16) | reserved (u16, 0) | boot (u64) | counter (u64) | HMAC-SHA256 (32 bytes)

The MAC covers the whole packet before it: header (with F_TRAILER set), body, and the trailer's
first 20 bytes.  ``boot`` identifies one run of the sender (microseconds of wall clock at its
start); ``counter`` numbers its packets from 1.  A receiver keeps, per sender (logical ID), the
highest (boot, counter) seen and a 64-packet window below it, as RFC 8967's index and packet
counter with a window: a packet of an older boot, or at or below the window, or seen before in
it, is a replay and is dropped.  Replay state of a sender silent for ``STATE_TTL`` (300 s) is
forgotten, so a router whose clock went back at a reboot is accepted again after that time;
a replayed LSA then still loses to the newer sequence numbers flooding holds.

Keys: ``KeyRing(keys, send_id, boot)`` with ``keys`` {id: secret bytes}: every listed key
verifies, ``send_id`` signs, so keys are rotated without downtime (add the new key everywhere,
then make it the sending key everywhere, then remove the old one).  Key files are read by
``spines_kr.keys``.

Drop reasons (counted by the daemon): ``auth_missing`` (no trailer), ``auth_key`` (unknown key
id), ``auth_mac`` (wrong MAC), ``auth_replay``, ``auth_malformed``, ``auth_unexpected`` (a
trailer while authentication is off: the overlays disagree, no adjacency).
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from dataclasses import dataclass, field

from spines_kr.wire.packets import F_TRAILER

_PREFIX = struct.Struct("!HHQQ")
MAC_LEN = 32
TRAILER_LEN = _PREFIX.size + MAC_LEN  # 52
WINDOW = 64
STATE_TTL = 300.0
FLAGS_OFFSET = 6  # the flags byte of the version-1 header


@dataclass
class _Peer:
    boot: int
    highest: int
    window: int  # bit i: counter highest - i was seen
    last: float


@dataclass
class KeyRing:
    keys: dict[int, bytes]
    send_id: int
    boot: int
    counter: int = 0
    peers: dict[int, _Peer] = field(default_factory=dict)

    def seal(self, packet: bytes) -> bytes:
        """Add the trailer to a packet encoded without one."""
        self.counter += 1
        head = bytearray(packet)
        head[FLAGS_OFFSET] |= F_TRAILER
        head += _PREFIX.pack(self.send_id, 0, self.boot, self.counter)
        return bytes(head) + hmac.digest(self.keys[self.send_id], bytes(head), hashlib.sha256)

    def check(self, sender: int, packet: bytes, trailer: bytes, now: float) -> str | None:
        """None if the packet is authentic and fresh (and record it), else a drop reason."""
        if not trailer:
            return "auth_missing"
        if len(trailer) != TRAILER_LEN:
            return "auth_malformed"
        kid, rsvd, boot, counter = _PREFIX.unpack_from(trailer)
        if rsvd:
            return "auth_malformed"
        key = self.keys.get(kid)
        if key is None:
            return "auth_key"
        signed = packet[:len(packet) - MAC_LEN]
        if not hmac.compare_digest(hmac.digest(key, signed, hashlib.sha256), trailer[-MAC_LEN:]):
            return "auth_mac"
        return self._fresh(sender, boot, counter, now)

    def _fresh(self, sender: int, boot: int, counter: int, now: float) -> str | None:
        p = self.peers.get(sender)
        if p is None or now - p.last > STATE_TTL or boot > p.boot:
            self.peers[sender] = _Peer(boot, counter, 1, now)
            return None
        if boot < p.boot:
            return "auth_replay"
        if counter > p.highest:
            shift = counter - p.highest
            p.window = ((p.window << shift) | 1) & ((1 << WINDOW) - 1) if shift < WINDOW else 1
            p.highest = counter
        else:
            age = p.highest - counter
            if age >= WINDOW or p.window >> age & 1:
                return "auth_replay"
            p.window |= 1 << age
        p.last = now
        return None

    def forget_idle(self, now: float) -> None:
        """Bound the replay state: drop senders silent for longer than STATE_TTL."""
        for s in [s for s, p in self.peers.items() if now - p.last > STATE_TTL]:
            del self.peers[s]
