"""The client <-> daemon session protocol of libspines 5.7, byte-compatible.  Pure: bytes in,
values out (no sockets, no clock).

Spec: Spines 5.7's ``libspines/spines_lib.c`` (the client side), ``daemon/session.c`` and
``daemon/session.h`` (the daemon side, command type numbers), ``daemon/net_types.h`` (the
``udp_header`` struct and the endian word), ``libspines/spines_lib.h`` (``spines_trace``,
``MAX_SPINES_CLIENT_MSG``); notes in ``../shared/libspines-protocol.md``.  Our code, our words.

Byte order.  Every integer travels in the *sender's* host order; the receiver flips only when the
peer's endian word differs from its own.  Each side announces its order once, with a 4-byte
endian word: 0x80000080 on a little-endian host, 0 on a big-endian one (the word reads the same
in both orders).  ``order`` below is a ``struct`` prefix, ``"<"`` or ``">"``; ``NATIVE`` is this
host's.  Bodies that libspines copies without flipping (the ID reply, the trace reply, a
delivered payload) are written in the sender's order too, as Spines does.

Handshake (one ``spines_socket()``): the client connects the control channel; the daemon writes a
4-byte opaque token there.  The client connects the data channel; the daemon writes its endian
word; the client writes its endian word, the token (echoed unchanged) and a LINKS frame; it then
reads the daemon's endian word and an ID frame.  Entry points: ``endian_word(order)``,
``order_of(word)``, ``TOKEN_LEN``.

Frames (both directions, both channels): an int32 length of what follows, a 28-byte
``udp_header``, a body::

    0       4       8       12      14      16      18      20      22  23  24  25  26  28
    |source |dest   |reserved|s_port|d_port |len    |seq_no |sess_id|fn |fi |ttl|rt |pad|

``source``/``dest`` are IPv4 addresses as integers, ``len`` the body length, ``fn``/``fi`` the
fragment count and index, ``rt`` the routing bits (protocol >> 8 & 0xF).  A frame whose header
has ``len``, ``source`` and ``dest`` all zero is a *command*: an int32 type, then for most types
a second 28-byte header ("cmd") carrying the arguments.  Anything else from a client is a data
message (``spines_sendto``).  libspines leaves the header fields it does not use uninitialised,
so decoders read only the fields the protocol defines and ignore the rest; they are strict about
structure: the length must be 28..50,028 (``MAX_FRAME``), each command body exactly its size, a
data header's ``len`` exactly its body.  Any deviation raises ``DecodeError`` whose ``reason``
is a counter key (``length``, ``command``, ``short``, ``long``, ``len``, ``endian``, ``trace``).

Data model (one codec class per frame, symmetric ``encode(order)`` / ``decode``):
    client -> daemon   ``SendTo`` (data); commands, registered by type number (``COMMANDS``):
                       Bind 1, Connect 2, Listen 3, Accept 4, Join 5, Leave 6, Links 7,
                       SetLink 9, FloodSend 10, FloodRecv 11, AddNeighbor 12, Loop 13,
                       Traceroute 21, EDistance 22, Membership 23, Delivery 24, Priority 25,
                       Expiration 26, DisjointPaths 27, SetDissem 28; spines-kr's Abort 40
                       (a stream's RST; libspines has none); a connected stream's data
                       frames (``stream_data``/``stream_payload``: ``rel_udp_pkt_add`` first)
    daemon -> client   ``IdReply`` (data channel, once, after LINKS), ``Received`` (a delivered
                       message), ``TraceReply`` (control channel; ``spines_trace``: 1,032 bytes
                       with a 64-bit ``long``, 772 with a 32-bit one); for streams the
                       connect request (``stream_request``, 24 bytes), the 16-byte hello
                       (``stream_hello``), raw bytes, and spines-kr's stream-end notice on the
                       control channel (``stream_end``, ``stream_end_code``)
Entry points: ``next_frame(buf, pos, order)`` splits a stream (None until a whole frame is
there); ``decode_request(header, body, order)`` reads a client frame; ``Received.decode``,
``IdReply.decode``, ``TraceReply.decode`` read daemon frames.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import ClassVar

LITTLE, BIG = "<", ">"
ORDERS = (LITTLE, BIG)
NATIVE = LITTLE if struct.pack("=H", 1) == b"\x01\x00" else BIG
ENDIAN_TYPE = 0x80000080  # the bits of the endian word (net_types.h)
TOKEN_LEN = 4

HEADER_LEN = 28  # sizeof(udp_header)
MAX_MESSAGE = 50_000  # MAX_SPINES_CLIENT_MSG
MAX_FRAME = HEADER_LEN + MAX_MESSAGE  # the largest length field a daemon accepts
MAX_COUNT = 64  # entries of a spines_trace
LONG_SIZE = struct.calcsize("l")  # spines_trace's address[] are C longs
TTL_MAX = 255  # SPINES_TTL_MAX

# Command types (daemon/session.h)
BIND, CONNECT, LISTEN, ACCEPT, JOIN, LEAVE, LINKS = 1, 2, 3, 4, 5, 6, 7
REL_JOIN, SETLINK, FLOOD_SEND, FLOOD_RECV, ADD_NEIGHBOR, LOOP = 8, 9, 10, 11, 12, 13
TRACEROUTE, EDISTANCE, MEMBERSHIP, DELIVERY = 21, 22, 23, 24
PRIORITY, EXPIRATION, DISJOINT_PATHS, SETDISSEM = 25, 26, 27, 28

_LEN = {o: struct.Struct(o + "i") for o in ORDERS}
_HDR_FMT = "IIIHHHHHBBBB2x"
_HDR = {o: struct.Struct(o + _HDR_FMT) for o in ORDERS}
_HEAD = {o: struct.Struct(o + "i" + _HDR_FMT) for o in ORDERS}  # length + header: 32 bytes
_TYPE = {o: struct.Struct(o + "i") for o in ORDERS}
_ID = {o: struct.Struct(o + "III") for o in ORDERS}
_I32 = {o: struct.Struct(o + "i") for o in ORDERS}

assert _HDR[LITTLE].size == HEADER_LEN


class DecodeError(ValueError):
    """A frame that is not valid libspines protocol; ``reason`` is a counter key."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


