"""Best-effort forwarding of client messages between daemons (UDP_LINKS, minimum-weight routing).

Data model (``Forwarding``): the data socket (UDP, the overlay port + 1, on every address), a
message id counter, the reassembly buffer (``_partial``: (source, message id) -> fragments,
bounded in bytes and messages, dropped after ``REASSEMBLY_TIMEOUT``), per-destination output
queues flushed once per loop turn (records bound for the same next daemon share datagrams up to
the MTU), caches of the forwarding table and of multicast trees (recomputed when the engine's
``routes_version`` moves), and ``counters`` (sent, received, delivered, forwarded, dropped by
reason).  Wire format: ``wire.data``.

How a message travels (``send``):
    to this node          delivered to the local sessions at once (``sessions.deliver``)
    to another node       KERNEL: where this node has the overlay's kernel route to the node's
                          logical ID (kernel level 0, the route installed), one datagram to
                          that logical ID; transit nodes forward it in the kernel (no daemon
                          sees it) and the destination's daemon delivers it.  HOP otherwise:
                          to the next hop's daemon, which forwards it the same way
    to a class E group    to the nearest member node (lowest id on ties), as above with the
                          group as destination: a daemon that is a member delivers it to one
                          session; one that is not forwards it to its nearest member
    to a class D group    TREE: along the source node's shortest-path tree (the trees of
                          kernel level 2, ``routing.groups.tree_role``): every daemon on it
                          delivers to its joined sessions and forwards to its children whose
                          subtree holds a member: one copy per member node
Link protocols (the message's ``link``, Spines' RELIABLE_LINKS 1 and SOFT_REALTIME_LINKS 2):
such a message never takes the KERNEL path (the kernel cannot recover a loss on one hop); it
goes HOP by HOP (or along the TREE) over the reliable or soft-real-time data link to each next
daemon (``dataplane.links``), which recovers losses on that hop.  A reliable record a dead link
gave back is sent on by the new route (``_reroute``); the delivering daemon drops the duplicate
fragments that can cause (``_dedup``).

Equal-cost paths: each message takes one (by its source and message id), but the segments
of a stream (``link | STREAM_SEGMENT``, ``dataplane.streams``) all take the same one, chosen by
the stream's ports, as routers keep a TCP flow on one path.

System calls, the data plane's main cost on a small router: the data links' packets of one loop
turn leave per neighbor in UDP GSO sends (a run of equal-size datagrams, one ``sendmsg``; the
wire sees the same datagrams), and the socket takes a neighbor's run back whole (UDP_GRO) and
cuts it apart by the segment size the kernel reports; a kernel that refuses GSO (older than
4.18, a device without it) gets one datagram per call from then on (``gso_off``).

A message is cut into fragments that fit the links' MTU (``fragment_size``); only the daemon
that delivers reassembles.  TTL counts overlay hops: HOP and TREE records lose one per daemon
(dropped at 0); a KERNEL datagram carries it as its IP TTL.

Authentication: every data datagram carries the overlay's HMAC trailer (``wire.auth``), sealed
and checked with a key ring of its own (data and control have their own counters and replay
windows: a burst of data must not make a control packet look replayed).  Unauthenticated,
forged or replayed data is dropped and counted, like control packets.

Entry points: ``Forwarding(loop, cfg, engine, interfaces, kernel_sync, auth, log)``,
``attach(sessions)``, ``open()``, ``send(message)``, ``status()``, ``close()``; ``links`` (the
data links' part, ``dataplane.links``).
"""

from __future__ import annotations

import errno
import socket
import struct
from collections import Counter, OrderedDict

from spines_kr.daemon.udp import IP_PKTINFO, PKTINFO, pktinfo_cmsg
from spines_kr.dataplane.links import Links
from spines_kr.dataplane.message import (
    HOST_PACKET, RELIABLE_LINKS, SOFT_REALTIME_LINKS, STREAM_SEGMENT, Message, is_anycast,
    is_multicast)
