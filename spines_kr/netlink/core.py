"""The netlink core: one socket type, one framing, requests with a deadline, dumps and batches.

Every module that talks netlink uses it: routes (kernel), nexthop objects (nexthop), rules
(rules), loopback addresses (addresses), qdiscs (emulation), notifications (events), multicast
rules and entries (mroute), the capability probe (capabilities).

Data model:
    Netlink(netns, protocol, groups, *, strict, timeout)
        one netlink socket of ours, in a namespace (``netns.socket_in_netns``), with a large
        receive buffer, NETLINK_CAP_ACK (small acks) and NETLINK_EXT_ACK (the kernel's reason
        in an error), NETLINK_GET_STRICT_CHK for ``strict`` (filtered dumps), and its own
        sequence numbers.  Its calls:
            request(mtype, flags, body) -> (errno, message)    one request and its ack
            send_request(seq, data) -> (errno, message)        a request encoded elsewhere
            dump(mtype, body) -> iterator of (mtype, payload)  NLM_F_DUMP; OSError on an error
            get(mtype, body) -> [(mtype, payload)]             a request answered by messages
            exchange([(seq, data), ...]) -> {seq: (errno, message)}   BATCH a datagram
            read() -> [(mtype, flags, seq, payload)]           what is pending (notifications)
        Each call has a deadline: ``timeout`` seconds for the kernel's answer (rtnetlink answers
        before send() returns, so waiting is only ever for a lost answer); past it, OSError
        ETIMEDOUT.  A request never blocks longer than that, whatever the kernel does.
    Framing (module functions): ``iter_messages``, ``parse_attrs``, ``attr``, ``decode_ack``,
    ``message``; the constants of linux/netlink.h.

Kernel behaviour followed (6.18):
  * A failed request is always answered (NLMSG_ERROR with its seq), a successful one only with
    NLM_F_ACK; acks are matched by sequence number, answers to an abandoned request skipped.
  * Each answer occupies ~830 B of the receive buffer (the default 208 KiB holds 256); the
    buffer is forced to RCVBUF (CAP_NET_ADMIN), else capped at net.core.rmem_max.
  * A dump datagram is at most 32 KiB (netlink_dump); RECV_SIZE is twice that.
  * Kernels before 4.20 lack NETLINK_GET_STRICT_CHK and NETLINK_EXT_ACK: dumps are then
    unfiltered (callers filter anyway) and errors come without a reason.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import struct
import time
from collections.abc import Iterator

from spines_kr.netlink.nsenter import socket_in_netns

# linux/netlink.h
NETLINK_ROUTE, NETLINK_NETFILTER, NETLINK_GENERIC = 0, 12, 16
SOL_NETLINK = 270
NETLINK_CAP_ACK = 10
NETLINK_EXT_ACK = 11
NETLINK_GET_STRICT_CHK = 12
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLM_F_DUMP = 0x300
NLM_F_REPLACE = 0x100
NLM_F_EXCL = 0x200
NLM_F_CREATE = 0x400
NLM_F_CAPPED = 0x100  # in acks
NLM_F_ACK_TLVS = 0x200  # in acks
NLMSGERR_ATTR_MSG = 1
NLA_F_NESTED = 0x8000
NLA_TYPE_MASK = 0x3FFF
SO_RCVBUFFORCE = 33

RCVBUF = 4 << 20
RECV_SIZE = 1 << 16
BATCH = 200  # requests per datagram with one ack each: ~200 KiB of acks at most
ACK_TIMEOUT = 10.0

NLMSGHDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid
NLATTR = struct.Struct("=HH")  # len, type
U16 = struct.Struct("=H")
U32 = struct.Struct("=I")
I32 = struct.Struct("=i")


# --- framing ----------------------------------------------------------------------------------


def align(n: int) -> int:
    return (n + 3) & ~3


def iter_messages(data: bytes) -> Iterator[tuple[int, int, int, bytes]]:
    """Yield (type, flags, seq, payload) per message; stop at a malformed length."""
    offset, end, unpack = 0, len(data), NLMSGHDR.unpack_from
    while offset + 16 <= end:  # NLMSGHDR.size
        length, mtype, flags, seq, _pid = unpack(data, offset)
        if length < 16 or offset + length > end:
            return
        yield mtype, flags, seq, data[offset + 16 : offset + length]
        offset += (length + 3) & ~3


def parse_attrs(data: bytes, offset: int = 0) -> dict[int, bytes]:
    """Attributes by type (the last of a repeated type wins); stop at a malformed length."""
    attrs = {}
    end, unpack = len(data), NLATTR.unpack_from
    while offset + 4 <= end:  # NLATTR.size
        length, atype = unpack(data, offset)
        if length < 4 or offset + length > end:
            break
        attrs[atype & NLA_TYPE_MASK] = data[offset + 4 : offset + length]
        offset += (length + 3) & ~3
    return attrs


def attr(atype: int, value: bytes) -> bytes:
    length = NLATTR.size + len(value)
    return NLATTR.pack(length, atype) + value + b"\0" * (align(length) - length)


def message(mtype: int, flags: int, seq: int, body: bytes) -> bytes:
    return NLMSGHDR.pack(NLMSGHDR.size + len(body), mtype, flags, seq, 0) + body


def decode_ack(mtype: int, flags: int, payload: bytes) -> tuple[int, str]:
    """(errno, message) of an NLMSG_ERROR or NLMSG_DONE payload; errno 0 means success."""
    code = -I32.unpack_from(payload)[0]
    if not code:
        return 0, ""
    if not 0 < code < 4096:  # not an errno (-INT_MIN, or a positive "error"): malformed
        raise ValueError(f"netlink ack carries error {-code}, not a negative errno")
    # NLMSG_ERROR: error, the request's header (NLM_F_CAPPED) or whole request, then TLVs.
    # NLMSG_DONE: error, then TLVs.
    tlvs = I32.size
    if mtype == NLMSG_ERROR:
        tlvs += NLMSGHDR.size if flags & NLM_F_CAPPED else align(U32.unpack_from(payload, 4)[0])
    reason = ""
    if flags & NLM_F_ACK_TLVS:
        raw = parse_attrs(payload, tlvs).get(NLMSGERR_ATTR_MSG, b"")
        reason = raw.split(b"\0")[0].decode(errors="replace")
    return code, f"{os.strerror(code)}: {reason}" if reason else os.strerror(code)


# --- the socket -------------------------------------------------------------------------------


def open_socket(netns: str | None, groups: int = 0,
                protocol: int = NETLINK_ROUTE) -> socket.socket:
    """A netlink socket in ``netns`` with a large receive buffer, bound to ``groups``."""
    sock = socket_in_netns(netns, socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                           protocol)
    try:
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RCVBUF)
        except PermissionError:  # without CAP_NET_ADMIN: capped at net.core.rmem_max
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
        sock.bind((0, groups))
    except BaseException:
        sock.close()
        raise
    return sock


class Netlink:
    def __init__(self, netns: str | None = None, protocol: int = NETLINK_ROUTE, groups: int = 0,
                 *, strict: bool = False, timeout: float = ACK_TIMEOUT) -> None:
        self.timeout = timeout
        self._seq = 0
        self.sock = open_socket(netns, groups, protocol)
        options = (NETLINK_CAP_ACK, NETLINK_EXT_ACK) + ((NETLINK_GET_STRICT_CHK,) if strict else ())
        for option in options:
            with contextlib.suppress(OSError):  # older kernels: see the module docstring
                self.sock.setsockopt(SOL_NETLINK, option, 1)
        if groups:
            self.sock.setblocking(False)
        else:
            self.sock.settimeout(timeout)

    @classmethod
    def wrap(cls, sock, timeout: float = ACK_TIMEOUT) -> Netlink:
        """A Netlink around a socket made elsewhere (a test's scripted socket, a fuzzer's)."""
        nl = cls.__new__(cls)
        nl.timeout, nl._seq, nl.sock = timeout, 0, sock
        return nl

    def fileno(self) -> int:
        return self.sock.fileno()

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Netlink:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def next_seq(self) -> int:
        self._seq = self._seq % 0xFFFFFFFF + 1
        return self._seq

    def _recv(self, deadline: float) -> bytes:
        left = deadline - time.monotonic()
        if left <= 0:
            raise OSError(errno.ETIMEDOUT, "netlink: no answer from the kernel in time")
        self.sock.settimeout(min(left, self.timeout))
        try:
            return self.sock.recv(RECV_SIZE)
        except TimeoutError:
            raise OSError(errno.ETIMEDOUT, "netlink: no answer from the kernel in time") from None

    def answers(self, seq: int) -> Iterator[tuple[int, int, bytes]]:
        """(type, flags, payload) of the answers to ``seq``, through its ack or NLMSG_DONE."""
        deadline = time.monotonic() + self.timeout
        while True:
            for mtype, flags, mseq, payload in iter_messages(self._recv(deadline)):
                if mseq != seq:
                    continue  # left over from an abandoned request
                yield mtype, flags, payload
                if mtype in (NLMSG_ERROR, NLMSG_DONE):
                    return

    def send_request(self, seq: int, data: bytes) -> tuple[int, str]:
        """Send one encoded request (with NLM_F_ACK); its (errno, message)."""
        self.sock.send(data)
        for mtype, flags, payload in self.answers(seq):
            if mtype in (NLMSG_ERROR, NLMSG_DONE):
                return decode_ack(mtype, flags, payload)
        return 0, ""

    def request(self, mtype: int, flags: int, body: bytes) -> tuple[int, str]:
        seq = self.next_seq()
        return self.send_request(seq, message(mtype, flags | NLM_F_REQUEST | NLM_F_ACK, seq, body))

    def get(self, mtype: int, body: bytes, flags: int = 0) -> list[tuple[int, bytes]]:
        """A request answered by messages (and an ack); OSError on an error."""
        seq = self.next_seq()
        self.sock.send(message(mtype, flags | NLM_F_REQUEST | NLM_F_ACK, seq, body))
        out = []
        for atype, aflags, payload in self.answers(seq):
            if atype in (NLMSG_ERROR, NLMSG_DONE):
                code, text = decode_ack(atype, aflags, payload)
                if code:
                    raise OSError(code, text)
                return out
            out.append((atype, payload))
        return out

    def dump(self, mtype: int, body: bytes) -> Iterator[tuple[int, bytes]]:
        """Send one dump request; yield (type, payload) of its answers; OSError on an error."""
        seq = self.next_seq()
        self.sock.send(message(mtype, NLM_F_REQUEST | NLM_F_DUMP, seq, body))
        for atype, aflags, payload in self.answers(seq):
            if atype in (NLMSG_DONE, NLMSG_ERROR):
                code, text = decode_ack(atype, aflags, payload)
                if code:
                    raise OSError(code, text)
                return
            yield atype, payload

    def exchange(self, requests: list[tuple[int, bytes]]) -> dict[int, tuple[int, str]]:
        """Send (seq, request) pairs BATCH to a datagram, in order; (errno, message) per seq.

        The kernel handles the requests of a datagram in order and queues one ack each before
        send() returns; acks are matched by sequence number."""
        acks: dict[int, tuple[int, str]] = {}
        for start in range(0, len(requests), BATCH):
            batch = requests[start:start + BATCH]
            pending = {seq for seq, _data in batch}
            self.sock.send(b"".join(data for _seq, data in batch))
            deadline = time.monotonic() + self.timeout
            while pending:
                for mtype, flags, seq, payload in iter_messages(self._recv(deadline)):
                    if mtype == NLMSG_ERROR and seq in pending:
                        pending.discard(seq)
                        acks[seq] = decode_ack(mtype, flags, payload)
        return acks

    def read(self) -> Iterator[tuple[int, int, int, bytes]] | None:
        """One pending datagram's messages (notifications), or None when nothing is pending;
        OSError ENOBUFS when the kernel dropped some (the caller resyncs)."""
        try:
            data = self.sock.recv(RECV_SIZE)
        except BlockingIOError:
            return None
        return iter_messages(data)


def dump_request(sock: socket.socket, seq: int, msg_type: int,
                 body: bytes) -> Iterator[tuple[int, bytes]]:
    """A dump on a bare socket (tests, probes that hold one); see ``Netlink.dump``."""
    sock.send(message(msg_type, NLM_F_REQUEST | NLM_F_DUMP, seq, body))
    while True:
        for mtype, flags, mseq, payload in iter_messages(sock.recv(RECV_SIZE)):
            if mseq != seq:
                continue
            if mtype in (NLMSG_DONE, NLMSG_ERROR):
                code, text = decode_ack(mtype, flags, payload)
                if code:
                    raise OSError(code, text)
                return
            yield mtype, payload
