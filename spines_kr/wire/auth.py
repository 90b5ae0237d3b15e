"""Packet authentication: an HMAC-SHA256 trailer with replay protection.  Pure (no clock: the
caller passes ``now``; the hash only computes).

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

HMAC (RFC 2104) is computed here over the interpreter's own SHA-256 (``_sha256``, ``_sha2``
from Python 3.12): ``hashlib`` loads OpenSSL's libcrypto, 3.7 MB of a small router's memory for
one hash function.  Key pads are hashed once per key (``_pads``); tests/unit/test_auth.py
checks every MAC against the standard library's ``hmac``.

Drop reasons (counted by the daemon): ``auth_missing`` (no trailer), ``auth_key`` (unknown key
id), ``auth_mac`` (wrong MAC), ``auth_replay``, ``auth_malformed``, ``auth_unexpected`` (a
trailer while authentication is off: the overlays disagree, no adjacency).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from spines_kr.wire.packets import F_TRAILER

try:
    from _sha2 import sha256  # Python 3.12+
except ImportError:
    try:
        from _sha256 import sha256  # Python 3.11
    except ImportError:  # an interpreter built without its own: OpenSSL's
        from hashlib import sha256
try:
    from _operator import _compare_digest as compare_digest  # constant time, as hmac's
except ImportError:
    from hmac import compare_digest

BLOCK = 64  # SHA-256 block size
_IPAD = bytes(x ^ 0x36 for x in range(256))
_OPAD = bytes(x ^ 0x5C for x in range(256))
_pads: dict[bytes, tuple] = {}


def hmac_sha256(key: bytes, data: bytes) -> bytes:
    """HMAC-SHA256 (RFC 2104) of ``data`` under ``key``."""
    pads = _pads.get(key)
    if pads is None:
        k = sha256(key).digest() if len(key) > BLOCK else key
        k = k.ljust(BLOCK, b"\0")
        pads = (sha256(k.translate(_IPAD)), sha256(k.translate(_OPAD)))
        if len(_pads) >= 16:  # keys are few (two during a rotation); never grow unbounded
            _pads.clear()
        _pads[key] = pads
    inner = pads[0].copy()
    inner.update(data)
    outer = pads[1].copy()
    outer.update(inner.digest())
    return outer.digest()

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

    def fork(self) -> KeyRing:
        """A ring with the same keys, sender id and boot, and counters and replay windows of
        its own: for a socket of its own (data, tunnel offers, discovery), whose bursts must
        not make another socket's packets look replayed."""
        return KeyRing(self.keys, self.send_id, boot=self.boot)

    def seal(self, packet: bytes) -> bytes:
        """Add the trailer to a packet encoded without one."""
        self.counter += 1
        head = bytearray(packet)
        head[FLAGS_OFFSET] |= F_TRAILER
        head += _PREFIX.pack(self.send_id, 0, self.boot, self.counter)
        return bytes(head) + hmac_sha256(self.keys[self.send_id], bytes(head))

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
        if not compare_digest(hmac_sha256(key, signed), trailer[-MAC_LEN:]):
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