# --- handshake ---------------------------------------------------------------------------------


def endian_word(order: str = NATIVE) -> bytes:
    """The 4 bytes a host of byte order ``order`` announces itself with (``Set_endian(0)``)."""
    return b"\x80\x00\x00\x80" if order == LITTLE else b"\x00\x00\x00\x00"


def order_of(word: bytes) -> str:
    """The byte order an endian word announces; DecodeError for anything but the two words."""
    if len(word) != 4:
        raise DecodeError("endian", f"endian word of {len(word)} bytes")
    value = int.from_bytes(word, "little")
    if value == ENDIAN_TYPE:
        return LITTLE
    if value == 0:
        return BIG
    raise DecodeError("endian", f"endian word {word.hex()} is neither 80000080 nor 00000000")


def _addr(a: int) -> str:
    return ".".join(str(a >> s & 0xFF) for s in (24, 16, 8, 0))


# --- frames ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Header:
    """One ``udp_header`` (net_types.h)."""

    source: int = 0
    dest: int = 0
    reserved: int = 0
    source_port: int = 0
    dest_port: int = 0
    len: int = 0
    seq_no: int = 0
    sess_id: int = 0
    frag_num: int = 0
    frag_idx: int = 0
    ttl: int = 0
    routing: int = 0

    @property
    def is_command(self) -> bool:
        return self.len == 0 and self.source == 0 and self.dest == 0


def frame(order: str, header: tuple, body: bytes = b"") -> bytes:
    """One frame: the length, the header (a tuple in ``Header``'s field order), the body."""
    return _HEAD[order].pack(HEADER_LEN + len(body), *header) + body