from spines_kr.routing import groups as grp
from spines_kr.routing.spf import spf
from spines_kr.wire import data as wdata
from spines_kr.wire import links as wl
from spines_kr.wire.auth import TRAILER_LEN, KeyRing
from spines_kr.wire.packets import HEADER_LEN, DecodeError, split

IP_TTL = socket.IP_TTL
IP_MTU_DISCOVER, IP_PMTUDISC_DONT = 10, 0
TTL = struct.Struct("=i")
RECV_SIZE = 65535
READ_MAX = 512  # datagrams per wakeup: timers still run under a flood
SOCKET_BUFFER = 4 << 20
REASSEMBLY_TIMEOUT = 2.0  # s a message may wait for its last fragment
REASSEMBLY_BYTES = 16 << 20  # bounded memory for partial messages
REASSEMBLY_MESSAGES = 4096
# IPv4, UDP, our header, a link frame's header, the trailer
OVERHEAD = 20 + 8 + HEADER_LEN + wl.DATA_HEADER + TRAILER_LEN
LINK_PROTOCOLS = (RELIABLE_LINKS, SOFT_REALTIME_LINKS)
DEDUP = 1 << 16  # reliable fragments remembered at delivery (a reroute may duplicate)
DEFAULT_MTU = 1500
SOL_UDP = getattr(socket, "SOL_UDP", 17)
UDP_SEGMENT = getattr(socket, "UDP_SEGMENT", 103)  # linux/udp.h: UDP GSO (Linux 4.18)
GSO_SEGMENTS = 32  # at most this many datagrams in one UDP GSO send (the kernel's cap: 64)
GSO_BYTES = 60_000  # ... and under the 64 KB a GSO send may carry
SEG = struct.Struct("=H")
GRO_SIZE = struct.Struct("=i")
UDP_GRO = getattr(socket, "UDP_GRO", 104)  # linux/udp.h: coalesced receive (Linux 5.0)
GSO_REFUSED = (errno.EIO, errno.EINVAL, errno.ENOPROTOOPT, errno.EOPNOTSUPP)


def _ip(n: int) -> str:
    return socket.inet_ntoa(n.to_bytes(4, "big"))


class _Partial:
    __slots__ = ("parts", "got", "size", "deadline", "first")

    def __init__(self, total: int, deadline: float, first: wdata.Record) -> None:
        self.parts: list[bytes | None] = [None] * total
        self.got = 0
        self.size = 0
        self.deadline = deadline
        self.first = first


