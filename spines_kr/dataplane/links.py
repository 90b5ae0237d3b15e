"""Reliable and soft-real-time data links on the daemon's loop: the protocol cores
(``dataplane.reliable``, ``dataplane.realtime``) bound to the engine's links and the data socket.

Data model (``Links``): one ``_Channel`` per overlay link (the engine's link key: (ifindex,
neighbor address)) that carried link-protocol traffic, holding per protocol a sender and a
receiver and the records waiting for the next frame (``pending``: bundled once per loop turn,
up to the link's frame budget, round robin between streams with ``-sf``).  A channel's
``epoch`` is random at its creation: a neighbor that restarts or resets the link starts a new
one, and ours is new after our link went down and up (``wire.links``).  One deadline for all
channels: the earliest of their senders' timers and receivers' delayed acknowledgements.

How records cross a link: ``queue(key, proto, record)`` (from ``dataplane.forward``, for a
message of link protocol 1 or 2 going to that neighbor), then at the end of the loop turn
``flush`` packs the pending records into frames, hands them to the protocol's sender and sends
what it lets out; ``receive`` takes LINK_DATA and LINK_ACK packets, passes received records on
to ``deliver`` (the forwarding's per-record path: deliver here or forward further), and answers
with acknowledgements or NACKs.

Back-pressure (reliable links, nothing is dropped silently): when the frames waiting in the
reliable senders pass ``HIGH_WATER`` bytes, ``congested`` turns on: the client sessions of this
node stop reading reliable sessions (their clients block in TCP/Unix-socket back-pressure) and
every reliable receiver of this node advertises a window of 0, so the neighbors' senders stop
too (and the congestion travels back hop by hop to the sources); below ``LOW_WATER`` it turns
off and everyone resumes.  ``on_pressure(bool)`` tells the sessions.

A link that goes down: its reliable sender's records not known to be delivered are handed to
``reroute`` (the forwarding sends them on by the new route; the destination drops the
duplicates a reroute may cause), or counted ``links.lost`` when there is no route.  Its
soft-real-time history is dropped (a detour would make it late anyway).

Entry points: ``Links(loop, cfg, engine, send_packets, deliver, reroute, log)``, ``queue``,
``receive(header, msg, key, now)``, ``links_changed()``, ``congested``, ``status()``,
``close()``.  Spines' parameters: ``-rl`` (``rate_limit_kbps``, Spines' default 500,000) per
link and direction; ``-sf`` (``stream_fairness``); ``realtime_history_ms`` (Spines' 100 ms).
"""

from __future__ import annotations

import os
from collections import Counter, OrderedDict, deque

from spines_kr.daemon.loop import Deadline
from spines_kr.dataplane.realtime import RealtimeParams, RealtimeReceiver, RealtimeSender
from spines_kr.dataplane.reliable import ReliableParams, ReliableReceiver, ReliableSender
from spines_kr.wire import links as wl

INF = float("inf")
HIGH_WATER = 8 << 20  # bytes waiting in reliable senders: back-pressure on
LOW_WATER = 2 << 20  # ... and off again


class _Channel:
    __slots__ = ("key", "epoch", "since", "rel_tx", "rel_rx", "rt_tx", "rt_rx", "pending",
                 "budget")

    def __init__(self, key, epoch: int, since: float, rel: ReliableParams, rt: RealtimeParams,
                 budget: int) -> None:
        self.key = key
        self.epoch = epoch
        self.since = since  # the link's last change: a link that went down and up since is new
        self.rel_tx = ReliableSender(rel, epoch)
        self.rel_rx = ReliableReceiver(rel)
        self.rt_tx = RealtimeSender(rt, epoch)
        self.rt_rx = RealtimeReceiver(rt)
        self.pending: dict[int, OrderedDict] = {wl.RELIABLE: OrderedDict(),
                                                wl.REALTIME: OrderedDict()}
        self.budget = budget  # bytes of records per frame


def _stream(record) -> tuple:
    return (record.src, record.src_port, record.dst, record.dst_port)


