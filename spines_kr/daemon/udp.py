"""What the daemon's UDP sockets share (the overlay, data, tunnel-offer and discovery ports).

IP_PKTINFO ancillary data (``struct in_pktinfo``: ifindex, spec_dst, addr): received, the
interface a datagram came in on and the address it was sent to; sent, the interface and source
address to leave from.  ``local_towards``: the source address the kernel picks towards an
address (a route lookup by ``connect`` on a UDP socket: no packet leaves).
"""

from __future__ import annotations

import socket
import struct

IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)
PKTINFO = struct.Struct("=i4s4s")
PKTINFO_SPACE = socket.CMSG_SPACE(PKTINFO.size)


def pktinfo(anc) -> tuple[int, bytes]:
    """(ifindex, destination address as 4 bytes) from received ancillary data; (0, b"")
    without it."""
    for level, typ, cdata in anc:
        if level == socket.SOL_IP and typ == IP_PKTINFO and len(cdata) >= PKTINFO.size:
            ifindex, _spec_dst, addr = PKTINFO.unpack_from(cdata)
            return ifindex, addr
    return 0, b""


def pktinfo_cmsg(ifindex: int, source: bytes) -> tuple[int, int, bytes]:
    """The ancillary item that sends a datagram out of ``ifindex`` from ``source``."""
    return socket.SOL_IP, IP_PKTINFO, PKTINFO.pack(ifindex, source, bytes(4))


def local_towards(remote: str) -> str:
    """The source address the kernel picks towards ``remote``, or "" if there is no route."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect((remote, 9))
            return s.getsockname()[0]
    except OSError:
        return ""
