"""The host-multicast fallback's packet surgery (dataplane.hostmcast), against the kernel's
rules for IPv4 and UDP checksums."""

import socket
import struct

from spines_kr.dataplane.hostmcast import complete_udp_checksum, forward_copy, group_mac


def checksum_ok(data: bytes) -> bool:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total == 0xFFFF


def udp_packet(payload: bytes, ttl: int = 16, csum: int = 0x1234) -> bytes:
    src, dst = socket.inet_aton("10.210.0.2"), socket.inet_aton("239.1.2.3")
    udp = struct.pack("!HHHH", 40000, 5999, 8 + len(payload), csum) + payload
    head = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 7, 0, ttl, 17, 0, src, dst)
    head = head[:10] + struct.pack("!H", ~sum(struct.unpack("!10H", head)) % 0xFFFF) + head[12:]
    return head + udp


def test_udp_checksum_is_completed_and_verifies():
    for payload in (b"", b"x", b"0 x", bytes(range(200))):
        fixed = complete_udp_checksum(udp_packet(payload))
        pseudo = fixed[12:20] + struct.pack("!BBH", 0, 17, 8 + len(payload))
        assert checksum_ok(pseudo + fixed[20:])
    none = udp_packet(b"abc", csum=0)
    assert complete_udp_checksum(none) == none  # "no checksum" stays


def test_forward_copy_decrements_ttl_with_a_valid_header():
    pkt = udp_packet(b"hello", ttl=16)
    copy = forward_copy(pkt)
    assert copy[8] == 15 and checksum_ok(copy[:20]) and copy[20:] == pkt[20:]
    assert forward_copy(udp_packet(b"x", ttl=1)) is None
    assert forward_copy(b"\x60" + bytes(40)) is None  # not IPv4


def test_group_mac():
    assert group_mac(0xEF810203) == bytes.fromhex("01005e010203")