def next_frame(buf, pos: int, order: str, limit: int = MAX_FRAME) -> tuple[Header, int, int] | None:
    """The frame starting at ``buf[pos]``: (header, body start, end), or None while it is not
    all there.  DecodeError("length") when its length is outside 28..50,028 (``limit``; a
    stream session's frames may be 8 bytes longer, ``MAX_STREAM_FRAME``) (a client that sent
    it cannot be followed any further: its stream is out of step)."""
    if len(buf) - pos < 4:
        return None
    (length,) = _LEN[order].unpack_from(buf, pos)
    if not HEADER_LEN <= length <= limit:
        raise DecodeError("length", f"frame length {length} outside {HEADER_LEN}..{limit}")
    end = pos + 4 + length
    if end > len(buf):
        return None
    return Header(*_HDR[order].unpack_from(buf, pos + 4)), pos + 4 + HEADER_LEN, end


# --- client -> daemon: data --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SendTo:
    """``spines_sendto``: a message for (dest, dest_port).  The daemon stamps source, source
    port, sequence and session; libspines sends ``source`` 0 and leaves the rest unset."""

    dest: int
    dest_port: int
    payload: bytes
    ttl: int = TTL_MAX
    routing: int = 0

    def encode(self, order: str = NATIVE) -> bytes:
        return frame(order, (0, self.dest, 0, 0, self.dest_port, len(self.payload), 0, 0, 0, 0,
                             self.ttl, self.routing), self.payload)

    @classmethod
    def decode(cls, header: Header, body: bytes) -> SendTo:
        if header.len != len(body):
            raise DecodeError("len", f"data header says {header.len} bytes, the frame holds "
                                     f"{len(body)}")
        return cls(header.dest, header.dest_port, bytes(body), header.ttl, header.routing)


# --- client -> daemon: commands ----------------------------------------------------------------


class Command:
    """A command frame: the zero header, the int32 type, then ``args`` (``SIZE`` bytes, or at
    least ``SIZE`` when ``VARIABLE``)."""

    TYPE: ClassVar[int]
    SIZE: ClassVar[int]
    VARIABLE: ClassVar[bool] = False
    REGISTRY: ClassVar[dict[int, type[Command]]] = {}

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        if "TYPE" in cls.__dict__:  # not the abstract helpers (_ToAddress)
            Command.REGISTRY[cls.TYPE] = cls

    def args(self, order: str) -> bytes:
        raise NotImplementedError

    @classmethod
    def from_args(cls, args: bytes, order: str) -> Command:
        raise NotImplementedError

    def encode(self, order: str = NATIVE) -> bytes:
        return frame(order, (0,) * 12, _TYPE[order].pack(self.TYPE) + self.args(order))


def _cmd(order: str, source: int = 0, dest: int = 0, dest_port: int = 0, length: int = 0) -> bytes:
    """The 28-byte "cmd" header of a command (only these fields are set by libspines)."""
    return _HDR[order].pack(source, dest, 0, 0, dest_port, length, 0, 0, 0, 0, 0, 0)


def _uncmd(args: bytes, order: str) -> Header:
    return Header(*_HDR[order].unpack_from(args, 0))


class _ToAddress(Command):
    """Commands whose one argument is ``cmd.dest`` (an address, a group, a flag)."""

    SIZE = HEADER_LEN
    FIELD: ClassVar[str]

    def args(self, order: str) -> bytes:
        return _cmd(order, dest=getattr(self, self.FIELD) & 0xFFFFFFFF)

    @classmethod
    def from_args(cls, args: bytes, order: str) -> Command:
        return cls(_uncmd(args, order).dest)