class Forwarding:
    def __init__(self, loop, cfg, engine, interfaces, kernel_sync, auth: KeyRing | None,
                 log) -> None:
        self.loop = loop
        self.cfg = cfg
        self.engine = engine
        self.interfaces = interfaces
        self.kernel_sync = kernel_sync
        self.auth = auth
        self.log = log
        self.port = cfg.port + 1
        self.instance = cfg.port
        self.sessions = None
        self.hosts = None  # dataplane.hostmcast, on kernels without multicast routing
        self.sock: socket.socket | None = None
        self.counters: Counter[str] = Counter()
        self._msg_id = 0
        self._partial: OrderedDict[tuple[int, int], _Partial] = OrderedDict()
        self._partial_bytes = 0
        self._queues: dict[tuple[str, int, str | None], list[wdata.Record]] = {}
        self._flush_pending = False
        self._cache_version = -1
        self._fib: dict[int, tuple] = {}
        self._trees: dict[tuple[int, int], tuple] = {}
        self._members: dict[int, set[int]] | None = None
        self._anc_cache: dict = {}
        self._timer = None
        self._dedup: OrderedDict[tuple[int, int, int], None] = OrderedDict()
        self._gso = True  # UDP GSO until the kernel says no (then one datagram per call)
        self.links = Links(loop, cfg, engine, self._send_link_packets, self._deliver_records,
                           self._reroute, log)

    # --- lifecycle ------------------------------------------------------------------------------

    def attach(self, sessions=None, hosts=None) -> None:
        if sessions is not None:
            self.sessions = sessions
            self.links.on_pressure = getattr(sessions, "backpressure", None)
        if hosts is not None:
            self.hosts = hosts

    def open(self) -> None:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            s.setsockopt(socket.SOL_IP, IP_PKTINFO, 1)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_BUFFER)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_BUFFER)
            s.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_DONT)
            try:  # a peer's GSO run arrives whole (one read), cut apart here by its segment size
                s.setsockopt(SOL_UDP, UDP_GRO, 1)
            except OSError:
                pass  # a kernel before 5.0: one datagram per read
            s.setblocking(False)
            s.bind(("0.0.0.0", self.port))
        except BaseException:
            s.close()
            raise
        self.sock = s
        self.loop.add_reader(s.fileno(), self._on_readable)

    def close(self) -> None:
        self.links.close()
        if self.sock is not None:
            self.loop.remove_reader(self.sock.fileno())
            self.sock.close()
            self.sock = None

    def status(self) -> dict:
        return {"data_port": self.port, "reassembling": len(self._partial),
                "reassembly_bytes": self._partial_bytes, **dict(sorted(self.counters.items()))}

    def links_status(self) -> dict:
        return self.links.status()

    # --- routing --------------------------------------------------------------------------------

    def _refresh(self) -> None:
        """Forwarding table and trees follow the engine's topology."""
        version = self.engine.routes_version
        if version == self._cache_version:
            return
        self._cache_version = version
        node = self.engine
        result = spf(node.graph(), node.id)
        hops = node.nexthops_by_neighbor()
        fib = {}
        for dst, (cost, first) in result.items():
            usable = sorted(h for h in first if hops.get(h))
            if usable:
                fib[dst] = (cost, [hops[h][0] for h in usable])
        self._fib = fib
        self._spf = result
        self._trees.clear()
        self._members = None
        self.links.frame_budget = self.fragment_size() + wdata.RECORD_HEADER
        self.links.links_changed()

    def _members_of(self, group: int) -> set[int]:
        if self._members is None:
            node = self.engine
            self._members = grp.members(node.lsas(), set(self._spf) | {node.id})
        return self._members.get(group, set())

    def _kernel_route(self, dst: int) -> bool:
        """The overlay's kernel route to node ``dst`` is installed here (kernel level 0)."""
        ks = self.kernel_sync
        if ks is None or 0 not in self.cfg.kernel_levels:
            return False
        route = ks.installed.get(f"{_ip(dst)}/32")
        return route is not None and route == self.engine.routes().get(route.dst)

    def _next_hop(self, dst: int, flow: int):
        entry = self._fib.get(dst)
        if entry is None:
            return None
        hops = entry[1]
        return hops[flow % len(hops)] if len(hops) > 1 else hops[0]

    def _nearest_member(self, group: int) -> int | None:
        members = self._members_of(group)
        if self.engine.id in members:
            return self.engine.id
        best = grp.nearest(members, self._spf, self.engine.id, anypath=False)
        return best[0] if best else None

    def _children(self, root: int, group: int) -> set[int]:
        key = (root, group)
        found = self._trees.get(key)
        if found is None:
            node = self.engine
            _parent, kids, on_tree = grp.tree_role(node.lsdb.graph(), root, node.id,
                                                   self._members_of(group))
            found = self._trees[key] = (kids if on_tree else set())
        return found

    def fragment_size(self) -> int:
        mtus = [m for i, m in self.interfaces.mtu.items() if self.interfaces.up.get(i) and m]
        mtu = min(mtus) if mtus else DEFAULT_MTU
        return max(256, min(mtu, 65535) - OVERHEAD - wdata.RECORD_HEADER)

    # --- sending --------------------------------------------------------------------------------

    def send(self, msg: Message) -> None:
        """A message from a local session (or a LAN host): carry it to its destinations."""
        self.counters["messages_sent"] += 1
        node = self.engine
        self._refresh()
        if len(msg.payload) > 255 * self.fragment_size():
            self.counters["dropped.too_long"] += 1
            return
        self._msg_id = (self._msg_id + 1) & 0xFFFFFFFF
        dst = msg.dst
        if is_multicast(dst):
            if not msg.link & HOST_PACKET:  # (a host's packet: its LANs are served already)
                self._deliver_local(msg)  # sessions skip the sender's own unless it loops
            records = self._records(wdata.TREE, msg)
            self._tree_forward(records, node.id, dst, msg.ttl)
            return
        if dst == node.id:
            self._deliver_local(msg)
            return
        target = self._nearest_member(dst) if is_anycast(dst) else dst
        if target is None:
            self.counters["dropped.no_member" if is_anycast(dst) else "dropped.no_route"] += 1
            return
        if target == node.id:
            self._deliver_local(msg)
            return
        if not msg.link & 0x0F and self._kernel_route(target):
            for r in self._records(wdata.KERNEL, msg):
                self._queue(_ip(target), 0, None, r, msg.ttl)
            self._schedule_flush()
            return
        self._hop_forward(self._records(wdata.HOP, msg), target)

    def _records(self, kind: int, msg: Message) -> list[wdata.Record]:
        pieces = wdata.fragment(msg.payload, self.fragment_size())
        n = len(pieces)
        return [wdata.Record(kind, msg.ttl, msg.link, n, msg.src, msg.dst, msg.src_port,
                             msg.dst_port, self._msg_id, i, p) for i, p in enumerate(pieces)]

    def _hop_forward(self, records: list[wdata.Record], target: int) -> None:
        r = records[0]
        # equal-cost paths: a message picks one; a stream's segments all take the same, as
        # TCP flows do (reordering between paths would look like loss to the stream)
        flow = (r.src ^ (r.src_port << 16 | r.dst_port)) if r.link & STREAM_SEGMENT else \
            r.src ^ r.msg_id
        hop = self._next_hop(target, flow)
        if hop is None:
            self.counters["dropped.no_route"] += len(records)
            return
        self._to_hop(hop, records)

    def _to_hop(self, hop, records: list[wdata.Record]) -> None:
        """Records to the next daemon: over its data link when their link protocol asks for
        one, else bundled in best-effort datagrams."""
        proto = records[0].link & 0x0F
        if proto in LINK_PROTOCOLS:
            key = (hop.ifindex, hop.gateway)
            for r in records:
                if not self.links.queue(key, proto, r):
                    self.counters["dropped.no_link"] += 1
            return
        local = self._local_addr(hop.ifindex, hop.gateway)
        for r in records:
            self._queue(hop.gateway, hop.ifindex, local, r, 0)
        self._schedule_flush()

    def _tree_forward(self, records: list[wdata.Record], root: int, group: int,
                      ttl: int) -> None:
        for child in sorted(self._children(root, group)):
            hop = self._next_hop(child, 0)
            if hop is None:
                continue
            self._to_hop(hop, records)

    def _local_addr(self, ifindex: int, gateway: str) -> str | None:
        for link in self.engine.links.values():
            if link.ifindex == ifindex and link.peer_addr == gateway:
                return link.local_addr
        return None

    def _deliver_local(self, msg: Message) -> None:
        if msg.link & HOST_PACKET:
            if self.hosts is not None and is_multicast(msg.dst):
                self.counters["host_packets_delivered"] += 1 if self.hosts.deliver(msg) else 0
            else:
                self.counters["dropped.host_packet"] += 1
            return
        if self.sessions is None:
            self.counters["dropped.no_sessions"] += 1
            return
        n = self.sessions.deliver(msg)
        self.counters["messages_delivered"] += 1 if n else 0
        if not n and not msg.group:
            self.counters["dropped.no_session"] += 1

    # --- output queues: records bundled per next daemon, once per loop turn ---------------------

    def _queue(self, addr: str, ifindex: int, local: str | None, record: wdata.Record,
               ttl: int) -> None:
        self._queues.setdefault((addr, ifindex, local, ttl), []).append(record)

    def _schedule_flush(self) -> None:
        if not self._flush_pending:
            self._flush_pending = True
            self.loop.call_soon(self.flush)

    def flush(self) -> None:
        self._flush_pending = False
        queues, self._queues = self._queues, {}
        if self.sock is None:
            return
        budget = self.fragment_size() + wdata.RECORD_HEADER
        for (addr, ifindex, local, ttl), records in queues.items():
            pkts, counts, batch, size = [], [], [], 0
            for r in records:
                n = r.encoded_size()
                if batch and size + n > budget:
                    pkts.append(self._datagram(batch))
                    counts.append(len(batch))
                    batch, size = [], 0
                batch.append(r)
                size += n
            if batch:
                pkts.append(self._datagram(batch))
                counts.append(len(batch))
            # a KERNEL datagram leaves from our logical ID (the kernel routes it); a HOP one
            # on its link, from that link's address
            anc = self._ancillary(ifindex, local, ttl) if ifindex else \
                self._ancillary(0, _ip(self.engine.id), ttl)
            self._send_run(pkts, anc, (addr, self.port), counts)

    def _datagram(self, records: list[wdata.Record]) -> bytes:
        pkt = wdata.encode(records, instance=self.instance, sender=self.engine.id)
        return pkt if self.auth is None else self.auth.seal(pkt)

    def _ancillary(self, ifindex: int, local: str | None, ttl: int) -> list:
        key = (ifindex, local, ttl)
        anc = self._anc_cache.get(key)
        if anc is None:
            anc = []
            if ifindex or local:
                src = socket.inet_aton(local) if local else \
                    self.engine.id.to_bytes(4, "big")
                anc.append(pktinfo_cmsg(ifindex, src))
            if ttl:
                anc.append((socket.IPPROTO_IP, IP_TTL, TTL.pack(max(1, min(255, ttl)))))
            if len(self._anc_cache) > 1024:
                self._anc_cache.clear()
            self._anc_cache[key] = anc
        return anc

    # --- receiving ------------------------------------------------------------------------------

    def _on_readable(self) -> None:
        recvmsg = self.sock.recvmsg
        now = self.loop.time()
        emulated = any(l.rx_emulation is not None for l in self.engine.links.values())
        for _ in range(READ_MAX):
            try:
                data, anc, _flags, addr = recvmsg(RECV_SIZE, 64)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                self.counters["recv_errors"] += 1
                continue
            ifindex, seg = _ifindex_and_segment(anc)
            key = (ifindex, addr[0])  # the engine's key of the link it came over
            if seg and len(data) > seg:  # UDP GRO: several datagrams of one sender, as sent
                pieces = [data[k:k + seg] for k in range(0, len(data), seg)]
            else:
                pieces = (data,)
            for data in pieces:
                self.counters["datagrams_in"] += 1
                if emulated:  # setlink at the receiving end: loss, latency, bandwidth on receipt
                    when = self._rx_emulation(key, len(data), now)
                    if when is None:
                        self.counters["emulated_rx_drops"] += 1
                        continue
                    if when > now:
                        self.loop.call_at(when, self._process, data, when, key)
                        continue
                self._process(data, now, key)
        self._sweep(now)

    def _rx_emulation(self, key, size: int, now: float) -> float | None:
        """setlink at this end, on a data packet received over the link ``key`` -- or, for a
        KERNEL datagram (its source is the sending node's logical ID, not a neighbor), over
        the link of the interface it came in on."""
        links = self.engine.links
        link = links.get(key)
        if link is None:
            link = next((l for l in links.values() if l.ifindex == key[0]), None)
        if link is None or link.rx_emulation is None:
            return now
        return link.rx_emulation.schedule(now, size)

    def _process(self, data: bytes, now: float, key=None) -> None:
        try:
            header, body, trailer = split(data, instance=self.instance)
            if header.type == wdata.DATA:
                records, msg = wdata.decode_records(body), None
            elif header.type in (wl.LINK_DATA, wl.LINK_ACK):
                records, msg = None, wl.decode_body(header.type, body)
            else:
                raise DecodeError("type", str(header.type))
        except DecodeError as e:
            self.counters[f"dropped.{e.reason}"] += 1
            return
        if header.sender == self.engine.id:
            self.counters["dropped.own"] += 1
            return
        if self.auth is not None:
            reason = self.auth.check(header.sender, data, trailer, now)
            if reason is not None:
                self.counters[f"dropped.{reason}"] += 1
                return
        elif trailer:
            self.counters["dropped.auth_unexpected"] += 1
            return
        self._refresh()
        if msg is not None:
            self.links.receive(header, msg, key, now)
            return
        for r in records:
            self._receive(r, now)

    def _deliver_records(self, records, now: float) -> None:
        """Records a data link handed over in order: each delivered here or sent on."""
        self._refresh()
        for r in records:
            self._receive(r, now)

    def _reroute(self, records) -> None:
        """Reliable records a dead link gave back: on by the new route (TREE records, whose
        copy the dead link was to carry to one subtree, go to the tree's new children)."""
        self._refresh()
        for r in records:
            if r.kind == wdata.TREE:
                self._tree_forward([r], r.src, r.dst, 0)
                continue
            target = self._nearest_member(r.dst) if is_anycast(r.dst) else r.dst
            if target is None or target == self.engine.id:
                self.counters["dropped.rerouted_no_route"] += 1
                continue
            self._hop_forward([r], target)

    def _send_link_packets(self, key, pkts: list[bytes]) -> None:
        """Data links' packets to the neighbor of link ``key``, from that link's address."""
        if self.sock is None:
            return
        if self.auth is not None:
            seal = self.auth.seal
            pkts = [seal(p) for p in pkts]
        ifindex, addr = key
        link = self.engine.links.get(key)
        anc = self._ancillary(ifindex, link.local_addr if link is not None else None, 0)
        self._send_run(pkts, anc, (addr, self.port))

    def _send_run(self, pkts: list[bytes], anc: list, dest: tuple,
                  counts: list[int] | None = None) -> None:
        """Datagrams to one destination.  A run of one size (its last may be shorter) goes to
        the kernel in one UDP GSO send: one system call and one trip through the stack for up
        to GSO_SEGMENTS datagrams, which the kernel cuts apart (the wire sees the same
        datagrams).  ``counts``: records in each (what a failed send drops), else 1 each."""
        sendmsg, counters = self.sock.sendmsg, self.counters
        i, n = 0, len(pkts)
        while i < n:
            size = len(pkts[i])
            j = i + 1
            if self._gso:
                total = size
                while (j < n and j - i < GSO_SEGMENTS and len(pkts[j]) <= size
                       and total + size <= GSO_BYTES):
                    total += len(pkts[j])
                    j += 1
                    if len(pkts[j - 1]) < size:
                        break  # a shorter datagram can only be the last of a run
            try:
                if j - i == 1:
                    sendmsg([pkts[i]], anc, 0, dest)
                else:
                    sendmsg(pkts[i:j], anc + [(SOL_UDP, UDP_SEGMENT, SEG.pack(size))], 0, dest)
                counters["datagrams_out"] += j - i
            except BlockingIOError:
                counters["dropped.send_buffer"] += sum(counts[i:j]) if counts else j - i
            except OSError as e:
                if j - i > 1 and e.errno in GSO_REFUSED:
                    self._gso = False  # this kernel or device takes no UDP GSO: one by one
                    counters["gso_off"] += 1
                    continue
                counters[f"dropped.send_{e.errno}"] += sum(counts[i:j]) if counts else j - i
            i = j

    def _receive(self, r: wdata.Record, now: float) -> None:
        node = self.engine
        if r.kind == wdata.TREE:
            if is_multicast(r.dst):
                if node.id in self._members_of(r.dst):
                    self._reassemble(r, now)
                if r.ttl > 1:
                    self._tree_forward([_hop(r)], r.src, r.dst, 0)
                else:
                    self.counters["dropped.ttl"] += 1
            else:
                self.counters["dropped.malformed"] += 1
            return
        dst = r.dst
        if dst == node.id:
            self._reassemble(r, now)
            return
        if is_anycast(dst):
            target = self._nearest_member(dst)
            if target == node.id:
                self._reassemble(r, now)
                return
        else:
            target = dst
        if r.kind == wdata.KERNEL and not is_anycast(dst):
            self.counters["dropped.not_ours"] += 1  # a kernel datagram for another node
            return
        if target is None:
            self.counters["dropped.no_route"] += 1
            return
        if r.ttl <= 1:
            self.counters["dropped.ttl"] += 1
            return
        self.counters["records_forwarded"] += 1
        fwd = _hop(r)
        if not r.link & 0x0F and self._kernel_route(target):  # the rest of the way in the kernel
            self._queue(_ip(target), 0, None, _as_kernel(fwd), fwd.ttl)
            self._schedule_flush()
        else:
            self._hop_forward([fwd], target)

    def _reassemble(self, r: wdata.Record, now: float) -> None:
        if r.link & 0x0F == RELIABLE_LINKS:
            key = (r.src, r.msg_id, r.index)
            if key in self._dedup:
                self.counters["dropped.duplicate"] += 1
                return
            self._dedup[key] = None
            if len(self._dedup) > DEDUP:
                self._dedup.popitem(last=False)
        if r.frags == 1:
            self._deliver_local(_message(r, r.payload))
            return
        key = (r.src, r.msg_id)
        p = self._partial.get(key)
        if p is None:
            if len(self._partial) >= REASSEMBLY_MESSAGES:
                self._evict("dropped.reassembly_full")
            p = self._partial[key] = _Partial(r.frags, now + REASSEMBLY_TIMEOUT, r)
        if r.index >= len(p.parts) or p.parts[r.index] is not None:
            self.counters["dropped.duplicate_fragment"] += 1
            return
        p.parts[r.index] = r.payload
        p.got += 1
        p.size += len(r.payload)
        self._partial_bytes += len(r.payload)
        while self._partial_bytes > REASSEMBLY_BYTES and self._partial:
            self._evict("dropped.reassembly_full")
        if p.got == len(p.parts) and key in self._partial:
            del self._partial[key]
            self._partial_bytes -= p.size
            self._deliver_local(_message(p.first, b"".join(p.parts)))

    def _evict(self, reason: str) -> None:
        _key, old = self._partial.popitem(last=False)
        self._partial_bytes -= old.size
        self.counters[reason] += 1

    def _sweep(self, now: float) -> None:
        while self._partial:
            key, p = next(iter(self._partial.items()))
            if p.deadline > now:
                break
            self._evict("dropped.reassembly_timeout")


