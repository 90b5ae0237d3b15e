"""Emulated link characteristics for the daemon's own packets on one link (Spines' setlink).

Data model: ``LinkEmulation(bandwidth_kbps, latency_ms, loss_pct, burst_pct)``; all zero means
a plain link.  ``schedule(now, size)`` decides the fate of one outgoing packet: None (dropped)
or the time to hand it to the kernel.  Pure apart from its seeded ``rng``.

Semantics, as Spines applies them to a link's egress:
    loss/burst  a two-state (Gilbert) loss model: a packet is lost with probability ``loss``
                after a delivered packet and ``burst`` after a lost one (burst 0: independent
                losses at ``loss``)
    bandwidth   packets are serialised at that rate behind the previous one (a FIFO queue,
                never reordered; the queue is bounded at ``MAX_QUEUE_S`` of backlog, beyond
                which packets are tail-dropped)
    latency     added to every packet after serialisation

This acts on the daemon's own traffic (hellos, floods) so that measured metrics see the
emulated link on any kernel; the kernel's forwarded traffic is shaped by
``spines_kr.netlink.emulation`` where the kernel allows.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

MAX_QUEUE_S = 1.0


@dataclass
class LinkEmulation:
    bandwidth_kbps: float = 0.0
    latency_ms: float = 0.0
    loss_pct: float = 0.0
    burst_pct: float = 0.0
    rng: random.Random = field(default_factory=random.Random, repr=False)
    _last_lost: bool = field(default=False, repr=False)
    _free_at: float = field(default=0.0, repr=False)

    @property
    def active(self) -> bool:
        return bool(self.bandwidth_kbps or self.latency_ms or self.loss_pct)

    def schedule(self, now: float, size: int) -> float | None:
        p = (self.burst_pct if self._last_lost and self.burst_pct else self.loss_pct) / 100
        self._last_lost = p > 0 and self.rng.random() < p
        if self._last_lost:
            return None
        t = now
        if self.bandwidth_kbps:
            start = max(now, self._free_at)
            if start - now > MAX_QUEUE_S:
                return None  # queue full
            self._free_at = start + size * 8 / (self.bandwidth_kbps * 1000)
            t = self._free_at
        return t + self.latency_ms / 1000

    def to_json(self) -> dict:
        return {"bandwidth_kbps": self.bandwidth_kbps, "latency_ms": self.latency_ms,
                "loss_pct": self.loss_pct, "burst_pct": self.burst_pct}