@dataclass(frozen=True, slots=True)
class Links(Command):
    """``spines_socket``'s first frame: the protocol choices (link = protocol & 0xF, routing =
    protocol & 0xF00, session = protocol & 0xF000, unshifted), a random number, and the UDP
    return address and port of a UDP_CONNECT session (-1, -1 otherwise)."""

    TYPE = LINKS
    SIZE = 24
    link: int = 0
    routing: int = 0
    session: int = 0
    rnd: int = 0
    udp_addr: int = -1
    udp_port: int = -1

    @classmethod
    def for_protocol(cls, protocol: int, rnd: int = 0) -> Links:
        return cls(protocol & 0xF, protocol & 0xF00, protocol & 0xF000, rnd)

    def args(self, order: str) -> bytes:
        return struct.pack(order + "6i", self.link, self.routing, self.session, self.rnd,
                           self.udp_addr, self.udp_port)

    @classmethod
    def from_args(cls, args: bytes, order: str) -> Links:
        return cls(*struct.unpack(order + "6i", args))


@dataclass(frozen=True, slots=True)
class Bind(Command):
    TYPE = BIND
    SIZE = HEADER_LEN
    port: int

    def args(self, order: str) -> bytes:
        return _cmd(order, dest_port=self.port)

    @classmethod
    def from_args(cls, args: bytes, order: str) -> Bind:
        return cls(_uncmd(args, order).dest_port)


@dataclass(frozen=True, slots=True)
class Connect(Command):
    """A stream session's connect (cmd.dest, cmd.dest_port)."""

    TYPE = CONNECT
    SIZE = HEADER_LEN
    address: int
    port: int

    def args(self, order: str) -> bytes:
        return _cmd(order, dest=self.address, dest_port=self.port)

    @classmethod
    def from_args(cls, args: bytes, order: str) -> Connect:
        h = _uncmd(args, order)
        return cls(h.dest, h.dest_port)


@dataclass(frozen=True, slots=True)
class Listen(Command):
    TYPE = LISTEN
    SIZE = HEADER_LEN

    def args(self, order: str) -> bytes:
        return _cmd(order)

    @classmethod
    def from_args(cls, args: bytes, order: str) -> Listen:
        return cls()


@dataclass(frozen=True, slots=True)
class Accept(Command):
    """A stream session's accept: the connecting side (cmd.dest, cmd.dest_port) and the
    connect request it sent (cmd.len bytes)."""

    TYPE = ACCEPT
    SIZE = HEADER_LEN
    VARIABLE = True
    address: int
    port: int
    data: bytes = b""

    def args(self, order: str) -> bytes:
        return _cmd(order, dest=self.address, dest_port=self.port, length=len(self.data)) + self.data

    @classmethod
    def from_args(cls, args: bytes, order: str) -> Accept:
        h = _uncmd(args, order)
        data = bytes(args[HEADER_LEN:])
        if h.len != len(data):
            raise DecodeError("len", f"accept says {h.len} bytes of request, carries {len(data)}")
        return cls(h.dest, h.dest_port, data)


@dataclass(frozen=True, slots=True)
class Join(_ToAddress):
    TYPE = JOIN
    FIELD = "group"
    group: int


@dataclass(frozen=True, slots=True)
class Leave(_ToAddress):
    TYPE = LEAVE
    FIELD = "group"
    group: int


@dataclass(frozen=True, slots=True)
class Loop(_ToAddress):
    """SPINES_MULTICAST_LOOP: libspines sends the option's first byte (a C char) in cmd.dest."""

    TYPE = LOOP
    FIELD = "value"
    value: int

    @property
    def on(self) -> bool:
        return self.value & 0xFF != 0


@dataclass(frozen=True, slots=True)
class AddNeighbor(_ToAddress):
    TYPE = ADD_NEIGHBOR
    FIELD = "address"
    address: int


@dataclass(frozen=True, slots=True)
class Traceroute(_ToAddress):
    TYPE = TRACEROUTE
    FIELD = "dest"
    dest: int


