"""X25519 (RFC 7748, section 5): the Diffie-Hellman function WireGuard's keys are made for.

Pure: bytes in, bytes out; no randomness here (the caller brings the 32 random bytes).

Entry points:
    x25519(scalar, u) -> 32 bytes      the function itself (the scalar is clamped, u masked)
    public_key(private) -> 32 bytes    x25519(private, 9): a WireGuard public key
    clamp(private) -> 32 bytes         the key as ``wg genkey`` writes it (bits cleared/set)

Why here: spines-kr derives its WireGuard public key from the private key file at start (it
sends the public key to its tunnel peers over the authenticated control plane,
``daemon.tunnels``) and ``spines-kr keygen --wireguard`` writes a key pair.  The standard
library has no X25519, OpenSSL through ``cryptography`` is a dependency too many for a small
router, and shelling out to ``wg pubkey`` would make the daemon depend on wireguard-tools.  The
Montgomery ladder below is the RFC's pseudocode; it runs once per start (about 2 ms), never per
packet -- the tunnels' cryptography is the kernel's or wireguard-go's.  It is not constant
time (Python integers are not): it only ever handles the node's own key, at start.
tests/unit/test_x25519.py checks RFC 7748's test vectors (5.2 and the section 6.1 exchange).
"""

from __future__ import annotations

P = 2 ** 255 - 19
A24 = 121665
BASE_U = 9


def clamp(k: bytes) -> bytes:
    """The scalar as RFC 7748 decodes it: low 3 bits cleared, bit 255 cleared, bit 254 set."""
    if len(k) != 32:
        raise ValueError(f"an X25519 key is 32 bytes, got {len(k)}")
    b = bytearray(k)
    b[0] &= 248
    b[31] &= 127
    b[31] |= 64
    return bytes(b)


def x25519(scalar: bytes, u: bytes) -> bytes:
    """X25519(k, u) of RFC 7748 section 5: 32-byte little-endian inputs and output."""
    if len(u) != 32:
        raise ValueError(f"an X25519 u-coordinate is 32 bytes, got {len(u)}")
    k = int.from_bytes(clamp(scalar), "little")
    x1 = int.from_bytes(u, "little") & ((1 << 255) - 1)
    x2, z2, x3, z3 = 1, 0, x1, 1
    swap = 0
    for t in range(254, -1, -1):
        bit = (k >> t) & 1
        swap ^= bit
        if swap:
            x2, x3, z2, z3 = x3, x2, z3, z2
        swap = bit
        a, b = (x2 + z2) % P, (x2 - z2) % P
        aa, bb = a * a % P, b * b % P
        e = (aa - bb) % P
        c, d = (x3 + z3) % P, (x3 - z3) % P
        da, cb = d * a % P, c * b % P
        x3 = (da + cb) ** 2 % P
        z3 = x1 * (da - cb) ** 2 % P
        x2 = aa * bb % P
        z2 = e * (aa + A24 * e) % P
    if swap:
        x2, z2 = x3, z3
    return (x2 * pow(z2, P - 2, P) % P).to_bytes(32, "little")


def public_key(private: bytes) -> bytes:
    """The public key of a private key: X25519(private, 9)."""
    return x25519(private, BASE_U.to_bytes(32, "little"))
