"""The interface table: this namespace's links and IPv4 addresses, kept current from netlink.

Data model (``Interfaces``):
    names       ifindex -> device name
    up          ifindex -> administratively up with carrier (IFF_UP and IFF_LOWER_UP)
    mtu         ifindex -> the device's MTU
    addresses   sorted (ifindex, address, prefixlen) of every local IPv4 address
``read()`` turns the pending kernel notifications into one ``Changes`` value: links whose state
or name moved, whether addresses moved, deleted routes (dst, table, protocol) for the kernel
sync to judge, and whether the event socket overflowed (then everything was re-read).

Questions it answers: ``local_end(peer)`` -- the (ifindex, local address) whose connected subnet
holds a neighbor's address, or why there is none; ``owner(address)`` -- the device of a local
address.  Entry points: ``Interfaces(reader, watch)``, ``refresh()``, ``fileno()``, ``read()``.

``reader`` is a ``netlink.kernel.RouteTable`` used for its link and address dumps only (on the
loop: the kernel answers a dump at once); ``watch`` a ``netlink.events.KernelWatch``.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from spines_kr.netlink import events as nlevents


@dataclass
class Changes:
    links: list[tuple[int, str, bool]] = field(default_factory=list)  # (ifindex, name, up): moved
    addresses: bool = False
    deleted_routes: list[tuple[str, int, int]] = field(default_factory=list)  # (dst, table, proto)
    overflow: bool = False


class Interfaces:
    def __init__(self, reader, watch) -> None:
        self.reader = reader
        self.watch = watch
        self.names: dict[int, str] = {}
        self.up: dict[int, bool] = {}
        self.mtu: dict[int, int] = {}
        self.addresses: list[tuple[int, str, int]] = []

    def fileno(self) -> int:
        return self.watch.fileno()

    def close(self) -> None:
        for obj in (self.watch, self.reader):
            try:
                obj.close()
            except OSError:
                pass

    def refresh(self) -> list[tuple[int, str, bool]]:
        """Dump links and addresses; the links whose state differs from what we had."""
        links = self.reader.links()
        moved = [(i, l.name, l.up) for i, l in links.items() if self.up.get(i) != l.up]
        self.names = {i: l.name for i, l in links.items()}
        self.up = {i: l.up for i, l in links.items()}
        self.mtu = {i: l.mtu for i, l in links.items()}
        self.addresses = self.reader.local_addresses()
        return moved

    def read(self) -> Changes:
        ch = Changes()
        for ev in self.watch.read():
            if isinstance(ev, nlevents.LinkEvent):
                if self.up.get(ev.ifindex) != ev.up:
                    ch.links.append((ev.ifindex, ev.name, ev.up))
                self.up[ev.ifindex] = ev.up
                self.names[ev.ifindex] = ev.name
                if ev.mtu:
                    self.mtu[ev.ifindex] = ev.mtu
            elif isinstance(ev, nlevents.AddrEvent):
                ch.addresses = True
            elif isinstance(ev, nlevents.RouteEvent):
                if ev.deleted:
                    ch.deleted_routes.append((ev.dst, ev.table, ev.protocol))
            elif isinstance(ev, nlevents.Overflow):
                ch.overflow = True
        if ch.overflow:
            ch.links += self.refresh()
            ch.addresses = True
        elif ch.addresses:
            self.addresses = self.reader.local_addresses()
        return ch

    # --- questions ----------------------------------------------------------------------------

    def owner(self, address: str) -> str | None:
        """The name of the device holding ``address``, or None when it is not local."""
        for ifindex, addr, _plen in self.addresses:
            if addr == address:
                return self.names.get(ifindex, str(ifindex))
        return None

    def local_end(self, peer: str, wanted: tuple[str, ...] = ()) -> tuple[int, str] | str:
        """(ifindex, local address) of the most specific connected subnet holding ``peer``,
        restricted to ``wanted`` local addresses when given; else a reason for a person."""
        owner = self.owner(peer)
        if owner is not None:
            return f"{peer} is an address of this host (on {owner}), not a neighbor"
        pa = ipaddress.IPv4Address(peer)
        best = None
        for ifindex, addr, plen in self.addresses:
            if plen == 32 or (wanted and addr not in wanted):
                continue
            if pa in ipaddress.IPv4Network(f"{addr}/{plen}", strict=False):
                if best is None or plen > best[2]:
                    best = (ifindex, addr, plen)
        if best is None:
            where = f"of {', '.join(wanted)}" if wanted else "of any local interface"
            return f"not in a connected subnet {where}"
        return best[:2]
