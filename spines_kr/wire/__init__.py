"""Packet formats (pure).  See ``packets`` for the version-1 layout."""

from spines_kr.wire.packets import (  # noqa: F401
    LSA, DecodeError, Header, Hello, LinkStateAck, LinkStateUpdate, decode, encode,
)