@dataclass(frozen=True, slots=True)
class EDistance(_ToAddress):
    TYPE = EDISTANCE
    FIELD = "group"
    group: int


@dataclass(frozen=True, slots=True)
class Membership(_ToAddress):
    TYPE = MEMBERSHIP
    FIELD = "group"
    group: int


@dataclass(frozen=True, slots=True)
class Delivery(_ToAddress):
    """SPINES_SET_DELIVERY: a full queue towards the client drops (1) or closes (2, 3)."""

    TYPE = DELIVERY
    FIELD = "flag"
    flag: int


@dataclass(frozen=True, slots=True)
class Priority(_ToAddress):
    TYPE = PRIORITY
    FIELD = "level"
    level: int


@dataclass(frozen=True, slots=True)
class DisjointPaths(_ToAddress):
    TYPE = DISJOINT_PATHS
    FIELD = "paths"
    paths: int


@dataclass(frozen=True, slots=True)
class Expiration(Command):
    """SPINES_SET_EXPIRATION: seconds in cmd.source, microseconds in cmd.dest."""

    TYPE = EXPIRATION
    SIZE = HEADER_LEN
    sec: int
    usec: int

    def args(self, order: str) -> bytes:
        return _cmd(order, source=self.sec, dest=self.usec)

    @classmethod
    def from_args(cls, args: bytes, order: str) -> Expiration:
        h = _uncmd(args, order)
        return cls(h.source, h.dest)


@dataclass(frozen=True, slots=True)
class SetLink(Command):
    """``spines_setlink``: the leg from interface ``remote`` (cmd.source) to ``local``
    (cmd.dest), then bandwidth (bits/s), latency (ms), loss and burst (1,000,000 = 100 %)."""

    TYPE = SETLINK
    SIZE = HEADER_LEN + 16
    remote: int
    local: int
    bandwidth: int
    latency: int
    loss: int
    burst: int

    def args(self, order: str) -> bytes:
        return _cmd(order, source=self.remote, dest=self.local, length=16) + struct.pack(
            order + "4i", self.bandwidth, self.latency, self.loss, self.burst)

    @classmethod
    def from_args(cls, args: bytes, order: str) -> SetLink:
        h = _uncmd(args, order)
        return cls(h.source, h.dest, *struct.unpack_from(order + "4i", args, HEADER_LEN))


@dataclass(frozen=True, slots=True)
class SetDissem(Command):
    """``spines_setdissemination``: paths (0 floods) and a multicast overwrite address."""

    TYPE = SETDISSEM
    SIZE = HEADER_LEN + 8
    paths: int
    overwrite_ip: int

    def args(self, order: str) -> bytes:
        return _cmd(order, length=8) + struct.pack(order + "2i", self.paths, self.overwrite_ip)

    @classmethod
    def from_args(cls, args: bytes, order: str) -> SetDissem:
        return cls(*struct.unpack_from(order + "2i", args, HEADER_LEN))


@dataclass(frozen=True, slots=True)
class FloodSend(Command):
    """``spines_flood_send`` (a daemon-side flooder): five int32, no cmd header."""

    TYPE = FLOOD_SEND
    SIZE = 20
    dest: int
    port: int
    rate: int
    size: int
    count: int

    def args(self, order: str) -> bytes:
        return struct.pack(order + "5i", self.dest, self.port, self.rate, self.size, self.count)

    @classmethod
    def from_args(cls, args: bytes, order: str) -> FloodSend:
        return cls(*struct.unpack(order + "5i", args))


@dataclass(frozen=True, slots=True)
class FloodRecv(Command):
    """``spines_flood_recv``: an int32 name length, then the name of a file to log into."""

    TYPE = FLOOD_RECV
    SIZE = 4
    VARIABLE = True
    name: bytes

    def args(self, order: str) -> bytes:
        return _I32[order].pack(len(self.name)) + self.name

    @classmethod
    def from_args(cls, args: bytes, order: str) -> FloodRecv:
        (n,) = _I32[order].unpack_from(args, 0)
        if n != len(args) - 4:
            raise DecodeError("len", f"flood_recv says a name of {n} bytes, carries "
                                     f"{len(args) - 4}")
        return cls(bytes(args[4:]))


