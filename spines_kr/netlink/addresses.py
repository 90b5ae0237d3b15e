"""Group addresses on the loopback: how an anycast member delivers packets to itself.

Data model: a member of anycast group G holds ``G/32`` on ``lo`` (scope global, no prefix
route), marked with our protocol in IFA_PROTO (Linux >= 6.3; older kernels ignore the
attribute, and then we recognise ours only by what we added in this run).  Entry points:
``LoopbackAddresses(protocol, netns)`` with ``dump()`` (ours, by protocol), ``add(addr)``,
``remove(addr)`` and ``sync(wanted)`` (add the missing, remove ours that are not wanted: a
restart sweeps what a crashed run left).

Messages are pyroute2's ``ifaddrmsg``; addresses are few, so no fast path.

Kernel behaviour (6.18): adding an address that exists fails with EEXIST (``ip addr add
240.1.1.1/32 dev lo`` twice -> "File exists"), removing a missing one with EADDRNOTAVAIL
(``ip addr del 240.1.1.1/32 dev lo`` -> "Cannot assign requested address"); both are successes
here.  ``ip -d addr show dev lo`` shows ``proto 81`` (``proto spines`` with the name file).
"""

from __future__ import annotations

import errno
import socket

from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg

from spines_kr import RTPROT_SPINES
from spines_kr.netlink.kernel import (NLM_F_ACK, NLM_F_CREATE, NLM_F_REQUEST, NLMSGHDR,
                                      dump_request, exchange, open_socket)

RTM_NEWADDR, RTM_DELADDR, RTM_GETADDR = 20, 21, 22
LOOPBACK_IFINDEX = 1  # lo is ifindex 1 in every network namespace
NLM_F_EXCL = 0x200


def _addr(msg_type: int, seq: int, address: str, protocol: int) -> bytes:
    msg = ifaddrmsg()
    msg["family"] = socket.AF_INET
    msg["prefixlen"] = 32
    msg["index"] = LOOPBACK_IFINDEX
    msg["attrs"] = [("IFA_LOCAL", address), ("IFA_ADDRESS", address), ("IFA_PROTO", protocol)]
    msg["header"]["type"] = msg_type
    msg["header"]["flags"] = NLM_F_REQUEST | NLM_F_ACK | (
        NLM_F_CREATE | NLM_F_EXCL if msg_type == RTM_NEWADDR else 0)
    msg["header"]["sequence_number"] = seq
    msg.encode()
    return bytes(msg.data)


class LoopbackAddresses:
    def __init__(self, protocol: int = RTPROT_SPINES, netns: str | None = None):
        self.protocol = protocol
        self._sock = open_socket(netns)
        self._seq = 0
        self.added: set[str] = set()

    def close(self) -> None:
        self._sock.close()

    def _next(self) -> int:
        self._seq += 1
        return self._seq

    def dump(self) -> set[str]:
        found = set(self.added)
        body = bytes([socket.AF_INET]) + bytes(7)  # struct ifaddrmsg: only the family
        for _mtype, payload in dump_request(self._sock, self._next(), RTM_GETADDR, body):
            msg = ifaddrmsg(NLMSGHDR.pack(NLMSGHDR.size + len(payload), RTM_NEWADDR, 0, 0, 0)
                            + payload)
            msg.decode()
            if msg["index"] == LOOPBACK_IFINDEX and msg.get_attr("IFA_PROTO") == self.protocol:
                found.add(msg.get_attr("IFA_LOCAL") or msg.get_attr("IFA_ADDRESS"))
        return found

    def _write(self, msg_type: int, address: str) -> None:
        seq = self._next()
        code, message = exchange(self._sock, [(seq, _addr(msg_type, seq, address,
                                                           self.protocol))])[seq]
        ok = (code == 0 or (msg_type == RTM_NEWADDR and code == errno.EEXIST)
              or (msg_type == RTM_DELADDR and code == errno.EADDRNOTAVAIL))
        if not ok:
            raise OSError(code, f"{address}/32 on lo: {message}")

    def add(self, address: str) -> None:
        self._write(RTM_NEWADDR, address)
        self.added.add(address)

    def remove(self, address: str) -> None:
        self._write(RTM_DELADDR, address)
        self.added.discard(address)

    def sync(self, wanted: set[str]) -> tuple[list[str], list[str]]:
        """Make our addresses on lo exactly ``wanted``; return (added, removed)."""
        have = self.dump()
        added = sorted(wanted - have)
        removed = sorted(have - wanted)
        for a in added:
            self.add(a)
        for a in removed:
            self.remove(a)
        return added, removed