def _ifindex_and_segment(anc) -> tuple[int, int]:
    """The interface a datagram came in on, and the segment size of a GRO datagram (0: one)."""
    ifindex = seg = 0
    for level, typ, cdata in anc:
        if level == socket.SOL_IP and typ == IP_PKTINFO and len(cdata) >= PKTINFO.size:
            ifindex = PKTINFO.unpack_from(cdata)[0]
        elif level == SOL_UDP and typ == UDP_GRO and len(cdata) >= 4:
            seg = GRO_SIZE.unpack_from(cdata)[0]
    return ifindex, seg


def _as_kernel(r: wdata.Record) -> wdata.Record:
    return wdata.Record(wdata.KERNEL, r.ttl, r.link, r.frags, r.src, r.dst, r.src_port,
                        r.dst_port, r.msg_id, r.index, r.payload, r.age)


def _hop(r: wdata.Record) -> wdata.Record:
    """The record as the next daemon gets it: one hop less."""
    return wdata.Record(r.kind if r.kind != wdata.KERNEL else wdata.HOP, r.ttl - 1, r.link,
                        r.frags, r.src, r.dst, r.src_port, r.dst_port, r.msg_id, r.index,
                        r.payload, r.age)


def _message(r: wdata.Record, payload: bytes) -> Message:
    return Message(r.src, r.src_port, r.dst, r.dst_port, payload, ttl=r.ttl, link=r.link)