COMMANDS = Command.REGISTRY


def decode_command(body: bytes, order: str) -> Command:
    """The command in a command frame's body (type and arguments)."""
    if len(body) < 4:
        raise DecodeError("short", f"command frame of {len(body)} bytes has no type")
    (ctype,) = _TYPE[order].unpack_from(body, 0)
    cls = COMMANDS.get(ctype)
    if cls is None:
        raise DecodeError("command", f"unknown command type {ctype}")
    args = body[4:]
    if len(args) < cls.SIZE or (len(args) > cls.SIZE and not cls.VARIABLE):
        raise DecodeError("short" if len(args) < cls.SIZE else "long",
                          f"{cls.__name__} arguments of {len(args)} bytes, expected {cls.SIZE}")
    return cls.from_args(args, order)


def decode_request(header: Header, body: bytes, order: str) -> Command | SendTo:
    """A frame from a client: a command (zero len, source and dest) or data."""
    if header.is_command:
        return decode_command(body, order)
    return SendTo.decode(header, body)


# --- stream sessions (CONNECT / LISTEN / ACCEPT) ------------------------------------------------
#
# libspines 5.7's stream wire (spines_lib.c spines_connect/listen/accept/send/recv;
# daemon/reliable_session.c): a stream session's data frames carry an 8-byte ``rel_udp_pkt_add``
# (type: the sender's endian word, data_len, ack_len 0) before the bytes, and the header's
# ``len`` counts it; towards the client a connected stream is raw bytes (``spines_recv`` is a
# plain ``recv``), opened by one 16-byte ``ses_hello_packet`` that connect and accept read and
# discard.  A connect request reaches the listening session as a message of 24 bytes
# (rel_udp_pkt_add + ses_hello_packet) from the connecting end; ``spines_accept`` hands those
# 24 bytes back in the ACCEPT command of a new session.

REL_ADD_LEN = 8  # sizeof(rel_udp_pkt_add)
STREAM_HELLO_LEN = 16  # sizeof(ses_hello_packet)
_REL_ADD = {o: struct.Struct(o + "IHH") for o in ORDERS}
_SES_HELLO = {o: struct.Struct(o + "IIiHH") for o in ORDERS}
STREAM_REQUEST_LEN = REL_ADD_LEN + STREAM_HELLO_LEN
MAX_STREAM_FRAME = MAX_FRAME + REL_ADD_LEN  # spines_send: 50,000 bytes and rel_udp_pkt_add


def stream_data(data: bytes, order: str = NATIVE) -> bytes:
    """One ``spines_send`` frame of a connected stream session."""
    return frame(order, (0, 0, 0, 0, 0, len(data) + REL_ADD_LEN, 0, 0, 0, 0, 0, 0),
                 _REL_ADD[order].pack(ENDIAN_TYPE if order == LITTLE else 0,
                                      len(data) & 0xFFFF, 0) + data)


def stream_payload(body: bytes) -> bytes:
    """The bytes of a stream session's data frame (its ``rel_udp_pkt_add`` checked)."""
    if len(body) < REL_ADD_LEN:
        raise DecodeError("short", f"stream data frame of {len(body)} bytes (no rel_udp_pkt_add)")
    data = body[REL_ADD_LEN:]
    order = order_of(bytes(body[:4]))
    (_t, data_len, ack_len) = _REL_ADD[order].unpack_from(body, 0)
    if data_len != len(data) & 0xFFFF or ack_len:
        raise DecodeError("len", f"stream data frame says {data_len} bytes (+{ack_len} of "
                                 f"acknowledgements), holds {len(data)}")
    return bytes(data)


