"""Group addresses on the loopback: how an anycast member delivers packets to itself.

Data model: a member of anycast group G holds ``G/32`` on ``lo`` (scope global, no prefix
route), marked with our protocol in IFA_PROTO (Linux >= 6.3; older kernels ignore the
attribute, and then we recognise ours only by what we added in this run).  Entry points:
``LoopbackAddresses(protocol, netns)`` with ``dump()`` (ours, by protocol), ``add(addr)``,
``remove(addr)`` and ``sync(wanted)`` (add the missing, remove ours that are not wanted: a
restart sweeps what a crashed run left).

Messages: struct ``ifaddrmsg`` as pyroute2 encodes it (its ``ifaddrmsg`` is the oracle in
tests), so a daemon does not load pyroute2 for them.

Kernel behaviour (6.18): adding an address that exists fails with EEXIST (``ip addr add
240.1.1.1/32 dev lo`` twice -> "File exists"), removing a missing one with EADDRNOTAVAIL
(``ip addr del 240.1.1.1/32 dev lo`` -> "Cannot assign requested address"); both are successes
here.  ``ip -d addr show dev lo`` shows ``proto 81`` (``proto spines`` with the name file).
"""

from __future__ import annotations

import errno
import socket

from spines_kr import RTPROT_SPINES
from spines_kr.netlink.core import (NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REQUEST, NLMSGHDR,
                                    Netlink, attr, parse_attrs)
from spines_kr.netlink.kernel import IFA_ADDRESS, IFA_LOCAL, IFADDRMSG

RTM_NEWADDR, RTM_DELADDR, RTM_GETADDR = 20, 21, 22
IFA_PROTO = 11  # u8, Linux >= 6.3
LOOPBACK_IFINDEX = 1  # lo is ifindex 1 in every network namespace


def _addr(msg_type: int, seq: int, address: str, protocol: int) -> bytes:
    """RTM_NEWADDR (create, exclusive) or RTM_DELADDR of ``address/32`` on lo, ours by
    IFA_PROTO: attributes IFA_LOCAL, IFA_ADDRESS, IFA_PROTO."""
    packed = socket.inet_aton(address)
    body = (IFADDRMSG.pack(socket.AF_INET, 32, 0, 0, LOOPBACK_IFINDEX) + attr(IFA_LOCAL, packed)
            + attr(IFA_ADDRESS, packed) + attr(IFA_PROTO, bytes([protocol])))
    flags = NLM_F_REQUEST | NLM_F_ACK | (NLM_F_CREATE | NLM_F_EXCL if msg_type == RTM_NEWADDR
                                         else 0)
    return NLMSGHDR.pack(NLMSGHDR.size + len(body), msg_type, flags, seq, 0) + body


class LoopbackAddresses:
    def __init__(self, protocol: int = RTPROT_SPINES, netns: str | None = None):
        self.protocol = protocol
        self._nl = Netlink(netns)
        self.added: set[str] = set()

    def close(self) -> None:
        self._nl.close()

    def dump(self) -> set[str]:
        found = set(self.added)
        body = bytes([socket.AF_INET]) + bytes(7)  # struct ifaddrmsg: only the family
        for _mtype, payload in self._nl.dump(RTM_GETADDR, body):
            if len(payload) < IFADDRMSG.size:
                continue
            index = IFADDRMSG.unpack_from(payload)[4]
            attrs = parse_attrs(payload, IFADDRMSG.size)
            address = attrs.get(IFA_LOCAL) or attrs.get(IFA_ADDRESS)
            if (index == LOOPBACK_IFINDEX and attrs.get(IFA_PROTO, b"")[:1] == bytes([self.protocol])
                    and address is not None and len(address) == 4):
                found.add(socket.inet_ntoa(address))
        return found

    def _write(self, msg_type: int, address: str) -> None:
        seq = self._nl.next_seq()
        code, message = self._nl.send_request(seq, _addr(msg_type, seq, address, self.protocol))
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
