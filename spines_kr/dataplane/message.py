"""What crosses the data plane: a client message, and the two interfaces around it.

Data model:
    Message(src, src_port, dst, dst_port, ttl, link, routing, payload, session)
        one client message (at most MAX_MESSAGE bytes of payload; an empty payload is a real
        message, Spines' end-of-stream mark).  ``src``/``dst`` are IPv4 addresses as integers:
        ``dst`` is a node's logical ID (unicast), a class D group (multicast) or a class E group
        (anycast).  ``link`` is Spines' link protocol (UDP_LINKS 0, RELIABLE_LINKS 1,
        SOFT_REALTIME_LINKS 2, INTRUSION_TOL_LINKS 8), ``routing`` its routing bits >> 8
        (MIN_WEIGHT_ROUTING 0, ...).  ``session`` is the id of the local session it came from
        (0: not from a session of this node); it lets delivery skip the sender's own session
        when its loop option is off.  ``link | HOST_PACKET``: the payload is an IP packet of a
        LAN host (multicast without kernel multicast routing), delivered onto member LANs by
        ``dataplane.hostmcast``, never to sessions.  ``link | STREAM_SEGMENT``: the payload is a
        segment of a reliable stream (``wire.stream``) between two daemons, handed to
        ``dataplane.streams``, never to a client as such.

The two halves of the data plane meet here:
    Forwarding (``dataplane.forward``): ``send(message)`` takes a message from a local session
        (or from a LAN host, for multicast without kernel multicast routing) and carries it to
        its destination nodes; messages that arrive for this node are handed to
        ``Sessions.deliver``.
    Sessions (``dataplane.sessions``): the libspines sessions of this daemon; ``deliver(message)
        -> int`` gives a message to the local sessions it is for (unicast: the session bound to
        ``dst_port``; multicast: every session joined to ``dst``; anycast: one of them) and says
        how many took it; ``groups()`` is the set of groups local sessions joined.

Constants: Spines' values (libspines/spines_lib.h, 5.7).
"""

from __future__ import annotations

from dataclasses import dataclass

MAX_MESSAGE = 50_000  # MAX_SPINES_CLIENT_MSG

# link protocols (protocol & 0xF)
UDP_LINKS, RELIABLE_LINKS, SOFT_REALTIME_LINKS, INTRUSION_TOL_LINKS = 0, 1, 2, 8
HOST_PACKET = 0x80  # with ``link``: the payload is a LAN host's IP packet (dataplane.hostmcast)
STREAM_SEGMENT = 0x40  # with ``link``: the payload is a stream segment (dataplane.streams)
UDP_CONNECT = 0x10
# routing ((protocol & 0xF00) >> 8)
MIN_WEIGHT_ROUTING, IT_PRIORITY_ROUTING, IT_RELIABLE_ROUTING, SOURCE_BASED_ROUTING = 0, 1, 2, 3
# sessions (protocol & 0xF000)
RELIABLE_STREAM_SESSION = 0x0000
RELIABLE_DGRAM_SESSION_NO_BACKPRESSURE = 0x1000
RELIABLE_DGRAM_SESSION_WITH_BACKPRESSURE = 0x2000


def is_multicast(addr: int) -> bool:
    return (addr & 0xF0000000) == 0xE0000000


def is_anycast(addr: int) -> bool:
    return (addr & 0xF0000000) == 0xF0000000


@dataclass(slots=True)
class Message:
    src: int
    src_port: int
    dst: int
    dst_port: int
    payload: bytes
    ttl: int = 255
    link: int = UDP_LINKS
    routing: int = MIN_WEIGHT_ROUTING
    session: int = 0

    @property
    def group(self) -> bool:
        return is_multicast(self.dst) or is_anycast(self.dst)