def stream_hello(conn: int, my_port: int, orig_port: int, order: str = NATIVE) -> bytes:
    """The 16-byte ``ses_hello_packet`` a connected stream client reads first."""
    return _SES_HELLO[order].pack(0, 0, _signed(conn), my_port & 0xFFFF, orig_port & 0xFFFF)


def stream_request(conn: int, port: int, order: str = NATIVE) -> bytes:
    """What a listening session receives for a connect request (the 24 bytes it hands back in
    ACCEPT): rel_udp_pkt_add (this host's endian word, 16, 0) and the hello naming the
    connection (``my_sess_id``) and the connecting port."""
    return _REL_ADD[order].pack(ENDIAN_TYPE if order == LITTLE else 0, STREAM_HELLO_LEN, 0) + \
        stream_hello(conn, port, port, order)


def stream_request_conn(data: bytes) -> int:
    """The connection an ACCEPT's request names (DecodeError when it is not one of ours)."""
    if len(data) != STREAM_REQUEST_LEN:
        raise DecodeError("len", f"accept request of {len(data)} bytes, expected "
                                 f"{STREAM_REQUEST_LEN}")
    order = order_of(bytes(data[:4]))
    _t, _seq, conn, _my, _orig = _SES_HELLO[order].unpack_from(data, REL_ADD_LEN)
    return conn & 0xFFFFFFFF


def _signed(v: int) -> int:
    v &= 0xFFFFFFFF
    return v - (1 << 32) if v & 0x80000000 else v


# A spines-kr extension (libspines has neither): how a stream ended, told once on the
# session's control channel just before the daemon ends the data channel (its EOF), so that a
# client can tell an orderly end of stream (STREAM_CLOSED) from an abort, a refusal or a dead
# peer; and the ABORT command (an RST instead of a FIN).  A libspines program never reads the
# one nor sends the other.
STREAM_END_TYPE = 0x53454E44  # "SEND" in the header's seq_no and sess_id: not a trace reply
STREAM_CLOSED, STREAM_REFUSED, STREAM_RESET, STREAM_TIMEOUT, STREAM_ABORTED = 0, 1, 2, 3, 4
STREAM_ERRORS = {"refused": STREAM_REFUSED, "reset": STREAM_RESET, "timeout": STREAM_TIMEOUT,
                 "aborted": STREAM_ABORTED}
ABORT = 40


def stream_end(code: int, order: str = NATIVE) -> bytes:
    return frame(order, (0, 0, 0, 0, 0, 4, STREAM_END_TYPE & 0xFFFF, STREAM_END_TYPE >> 16,
                         0, 0, 0, 0), _I32[order].pack(code))


def stream_end_code(header: Header, body: bytes, order: str) -> int | None:
    """The code of a stream-end notice, None for any other frame."""
    if header.seq_no != STREAM_END_TYPE & 0xFFFF or header.sess_id != STREAM_END_TYPE >> 16 \
            or len(body) != 4:
        return None
    return _I32[order].unpack(body)[0]


@dataclass(frozen=True, slots=True)
class Abort(Command):
    """spines-kr's stream abort (not in libspines): RST the connection, close the session."""

    TYPE = ABORT
    SIZE = HEADER_LEN

    def args(self, order: str) -> bytes:
        return _cmd(order)

    @classmethod
    def from_args(cls, args: bytes, order: str) -> Abort:
        return cls()


# --- daemon -> client ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class IdReply:
    """The session's identity, once after LINKS: session id, virtual port, daemon address."""

    sess_id: int
    port: int
    address: int

    def encode(self, order: str = NATIVE) -> bytes:
        return frame(order, (0, 0, 0, 0, 0, 12, 0, 0, 1, 0, 0, 0),
                     _ID[order].pack(self.sess_id & 0xFFFFFFFF, self.port, self.address))

    @classmethod
    def decode(cls, header: Header, body: bytes, order: str) -> IdReply:
        if len(body) != 12:
            raise DecodeError("len", f"ID reply of {len(body)} bytes, expected 12")
        return cls(*_ID[order].unpack(body))