class Links:
    def __init__(self, loop, cfg, engine, send_packets, deliver, reroute, log) -> None:
        self.loop = loop
        self.cfg = cfg
        self.engine = engine
        self.send_packets = send_packets  # (key, [packet bytes]) -> None
        self._out: dict[tuple, list[bytes]] = {}  # packets of this loop turn, per link
        self._emit_pending = False
        self.deliver = deliver  # (records, now) -> None
        self.reroute = reroute  # (records) -> None
        self.log = log
        rate = getattr(cfg, "rate_limit_kbps", 500_000) * 1000
        self.rel_params = ReliableParams(rate_bps=rate,
                                         tcp_fairness=bool(getattr(cfg, "tcp_fairness", False)))
        self.rt_params = RealtimeParams(history=getattr(cfg, "realtime_history_ms", 100) / 1000,
                                        budget_ms=getattr(cfg, "realtime_history_ms", 100))
        self.fair = bool(getattr(cfg, "stream_fairness", False))
        self.channels: dict[tuple, _Channel] = {}
        self.counters: Counter[str] = Counter()
        self.congested = False
        self.on_pressure = None  # callback(bool): the sessions' back-pressure
        self.frame_budget = 1400  # set by the forwarding (the links' MTU)
        self._deadline = Deadline(loop, self._on_timer)
        self._flush_pending = False
        self._rel_bytes = 0  # reliable bytes waiting: pending records and senders' backlogs
        self._pending_rel = 0  # ... of them, records not yet in a frame
        self._seen_version = -1  # the engine's routes_version links_changed last saw

    # --- channels ---------------------------------------------------------------------------

    def _channel(self, key) -> _Channel | None:
        ch = self.channels.get(key)
        if ch is None:
            link = self.engine.links.get(key)
            if link is None or not link.up:
                return None
            ch = _Channel(key, int.from_bytes(os.urandom(2), "big"), link.since,
                          self.rel_params, self.rt_params, self.frame_budget)
            self.channels[key] = ch
        return ch

    def links_changed(self) -> None:
        """The engine's links moved: channels of links that are no longer up are closed; the
        reliable records they still held go by another route."""
        links = self.engine.links
        self._seen_version = self.engine.routes_version
        for key in [k for k, ch in self.channels.items()
                    if k not in links or not links[k].up or links[k].since != ch.since]:
            ch = self.channels.pop(key)
            records = ch.rel_tx.drain()
            for q in ch.pending[wl.RELIABLE].values():
                records.extend(q)
                self._pending_rel -= sum(r.encoded_size() for r in q)
            if records:
                self.counters["links.rerouted"] += len(records)
                self.reroute(records)
            self.counters["links.closed"] += 1
        self._recount()

    def close(self) -> None:
        self._deadline.cancel()
        self.channels.clear()

    # --- sending ----------------------------------------------------------------------------

    def queue(self, key, proto: int, record) -> bool:
        """Send ``record`` to the neighbor of link ``key`` over link protocol ``proto`` (at the
        end of this loop turn); False when that link is not up."""
        ch = self._channel(key)
        if ch is None:
            return False
        pending = ch.pending[proto]
        stream = _stream(record) if self.fair else None
        q = pending.get(stream)
        if q is None:
            q = pending[stream] = deque()
        q.append(record)
        if proto == wl.RELIABLE:
            self._pending_rel += record.encoded_size()
        if not self._flush_pending:
            self._flush_pending = True
            self.loop.call_soon(self.flush)
        return True

    def _frames(self, ch: _Channel, proto: int):
        """The pending records of ``proto`` as frames (round robin between streams)."""
        pending = ch.pending[proto]
        budget = ch.budget
        frame, size = [], 0
        while pending:
            for stream in list(pending):
                q = pending[stream]
                r = q.popleft()
                n = r.encoded_size()
                if frame and size + n > budget:
                    yield frame
                    frame, size = [], 0
                frame.append(r)
                size += n
                if not q:
                    del pending[stream]
        if frame:
            yield frame

    def flush(self) -> None:
        self._flush_pending = False
        if self.engine.routes_version != self._seen_version:
            self.links_changed()
        self._pending_rel = 0  # every pending record becomes a frame now
        now = self.loop.time()
        for ch in list(self.channels.values()):
            if ch.pending[wl.RELIABLE]:
                for frame in self._frames(ch, wl.RELIABLE):
                    ch.rel_tx.offer(frame)
            if ch.pending[wl.REALTIME]:
                for frame in self._frames(ch, wl.REALTIME):
                    seq = ch.rt_tx.send(frame, now)
                    self._send(ch, wl.LinkData(wl.REALTIME, ch.epoch, seq, tuple(frame)))
            self._pump(ch, now)
        self._recount()
        self._arm(now)

    def _pump(self, ch: _Channel, now: float) -> None:
        for seq, records in ch.rel_tx.poll(now):
            self._send(ch, wl.LinkData(wl.RELIABLE, ch.epoch, seq, records))
        ack = ch.rel_rx.ack(now, not self.congested)
        if ack is not None:
            self._send(ch, ack)

    def _send(self, ch: _Channel, msg) -> None:
        try:
            pkt = wl.encode(msg, instance=self.cfg.port, sender=self.engine.id)
        except (ValueError, OverflowError):
            self.counters["links.encode_errors"] += 1
            return
        out = self._out.get(ch.key)
        if out is None:
            self._out[ch.key] = [pkt]
        else:
            out.append(pkt)
        if not self._emit_pending:
            self._emit_pending = True
            self.loop.call_soon(self._emit)
        self.counters["links.packets_out"] += 1

    def _emit(self) -> None:
        """What this loop turn made for each link goes out together at the turn's end (the
        forwarding hands a run of equal-size packets to the kernel in one system call)."""
        self._emit_pending = False
        out, self._out = self._out, {}
        for key, pkts in out.items():
            self.send_packets(key, pkts)

    def _recount(self) -> None:
        """Back-pressure follows the bytes waiting in the reliable senders (module doc)."""
        waiting = self._pending_rel + sum(ch.rel_tx.backlog_bytes
                                          for ch in self.channels.values())
        self._rel_bytes = waiting
        if not self.congested and waiting > HIGH_WATER:
            self.congested = True
            self.counters["links.backpressure_on"] += 1
            if self.on_pressure is not None:
                self.on_pressure(True)
        elif self.congested and waiting < LOW_WATER:
            self.congested = False
            if self.on_pressure is not None:
                self.on_pressure(False)
            now = self.loop.time()
            for ch in self.channels.values():  # tell the neighbors the window is open again
                ack = ch.rel_rx.ack(now, True)
                if ack is not None:
                    self._send(ch, ack)

    # --- receiving --------------------------------------------------------------------------

    def receive(self, header, msg, key, now: float) -> None:
        """A LINK_DATA or LINK_ACK from the neighbor of link ``key``."""
        link = self.engine.links.get(key)
        if link is None or not link.up or link.peer_id != header.sender:
            self.counters["links.dropped.not_a_link"] += 1
            return
        ch = self._channel(key)
        if ch is None:
            self.counters["links.dropped.not_a_link"] += 1
            return
        if isinstance(msg, wl.LinkData):
            if msg.proto == wl.RELIABLE:
                for records in ch.rel_rx.on_frame(msg, now, not self.congested):
                    self.deliver(records, now)
                ack = ch.rel_rx.ack(now, not self.congested)
                if ack is not None:
                    self._send(ch, ack)
            else:
                records, nack = ch.rt_rx.on_frame(msg, now, self._retry_after(ch))
                if records:
                    self.deliver(records, now)
                if nack is not None:
                    self._send(ch, nack)
        elif msg.proto == wl.RELIABLE:
            ch.rel_tx.on_ack(msg, now)
            self._pump(ch, now)
            self._recount()
        else:
            for seq, records in ch.rt_tx.on_nack(msg, now):
                self._send(ch, wl.LinkData(wl.REALTIME, ch.epoch, seq, records))
        self._arm(now)

    # --- the deadline -----------------------------------------------------------------------

    def _retry_after(self, ch: _Channel) -> float:
        """When a soft-real-time frame asked for is asked for again: the link's round trip
        and a half (the hellos measure it), at least 5 ms."""
        link = self.engine.links.get(ch.key)
        rtt = (link.srtt_ms or 20.0) / 1000 if link is not None else 0.02
        return max(0.005, 1.5 * rtt + 0.002)

    def _arm(self, now: float) -> None:
        t = INF
        for ch in self.channels.values():
            t = min(t, ch.rel_tx.next_deadline(now), ch.rel_rx.next_deadline(),
                    ch.rt_rx.next_deadline())
        self._deadline.set(t)

    def _on_timer(self) -> None:
        now = self.loop.time()
        if self.engine.routes_version != self._seen_version:
            self.links_changed()
        for ch in list(self.channels.values()):
            ch.rel_tx.on_timer(now)
            self._pump(ch, now)
            ch.rt_tx.prune(now)
            nack = ch.rt_rx.poll(now, self._retry_after(ch))
            if nack is not None:
                self._send(ch, nack)
        self._recount()
        self._arm(now)

    # --- views ------------------------------------------------------------------------------

    def status(self) -> dict:
        """Per link (``neighbor address@ifindex``) and protocol: the figures of ``show links``."""
        out = {}
        for (ifindex, addr), ch in sorted(self.channels.items()):
            out[f"{addr}@{ifindex}"] = {
                "epoch": ch.epoch,
                "reliable": {"send": ch.rel_tx.status(), "receive": ch.rel_rx.status()},
                "realtime": {"send": ch.rt_tx.status(), "receive": ch.rt_rx.status()},
            }
        return {"rate_limit_kbps": int(self.rel_params.rate_bps / 1000),
                "stream_fairness": self.fair, "realtime_history_ms": self.rt_params.budget_ms,
                "congested": self.congested, "reliable_waiting_bytes": self._rel_bytes,
                "links": out, **dict(sorted(self.counters.items()))}