@dataclass(frozen=True, slots=True)
class Received:
    """A message delivered to a session: who sent it (source, source_port), where to (dest: a
    node or a group, dest_port), the payload."""

    source: int
    source_port: int
    dest: int
    dest_port: int
    payload: bytes
    ttl: int = 0
    routing: int = 0
    seq_no: int = 0
    sess_id: int = 0

    def encode(self, order: str = NATIVE) -> bytes:
        return frame(order, (self.source, self.dest, 0, self.source_port, self.dest_port,
                             len(self.payload), self.seq_no, self.sess_id, 1, 0, self.ttl,
                             self.routing), self.payload)

    @classmethod
    def decode(cls, header: Header, body: bytes) -> Received:
        if header.len != len(body):
            raise DecodeError("len", f"data header says {header.len} bytes, the frame holds "
                                     f"{len(body)}")
        return cls(header.source, header.source_port, header.dest, header.dest_port,
                   bytes(body), header.ttl, header.routing, header.seq_no, header.sess_id)


def trace_size(long_size: int = LONG_SIZE) -> int:
    """sizeof(spines_trace): int count; long address[64]; int distance[64]; int cost[64]."""
    return struct.calcsize(_trace_format(long_size))


def _trace_format(long_size: int) -> str:
    if long_size == 8:  # LP64: count, 4 bytes of padding, 8-byte longs
        return f"i4x{MAX_COUNT}Q{MAX_COUNT}i{MAX_COUNT}i"
    if long_size == 4:  # ILP32
        return f"i{MAX_COUNT}I{MAX_COUNT}i{MAX_COUNT}i"
    raise ValueError(f"long of {long_size} bytes")


@dataclass(frozen=True, slots=True)
class TraceReply:
    """The answer to TRACEROUTE, EDISTANCE or MEMBERSHIP, on the control channel: up to 64
    (address, distance, cost) entries.  The daemon stamps its address and the session's port in
    the header (source = dest, source_port = dest_port)."""

    entries: tuple[tuple[int, int, int], ...] = field(default_factory=tuple)
    address: int = 0
    port: int = 0

    def encode(self, order: str = NATIVE, long_size: int = LONG_SIZE) -> bytes:
        entries = list(self.entries)[:MAX_COUNT]
        pad = [0] * (MAX_COUNT - len(entries))
        body = struct.pack(order + _trace_format(long_size), len(entries),
                           *[a & 0xFFFFFFFF for a, _, _ in entries], *pad,
                           *[d for _, d, _ in entries], *pad, *[c for _, _, c in entries], *pad)
        return frame(order, (self.address, self.address, 0, self.port, self.port, len(body),
                             0, 0, 0, 0, 0, 0), body)

    @classmethod
    def decode(cls, header: Header, body: bytes, order: str) -> TraceReply:
        sizes = {trace_size(n): n for n in (8, 4)}
        if len(body) not in sizes:
            raise DecodeError("trace", f"trace reply of {len(body)} bytes, expected "
                                       f"{' or '.join(map(str, sizes))}")
        values = struct.unpack(order + _trace_format(sizes[len(body)]), body)
        count = values[0]
        if not 0 <= count <= MAX_COUNT:
            raise DecodeError("trace", f"trace count {count} outside 0..{MAX_COUNT}")
        addrs = values[1:1 + MAX_COUNT]
        dists = values[1 + MAX_COUNT:1 + 2 * MAX_COUNT]
        costs = values[1 + 2 * MAX_COUNT:]
        return cls(tuple((addrs[i] & 0xFFFFFFFF, dists[i], costs[i]) for i in range(count)),
                   header.source, header.source_port)

    def describe(self) -> list[str]:
        return [f"{_addr(a)} distance {d} cost {c}" for a, d, c in self.entries]
